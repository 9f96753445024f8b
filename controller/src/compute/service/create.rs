//! Server create: checked and admitted (quota in the insert's transaction)
//! while the client waits, then built in the background: placed on a host
//! (the claim and the host recorded on the server's row in one transaction),
//! started by that host's hostd, ACTIVE. A host that refuses gives its claim
//! back and the next host is tried; a delete that arrives meanwhile wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use hostd_proto::instance::ImageInstanceSpec;

use super::state::DELETING;
use super::ComputeError;
use crate::app::App;
use crate::compute::actions::{now_us, Action};
use crate::compute::scheduler::{Demand, PlaceError};
use crate::compute::servers::{Admission, Server};
use crate::context::RequestContext;
use crate::hostd_client::Hostd;
use crate::identity::now;

/// Hosts tried for one server before it goes to ERROR.
const MAX_ATTEMPTS: usize = 3;
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// A create as the client asked for it (Nova's body, parsed).
#[derive(Clone, Debug, Default)]
pub struct CreateServer {
    pub name: String,
    pub flavor_ref: String,
    pub image_ref: String,
    pub key_name: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub user_data: Option<String>,
    pub availability_zone: Option<String>,
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
    let flavor = match app.flavors.get(&req.flavor_ref).await? {
        Some(f) if f.is_public || ctx.is_admin() => f,
        _ => return bad(format!("Flavor {} could not be found.", req.flavor_ref)),
    };
    let image = match app.images.get(&req.image_ref).await? {
        Some(i) if i.visible_to(&project, ctx.is_admin()) && i.status == "active" => i,
        Some(i) if i.visible_to(&project, ctx.is_admin()) => {
            return bad(format!("Image {} is not active.", req.image_ref))
        }
        _ => return bad(format!("Image {} could not be found.", req.image_ref)),
    };
    if let Some(k) = &req.key_name {
        if app.keypairs.get(ctx.user_id(), k).await?.is_none() {
            return bad(format!("Invalid key_name provided: {k}"));
        }
    }
    let quota = app.quotas.get(&project).await?;
    let t = now();
    let server = Server {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project,
        user_id: ctx.user_id().to_owned(),
        name: req.name,
        flavor_id: flavor.id.clone(),
        image_id: image.id.clone(),
        vcpus: flavor.vcpus,
        ram_mib: flavor.ram_mib,
        disk_gib: flavor.disk_gib,
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
    };
    if let Admission::OverQuota(o) = app.servers.insert_within(&server, &quota).await? {
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

/// Builds the server, then records the create's outcome under its request.
async fn build_and_record(app: &Arc<App>, id: &str, request_id: &str) {
    build(app, id).await;
    let failure = match app.servers.get(id).await {
        Ok(Some(s)) if s.vm_state == "error" => Some(s.fault.unwrap_or_default()),
        _ => None,
    };
    let _ = app.actions.finish(request_id, failure.as_deref()).await;
}

/// Resumes the builds whose controller stopped (last written before
/// `before`; at start on SQLite, all of them) from the step their row
/// records: placing (no host yet) or starting on the host it names. Each is
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
                None => build(&app, &server.id).await,
            }
        });
    }
    n
}

/// What hostd is asked to run for a server: the image's kernel (its
/// `kernel_id`, or the image itself when it is a kernel), ramdisk and command
/// line (`os_command_line`), and the image as a read-only root disk. Images go
/// by id: hostd fetches them from this controller into its cache.
async fn instance_spec(app: &App, s: &Server) -> Result<ImageInstanceSpec, String> {
    let image = app
        .images
        .get(&s.image_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the image is gone")?;
    let active = |i: Option<crate::image::Image>, what: &str| match i {
        Some(i) if i.status == "active" => Ok(i.id),
        _ => Err(format!("the {what} image is missing or not active")),
    };
    let kernel = if image.disk_format.as_deref() == Some("aki") {
        image.id.clone()
    } else {
        let kid = image.properties.get("kernel_id").ok_or(
            "the image has no kernel_id property: Virga boots a kernel directly (no firmware)",
        )?;
        active(
            app.images.get(kid).await.map_err(|e| e.to_string())?,
            "kernel",
        )?
    };
    let initramfs = match image.properties.get("ramdisk_id") {
        Some(rid) => Some(active(
            app.images.get(rid).await.map_err(|e| e.to_string())?,
            "ramdisk",
        )?),
        None => None,
    };
    let mut cmdline = image
        .properties
        .get("os_command_line")
        .cloned()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
    let mut disks = Vec::new();
    if matches!(image.disk_format.as_deref(), Some("raw" | "qcow2" | "ami"))
        && image.size.unwrap_or(0) > 0
    {
        disks.push(image.id.clone());
        if !cmdline.contains("root=") {
            cmdline.push_str(" root=/dev/vda ro");
        }
    }
    Ok(ImageInstanceSpec {
        id: s.id.clone(),
        vcpus: u8::try_from(s.vcpus)
            .map_err(|_| format!("{} vCPUs: a host runs at most 255 per guest", s.vcpus))?,
        memory_mib: u32::try_from(s.ram_mib)
            .map_err(|_| format!("{} MiB of RAM: too much for one guest", s.ram_mib))?,
        kernel_image: kernel,
        initramfs_image: initramfs,
        disk_images: disks,
        cmdline: Some(cmdline),
        metadata: BTreeMap::from([
            ("name".to_owned(), s.name.clone()),
            ("project_id".to_owned(), s.project_id.clone()),
        ]),
    })
}

/// Places a server and starts it on a host, trying others on failure. Each
/// step is recorded on the server's row before it runs, so a build cut short
/// resumes from it ([`resume`]): a server without a host is placed (the claim
/// and the host recorded in one transaction); one with a host is started
/// there (task_state spawning), where an instance of it that exists already
/// (the create reached the host before the stop) counts as started.
async fn build(app: &App, id: &str) {
    let Ok(Some(server)) = app.servers.get(id).await else {
        return;
    };
    let demand = Demand {
        vcpus: server.vcpus,
        ram_mib: server.ram_mib,
        disk_gib: server.disk_gib,
        availability_zone: (server.availability_zone != "nova")
            .then(|| server.availability_zone.clone()),
    };
    let spec = match instance_spec(app, &server).await {
        Ok(s) => s,
        Err(why) => {
            fail(app, id, &format!("Build of instance {id} aborted: {why}")).await;
            return;
        }
    };
    let mut tried: Vec<String> = Vec::new();
    let mut last = String::new();
    // A resumed build: the host it was placed on, if that host is known.
    let mut placed = match &server.host_id {
        Some(h) => match super::host(app, h).await {
            Some(hostd) => Some((h.clone(), hostd)),
            None => {
                let _ = app.scheduler.release(id, h).await;
                None
            }
        },
        None => None,
    };
    for _ in 0..MAX_ATTEMPTS {
        let (host_id, hostd) = match placed.take() {
            Some(p) => p,
            None => match app.scheduler.place(id, &demand, &tried).await {
                // The claim recorded the host on the server.
                Ok(h) => {
                    let hostd = Hostd::new(h.report.url, app.hostd_token(&h.report.host_id));
                    (h.report.host_id, hostd)
                }
                Err(PlaceError::NoValidHost(why)) => {
                    let msg = if last.is_empty() {
                        format!("No valid host was found. {why}")
                    } else {
                        format!("{last}; then no other host: {why}")
                    };
                    fail(app, id, &msg).await;
                    return;
                }
                Err(PlaceError::Store(e)) => {
                    fail(app, id, &format!("scheduling failed: {e}")).await;
                    return;
                }
            },
        };
        let _ = app
            .servers
            .set_state(id, "building", Some("spawning"), 0, None)
            .await;
        // An instance of it there already: the create reached the host before
        // a stop (a resumed build).
        let created = match hostd.create(&spec).await {
            Err(e) if e.is_conflict() => Ok(()),
            other => other.map(|_| ()),
        };
        match created {
            Ok(()) => {
                // Deleted (or being deleted) while building: its delete may
                // have reached the host before this create did, so undo on
                // the host. The delete gives the claim back.
                let deleted = match app.servers.get(id).await {
                    Ok(None) => true,
                    Ok(Some(s)) => s.task_state.as_deref() == Some(DELETING),
                    Err(_) => false,
                };
                if deleted {
                    let _ = hostd.remove(id).await;
                    return;
                }
                let _ = app.servers.set_state(id, "active", None, 1, None).await;
                tracing::info!(server = %id, host = %host_id, "server active");
                return;
            }
            Err(e) => {
                tracing::warn!(server = %id, host = %host_id, "hostd refused the instance: {e}");
                let _ = app.scheduler.release(id, &host_id).await;
                last = format!("host {host_id}: {e}");
                tried.push(host_id);
            }
        }
    }
    fail(
        app,
        id,
        &format!("Exceeded maximum number of retries. {last}"),
    )
    .await;
}

async fn fail(app: &App, id: &str, fault: &str) {
    tracing::warn!(server = %id, "build failed: {fault}");
    let _ = app
        .servers
        .set_state(id, "error", None, 0, Some(fault))
        .await;
}
