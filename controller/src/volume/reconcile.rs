//! The volume reconciler: a volume in a transient status (`creating`,
//! `extending`, `deleting`) has its storage host's part done, and then its
//! status moved on. Every storaged call is idempotent and every status
//! change conditional, so a request's own run, the periodic pass and a run
//! after a controller or storaged crash may overlap or repeat freely.
//!
//! A storage host that cannot be reached is tried again at the next pass
//! while it is alive; once it has been silent past the heartbeat timeout,
//! a create or an extend ends in `error` / `error_extending` saying so. A
//! delete waits for it (its data may still be there).

use std::sync::Arc;
use std::time::Duration;

use super::model::{Volume, SNAPSHOT_TRANSIENT, TRANSIENT};
use crate::app::App;
use crate::background::{Run, Task};
use crate::identity::now;
use crate::storaged_client::{StorageError, Storaged};

pub fn tasks() -> Vec<Task> {
    vec![Task {
        name: "volumes",
        period: Duration::from_secs(5),
        run: |app| -> Run { Box::pin(pass(app)) },
    }]
}

async fn pass(app: Arc<App>) -> String {
    // In use too: a server deleted under its volumes lets go of them.
    let statuses: Vec<&str> = TRANSIENT.iter().copied().chain(["in-use"]).collect();
    let pending = match app.volumes.store.in_status(&statuses).await {
        Ok(v) => v,
        Err(e) => return format!("listing volumes: {e}"),
    };
    for v in &pending {
        converge(&app, &v.id).await;
    }
    // The volumes servers boot from: let go of with their servers.
    let roots = app.volumes.store.roots().await.unwrap_or_default();
    for v in roots
        .iter()
        .filter(|r| !pending.iter().any(|p| p.id == r.id))
    {
        converge(&app, &v.id).await;
    }
    let snapshots = match app
        .volumes
        .store
        .snapshots_in_status(SNAPSHOT_TRANSIENT)
        .await
    {
        Ok(s) => s,
        Err(e) => return format!("listing snapshots: {e}"),
    };
    for s in &snapshots {
        converge_snapshot(&app, &s.id).await;
    }
    format!(
        "{} volumes in a transient status or in use, {} snapshots in a transient status looked at",
        pending.len(),
        snapshots.len()
    )
}

/// Does what snapshot `id`'s status promises, once.
pub async fn converge_snapshot(app: &App, id: &str) {
    if let Err(e) = try_converge_snapshot(app, id).await {
        tracing::warn!(snapshot = id, "{e}");
    }
}

/// A storage host's storaged, and whether it has been heard from recently.
async fn storaged_of(app: &App, host_id: &str) -> Result<(Storaged, bool), String> {
    let host = app
        .volumes
        .store
        .storage_host(host_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("storage host {host_id} never registered"))?;
    let alive = now() - host.last_seen <= app.config.scheduler.heartbeat_timeout_secs;
    Ok((Storaged::new(&host.url, app.hostd_token(host_id)), alive))
}

async fn try_converge_snapshot(app: &App, id: &str) -> Result<(), String> {
    let store = &app.volumes.store;
    let err = |e: crate::store::StoreError| e.to_string();
    let Some(s) = store.snapshot(id).await.map_err(err)? else {
        return Ok(());
    };
    if !SNAPSHOT_TRANSIENT.contains(&s.status.as_str()) {
        return Ok(());
    }
    let (storaged, alive) = storaged_of(app, &s.storage_host).await?;
    let fail = |status: &'static str, e: StorageError| {
        let s = &s;
        async move {
            let fault = if alive {
                e.to_string()
            } else {
                format!("storage host {} is down: {e}", s.storage_host)
            };
            store
                .snapshot_transition(&s.id, &[&s.status], status, Some(&fault), now())
                .await
                .map_err(err)?;
            Err::<(), String>(fault)
        }
    };
    match s.status.as_str() {
        "creating" => {
            // A volume plugged into a guest (taken with `force`) is frozen
            // and then its server's VMM moved onto the fresh overlay: the
            // guest's writes until the move are the snapshot's, none after.
            // Until the move is done the snapshot stays `creating` (nothing
            // reads it) and an attach waits for it.
            let Some(volume) = store.get(&s.volume_id).await.map_err(err)? else {
                return fail(
                    "error",
                    StorageError::Refused(409, "its volume is gone".into()),
                )
                .await;
            };
            let plugged = match volume.status.as_str() {
                "in-use" => volume.attachment.clone(),
                // Its guest is letting go: taken once it has.
                "detaching" => return Ok(()),
                _ => None,
            };
            if plugged.as_ref().is_some_and(|a| a.external) {
                return fail(
                    "error",
                    StorageError::Refused(
                        409,
                        "its volume is in use outside this cloud's compute service".into(),
                    ),
                )
                .await;
            }
            // On another host the volume is storaged's NBD export, which
            // storaged itself moves as it takes the snapshot.
            let plugged = plugged.filter(|a| a.host.as_deref() == Some(s.storage_host.as_str()));
            match storaged
                .snapshot(&s.id, &s.volume_id, plugged.is_some())
                .await
            {
                Ok(_) => {}
                Err(StorageError::Unreachable(..)) if alive => return Ok(()),
                Err(e) => return fail("error", e).await,
            }
            if let Some(host_id) = plugged.as_ref().and_then(|a| a.host.as_deref()) {
                if let Err(e) = move_plugged(app, &storaged, &volume, host_id).await {
                    return match e {
                        Moved::Later(why) => Err(why),
                        Moved::Failed(why) => fail("error", StorageError::Refused(409, why)).await,
                    };
                }
                // The old file is written no more: storaged may merge it.
                match storaged.settle(&s.id).await {
                    Ok(()) => {}
                    Err(StorageError::Unreachable(..)) if alive => return Ok(()),
                    // The snapshot is whole; its layer only stays unmerged.
                    Err(e) => tracing::warn!(snapshot = s.id, "settling the snapshot's layer: {e}"),
                }
            }
            store
                .snapshot_transition(&s.id, &["creating"], "available", None, now())
                .await
                .map_err(err)?;
        }
        "deleting" => match storaged.delete_snapshot(&s.id).await {
            Ok(()) => {
                store.remove_snapshot(&s.id).await.map_err(err)?;
            }
            // Its data may still be there: wait for the host.
            Err(StorageError::Unreachable(..)) => {}
            Err(e) => return fail("error_deleting", e).await,
        },
        _ => {}
    }
    Ok(())
}

/// Why a plugged volume's server was not moved onto its new files.
enum Moved {
    /// Its host or VMM is away for now: the next pass tries again.
    Later(String),
    Failed(String),
}

/// Moves the server volume `v` is plugged into on `host_id` onto the
/// volume's files as they are now (a snapshot just froze the old ones).
/// Repeating it is harmless; a server or disk already gone has nothing to
/// move.
async fn move_plugged(
    app: &App,
    storaged: &Storaged,
    v: &Volume,
    host_id: &str,
) -> Result<(), Moved> {
    let connection = match storaged.export(&v.id, host_id).await {
        Ok(c) => c,
        Err(StorageError::Unreachable(_, e)) => return Err(Moved::Later(e)),
        Err(e) => return Err(Moved::Failed(e.to_string())),
    };
    let Some(server) = plugged_into(app, v).await.map_err(Moved::Later)? else {
        return Ok(());
    };
    let Some(hostd) = crate::compute::service::server_host(app, &server).await else {
        return Err(Moved::Later(format!(
            "host {host_id} has not registered (again) yet"
        )));
    };
    match hostd
        .move_disk(&server.id, &v.device_id(), &connection)
        .await
    {
        Ok(_) => {
            tracing::info!(
                volume = v.id,
                server = server.id,
                "server moved onto the volume's new files"
            );
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) if e.is_transient() => {
            Err(Moved::Later(format!("moving server {}: {e}", server.id)))
        }
        Err(e) => Err(Moved::Failed(format!(
            "moving server {} onto the volume's new files: {e}",
            server.id
        ))),
    }
}

/// Does what volume `id`'s status promises, following for up to a minute
/// what waits on another host: a create going on in the background on the
/// storage host (filled from an image), an extend, attach or detach whose
/// server's VMM is restarting. The periodic pass follows it after that.
pub async fn converge_promptly(app: &App, id: &str) {
    let mut pause = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        converge(app, id).await;
        let waiting = matches!(
            app.volumes.store.get(id).await,
            Ok(Some(v)) if ["creating", "extending", "attaching", "detaching"].contains(&v.status.as_str())
        );
        if !waiting || tokio::time::Instant::now() + pause > deadline {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Does what volume `id`'s status promises, once.
pub async fn converge(app: &App, id: &str) {
    if let Err(e) = try_converge(app, id).await {
        tracing::warn!(volume = id, "{e}");
    }
}

async fn try_converge(app: &App, id: &str) -> Result<(), String> {
    let store = &app.volumes.store;
    let Some(v) = store.get(id).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    if let Some(server_id) = &v.root_of {
        // A server's root volume: its build attaches it; it is let go of
        // (or deleted, if it was to go with the server) once the server is
        // gone.
        let server = app
            .servers
            .get(server_id)
            .await
            .map_err(|e| e.to_string())?;
        let making = ["creating", "extending"].contains(&v.status.as_str());
        if server.is_some_and(|s| s.vm_state != "deleted") {
            // Its own work (made from an image for the server) goes on; its
            // attachment is the server's build's.
            return if making {
                converge_status(app, &v).await
            } else {
                Ok(())
            };
        }
        if making {
            // Made for a server that is gone: finish that first.
            return converge_status(app, &v).await;
        }
        store
            .free_root(id, now())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(volume = id, server = server_id, "root volume let go of");
        let Some(v) = store.get(id).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        return converge_status(app, &v).await;
    }
    converge_status(app, &v).await
}

/// What a volume's own status promises (not a root volume's server).
async fn converge_status(app: &App, v: &Volume) -> Result<(), String> {
    let store = &app.volumes.store;
    let id = v.id.as_str();
    if matches!(
        v.status.as_str(),
        "reserved" | "attaching" | "detaching" | "in-use"
    ) {
        // An attachment made through Cinder's API is its maker's to plug.
        if v.attachment.as_ref().is_some_and(|a| a.external) {
            return Ok(());
        }
        return converge_attachment(app, v).await;
    }
    if !TRANSIENT.contains(&v.status.as_str()) {
        return Ok(());
    }
    let Some(host_id) = v.storage_host.clone() else {
        // Never placed: nothing to undo on any host.
        return match v.status.as_str() {
            "deleting" => store
                .remove(id)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => store
                .transition(
                    id,
                    &[&v.status],
                    "error",
                    Some("No valid backend was found."),
                    now(),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
    };
    let host = store
        .storage_host(&host_id)
        .await
        .map_err(|e| e.to_string())?;
    let alive = host
        .as_ref()
        .is_some_and(|h| now() - h.last_seen <= app.config.scheduler.heartbeat_timeout_secs);
    let Some(host) = host else {
        return Err(format!("storage host {host_id} never registered"));
    };
    let storaged = Storaged::new(&host.url, app.hostd_token(&host_id));
    let size = |gib: i64| u64::try_from(gib).unwrap_or(0);
    // Whether the call went through; a refusal or a dead host ends the work
    // in the status's error form with the reason.
    let from = v.status.clone();
    let settle = |r: Result<(), StorageError>, error_status: &'static str| async move {
        match r {
            Ok(()) => Ok(true),
            Err(StorageError::Unreachable(..)) if alive => Ok(false),
            Err(e) => {
                let fault = if alive {
                    e.to_string()
                } else {
                    format!("storage host {host_id} is down: {e}")
                };
                store
                    .transition(id, &[&from], error_status, Some(&fault), now())
                    .await
                    .map_err(|e| e.to_string())?;
                Err(fault)
            }
        }
    };
    match v.status.as_str() {
        "creating" => {
            let image = v.image_metadata.as_ref().and_then(|m| m.get("image_id"));
            let source = match (&v.snapshot_id, &v.source_volid, image) {
                (Some(s), ..) => Some(storaged_proto::VolumeSource::Snapshot(s.clone())),
                (_, Some(from), _) => Some(storaged_proto::VolumeSource::Volume(from.clone())),
                (.., Some(image)) => Some(storaged_proto::VolumeSource::Image(image.clone())),
                _ => None,
            };
            let r = storaged.create(id, size(v.size_gib), source).await;
            // Filled from an image in the background: the next pass asks again.
            if matches!(r, Ok(crate::storaged_client::Created::Pending(_))) {
                return Ok(());
            }
            if settle(r.map(|_| ()), "error").await? {
                store
                    .transition(id, &["creating"], "available", None, now())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        "extending" => {
            let target = v.target_size_gib.unwrap_or(v.size_gib);
            if let Some(server) = plugged_into(app, v).await? {
                // Over NBD: the storage host grows the volume (and serves
                // its new size), then the server's host tells the guest.
                let remote = server.host_id.as_deref() != v.storage_host.as_deref();
                if remote {
                    match storaged.extend(id, size(target)).await {
                        Ok(_) => {}
                        Err(StorageError::Unreachable(..)) => return Ok(()),
                        Err(e) => {
                            let fault = format!("extending on its storage host: {e}");
                            store
                                .abandon_extend(id, &fault, now())
                                .await
                                .map_err(|e| e.to_string())?;
                            return Err(fault);
                        }
                    }
                }
                return grow_in_guest(app, v, &server, size(target)).await;
            }
            let r = storaged.extend(id, size(target)).await.map(|_| ());
            if settle(r, "error_extending").await? {
                store
                    .finish_extend(id, now())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        "deleting" => {
            let r = storaged.delete(id).await;
            let r = match r {
                // A refused delete is kept as error_deleting; one the host
                // is down for waits for it.
                Err(StorageError::Unreachable(..)) => return Ok(()),
                other => other,
            };
            if settle(r, "error_deleting").await? {
                store.remove(id).await.map_err(|e| e.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The live server volume `v` is plugged into by our compute service, if
/// any (an attachment made through Cinder's API is someone else's).
async fn plugged_into(
    app: &App,
    v: &Volume,
) -> Result<Option<crate::compute::servers::Server>, String> {
    let Some(a) = v
        .attachment
        .as_ref()
        .filter(|a| !a.external && a.attached_at.is_some())
    else {
        return Ok(None);
    };
    Ok(app
        .servers
        .get(&a.server_id)
        .await
        .map_err(|e| e.to_string())?
        .filter(|s| s.vm_state != "deleted"))
}

/// Grows an attached volume through its server's host: the VMM grows the
/// file and tells the guest (hostd grows the file itself while the server
/// is stopped), so nothing else writes the file meanwhile. A host that
/// cannot be reached is asked again at the next pass; one that refuses
/// leaves the volume in use at its old size, saying why.
async fn grow_in_guest(
    app: &App,
    v: &Volume,
    server: &crate::compute::servers::Server,
    size_gib: u64,
) -> Result<(), String> {
    let store = &app.volumes.store;
    let Some(hostd) = crate::compute::service::server_host(app, server).await else {
        return Ok(()); // its host has not registered (again) yet
    };
    let bytes = size_gib.saturating_mul(1 << 30);
    match hostd.grow_disk(&server.id, &v.device_id(), bytes).await {
        Ok(_) => {
            store
                .finish_extend(&v.id, now())
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                volume = v.id,
                server = server.id,
                size_gib,
                "attached volume grown"
            );
            Ok(())
        }
        Err(e) if e.is_transient() => Ok(()),
        Err(e) => {
            let fault = format!("extending in server {}: {e}", server.id);
            store
                .abandon_extend(&v.id, &fault, now())
                .await
                .map_err(|e| e.to_string())?;
            Err(fault)
        }
    }
}

/// Ends the NBD export of volume `v` to `host` once nothing there uses it
/// (nothing to end when `host` is its storage host). Best effort: an
/// export left behind is harmless (its name dies with the volume).
async fn end_export(app: &App, v: &Volume, host: &str) {
    let Some(storage_host) = v.storage_host.as_deref().filter(|s| *s != host) else {
        return;
    };
    let Ok(Some(h)) = app.volumes.store.storage_host(storage_host).await else {
        return;
    };
    let storaged = Storaged::new(&h.url, app.hostd_token(storage_host));
    if let Err(e) = storaged.unexport(&v.id, host).await {
        tracing::warn!(volume = v.id, host, "ending its export: {e}");
    }
}

/// Attaching and detaching: the storage host says how the server's host
/// reaches the volume, and hostd plugs it into the server (or unplugs it).
/// A server that is gone lets go of its volumes.
async fn converge_attachment(app: &App, v: &Volume) -> Result<(), String> {
    let store = &app.volumes.store;
    let err = |e: crate::store::StoreError| e.to_string();
    // Back to available from wherever the attachment got to.
    let release = |fault: Option<String>| async move {
        store
            .release(
                &v.id,
                &["reserved", "attaching", "detaching", "in-use"],
                fault.as_deref(),
                now(),
            )
            .await
            .map(|_| ())
            .map_err(err)
    };
    let Some(a) = &v.attachment else {
        return release(Some("its attachment was not recorded".into())).await;
    };
    let server = app.servers.get(&a.server_id).await.map_err(err)?;
    let Some(server) = server.filter(|s| s.vm_state != "deleted") else {
        if let Some(host) = &a.host {
            end_export(app, v, host).await;
        }
        return release(None).await;
    };
    let status = if v.status == "reserved" {
        if !store
            .transition(&v.id, &["reserved"], "attaching", None, now())
            .await
            .map_err(err)?
        {
            return Ok(());
        }
        "attaching"
    } else {
        v.status.as_str()
    };
    match status {
        // Something is being made from its data: its file is about to
        // change; plug it once that is done.
        "attaching" if store.busy(&v.id).await.map_err(err)? => {}
        "attaching" => {
            let Some(host_id) = server.host_id.clone() else {
                return release(Some(format!("server {} has no host", server.id))).await;
            };
            let Some(storage_host) = v.storage_host.as_deref() else {
                return release(Some("the volume has no storage host".into())).await;
            };
            let Some(host) = store.storage_host(storage_host).await.map_err(err)? else {
                return release(Some(format!("storage host {storage_host} is unknown"))).await;
            };
            let storaged = Storaged::new(&host.url, app.hostd_token(storage_host));
            let connection = match storaged.export(&v.id, &host_id).await {
                Ok(c) => c,
                Err(StorageError::Unreachable(..)) => return Ok(()),
                Err(e) => return release(Some(e.to_string())).await,
            };
            let Some(hostd) = crate::compute::service::server_host(app, &server).await else {
                return Ok(()); // its host has not registered (again) yet
            };
            let serial: String = v.id.chars().take(20).collect();
            match hostd
                .add_disk(&server.id, &v.device_id(), &connection, &serial)
                .await
            {
                // A conflict: plugged by an earlier run cut short.
                Ok(_) => {}
                Err(e) if e.is_conflict() && e.to_string().contains("has a disk") => {}
                Err(e) if e.is_transient() => return Ok(()),
                Err(e) => {
                    end_export(app, v, &host_id).await;
                    return release(Some(format!("attaching: {e}"))).await;
                }
            }
            store.attached(&v.id, &host_id, now()).await.map_err(err)?;
            tracing::info!(volume = v.id, server = server.id, "volume attached");
        }
        "detaching" => {
            let Some(hostd) = crate::compute::service::server_host(app, &server).await else {
                return Ok(());
            };
            match hostd.remove_disk(&server.id, &v.device_id()).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                // Its VMM restarting, or hostd away: the next try.
                Err(e) if e.is_transient() => return Ok(()),
                Err(e) => {
                    // The guest kept it: still in use, and why.
                    store
                        .transition(&v.id, &["detaching"], "in-use", Some(&e.to_string()), now())
                        .await
                        .map_err(err)?;
                    return Err(format!("detaching: {e}"));
                }
            }
            if let Some(host) = &a.host {
                end_export(app, v, host).await;
            }
            store
                .release(&v.id, &["detaching"], None, now())
                .await
                .map_err(err)?;
            tracing::info!(volume = v.id, server = server.id, "volume detached");
        }
        _ => {}
    }
    Ok(())
}
