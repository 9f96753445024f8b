//! A server's build as a sequence of steps, each recorded before it runs and
//! each with its undo. The server's `task_state` is the build's log: it names
//! the step running, in Nova's own words (which clients see), and every step
//! before it is done; each step's results live where they belong (the claim
//! and the host on the server's row and the host's claims; later, ports and
//! volume attachments in their services' tables), so its undo finds them.
//!
//! A build cut short (the controller killed) is resumed at the step its row
//! names; steps are idempotent, so a step that had run before the stop runs
//! again harmlessly. A step that fails unwinds: the steps done are undone in
//! reverse, and a failure on one host (hostd refused or did not answer) is
//! retried from scheduling on another host, up to [`MAX_ATTEMPTS`] hosts.
//!
//! The steps, in order: `scheduling` (a host chosen and claimed),
//! `networking` (a port made or bound on that host for each NIC the server
//! asked for), `spawning` (the instance created on that host's hostd, which
//! answers at once, and followed there while hostd fetches its images and
//! starts it), then ACTIVE. Volumes (`block_device_mapping`: attachments)
//! will join before spawning, in Nova's order.

use std::collections::BTreeMap;

use std::time::Duration;

use hostd_proto::instance::{ImageInstanceSpec, PortNic, State};

use super::state::DELETING;
use crate::app::App;
use crate::compute::scheduler::{Demand, GroupRule, PlaceError};
use crate::compute::servers::Server;
use crate::hostd_client::{Hostd, HostdError};

/// Hosts tried for one server before it goes to ERROR.
pub const MAX_ATTEMPTS: usize = 3;
/// How long a host may take to fetch a server's images and start it.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a host may not answer while a server is spawned there.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);
/// How often a build that waits writes its row (well within
/// `sync::STALE_AFTER_SECS`).
const HEARTBEAT: Duration = Duration::from_secs(60);
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// A build's steps, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Scheduling,
    Networking,
    Spawning,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Scheduling, Step::Networking, Step::Spawning];

    /// The server's task_state while this step runs.
    pub fn task_state(self) -> &'static str {
        match self {
            Step::Scheduling => "scheduling",
            Step::Networking => "networking",
            Step::Spawning => "spawning",
        }
    }

    /// The step a building server's task_state names.
    pub fn from_task_state(task_state: Option<&str>) -> Option<Step> {
        Step::ALL
            .into_iter()
            .find(|s| Some(s.task_state()) == task_state)
    }

    fn next(self) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s > self)
    }
}

/// How a step failed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The host failed it: undo back to scheduling, and try another host.
    Host(String),
    /// Nothing else would do better: undo everything; the server is ERROR.
    Fatal(String),
    /// The server was deleted meanwhile: its delete owns what is left.
    Deleted,
}

/// What a build carries from step to step.
struct Build<'a> {
    app: &'a App,
    id: String,
    project_id: String,
    /// What hostd runs; None when it could not be made.
    spec: Option<ImageInstanceSpec>,
    demand: Demand,
    /// The host it is placed on (the claim taken), once scheduled.
    host: Option<(String, Hostd)>,
    /// Hosts that failed it.
    tried: Vec<String>,
}

impl Step {
    async fn run(self, b: &mut Build<'_>) -> Result<(), Failure> {
        match self {
            Step::Scheduling => {
                if b.host.is_some() {
                    return Ok(()); // placed before a stop
                }
                match b.app.scheduler.place(&b.id, &b.demand, &b.tried).await {
                    // The claim recorded the host on the server.
                    Ok(h) => {
                        let hostd = Hostd::new(h.report.url, b.app.hostd_token(&h.report.host_id));
                        b.host = Some((h.report.host_id, hostd));
                        Ok(())
                    }
                    Err(PlaceError::NoValidHost(why)) => {
                        Err(Failure::Fatal(format!("No valid host was found. {why}")))
                    }
                    Err(PlaceError::Store(e)) => {
                        Err(Failure::Fatal(format!("scheduling failed: {e}")))
                    }
                }
            }
            Step::Networking => {
                let Some((host_id, _)) = &b.host else {
                    return Err(Failure::Fatal("networking without a host".into()));
                };
                let nics = b
                    .app
                    .nic_requests
                    .get(&b.id)
                    .await
                    .map_err(|e| Failure::Fatal(format!("its networks: {e}")))?;
                b.app
                    .network
                    .plug_server(&b.project_id, &b.id, host_id, &nics)
                    .await
                    .map(|_| ())
                    .map_err(|e| Failure::Fatal(format!("Build of instance {} aborted: {e}", b.id)))
            }
            Step::Spawning => {
                let (Some((host_id, hostd)), Some(spec)) = (&b.host, &mut b.spec) else {
                    return Err(Failure::Fatal("spawning without a host or a spec".into()));
                };
                // What the guest is told of its NICs: the ports as they are
                // now (also when the build resumed here).
                let ports = b
                    .app
                    .network
                    .server_ports(&b.id)
                    .await
                    .map_err(|e| Failure::Fatal(format!("its ports: {e}")))?;
                if let Some(drive) = &mut spec.config_drive {
                    drive.network_data = b
                        .app
                        .network
                        .network_data(&ports)
                        .await
                        .map_err(|e| Failure::Fatal(format!("its network data: {e}")))?;
                }
                spec.nics = nics(b.app, &ports).await;
                if spec.root_volume.is_none()
                    && spec.root_image.is_none()
                    && spec.kernel_image.is_none()
                {
                    let (root, nbd) = root_volume(b.app, &b.id, host_id).await?;
                    spec.root_volume = Some(root);
                    spec.root_volume_nbd = nbd;
                }
                let spec = &*spec;
                // An instance of it there already: the create reached the
                // host before a stop (a resumed build).
                match hostd.create(spec, true).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => {}
                    Err(HostdError::Refused {
                        status: 422,
                        message,
                    }) => return Err(Failure::Fatal(message)),
                    Err(e) => return Err(Failure::Host(format!("host {host_id}: {e}"))),
                }
                follow_until(b.app, &b.id, host_id, hostd, State::Running).await
            }
        }
    }

    /// Undoes the step (also one that failed midway); idempotent.
    async fn undo(self, b: &mut Build<'_>) {
        match self {
            Step::Scheduling => {
                if let Some((host_id, _)) = b.host.take() {
                    if let Err(e) = b.app.scheduler.release(&b.id, &host_id).await {
                        // The claims recount (stale_work) corrects it.
                        tracing::warn!(server = %b.id, host = %host_id, "releasing the claim: {e}");
                    }
                }
            }
            Step::Networking => {
                if let Err(e) = b.app.network.unplug_server(&b.id).await {
                    // The delete releases them at the latest.
                    tracing::warn!(server = %b.id, "releasing its ports: {e}");
                }
            }
            Step::Spawning => {
                if let Some((host_id, hostd)) = &b.host {
                    // One the host does not have counts as removed; one on a
                    // host that does not answer, the orphan reaper removes.
                    if let Err(e) = hostd.remove(&b.id).await {
                        tracing::warn!(server = %b.id, host = %host_id, "removing a failed build: {e}");
                    }
                }
                // The volume it boots from stays its, unplugged.
                if let Ok(Some(v)) = b.app.volumes.store.root_of(&b.id).await {
                    let now = crate::identity::now();
                    let _ = b
                        .app
                        .volumes
                        .store
                        .release(&v.id, &["in-use"], None, now)
                        .await;
                }
            }
        }
    }
}

/// Follows a created instance on its host until it is in state `want`
/// (running, or shutoff for one created stopped): hostd fetches its images
/// (as long as that takes), makes its disks and starts it. The server's row
/// is written meanwhile, so that no other controller takes the work for
/// abandoned.
pub(super) async fn follow_until(
    app: &App,
    id: &str,
    host_id: &str,
    hostd: &Hostd,
    want: State,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + SPAWN_TIMEOUT;
    let mut heartbeat = tokio::time::Instant::now();
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        // Deleted (or being deleted) meanwhile: its delete may have reached
        // the host before the create did, so undo there. The delete gives
        // the claim back.
        let deleted = match app.servers.get(id).await {
            Ok(None) => true,
            Ok(Some(s)) => s.task_state.as_deref() == Some(DELETING),
            Err(_) => false,
        };
        if deleted {
            let _ = hostd.remove(id).await;
            return Err(Failure::Deleted);
        }
        let now = tokio::time::Instant::now();
        match hostd.get(id).await {
            Ok(i) => {
                unreachable_since = None;
                let why = || i.reason.clone().unwrap_or_else(|| i.state.as_str().into());
                match i.state {
                    st if st == want => return Ok(()),
                    State::Running | State::Paused if want == State::Running => return Ok(()),
                    State::Building => {}
                    State::Error if i.image_fault => return Err(Failure::Fatal(why())),
                    State::Error
                    | State::Shutoff
                    | State::Stopping
                    | State::Running
                    | State::Paused => {
                        return Err(Failure::Host(format!("host {host_id}: {}", why())))
                    }
                }
            }
            Err(e) if e.is_not_found() => {
                return Err(Failure::Host(format!(
                    "host {host_id}: the instance is gone from it"
                )))
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert(now);
                if now - since > UNREACHABLE_LIMIT {
                    return Err(Failure::Host(format!("host {host_id}: {e}")));
                }
            }
        }
        if now > deadline {
            return Err(Failure::Host(format!(
                "host {host_id}: not running within {SPAWN_TIMEOUT:?}"
            )));
        }
        if now - heartbeat > HEARTBEAT {
            heartbeat = now;
            let _ = app.servers.touch_task(id).await;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Runs the build of server `id` from the step its row names to ACTIVE, or
/// unwinds it to ERROR.
pub async fn build(app: &App, id: &str) {
    let Ok(Some(server)) = app.servers.get(id).await else {
        return;
    };
    let resumed_at =
        Step::from_task_state(server.task_state.as_deref()).unwrap_or(Step::Scheduling);
    // A resumed build: the host it was placed on, if that host is known.
    let host = match &server.host_id {
        Some(h) => match super::host(app, h).await {
            Some(hostd) => Some((h.clone(), hostd)),
            None => {
                let _ = app.scheduler.release(id, h).await;
                None
            }
        },
        None => None,
    };
    let mut b = Build {
        app,
        id: id.to_owned(),
        project_id: server.project_id.clone(),
        spec: None,
        demand: Demand {
            vcpus: server.vcpus,
            ram_mib: server.ram_mib,
            disk_gib: server
                .disk_gib
                .saturating_add(server.ephemeral_gib)
                .saturating_add(server.swap_mib.saturating_add(1023) / 1024),
            availability_zone: (server.availability_zone != "nova")
                .then(|| server.availability_zone.clone()),
            // Booted from a volume: on its storage host when it fits there.
            preferred_host: match app.volumes.store.root_of(id).await {
                Ok(Some(v)) => v.storage_host,
                _ => None,
            },
            group: match app.server_groups.placement_of(id).await {
                Ok(found) => found.map(|(g, hosts)| GroupRule {
                    policy: g.policy,
                    hosts,
                }),
                Err(e) => {
                    tracing::error!(server = %id, "its server group: {e}");
                    None
                }
            },
        },
        host,
        tried: Vec::new(),
    };
    // Placed on a host that is gone: scheduled again.
    let mut step = if b.host.is_none() {
        Step::Scheduling
    } else {
        resumed_at
    };
    match instance_spec(app, &server).await {
        Ok(spec) => b.spec = Some(spec),
        Err(why) => {
            unwind(&mut b, step).await;
            fail(app, id, &format!("Build of instance {id} aborted: {why}")).await;
            return;
        }
    }
    let mut last = String::new();
    loop {
        // Recorded before it runs: the log a resumed build reads.
        let _ = app
            .servers
            .set_state(id, "building", Some(step.task_state()), 0, None)
            .await;
        let failure = match step.run(&mut b).await {
            Ok(()) => match step.next() {
                Some(next) => {
                    step = next;
                    continue;
                }
                None => {
                    let _ = app.servers.set_state(id, "active", None, 1, None).await;
                    tracing::info!(server = %id, host = ?b.host.as_ref().map(|h| &h.0), "server active");
                    return;
                }
            },
            Err(f) => f,
        };
        match failure {
            Failure::Deleted => return,
            Failure::Host(why) => {
                tracing::warn!(server = %id, "{why}");
                if let Some((host_id, _)) = &b.host {
                    b.tried.push(host_id.clone());
                }
                unwind(&mut b, step).await;
                last = why;
                if b.tried.len() >= MAX_ATTEMPTS {
                    fail(
                        app,
                        id,
                        &format!("Exceeded maximum number of retries. {last}"),
                    )
                    .await;
                    return;
                }
                step = Step::Scheduling;
            }
            Failure::Fatal(why) => {
                unwind(&mut b, step).await;
                let fault = if last.is_empty() {
                    why
                } else {
                    format!("{last}; then {why}")
                };
                fail(app, id, &fault).await;
                return;
            }
        }
    }
}

/// Undoes `failed` (which may have run partly) and every step before it, in
/// reverse.
async fn unwind(b: &mut Build<'_>, failed: Step) {
    for step in Step::ALL.into_iter().rev().filter(|s| *s <= failed) {
        step.undo(b).await;
    }
}

async fn fail(app: &App, id: &str, fault: &str) {
    tracing::warn!(server = %id, "build failed: {fault}");
    let _ = app
        .servers
        .set_state(id, "error", None, 0, Some(fault))
        .await;
}

/// The NICs of a server's ports, in its requests' order, each with its
/// network's MTU.
async fn nics(app: &App, ports: &[crate::network::model::Port]) -> Vec<PortNic> {
    let mut nics = Vec::with_capacity(ports.len());
    for p in ports {
        let mtu = match app.network.store().network(&p.network_id).await {
            Ok(n) => n.and_then(|n| u16::try_from(n.mtu).ok()),
            Err(e) => {
                tracing::warn!(port = p.std.id, "the port's network: {e}");
                None
            }
        };
        nics.push(PortNic {
            tap: crate::network::nova::tap_name(&p.std.id),
            mac: p.mac_address.clone(),
            mtu,
        });
    }
    nics
}

/// The volume server `id` boots from, attached to it on `host_id` (waiting
/// while it is being made, as from an image) and as the storage host
/// exports it there.
pub(super) async fn root_volume(
    app: &App,
    id: &str,
    host_id: &str,
) -> Result<
    (
        hostd_proto::instance::RootVolume,
        Option<hostd_proto::instance::NbdExport>,
    ),
    Failure,
> {
    let store = &app.volumes.store;
    let fatal = |e: &dyn std::fmt::Display| Failure::Fatal(format!("its root volume: {e}"));
    let deadline = tokio::time::Instant::now() + SPAWN_TIMEOUT;
    let mut pause = Duration::from_millis(100);
    let volume = loop {
        let v = store.root_of(id).await.map_err(|e| fatal(&e))?;
        let Some(v) = v else {
            return Err(Failure::Fatal(
                "Build of instance aborted: its root volume is gone".into(),
            ));
        };
        match v.status.as_str() {
            "available" | "in-use" => break v,
            "creating" | "extending" if tokio::time::Instant::now() < deadline => {}
            other => {
                return Err(Failure::Fatal(format!(
                    "Build of instance {id} aborted: its root volume {} is {other}{}",
                    v.id,
                    v.fault.map(|f| format!(": {f}")).unwrap_or_default()
                )))
            }
        }
        let _ = app.servers.touch_task(id).await;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    };
    let attachment = uuid::Uuid::new_v4().to_string();
    if !store
        .attach_root(&volume.id, id, &attachment, host_id, crate::identity::now())
        .await
        .map_err(|e| fatal(&e))?
    {
        return Err(Failure::Fatal(format!(
            "Build of instance {id} aborted: its root volume {} is not available",
            volume.id
        )));
    }
    let Some(storage_host) = volume.storage_host.as_deref() else {
        return Err(Failure::Fatal("its root volume has no storage host".into()));
    };
    let host = store
        .storage_host(storage_host)
        .await
        .map_err(|e| fatal(&e))?
        .ok_or_else(|| Failure::Fatal(format!("storage host {storage_host} is unknown")))?;
    let storaged = crate::storaged_client::Storaged::new(&host.url, app.hostd_token(storage_host));
    let c = storaged
        .export(&volume.id, host_id)
        .await
        .map_err(|e| Failure::Host(format!("exporting its root volume: {e}")))?;
    let (base, layers) = match c.backing.split_last() {
        Some((base, layers)) => (Some(base.clone()), layers.to_vec()),
        None => (None, Vec::new()),
    };
    // On another host: its NBD export, which hostd connects.
    let nbd = c.nbd.map(|n| hostd_proto::instance::NbdExport {
        address: n.address,
        export: n.export,
    });
    Ok((
        hostd_proto::instance::RootVolume {
            id: volume.device_id(),
            path: c.path,
            base,
            layers,
            serial: volume.id.chars().take(20).collect(),
        },
        nbd,
    ))
}

/// What hostd is asked to run for a server. A disk image (raw, qcow2, ami) without a
/// `kernel_id` boots from its own `/boot`: hostd makes the server a root disk
/// of the flavor's size from it and picks the kernel there. Otherwise the
/// image's kernel (its `kernel_id`, or the image itself when it is a kernel),
/// ramdisk and command line (`os_command_line`) boot directly, with the
/// image as a read-only root disk. Every server gets a config drive. Images
/// go by id: hostd fetches them from this controller into its cache.
pub(super) async fn instance_spec(app: &App, s: &Server) -> Result<ImageInstanceSpec, String> {
    let booted_from_volume = s.image_id.is_empty();
    let image = app
        .images
        .get(&s.image_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the image is gone");
    let mut spec = ImageInstanceSpec {
        id: s.id.clone(),
        vcpus: u8::try_from(s.vcpus)
            .map_err(|_| format!("{} vCPUs: a host runs at most 255 per guest", s.vcpus))?,
        memory_mib: u32::try_from(s.ram_mib)
            .map_err(|_| format!("{} MiB of RAM: too much for one guest", s.ram_mib))?,
        kernel_image: None,
        root_image: None,
        root_disk_gib: None,
        root_volume: None,
        root_volume_nbd: None,
        ephemeral_gib: None,
        swap_mib: None,
        config_drive: None,
        initramfs_image: None,
        disk_images: Vec::new(),
        cmdline: None,
        metadata: BTreeMap::from([
            ("name".to_owned(), s.name.clone()),
            ("project_id".to_owned(), s.project_id.clone()),
        ]),
        nics: Vec::new(),
    };
    // Its NICs as they are now (a rebuild keeps them; a build's networking
    // step makes them, and spawning tells the guest again).
    let ports = app
        .network
        .server_ports(&s.id)
        .await
        .map_err(|e| e.to_string())?;
    if s.config_drive {
        spec.config_drive = Some(super::metadata::guest_metadata(app, s, &ports).await?);
    }
    spec.nics = nics(app, &ports).await;
    let size = |n: i64, what: &str| match u32::try_from(n) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("a {what} of {n} is more than a host makes")),
    };
    spec.ephemeral_gib = size(s.ephemeral_gib, "GiB ephemeral disk")?;
    spec.swap_mib = size(s.swap_mib, "MiB swap disk")?;
    if booted_from_volume {
        // Its root volume is attached and named when it spawns.
        return Ok(spec);
    }
    let image = image?;
    let disk_format = image.disk_format.as_deref();
    let kernel_id = image.properties.get("kernel_id");
    if kernel_id.is_none() && disk_format != Some("aki") {
        match disk_format {
            // A qcow2 upload is kept as raw too (see `image::upload`); an
            // ami without a kernel is a whole disk, as Nova boots it.
            Some("raw" | "qcow2" | "ami") => {}
            Some(other) => {
                return Err(format!(
                    "disk format {other} cannot boot from its own /boot: upload the image as raw or qcow2"
                ))
            }
            None => return Err("the image has no disk format".into()),
        }
        spec.root_image = Some(image.id.clone());
        spec.root_disk_gib = u32::try_from(s.disk_gib).ok().filter(|g| *g > 0);
        return Ok(spec);
    }
    let active = |i: Option<crate::image::Image>, what: &str| match i {
        Some(i) if i.status == "active" => Ok(i.id),
        _ => Err(format!("the {what} image is missing or not active")),
    };
    spec.kernel_image = Some(match kernel_id {
        None => image.id.clone(),
        Some(kid) => active(
            app.images.get(kid).await.map_err(|e| e.to_string())?,
            "kernel",
        )?,
    });
    spec.initramfs_image = match image.properties.get("ramdisk_id") {
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
    if matches!(disk_format, Some("raw" | "qcow2" | "ami")) && image.size.unwrap_or(0) > 0 {
        spec.disk_images.push(image.id.clone());
        if !cmdline.contains("root=") {
            cmdline.push_str(" root=/dev/vda ro");
        }
    }
    spec.cmdline = Some(cmdline);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_novas_order_and_are_found_by_task_state() {
        assert_eq!(Step::Scheduling.next(), Some(Step::Networking));
        assert_eq!(Step::Networking.next(), Some(Step::Spawning));
        assert_eq!(Step::Spawning.next(), None);
        for s in Step::ALL {
            assert_eq!(Step::from_task_state(Some(s.task_state())), Some(s));
        }
        assert_eq!(Step::from_task_state(Some("deleting")), None);
        assert_eq!(Step::from_task_state(None), None);
    }
}
