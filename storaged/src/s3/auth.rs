//! Who signs an S3 request: the controller's Keystone knows the EC2
//! credentials; storaged asks it for the one key a request names
//! (`GET /internal/v1/ec2-credentials/{access}`) and keeps the answer a
//! minute, so a revoked key or role stops working within that time and no
//! secret lives here longer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use storaged_proto::Ec2Signer;

use crate::config::Config;

/// How long an answer is kept.
const TTL: Duration = Duration::from_secs(60);
/// The most keys kept at once (least recently fetched go first).
const KEPT: usize = 10_000;

pub struct Signers {
    config: Config,
    cache: Mutex<HashMap<String, (Instant, Ec2Signer)>>,
}

impl Signers {
    pub fn new(config: Config) -> Self {
        Signers {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The signer behind `access`, fresh or asked for; None when the
    /// controller knows no usable key by that name.
    pub async fn get(&self, access: &str) -> Result<Option<Ec2Signer>, String> {
        if let Some(s) = self.cached(access) {
            return Ok(Some(s));
        }
        if access.is_empty()
            || access.len() > 128
            || !access.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Ok(None);
        }
        let reply = crate::controller::send(
            &self.config,
            hyper::Method::GET,
            &format!("/internal/v1/ec2-credentials/{access}"),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
        let status = reply.status();
        let body = reply
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        match status.as_u16() {
            200 => {
                let signer: Ec2Signer = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= KEPT {
                    let now = Instant::now();
                    cache.retain(|_, (at, _)| now.duration_since(*at) < TTL);
                    if cache.len() >= KEPT {
                        cache.clear();
                    }
                }
                cache.insert(access.to_owned(), (Instant::now(), signer.clone()));
                Ok(Some(signer))
            }
            404 => Ok(None),
            other => Err(format!(
                "the controller answered {other}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// The signer behind `access` if it was fetched within the last minute
    /// (as it is for a request whose signature was just checked).
    pub fn cached(&self, access: &str) -> Option<Ec2Signer> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(access)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, s)| s.clone())
    }
}

/// [`Signers`] as s3s asks for secrets.
pub struct Auth(pub std::sync::Arc<Signers>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.get(access_key).await {
            Ok(Some(s)) => Ok(SecretKey::from(s.secret)),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId)),
            Err(e) => {
                tracing::warn!("s3: looking up access key: {e}");
                Err(s3_error!(
                    ServiceUnavailable,
                    "the identity service did not answer"
                ))
            }
        }
    }
}
