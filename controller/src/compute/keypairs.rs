//! Keypairs: SSH public keys (the fingerprint is the MD5 of the key blob)
//! and, from microversion 2.2, x509 certificates (the SHA-1 of the DER).
//! Current clients generate keys themselves (OSC makes ed25519 keys
//! locally); before microversion 2.92 Nova generates one when no public key
//! is given, and so does [`generate`] (ed25519 where Nova makes RSA: what
//! OSC makes too, and every cloud image's sshd takes it).

use base64::Engine;
use md5::{Digest, Md5};

use crate::store::{int, text, Store, StoreError, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keypair {
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub key_type: String,
    pub created_at: i64,
}

/// A new key pair: (public key `ssh-ed25519 AAAA... comment`, private key
/// in OpenSSH's PEM format). The private key is handed to the client once
/// and never stored.
pub fn generate(comment: &str) -> Result<(String, String), String> {
    use ssh_key::rand_core::OsRng;
    let failed = |e: ssh_key::Error| format!("generating a key pair: {e}");
    let mut key =
        ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).map_err(failed)?;
    key.set_comment(comment);
    let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(failed)?;
    let public = key.public_key().to_openssh().map_err(failed)?;
    Ok((public, private.as_str().to_owned()))
}

/// `ssh-ed25519 AAAA... comment` -> (type, MD5 fingerprint `aa:bb:...`).
pub fn fingerprint(public_key: &str) -> Result<(String, String), String> {
    let mut parts = public_key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err("public_key: expected \"TYPE BASE64 [COMMENT]\"".into());
    };
    if !kind.starts_with("ssh-") && !kind.starts_with("ecdsa-") {
        return Err(format!("public_key: unsupported key type {kind:?}"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "public_key: the key is not valid base64".to_owned())?;
    // The blob starts with its own type name, length-prefixed.
    let named = bytes
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n))
        .is_some_and(|t| t == kind.as_bytes());
    if !named {
        return Err("public_key: the key blob does not match its type".into());
    }
    let fp = Md5::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(("ssh".into(), fp))
}

/// An x509 certificate in PEM -> its SHA-1 fingerprint (`aa:bb:...`), as
/// Nova reports it.
pub fn x509_fingerprint(pem: &str) -> Result<String, String> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN CERTIFICATE-----")
        .and_then(|rest| rest.trim_end().strip_suffix("-----END CERTIFICATE-----"))
        .ok_or("public_key: an x509 certificate in PEM (BEGIN/END CERTIFICATE) is required")?;
    let base64: String = body.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|_| "public_key: the certificate is not valid base64".to_owned())?;
    // A certificate is a DER SEQUENCE.
    if der.first() != Some(&0x30) || der.len() < 64 {
        return Err("public_key: the certificate is not DER".into());
    }
    Ok(sha1::Sha1::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

pub struct Keypairs {
    store: Store,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Keypair, StoreError> {
    Ok(Keypair {
        name: text(r, "name")?,
        public_key: text(r, "public_key")?,
        fingerprint: text(r, "fingerprint")?,
        key_type: text(r, "key_type")?,
        created_at: int(r, "created_at")?,
    })
}

impl Keypairs {
    pub fn new(store: Store) -> Self {
        Keypairs { store }
    }

    pub async fn list(&self, user_id: &str) -> Result<Vec<Keypair>, StoreError> {
        self.store
            .fetch_all(
                "SELECT name, public_key, fingerprint, key_type, created_at FROM keypairs WHERE user_id = $1 ORDER BY name",
                &[Value::Text(user_id)],
            )
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    pub async fn get(&self, user_id: &str, name: &str) -> Result<Option<Keypair>, StoreError> {
        self.store
            .fetch_optional(
                "SELECT name, public_key, fingerprint, key_type, created_at FROM keypairs WHERE user_id = $1 AND name = $2",
                &[Value::Text(user_id), Value::Text(name)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    pub async fn create(&self, user_id: &str, k: &Keypair) -> Result<(), StoreError> {
        if self.get(user_id, &k.name).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "Key pair '{}' already exists.",
                k.name
            )));
        }
        self.store
            .execute(
                "INSERT INTO keypairs (user_id, name, public_key, fingerprint, key_type, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    Value::Text(user_id),
                    Value::Text(&k.name),
                    Value::Text(&k.public_key),
                    Value::Text(&k.fingerprint),
                    Value::Text(&k.key_type),
                    Value::Int(k.created_at),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn count(&self, user_id: &str) -> Result<i64, StoreError> {
        Ok(self.list(user_id).await?.len() as i64)
    }

    pub async fn delete(&self, user_id: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM keypairs WHERE user_id = $1 AND name = $2",
                &[Value::Text(user_id), Value::Text(name)],
            )
            .await?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ed25519 public key blob: type name, then 32 key bytes.
    fn ed25519(comment: &str) -> String {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[7u8; 32]);
        format!(
            "ssh-ed25519 {} {comment}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[test]
    fn fingerprints() {
        let (kind, fp) = fingerprint(&ed25519("me@host")).unwrap();
        assert_eq!(kind, "ssh");
        assert_eq!(fp.len(), 47);
        assert_eq!(fp.matches(':').count(), 15);
        assert_eq!(
            fingerprint(&ed25519("other")).unwrap().1,
            fp,
            "comments do not count"
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!",
            "rsa AAAA",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5",
        ] {
            assert!(fingerprint(bad).is_err(), "{bad}");
        }
    }
}
