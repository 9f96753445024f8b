//! Registering with the controller and staying registered: a heartbeat
//! (`PUT /internal/v1/storage-hosts/{host_id}`, this host's token) at
//! start and then every `heartbeat_secs`, carrying where the API is and
//! the volumes' free space, which the controller's scheduler places new
//! volumes by. A controller that is down is retried at the next beat.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use storaged_proto::Heartbeat;

use crate::api::State;
use crate::config::Config;

/// How long one heartbeat may take, connection to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeats saying the API is at `url`, forever.
pub async fn run(config: Config, url: String, state: Arc<State>) {
    let mut failing = false;
    loop {
        let capacity = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.volumes.capacity()).await
        };
        let outcome = match capacity {
            Ok(Ok((total_bytes, free_bytes))) => {
                let beat = Heartbeat {
                    host_id: config.host_id.clone(),
                    url: url.clone(),
                    peer_url: config.peer_url.clone(),
                    availability_zone: config.availability_zone.clone(),
                    total_bytes,
                    free_bytes,
                };
                tokio::time::timeout(CALL_TIMEOUT, send(&config, &beat))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
            }
            Ok(Err(e)) => Err(format!("the volumes' capacity: {e}")),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) if failing => {
                tracing::info!("registered with the controller again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!("heartbeat: {e}");
                }
                failing = true;
            }
        }
        tokio::time::sleep(config.heartbeat).await;
    }
}

async fn send(config: &Config, beat: &Heartbeat) -> Result<(), String> {
    let body = serde_json::to_vec(beat).map_err(|e| e.to_string())?;
    let resp = crate::controller::send(
        config,
        hyper::Method::PUT,
        &format!("/internal/v1/storage-hosts/{}", config.host_id),
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await?;
    let status = resp.status();
    let text = Limited::new(resp.into_body(), 4096)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the controller answered {status}: {text}"))
    }
}
