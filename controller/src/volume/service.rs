//! The volume service: Cinder's rules for who may do what to a volume and
//! in which status, quotas, and placement on a storage host. A request
//! records the intended state and answers; [`super::reconcile`] does the
//! storage host's part.

use std::collections::BTreeMap;

use super::model::{Snapshot, StorageHost, Volume, DEFAULT_TYPE, DEFAULT_TYPE_ID};
use super::store::{ListFilter, Quota, Volumes};
use super::VolumeError;
use crate::app::App;
use crate::context::RequestContext;
use crate::identity::now;

/// Every project's volume quota (Cinder's defaults).
pub const QUOTA: Quota = Quota {
    volumes: 10,
    snapshots: 10,
    gigabytes: 1000,
};
/// The largest volume (storaged makes up to this).
pub const MAX_SIZE_GIB: i64 = storaged_proto::MAX_SIZE_GIB as i64;

/// Statuses a volume may be deleted from (Cinder's, and a failed delete's,
/// so it can be tried again).
const DELETABLE: &[&str] = &[
    "available",
    "error",
    "error_restoring",
    "error_extending",
    "error_managing",
    "error_deleting",
];

/// Statuses a snapshot may be deleted from.
pub const SNAPSHOT_DELETABLE: &[&str] = &["available", "error", "error_deleting"];

/// What a new volume's data starts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Snapshot(String),
    Volume(String),
    Image(String),
}

/// A create as the client asked for it.
#[derive(Clone, Debug, Default)]
pub struct CreateVolume {
    /// None: the source's size.
    pub size_gib: Option<i64>,
    pub source: Option<Source>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub volume_type: Option<String>,
    pub availability_zone: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The server it is made to boot (Nova's image-to-volume block device).
    pub root_of: Option<String>,
    pub delete_on_termination: bool,
}

pub struct VolumeService {
    pub store: Volumes,
}

impl VolumeService {
    pub fn new(store: crate::store::Store) -> Self {
        VolumeService {
            store: Volumes::new(store),
        }
    }

    /// The storage hosts heard from recently enough to place volumes on.
    pub async fn live_hosts(&self, app: &App) -> Result<Vec<StorageHost>, VolumeError> {
        let timeout = app.config.scheduler.heartbeat_timeout_secs;
        let t = now();
        Ok(self
            .store
            .storage_hosts()
            .await?
            .into_iter()
            .filter(|h| t - h.last_seen <= timeout)
            .collect())
    }

    /// Records the volume (`creating`, or `error` when no storage host can
    /// take it) within the project's quota and starts its creation. One
    /// made from a snapshot or a volume goes where that one's data is.
    pub async fn create(
        &self,
        app: &App,
        ctx: &RequestContext,
        req: CreateVolume,
    ) -> Result<Volume, VolumeError> {
        match req.volume_type.as_deref() {
            None | Some(DEFAULT_TYPE) | Some(DEFAULT_TYPE_ID) => {}
            Some(other) => {
                return Err(VolumeError::not_found("Volume type with name", other));
            }
        }
        // Where the source's data is, and how big it is.
        let source = match &req.source {
            None | Some(Source::Image(_)) => None,
            Some(Source::Snapshot(id)) => {
                let s = self.get_snapshot(ctx, id).await?;
                if s.status != "available" {
                    return Err(VolumeError::bad_request(format!(
                        "Invalid snapshot: Originating snapshot status must be one of 'available' values, but it is {}.",
                        s.status
                    )));
                }
                let zone = self
                    .store
                    .get(&s.volume_id)
                    .await?
                    .map(|v| v.availability_zone);
                Some((s.storage_host, s.size_gib, zone, "snapshot"))
            }
            Some(Source::Volume(id)) => {
                let v = self.get(ctx, id).await?;
                if v.status != "available" {
                    return Err(VolumeError::bad_request(format!(
                        "Invalid volume: Volume {id} status must be available to be cloned, but current status is: {}.",
                        v.status
                    )));
                }
                let Some(host) = v.storage_host else {
                    return Err(VolumeError::bad_request(format!(
                        "Invalid volume: Volume {id} has no data to clone."
                    )));
                };
                Some((
                    host,
                    v.size_gib,
                    Some(v.availability_zone),
                    "original volume",
                ))
            }
        };
        // An image's data is fetched onto the chosen host: its size, what
        // the volume shows of it, and that it boots.
        let image = match &req.source {
            Some(Source::Image(id)) => Some(self.image_source(app, ctx, id).await?),
            _ => None,
        };
        let size_gib = match (req.size_gib, &source, &image) {
            (Some(n), ..) => n,
            (None, Some((_, n, ..)), _) => *n,
            (None, None, Some((n, _))) => *n,
            (None, None, None) => 0,
        };
        if let Some((needed, meta)) = &image {
            if size_gib < *needed && (1..=MAX_SIZE_GIB).contains(&size_gib) {
                return Err(VolumeError::bad_request(format!(
                    "Invalid input received: Image {} needs a volume of {needed}GB (its virtual size or min_disk); {size_gib}GB is too small.",
                    meta.get("image_id").map(String::as_str).unwrap_or_default()
                )));
            }
        }
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::bad_request(format!(
                "Invalid input received: Volume size '{size_gib}' must be an integer and greater than 0 and at most {MAX_SIZE_GIB}."
            )));
        }
        if let Some((_, have, _, what)) = &source {
            if size_gib < *have {
                return Err(VolumeError::bad_request(format!(
                    "Invalid input received: Volume size '{size_gib}'GB cannot be smaller than the {what} size {have}GB. They must be >= original {what} size."
                )));
            }
        }
        let hosts = self.live_hosts(app).await?;
        let (zone, host) = match source {
            Some((host, _, zone, _)) => {
                let zone = zone
                    .or_else(|| req.availability_zone.clone())
                    .unwrap_or_else(|| "nova".into());
                if req.availability_zone.as_ref().is_some_and(|z| *z != zone) {
                    return Err(VolumeError::bad_request(format!(
                        "Invalid input received: Availability zone '{}' is invalid: the source is in '{zone}'.",
                        req.availability_zone.unwrap_or_default()
                    )));
                }
                // Made from data that is on one host: there, alive or not
                // (the reconciler waits for it).
                (zone, Some(host))
            }
            None => {
                let zone = req.availability_zone.unwrap_or_else(|| "nova".into());
                if !hosts.iter().any(|h| h.availability_zone == zone) && zone != "nova" {
                    return Err(VolumeError::bad_request(format!(
                        "Invalid input received: Availability zone '{zone}' is invalid."
                    )));
                }
                // The roomiest live host of the zone; thin volumes take space
                // as they are written, so free space ranks hosts rather than
                // gating them.
                let host = hosts
                    .iter()
                    .filter(|h| h.availability_zone == zone && h.free_bytes > 0)
                    .max_by_key(|h| h.free_bytes)
                    .map(|h| h.host_id.clone());
                (zone, host)
            }
        };
        let t = now();
        let (snapshot_id, source_volid) = match req.source {
            Some(Source::Snapshot(id)) => (Some(id), None),
            Some(Source::Volume(id)) => (None, Some(id)),
            Some(Source::Image(_)) | None => (None, None),
        };
        let volume = Volume {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: ctx.project_id().to_owned(),
            user_id: ctx.user_id().to_owned(),
            name: req.name,
            description: req.description,
            size_gib,
            target_size_gib: None,
            status: if host.is_some() { "creating" } else { "error" }.into(),
            volume_type: DEFAULT_TYPE.into(),
            availability_zone: zone,
            fault: host
                .is_none()
                .then(|| "No valid backend was found. No storage host can take it.".into()),
            storage_host: host,
            bootable: image.is_some(),
            metadata: req.metadata,
            created_at: t,
            updated_at: t,
            attachment: None,
            snapshot_id,
            source_volid,
            image_metadata: image.map(|(_, meta)| meta),
            root_of: req.root_of,
            delete_on_termination: req.delete_on_termination,
        };
        if !self.store.insert_within(&volume, QUOTA).await? {
            let source_gone = match (&volume.snapshot_id, &volume.source_volid) {
                (Some(s), _) => self
                    .store
                    .snapshot(s)
                    .await?
                    .is_none_or(|s| s.status != "available"),
                (_, Some(v)) => self
                    .store
                    .get(v)
                    .await?
                    .is_none_or(|v| v.status != "available"),
                _ => false,
            };
            if source_gone {
                return Err(VolumeError::bad_request(
                    "Invalid input received: the volume's source changed status while it was being created from it; try again.",
                ));
            }
            return Err(self
                .over_quota(&volume.project_id, volume.size_gib, 1)
                .await?);
        }
        self.converge_soon(app, &volume.id);
        Ok(volume)
    }

    /// The image a volume is to be made from, if the caller may use it and
    /// it is a disk: the GiB it needs, and what the volume shows of it.
    async fn image_source(
        &self,
        app: &App,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(i64, BTreeMap<String, String>), VolumeError> {
        let image = app
            .images
            .get(id)
            .await?
            .filter(|i| i.visible_to(ctx.project_id(), ctx.is_admin()))
            .ok_or_else(|| VolumeError::not_found("Image", id))?;
        if image.status != "active" {
            return Err(VolumeError::bad_request(format!(
                "Invalid image identifier or unable to access requested image: image {id} is {}, not active.",
                image.status
            )));
        }
        if matches!(image.disk_format.as_deref(), Some("aki" | "ari")) {
            return Err(VolumeError::bad_request(format!(
                "Invalid input received: image {id} is a kernel or ramdisk ({}), not a disk.",
                image.disk_format.as_deref().unwrap_or_default()
            )));
        }
        const GIB: i64 = 1 << 30;
        let bytes = image.virtual_size.or(image.size).unwrap_or(0).max(0);
        let needed = ((bytes + GIB - 1) / GIB).max(image.min_disk).max(1);
        let text = |v: Option<&str>| v.unwrap_or_default().to_owned();
        let mut meta: BTreeMap<String, String> = BTreeMap::from([
            ("image_id".into(), image.id.clone()),
            ("image_name".into(), image.name.clone()),
            ("disk_format".into(), text(image.disk_format.as_deref())),
            (
                "container_format".into(),
                text(image.container_format.as_deref()),
            ),
            ("min_disk".into(), image.min_disk.to_string()),
            ("min_ram".into(), image.min_ram.to_string()),
            ("size".into(), image.size.unwrap_or(0).to_string()),
            ("checksum".into(), text(image.checksum.as_deref())),
        ]);
        // What the image says of booting (kernel arguments, hardware) goes
        // with it, as Cinder copies an image's properties.
        for (k, v) in &image.properties {
            meta.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Ok((needed, meta))
    }

    /// Marks a volume bootable or not (`os-set_bootable`).
    pub async fn set_bootable(
        &self,
        ctx: &RequestContext,
        id: &str,
        bootable: bool,
    ) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        self.store.set_bootable(&v.id, bootable, now()).await?;
        Ok(())
    }

    /// Which quota a refused change (`gib` more, `count` more volumes) ran
    /// into, in Cinder's words.
    async fn over_quota(
        &self,
        project: &str,
        gib: i64,
        count: i64,
    ) -> Result<VolumeError, VolumeError> {
        let used = self.store.usage(project).await?;
        Ok(
            if count > 0 && QUOTA.volumes >= 0 && used.volumes + count > QUOTA.volumes {
                VolumeError::over_quota(format!(
                "VolumeLimitExceeded: Maximum number of volumes allowed ({}) exceeded for quota 'volumes'.",
                QUOTA.volumes
            ))
            } else {
                VolumeError::over_quota(format!(
                "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. Requested {gib}G, quota is {}G and {}G has been consumed.",
                QUOTA.gigabytes, used.gigabytes
            ))
            },
        )
    }

    /// Runs the reconciler for one volume now, in the background.
    fn converge_soon(&self, app: &App, id: &str) {
        if let Some(app) = app.me.upgrade() {
            let id = id.to_owned();
            tokio::spawn(async move { super::reconcile::converge_promptly(&app, &id).await });
        }
    }

    /// The volume, if the caller may see it.
    pub async fn get(&self, ctx: &RequestContext, id: &str) -> Result<Volume, VolumeError> {
        match self.store.get(id).await? {
            Some(v) if ctx.is_admin() || v.project_id == ctx.project_id() => Ok(v),
            _ => Err(VolumeError::not_found("Volume", id)),
        }
    }

    /// The caller's project's volumes (every project's for an admin asking
    /// for all of them).
    pub async fn list(
        &self,
        ctx: &RequestContext,
        all_projects: bool,
        mut filter: ListFilter,
    ) -> Result<Vec<Volume>, VolumeError> {
        if !(all_projects && ctx.is_admin()) {
            filter.project_id = Some(ctx.project_id().to_owned());
        }
        Ok(self.store.list(&filter).await?)
    }

    /// Renames, redescribes or sets the metadata of a volume (None: kept).
    pub async fn update(
        &self,
        ctx: &RequestContext,
        id: &str,
        name: Option<Option<String>>,
        description: Option<Option<String>>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<Volume, VolumeError> {
        let v = self.get(ctx, id).await?;
        let name = name.unwrap_or(v.name);
        let description = description.unwrap_or(v.description);
        let metadata = metadata.unwrap_or(v.metadata);
        self.store
            .update(
                id,
                name.as_deref(),
                description.as_deref(),
                &metadata,
                now(),
            )
            .await?;
        self.get(ctx, id).await
    }

    /// Starts deleting a volume in a status that allows it (and, with
    /// `cascade`, its snapshots).
    pub async fn delete(
        &self,
        app: &App,
        ctx: &RequestContext,
        id: &str,
        cascade: bool,
    ) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        if !self
            .store
            .begin_delete(&v.id, DELETABLE, cascade, now())
            .await?
        {
            return Err(VolumeError::bad_request(
                "Invalid volume: Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots, awaiting a transfer, or be disassociated from snapshots after volume transfer.",
            ));
        }
        if cascade {
            for s in self
                .store
                .snapshots(&ListFilter::default(), Some(&v.id))
                .await?
            {
                self.converge_snapshot_soon(app, &s.id);
            }
        }
        self.converge_soon(app, &v.id);
        Ok(())
    }

    /// Runs the reconciler for one snapshot now, in the background.
    fn converge_snapshot_soon(&self, app: &App, id: &str) {
        if let Some(app) = app.me.upgrade() {
            let id = id.to_owned();
            tokio::spawn(async move { super::reconcile::converge_snapshot(&app, &id).await });
        }
    }

    /// Records a snapshot of a volume (`creating`) within the project's
    /// quota and starts taking it. A volume in use only with `force`, as
    /// Cinder, and only when our compute service attached it: what serves
    /// it (its server's VMM, or storaged's NBD server for a server on
    /// another host) moves onto a fresh overlay while the old files become
    /// the snapshot (a crash-consistent one, as Cinder's).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_snapshot(
        &self,
        app: &App,
        ctx: &RequestContext,
        volume_id: &str,
        name: Option<String>,
        description: Option<String>,
        metadata: BTreeMap<String, String>,
        force: bool,
    ) -> Result<Snapshot, VolumeError> {
        let v = self.get(ctx, volume_id).await?;
        let allowed: &[&str] = if force {
            &["available", "in-use"]
        } else {
            &["available"]
        };
        let unavailable = |status: &str| {
            VolumeError::bad_request(format!(
                "Invalid volume: Volume {volume_id} status must be available, but current status is: {status}."
            ))
        };
        let Some(host) = v
            .storage_host
            .clone()
            .filter(|_| allowed.contains(&v.status.as_str()))
        else {
            return Err(unavailable(&v.status));
        };
        if v.status == "in-use" && v.attachment.as_ref().is_some_and(|a| a.external) {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: Volume {volume_id} is attached outside this cloud's compute service; \
                 a snapshot of it in use cannot be taken: detach it first."
            )));
        }
        let t = now();
        let snapshot = Snapshot {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: ctx.project_id().to_owned(),
            user_id: ctx.user_id().to_owned(),
            volume_id: v.id.clone(),
            storage_host: host,
            name,
            description,
            size_gib: v.size_gib,
            status: "creating".into(),
            metadata,
            fault: None,
            created_at: t,
            updated_at: t,
        };
        if !self
            .store
            .insert_snapshot_within(&snapshot, allowed, QUOTA)
            .await?
        {
            let now_v = self.get(ctx, volume_id).await?;
            if !allowed.contains(&now_v.status.as_str()) {
                return Err(unavailable(&now_v.status));
            }
            let used = self.store.usage(&snapshot.project_id).await?;
            return Err(
                if QUOTA.snapshots >= 0 && used.snapshots + 1 > QUOTA.snapshots {
                    VolumeError::over_quota(format!(
                        "SnapshotLimitExceeded: Maximum number of snapshots allowed ({}) exceeded",
                        QUOTA.snapshots
                    ))
                } else {
                    self.over_quota(&snapshot.project_id, snapshot.size_gib, 0)
                        .await?
                },
            );
        }
        self.converge_snapshot_soon(app, &snapshot.id);
        Ok(snapshot)
    }

    /// The snapshot, if the caller may see it.
    pub async fn get_snapshot(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Snapshot, VolumeError> {
        match self.store.snapshot(id).await? {
            Some(s) if ctx.is_admin() || s.project_id == ctx.project_id() => Ok(s),
            _ => Err(VolumeError::not_found("Snapshot", id)),
        }
    }

    pub async fn list_snapshots(
        &self,
        ctx: &RequestContext,
        all_projects: bool,
        mut filter: ListFilter,
        volume_id: Option<&str>,
    ) -> Result<Vec<Snapshot>, VolumeError> {
        if !(all_projects && ctx.is_admin()) {
            filter.project_id = Some(ctx.project_id().to_owned());
        }
        Ok(self.store.snapshots(&filter, volume_id).await?)
    }

    pub async fn update_snapshot(
        &self,
        ctx: &RequestContext,
        id: &str,
        name: Option<Option<String>>,
        description: Option<Option<String>>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<Snapshot, VolumeError> {
        let s = self.get_snapshot(ctx, id).await?;
        let name = name.unwrap_or(s.name);
        let description = description.unwrap_or(s.description);
        let metadata = metadata.unwrap_or(s.metadata);
        self.store
            .update_snapshot(
                id,
                name.as_deref(),
                description.as_deref(),
                &metadata,
                now(),
            )
            .await?;
        self.get_snapshot(ctx, id).await
    }

    /// Starts deleting a snapshot. Volumes made from it keep their data.
    pub async fn delete_snapshot(
        &self,
        app: &App,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), VolumeError> {
        let s = self.get_snapshot(ctx, id).await?;
        if !self
            .store
            .snapshot_transition(id, SNAPSHOT_DELETABLE, "deleting", None, now())
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid snapshot: Snapshot status must be available or error and must not be part of a group, but is {}.",
                s.status
            )));
        }
        self.converge_snapshot_soon(app, id);
        Ok(())
    }

    /// Reserves an `available` volume for `server_id` (Nova's attach,
    /// answered at once; the reconciler plugs it: `attaching`, then
    /// `in-use`). The caller has checked the server.
    pub async fn attach(
        &self,
        app: &App,
        ctx: &RequestContext,
        volume_id: &str,
        server_id: &str,
    ) -> Result<Volume, VolumeError> {
        let v = self.get(ctx, volume_id).await?;
        let attachment = uuid::Uuid::new_v4().to_string();
        if !self
            .store
            .reserve(&v.id, server_id, &attachment, now())
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: volume {volume_id} status must be available to attach, but current status is: {}.",
                v.status
            )));
        }
        self.converge_soon(app, &v.id);
        self.get(ctx, volume_id).await
    }

    /// Starts detaching an `in-use` volume from `server_id`.
    pub async fn detach(
        &self,
        app: &App,
        ctx: &RequestContext,
        volume_id: &str,
        server_id: &str,
    ) -> Result<(), VolumeError> {
        let v = self.get(ctx, volume_id).await?;
        let attached_here = v
            .attachment
            .as_ref()
            .is_some_and(|a| a.server_id == server_id);
        if !attached_here {
            return Err(VolumeError::not_found("Volume attachment of", volume_id));
        }
        if v.root_of.as_deref() == Some(server_id) {
            return Err(VolumeError::bad_request("Can't detach root device volume"));
        }
        if !self
            .store
            .transition(&v.id, &["in-use"], "detaching", None, now())
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: Unable to detach volume. Volume status must be 'in-use' and attach_status must be 'attached' to detach, but current status is: {}.",
                v.status
            )));
        }
        self.converge_soon(app, &v.id);
        Ok(())
    }

    /// Starts growing a volume to `new_size` GiB: an `available` one, or
    /// (`in_use`, microversion 3.42 on) one attached, which its guest sees
    /// grow.
    pub async fn extend(
        &self,
        app: &App,
        ctx: &RequestContext,
        id: &str,
        new_size: i64,
        in_use: bool,
    ) -> Result<(), VolumeError> {
        let from: &[&str] = if in_use {
            &["available", "in-use"]
        } else {
            &["available"]
        };
        let wrong_status = |status: &str| {
            VolumeError::bad_request(format!(
                "Invalid volume: Volume {id} status must be {} to extend, but current status is: {status}.",
                from.join(" or ")
            ))
        };
        let v = self.get(ctx, id).await?;
        if !from.contains(&v.status.as_str()) {
            return Err(wrong_status(&v.status));
        }
        if new_size <= v.size_gib || new_size > MAX_SIZE_GIB {
            return Err(VolumeError::bad_request(format!(
                "Invalid input received: New size for extend must be greater than current size. (current: {}, extended: {new_size}).",
                v.size_gib
            )));
        }
        if !self
            .store
            .begin_extend(id, from, new_size, QUOTA, now())
            .await?
        {
            // Either the quota, or a racing change of status.
            let now_v = self.get(ctx, id).await?;
            if !from.contains(&now_v.status.as_str()) {
                return Err(wrong_status(&now_v.status));
            }
            return Err(self
                .over_quota(&v.project_id, new_size - v.size_gib, 0)
                .await?);
        }
        self.converge_soon(app, id);
        Ok(())
    }
}
