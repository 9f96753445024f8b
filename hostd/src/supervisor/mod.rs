//! The supervisor: the registry of instances, each run by its own actor
//! ([`actor`]), and what instances share: the host's memory (admission), the
//! jail users, the state store, the event stream and the counters.
//!
//! - [`actor`]: one task per instance, owning its record and its VMM
//! - [`vmm_config`]: the VMM's configuration file and jail for an instance
//! - [`exit`]: what a VMM's exit means for its instance
//! - [`nbd_links`]: remote disks connected again when their links die
//!
//! A VMM's exit is noticed through its pidfd the moment it happens. Every
//! change of a record is written to the store before it is announced, so a
//! hostd killed at any point comes back with a view it can re-adopt from.

mod actor;
mod exit;
mod nbd_links;
mod vmm_config;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use vmm::config::VmConfig;

use self::actor::{Admitted, First, Handle, Request, Shared, Termination};
use crate::cgroup::CgroupRoot;
use crate::config::Config;
use crate::instance::{now_secs, Instance, InstanceSpec, Preparing, Size, State};
use crate::store::Store;

pub use self::exit::tail_lines;

const CONSOLE_LOG: &str = "console.log";
/// The FIFO the VMM reads console input from (hostd writes what is typed).
const CONSOLE_INPUT: &str = "console.in";
/// The most one write of console input carries: a pipe takes it whole, so
/// what two typists send is never interleaved within a write.
pub const MAX_CONSOLE_INPUT: usize = 4096;
const VMM_LOG: &str = "vmm.log";
const API_SOCKET: &str = "api.sock";
const VMM_CONFIG: &str = "vmm.json";
/// An instance booted from a disk image: its writable root disk (named by
/// `root_disk`), its config drive, and where the kernel and initramfs picked
/// from the root disk go.
const CONFIG_DRIVE: &str = "config-drive.img";
/// The flavor's ephemeral and swap disks, made once like the root disk.
const EPHEMERAL_DISK: &str = "ephemeral.img";
const SWAP_DISK: &str = "swap.img";
const PICKED_BOOT: &str = "boot";
/// The empty directory a jailed VMM mounts its root on (in its own mount
/// namespace; nothing appears here on the host).
const JAIL_ROOT: &str = "jail";

/// A client-visible failure, mapped to an HTTP status by the API.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no instance {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// The instance's image cannot boot (another host would not help).
    #[error("{0}")]
    Unbootable(String),
    /// Its VMM cannot answer now (starting or restarting): try again soon.
    #[error("{0}")]
    Unavailable(String),
}

/// A state change, as the event stream carries it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub instance: String,
    /// An instance state, or "deleted".
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: u64,
}

/// Counters for /metrics.
#[derive(Default)]
pub struct Counters {
    pub vmm_starts: AtomicU64,
    pub vmm_exits_clean: AtomicU64,
    pub vmm_exits_failed: AtomicU64,
    pub adopted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Supervisor {
    pub config: Config,
    store: Arc<Store>,
    cgroups: Option<CgroupRoot>,
    instances: Mutex<BTreeMap<String, Handle>>,
    /// Jail users by instance: a user stays with its instance for the
    /// instance's life (its writable disks belong to that user).
    vmm_uids: Mutex<BTreeMap<u32, String>>,
    events: broadcast::Sender<Event>,
    pub counters: Counters,
    /// This supervisor, for the actors it starts.
    me: std::sync::Weak<Supervisor>,
    images: crate::images::ImageCache,
    picks: Arc<crate::pick_cache::PickCache>,
    nbd_links: nbd_links::LinkRepair,
}

impl Supervisor {
    /// Loads the saved instances and re-adopts the VMMs still running.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Supervisor>> {
        let store = Store::open(&config.state_dir)?;
        let cgroups = match &config.cgroup_root {
            Some(root) => match CgroupRoot::init(root) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("running VMMs without cgroup limits: {e}");
                    None
                }
            },
            None => None,
        };
        let (events, _) = broadcast::channel(1024);
        let images = crate::images::ImageCache::new(
            config.state_dir.join("images"),
            config.controller.clone(),
        )?;
        let picks = Arc::new(crate::pick_cache::PickCache::new(
            config.state_dir.join("images"),
            &config.bootpick_binary,
        )?);
        let records = store.load()?;
        for orphan in store.remove_orphan_run_dirs(&records) {
            tracing::warn!(
                instance = orphan,
                "removed the run directory of a deleted instance"
            );
        }
        let sup = Arc::new_cyclic(|me| Supervisor {
            images,
            picks,
            config,
            store: Arc::new(store),
            cgroups,
            instances: Mutex::new(BTreeMap::new()),
            vmm_uids: Mutex::new(
                records
                    .iter()
                    .filter_map(|r| Some((r.vmm_uid?, r.spec.id.clone())))
                    .collect(),
            ),
            events,
            counters: Counters::default(),
            me: me.clone(),
            nbd_links: Default::default(),
        });
        let mut adopted = Vec::new();
        for record in records {
            let id = record.spec.id.clone();
            let (done, wait) = oneshot::channel();
            let handle = actor::spawn(sup.clone(), record, First::Adopt(done));
            lock(&sup.instances).insert(id, handle);
            adopted.push(wait);
        }
        for wait in adopted {
            let _ = wait.await;
        }
        sup.tidy_nbd_leftovers().await;
        if sup.list().iter().any(|i| !i.spec.remote_disks.is_empty()) {
            sup.watch_nbd_links();
        }
        // After every record is loaded: their images are in use.
        if let Some(unused_for) = sup.config.unused_image_for {
            sup.sweep_images(unused_for);
        }
        Ok(sup)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn announce(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn cgroups_enabled(&self) -> bool {
        self.cgroups.is_some()
    }

    /// A handle's parts needed to talk to its actor, without holding the
    /// registry's lock across the wait.
    fn handle<T>(&self, id: &str, f: impl FnOnce(&Handle) -> T) -> Result<T, OpError> {
        lock(&self.instances)
            .get(id)
            .map(f)
            .ok_or_else(|| OpError::NotFound(id.to_owned()))
    }

    /// The cached images (by id) instances use: named in their specs, or
    /// as files of the cache (a spec's images are resolved to paths).
    fn images_in_use(&self) -> std::collections::BTreeSet<String> {
        let dir = self.images.dir();
        let mut in_use = std::collections::BTreeSet::new();
        for r in self.list() {
            let s = &r.spec;
            let ids = s
                .root_image
                .iter()
                .chain(&s.kernel_image)
                .chain(&s.initramfs_image)
                .chain(&s.disk_images);
            in_use.extend(ids.cloned());
            let paths = s.kernel.iter().chain(&s.initramfs).chain(
                s.disks
                    .iter()
                    .flat_map(|d| std::iter::once(&d.path).chain(&d.base).chain(&d.layers)),
            );
            in_use.extend(
                paths
                    .filter(|p| p.parent() == Some(dir))
                    .filter_map(|p| p.file_name()?.to_str().map(str::to_owned)),
            );
        }
        in_use
    }

    /// Removes, now and then, the cached images no instance has used for
    /// `unused_for` (see [`crate::images::ImageCache::sweep`]).
    fn sweep_images(self: &Arc<Self>, unused_for: Duration) {
        let sup = Arc::downgrade(self);
        let every = (unused_for / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(sup) = sup.upgrade() else { return };
                let in_use = sup.images_in_use();
                let swept =
                    tokio::task::spawn_blocking(move || sup.images.sweep(&in_use, unused_for))
                        .await;
                for id in swept.unwrap_or_default() {
                    tracing::info!(image = id, ?unused_for, "removed the unused cached image");
                }
            }
        });
    }

    pub fn list(&self) -> Vec<Instance> {
        lock(&self.instances)
            .values()
            .map(|h| h.record.borrow().clone())
            .collect()
    }

    pub fn show(&self, id: &str) -> Result<Instance, OpError> {
        self.handle(id, |h| h.record.borrow().clone())
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.store.run_dir(id)
    }

    /// vCPUs and MiB held by instances that have a VMM.
    pub fn used(&self) -> (u64, u64) {
        Self::used_by(&lock(&self.instances))
    }

    /// vCPUs and MiB of the instances with a VMM, or admitted to start one.
    fn used_by(instances: &BTreeMap<String, Handle>) -> (u64, u64) {
        instances.values().fold((0, 0), |(c, m), h| {
            let r = h.record.borrow();
            // A VMM, or one admitted to start (an instance being prepared
            // has neither yet: it is admitted when its preparation ends).
            if r.process.is_some() || h.shared.admitted.load(Ordering::SeqCst) {
                (
                    c + u64::from(r.spec.vcpus),
                    m + u64::from(r.spec.memory_mib),
                )
            } else {
                (c, m)
            }
        })
    }

    /// Admits `memory_mib` for an instance's start against the host's free
    /// memory, counting every instance with a VMM or admitted to start one;
    /// checking and admitting are one step under the registry's lock, so two
    /// starts cannot both take the last room. The admission ends when the
    /// returned guard drops (the start then runs a VMM, which counts, or
    /// failed).
    fn admit(&self, shared: &Arc<Shared>, memory_mib: u32) -> Result<Admitted, OpError> {
        let instances = lock(&self.instances);
        let (_, used_mib) = Self::used_by(&instances);
        let host_mib = vmm::config::host_memory_mib().unwrap_or(0);
        let free = host_mib
            .saturating_sub(self.config.reserved_memory_mib)
            .saturating_sub(used_mib);
        if u64::from(memory_mib) > free {
            return Err(OpError::Conflict(format!(
                "not enough free memory: {memory_mib} MiB asked, {free} MiB free"
            )));
        }
        shared.admitted.store(true, Ordering::SeqCst);
        Ok(Admitted(shared.clone()))
    }

    /// The user the instance's VMM runs as: the one it has, or the lowest no
    /// other instance holds. None when VMMs are not jailed.
    fn vmm_uid(&self, id: &str) -> Result<Option<u32>, OpError> {
        let Some(base) = self.config.vmm_uid_base else {
            return Ok(None);
        };
        let mut uids = lock(&self.vmm_uids);
        if let Some((&uid, _)) = uids.iter().find(|(_, owner)| *owner == id) {
            return Ok(Some(uid));
        }
        let uid = (base..base + crate::config::MAX_JAILED_VMMS)
            .find(|u| !uids.contains_key(u))
            .ok_or_else(|| {
                OpError::Conflict(format!(
                    "all {} VMM users are taken",
                    crate::config::MAX_JAILED_VMMS
                ))
            })?;
        uids.insert(uid, id.to_owned());
        Ok(Some(uid))
    }

    /// The instance's cgroup, readied for a VMM: its `cgroup.procs`.
    fn cgroup_for(&self, id: &str, spec: &InstanceSpec) -> Result<Option<std::fs::File>, OpError> {
        let Some(c) = &self.cgroups else {
            return Ok(None);
        };
        let limit = (u64::from(spec.memory_mib) + self.config.vmm_overhead_mib) << 20;
        c.prepare(id, spec.vcpus, limit)
            .map(Some)
            .map_err(|e| OpError::Internal(e.to_string()))
    }

    fn remove_cgroup(&self, id: &str) {
        if let Some(c) = &self.cgroups {
            c.remove(id);
        }
    }

    /// Drops a removed instance (its record is gone) from the registry.
    fn forget(&self, id: &str) {
        self.remove_cgroup(id);
        lock(&self.vmm_uids).retain(|_, owner| owner != id);
        lock(&self.instances).remove(id);
        self.announce(Event {
            instance: id.to_owned(),
            state: "deleted".into(),
            reason: None,
            at: now_secs(),
        });
    }

    /// Checks a spec the way the VMM will, without starting anything.
    fn check_spec(&self, spec: &InstanceSpec) -> Result<(), OpError> {
        spec.check().map_err(OpError::BadRequest)?;
        let host_mib = vmm::config::host_memory_mib()
            .map_err(|e| OpError::Internal(format!("reading host memory: {e}")))?;
        let usable = host_mib.saturating_sub(self.config.reserved_memory_mib);
        if u64::from(spec.memory_mib) > usable {
            return Err(OpError::BadRequest(format!(
                "memory_mib: {} MiB is more than this host offers ({usable} MiB)",
                spec.memory_mib
            )));
        }
        if spec.root_image.is_some() || spec.kernel.is_none() {
            // The kernel is picked from the root disk at each start, or not
            // fetched yet: the VMM's configuration is checked then.
            if spec.vcpus == 0 {
                return Err(OpError::BadRequest("vcpus: at least 1".into()));
            }
            return Ok(());
        }
        let mut file = vmm_config::vmm_config_file(spec, None, None);
        file.nets = Some(
            spec.nics
                .iter()
                .map(|n| vmm_config::net_config(n, vec![], None))
                .collect(),
        );
        VmConfig::validate(file, host_mib).map_err(|e| OpError::BadRequest(e.to_string()))?;
        Ok(())
    }

    /// Replaces image ids in a spec by the cached files they name (fetched
    /// first when not cached), and checks the spec then complete.
    async fn resolve_images(&self, spec: &mut InstanceSpec) -> Result<(), OpError> {
        let fetch =
            |id: String| async move { self.images.fetch(&id).await.map_err(OpError::Internal) };
        if let Some(id) = spec.kernel_image.take() {
            spec.kernel = Some(fetch(id).await?);
        }
        if let Some(id) = &spec.root_image {
            // Cached now (the actor copies it into the root disk).
            fetch(id.clone()).await?;
        }
        if let Some(id) = spec.initramfs_image.take() {
            spec.initramfs = Some(fetch(id).await?);
        }
        for id in std::mem::take(&mut spec.disk_images) {
            let path = fetch(id).await?;
            spec.disks.push(vmm::config::DiskConfig {
                id: None,
                pci_slot: None,
                fds: Vec::new(),
                backing_fds: Vec::new(),
                path,
                base: None,
                layers: Vec::new(),
                // Shared by every instance of the image.
                read_only: true,
                serial: None,
                direct: false,
                queues: None,
                rate_limit: Default::default(),
            });
        }
        self.check_spec(spec)
    }

    /// Creates an instance. Its preparation (images fetched into the cache,
    /// disks made) and its start happen in its actor; with `wait` the answer
    /// comes when they are done (and a create that fails leaves nothing
    /// behind), without it as soon as the instance is recorded: it is then
    /// BUILDING until it runs, or ERROR saying why.
    pub async fn create(
        &self,
        spec: InstanceSpec,
        start: bool,
        wait: bool,
    ) -> Result<Instance, OpError> {
        let exists = |id: &str| OpError::Conflict(format!("instance {id:?} already exists"));
        if lock(&self.instances).contains_key(&spec.id) {
            return Err(exists(&spec.id));
        }
        let spec = connect_remote_root(spec).await?;
        if let Err(e) = self.check_spec(&spec) {
            disconnect_remote_root(&spec).await;
            return Err(e);
        }
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| OpError::Internal("hostd is shutting down".into()))?;
        let now = now_secs();
        let id = spec.id.clone();
        let record = Instance {
            spec,
            state: State::Building,
            reason: None,
            process: None,
            created_at: now,
            updated_at: now,
            starts: 0,
            vmm_uid: None,
            preparing: Some(if start {
                Preparing::ThenStart
            } else {
                Preparing::ThenStay
            }),
            image_fault: false,
            resized_from: None,
            fresh_root: false,
        };
        let (reply, answer) = oneshot::channel();
        // Made meanwhile by a concurrent request: its devices are its own.
        let refused = {
            let mut instances = lock(&self.instances);
            if instances.contains_key(&id) {
                Some(record.spec)
            } else {
                let handle = actor::spawn(me, record, First::Create { wait, reply });
                instances.insert(id.clone(), handle);
                None
            }
        };
        if let Some(spec) = refused {
            disconnect_remote_root(&spec).await;
            return Err(exists(&id));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(OpError::Internal(format!("instance {id:?}: actor ended"))))
    }

    /// Queues a request for the instance's actor and waits for its answer.
    async fn request(&self, id: &str, request: Request) -> Result<Instance, OpError> {
        // The handle's senders are cloned out so that no lock is held while
        // waiting.
        let handle = self.handle(id, Handle::clone)?;
        handle.request(request).await
    }

    pub async fn start_instance(&self, id: &str) -> Result<Instance, OpError> {
        self.request(id, Request::Start).await
    }

    /// Stops the instance's VMM: gracefully (the guest is asked to shut down,
    /// and stopped hard after the timeout) or at once. A hard stop never waits
    /// behind a request in progress.
    pub async fn stop(
        &self,
        id: &str,
        hard: bool,
        timeout: Option<Duration>,
    ) -> Result<Instance, OpError> {
        if hard {
            let handle = self.handle(id, Handle::clone)?;
            return handle.terminate(Termination::HardStop).await;
        }
        self.request(id, Request::Stop(timeout)).await
    }

    pub async fn reboot(&self, id: &str, hard: bool) -> Result<Instance, OpError> {
        self.request(id, Request::Reboot { hard }).await
    }

    /// Adds a NIC: plugged into the running guest, and in later starts.
    pub async fn add_nic(
        &self,
        id: &str,
        nic: crate::instance::NicSpec,
    ) -> Result<Instance, OpError> {
        self.request(id, Request::AddNic(nic)).await
    }

    /// Removes the NIC on `tap`, once the running guest has let go of it.
    pub async fn remove_nic(&self, id: &str, tap: &str) -> Result<Instance, OpError> {
        self.request(id, Request::RemoveNic(tap.to_owned())).await
    }

    /// Adds a disk (a volume), plugged into the running guest too.
    pub async fn add_disk(
        &self,
        id: &str,
        disk: vmm::config::DiskConfig,
        nbd: Option<crate::instance::NbdSource>,
    ) -> Result<Instance, OpError> {
        self.request(id, Request::AddDisk(disk, nbd)).await
    }

    /// Removes the disk `dev`, once the running guest has let go of it.
    pub async fn remove_disk(&self, id: &str, dev: &str) -> Result<Instance, OpError> {
        self.request(id, Request::RemoveDisk(dev.to_owned())).await
    }

    /// Grows disk `dev` (an attached volume or the root volume) to `bytes`,
    /// in the running guest or in its file.
    pub async fn grow_disk(&self, id: &str, dev: &str, bytes: u64) -> Result<Instance, OpError> {
        self.request(
            id,
            Request::GrowDisk {
                dev: dev.to_owned(),
                bytes,
            },
        )
        .await
    }

    /// Moves disk `files.id` onto new files (see `Actor::move_disk`).
    pub async fn move_disk(
        &self,
        id: &str,
        files: vmm::config::DiskConfig,
    ) -> Result<Instance, OpError> {
        self.request(id, Request::MoveDisk(files)).await
    }

    /// Pauses or resumes the guest's vCPUs.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<Instance, OpError> {
        self.request(id, Request::SetPaused(paused)).await
    }

    /// Deletes the instance; never waits behind a request in progress.
    pub async fn delete(&self, id: &str) -> Result<(), OpError> {
        let handle = self.handle(id, Handle::clone)?;
        handle.terminate(Termination::Delete).await.map(|_| ())
    }

    /// The last `n` lines of the instance's console.
    pub fn console_tail(&self, id: &str, n: usize) -> Result<Vec<String>, OpError> {
        self.handle(id, |_| ())?;
        Ok(tail_lines(&self.run_dir(id).join(CONSOLE_LOG), n))
    }

    /// Snapshots the instance's root disk into image `image_id` at the
    /// controller: the copy is taken now (the guest paused meanwhile), and
    /// uploaded in the background; the controller sees the image become
    /// active, or its upload fail.
    pub async fn snapshot(&self, id: &str, image_id: &str) -> Result<(), OpError> {
        if !crate::images::valid_image_id(image_id) {
            return Err(OpError::BadRequest(format!(
                "image_id {image_id:?}: 1-64 of 0-9, a-f and '-'"
            )));
        }
        let Some(controller) = self.config.controller.clone() else {
            return Err(OpError::Conflict(
                "no controller_url: nowhere to upload a snapshot to".into(),
            ));
        };
        let dir = self.config.state_dir.join("snapshots");
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpError::Internal(format!("{}: {e}", dir.display())))?;
        let dest = dir.join(image_id);
        self.request(id, Request::CopyRootDisk { dest: dest.clone() })
            .await?;
        let image_id = image_id.to_owned();
        tokio::spawn(async move {
            match crate::snapshots::upload(&controller, &image_id, &dest).await {
                Ok(data_bytes) => tracing::info!(image = image_id, data_bytes, "snapshot uploaded"),
                Err(e) => tracing::error!(image = image_id, "uploading the snapshot: {e}"),
            }
            let _ = std::fs::remove_file(&dest);
        });
        Ok(())
    }

    /// Resizes a stopped instance (vCPUs, memory, a bigger root disk); the
    /// old size and root disk are kept until the resize is confirmed or
    /// reverted.
    pub async fn resize(&self, id: &str, to: Size) -> Result<Instance, OpError> {
        let host_mib = vmm::config::host_memory_mib()
            .map_err(|e| OpError::Internal(format!("reading host memory: {e}")))?;
        let usable = host_mib.saturating_sub(self.config.reserved_memory_mib);
        if to.vcpus == 0 || u64::from(to.memory_mib) > usable || to.memory_mib < 16 {
            return Err(OpError::BadRequest(format!(
                "size: 1-255 vCPUs and 16-{usable} MiB"
            )));
        }
        if to
            .root_disk_gib
            .is_some_and(|g| g > crate::root_disk::MAX_GIB)
        {
            return Err(OpError::BadRequest(format!(
                "root_disk_gib: at most {}",
                crate::root_disk::MAX_GIB
            )));
        }
        self.request(id, Request::Resize(Some(to))).await
    }

    /// Ends a resize: `keep` confirms it (the old root disk goes), otherwise
    /// it is reverted (the old size and root disk come back; the instance
    /// must be stopped).
    pub async fn end_resize(&self, id: &str, keep: bool) -> Result<Instance, OpError> {
        let request = if keep {
            Request::ConfirmResize
        } else {
            Request::Resize(None)
        };
        self.request(id, request).await
    }

    /// Types `bytes` on the instance's serial console.
    pub fn console_input(&self, id: &str, bytes: &[u8]) -> Result<(), OpError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let record = self.show(id)?;
        if bytes.len() > MAX_CONSOLE_INPUT {
            return Err(OpError::BadRequest(format!(
                "console input: at most {MAX_CONSOLE_INPUT} bytes at a time"
            )));
        }
        let not_running = || OpError::Conflict(format!("instance {id:?} has no running VMM"));
        if !record.state.has_process() || record.process.is_none() {
            return Err(not_running());
        }
        // Non-blocking: with no VMM reading, the open fails (ENXIO) rather
        // than waiting; with the pipe full, the write does.
        let path = self.run_dir(id).join(CONSOLE_INPUT);
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) | Some(libc::ENOENT) => not_running(),
                _ => OpError::Internal(format!("{}: {e}", path.display())),
            })?;
        match fifo.write(bytes) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(_) => Err(OpError::Conflict("console input is full; try again".into())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(OpError::Conflict("console input is full; try again".into()))
            }
            Err(e) => Err(OpError::Internal(format!("{}: {e}", path.display()))),
        }
    }

    pub fn console_path(&self, id: &str) -> Result<PathBuf, OpError> {
        self.handle(id, |_| ())?;
        Ok(self.run_dir(id).join(CONSOLE_LOG))
    }

    /// The VMM's own metrics (exits, memory), as JSON.
    pub async fn vmm_metrics(&self, id: &str) -> Result<serde_json::Value, OpError> {
        if !self.show(id)?.state.has_process() {
            return Err(OpError::Conflict(format!(
                "instance {id:?} has no running VMM"
            )));
        }
        let socket = self.run_dir(id).join(API_SOCKET);
        match vmm::api_client::request_within(
            Duration::from_secs(5),
            &socket,
            Method::GET,
            "/metrics",
            None,
        )
        .await
        {
            Ok((200, body)) => {
                serde_json::from_slice(&body).map_err(|e| OpError::Internal(e.to_string()))
            }
            Ok((code, _)) => Err(OpError::Internal(format!("VMM answered {code}"))),
            Err(e) => Err(OpError::Internal(e.to_string())),
        }
    }
}
/// A root volume on another host (`root_volume_nbd`): its export connected
/// through the kernel's NBD client, the device its path, recorded among
/// the remote disks (connected again at each start, disconnected with the
/// instance).
async fn connect_remote_root(mut spec: InstanceSpec) -> Result<InstanceSpec, OpError> {
    let (Some(nbd), Some(root)) = (spec.root_volume_nbd.clone(), spec.root_volume.as_mut()) else {
        return Ok(spec);
    };
    let Some(dev) = root.id.clone() else {
        return Err(OpError::BadRequest(
            "root_volume: an id (the device's name)".into(),
        ));
    };
    if !root.path.as_os_str().is_empty()
        || root.base.is_some()
        || !root.layers.is_empty()
        || !spec.remote_disks.is_empty()
    {
        return Err(OpError::BadRequest(
            "root_volume_nbd: the root volume is that export; no path, base or layers here".into(),
        ));
    }
    let (index, _) = actor::connect_nbd(&nbd, &spec.id, &dev).await?;
    root.path = crate::nbd::device(index);
    spec.remote_disks.push(crate::instance::RemoteDisk {
        id: dev,
        nbd,
        index,
    });
    Ok(spec)
}

/// Undoes [`connect_remote_root`] for a spec no instance took.
async fn disconnect_remote_root(spec: &InstanceSpec) {
    if spec.root_volume_nbd.is_some() {
        for r in &spec.remote_disks {
            actor::disconnect_nbd(r.index).await;
        }
    }
}
