//! Per-host tokens. The controller keeps one secret; each host's token is
//! derived from it and the host's id, `vh1.{host_id}.{hex HMAC-SHA256}`. The
//! controller needs no table of tokens, a token says which host it belongs
//! to, and a host whose token leaks exposes only itself: the controller takes
//! a token only for the host it names, and calls each hostd with that host's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "vh1.";
/// Keeps these MACs apart from any other use of the same secret.
const CONTEXT: &[u8] = b"virga hostd token v1\0";

/// The token of `host_id` under `secret`.
pub fn for_host(secret: &str, host_id: &str) -> String {
    let mut token = String::with_capacity(PREFIX.len() + host_id.len() + 65);
    token.push_str(PREFIX);
    token.push_str(host_id);
    token.push('.');
    for b in mac(secret, host_id) {
        token.push(char::from(HEX[usize::from(b >> 4)]));
        token.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    token
}

/// The host a token was issued for, if `secret` issued it.
pub fn host_of<'a>(secret: &str, token: &'a str) -> Option<&'a str> {
    let (host_id, _) = token.strip_prefix(PREFIX)?.rsplit_once('.')?;
    constant_time_eq(for_host(secret, host_id).as_bytes(), token.as_bytes()).then_some(host_id)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(secret: &str, host_id: &str) -> [u8; 32] {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(CONTEXT);
    m.update(host_id.as_bytes());
    m.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "deployment-secret-0123456789";

    #[test]
    fn a_token_names_its_host() {
        let t = for_host(SECRET, "compute-1");
        assert!(t.starts_with("vh1.compute-1."));
        assert_eq!(t.len(), "vh1.compute-1.".len() + 64);
        assert_eq!(host_of(SECRET, &t), Some("compute-1"));
        // Deterministic: the controller recomputes it, nothing is stored.
        assert_eq!(t, for_host(SECRET, "compute-1"));
    }

    #[test]
    fn hosts_and_secrets_get_different_tokens() {
        assert_ne!(for_host(SECRET, "a"), for_host(SECRET, "b"));
        assert_ne!(for_host(SECRET, "a"), for_host("another-secret-0123", "a"));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let a = for_host(SECRET, "host-a");
        let mac = a.rsplit_once('.').map(|(_, m)| m).unwrap_or_default();
        // host-a's MAC under host-b's name.
        assert_eq!(host_of(SECRET, &format!("vh1.host-b.{mac}")), None);
        assert_eq!(host_of("another-secret-0123", &a), None);
        let mut flipped = a.clone();
        flipped.pop();
        flipped.push(if a.ends_with('0') { '1' } else { '0' });
        assert_eq!(host_of(SECRET, &flipped), None);
        for bad in [
            "",
            "vh1.",
            "vh1.host-a",
            "vh2.host-a.00",
            "Bearer x",
            &a[..a.len() - 1],
        ] {
            assert_eq!(host_of(SECRET, bad), None, "{bad:?}");
        }
    }
}
