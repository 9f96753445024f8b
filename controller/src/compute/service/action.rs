//! Server actions that go to the host (stop, start, pause, suspend, reboot,
//! ...): the task is started on the server's row with one conditional write
//! (so two racing actions cannot both start), the request is answered at
//! once (202, as Nova does), and the host carries it out in the background;
//! the outcome is recorded as the server's state and in its instance actions.
//! Also the console output, read from the host while the client waits.

use super::state::{HostAction, ServerAction};
use super::{begin_host_task, record_action, server_host, visible, ComputeError};
use crate::app::App;
use crate::context::RequestContext;
use crate::hostd_client::Hostd;

/// Starts `action` on the server, or says why it cannot start now.
pub async fn act(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    action: ServerAction,
) -> Result<(), ComputeError> {
    let server = visible(app, ctx, id).await?;
    let act = action.on_host();
    let (hostd, background) = begin_host_task(app, &server, act.name, act.task, act.from).await?;
    record_action(app, ctx, &server, act.name).await;
    let (id, request_id) = (id.to_owned(), ctx.request_id.clone());
    tokio::spawn(async move { on_host(&background, &id, &hostd, action, act, &request_id).await });
    Ok(())
}

/// Nova's reset-state (`os-resetState`, admins): the server's vm_state
/// becomes `error` or `active` and any task is dropped; nothing changes on
/// the host. How an operator clears a server stuck in a task, or marks one
/// broken.
pub async fn reset_state(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    state: &str,
) -> Result<(), ComputeError> {
    if !ctx.is_admin() {
        return Err(ComputeError::Forbidden(
            "Policy doesn't allow os_compute_api:os-admin-actions:reset_state to be performed: admin only."
                .into(),
        ));
    }
    if !["error", "active"].contains(&state) {
        return Err(ComputeError::BadRequest(format!(
            "Invalid input for field/attribute state. Value: {state}. '{state}' is not one of ['active', 'error']"
        )));
    }
    let server = visible(app, ctx, id).await?;
    // The fault stays with an error, as the server's last failure.
    let fault = if state == "error" {
        server.fault.as_deref()
    } else {
        None
    };
    app.servers
        .set_state(id, state, None, server.power_state, fault)
        .await?;
    tracing::info!(server = %id, state, "state reset by an admin");
    Ok(())
}

/// Nova's `restore` and `forceDelete`, which act on SOFT_DELETED servers
/// only. Deletes here are immediate (Nova with `reclaim_instance_interval`
/// 0), so no server is ever in that state: both are refused as Nova refuses
/// them on any other.
pub async fn on_soft_deleted(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    action: &str,
) -> Result<(), ComputeError> {
    let server = visible(app, ctx, id).await?;
    Err(ComputeError::Conflict(format!(
        "Cannot '{action}' instance {id} while it is in vm_state {}",
        server.vm_state
    )))
}

/// Nova's `injectNetworkInfo` (admins): re-apply the server's network
/// configuration. Each host's netd already converges its ports to the
/// intended state, continuously, and guests read theirs over DHCP and the
/// metadata service: there is nothing to push, so this only checks the
/// caller and the server.
pub async fn inject_network_info(
    app: &App,
    ctx: &RequestContext,
    id: &str,
) -> Result<(), ComputeError> {
    if !ctx.is_admin() {
        return Err(ComputeError::Forbidden(
            "Policy doesn't allow os_compute_api:os-admin-actions:inject_network_info to be performed: admin only."
                .into(),
        ));
    }
    visible(app, ctx, id).await.map(drop)
}

/// Carries out an accepted action on the server's host and records the
/// outcome: the new state, or the old one with the action marked failed.
async fn on_host(
    app: &App,
    id: &str,
    hostd: &Hostd,
    action: ServerAction,
    act: HostAction,
    request_id: &str,
) {
    let failure = match hostd.act(id, act.hostd).await {
        Ok(instance) => {
            let (vm, power) = action.outcome(instance.state);
            let _ = app.servers.set_state(id, vm, None, power, None).await;
            tracing::info!(server = %id, action = act.name, "done");
            None
        }
        Err(e) => {
            tracing::warn!(server = %id, action = act.name, "failed: {e}");
            let _ = app.servers.clear_task(id).await;
            Some(e.to_string())
        }
    };
    if let Err(e) = app.actions.finish(id, request_id, failure.as_deref()).await {
        tracing::warn!(server = %id, "recording the end of {}: {e}", act.name);
    }
}

/// Nova's server diagnostics (admins) as served below 2.48, where each
/// hypervisor answers its own keys: what the server's VMM reports of
/// itself, read from its host. `memory` is the guest's RAM and
/// `memory-rss` what the VMM process holds of it and of its own (KiB, as
/// libvirt's); `uptime` in seconds; `cpuN_exits` each vCPU's exits to the
/// VMM.
pub async fn diagnostics(
    app: &App,
    ctx: &RequestContext,
    id: &str,
) -> Result<serde_json::Value, ComputeError> {
    if !ctx.is_admin() {
        return Err(ComputeError::Forbidden(
            "Policy doesn't allow os_compute_api:os-server-diagnostics to be performed: admin only."
                .into(),
        ));
    }
    let server = visible(app, ctx, id).await?;
    let refused = || {
        ComputeError::Conflict(format!(
            "Cannot 'get_diagnostics' instance {id} while it is in vm_state {}",
            server.vm_state
        ))
    };
    if !["active", "paused", "suspended"].contains(&server.vm_state.as_str()) {
        return Err(refused());
    }
    let hostd = server_host(app, &server).await.ok_or_else(refused)?;
    let m = hostd
        .metrics(id)
        .await
        .map_err(|e| ComputeError::Conflict(format!("diagnostics unavailable: {e}")))?;
    Ok(diagnostics_of(&m))
}

/// The VMM's metrics (`/metrics` through hostd) as diagnostics.
fn diagnostics_of(m: &serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Value};
    let exits = |e: &Value| -> u64 {
        e.as_object()
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
    };
    let mut d = json!({
        "driver": "virga",
        "uptime": m["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        "memory": m["guest_memory_kib"].as_u64().unwrap_or(0),
        "memory-rss": m["memory"]["rss_kib"].as_u64().unwrap_or(0),
        "memory-peak-rss": m["memory"]["peak_rss_kib"].as_u64().unwrap_or(0),
    });
    if let (Some(o), Some(vcpus)) = (d.as_object_mut(), m["per_vcpu_exits"].as_array()) {
        o.insert("num_cpus".into(), json!(vcpus.len()));
        for (n, e) in vcpus.iter().enumerate() {
            o.insert(format!("cpu{n}_exits"), json!(exits(e)));
        }
    }
    d
}

/// The last `lines` lines (1 to 10,000) of the server's console.
pub async fn console_output(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    lines: i64,
) -> Result<String, ComputeError> {
    let server = visible(app, ctx, id).await?;
    let Some(hostd) = server_host(app, &server).await else {
        return Err(ComputeError::Conflict(format!(
            "Cannot get the console of instance {id} while it is in vm_state {}",
            server.vm_state
        )));
    };
    let lines = u32::try_from(lines.clamp(1, 10_000)).unwrap_or(10_000);
    let text = hostd
        .console(id, lines)
        .await
        .map_err(|e| ComputeError::Conflict(format!("console unavailable: {e}")))?;
    Ok(tail(&String::from_utf8_lossy(&text), lines as usize))
}

/// The last `n` pieces of `text` split at newlines, joined again: Nova's
/// `length`, under which a log ending in a newline counts its empty last
/// piece as a line.
fn tail(text: &str, n: usize) -> String {
    let pieces: Vec<&str> = text.split('\n').collect();
    pieces[pieces.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{diagnostics_of, tail};

    #[test]
    fn diagnostics_are_the_vmms_metrics() {
        let m = serde_json::json!({
            "uptime_ms": 61_500, "guest_memory_kib": 262_144,
            "memory": {"rss_kib": 90_000, "peak_rss_kib": 95_000},
            "per_vcpu_exits": [{"io_in": 3, "io_out": 4, "hlt": 0}, {"io_in": 1}],
            "vcpu_exits": {"io_in": 4, "io_out": 4},
        });
        assert_eq!(
            diagnostics_of(&m),
            serde_json::json!({
                "driver": "virga", "uptime": 61, "memory": 262_144, "memory-rss": 90_000,
                "memory-peak-rss": 95_000, "num_cpus": 2, "cpu0_exits": 7, "cpu1_exits": 1,
            })
        );
    }

    #[test]
    fn console_output_is_cut_as_nova_cuts_it() {
        assert_eq!(tail("a\nb\nc\n", 3), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 3).split('\n').count(), 3);
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 2), "");
    }
}
