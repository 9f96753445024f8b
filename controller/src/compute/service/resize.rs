//! `resize`, `confirmResize`, `revertResize`: a server changes flavor on its
//! host (vCPUs, RAM, a root disk that only grows), as Nova's same-host
//! resize does. The host's claim moves to the new flavor when the resize is
//! accepted (refused at once if the host has no room); the guest is powered
//! off, hostd resizes the instance keeping its old root disk, and the guest
//! starts again (task `resize_prep`, `resize_migrating`, `resize_finish`).
//! The server then waits in VERIFY_RESIZE: a confirm drops the old disk, a
//! revert (`resize_reverting`) brings it and the old flavor back. A resize
//! that fails on the host is undone the same way. A volume-backed server
//! resizes the same way with its root volume left as it is.

use hostd_proto::instance::{Action as HostdAction, Size};

use super::{begin_host_task, record_action, server_host, visible, ComputeError};
use crate::app::App;
use crate::compute::scheduler::Resources;
use crate::compute::servers::{OverQuota, Server};
use crate::context::RequestContext;
use crate::hostd_client::{Hostd, HostdError};

/// As Nova: a resize's growth in vCPUs and RAM must fit the project's
/// quota, before any host is asked for room (a 403, where a full host is a
/// 409).
async fn within_quota(
    app: &App,
    server: &Server,
    vcpus: i64,
    ram_mib: i64,
) -> Result<(), ComputeError> {
    let quota = app.quotas.get(&server.project_id).await?;
    let used = app.servers.usage(&server.project_id).await?;
    for (resource, limit, used, requested) in [
        ("cores", quota.cores, used.cores, vcpus - server.vcpus),
        ("ram", quota.ram_mib, used.ram_mib, ram_mib - server.ram_mib),
    ] {
        if requested > 0 && limit >= 0 && used + requested > limit {
            return Err(ComputeError::OverQuota(OverQuota {
                resource,
                limit,
                used,
                requested,
            }));
        }
    }
    Ok(())
}

fn resources(s: &Server) -> Resources {
    Resources {
        flavor_id: s.flavor_id.clone(),
        vcpus: s.vcpus,
        ram_mib: s.ram_mib,
        disk_gib: s.disk_gib,
    }
}

/// The instance's size on its host for server resources `r`.
fn size(r: &Resources, has_root_disk: bool) -> Result<Size, String> {
    Ok(Size {
        vcpus: u8::try_from(r.vcpus).map_err(|_| format!("{} vCPUs: too many", r.vcpus))?,
        memory_mib: u32::try_from(r.ram_mib).map_err(|_| format!("{} MiB: too much", r.ram_mib))?,
        root_disk_gib: (has_root_disk && r.disk_gib > 0)
            .then(|| u32::try_from(r.disk_gib).ok())
            .flatten(),
    })
}

/// Starts a resize of server `id` to flavor `flavor_ref`.
pub async fn resize(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    flavor_ref: &str,
) -> Result<(), ComputeError> {
    let server = visible(app, ctx, id).await?;
    let flavor = match app
        .flavors
        .get_for(flavor_ref, Some(ctx.project_id()), ctx.is_admin())
        .await?
    {
        Some(f) => f,
        None => {
            return Err(ComputeError::BadRequest(format!(
                "Flavor {flavor_ref} could not be found."
            )))
        }
    };
    if flavor.id == server.flavor_id {
        return Err(ComputeError::BadRequest(
            "When resizing, instances must change flavor!".into(),
        ));
    }
    // A volume-backed server's root disk is its volume (grown through
    // Cinder, not by a flavor): only its vCPUs and RAM change, on the same
    // host, as Nova resizes one.
    let volume_backed = server.image_id.is_empty();
    if !volume_backed && flavor.disk_gib < server.disk_gib {
        return Err(ComputeError::BadRequest(
            "Resize error: Unable to resize disk down.".into(),
        ));
    }
    // The ephemeral and swap disks hold the guest's filesystems: they stay
    // as they are.
    if (flavor.ephemeral_gib, flavor.swap_mib) != (server.ephemeral_gib, server.swap_mib) {
        return Err(ComputeError::BadRequest(format!(
            "Resize error: the flavor's ephemeral disk ({} GiB) and swap ({} MiB) must be the server's ({} GiB, {} MiB)",
            flavor.ephemeral_gib, flavor.swap_mib, server.ephemeral_gib, server.swap_mib
        )));
    }
    within_quota(app, &server, flavor.vcpus, flavor.ram_mib).await?;
    let (hostd, background) = begin_host_task(
        app,
        &server,
        "resize",
        "resize_prep",
        &["active", "stopped"],
    )
    .await?;
    let from = resources(&server);
    let to = Resources {
        flavor_id: flavor.id.clone(),
        vcpus: flavor.vcpus,
        ram_mib: flavor.ram_mib,
        disk_gib: flavor.disk_gib,
    };
    let host = server.host_id.clone().unwrap_or_default();
    let claimed = app.scheduler.resize(id, &host, &from, &to).await;
    if !matches!(claimed, Ok(true)) {
        let _ = app.servers.clear_task(id).await;
        claimed?;
        return Err(ComputeError::Conflict(format!(
            "No valid host was found. {host}: not enough free vCPUs or RAM for flavor {}",
            flavor.name
        )));
    }
    record_action(app, ctx, &server, "resize").await;
    if let Err(e) = app
        .migrations
        .record_resize(
            id,
            &host,
            &server.flavor_id,
            &flavor.id,
            crate::identity::now(),
        )
        .await
    {
        tracing::warn!(server = %id, "recording the resize's migration: {e}");
    }
    let has_root_disk = has_root_disk(app, &server).await;
    let (id, request_id) = (id.to_owned(), ctx.request_id.clone());
    tokio::spawn(async move {
        let was_on = server.vm_state == "active";
        let result = on_host(&background, &server, &hostd, &to, has_root_disk).await;
        let failure = match result {
            Ok(()) => {
                let power = if was_on { 1 } else { 4 };
                let _ = background
                    .servers
                    .set_state(&id, "resized", None, power, None)
                    .await;
                migration(&background, &id, "migrating", "finished").await;
                tracing::info!(server = %id, flavor = %to.flavor_id, "resized; to confirm or revert");
                None
            }
            Err(HostFailure { why, resized }) => {
                tracing::warn!(server = %id, "resize failed: {why}; undoing it");
                if resized {
                    let _ = hostd.end_resize(&id, false).await;
                }
                let _ = background.scheduler.end_resize(&id, &host, &to, true).await;
                if was_on {
                    let _ = hostd.act(&id, HostdAction::Start).await;
                }
                let (vm, power) = if was_on {
                    ("active", 1)
                } else {
                    ("stopped", 4)
                };
                let _ = background
                    .servers
                    .set_state(&id, vm, None, power, None)
                    .await;
                migration(&background, &id, "migrating", "error").await;
                Some(why)
            }
        };
        let _ = background
            .actions
            .finish(&id, &request_id, failure.as_deref())
            .await;
    });
    Ok(())
}

/// Moves the server's resize record on (`os-migrations`); a failure to is
/// logged, the resize itself goes on.
async fn migration(app: &App, id: &str, from: &str, to: &str) {
    if let Err(e) = app
        .migrations
        .advance(id, from, to, crate::identity::now())
        .await
    {
        tracing::warn!(server = %id, "its resize's migration record to {to}: {e}");
    }
}

async fn has_root_disk(app: &App, server: &Server) -> bool {
    matches!(app.images.get(&server.image_id).await, Ok(Some(i))
        if !i.properties.contains_key("kernel_id")
            && matches!(i.disk_format.as_deref(), Some("raw" | "qcow2" | "ami")))
}

/// Why a resize failed on the host, and whether the host resized the
/// instance before (so there is something to revert).
struct HostFailure {
    why: String,
    resized: bool,
}

async fn on_host(
    app: &App,
    server: &Server,
    hostd: &Hostd,
    to: &Resources,
    has_root_disk: bool,
) -> Result<(), HostFailure> {
    let before = |why: String| HostFailure {
        why,
        resized: false,
    };
    let id = server.id.as_str();
    let task = |t: &'static str| async move {
        let _ = app
            .servers
            .set_state(id, &server.vm_state, Some(t), server.power_state, None)
            .await;
    };
    let was_on = server.vm_state == "active";
    task("resize_migrating").await;
    if was_on {
        hostd
            .act(id, HostdAction::Stop)
            .await
            .map_err(|e| before(format!("powering off: {e}")))?;
    }
    let size = size(to, has_root_disk).map_err(before)?;
    // A failed call may still have resized (an answer lost on the way), so
    // it is reverted like one that succeeded.
    hostd.resize(id, size).await.map_err(|e| HostFailure {
        why: format!("resizing: {e}"),
        resized: true,
    })?;
    task("resize_finish").await;
    if was_on {
        hostd
            .act(id, HostdAction::Start)
            .await
            .map_err(|e| HostFailure {
                why: format!("starting with the new flavor: {e}"),
                resized: true,
            })?;
    }
    Ok(())
}

/// Confirms a resize (the old root disk goes); answered when done.
pub async fn confirm(app: &App, ctx: &RequestContext, id: &str) -> Result<(), ComputeError> {
    let server = resized(app, ctx, id, "confirmResize").await?;
    let hostd = server_host(app, &server)
        .await
        .ok_or_else(|| ComputeError::Conflict(format!("instance {id}: its host is unknown")))?;
    match hostd.end_resize(id, true).await {
        Ok(_) => {}
        // Confirmed before (a retried request): nothing kept to drop.
        Err(HostdError::Refused { status: 409, .. }) => {}
        Err(e) => {
            return Err(ComputeError::Conflict(format!(
                "confirming the resize: {e}"
            )))
        }
    }
    let host = server.host_id.clone().unwrap_or_default();
    app.scheduler
        .end_resize(id, &host, &resources(&server), false)
        .await?;
    let (vm, power) = if server.power_state == 1 {
        ("active", 1)
    } else {
        ("stopped", 4)
    };
    app.servers.set_state(id, vm, None, power, None).await?;
    migration(app, id, "finished", "confirmed").await;
    record_action(app, ctx, &server, "confirmResize").await;
    let _ = app.actions.finish(id, &ctx.request_id, None).await;
    Ok(())
}

/// Reverts a resize in the background: the old flavor and root disk back.
pub async fn revert(app: &App, ctx: &RequestContext, id: &str) -> Result<(), ComputeError> {
    let server = resized(app, ctx, id, "revertResize").await?;
    let (hostd, background) = begin_host_task(
        app,
        &server,
        "revertResize",
        "resize_reverting",
        &["resized"],
    )
    .await?;
    record_action(app, ctx, &server, "revertResize").await;
    let (id, request_id) = (id.to_owned(), ctx.request_id.clone());
    tokio::spawn(async move {
        let was_on = server.power_state == 1;
        let host = server.host_id.clone().unwrap_or_default();
        let mut failure = None;
        if was_on {
            if let Err(e) = hostd.act(&id, HostdAction::Stop).await {
                failure = Some(format!("powering off: {e}"));
            }
        }
        if failure.is_none() {
            match hostd.end_resize(&id, false).await {
                Ok(_) => {
                    let _ = background
                        .scheduler
                        .end_resize(&id, &host, &resources(&server), true)
                        .await;
                }
                Err(e) => failure = Some(format!("reverting: {e}")),
            }
        }
        if was_on {
            if let Err(e) = hostd.act(&id, HostdAction::Start).await {
                failure.get_or_insert(format!("starting again: {e}"));
            }
        }
        if failure.is_none() {
            migration(&background, &id, "finished", "reverted").await;
        }
        let (vm, power) = match (&failure, was_on) {
            (Some(_), _) => ("resized", server.power_state),
            (None, true) => ("active", 1),
            (None, false) => ("stopped", 4),
        };
        let _ = background
            .servers
            .set_state(&id, vm, None, power, None)
            .await;
        let _ = background
            .actions
            .finish(&id, &request_id, failure.as_deref())
            .await;
    });
    Ok(())
}

/// The server, if it waits in VERIFY_RESIZE.
async fn resized(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    action: &str,
) -> Result<Server, ComputeError> {
    let server = visible(app, ctx, id).await?;
    if server.vm_state != "resized" || server.task_state.is_some() {
        return Err(ComputeError::Conflict(format!(
            "Cannot '{action}' instance {id} while it is in vm_state {}",
            server.vm_state
        )));
    }
    Ok(server)
}
