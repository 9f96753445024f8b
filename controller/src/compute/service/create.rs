//! Server create: checked and admitted (quota in the insert's transaction)
//! while the client waits, then built in the background as a sequence of
//! logged steps ([`super::build`]); builds a stopped controller left are
//! resumed from their log ([`resume`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ComputeError;
use crate::app::App;
use crate::compute::actions::{now_us, Action};
use crate::compute::servers::{Admission, Server};
use crate::context::RequestContext;
use crate::identity::now;
use crate::network::nova::Requested;
use crate::network::NetworkError;

/// A create as the client asked for it (Nova's body, parsed).
/// The volume a server boots from (Nova's boot_index 0 volume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootVolume {
    Volume {
        id: String,
        delete_on_termination: bool,
    },
    /// A volume made from the image for it.
    Image {
        image_id: String,
        size_gib: i64,
        delete_on_termination: bool,
    },
}

#[derive(Clone, Debug, Default)]
pub struct CreateServer {
    pub name: String,
    pub flavor_ref: String,
    /// Empty when it boots from a volume.
    pub image_ref: String,
    pub boot_volume: Option<BootVolume>,
    pub key_name: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub user_data: Option<String>,
    pub availability_zone: Option<String>,
    pub networks: Requested,
    /// Nova's `config_drive`: the client asked for one.
    pub config_drive: bool,
    /// Security groups (names or ids) for the ports made for it.
    pub security_groups: Vec<String>,
    /// The server group it joins (the `group` scheduler hint).
    pub group: Option<String>,
    pub access_ipv4: String,
    pub access_ipv6: String,
    /// AUTO or MANUAL (the default).
    pub disk_config: Option<String>,
    pub description: Option<String>,
    /// Shared by the servers of one request (min_count/max_count), and
    /// this one's place among them.
    pub reservation_id: String,
    pub launch_index: i64,
}

/// Checks the flavor, image and key pair, admits the server within its
/// project's quota and starts its build; returns it (BUILD).
pub async fn create(
    app: &App,
    ctx: &RequestContext,
    req: CreateServer,
) -> Result<Server, ComputeError> {
    let bad = |m: String| Err(ComputeError::BadRequest(m));
    let project = ctx.project_id().to_owned();
    let flavor = match app
        .flavors
        .get_for(&req.flavor_ref, Some(&project), ctx.is_admin())
        .await?
    {
        Some(f) => f,
        None => return bad(format!("Flavor {} could not be found.", req.flavor_ref)),
    };
    let image = if req.boot_volume.is_some() {
        None
    } else {
        let found = app.images.get(&req.image_ref).await?;
        let seen = match &found {
            Some(i) => app.images.visible_to(i, &project, ctx.is_admin()).await?,
            None => false,
        };
        Some(match found {
            Some(i) if seen && i.status == "active" => i,
            Some(_) if seen => return bad(format!("Image {} is not active.", req.image_ref)),
            _ => return bad(format!("Image {} could not be found.", req.image_ref)),
        })
    };
    // The image's own minimums (Glance's min_ram, min_disk) against the
    // flavor, as Nova checks them.
    if let Some(i) = &image {
        if i.min_ram > flavor.ram_mib {
            return bad("Flavor's memory is too small for requested image.".into());
        }
        if flavor.disk_gib > 0 && i.min_disk > flavor.disk_gib {
            return bad("Flavor's disk is too small for requested image.".into());
        }
    }
    if let Some(g) = &req.group {
        match app.server_groups.get(g).await? {
            Some(group) if ctx.is_admin() || group.project_id == ctx.project_id() => {}
            _ => return bad(format!("Invalid server group: {g} could not be found.")),
        }
    }
    if let Some(k) = &req.key_name {
        if app.keypairs.get(ctx.user_id(), k).await?.is_none() {
            return bad(format!("Invalid key_name provided: {k}"));
        }
    }
    let mut nics = app
        .network
        .check_nics(ctx, req.networks)
        .await
        .map_err(nic_error)?;
    let groups = app
        .network
        .resolve_groups(ctx, &req.security_groups)
        .await
        .map_err(nic_error)?;
    for nic in nics.iter_mut().filter(|n| n.port_id.is_none()) {
        nic.security_groups.clone_from(&groups);
    }
    if req.metadata.len() > super::update::MAX_METADATA_ITEMS {
        return Err(ComputeError::Forbidden(format!(
            "Quota exceeded for metadata_items: at most {} metadata items",
            super::update::MAX_METADATA_ITEMS
        )));
    }
    let quota = app.quotas.get(&project).await?;
    let t = now();
    let server = Server {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project,
        user_id: ctx.user_id().to_owned(),
        name: req.name,
        flavor_id: flavor.id.clone(),
        image_id: image.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
        vcpus: flavor.vcpus,
        ram_mib: flavor.ram_mib,
        disk_gib: flavor.disk_gib,
        ephemeral_gib: flavor.ephemeral_gib,
        swap_mib: flavor.swap_mib,
        // Nova's rule: asked for, forced by the image, or by the deployment.
        config_drive: req.config_drive
            || app.config.force_config_drive
            || image.as_ref().is_some_and(|i| {
                i.properties
                    .get("img_config_drive")
                    .is_some_and(|v| v == "mandatory")
            }),
        host_id: None,
        vm_state: "building".into(),
        task_state: Some("scheduling".into()),
        power_state: 0,
        fault: None,
        key_name: req.key_name,
        user_data: req.user_data,
        metadata: req.metadata,
        availability_zone: req.availability_zone.unwrap_or_else(|| "nova".into()),
        created_at: t,
        updated_at: t,
        launched_at: None,
        generation: 0,
        access_ipv4: req.access_ipv4,
        access_ipv6: req.access_ipv6,
        disk_config: req.disk_config.unwrap_or_else(|| "MANUAL".into()),
        description: req.description,
        reservation_id: req.reservation_id,
        locked: false,
        launch_index: req.launch_index,
        tags: Vec::new(),
    };
    // Before the row: a build resumed after a stop finds them.
    // The volume it boots from is its own from now on (made now from the
    // image, when so asked; its build waits for it).
    let root = match &req.boot_volume {
        Some(boot) => Some(claim_root_volume(app, ctx, &server.id, boot).await?),
        None => None,
    };
    app.nic_requests.set(&server.id, &nics).await?;
    // In its group before it exists (a member counts once it does), so
    // that the scheduler finds it there.
    if let Some(group) = &req.group {
        let joined = app
            .server_groups
            .add_member(
                group,
                &server.id,
                crate::compute::server_groups::MAX_MEMBERS,
            )
            .await;
        if !matches!(joined, Ok(true)) {
            let _ = app.nic_requests.delete(&server.id).await;
            joined?;
            return Err(ComputeError::Forbidden(
                "Quota exceeded, too many servers in group".into(),
            ));
        }
    }
    let admitted = app.servers.insert_within(&server, &quota).await;
    if !matches!(admitted, Ok(Admission::Admitted)) {
        let _ = app.nic_requests.delete(&server.id).await;
        let _ = app.server_groups.remove_member(&server.id).await;
        if let Some(v) = &root {
            // Given back (and one made for it, deleted).
            let _ = app.volumes.store.free_root(v, now()).await;
        }
    }
    if let Admission::OverQuota(o) = admitted? {
        return Err(ComputeError::OverQuota(o));
    }
    let record = Action {
        request_id: ctx.request_id.clone(),
        server_id: server.id.clone(),
        project_id: server.project_id.clone(),
        user_id: server.user_id.clone(),
        action: "create".into(),
        start_us: now_us(),
        finish_us: None,
        result: None,
        message: None,
    };
    if let Err(e) = app.actions.start(&record).await {
        tracing::warn!(server = %server.id, "recording its create: {e}");
    }
    if let Some(app) = app.me.upgrade() {
        let (id, request_id) = (server.id.clone(), ctx.request_id.clone());
        tokio::spawn(async move { build_and_record(&app, &id, &request_id).await });
    }
    Ok(server)
}

/// A network service refusal of a create's networks, as Nova answers it.
/// Makes the volume `boot` names server `server_id`'s root volume: an
/// existing one (available, the caller's), or one made from an image for
/// it. Its id.
async fn claim_root_volume(
    app: &App,
    ctx: &RequestContext,
    server_id: &str,
    boot: &BootVolume,
) -> Result<String, ComputeError> {
    let volume_error = |e: crate::volume::VolumeError| match e {
        crate::volume::VolumeError::Cinder { message, .. } => {
            ComputeError::BadRequest(format!("Block Device Mapping is Invalid: {message}"))
        }
        crate::volume::VolumeError::Store(e) => ComputeError::Store(e),
    };
    match boot {
        BootVolume::Volume {
            id,
            delete_on_termination,
        } => {
            let v = app.volumes.get(ctx, id).await.map_err(|_| {
                ComputeError::BadRequest(format!(
                    "Block Device Mapping is Invalid: failed to get volume {id}."
                ))
            })?;
            if !v.bootable {
                return Err(ComputeError::BadRequest(format!(
                    "Block Device {id} is not bootable."
                )));
            }
            if !app
                .volumes
                .store
                .claim_root(&v.id, server_id, *delete_on_termination, now())
                .await?
            {
                return Err(ComputeError::BadRequest(format!(
                    "Block Device Mapping is Invalid: volume {id} status must be available to boot from it, but it is {}.",
                    v.status
                )));
            }
            Ok(v.id)
        }
        BootVolume::Image {
            image_id,
            size_gib,
            delete_on_termination,
        } => {
            let v = app
                .volumes
                .create(
                    app,
                    ctx,
                    crate::volume::service::CreateVolume {
                        size_gib: Some(*size_gib),
                        source: Some(crate::volume::service::Source::Image(image_id.clone())),
                        root_of: Some(server_id.to_owned()),
                        delete_on_termination: *delete_on_termination,
                        ..Default::default()
                    },
                )
                .await
                .map_err(volume_error)?;
            Ok(v.id)
        }
    }
}

fn nic_error(e: NetworkError) -> ComputeError {
    match e {
        NetworkError::Neutron {
            status: 409,
            message,
            ..
        } => ComputeError::Conflict(message),
        NetworkError::Neutron { message, .. } => ComputeError::BadRequest(message),
        NetworkError::Store(e) => ComputeError::Store(e),
    }
}

/// Builds the server, then records the create's outcome under its request.
async fn build_and_record(app: &Arc<App>, id: &str, request_id: &str) {
    super::build::build(app, id).await;
    let failure = match app.servers.get(id).await {
        Ok(Some(s)) if s.vm_state == "error" => Some(s.fault.unwrap_or_default()),
        _ => None,
    };
    let _ = app.actions.finish(id, request_id, failure.as_deref()).await;
}

/// Resumes the builds whose controller stopped (last written before
/// `before`; at start on SQLite, all of them) from the step their row
/// records (see [`super::build`]). Each is
/// taken by one write of its generation, so two controllers never resume
/// the same build. Returns how many it resumed.
pub async fn resume(app: &Arc<App>, before: i64) -> usize {
    let taken = match app.servers.take_stale_builds(before).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("finding abandoned builds: {e}");
            return 0;
        }
    };
    let n = taken.len();
    for server in taken {
        tracing::info!(server = %server.id, host = ?server.host_id, "resuming its build");
        // Its create's action, to close when the build ends.
        let request_id = app.actions.list(&server.id).await.ok().and_then(|list| {
            list.into_iter()
                .find(|a| a.action == "create" && a.finish_us.is_none())
                .map(|a| a.request_id)
        });
        let app = app.clone();
        tokio::spawn(async move {
            match request_id {
                Some(r) => build_and_record(&app, &server.id, &r).await,
                None => super::build::build(&app, &server.id).await,
            }
        });
    }
    n
}
