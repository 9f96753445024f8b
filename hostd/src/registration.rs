//! Registration with the controller: hostd announces itself and then sends a
//! heartbeat with its capacity every `heartbeat_secs`, as
//! `PUT {controller_url}/internal/v1/hosts/{host_id}` with a JSON body. A
//! failed heartbeat is logged and retried on the next beat; hostd never stops
//! serving its instances because the controller is away.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::config::Controller;
use crate::host;
use crate::supervisor::Supervisor;

pub use hostd_proto::Heartbeat;

fn heartbeat(sup: &Supervisor, controller: &Controller) -> Heartbeat {
    let (memory_mib, _, _) = host::memory();
    let (vcpus_used, memory_used_mib) = sup.used();
    let disk = host::disk(&sup.config.state_dir);
    let (booted_at, load_average) = host::uptime();
    Heartbeat {
        host_id: sup.config.host_id.clone(),
        url: controller.advertise_url.clone(),
        cpus: host::cpus(),
        memory_mib,
        memory_usable_mib: memory_mib.saturating_sub(sup.config.reserved_memory_mib),
        disk_free_mib: disk.free_mib,
        disk_total_mib: disk.total_mib,
        vcpus_used,
        memory_used_mib,
        instances: sup.list().len(),
        kvm_mode: host::kvm().mode.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        booted_at,
        load_average,
    }
}

async fn put(controller: &Controller, path: &str, body: Vec<u8>) -> Result<u16, String> {
    let resp = crate::controller_client::send(
        controller,
        hyper::Method::PUT,
        path,
        &[("content-type", "application/json")],
        Full::new(Bytes::from(body)),
    )
    .await?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Runs forever: one heartbeat now, then one per interval.
pub async fn run(sup: Arc<Supervisor>, controller: Controller) {
    let path = format!("/internal/v1/hosts/{}", sup.config.host_id);
    let mut registered = false;
    let mut ticker = tokio::time::interval(controller.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let body = serde_json::to_vec(&heartbeat(&sup, &controller)).unwrap_or_default();
        match tokio::time::timeout(Duration::from_secs(10), put(&controller, &path, body)).await {
            Ok(Ok(code)) if (200..300).contains(&code) => {
                if !registered {
                    tracing::info!(controller = %controller.url, "registered with the controller");
                    registered = true;
                }
            }
            Ok(Ok(code)) => {
                tracing::warn!(controller = %controller.url, code, "controller refused the heartbeat");
                registered = false;
            }
            Ok(Err(e)) => {
                tracing::warn!(controller = %controller.url, "heartbeat failed: {e}");
                registered = false;
            }
            Err(_) => {
                tracing::warn!(controller = %controller.url, "heartbeat timed out");
                registered = false;
            }
        }
    }
}
