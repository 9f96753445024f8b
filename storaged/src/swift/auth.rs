//! Who a Swift request's Keystone token speaks for: asked of the
//! controller (`GET /internal/v1/token-owner`) and kept 30 seconds (by the
//! token's SHA-256, never the token), so a revoked token stops working
//! within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use storaged_proto::TokenOwner;

use crate::config::Config;

const TTL: Duration = Duration::from_secs(30);
const KEPT: usize = 10_000;

pub struct Tokens {
    config: Config,
    cache: Mutex<HashMap<[u8; 32], (Instant, TokenOwner)>>,
}

impl Tokens {
    pub fn new(config: Config) -> Self {
        Tokens {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The owner of `token`; None when it is not a valid project token.
    pub async fn owner(&self, token: &str) -> Result<Option<TokenOwner>, String> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, owner)) = cache.get(&key) {
                if at.elapsed() < TTL && owner.expires_at > now_secs {
                    return Ok(Some(owner.clone()));
                }
            }
        }
        if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Ok(None);
        }
        let reply = crate::controller::send(
            &self.config,
            hyper::Method::GET,
            "/internal/v1/token-owner",
            &[("x-subject-token", token)],
            bytes::Bytes::new(),
        )
        .await?;
        let status = reply.status().as_u16();
        let body = reply
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        match status {
            200 => {
                let owner: TokenOwner = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= KEPT {
                    cache.retain(|_, (at, _)| at.elapsed() < TTL);
                    if cache.len() >= KEPT {
                        cache.clear();
                    }
                }
                cache.insert(key, (Instant::now(), owner.clone()));
                Ok(Some(owner))
            }
            404 => Ok(None),
            other => Err(format!(
                "the controller answered {other}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}
