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

/// Keeps tickets' MACs apart from tokens'.
const TICKET_CONTEXT: &[u8] = b"virga ticket v1\0";

/// A ticket: the right to make one kind of request (`what`, e.g. `GET
/// /v1/images/ID/raw`) to a host until `expires` (Unix seconds), signed
/// with that host's token. The controller issues them (it can derive every
/// host's token) so that one host may fetch from another without holding
/// anything of the other's: a redirect carries the ticket.
pub fn ticket(host_token: &str, what: &str, expires: u64) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(host_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(TICKET_CONTEXT);
    m.update(what.as_bytes());
    m.update(b"\0");
    m.update(expires.to_string().as_bytes());
    let mut hex = String::with_capacity(64);
    for b in m.finalize().into_bytes() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// Whether `given` is this host's ticket for `what` and has not expired at
/// `now`.
pub fn ticket_valid(host_token: &str, what: &str, expires: u64, now: u64, given: &str) -> bool {
    now <= expires
        && constant_time_eq(
            ticket(host_token, what, expires).as_bytes(),
            given.as_bytes(),
        )
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

    #[test]
    fn tickets_are_for_one_request_one_host_and_a_while() {
        let token = for_host(SECRET, "storage-1");
        let what = "GET /v1/images/abc/raw";
        let t = ticket(&token, what, 1000);
        assert!(ticket_valid(&token, what, 1000, 999, &t));
        assert!(ticket_valid(&token, what, 1000, 1000, &t));
        assert!(!ticket_valid(&token, what, 1000, 1001, &t), "expired");
        assert!(!ticket_valid(&token, what, 2000, 999, &t), "another expiry");
        assert!(!ticket_valid(
            &token,
            "GET /v1/images/abd/raw",
            1000,
            999,
            &t
        ));
        let other = for_host(SECRET, "storage-2");
        assert!(!ticket_valid(&other, what, 1000, 999, &t), "another host");
        assert!(!ticket_valid(&token, what, 1000, 999, &t[..63]));
        assert!(!ticket_valid(&token, what, 1000, 999, ""));
    }
}
