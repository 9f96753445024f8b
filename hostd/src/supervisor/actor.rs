//! One instance's actor: the task that owns the instance's record and its VMM.
//!
//! Everything that changes an instance runs in its actor, one request at a
//! time, so no lock guards an instance's state. Requests come through a
//! bounded queue (a full queue is refused, not waited on). Deletes and hard
//! stops come through a second path that always wins: the caller kills the
//! VMM at once through the actor's [`Shared`] half, so the request in
//! progress (a start waiting on a VMM that never answers, a graceful stop)
//! ends at once, and the actor takes the termination before any queued
//! request, which it then refuses.
//!
//! Every change of the record is persisted (off the runtime's threads) before
//! it is published to readers and announced as an event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::Method;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use vmm::virtio::net::tap::Tap;

use super::exit::{classify, guest_rebooted, last_exit_line, tail_lines};
use super::vmm_config::{net_config, prepare_jail, vmm_config_file, DiskBoot};
use super::{
    Event, OpError, Supervisor, API_SOCKET, CONFIG_DRIVE, CONSOLE_INPUT, CONSOLE_LOG,
    EPHEMERAL_DISK, PICKED_BOOT, SWAP_DISK, VMM_CONFIG, VMM_LOG,
};
use crate::boot_picker;
use crate::instance::{now_secs, Instance, InstanceSpec, NicSpec, Preparing, Process, Size, State};
use crate::process::{self, Exit, Launch, PidFd};
use crate::root_disk::RootDisk;
use crate::{config_drive, ephemeral_disks, root_disk};

/// How a VMM ended, as far as what comes next is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// A disk-booted guest rebooted: the VMM exited to have hostd pick the
    /// kernel again and start a new one.
    GuestRebooted,
    Other,
}

/// Requests that may wait for an instance's actor; more are refused.
pub(super) const QUEUE_DEPTH: usize = 8;
/// How long a new VMM may take to answer on its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace beyond the guest's shutdown timeout before hostd kills the VMM.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a VMM may take to die after SIGKILL.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of console kept with an ERROR reason.
const REASON_TAIL_LINES: usize = 5;
/// How long a guest may take to let go of an unplugged NIC.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);

/// A request an actor serves in turn.
#[derive(Debug)]
pub(super) enum Request {
    Start,
    /// A graceful stop: the guest is asked, and stopped hard after the timeout.
    Stop(Option<Duration>),
    Reboot {
        hard: bool,
    },
    SetPaused(bool),
    /// A resize of a stopped instance to a size, or (None) its revert.
    Resize(Option<Size>),
    ConfirmResize,
    /// A copy of the root disk at `dest`, taken with the guest paused.
    CopyRootDisk {
        dest: std::path::PathBuf,
    },
    /// A NIC more: plugged into the running guest, and in every later start.
    AddNic(NicSpec),
    /// The NIC on this tap goes: unplugged from the running guest (once it
    /// lets go), and from every later start.
    RemoveNic(String),
    /// A disk more (a volume), by its device id: plugged into the running
    /// guest, and in every later start.
    AddDisk(vmm::config::DiskConfig, Option<crate::instance::NbdSource>),
    /// The disk of this device id goes, as a NIC does.
    RemoveDisk(String),
    /// The disk of this device id (attached, or the root volume) grows to
    /// this many bytes: in the running guest, or in its file.
    GrowDisk {
        dev: String,
        bytes: u64,
    },
    /// The disk of this device id (attached, or the root volume) moves onto
    /// these files (`path`, `base`, `layers`): its volume was snapshotted
    /// in use.
    MoveDisk(vmm::config::DiskConfig),
}

/// A request that ends the VMM now, ahead of every queued request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Termination {
    HardStop,
    Delete,
}

type Reply<T> = oneshot::Sender<Result<T, OpError>>;

struct Queued {
    request: Request,
    reply: Reply<Instance>,
}

struct Terminate {
    kind: Termination,
    reply: Reply<Instance>,
}

/// How an actor begins.
pub(super) enum First {
    /// A record loaded at hostd's start: take back its VMM if it still runs.
    Adopt(oneshot::Sender<()>),
    /// A new instance: persist it, then prepare it (and start it if its
    /// record says so). The reply comes once it is persisted, or with
    /// `wait` once it is prepared and started.
    Create { wait: bool, reply: Reply<Instance> },
}

/// What callers outside the actor may touch: the kill switch and the memory
/// admission flag.
#[derive(Default)]
pub(super) struct Shared {
    kill: Mutex<KillSwitch>,
    /// Memory admitted for a start in progress, counted with the running VMMs'
    /// until the start ends (see `Supervisor::admit`).
    pub(super) admitted: AtomicBool,
}

#[derive(Default)]
struct KillSwitch {
    /// Terminations asked for and not yet done: while any is, no VMM may run.
    pending: u32,
    vmm: Option<Arc<PidFd>>,
    /// Set when hostd itself ends the VMM: its exit is then a SHUTOFF.
    stop_requested: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// A termination begins: the VMM, if any, is killed now.
    fn begin_termination(&self) {
        let mut k = lock(&self.kill);
        k.pending += 1;
        if let Some(vmm) = k.vmm.clone() {
            k.stop_requested = true;
            if let Err(e) = vmm.signal(libc::SIGKILL) {
                tracing::debug!("killing the VMM: {e}");
            }
        }
    }

    fn end_termination(&self) {
        let mut k = lock(&self.kill);
        k.pending = k.pending.saturating_sub(1);
    }

    fn terminating(&self) -> bool {
        lock(&self.kill).pending > 0
    }

    /// Records a new VMM; kills it at once if a termination is under way.
    fn set_vmm(&self, vmm: Arc<PidFd>) {
        let mut k = lock(&self.kill);
        k.stop_requested = false;
        if k.pending > 0 {
            k.stop_requested = true;
            let _ = vmm.signal(libc::SIGKILL);
        }
        k.vmm = Some(vmm);
    }

    fn request_stop(&self) {
        lock(&self.kill).stop_requested = true;
    }

    /// The VMM is gone; whether hostd had asked for that.
    fn vmm_exited(&self) -> bool {
        let mut k = lock(&self.kill);
        k.vmm = None;
        std::mem::take(&mut k.stop_requested)
    }
}

/// A start's memory admission; ends when dropped.
pub(super) struct Admitted(pub(super) Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.store(false, Ordering::SeqCst);
    }
}

/// The supervisor's side of an actor (cheap to clone).
#[derive(Clone)]
pub(super) struct Handle {
    requests: mpsc::Sender<Queued>,
    /// Unbounded so that a termination never waits: each is one caller's
    /// request, and the actor takes them before anything else.
    terminations: mpsc::UnboundedSender<Terminate>,
    pub(super) shared: Arc<Shared>,
    /// The record as last persisted.
    pub(super) record: watch::Receiver<Instance>,
}

impl Handle {
    /// Queues a request and waits for its answer.
    pub(super) async fn request(&self, request: Request) -> Result<Instance, OpError> {
        let id = self.record.borrow().spec.id.clone();
        let (reply, answer) = oneshot::channel();
        match self.requests.try_send(Queued { request, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(OpError::Conflict(format!(
                    "instance {id:?} has {QUEUE_DEPTH} requests waiting; try again later"
                )))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(OpError::NotFound(id)),
        }
        // No answer: the instance was deleted first.
        answer.await.unwrap_or(Err(OpError::NotFound(id)))
    }

    /// Ends the VMM now (killing it before waiting for the actor) and then
    /// stops or deletes the instance.
    pub(super) async fn terminate(&self, kind: Termination) -> Result<Instance, OpError> {
        let id = self.record.borrow().spec.id.clone();
        let last = self.record.borrow().clone();
        self.shared.begin_termination();
        let (reply, answer) = oneshot::channel();
        if self.terminations.send(Terminate { kind, reply }).is_err() {
            self.shared.end_termination();
            return match kind {
                Termination::Delete => Ok(last),
                Termination::HardStop => Err(OpError::NotFound(id)),
            };
        }
        match answer.await {
            Ok(result) => result,
            // The actor ended without taking it: the instance is gone (a
            // start that failed removed it), which is what a delete asks.
            Err(_) if kind == Termination::Delete => Ok(last),
            Err(_) => Err(OpError::NotFound(id)),
        }
    }
}

/// The VMM an actor runs.
#[derive(Clone)]
struct Running {
    process: Process,
    pidfd: Arc<PidFd>,
}

pub(super) struct Actor {
    id: String,
    sup: Arc<Supervisor>,
    shared: Arc<Shared>,
    record: Instance,
    published: watch::Sender<Instance>,
    vmm: Option<Running>,
    requests: mpsc::Receiver<Queued>,
    terminations: mpsc::UnboundedReceiver<Terminate>,
    /// The preparation under way: the spec with its images fetched.
    preparation: Option<JoinHandle<Result<InstanceSpec, OpError>>>,
    /// A create waiting for the preparation and the start.
    create_reply: Option<Reply<Instance>>,
}

/// Starts an actor for `record`; returns its handle.
pub(super) fn spawn(sup: Arc<Supervisor>, record: Instance, first: First) -> Handle {
    let (requests_tx, requests) = mpsc::channel(QUEUE_DEPTH);
    let (terminations_tx, terminations) = mpsc::unbounded_channel();
    let (published, snapshot) = watch::channel(record.clone());
    let shared = Arc::new(Shared::default());
    let actor = Actor {
        id: record.spec.id.clone(),
        sup,
        shared: shared.clone(),
        record,
        published,
        vmm: None,
        requests,
        terminations,
        preparation: None,
        create_reply: None,
    };
    tokio::spawn(actor.run(first));
    Handle {
        requests: requests_tx,
        terminations: terminations_tx,
        shared,
        record: snapshot,
    }
}

/// Makes the FIFO console input goes through, unless there is one already
/// (anything else of that name is replaced).
fn make_fifo(path: &std::path::Path) -> Result<(), OpError> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .map_err(|e| OpError::Internal(format!("{}: {e}", path.display())))
}

/// Resolves when the preparation ends; never without one.
async fn preparation_of(
    p: &mut Option<JoinHandle<Result<InstanceSpec, OpError>>>,
) -> Result<InstanceSpec, OpError> {
    match p {
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(OpError::Internal(format!("preparing: {e}")))),
        None => std::future::pending().await,
    }
}

/// Resolves when the VMM exits; never without one.
async fn exit_of(vmm: Option<Arc<PidFd>>) -> Exit {
    match vmm {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, first: First) {
        match first {
            First::Adopt(done) => {
                self.adopt().await;
                let _ = done.send(());
            }
            First::Create { wait, reply } => {
                self.commit().await;
                if wait {
                    self.create_reply = Some(reply);
                } else {
                    let _ = reply.send(Ok(self.record.clone()));
                }
            }
        }
        if self.record.preparing.is_some() {
            if self.vmm.is_some() {
                // Its VMM had started when hostd stopped: prepared.
                self.record.preparing = None;
                self.commit().await;
            } else {
                self.begin_preparation().await;
            }
        }
        loop {
            let vmm = self.vmm.as_ref().map(|r| r.pidfd.clone());
            tokio::select! {
                biased;
                Some(t) = self.terminations.recv() => {
                    let result = self.terminate(t.kind).await;
                    self.shared.end_termination();
                    let deleted = t.kind == Termination::Delete && result.is_ok();
                    let _ = t.reply.send(result);
                    if deleted {
                        return;
                    }
                }
                done = preparation_of(&mut self.preparation) => {
                    self.preparation = None;
                    if !self.prepared(done).await {
                        return;
                    }
                }
                exit = exit_of(vmm) => {
                    if self.on_exit(exit).await == Ended::GuestRebooted {
                        // Picked again: the guest may have changed its /boot.
                        if let Err(e) = self.launch().await {
                            tracing::warn!(instance = self.id, "starting again after the guest's reboot: {e}");
                        }
                    }
                }
                queued = self.requests.recv() => {
                    let Some(q) = queued else { return };
                    let result = self.serve(q.request).await;
                    let _ = q.reply.send(result);
                }
            }
        }
    }

    async fn serve(&mut self, request: Request) -> Result<Instance, OpError> {
        if self.shared.terminating() {
            return Err(OpError::Conflict(format!(
                "instance {:?} is being stopped or deleted",
                self.id
            )));
        }
        if self.preparation.is_some() {
            return Err(OpError::Conflict(format!(
                "instance {:?} is being prepared (its images fetched, its disks made)",
                self.id
            )));
        }
        match request {
            Request::Start => {
                if self.record.state.has_process() {
                    return Err(self.conflict());
                }
                self.launch().await?;
            }
            Request::Stop(timeout) => self.stop(false, timeout).await?,
            Request::Reboot { hard } => {
                self.stop(hard, None).await?;
                self.launch().await?;
            }
            Request::SetPaused(paused) => self.set_paused(paused).await?,
            Request::CopyRootDisk { dest } => self.copy_root_disk(dest).await?,
            Request::Resize(Some(to)) => self.resize(to).await?,
            Request::Resize(None) => self.revert_resize().await?,
            Request::ConfirmResize => self.confirm_resize().await?,
            Request::AddNic(nic) => self.add_nic(nic).await?,
            Request::RemoveNic(tap) => self.remove_nic(&tap).await?,
            Request::AddDisk(disk, None) => self.add_disk(disk).await?,
            Request::AddDisk(disk, Some(nbd)) => self.add_remote_disk(disk, nbd).await?,
            Request::RemoveDisk(id) => self.remove_disk(&id).await?,
            Request::GrowDisk { dev, bytes } => self.grow_disk(&dev, bytes).await?,
            Request::MoveDisk(files) => self.move_disk(files).await?,
        }
        Ok(self.record.clone())
    }

    /// Starts preparing the instance: its images are fetched off the actor,
    /// which goes on taking terminations meanwhile.
    async fn begin_preparation(&mut self) {
        if self.record.state != State::Building {
            self.record.state = State::Building;
            self.record.reason = None;
            self.commit().await;
        }
        let sup = self.sup.clone();
        let mut spec = self.record.spec.clone();
        self.preparation = Some(tokio::spawn(async move {
            sup.resolve_images(&mut spec).await.map(|()| spec)
        }));
    }

    /// Finishes the preparation: disks made, and the VMM started if asked.
    /// Returns false when the actor ends (a waited-for create failed and
    /// left nothing behind).
    async fn prepared(&mut self, fetched: Result<InstanceSpec, OpError>) -> bool {
        let start = self.record.preparing == Some(Preparing::ThenStart);
        let result = match fetched {
            Ok(spec) => {
                self.record.spec = spec;
                match self.make_disks().await {
                    Ok(()) if start => self.launch().await,
                    other => other,
                }
            }
            Err(e) => Err(e),
        };
        self.record.preparing = None;
        match result {
            Ok(()) => {
                if !start {
                    self.record.state = State::Shutoff;
                }
                self.commit().await;
                if let Some(reply) = self.create_reply.take() {
                    let _ = reply.send(Ok(self.record.clone()));
                }
                true
            }
            Err(e) => {
                if let Some(reply) = self.create_reply.take() {
                    // A create that cannot start leaves nothing behind.
                    self.forget().await;
                    let _ = reply.send(Err(e));
                    return false;
                }
                tracing::warn!(instance = self.id, "preparing: {e}");
                // The boot picker's refusal is on record already.
                if self.record.state != State::Error {
                    self.fail(&e).await;
                }
                true
            }
        }
    }

    async fn terminate(&mut self, kind: Termination) -> Result<Instance, OpError> {
        if let Some(task) = self.preparation.as_ref() {
            if kind == Termination::HardStop {
                return Err(OpError::Conflict(format!(
                    "instance {:?} is being prepared: delete it, or stop it once it runs",
                    self.id
                )));
            }
            // The download ends here (its temporary file with it).
            task.abort();
            self.preparation = None;
            if let Some(reply) = self.create_reply.take() {
                let _ = reply.send(Err(OpError::Conflict(format!(
                    "instance {:?} was deleted while being created",
                    self.id
                ))));
            }
        }
        if self.vmm.is_some() {
            match self.stop(true, None).await {
                Ok(()) => {}
                // Killed before its turn: stopped, as asked.
                Err(OpError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if kind == Termination::Delete {
            for r in std::mem::take(&mut self.record.spec.remote_disks) {
                disconnect_nbd(r.index).await;
            }
            self.forget().await;
            tracing::info!(instance = self.id, "deleted");
        }
        Ok(self.record.clone())
    }

    fn conflict(&self) -> OpError {
        OpError::Conflict(format!(
            "instance {:?} is {}",
            self.id,
            self.record.state.as_str()
        ))
    }

    /// Persists the record (off the runtime's threads), then publishes and
    /// announces it.
    async fn commit(&mut self) {
        self.record.updated_at = now_secs();
        self.save().await;
        self.published.send_replace(self.record.clone());
        let r = &self.record;
        tracing::info!(instance = self.id, state = r.state.as_str(), reason = ?r.reason, "instance state");
        self.sup.announce(Event {
            instance: self.id.clone(),
            state: r.state.as_str().to_owned(),
            reason: r.reason.clone(),
            at: r.updated_at,
        });
    }

    /// Persists the record, off the runtime's threads.
    async fn save(&self) {
        let store = self.sup.store.clone();
        let record = self.record.clone();
        match tokio::task::spawn_blocking(move || store.save(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(instance = self.id, "saving the record: {e}"),
            Err(e) => tracing::error!(instance = self.id, "saving the record: {e}"),
        }
    }

    /// Removes the instance: record, run directory, cgroup, user; then its
    /// entry, so that its id may be used again.
    async fn forget(&mut self) {
        let store = self.sup.store.clone();
        let id = self.id.clone();
        match tokio::task::spawn_blocking(move || store.remove(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(instance = self.id, "removing the record: {e}"),
            Err(e) => tracing::error!(instance = self.id, "removing the record: {e}"),
        }
        self.sup.forget(&self.id);
    }

    /// Makes the root disk of an instance booted from a disk image (once: it
    /// is the instance's from then on) and its config drive.
    async fn make_disks(&mut self) -> Result<(), OpError> {
        let spec = &self.record.spec;
        let base = match &spec.root_image {
            Some(image) => Some(
                self.sup
                    .images
                    .fetch(image)
                    .await
                    .map_err(OpError::Internal)?,
            ),
            None => None,
        };
        let dir = self.sup.run_dir(&self.id);
        let (gib, drive) = (spec.root_disk_gib, spec.config_drive.clone());
        let (ephemeral_gib, swap_mib) = (spec.ephemeral_gib, spec.swap_mib);
        let id = self.id.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut root_made = false;
            if let Some(base) = base.filter(|_| RootDisk::find(&dir).is_none()) {
                let started = std::time::Instant::now();
                let (_, how) = root_disk::make(&base, &dir, gib)
                    .map_err(|e| format!("making the root disk: {e}"))?;
                tracing::info!(instance = id, ?how, took = ?started.elapsed(), "root disk made");
                root_made = true;
            }
            if let Some(gib) = ephemeral_gib {
                ephemeral_disks::make_ephemeral(&dir.join(EPHEMERAL_DISK), gib)?;
            }
            if let Some(mib) = swap_mib {
                ephemeral_disks::make_swap(&dir.join(SWAP_DISK), mib)?;
            }
            if let Some(drive) = drive {
                let started = std::time::Instant::now();
                config_drive::write(&drive, &dir.join(CONFIG_DRIVE))
                    .map_err(|e| format!("making the config drive: {e}"))?;
                tracing::info!(instance = id, took = ?started.elapsed(), "config drive made");
            }
            Ok(root_made)
        })
        .await
        .map_err(|e| OpError::Internal(e.to_string()))?;
        if made.map_err(OpError::Internal)? {
            // Saved with the record's next commit; lost, the disk is
            // merely picked (the safe way round).
            self.record.fresh_root = true;
        }
        Ok(())
    }

    /// The root disk of an instance booted from a disk image, and the
    /// cached image under it (fetched again if it went missing: an
    /// overlay reads through to it).
    async fn root_disk(&self) -> Result<Option<(RootDisk, std::path::PathBuf)>, OpError> {
        let Some(image) = &self.record.spec.root_image else {
            return Ok(None);
        };
        let dir = self.sup.run_dir(&self.id);
        let root = RootDisk::find(&dir).ok_or_else(|| {
            OpError::Internal(format!("instance {:?} has lost its root disk", self.id))
        })?;
        let base = self
            .sup
            .images
            .fetch(image)
            .await
            .map_err(OpError::Internal)?;
        Ok(Some((root, base)))
    }

    /// What an instance booted from a disk (a disk image's root disk, or a
    /// volume) boots this time, picked from that disk. A disk that cannot
    /// boot puts the instance in ERROR saying why.
    async fn pick(&mut self, dir: &std::path::Path) -> Result<Option<DiskBoot>, OpError> {
        let root = match (&self.record.spec.root_volume, self.root_disk().await?) {
            (Some(volume), _) => volume.clone(),
            (None, Some((root, base))) => {
                let mut disk = super::vmm_config::disk(root.path().to_owned(), false);
                disk.base = root.is_overlay().then_some(base);
                disk
            }
            (None, None) => return Ok(None),
        };
        // A root disk no guest ran on holds what its image holds.
        let fresh_image = match (&self.record.spec.root_image, &self.record.spec.root_volume) {
            (Some(image), None) if self.record.fresh_root => Some(image.clone()),
            _ => None,
        };
        if let Some(picked) = fresh_image.as_deref().and_then(|i| self.sup.picks.get(i)) {
            tracing::info!(
                instance = self.id,
                how = picked.how,
                cmdline = picked.cmdline,
                "boot picked"
            );
            return Ok(Some(DiskBoot { picked, root }));
        }
        let binary = &self.sup.config.bootpick_binary;
        let backing: Vec<&std::path::Path> = root
            .layers
            .iter()
            .map(|p| p.as_path())
            .chain(root.base.as_deref())
            .collect();
        let started = std::time::Instant::now();
        match boot_picker::pick(binary, &root.path, &backing, &dir.join(PICKED_BOOT)).await {
            Ok(picked) => {
                tracing::info!(
                    instance = self.id,
                    took = ?started.elapsed(),
                    cpu_ms = picked.cpu_ms,
                    blocks_read = picked.blocks_read,
                    how = picked.how,
                    cmdline = picked.cmdline,
                    "boot picked"
                );
                if let Some(image) = fresh_image {
                    // Kept off the boot's path: syncing the kernel and
                    // initramfs takes a while, and nothing rewrites them.
                    let (picks, kept) = (self.sup.picks.clone(), picked.clone());
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = picks.put(&image, &kept) {
                            tracing::warn!(image, "keeping the image's pick: {e}");
                        }
                    });
                }
                Ok(Some(DiskBoot { picked, root }))
            }
            Err(e) => {
                let why = e.to_string();
                let e = match e {
                    boot_picker::PickError::Unbootable(_) => OpError::Unbootable(why),
                    boot_picker::PickError::Failed(_) => OpError::Internal(why),
                };
                self.fail(&e).await;
                Err(e)
            }
        }
    }

    /// Puts the instance in ERROR, saying why (and whether its image is to
    /// blame).
    async fn fail(&mut self, e: &OpError) {
        self.record.state = State::Error;
        self.record.image_fault = matches!(e, OpError::Unbootable(_));
        self.record.reason = Some(e.to_string());
        self.commit().await;
    }

    /// Starts a VMM for the instance and waits until its control API answers.
    async fn launch(&mut self) -> Result<(), OpError> {
        self.reconnect_remote_disks().await?;
        let spec = self.record.spec.clone();
        let _admitted = self.sup.admit(&self.shared, spec.memory_mib)?;
        let dir = self.sup.run_dir(&self.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpError::Internal(format!("{}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(dir.join(API_SOCKET));
        make_fifo(&dir.join(CONSOLE_INPUT))?;
        let mut spec = spec;
        if check_chains(&mut spec)? {
            tracing::info!(
                instance = self.id,
                "layers merged on the storage host dropped from its disks"
            );
            self.record.spec = spec.clone();
            self.commit().await;
        }
        let picked = self.pick(&dir).await?;
        if self.record.fresh_root {
            // Saved before the guest can write to its root disk.
            self.record.fresh_root = false;
            self.save().await;
        }

        // Taps are opened here so that the VMM needs no network privileges.
        let mut taps = Vec::new();
        let mut nets = Vec::new();
        for nic in &spec.nics {
            let tap = Tap::open(&nic.tap, nic.queues.unwrap_or(1))
                .map_err(|e| OpError::BadRequest(format!("nics: {e}")))?;
            let fds = (0..tap.queue_count()).map(|q| tap.fd(q)).collect();
            nets.push(net_config(nic, fds, Some(tap.queue_count() as u16)));
            taps.push(tap);
        }
        let mut file = vmm_config_file(&spec, Some(&dir), picked.as_ref());
        file.nets = (!nets.is_empty()).then_some(nets);
        if let Some(uid) = self.sup.vmm_uid(&self.id)? {
            if self.record.vmm_uid != Some(uid) {
                // Saved now: the disks given to this user stay with the
                // instance.
                self.record.vmm_uid = Some(uid);
                self.commit().await;
            }
            file.jail = Some(prepare_jail(&dir, &file, uid)?);
        }
        let config_path = dir.join(VMM_CONFIG);
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| OpError::Internal(e.to_string()))?;
        std::fs::write(&config_path, json)
            .map_err(|e| OpError::Internal(format!("{}: {e}", config_path.display())))?;

        let cgroup_procs = self.sup.cgroup_for(&self.id, &spec)?;
        let log_path = dir.join(VMM_LOG);
        // One log per VMM run (the previous one kept as .1): an exit is judged
        // by the last line of its own run's log, never an earlier run's.
        let _ = std::fs::rename(&log_path, dir.join(format!("{VMM_LOG}.1")));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| OpError::Internal(format!("{}: {e}", log_path.display())))?;
        let inherit = taps
            .iter()
            .flat_map(|t| (0..t.queue_count()).map(|q| t.fd(q)))
            .collect();
        let binary = &self.sup.config.vmm_binary;
        let launched = process::spawn(Launch {
            binary,
            args: vec!["--config".into(), config_path.display().to_string()],
            log,
            cgroup_procs,
            inherit,
        })
        .map_err(|e| OpError::Internal(format!("starting {}: {e}", binary.display())))?;
        // The VMM holds its own copies of the tap queues now.
        drop(taps);
        self.sup.counters.vmm_starts.fetch_add(1, Ordering::Relaxed);
        let pidfd = match PidFd::open(launched.pid) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                // Not watchable, so not ours to keep.
                // SAFETY: kill takes a pid and a signal; the child was just
                // started by us and has not been reaped, so the pid is its.
                unsafe { libc::kill(launched.pid, libc::SIGKILL) };
                return Err(OpError::Internal(format!("pidfd_open: {e}")));
            }
        };
        self.vmm = Some(Running {
            process: launched,
            pidfd: pidfd.clone(),
        });
        // Killed here at once if a delete or hard stop came meanwhile.
        self.shared.set_vmm(pidfd.clone());
        self.record.state = State::Building;
        self.record.reason = None;
        self.record.image_fault = false;
        self.record.process = Some(launched);
        self.record.starts += 1;
        self.commit().await;

        // Ready when the control API answers; an early exit ends the wait.
        let socket = dir.join(API_SOCKET);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let probe = vmm::api_client::request_within(
                Duration::from_secs(2),
                &socket,
                Method::GET,
                "/vm",
                None,
            );
            let answer = tokio::select! {
                exit = pidfd.exited() => return Err(self.exited_while_starting(exit).await),
                answer = probe => answer,
            };
            if let Ok((200, body)) = answer {
                let paused = String::from_utf8_lossy(&body).contains("\"state\":\"paused\"");
                self.record.state = if paused {
                    State::Paused
                } else {
                    State::Running
                };
                self.commit().await;
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let _ = pidfd.signal(libc::SIGKILL);
                if let Ok(exit) = tokio::time::timeout(DEATH_TIMEOUT, pidfd.exited()).await {
                    self.on_exit(exit).await;
                }
                return Err(OpError::Internal(format!(
                    "the VMM did not answer on {} within {READY_TIMEOUT:?}",
                    socket.display()
                )));
            }
            tokio::select! {
                exit = pidfd.exited() => return Err(self.exited_while_starting(exit).await),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    async fn exited_while_starting(&mut self, exit: Exit) -> OpError {
        self.on_exit(exit).await;
        let reason = self.record.reason.clone().unwrap_or_default();
        OpError::Internal(format!("the VMM exited while starting: {reason}"))
    }

    /// Records how the VMM ended.
    async fn on_exit(&mut self, exit: Exit) -> Ended {
        self.vmm = None;
        let requested = self.shared.vmm_exited();
        let dir = self.sup.run_dir(&self.id);
        let last = last_exit_line(&dir.join(VMM_LOG));
        let (state, reason) = classify(requested, &exit, last.as_deref());
        let ended = if !requested
            && matches!(exit, Exit::Code(0) | Exit::Unknown)
            && guest_rebooted(last.as_deref())
        {
            Ended::GuestRebooted
        } else {
            Ended::Other
        };
        let counters = &self.sup.counters;
        let reason = if state == State::Error {
            counters.vmm_exits_failed.fetch_add(1, Ordering::Relaxed);
            let console = tail_lines(&dir.join(CONSOLE_LOG), REASON_TAIL_LINES).join("\n");
            format!("{reason}\nconsole:\n{console}")
        } else {
            counters.vmm_exits_clean.fetch_add(1, Ordering::Relaxed);
            reason
        };
        self.sup.remove_cgroup(&self.id);
        self.record.state = state;
        self.record.reason = Some(reason);
        self.record.process = None;
        self.commit().await;
        ended
    }

    /// Takes back a VMM that was running when hostd last stopped.
    async fn adopt(&mut self) {
        let Some(process) = self
            .record
            .process
            .filter(|_| self.record.state.has_process())
        else {
            if self.record.state.has_process() && self.record.preparing.is_none() {
                // Cut off between its start and its VMM being recorded.
                self.on_exit(Exit::Unknown).await;
            }
            return;
        };
        let run_dir = self.sup.run_dir(&self.id);
        let ours = process::is_alive(&process)
            && std::fs::read(format!("/proc/{}/cmdline", process.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*run_dir.to_string_lossy()));
        let Some(pidfd) = ours.then(|| PidFd::open(process.pid).ok()).flatten() else {
            // Gone, or the pid is another process's now: its status is unknown.
            self.on_exit(Exit::Unknown).await;
            return;
        };
        let pidfd = Arc::new(pidfd);
        self.vmm = Some(Running {
            process,
            pidfd: pidfd.clone(),
        });
        self.shared.set_vmm(pidfd);
        self.sup.counters.adopted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            instance = self.id,
            pid = process.pid,
            "re-adopted a running VMM"
        );
        let now = match vmm::api_client::request_within(
            Duration::from_secs(5),
            &run_dir.join(API_SOCKET),
            Method::GET,
            "/vm",
            None,
        )
        .await
        {
            Ok((200, body)) if String::from_utf8_lossy(&body).contains("\"state\":\"paused\"") => {
                State::Paused
            }
            Ok((200, _)) => State::Running,
            _ => self.record.state,
        };
        self.record.state = now;
        self.commit().await;
    }

    /// Stops the VMM: gracefully (the guest is asked to shut down, and stopped
    /// hard after the timeout) or at once.
    async fn stop(&mut self, hard: bool, timeout: Option<Duration>) -> Result<(), OpError> {
        let Some(running) = self.vmm.clone() else {
            return Err(self.conflict());
        };
        let timeout = timeout.unwrap_or(self.sup.config.stop_timeout);
        self.shared.request_stop();
        self.record.state = State::Stopping;
        self.commit().await;
        let mut graceful = !hard;
        if graceful {
            let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
            // A disk image runs a distribution's init (systemd): its power
            // button powers it off, where Ctrl+Alt+Del would reboot it.
            let signal = if self.record.spec.root_image.is_some()
                || self.record.spec.root_volume.is_some()
            {
                r#", "signal": "power_button""#
            } else {
                ""
            };
            let body = format!(r#"{{"timeout_ms": {}{signal}}}"#, timeout.as_millis());
            let ask = vmm::api_client::request_within(
                Duration::from_secs(10),
                &socket,
                Method::PUT,
                "/vm/actions/shutdown",
                Some(&body),
            );
            graceful = tokio::select! {
                exit = running.pidfd.exited() => {
                    self.on_exit(exit).await;
                    return Ok(());
                }
                answer = ask => matches!(answer, Ok((202, _))),
            };
        }
        let wait = if graceful {
            timeout + KILL_GRACE
        } else {
            Duration::ZERO
        };
        let exit = match tokio::time::timeout(wait, running.pidfd.exited()).await {
            Ok(exit) => exit,
            Err(_) => {
                if let Err(e) = running.pidfd.signal(libc::SIGKILL) {
                    tracing::warn!(instance = self.id, "killing the VMM: {e}");
                }
                match tokio::time::timeout(DEATH_TIMEOUT, running.pidfd.exited()).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        return Err(OpError::Internal(format!(
                            "the VMM (pid {}) did not end within {DEATH_TIMEOUT:?} of SIGKILL",
                            running.process.pid
                        )))
                    }
                }
            }
        };
        self.on_exit(exit).await;
        Ok(())
    }

    /// Copies the root disk to `dest` as a raw disk, the guest paused
    /// meanwhile (if it runs) so that the copy is one moment's disk, as a
    /// power cut would leave it. The copy shares blocks where the filesystem
    /// can; otherwise only the data is copied. An overlay is copied as it is
    /// while paused (the VMM writes its metadata back on pause), and
    /// flattened over its image after the guest resumes.
    async fn copy_root_disk(&mut self, dest: std::path::PathBuf) -> Result<(), OpError> {
        let Some((root, base)) = self.root_disk().await? else {
            return Err(OpError::Conflict(format!(
                "instance {:?} has no root disk of its own (it boots a kernel image)",
                self.id
            )));
        };
        let pause = self.record.state == State::Running;
        if pause {
            self.set_paused(true).await?;
        }
        let started = std::time::Instant::now();
        let moment = match &root {
            RootDisk::Raw(_) => dest.clone(),
            RootDisk::Overlay(_) => dest.with_extension("qcow2"),
        };
        let copy = {
            let (from, to) = (root.path().to_owned(), moment.clone());
            tokio::task::spawn_blocking(move || root_disk::copy(&from, &to, None)).await
        };
        if pause {
            if let Err(e) = self.set_paused(false).await {
                tracing::error!(instance = self.id, "resuming after the snapshot: {e}");
            }
        }
        let paused_for = started.elapsed();
        let copied = match copy {
            Ok(Ok(how)) => Ok(how),
            Ok(Err(e)) => Err(OpError::Internal(format!(
                "copying {}: {e}",
                root.path().display()
            ))),
            Err(e) => Err(OpError::Internal(e.to_string())),
        };
        let how = match (copied, root.is_overlay()) {
            (Err(e), _) => {
                let _ = std::fs::remove_file(&moment);
                return Err(e);
            }
            (Ok(how), false) => format!("{how:?}"),
            (Ok(_), true) => {
                let (overlay, to) = (moment.clone(), dest.clone());
                let flat =
                    tokio::task::spawn_blocking(move || root_disk::flatten(&overlay, &base, &to))
                        .await;
                let _ = std::fs::remove_file(&moment);
                match flat {
                    Ok(Ok(bytes)) => format!("flattened ({bytes} bytes of data)"),
                    Ok(Err(e)) => {
                        return Err(OpError::Internal(format!(
                            "flattening {}: {e}",
                            root.path().display()
                        )))
                    }
                    Err(e) => return Err(OpError::Internal(e.to_string())),
                }
            }
        };
        tracing::info!(instance = self.id, how, took = ?started.elapsed(), paused = ?pause.then_some(paused_for), "root disk copied");
        Ok(())
    }

    /// Resizes the stopped instance to `to`: the root disk grows (never
    /// shrinks), its old self kept as `root.img.pre-resize` for a revert.
    async fn resize(&mut self, to: Size) -> Result<(), OpError> {
        if self.record.state.has_process() {
            return Err(OpError::Conflict(format!(
                "instance {:?} is {}: stop it before resizing it",
                self.id,
                self.record.state.as_str()
            )));
        }
        if self.record.resized_from.is_some() {
            return Err(OpError::Conflict(format!(
                "instance {:?} has a resize to confirm or revert first",
                self.id
            )));
        }
        let from = self.record.spec.size();
        let has_root = self.record.spec.root_image.is_some();
        if !has_root && to.root_disk_gib.is_some() {
            return Err(OpError::BadRequest(
                "root_disk_gib: only for instances booted from a disk image".into(),
            ));
        }
        let grow_to = to.root_disk_gib.map(|g| u64::from(g) << 30);
        if let Some((root, base)) = self.root_disk().await? {
            let size = {
                let (disk, base) = (root.clone(), base.clone());
                tokio::task::spawn_blocking(move || disk.size(&base))
                    .await
                    .map_err(|e| OpError::Internal(e.to_string()))?
                    .map_err(|e| OpError::Internal(format!("{}: {e}", root.path().display())))?
            };
            if grow_to.is_some_and(|want| want < size) {
                return Err(OpError::BadRequest(format!(
                    "root_disk_gib: the root disk is {size} bytes and does not shrink"
                )));
            }
            let copied = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                // An overlay's copy is its own writes only: the image is
                // shared.
                root_disk::copy(root.path(), &root.kept(), None)?;
                if let Some(want) = grow_to.filter(|w| *w > size) {
                    root.grow(&base, want)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| OpError::Internal(e.to_string()))?;
            copied.map_err(|e| OpError::Internal(format!("resizing the root disk: {e}")))?;
        }
        self.record.spec.vcpus = to.vcpus;
        self.record.spec.memory_mib = to.memory_mib;
        if has_root {
            self.record.spec.root_disk_gib = to.root_disk_gib.or(from.root_disk_gib);
        }
        self.record.resized_from = Some(from);
        self.commit().await;
        Ok(())
    }

    /// Back to the size and the root disk from before the resize.
    async fn revert_resize(&mut self) -> Result<(), OpError> {
        let Some(from) = self.record.resized_from else {
            return Err(OpError::Conflict(format!(
                "instance {:?} has no resize to revert",
                self.id
            )));
        };
        if self.record.state.has_process() {
            return Err(OpError::Conflict(format!(
                "instance {:?} is {}: stop it before reverting its resize",
                self.id,
                self.record.state.as_str()
            )));
        }
        if let Some(root) = RootDisk::find(&self.sup.run_dir(&self.id)) {
            let kept = root.kept();
            if kept.exists() {
                std::fs::rename(&kept, root.path())
                    .map_err(|e| OpError::Internal(format!("{}: {e}", kept.display())))?;
            }
        }
        self.record.spec.vcpus = from.vcpus;
        self.record.spec.memory_mib = from.memory_mib;
        self.record.spec.root_disk_gib = from.root_disk_gib;
        self.record.resized_from = None;
        self.commit().await;
        Ok(())
    }

    /// Keeps the new size: the old root disk goes.
    async fn confirm_resize(&mut self) -> Result<(), OpError> {
        if self.record.resized_from.is_none() {
            return Err(OpError::Conflict(format!(
                "instance {:?} has no resize to confirm",
                self.id
            )));
        }
        if let Some(root) = RootDisk::find(&self.sup.run_dir(&self.id)) {
            let kept = root.kept();
            match std::fs::remove_file(&kept) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(OpError::Internal(format!("{}: {e}", kept.display()))),
            }
        }
        self.record.resized_from = None;
        self.commit().await;
        Ok(())
    }

    /// Pauses or resumes the guest's vCPUs.
    async fn set_paused(&mut self, paused: bool) -> Result<(), OpError> {
        let (from, to, word) = if paused {
            (State::Running, State::Paused, "paused")
        } else {
            (State::Paused, State::Running, "running")
        };
        if self.record.state != from {
            return Err(OpError::Conflict(format!(
                "instance {:?} is {}, not {}",
                self.id,
                self.record.state.as_str(),
                from.as_str()
            )));
        }
        let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
        let body = format!(r#"{{"state": "{word}"}}"#);
        match vmm::api_client::request_within(
            Duration::from_secs(10),
            &socket,
            Method::PUT,
            "/vm/state",
            Some(&body),
        )
        .await
        {
            Ok((204, _)) => {
                self.record.state = to;
                self.commit().await;
                Ok(())
            }
            Ok((code, body)) => Err(OpError::Internal(format!(
                "VMM answered {code}: {}",
                String::from_utf8_lossy(&body)
            ))),
            Err(e) => Err(self.vmm_unanswered(e)),
        }
    }

    /// Whether a guest is there to plug into or unplug from: a VMM that
    /// answers. A stopped instance only has its spec changed.
    fn guest_present(&self) -> Result<bool, OpError> {
        match self.record.state {
            State::Running | State::Paused => Ok(true),
            State::Shutoff | State::Error => Ok(false),
            State::Building | State::Stopping => Err(self.conflict()),
        }
    }

    async fn add_nic(&mut self, nic: NicSpec) -> Result<(), OpError> {
        let mut spec = self.record.spec.clone();
        if spec.nics.iter().any(|n| n.tap == nic.tap) {
            return Err(OpError::Conflict(format!(
                "instance {:?} has a NIC on tap {}",
                self.id, nic.tap
            )));
        }
        if spec.nics.len() >= vmm::config::MAX_NICS {
            return Err(OpError::Conflict(format!(
                "instance {:?} has {} NICs, the most a guest has",
                self.id,
                spec.nics.len()
            )));
        }
        spec.nics.push(nic.clone());
        spec.check().map_err(OpError::BadRequest)?;
        if self.guest_present()? {
            // The VMM names it by its tap, so that it can be unplugged.
            vmm::config::check_device_id(&nic.tap)
                .map_err(|e| OpError::BadRequest(format!("nics.tap: {e}")))?;
            // Opened here, as at launch, so the VMM needs no network
            // privileges; it keeps its own copies of the queues.
            let tap = Tap::open(&nic.tap, nic.queues.unwrap_or(1))
                .map_err(|e| OpError::BadRequest(format!("nics: {e}")))?;
            let fds: Vec<_> = (0..tap.queue_count())
                .filter_map(|q| tap.file(q))
                .map(std::os::fd::AsFd::as_fd)
                .collect();
            let mut net = net_config(&nic, Vec::new(), Some(tap.queue_count() as u16));
            net.tap = None;
            let body = serde_json::to_string(&net).map_err(|e| OpError::Internal(e.to_string()))?;
            let what = format!("NIC on {}", nic.tap);
            self.unplug_leftover(&nic.tap, "nets", &what).await?;
            self.plug("/vm/nets", &body, &fds, &what).await?;
        }
        self.record.spec = spec;
        self.commit().await;
        Ok(())
    }

    async fn remove_nic(&mut self, tap: &str) -> Result<(), OpError> {
        let Some(at) = self.record.spec.nics.iter().position(|n| n.tap == tap) else {
            return Err(OpError::NotFound(format!(
                "instance {:?} has no NIC on tap {tap}",
                self.id
            )));
        };
        if self.guest_present()? {
            if vmm::config::check_device_id(tap).is_err() {
                // The VMM named that NIC by position (see `net_config`):
                // it cannot be unplugged by its tap.
                return Err(OpError::Conflict(format!(
                    "the NIC on tap {tap} of {:?} can only be removed while it is stopped",
                    self.id
                )));
            }
            self.unplug(tap, "nets", &format!("NIC on {tap}")).await?;
        }
        self.record.spec.nics.remove(at);
        self.commit().await;
        Ok(())
    }

    /// Asks the guest to let go of the NIC on `tap` and waits until it has.
    /// Adds a disk (a volume: a file or block device at `path`) named by
    /// its device id; plugged now if the guest runs. The VMM gets it as
    /// descriptors opened here (`[O_DIRECT, buffered]`, as at launch), so
    /// a jailed VMM needs no access to the path.
    async fn add_disk(&mut self, disk: vmm::config::DiskConfig) -> Result<(), OpError> {
        let Some(dev) = disk.id.clone() else {
            return Err(OpError::BadRequest(
                "disks: an id (the device's name) is needed to remove it later".into(),
            ));
        };
        vmm::config::check_device_id(&dev)
            .map_err(|e| OpError::BadRequest(format!("disks.id: {e}")))?;
        let backing: Vec<&std::path::Path> = disk
            .layers
            .iter()
            .map(|p| p.as_path())
            .chain(disk.base.as_deref())
            .collect();
        if !disk.fds.is_empty()
            || !disk.backing_fds.is_empty()
            || !disk.path.is_absolute()
            || backing.iter().any(|p| !p.is_absolute())
        {
            return Err(OpError::BadRequest(
                "disks: absolute paths (path, base, layers), and no fds".into(),
            ));
        }
        let mut spec = self.record.spec.clone();
        if spec.disks.iter().any(|d| d.id.as_deref() == Some(&dev)) {
            return Err(OpError::Conflict(format!(
                "instance {:?} has a disk {dev}",
                self.id
            )));
        }
        // The root disk, ephemeral disk, swap and config drive take the rest.
        if spec.disks.len() >= vmm::config::MAX_DISKS - 4 {
            return Err(OpError::Conflict(format!(
                "instance {:?} has {} disks attached, the most it takes",
                self.id,
                spec.disks.len()
            )));
        }
        spec.disks.push(disk.clone());
        spec.check().map_err(OpError::BadRequest)?;
        // There now, running or not: a later start must find it.
        match std::fs::symlink_metadata(&disk.path) {
            Ok(m)
                if m.is_file()
                    || std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {}
            Ok(_) => {
                return Err(OpError::BadRequest(format!(
                    "disk {}: not a regular file or block device",
                    disk.path.display()
                )))
            }
            Err(e) => {
                return Err(OpError::BadRequest(format!(
                    "disk {}: {e}",
                    disk.path.display()
                )))
            }
        }
        if self.guest_present()? {
            let (files, own) = open_disk_files(&disk)?;
            let fds: Vec<_> = files.iter().map(std::os::fd::AsFd::as_fd).collect();
            let mut sent = disk.clone();
            sent.path = std::path::PathBuf::new();
            sent.base = None;
            sent.layers = Vec::new();
            // The descriptors by their position among those sent.
            sent.fds = (0..own).collect();
            sent.backing_fds = (own..fds.len() as i32).collect();
            let body =
                serde_json::to_string(&sent).map_err(|e| OpError::Internal(e.to_string()))?;
            let what = format!("disk {dev}");
            self.unplug_leftover(&dev, "disks", &what).await?;
            self.plug("/vm/disks", &body, &fds, &what).await?;
        }
        self.record.spec = spec;
        self.commit().await;
        Ok(())
    }

    /// Moves disk `files.id` (attached, or the root volume) onto new files:
    /// its volume was snapshotted in use, so its old files are the
    /// snapshot's now and must not be written again. A running guest's VMM
    /// moves first (nothing reaches the old files once it has answered);
    /// every later start opens the new ones. Repeating it is harmless.
    async fn move_disk(&mut self, files: vmm::config::DiskConfig) -> Result<(), OpError> {
        let Some(dev) = files.id.clone() else {
            return Err(OpError::BadRequest("id: the disk to move".into()));
        };
        let chain: Vec<&std::path::Path> = std::iter::once(files.path.as_path())
            .chain(files.layers.iter().map(|p| p.as_path()))
            .chain(files.base.as_deref())
            .collect();
        if chain.iter().any(|p| !p.is_absolute())
            || (!files.layers.is_empty() && files.base.is_none())
        {
            return Err(OpError::BadRequest(
                "disks: absolute paths (path, then layers over a base)".into(),
            ));
        }
        if self.record.spec.remote_disks.iter().any(|r| r.id == dev) {
            return Err(OpError::Conflict(format!(
                "disk {dev} is a volume on another host: its files are not here"
            )));
        }
        let mut spec = self.record.spec.clone();
        let Some(disk) = spec
            .disks
            .iter_mut()
            .chain(spec.root_volume.as_mut())
            .find(|d| d.id.as_deref() == Some(&dev))
        else {
            return Err(OpError::NotFound(format!(
                "instance {:?} has no disk {dev}",
                self.id
            )));
        };
        disk.path = files.path;
        disk.base = files.base;
        disk.layers = files.layers;
        let moved = disk.clone();
        spec.check().map_err(OpError::BadRequest)?;
        if self.guest_present()? {
            let (opened, own) = open_disk_files(&moved)?;
            let fds: Vec<_> = opened.iter().map(std::os::fd::AsFd::as_fd).collect();
            let body = serde_json::to_string(&vmm::api::FilesBody {
                fds: (0..own).collect(),
                backing_fds: (own..fds.len() as i32).collect(),
            })
            .map_err(|e| OpError::Internal(e.to_string()))?;
            let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
            let answer = tokio::time::timeout(
                Duration::from_secs(30),
                vmm::api_client::request_with_fds(
                    &socket,
                    Method::PUT,
                    &format!("/vm/devices/{dev}/files"),
                    Some(&body),
                    &fds,
                ),
            )
            .await
            .map_err(|_| OpError::Unavailable("the VMM did not answer in time; try again".into()))?
            .map_err(|e| self.vmm_unanswered(e))?;
            match answer {
                (204, _) => {}
                (code, body) => {
                    let message =
                        format!("VMM answered {code}: {}", String::from_utf8_lossy(&body));
                    return Err(match code {
                        400 => OpError::BadRequest(message),
                        404 => OpError::NotFound(message),
                        503 => OpError::Unavailable(message),
                        _ => OpError::Internal(message),
                    });
                }
            }
        }
        tracing::info!(instance = %self.id, disk = dev, path = %moved.path.display(), "disk moved to new files");
        self.record.spec = spec;
        self.commit().await;
        Ok(())
    }

    async fn remove_disk(&mut self, dev: &str) -> Result<(), OpError> {
        let Some(at) = self
            .record
            .spec
            .disks
            .iter()
            .position(|d| d.id.as_deref() == Some(dev))
        else {
            return Err(OpError::NotFound(format!(
                "instance {:?} has no disk {dev}",
                self.id
            )));
        };
        if self.guest_present()? {
            self.unplug(dev, "disks", &format!("disk {dev}")).await?;
        }
        self.record.spec.disks.remove(at);
        let remote = self
            .record
            .spec
            .remote_disks
            .iter()
            .position(|r| r.id == dev);
        let remote = remote.map(|at| self.record.spec.remote_disks.remove(at));
        self.commit().await;
        if let Some(r) = remote {
            disconnect_nbd(r.index).await;
        }
        Ok(())
    }

    /// Adds a volume on another host: connects its NBD export to a free
    /// `/dev/nbdN` (the kernel's client), then adds that device as
    /// [`Actor::add_disk`] adds a local one. A failed add disconnects it.
    async fn add_remote_disk(
        &mut self,
        mut disk: vmm::config::DiskConfig,
        nbd: crate::instance::NbdSource,
    ) -> Result<(), OpError> {
        if !disk.path.as_os_str().is_empty() || disk.base.is_some() || !disk.layers.is_empty() {
            return Err(OpError::BadRequest(
                "disks: a remote disk (nbd) has no path, base or layers".into(),
            ));
        }
        if nbd.address.is_empty() || nbd.export.is_empty() || nbd.export.len() > 255 {
            return Err(OpError::BadRequest(
                "nbd: an address (HOST:PORT) and an export name".into(),
            ));
        }
        let Some(dev) = disk.id.clone() else {
            return Err(OpError::BadRequest(
                "disks: an id (the device's name) is needed to remove it later".into(),
            ));
        };
        if self
            .record
            .spec
            .disks
            .iter()
            .any(|d| d.id.as_deref() == Some(&dev))
        {
            return Err(OpError::Conflict(format!(
                "instance {:?} has a disk {dev}",
                self.id
            )));
        }
        let (index, export) = connect_nbd(&nbd, &self.id, &dev).await.inspect_err(|e| {
            tracing::warn!(
                instance = self.id,
                disk = dev,
                "connecting a remote disk: {e}"
            )
        })?;
        disk.path = crate::nbd::device(index);
        // A read-only export is a read-only disk for the guest too.
        disk.read_only |= export.read_only();
        match self.add_disk(disk).await {
            Ok(()) => {
                self.record
                    .spec
                    .remote_disks
                    .push(crate::instance::RemoteDisk {
                        id: dev.clone(),
                        nbd,
                        index,
                    });
                self.commit().await;
                self.sup.watch_nbd_links();
                tracing::info!(
                    instance = self.id,
                    disk = dev,
                    index,
                    "remote disk connected"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    instance = self.id,
                    disk = dev,
                    index,
                    "plugging a remote disk: {e}"
                );
                disconnect_nbd(index).await;
                Err(e)
            }
        }
    }

    /// Connects again the remote disks whose NBD device is not connected
    /// (the host rebooted, or the connection died), before a VMM starts
    /// with them.
    async fn reconnect_remote_disks(&mut self) -> Result<(), OpError> {
        let mut changed = false;
        for at in 0..self.record.spec.remote_disks.len() {
            let r = self.record.spec.remote_disks[at].clone();
            if crate::nbd::connected(r.index) {
                continue;
            }
            disconnect_nbd(r.index).await;
            let (index, _) = connect_nbd(&r.nbd, &self.id, &r.id).await?;
            tracing::info!(
                instance = self.id,
                disk = r.id,
                index,
                "remote disk connected again"
            );
            self.record.spec.remote_disks[at].index = index;
            let spec = &mut self.record.spec;
            if let Some(d) = spec
                .disks
                .iter_mut()
                .chain(spec.root_volume.as_mut())
                .find(|d| d.id.as_deref() == Some(&r.id))
            {
                d.path = crate::nbd::device(index);
            }
            changed = true;
        }
        if changed {
            self.commit().await;
        }
        Ok(())
    }

    /// Grows disk `dev` (a volume: attached, or the root) to `bytes`. A
    /// running guest's VMM grows it and tells the guest; otherwise the file
    /// grows here (the VMM, at the next start, finds it so). Either way
    /// the instance's actor does it, so a start cannot come between.
    async fn grow_disk(&mut self, dev: &str, bytes: u64) -> Result<(), OpError> {
        let spec = &self.record.spec;
        let Some(disk) = spec
            .disks
            .iter()
            .chain(spec.root_volume.as_ref())
            .find(|d| d.id.as_deref() == Some(dev))
            .cloned()
        else {
            return Err(OpError::NotFound(format!(
                "instance {:?} has no disk {dev}",
                self.id
            )));
        };
        if disk.read_only {
            return Err(OpError::Conflict(format!("disk {dev} is read-only")));
        }
        if !bytes.is_multiple_of(512) {
            return Err(OpError::BadRequest(format!(
                "bytes: {bytes} is not a multiple of 512"
            )));
        }
        // A volume on another host grew there (its storage host serves the
        // new size already): the kernel's NBD device learns it, then the
        // guest does from its VMM. Its size is not hostd's to change.
        let remote = spec.remote_disks.iter().find(|r| r.id == dev).cloned();
        if let Some(r) = &remote {
            let (index, backend) = (r.index, super::nbd_links::backend(&self.id, dev));
            tokio::task::spawn_blocking(move || crate::nbd::resize(index, &backend, bytes))
                .await
                .map_err(|e| OpError::Internal(e.to_string()))?
                .map_err(|e| OpError::Internal(format!("remote disk {dev}: resizing: {e}")))?;
            tracing::info!(instance = %self.id, disk = dev, bytes, "remote disk resized");
        }
        if self.guest_present()? {
            let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
            let body = serde_json::to_string(&vmm::api::SizeBody { bytes })
                .map_err(|e| OpError::Internal(e.to_string()))?;
            let answer = vmm::api_client::request_within(
                Duration::from_secs(30),
                &socket,
                Method::PUT,
                &format!("/vm/devices/{dev}/size"),
                Some(&body),
            )
            .await
            .map_err(|e| self.vmm_unanswered(e))?;
            return match answer {
                (204, _) => {
                    tracing::info!(instance = %self.id, disk = dev, bytes, "disk grown in the guest");
                    Ok(())
                }
                (code, body) => {
                    let message =
                        format!("VMM answered {code}: {}", String::from_utf8_lossy(&body));
                    Err(match code {
                        400 => OpError::BadRequest(message),
                        404 | 409 => OpError::Conflict(message),
                        _ => OpError::Internal(message),
                    })
                }
            };
        }
        if remote.is_none() {
            grow_file(&disk, bytes)?;
            tracing::info!(instance = %self.id, disk = dev, bytes, "disk file grown");
        }
        Ok(())
    }

    /// Plugs a device (`path`: `/vm/nets` or `/vm/disks`, its JSON `body`)
    /// into the running guest, its descriptors `fds` sent along; `what`
    /// names it in the log.
    async fn plug(
        &self,
        path: &str,
        body: &str,
        fds: &[std::os::fd::BorrowedFd<'_>],
        what: &str,
    ) -> Result<(), OpError> {
        let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            vmm::api::PLUG_REPLY_TIMEOUT + Duration::from_secs(5),
            vmm::api_client::request_with_fds(&socket, Method::POST, path, Some(body), fds),
        )
        .await
        .map_err(|_| OpError::Internal("the VMM did not answer in time".into()))?;
        match answer {
            Ok((201, _)) => {
                tracing::info!(instance = %self.id, device = what, took = ?started.elapsed(), "plugged");
                Ok(())
            }
            Ok((code, body)) => {
                let message = format!("VMM answered {code}: {}", String::from_utf8_lossy(&body));
                Err(match code {
                    400 => OpError::BadRequest(message),
                    409 => OpError::Conflict(message),
                    _ => OpError::Internal(message),
                })
            }
            Err(e) => Err(self.vmm_unanswered(e)),
        }
    }

    /// What a VMM call that got no answer means to hostd's caller: a VMM
    /// whose socket refuses is starting or restarting (its guest rebooted or
    /// crashed; the exit is not handled yet), so the call is worth repeating
    /// shortly (503); anything else is hostd's own failure.
    fn vmm_unanswered(&self, e: vmm::api_client::ClientError) -> OpError {
        match e {
            vmm::api_client::ClientError::Connect { .. } => OpError::Unavailable(format!(
                "the VMM of {:?} is not answering (starting or restarting): {e}; try again",
                self.id
            )),
            e => OpError::Internal(e.to_string()),
        }
    }

    /// Unplugs device `dev` if the VMM has it though the spec does not: a
    /// plug hostd was killed before recording (the VMM's answer came, the
    /// spec's write did not). The device may not be what is asked for now,
    /// so it goes, and the plug that follows makes it anew.
    async fn unplug_leftover(&self, dev: &str, list: &str, what: &str) -> Result<(), OpError> {
        if self.vmm_devices(list).await?.iter().any(|d| d == dev) {
            tracing::warn!(
                instance = %self.id,
                device = what,
                "the VMM has a device the spec does not (an interrupted plug): unplugging it first"
            );
            self.unplug(dev, list, what).await?;
        }
        Ok(())
    }

    /// The ids of the VMM's devices in its `list` (`nets` or `disks`).
    async fn vmm_devices(&self, list: &str) -> Result<Vec<String>, OpError> {
        let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
        let (code, body) = vmm::api_client::request_within(
            Duration::from_secs(10),
            &socket,
            Method::GET,
            "/vm",
            None,
        )
        .await
        .map_err(|e| self.vmm_unanswered(e))?;
        if code != 200 {
            return Err(OpError::Internal(format!(
                "VMM answered {code}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["config"][list].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Asks the guest to let go of device `dev` (in the VMM's `list`,
    /// `nets` or `disks`) and waits until it has.
    async fn unplug(&self, dev: &str, list: &str, what: &str) -> Result<(), OpError> {
        let socket = self.sup.run_dir(&self.id).join(API_SOCKET);
        let call = |method, path: String| {
            let socket = socket.clone();
            async move {
                vmm::api_client::request_within(
                    Duration::from_secs(10),
                    &socket,
                    method,
                    &path,
                    None,
                )
                .await
                .map_err(|e| self.vmm_unanswered(e))
            }
        };
        match call(Method::DELETE, format!("/vm/devices/{dev}")).await? {
            // 404: the VMM has no such device (gone already).
            (202 | 404, _) => {}
            (code, body) => {
                return Err(OpError::Internal(format!(
                    "VMM answered {code}: {}",
                    String::from_utf8_lossy(&body)
                )))
            }
        }
        let deadline = tokio::time::Instant::now() + UNPLUG_TIMEOUT;
        loop {
            let (code, body) = call(Method::GET, "/vm".into()).await?;
            let has_it = code == 200
                && serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["config"][list].as_array().cloned())
                    .is_some_and(|devices| devices.iter().any(|n| n["id"] == dev));
            if code == 200 && !has_it {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OpError::Conflict(format!(
                    "the guest of {:?} did not let go of its {what} within {UNPLUG_TIMEOUT:?} \
                     (it needs ACPI PCI hotplug); it goes at the guest's next reboot",
                    self.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A qcow2 file's header names what lies right under it. A spec whose
/// chain skips what a header names is stale (its volume was snapshotted in
/// use and the move has not reached this spec yet): the guest would read
/// the wrong layers, so the start waits for the move. One whose header
/// names a file further down the spec's chain lost the files between to a
/// merge on the storage host (a deleted snapshot's layer absorbed into the
/// one over it, which reads the same): they are dropped from the spec.
/// Only files the spec names are ever kept. Returns whether any went.
fn check_chains(spec: &mut crate::instance::InstanceSpec) -> Result<bool, OpError> {
    let mut pruned = false;
    for d in spec.disks.iter_mut().chain(spec.root_volume.as_mut()) {
        let mut chain: Vec<std::path::PathBuf> = std::iter::once(d.path.clone())
            .chain(d.layers.iter().cloned())
            .chain(d.base.iter().cloned())
            .collect();
        let mut i = 0;
        while i + 1 < chain.len() {
            // A file that cannot be read is the VMM's to report.
            let Ok(file) = std::fs::File::open(&chain[i]) else {
                break;
            };
            let Ok((_, Some(named))) = vmm::virtio::block::qcow2::describe(&file) else {
                break;
            };
            let named_os = std::ffi::OsStr::new(&named);
            let is_named = |p: &std::path::PathBuf| {
                p.as_os_str() == named_os
                    || p.file_name() == Some(named_os)
                    || p.file_stem() == Some(named_os)
            };
            match chain[i + 1..].iter().position(is_named) {
                Some(0) => {}
                Some(merged) => {
                    chain.drain(i + 1..i + 1 + merged);
                    pruned = true;
                }
                None => {
                    return Err(OpError::Unavailable(format!(
                        "disk {}: {} lies over {named}, not {}: its volume was snapshotted and \
                         this instance has not been moved onto its new files yet; try again",
                        d.id.as_deref().unwrap_or("?"),
                        chain[i].display(),
                        chain[i + 1].display()
                    )))
                }
            }
            i += 1;
        }
        if d.base.is_some() {
            d.base = chain.pop();
        }
        d.layers = chain.split_off(1.min(chain.len()));
    }
    Ok(pruned)
}

/// A disk's files for its VMM, hostd opening them with its own rights:
/// `[O_DIRECT, buffered]` (O_DIRECT where the filesystem takes it and the
/// disk asks for it) or `[buffered]`, then what an overlay reads through
/// to, read-only, top first. Returns them and how many are the disk's own.
fn open_disk_files(disk: &vmm::config::DiskConfig) -> Result<(Vec<std::fs::File>, i32), OpError> {
    let open = |path: &std::path::Path, write: bool, direct: bool| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | if direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .map_err(|e| OpError::BadRequest(format!("disk {}: {e}", path.display())))
    };
    let buffered = open(&disk.path, !disk.read_only, false)?;
    let direct = if disk.direct {
        open(&disk.path, !disk.read_only, true).ok()
    } else {
        None
    };
    let own = i32::from(direct.is_some()) + 1;
    let mut files: Vec<_> = direct
        .into_iter()
        .chain(std::iter::once(buffered))
        .collect();
    for p in disk.layers.iter().chain(disk.base.as_ref()) {
        files.push(open(p, false, false)?);
    }
    Ok((files, own))
}

/// Grows a disk no VMM has open: a raw file's length, or a qcow2 overlay's
/// virtual size (`base` set). Never shrinks it.
fn grow_file(disk: &vmm::config::DiskConfig, bytes: u64) -> Result<(), OpError> {
    let path = &disk.path;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| OpError::Internal(format!("disk {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    let current = if disk.base.is_some() {
        vmm::virtio::block::qcow2::describe(&file).map_err(io)?.0
    } else {
        file.metadata().map_err(io)?.len()
    };
    if bytes < current {
        return Err(OpError::BadRequest(format!(
            "disk {}: has {current} bytes; it cannot shrink to {bytes}",
            path.display()
        )));
    }
    if bytes == current {
        return Ok(());
    }
    if disk.base.is_some() {
        vmm::virtio::block::qcow2::grow_file(&file, bytes).map_err(io)
    } else {
        file.set_len(bytes).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

/// Connects an NBD export to a free device (blocking, off the runtime).
pub(super) async fn connect_nbd(
    nbd: &crate::instance::NbdSource,
    instance: &str,
    disk: &str,
) -> Result<(u32, crate::nbd::Export), OpError> {
    let nbd = nbd.clone();
    let backend = super::nbd_links::backend(instance, disk);
    tokio::task::spawn_blocking(move || crate::nbd::connect(&nbd.address, &nbd.export, &backend))
        .await
        .map_err(|e| OpError::Internal(e.to_string()))?
        .map_err(|e| OpError::Internal(format!("remote disk: {e}")))
}

/// Disconnects an NBD device; a failure is logged (the device is then
/// the kernel's to time out).
pub(super) async fn disconnect_nbd(index: u32) {
    match tokio::task::spawn_blocking(move || crate::nbd::disconnect(index)).await {
        Ok(Ok(())) => tracing::info!(index, "remote disk disconnected"),
        Ok(Err(e)) => tracing::warn!(index, "disconnecting a remote disk: {e}"),
        Err(e) => tracing::warn!(index, "disconnecting a remote disk: {e}"),
    }
}
