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
//! - [`interfaces`]: NICs attached to and detached from a server that exists
//! - [`rebuild`]: a fresh root disk from an image, on the same host
//! - [`resize`]: a new flavor on the same host, to confirm or revert
//! - [`snapshot`]: `createImage`, a root disk's snapshot as a Glance image
//! - [`state`]: hostd's states and Nova's, the table of host actions (pure)
//! - [`update`]: name, access addresses, description and metadata
//! - [`sync`]: the reconcilers: instance state sync, orphan reaper, expiry

pub mod action;
pub mod build;
pub mod console;
pub mod create;
pub mod delete;
pub mod interfaces;
pub mod metadata;
pub mod rebuild;
pub mod resize;
pub mod snapshot;
pub mod state;
pub mod sync;
pub mod update;

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
    /// Over a fixed limit (metadata items).
    #[error("{0}")]
    Forbidden(String),
    /// The controller cannot take it now (it is stopping).
    #[error("{0}")]
    Unavailable(String),
    /// The host could not carry it out.
    #[error("{0}")]
    HostFailed(String),
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

/// The server, if the caller may see it and may `action` it: a locked
/// server refuses changes from all but admins, as Nova's lock does (reads,
/// consoles, snapshots and unlocking stay allowed).
pub async fn changeable(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    action: &str,
) -> Result<Server, ComputeError> {
    let server = visible(app, ctx, id).await?;
    let exempt = matches!(
        action,
        "lock" | "unlock" | "os-getConsoleOutput" | "os-getSerialConsole" | "createImage"
    );
    if server.locked && !ctx.is_admin() && !exempt {
        return Err(ComputeError::Conflict(format!("Instance {id} is locked")));
    }
    Ok(server)
}

/// Starts `task` on the server for action `name` (allowed from the
/// vm_states `from`) with one conditional write, so that two racing actions
/// cannot both start: returns the server's hostd and the app to run the
/// background work on, or why the action cannot start now.
async fn begin_host_task(
    app: &App,
    server: &Server,
    name: &str,
    task: &str,
    from: &[&str],
) -> Result<(Hostd, std::sync::Arc<App>), ComputeError> {
    let id = server.id.as_str();
    let conflict = |s: &Server| {
        let why = match &s.task_state {
            Some(t) => format!("task_state {t}"),
            None => format!("vm_state {}", s.vm_state),
        };
        ComputeError::Conflict(format!(
            "Cannot '{name}' instance {id} while it is in {why}"
        ))
    };
    let Some(hostd) = server_host(app, server).await else {
        return Err(conflict(server));
    };
    // Before anything is recorded: a stopping controller takes no action.
    let Some(background) = app.me.upgrade() else {
        return Err(ComputeError::Unavailable(
            "the controller is stopping".into(),
        ));
    };
    if !app.servers.begin_task(id, task, from).await? {
        // Re-read: the state that refused it may be newer than ours.
        return Err(match app.servers.get(id).await? {
            Some(now) => conflict(&now),
            None => not_found(id),
        });
    }
    Ok((hostd, background))
}

/// Records the start of action `name` on the server, under the request's id
/// (`os-instance-actions`); the background work records its end.
async fn record_action(app: &App, ctx: &RequestContext, server: &Server, name: &str) {
    let record = crate::compute::actions::Action {
        request_id: ctx.request_id.clone(),
        server_id: server.id.clone(),
        project_id: server.project_id.clone(),
        user_id: ctx.user_id().to_owned(),
        action: name.to_owned(),
        start_us: crate::compute::actions::now_us(),
        finish_us: None,
        result: None,
        message: None,
    };
    if let Err(e) = app.actions.start(&record).await {
        tracing::warn!(server = %server.id, "recording action {name}: {e}");
    }
}

/// The hostd of the host a server is placed on, if that host is known.
pub(crate) async fn server_host(app: &App, s: &Server) -> Option<Hostd> {
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
