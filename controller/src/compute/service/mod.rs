//! The servers' logic, between Nova's HTTP handlers (`api::servers`, which
//! parse and render) and the stores (`compute::servers` and friends, which
//! are SQL). Each entry point takes the request's context and returns a
//! [`ComputeError`]; work that outlives a request (a build, a delete, an
//! action on the host) is started here, never in a handler.
//!
//! - [`create`]: checks and admits a create, and resumes cut builds
//! - [`build`]: the build as logged steps with undo (scheduling, spawning;
//!   the server's task_state is the log), run in the background
//! - [`delete`]: records a delete and finishes it in the background
//! - [`metadata`]: what a guest is told about itself (its config drive)
//! - [`action`]: stop, start, pause, suspend, reboot, ... and console output
//! - [`console`]: serial console URLs and the websocket sessions behind them
//! - [`rebuild`]: a fresh root disk from an image, on the same host
//! - [`snapshot`]: `createImage`, a root disk's snapshot as a Glance image
//! - [`state`]: hostd's states and Nova's, the table of host actions (pure)
//! - [`sync`]: the reconcilers: instance state sync, orphan reaper, expiry

pub mod action;
pub mod build;
pub mod console;
pub mod create;
pub mod delete;
pub mod metadata;
pub mod rebuild;
pub mod snapshot;
pub mod state;
pub mod sync;

use super::servers::{OverQuota, Server};
use crate::app::App;
use crate::context::RequestContext;
use crate::hostd_client::Hostd;
use crate::store::StoreError;

/// Why a compute request failed, in words Nova clients show their users.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "Quota exceeded for {}: Requested {}, but already used {} of {} {}",
        .0.resource, .0.requested, .0.used, .0.limit, .0.resource
    )]
    OverQuota(OverQuota),
    /// The server's state does not allow it now.
    #[error("{0}")]
    Conflict(String),
    /// The controller cannot take it now (it is stopping).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_found(id: &str) -> ComputeError {
    ComputeError::NotFound(format!("Instance {id} could not be found."))
}

/// The server, if the caller may see it (its project's, or any for admins).
pub async fn visible(app: &App, ctx: &RequestContext, id: &str) -> Result<Server, ComputeError> {
    match app.servers.get(id).await? {
        Some(s) if ctx.is_admin() || s.project_id == ctx.project_id() => Ok(s),
        _ => Err(not_found(id)),
    }
}

/// The hostd of the host a server is placed on, if that host is known.
async fn server_host(app: &App, s: &Server) -> Option<Hostd> {
    host(app, s.host_id.as_ref()?).await
}

/// The hostd of a registered host.
async fn host(app: &App, host_id: &str) -> Option<Hostd> {
    let url = app
        .hosts
        .list()
        .await
        .ok()?
        .into_iter()
        .find(|h| h.report.host_id == host_id)?
        .report
        .url;
    Some(Hostd::new(url, app.hostd_token(host_id)))
}
