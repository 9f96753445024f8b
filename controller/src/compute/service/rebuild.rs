//! `rebuild`: the server gets a fresh root disk from an image (the same one
//! or another) and boots it, keeping its id, flavor, host, key pair and
//! metadata. Answered at once (202); the host's part runs in the background
//! under the task `rebuilding` (the guest powered off, the instance removed
//! with its disk) and then `rebuild_spawning` (the instance made again from
//! the new image and followed until it runs), as Nova names them. A server
//! that was SHUTOFF is SHUTOFF again afterwards; a rebuild that fails leaves
//! the server in ERROR with the reason.

use hostd_proto::instance::{Action as HostdAction, State};

use super::build::{follow_until, instance_spec, root_volume, Failure};
use super::{begin_host_task, not_found, record_action, visible, ComputeError};
use crate::app::App;
use crate::compute::servers::Server;
use crate::context::RequestContext;
use crate::hostd_client::Hostd;

/// What a rebuild request asks for.
pub struct Rebuild {
    pub image_ref: String,
    pub name: Option<String>,
}

/// Starts a rebuild of server `id`; returns the server as it is now.
pub async fn rebuild(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    req: Rebuild,
) -> Result<Server, ComputeError> {
    let server = visible(app, ctx, id).await?;
    if server.image_id.is_empty() {
        same_image_as_root_volume(app, &server, &req.image_ref).await?;
    }
    let image = match app.images.get(&req.image_ref).await? {
        Some(i) if i.visible_to(&server.project_id, ctx.is_admin()) && i.status == "active" => i,
        Some(i) if i.visible_to(&server.project_id, ctx.is_admin()) => {
            return Err(ComputeError::BadRequest(format!(
                "Image {} is not active.",
                req.image_ref
            )))
        }
        _ => {
            return Err(ComputeError::BadRequest(format!(
                "Image {} could not be found.",
                req.image_ref
            )))
        }
    };
    let (hostd, background) = begin_host_task(
        app,
        &server,
        "rebuild",
        "rebuilding",
        &["active", "stopped", "error"],
    )
    .await?;
    // A volume-backed server keeps no image of its own (Nova shows "").
    let image_id = if server.image_id.is_empty() {
        ""
    } else {
        image.id.as_str()
    };
    app.servers
        .set_image(id, image_id, req.name.as_deref())
        .await?;
    record_action(app, ctx, &server, "rebuild").await;
    let stopped = server.vm_state == "stopped";
    let (task_id, request_id) = (id.to_owned(), ctx.request_id.clone());
    tokio::spawn(async move {
        let failure = on_host(&background, &task_id, &hostd, stopped).await;
        if let Err(e) = background
            .actions
            .finish(&task_id, &request_id, failure.as_deref())
            .await
        {
            tracing::warn!(server = %task_id, "recording the end of its rebuild: {e}");
        }
    });
    app.servers.get(id).await?.ok_or_else(|| not_found(id))
}

/// Below microversion 2.93 Nova rebuilds a volume-backed server only with
/// the image its root volume was made from, leaving the volume as it is:
/// the guest starts again from it with its new name and metadata.
/// Reimaging the volume (2.93, Cinder's `os-reimage`) is not served.
async fn same_image_as_root_volume(
    app: &App,
    server: &Server,
    image_ref: &str,
) -> Result<(), ComputeError> {
    let root = app.volumes.store.root_of(&server.id).await?;
    let made_from = root
        .as_ref()
        .and_then(|v| v.image_metadata.as_ref())
        .and_then(|m| m.get("image_id"));
    if made_from.map(String::as_str) == Some(image_ref) {
        return Ok(());
    }
    Err(ComputeError::BadRequest(format!(
        "Image {image_ref} is unacceptable: Unable to rebuild with a different image for a volume-backed server."
    )))
}

/// The host's part; returns why it failed, if it did.
async fn on_host(app: &App, id: &str, hostd: &Hostd, stopped: bool) -> Option<String> {
    let result = replace_instance(app, id, hostd, stopped).await;
    let failure = match result {
        Ok(()) => {
            let (vm, power) = if stopped {
                ("stopped", 4)
            } else {
                ("active", 1)
            };
            let _ = app.servers.set_state(id, vm, None, power, None).await;
            tracing::info!(server = %id, "rebuilt");
            return None;
        }
        Err(Failure::Deleted) => return Some("the server was deleted".into()),
        Err(Failure::Host(why) | Failure::Fatal(why)) => why,
    };
    let fault = format!("Rebuild of instance {id} failed: {failure}");
    tracing::warn!(server = %id, "{fault}");
    let _ = app
        .servers
        .set_state(id, "error", None, 0, Some(&fault))
        .await;
    Some(fault)
}

async fn replace_instance(
    app: &App,
    id: &str,
    hostd: &Hostd,
    stopped: bool,
) -> Result<(), Failure> {
    let host = |e: crate::hostd_client::HostdError| Failure::Host(e.to_string());
    let server = match app.servers.get(id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Failure::Deleted),
        Err(e) => return Err(Failure::Fatal(e.to_string())),
    };
    let host_id = server.host_id.clone().unwrap_or_default();
    let mut spec = instance_spec(app, &server).await.map_err(Failure::Fatal)?;
    if server.image_id.is_empty() {
        // The same root volume, attached to it there already.
        let (root, nbd) = root_volume(app, id, &host_id).await?;
        spec.root_volume = Some(root);
        spec.root_volume_nbd = nbd;
    }
    // A clean power-off first (the guest's filesystems are about to go, but
    // its shutdown may matter to it); one that does not stop is removed hard.
    if !stopped {
        if let Err(e) = hostd.act(id, HostdAction::Stop).await {
            tracing::debug!(server = %id, "stopping before the rebuild: {e}");
        }
    }
    hostd.remove(id).await.map_err(host)?;
    let _ = app
        .servers
        .set_state(
            id,
            &server.vm_state,
            Some("rebuild_spawning"),
            server.power_state,
            None,
        )
        .await;
    match hostd.create(&spec, !stopped).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {}
        Err(e) => return Err(host(e)),
    }
    let want = if stopped {
        State::Shutoff
    } else {
        State::Running
    };
    follow_until(app, id, &host_id, hostd, want).await
}
