//! Attachments made through Cinder's API: the attachments API (3.27, with
//! 3.44's `os-complete`) and the older volume actions (`os-reserve`,
//! `os-attach`, `os-begin_detaching`, `os-initialize_connection`, ...).
//!
//! These are for attachers other than our compute service (a bare-metal
//! host, another cloud's hypervisor, a script): Cinder keeps the
//! bookkeeping and says how to reach the volume (`connection_info`); the
//! attacher plugs it. So nothing here plugs anything, and the reconciler
//! leaves such attachments alone. Attachments our compute service made
//! (`server add volume`, boot from volume) are listed too, but only the
//! compute API changes them: a volume detached under a running guest
//! would still be in it.

use serde_json::{json, Value as Json};

use super::model::Volume;
use super::service::VolumeService;
use super::VolumeError;
use crate::app::App;
use crate::context::RequestContext;
use crate::identity::now;
use crate::storaged_client::{StorageError, Storaged};

/// Statuses an attachment may be deleted (the volume detached) from.
const ATTACHED: &[&str] = &["reserved", "attaching", "in-use", "detaching"];

/// How an attacher may use the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    ReadOnly,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "rw" => Some(Mode::ReadWrite),
            "ro" => Some(Mode::ReadOnly),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::ReadWrite => "rw",
            Mode::ReadOnly => "ro",
        }
    }
}

/// Cinder's attachment status for a volume's status.
fn attach_status(volume_status: &str) -> &'static str {
    match volume_status {
        "reserved" => "reserved",
        "attaching" => "attaching",
        "detaching" => "detaching",
        _ => "attached",
    }
}

/// An attachment as the attachments API shows it: the summary of a list,
/// or the detail (with `connection_info` when it was just made).
pub fn attachment_view(v: &Volume, detail: bool, connection_info: Option<Json>) -> Json {
    let Some(a) = &v.attachment else {
        return Json::Null;
    };
    let instance = (!a.server_id.is_empty()).then_some(a.server_id.as_str());
    let mut shown = json!({
        "id": a.id,
        "status": attach_status(&v.status),
        "instance": instance,
        "volume_id": v.id,
    });
    if detail {
        shown["attached_at"] = json!(a
            .attached_at
            .map(|t| crate::api::http::iso_micros(t).replace('Z', "")));
        shown["detached_at"] = Json::Null;
        shown["attach_mode"] = json!(a.mode);
        shown["connection_info"] = connection_info.unwrap_or(Json::Null);
    }
    shown
}

/// The connector's host: the compute host that will reach the volume.
fn connector_host(connector: &Json) -> Result<String, VolumeError> {
    match connector.get("host") {
        Some(Json::String(h)) if !h.is_empty() && h.len() <= 255 => Ok(h.clone()),
        _ => Err(VolumeError::bad_request(
            "Invalid input received: the connector must name its host (\"host\": a string).",
        )),
    }
}

fn storage_error(e: StorageError) -> VolumeError {
    match e {
        StorageError::Refused(_, message) => VolumeError::bad_request(format!(
            "Invalid input received: the storage host cannot export the volume: {message}"
        )),
        other => VolumeError::Cinder {
            status: 500,
            fault: "computeFault",
            message: format!("Unable to reach the volume's storage host: {other}"),
        },
    }
}

impl VolumeService {
    /// The volume of attachment `attachment_id`, if the caller may see it.
    pub async fn attachment(
        &self,
        ctx: &RequestContext,
        attachment_id: &str,
    ) -> Result<Volume, VolumeError> {
        match self.store.by_attachment(attachment_id).await? {
            Some(v) if ctx.is_admin() || v.project_id == ctx.project_id() => Ok(v),
            _ => Err(VolumeError::Cinder {
                status: 404,
                fault: "itemNotFound",
                message: format!(
                    "Volume attachment could not be found with filter: attachment_id = {attachment_id}."
                ),
            }),
        }
    }

    /// Attachment `attachment_id`'s volume, if the attachment is one made
    /// through this API (not our compute service's).
    async fn external_attachment(
        &self,
        ctx: &RequestContext,
        attachment_id: &str,
    ) -> Result<Volume, VolumeError> {
        let v = self.attachment(ctx, attachment_id).await?;
        check_external(&v)?;
        Ok(v)
    }

    /// The attached volumes the caller may see (every project's for an
    /// admin asking for all).
    pub async fn attachments(
        &self,
        ctx: &RequestContext,
        all_projects: bool,
    ) -> Result<Vec<Volume>, VolumeError> {
        let project = (!(all_projects && ctx.is_admin())).then(|| ctx.project_id());
        Ok(self.store.with_attachments(project).await?)
    }

    /// Reserves an `available` volume under a new attachment for
    /// `instance` (`reserved`); with a connector, also connects it
    /// (`attaching`) and returns how to reach it. A connector that fails
    /// leaves nothing reserved.
    pub async fn create_attachment(
        &self,
        app: &App,
        ctx: &RequestContext,
        volume_id: &str,
        instance: &str,
        connector: Option<&Json>,
        mode: Mode,
    ) -> Result<(Volume, Option<Json>), VolumeError> {
        let v = self.get(ctx, volume_id).await?;
        if let Some(c) = connector {
            connector_host(c)?;
        }
        let attachment_id = uuid::Uuid::new_v4().to_string();
        if !self
            .store
            .reserve_external(
                &v.id,
                instance,
                &attachment_id,
                mode.as_str(),
                "reserved",
                now(),
            )
            .await?
        {
            return Err(not_available(&v));
        }
        let Some(connector) = connector else {
            return Ok((self.get(ctx, volume_id).await?, None));
        };
        match self
            .connect_attachment(app, ctx, &attachment_id, connector)
            .await
        {
            Ok(done) => Ok(done),
            Err(e) => {
                self.store
                    .release(&v.id, &["reserved", "attaching"], None, now())
                    .await?;
                Err(e)
            }
        }
    }

    /// Gives an attachment its attacher's connector (`attaching`) and
    /// answers how that host reaches the volume.
    pub async fn connect_attachment(
        &self,
        app: &App,
        ctx: &RequestContext,
        attachment_id: &str,
        connector: &Json,
    ) -> Result<(Volume, Option<Json>), VolumeError> {
        let v = self.external_attachment(ctx, attachment_id).await?;
        if !["reserved", "attaching"].contains(&v.status.as_str()) {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: the attachment's volume must be reserved or attaching to connect it, but it is {}.",
                v.status
            )));
        }
        let info = self.connection_info(app, &v, connector).await?;
        if !self.store.connect_external(&v.id, connector, now()).await? {
            return Err(VolumeError::bad_request(
                "Invalid volume: the volume's status changed meanwhile.",
            ));
        }
        Ok((self.get(ctx, &v.id).await?, Some(info)))
    }

    /// The attacher is done (`os-complete`): `in-use`.
    pub async fn complete_attachment(
        &self,
        ctx: &RequestContext,
        attachment_id: &str,
    ) -> Result<(), VolumeError> {
        let v = self.external_attachment(ctx, attachment_id).await?;
        let host = v
            .attachment
            .as_ref()
            .and_then(|a| a.connector.as_ref())
            .and_then(|c| connector_host(c).ok());
        if !self
            .store
            .complete_external(
                &v.id,
                &["reserved", "attaching"],
                None,
                host.as_deref(),
                now(),
            )
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: the attachment's volume must be reserved or attaching to complete it, but it is {}.",
                v.status
            )));
        }
        Ok(())
    }

    /// Deletes an attachment: the volume is `available` again.
    pub async fn delete_attachment(
        &self,
        ctx: &RequestContext,
        attachment_id: &str,
    ) -> Result<(), VolumeError> {
        let v = self.external_attachment(ctx, attachment_id).await?;
        if !self.store.release(&v.id, ATTACHED, None, now()).await? {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: the attachment's volume is {}; it cannot be detached now.",
                v.status
            )));
        }
        Ok(())
    }

    /// How host `connector.host` reaches volume `v`: on its storage host,
    /// the volume's file (and, for an overlay, the layers under it); from
    /// another host, its NBD export.
    async fn connection_info(
        &self,
        app: &App,
        v: &Volume,
        connector: &Json,
    ) -> Result<Json, VolumeError> {
        let host = connector_host(connector)?;
        let Some(storage_host) = v.storage_host.as_deref() else {
            return Err(VolumeError::bad_request(
                "Invalid volume: the volume has no storage host.",
            ));
        };
        let Some(h) = self.store.storage_host(storage_host).await? else {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: storage host {storage_host} is unknown."
            )));
        };
        let storaged = Storaged::new(&h.url, app.hostd_token(storage_host));
        let c = storaged.export(&v.id, &host).await.map_err(storage_error)?;
        let mode = v
            .attachment
            .as_ref()
            .map_or("rw", |a| a.mode.as_str())
            .to_owned();
        if let Some(nbd) = &c.nbd {
            return Ok(json!({
                "driver_volume_type": "nbd",
                "data": {
                    "address": nbd.address,
                    "export": nbd.export,
                    "volume_id": v.id,
                    "access_mode": mode,
                },
            }));
        }
        Ok(json!({
            "driver_volume_type": "local",
            "data": {
                "device_path": c.path,
                "format": if c.backing.is_empty() { "raw" } else { "qcow2" },
                "backing_files": c.backing,
                "volume_id": v.id,
                "access_mode": mode,
                "discard": c.backing.is_empty(),
            },
        }))
    }

    /// `os-reserve`: `available` -> `attaching`, for an attach to come.
    pub async fn legacy_reserve(&self, ctx: &RequestContext, id: &str) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        let attachment_id = uuid::Uuid::new_v4().to_string();
        if !self
            .store
            .reserve_external(&v.id, "", &attachment_id, "rw", "attaching", now())
            .await?
        {
            return Err(not_available(&v));
        }
        Ok(())
    }

    /// `os-unreserve`: a reservation nothing attached: `available` again.
    pub async fn legacy_unreserve(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        if v.status == "available" {
            return Ok(());
        }
        check_external(&v)?;
        if !self
            .store
            .release(&v.id, &["attaching"], None, now())
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: Volume status must be attaching to unreserve, but it is {}.",
                v.status
            )));
        }
        Ok(())
    }

    /// `os-attach`: the attacher says it attached the volume (reserved
    /// first or not) to `instance` or on `host_name`: `in-use`.
    pub async fn legacy_attach(
        &self,
        ctx: &RequestContext,
        id: &str,
        instance: Option<&str>,
        host_name: Option<&str>,
        mode: Mode,
    ) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        if v.status == "available" {
            let attachment_id = uuid::Uuid::new_v4().to_string();
            if !self
                .store
                .reserve_external(&v.id, "", &attachment_id, mode.as_str(), "attaching", now())
                .await?
            {
                return Err(not_available(&v));
            }
        } else {
            check_external(&v)?;
        }
        if !self
            .store
            .complete_external(
                &v.id,
                &["attaching", "reserved"],
                instance,
                host_name,
                now(),
            )
            .await?
        {
            let status = self.get(ctx, id).await?.status;
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: Volume status must be available or attaching to attach, but it is {status}."
            )));
        }
        Ok(())
    }

    /// `os-detach`: the attacher let go: `available`.
    pub async fn legacy_detach(&self, ctx: &RequestContext, id: &str) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        check_external(&v)?;
        if !self
            .store
            .release(&v.id, &["in-use", "detaching"], None, now())
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: Volume status must be in-use or detaching to detach, but it is {}.",
                v.status
            )));
        }
        Ok(())
    }

    /// `os-begin_detaching` (`in-use` -> `detaching`) and
    /// `os-roll_detaching` (back).
    pub async fn legacy_detaching(
        &self,
        ctx: &RequestContext,
        id: &str,
        begin: bool,
    ) -> Result<(), VolumeError> {
        let v = self.get(ctx, id).await?;
        check_external(&v)?;
        let (from, to) = if begin {
            ("in-use", "detaching")
        } else {
            ("detaching", "in-use")
        };
        if v.status == to && !begin {
            return Ok(());
        }
        if !self
            .store
            .transition(&v.id, &[from], to, None, now())
            .await?
        {
            return Err(VolumeError::bad_request(format!(
                "Invalid volume: Volume status must be {from}, but it is {}.",
                v.status
            )));
        }
        Ok(())
    }

    /// `os-initialize_connection`: how the connector's host reaches the
    /// volume, whatever its status.
    pub async fn legacy_initialize_connection(
        &self,
        app: &App,
        ctx: &RequestContext,
        id: &str,
        connector: &Json,
    ) -> Result<Json, VolumeError> {
        let v = self.get(ctx, id).await?;
        self.connection_info(app, &v, connector).await
    }
}

fn not_available(v: &Volume) -> VolumeError {
    VolumeError::bad_request(format!(
        "Invalid volume: Volume {} status must be available to reserve, but the current status is {}.",
        v.id, v.status
    ))
}

/// Refuses to change an attachment our compute service made (or a volume
/// with none made through this API).
fn check_external(v: &Volume) -> Result<(), VolumeError> {
    match &v.attachment {
        Some(a) if a.external => Ok(()),
        Some(a) => Err(VolumeError::bad_request(format!(
            "Invalid volume: volume {} is attached to server {} by the compute service; \
             detach it there (openstack server remove volume).",
            v.id, a.server_id
        ))),
        None => Err(VolumeError::bad_request(format!(
            "Invalid volume: volume {} has no attachment (its status is {}).",
            v.id, v.status
        ))),
    }
}
