//! `createImage`: a snapshot of a server's root disk as a new Glance image
//! that boots. The image is made at once (`saving`, private to the server's
//! project, `image_type: snapshot`, `instance_uuid`, `base_image_ref`, as
//! Nova writes them); the host copies the root disk with the guest paused
//! for a moment (task `image_snapshot`), then uploads the copy straight into
//! the image (task `image_uploading`) while the server runs on. The image
//! ends `active`, or `killed` if the host could not deliver it.
//!
//! `createBackup` is the same snapshot with `image_type: backup` and its
//! `backup_type`; once it is active the server's backups of that type
//! beyond the newest `rotation` are deleted, as Nova's compute manager does.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{begin_host_task, record_action, visible, ComputeError};
use crate::app::App;
use crate::context::RequestContext;
use crate::hostd_client::Hostd;
use crate::identity::now;
use crate::image::Image;

/// How long a host may take to deliver a snapshot's data.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// What a snapshot is made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `createImage`.
    Snapshot,
    /// `createBackup`: the server keeps its newest `rotation` backups of
    /// `backup_type`.
    Backup { backup_type: String, rotation: u32 },
}

impl Purpose {
    fn action(&self) -> &'static str {
        match self {
            Purpose::Snapshot => "createImage",
            Purpose::Backup { .. } => "createBackup",
        }
    }
}

/// Starts a snapshot of server `id` named `name`; returns the new image's id.
pub async fn create_image(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    name: &str,
    metadata: BTreeMap<String, String>,
    purpose: Purpose,
) -> Result<String, ComputeError> {
    let server = visible(app, ctx, id).await?;
    let base = app.images.get(&server.image_id).await?;
    let from_disk = base.as_ref().is_some_and(|i| {
        !i.properties.contains_key("kernel_id")
            && matches!(i.disk_format.as_deref(), Some("raw" | "qcow2" | "ami"))
    });
    if !from_disk {
        return Err(ComputeError::Conflict(format!(
            "Cannot snapshot instance {id}: it boots a kernel image and has no root disk of its own"
        )));
    }
    let action = purpose.action();
    let (hostd, background) = begin_host_task(
        app,
        &server,
        action,
        "image_snapshot",
        &["active", "stopped", "paused", "suspended"],
    )
    .await?;
    // The caller's metadata may name the image_type (Nova lets it); what
    // ties the image to its server may not be overridden.
    let mut properties = metadata;
    let image_type = match &purpose {
        Purpose::Snapshot => "snapshot",
        Purpose::Backup { backup_type, .. } => {
            properties.insert("backup_type".into(), backup_type.clone());
            "backup"
        }
    };
    properties
        .entry("image_type".into())
        .or_insert_with(|| image_type.into());
    properties.insert("instance_uuid".into(), id.to_owned());
    properties.insert("base_image_ref".into(), server.image_id.clone());
    properties.insert("owner_user_name".into(), ctx.user_id().to_owned());
    let t = now();
    let image = Image {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        owner: server.project_id.clone(),
        status: "saving".into(),
        visibility: "private".into(),
        disk_format: Some("raw".into()),
        container_format: Some("bare".into()),
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: server.disk_gib,
        min_ram: base.map_or(0, |b| b.min_ram),
        protected: false,
        properties,
        tags: Vec::new(),
        created_at: t,
        updated_at: t,
        location: None,
    };
    if let Err(e) = app.images.insert(&image).await {
        let _ = app.servers.clear_task(id).await;
        return Err(e.into());
    }
    record_action(app, ctx, &server, action).await;
    let (server_id, image_id, request_id) =
        (id.to_owned(), image.id.clone(), ctx.request_id.clone());
    let project = server.project_id.clone();
    tokio::spawn(async move {
        let failure = on_host(&background, &server_id, &hostd, &image_id).await;
        if let Some(why) = &failure {
            tracing::warn!(server = %server_id, image = %image_id, "snapshot failed: {why}");
            let _ = background
                .images
                .transition(&image_id, "saving", "killed")
                .await;
        } else if let Purpose::Backup {
            backup_type,
            rotation,
        } = &purpose
        {
            rotate(
                &background,
                &server_id,
                &project,
                backup_type,
                *rotation as usize,
            )
            .await;
        }
        let _ = background.servers.clear_task(&server_id).await;
        if let Err(e) = background
            .actions
            .finish(&server_id, &request_id, failure.as_deref())
            .await
        {
            tracing::warn!(server = %server_id, "recording the end of its snapshot: {e}");
        }
    });
    Ok(image.id)
}

/// Deletes the server's backups of `backup_type` beyond the newest `keep`
/// (protected ones stay, as Glance would refuse them). Only the server's
/// project's images count: another project cannot push this server's
/// backups out by labelling images of its own with its id.
async fn rotate(app: &App, server_id: &str, project: &str, backup_type: &str, keep: usize) {
    let images = match app.images.list().await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(server = %server_id, "rotating its backups: {e}");
            return;
        }
    };
    fn prop<'a>(i: &'a Image, key: &str) -> Option<&'a str> {
        i.properties.get(key).map(String::as_str)
    }
    let mut backups: Vec<Image> = images
        .into_iter()
        .filter(|i| {
            i.owner == project
                && prop(i, "instance_uuid") == Some(server_id)
                && prop(i, "image_type") == Some("backup")
                && prop(i, "backup_type") == Some(backup_type)
        })
        .collect();
    // Newest first: the list comes oldest first.
    backups.reverse();
    for old in backups.into_iter().skip(keep).filter(|i| !i.protected) {
        tracing::info!(server = %server_id, image = %old.id, "rotating out an old backup");
        crate::image::data::remove(app, &old).await;
        if let Err(e) = app.images.delete(&old.id).await {
            tracing::warn!(image = %old.id, "deleting a rotated backup: {e}");
        }
    }
}

/// The host's part: the copy, then the upload, followed until the image is
/// active. Returns why it failed, if it did.
async fn on_host(app: &App, id: &str, hostd: &Hostd, image_id: &str) -> Option<String> {
    if let Err(e) = hostd.snapshot(id, image_id).await {
        return Some(e.to_string());
    }
    if let Ok(Some(s)) = app.servers.get(id).await {
        if s.task_state.as_deref() == Some("image_snapshot") {
            let _ = app
                .servers
                .set_state(
                    id,
                    &s.vm_state,
                    Some("image_uploading"),
                    s.power_state,
                    None,
                )
                .await;
        }
    }
    let deadline = tokio::time::Instant::now() + UPLOAD_TIMEOUT;
    let mut last_touch = tokio::time::Instant::now();
    loop {
        match app.images.get(image_id).await {
            Ok(Some(i)) if i.status == "active" => return None,
            Ok(Some(i)) if i.status == "saving" => {}
            Ok(Some(i)) => return Some(format!("the image went {}", i.status)),
            Ok(None) => return Some("the image was deleted".into()),
            Err(e) => tracing::debug!(image = %image_id, "reading the snapshot's image: {e}"),
        }
        let now = tokio::time::Instant::now();
        if now > deadline {
            return Some(format!(
                "the host did not deliver the data within {UPLOAD_TIMEOUT:?}"
            ));
        }
        if now - last_touch > Duration::from_secs(60) {
            last_touch = now;
            let _ = app.servers.touch_task(id).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
