//! Server delete: recorded on the server's row first (task_state deleting,
//! which nothing else overwrites), answered at once, then carried out in
//! the background: the instance removed from its host (gone already is
//! fine), then the row, claim and actions dropped and a tombstone left, in
//! one transaction. A delete that cannot reach its host is retried by the
//! state sync; one whose host is down (no heartbeat) finishes here, and the
//! orphan reaper removes the instance if that host comes back.

use super::{changeable, record_action, server_host, ComputeError};
use crate::app::App;
use crate::compute::servers::Server;
use crate::context::RequestContext;
use crate::hostd_client::HostdError;
use crate::identity::now;
use crate::store::StoreError;

/// Records the delete and starts it; the server shows task_state deleting
/// until it is gone.
pub async fn delete(app: &App, ctx: &RequestContext, id: &str) -> Result<(), ComputeError> {
    let server = changeable(app, ctx, id, "delete").await?;
    app.servers.mark_deleting(id).await?;
    // Recorded, and kept after the server is gone (listed from 2.21 on).
    record_action(app, ctx, &server, "delete").await;
    match app.me.upgrade() {
        Some(app) => {
            let request_id = ctx.request_id.clone();
            tokio::spawn(async move {
                let done = finish_logged(&app, &server).await;
                let failure = (!done).then_some("the delete is retried by the state sync");
                let _ = app.actions.finish(&server.id, &request_id, failure).await;
            });
        }
        // Stopping: the next start finishes it.
        None => tracing::info!(server = %id, "delete recorded; the next start finishes it"),
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("its host: {0}")]
    Host(HostdError),
    #[error("its ports: {0}")]
    Network(crate::network::NetworkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Undoes a server marked deleting: its instance on the host, then its row,
/// claim and actions, and a tombstone. Safe to repeat.
pub async fn finish(app: &App, server: &Server) -> Result<(), DeleteError> {
    let id = &server.id;
    if let Some(hostd) = server_host(app, server).await {
        match hostd.remove(id).await {
            Ok(()) => {}
            Err(e @ HostdError::Unreachable { .. }) if host_is_down(app, server).await => {
                tracing::warn!(server = %id, "its host is down ({e}): deleted here; the orphan reaper removes the instance if the host returns");
            }
            Err(e) => return Err(DeleteError::Host(e)),
        }
    }
    // Its ports: made ones deleted, given ones free again.
    if let Err(e) = app.network.unplug_server(id).await {
        return Err(DeleteError::Network(e));
    }
    app.nic_requests.delete(id).await?;
    app.servers.delete(id).await?;
    if let Err(e) = app.server_groups.remove_member(id).await {
        tracing::warn!(server = %id, "leaving its server group: {e}");
    }
    Ok(())
}

/// Whether the server's host has missed its heartbeats (or is gone).
async fn host_is_down(app: &App, server: &Server) -> bool {
    let Ok(hosts) = app.hosts.list().await else {
        return false;
    };
    match hosts
        .iter()
        .find(|h| Some(&h.report.host_id) == server.host_id.as_ref())
    {
        Some(h) => now() - h.last_seen > app.config.scheduler.heartbeat_timeout_secs,
        None => true,
    }
}

/// Finishes a delete and logs how it went; whether it finished.
async fn finish_logged(app: &App, server: &Server) -> bool {
    match finish(app, server).await {
        Ok(()) => {
            tracing::info!(server = %server.id, "deleted");
            true
        }
        Err(e) => {
            tracing::warn!(server = %server.id, "finishing its delete: {e}; the state sync retries");
            false
        }
    }
}

/// Finishes the deletes recorded before `before` and left unfinished (by a
/// controller that stopped, or a host that did not answer): at start, all
/// of them; on every round of the state sync, those older than a request
/// takes. Returns how many finished.
pub async fn resume(app: &App, before: i64) -> usize {
    let Ok(pending) = app.servers.deleting(before).await else {
        return 0;
    };
    let mut done = 0;
    for server in pending {
        done += usize::from(finish_logged(app, &server).await);
    }
    done
}
