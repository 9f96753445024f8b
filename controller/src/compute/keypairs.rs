//! Keypairs: SSH public keys (the fingerprint is the MD5 of the key blob)
//! and, from microversion 2.2, x509 certificates (the SHA-1 of the DER).
//! Current clients generate keys themselves (OSC makes ed25519 keys
//! locally); before microversion 2.92 Nova generates one when no public key
//! is given, and so does [`generate`] (ed25519 where Nova makes RSA: what
//! OSC makes too, and every cloud image's sshd takes it), and
//! [`generate_x509`] for the x509 type (WinRM's certificate logins).

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

/// A new x509 key pair as Nova makes one for `user_id`: an RSA-2048 key and
/// a self-signed certificate (SHA-256) for `CN=user_id`, valid ten years,
/// for client authentication, naming `user_id@localhost` as its UPN (what a
/// Windows guest maps a WinRM login by). Returns (certificate PEM, private
/// key PEM in PKCS#1, as Nova's). Seconds of CPU: run it off the runtime.
pub fn generate_x509(user_id: &str) -> Result<(String, String), String> {
    use std::str::FromStr;

    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::rand_core::{OsRng, RngCore};
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::asn1::{Any, Utf8StringRef};
    use x509_cert::der::pem::LineEnding;
    use x509_cert::der::EncodePem;
    use x509_cert::ext::pkix::name::{GeneralName, OtherName};
    use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
    use x509_cert::spki::SubjectPublicKeyInfoOwned;

    /// Microsoft's User Principal Name, in a subjectAltName otherName.
    const UPN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
    const CLIENT_AUTH: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    const TEN_YEARS: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

    let failed =
        |what: &str, e: &dyn std::fmt::Display| format!("generating an x509 key pair: {what}: {e}");
    if user_id.is_empty()
        || !user_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(failed("user id", &"not a plain identifier"));
    }
    let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| failed("RSA key", &e))?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let subject = x509_cert::name::Name::from_str(&format!("CN={user_id}"))
        .map_err(|e| failed("subject", &e))?;
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key())
        .map_err(|e| failed("public key", &e))?;
    // A positive 63-bit serial: random, as RFC 5280 asks of an issuer.
    let serial = x509_cert::serial_number::SerialNumber::from(OsRng.next_u64() >> 1);
    let validity =
        x509_cert::time::Validity::from_now(TEN_YEARS).map_err(|e| failed("validity", &e))?;
    let profile = Profile::Leaf {
        issuer: subject.clone(),
        enable_key_agreement: false,
        enable_key_encipherment: true,
    };
    let mut builder = CertificateBuilder::new(profile, serial, validity, subject, spki, &signer)
        .map_err(|e| failed("certificate", &e))?;
    let upn = format!("{user_id}@localhost");
    let upn = Any::encode_from(&Utf8StringRef::new(&upn).map_err(|e| failed("UPN", &e))?)
        .map_err(|e| failed("UPN", &e))?;
    builder
        .add_extension(&ExtendedKeyUsage(vec![CLIENT_AUTH]))
        .map_err(|e| failed("extended key usage", &e))?;
    builder
        .add_extension(&SubjectAltName(vec![GeneralName::OtherName(OtherName {
            type_id: UPN,
            value: upn,
        })]))
        .map_err(|e| failed("subject alt name", &e))?;
    let cert = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(|e| failed("signing", &e))?;
    let cert = cert
        .to_pem(LineEnding::LF)
        .map_err(|e| failed("certificate PEM", &e))?;
    let private = key
        .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
        .map_err(|e| failed("private key PEM", &e))?;
    Ok((cert, private.as_str().to_owned()))
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
