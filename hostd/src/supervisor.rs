//! The supervisor: owns every instance record and the VMM process behind it.
//!
//! Each instance has a slot with its record and an operation lock, so that
//! lifecycle operations on one instance run one at a time while others proceed.
//! A VMM's exit is noticed through its pidfd the moment it happens; the watcher
//! moves the instance to SHUTOFF or ERROR. Every change of a record is written to
//! the state file before it is announced, so a hostd killed at any point comes
//! back with a view it can re-adopt from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use vmm::config::{ConfigFile, NetConfig, RebootPolicy, SerialConfig, SerialMode, VmConfig};
use vmm::virtio::net::tap::Tap;

use crate::cgroup::CgroupRoot;
use crate::config::Config;
use crate::instance::{now_secs, Instance, InstanceSpec, Process, State};
use crate::process::{self, Exit, Launch, PidFd};
use crate::store::Store;

/// How long a new VMM may take to answer on its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace beyond the guest's shutdown timeout before hostd kills the VMM.
const KILL_GRACE: Duration = Duration::from_secs(5);
const CONSOLE_LOG: &str = "console.log";
const VMM_LOG: &str = "vmm.log";
const API_SOCKET: &str = "api.sock";
const VMM_CONFIG: &str = "vmm.json";
/// The empty directory a jailed VMM mounts its root on (in its own mount
/// namespace; nothing appears here on the host).
const JAIL_ROOT: &str = "jail";
/// Lines of console and VMM log kept with an ERROR reason.
const REASON_TAIL_LINES: usize = 5;

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

struct Slot {
    record: Mutex<Instance>,
    /// Serialises lifecycle operations on this instance.
    op: tokio::sync::Mutex<()>,
    /// The running VMM's pidfd.
    pidfd: Mutex<Option<Arc<PidFd>>>,
    /// Bumped on every VMM exit, so that a stop can wait for one.
    exits: watch::Sender<u64>,
    /// Set while hostd itself stops the VMM: its exit is then a SHUTOFF.
    stopping: std::sync::atomic::AtomicBool,
    /// Set by a delete or hard stop before it waits for its turn: the
    /// operation in progress (a start waiting on a VMM that never answers)
    /// has its VMM killed, and a VMM started after this is killed at once.
    terminating: std::sync::atomic::AtomicBool,
    /// Memory admitted for a start in progress, counted with the running
    /// VMMs' until the start ends (see `Supervisor::admit`).
    admitted: std::sync::atomic::AtomicBool,
}

/// A start's memory admission; ends when dropped.
struct Admitted<'a>(&'a Slot);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.admitted.store(false, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Supervisor {
    pub config: Config,
    store: Store,
    cgroups: Option<CgroupRoot>,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    events: broadcast::Sender<Event>,
    pub counters: Counters,
    /// Serialises writes of the state file.
    save_lock: Mutex<()>,
    /// This supervisor, for the exit watchers it spawns.
    me: std::sync::Weak<Supervisor>,
    images: crate::images::ImageCache,
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
        let sup = Arc::new_cyclic(|me| Supervisor {
            images,
            config,
            store,
            cgroups,
            slots: Mutex::new(BTreeMap::new()),
            events,
            counters: Counters::default(),
            save_lock: Mutex::new(()),
            me: me.clone(),
        });
        let records = sup.store.load()?;
        for record in records {
            let id = record.spec.id.clone();
            let slot = Arc::new(Slot {
                record: Mutex::new(record),
                op: tokio::sync::Mutex::new(()),
                pidfd: Mutex::new(None),
                exits: watch::channel(0).0,
                stopping: false.into(),
                terminating: false.into(),
                admitted: false.into(),
            });
            lock(&sup.slots).insert(id.clone(), slot.clone());
            sup.adopt(&id, &slot).await;
        }
        sup.save()?;
        Ok(sup)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn cgroups_enabled(&self) -> bool {
        self.cgroups.is_some()
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, OpError> {
        lock(&self.slots)
            .get(id)
            .cloned()
            .ok_or_else(|| OpError::NotFound(id.to_owned()))
    }

    fn save(&self) -> Result<(), crate::store::StoreError> {
        let _guard = lock(&self.save_lock);
        let records: Vec<Instance> = lock(&self.slots)
            .values()
            .map(|s| lock(&s.record).clone())
            .collect();
        self.store.save(&records)
    }

    /// Applies `change` to a record, saves, and announces the new state.
    fn update(&self, id: &str, slot: &Slot, change: impl FnOnce(&mut Instance)) {
        let event = {
            let mut r = lock(&slot.record);
            change(&mut r);
            r.updated_at = now_secs();
            Event {
                instance: id.to_owned(),
                state: r.state.as_str().to_owned(),
                reason: r.reason.clone(),
                at: r.updated_at,
            }
        };
        if let Err(e) = self.save() {
            tracing::error!(instance = id, "saving state: {e}");
        }
        tracing::info!(instance = id, state = %event.state, reason = ?event.reason, "instance state");
        let _ = self.events.send(event);
    }

    pub fn list(&self) -> Vec<Instance> {
        lock(&self.slots)
            .values()
            .map(|s| lock(&s.record).clone())
            .collect()
    }

    pub fn show(&self, id: &str) -> Result<Instance, OpError> {
        Ok(lock(&self.slot(id)?.record).clone())
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.store.run_dir(id)
    }

    /// vCPUs and MiB held by instances that have a VMM.
    pub fn used(&self) -> (u64, u64) {
        Self::used_by(&lock(&self.slots))
    }

    /// vCPUs and MiB of the instances with a VMM, or admitted to start one.
    fn used_by(slots: &BTreeMap<String, Arc<Slot>>) -> (u64, u64) {
        slots.values().fold((0, 0), |(c, m), s| {
            let r = lock(&s.record);
            if r.state.has_process() || s.admitted.load(Ordering::SeqCst) {
                (
                    c + u64::from(r.spec.vcpus),
                    m + u64::from(r.spec.memory_mib),
                )
            } else {
                (c, m)
            }
        })
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
        let mut file = vmm_config_file(spec, None);
        file.nets = Some(
            spec.nics
                .iter()
                .map(|n| net_config(n, vec![], None))
                .collect(),
        );
        VmConfig::validate(file, host_mib).map_err(|e| OpError::BadRequest(e.to_string()))?;
        Ok(())
    }

    /// Replaces image ids in a spec by the cached files they name.
    async fn resolve_images(&self, spec: &mut InstanceSpec) -> Result<(), OpError> {
        let fetch =
            |id: String| async move { self.images.fetch(&id).await.map_err(OpError::Internal) };
        if let Some(id) = spec.kernel_image.take() {
            spec.kernel = Some(fetch(id).await?);
        }
        if let Some(id) = spec.initramfs_image.take() {
            spec.initramfs = Some(fetch(id).await?);
        }
        for id in std::mem::take(&mut spec.disk_images) {
            let path = fetch(id).await?;
            spec.disks.push(vmm::config::DiskConfig {
                path,
                // Shared by every instance of the image.
                read_only: true,
                serial: None,
                direct: false,
                queues: None,
                rate_limit: Default::default(),
            });
        }
        Ok(())
    }

    pub async fn create(&self, mut spec: InstanceSpec, start: bool) -> Result<Instance, OpError> {
        spec.check().map_err(OpError::BadRequest)?;
        if lock(&self.slots).contains_key(&spec.id) {
            return Err(OpError::Conflict(format!(
                "instance {:?} already exists",
                spec.id
            )));
        }
        self.resolve_images(&mut spec).await?;
        self.check_spec(&spec)?;
        let id = spec.id.clone();
        let now = now_secs();
        let slot = Arc::new(Slot {
            record: Mutex::new(Instance {
                spec,
                state: State::Shutoff,
                reason: None,
                process: None,
                created_at: now,
                updated_at: now,
                starts: 0,
                vmm_uid: None,
            }),
            op: tokio::sync::Mutex::new(()),
            pidfd: Mutex::new(None),
            exits: watch::channel(0).0,
            stopping: false.into(),
            terminating: false.into(),
            admitted: false.into(),
        });
        {
            let mut slots = lock(&self.slots);
            if slots.contains_key(&id) {
                return Err(OpError::Conflict(format!("instance {id:?} already exists")));
            }
            slots.insert(id.clone(), slot.clone());
        }
        self.update(&id, &slot, |_| {});
        if start {
            let _op = slot.op.lock().await;
            if let Err(e) = self.launch(&id, &slot).await {
                // A create that cannot start leaves nothing behind.
                self.forget(&id);
                return Err(e);
            }
        }
        let record = lock(&slot.record).clone();
        Ok(record)
    }

    fn forget(&self, id: &str) {
        lock(&self.slots).remove(id);
        let _ = std::fs::remove_dir_all(self.run_dir(id));
        if let Some(c) = &self.cgroups {
            c.remove(id);
        }
        if let Err(e) = self.save() {
            tracing::error!(instance = id, "saving state: {e}");
        }
    }

    pub async fn start_instance(&self, id: &str) -> Result<Instance, OpError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        let state = lock(&slot.record).state;
        if state.has_process() {
            return Err(OpError::Conflict(format!(
                "instance {id:?} is {}",
                state.as_str()
            )));
        }
        self.launch(id, &slot).await?;
        let record = lock(&slot.record).clone();
        Ok(record)
    }

    /// The user the instance's VMM runs as: the one it has, or the lowest no
    /// other instance holds. None when VMMs are not jailed.
    fn vmm_uid(&self, id: &str, slot: &Arc<Slot>) -> Result<Option<u32>, OpError> {
        let Some(base) = self.config.vmm_uid_base else {
            return Ok(None);
        };
        // The slots lock makes choosing and recording one step for all
        // instances.
        let slots = lock(&self.slots);
        if let Some(uid) = lock(&slot.record).vmm_uid {
            return Ok(Some(uid));
        }
        let taken: std::collections::HashSet<u32> = slots
            .values()
            .filter_map(|s| lock(&s.record).vmm_uid)
            .collect();
        let uid = (base..base + crate::config::MAX_JAILED_VMMS)
            .find(|u| !taken.contains(u))
            .ok_or_else(|| {
                OpError::Conflict(format!(
                    "all {} VMM users are taken",
                    crate::config::MAX_JAILED_VMMS
                ))
            })?;
        lock(&slot.record).vmm_uid = Some(uid);
        drop(slots);
        // Saved now: the disks given to this user stay with the instance.
        if let Err(e) = self.save() {
            tracing::error!(instance = id, "saving state: {e}");
        }
        Ok(Some(uid))
    }

    /// Readies the jail of a VMM that runs as `uid`: an empty directory to
    /// mount its root on, and its writable disks given to it.
    fn prepare_jail(
        &self,
        dir: &Path,
        file: &ConfigFile,
        uid: u32,
    ) -> Result<vmm::jail::JailConfig, OpError> {
        let root = dir.join(JAIL_ROOT);
        std::fs::create_dir_all(&root)
            .map_err(|e| OpError::Internal(format!("{}: {e}", root.display())))?;
        for disk in file.disks.iter().flatten().filter(|d| !d.read_only) {
            give_disk(&disk.path, uid).map_err(|e| {
                OpError::BadRequest(format!(
                    "disk {}: giving it to the VMM's user: {e}",
                    disk.path.display()
                ))
            })?;
        }
        Ok(vmm::jail::JailConfig {
            uid,
            gid: uid,
            root,
        })
    }

    /// Admits `memory_mib` for the slot's start against the host's free
    /// memory, counting every instance with a VMM or admitted to start one;
    /// checking and admitting are one step under the slots lock, so two
    /// starts cannot both take the last room. The admission ends when the
    /// returned guard drops (the start then runs a VMM, which counts, or
    /// failed).
    fn admit<'a>(&self, slot: &'a Slot, memory_mib: u32) -> Result<Admitted<'a>, OpError> {
        let slots = lock(&self.slots);
        let (_, used_mib) = Self::used_by(&slots);
        let host_mib = vmm::config::host_memory_mib().unwrap_or(0);
        let free = host_mib
            .saturating_sub(self.config.reserved_memory_mib)
            .saturating_sub(used_mib);
        if u64::from(memory_mib) > free {
            return Err(OpError::Conflict(format!(
                "not enough free memory: {memory_mib} MiB asked, {free} MiB free"
            )));
        }
        slot.admitted.store(true, Ordering::SeqCst);
        Ok(Admitted(slot))
    }

    /// The first step of a delete or hard stop, taken before waiting for the
    /// operation in progress: the VMM, if any, is killed now (its exit is a
    /// SHUTOFF), so that operation ends instead of waiting on it.
    fn terminate_now(&self, id: &str, slot: &Slot) {
        slot.terminating.store(true, Ordering::SeqCst);
        if let Some(pidfd) = lock(&slot.pidfd).clone() {
            slot.stopping.store(true, Ordering::SeqCst);
            if let Err(e) = pidfd.signal(libc::SIGKILL) {
                tracing::debug!(instance = id, "killing the VMM: {e}");
            }
        }
    }

    /// Starts a VMM for the instance and waits until its control API answers.
    async fn launch(&self, id: &str, slot: &Arc<Slot>) -> Result<(), OpError> {
        let spec = lock(&slot.record).spec.clone();
        let _admitted = self.admit(slot, spec.memory_mib)?;
        let dir = self.run_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpError::Internal(format!("{}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(dir.join(API_SOCKET));

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
        let mut file = vmm_config_file(&spec, Some(&dir));
        file.nets = (!nets.is_empty()).then_some(nets);
        if let Some(uid) = self.vmm_uid(id, slot)? {
            file.jail = Some(self.prepare_jail(&dir, &file, uid)?);
        }
        let config_path = dir.join(VMM_CONFIG);
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| OpError::Internal(e.to_string()))?;
        std::fs::write(&config_path, json)
            .map_err(|e| OpError::Internal(format!("{}: {e}", config_path.display())))?;

        let cgroup_procs = match &self.cgroups {
            Some(c) => {
                let limit = (u64::from(spec.memory_mib) + self.config.vmm_overhead_mib) << 20;
                Some(
                    c.prepare(id, spec.vcpus, limit)
                        .map_err(|e| OpError::Internal(e.to_string()))?,
                )
            }
            None => None,
        };
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
        let launched = process::spawn(Launch {
            binary: &self.config.vmm_binary,
            args: vec!["--config".into(), config_path.display().to_string()],
            log,
            cgroup_procs,
            inherit,
        })
        .map_err(|e| {
            OpError::Internal(format!(
                "starting {}: {e}",
                self.config.vmm_binary.display()
            ))
        })?;
        // The VMM holds its own copies of the tap queues now.
        drop(taps);
        self.counters.vmm_starts.fetch_add(1, Ordering::Relaxed);
        slot.stopping.store(false, Ordering::SeqCst);
        let pidfd = PidFd::open(launched.pid)
            .map(Arc::new)
            .map_err(|e| OpError::Internal(format!("pidfd_open: {e}")))?;
        *lock(&slot.pidfd) = Some(pidfd.clone());
        self.update(id, slot, |r| {
            r.state = State::Building;
            r.reason = None;
            r.process = Some(launched);
            r.starts += 1;
        });
        self.watch_exit(id, slot, launched, pidfd.clone());
        if slot.terminating.load(Ordering::SeqCst) {
            // A delete or hard stop came while this VMM was being started.
            slot.stopping.store(true, Ordering::SeqCst);
            let _ = pidfd.signal(libc::SIGKILL);
        }

        // Ready when the control API answers; an early exit ends the wait.
        let socket = dir.join(API_SOCKET);
        let mut exits = slot.exits.subscribe();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, body)) = vmm::api_client::request_within(
                Duration::from_secs(2),
                &socket,
                Method::GET,
                "/vm",
                None,
            )
            .await
            {
                let paused = String::from_utf8_lossy(&body).contains("\"state\":\"paused\"");
                self.update(id, slot, |r| {
                    if r.process == Some(launched) && r.state == State::Building {
                        r.state = if paused {
                            State::Paused
                        } else {
                            State::Running
                        };
                    }
                });
                return Ok(());
            }
            if lock(&slot.record).process != Some(launched) {
                let reason = lock(&slot.record).reason.clone().unwrap_or_default();
                return Err(OpError::Internal(format!(
                    "the VMM exited while starting: {reason}"
                )));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = pidfd.signal(libc::SIGKILL);
                return Err(OpError::Internal(format!(
                    "the VMM did not answer on {} within {READY_TIMEOUT:?}",
                    socket.display()
                )));
            }
            tokio::select! {
                _ = exits.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    /// Watches `process` until it exits, then records how.
    fn watch_exit(&self, id: &str, slot: &Arc<Slot>, process: Process, pidfd: Arc<PidFd>) {
        let id = id.to_owned();
        let slot = slot.clone();
        let sup = self.me.clone();
        tokio::spawn(async move {
            let exit = pidfd.exited().await;
            let Some(sup) = sup.upgrade() else { return };
            sup.on_exit(&id, &slot, process, exit);
        });
    }

    fn on_exit(&self, id: &str, slot: &Slot, process: Process, exit: Exit) {
        if lock(&slot.record).process != Some(process) {
            return; // an old VMM's exit, already accounted for
        }
        *lock(&slot.pidfd) = None;
        let requested = slot.stopping.swap(false, Ordering::SeqCst);
        let dir = self.run_dir(id);
        let last = last_exit_line(&dir.join(VMM_LOG));
        let (state, reason) = classify(requested, &exit, last.as_deref());
        let reason = if state == State::Error {
            let console = tail_lines(&dir.join(CONSOLE_LOG), REASON_TAIL_LINES).join("\n");
            Some(format!("{reason}\nconsole:\n{console}"))
        } else {
            Some(reason)
        };
        if state == State::Error {
            self.counters
                .vmm_exits_failed
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters
                .vmm_exits_clean
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(c) = &self.cgroups {
            c.remove(id);
        }
        self.update(id, slot, |r| {
            r.state = state;
            r.reason = reason;
            r.process = None;
        });
        slot.exits.send_modify(|n| *n += 1);
    }

    /// Takes back a VMM that was running when hostd last stopped.
    async fn adopt(&self, id: &str, slot: &Arc<Slot>) {
        let (state, process) = {
            let r = lock(&slot.record);
            (r.state, r.process)
        };
        let Some(process) = process.filter(|_| state.has_process()) else {
            return;
        };
        let ours = process::is_alive(&process)
            && std::fs::read(format!("/proc/{}/cmdline", process.pid)).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains(&*self.run_dir(id).to_string_lossy())
            });
        let pidfd = if ours {
            PidFd::open(process.pid).ok()
        } else {
            None
        };
        let Some(pidfd) = pidfd.map(Arc::new) else {
            self.on_exit(id, slot, process, Exit::Unknown);
            return;
        };
        *lock(&slot.pidfd) = Some(pidfd.clone());
        self.counters.adopted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(instance = id, pid = process.pid, "re-adopted a running VMM");
        self.watch_exit(id, slot, process, pidfd);
        let socket = self.run_dir(id).join(API_SOCKET);
        let now = match vmm::api_client::request_within(
            Duration::from_secs(5),
            &socket,
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
            _ => state,
        };
        self.update(id, slot, |r| {
            if r.process == Some(process) {
                r.state = now;
            }
        });
    }

    /// Stops the instance's VMM: gracefully (the guest is asked to shut down,
    /// and stopped hard after the timeout) or at once.
    pub async fn stop(
        &self,
        id: &str,
        hard: bool,
        timeout: Option<Duration>,
    ) -> Result<Instance, OpError> {
        let slot = self.slot(id)?;
        if hard {
            // Never behind a stuck operation: the VMM goes now.
            self.terminate_now(id, &slot);
        }
        let _op = slot.op.lock().await;
        let result = match self.stop_locked(id, &slot, hard, timeout).await {
            // Killed before its turn: stopped, as asked.
            Err(OpError::Conflict(_)) if hard && !lock(&slot.record).state.has_process() => Ok(()),
            other => other,
        };
        slot.terminating.store(false, Ordering::SeqCst);
        result?;
        let record = lock(&slot.record).clone();
        Ok(record)
    }

    async fn stop_locked(
        &self,
        id: &str,
        slot: &Arc<Slot>,
        hard: bool,
        timeout: Option<Duration>,
    ) -> Result<(), OpError> {
        // Before the state is read: an exit recorded after it still ends
        // the wait below.
        let mut exits = slot.exits.subscribe();
        let state = lock(&slot.record).state;
        if !state.has_process() {
            return Err(OpError::Conflict(format!(
                "instance {id:?} is {}",
                state.as_str()
            )));
        }
        let Some(pidfd) = lock(&slot.pidfd).clone() else {
            return Err(OpError::Internal(format!(
                "instance {id:?} has no VMM to stop"
            )));
        };
        let timeout = timeout.unwrap_or(self.config.stop_timeout);
        slot.stopping.store(true, Ordering::SeqCst);
        self.update(id, slot, |r| r.state = State::Stopping);
        let mut graceful = !hard;
        if graceful {
            let socket = self.run_dir(id).join(API_SOCKET);
            let body = format!(r#"{{"timeout_ms": {}}}"#, timeout.as_millis());
            graceful = matches!(
                vmm::api_client::request_within(
                    Duration::from_secs(10),
                    &socket,
                    Method::PUT,
                    "/vm/actions/shutdown",
                    Some(&body)
                )
                .await,
                Ok((202, _))
            );
        }
        let wait = if graceful {
            timeout + KILL_GRACE
        } else {
            Duration::ZERO
        };
        if tokio::time::timeout(wait, exits.changed()).await.is_err() {
            if let Err(e) = pidfd.signal(libc::SIGKILL) {
                tracing::warn!(instance = id, "killing the VMM: {e}");
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), exits.changed()).await;
        }
        Ok(())
    }

    pub async fn reboot(&self, id: &str, hard: bool) -> Result<Instance, OpError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        self.stop_locked(id, &slot, hard, None).await?;
        self.launch(id, &slot).await?;
        let record = lock(&slot.record).clone();
        Ok(record)
    }

    /// Pauses or resumes the guest's vCPUs.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<Instance, OpError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        let (from, to, word) = if paused {
            (State::Running, State::Paused, "paused")
        } else {
            (State::Paused, State::Running, "running")
        };
        let state = lock(&slot.record).state;
        if state != from {
            return Err(OpError::Conflict(format!(
                "instance {id:?} is {}, not {}",
                state.as_str(),
                from.as_str()
            )));
        }
        let socket = self.run_dir(id).join(API_SOCKET);
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
                self.update(id, &slot, |r| r.state = to);
                let record = lock(&slot.record).clone();
                Ok(record)
            }
            Ok((code, body)) => Err(OpError::Internal(format!(
                "VMM answered {code}: {}",
                String::from_utf8_lossy(&body)
            ))),
            Err(e) => Err(OpError::Internal(e.to_string())),
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), OpError> {
        let slot = self.slot(id)?;
        // Never behind a stuck operation: the VMM goes now.
        self.terminate_now(id, &slot);
        let _op = slot.op.lock().await;
        match self.stop_locked(id, &slot, true, None).await {
            // No VMM (any more: the kill above may have ended it).
            Ok(()) | Err(OpError::Conflict(_)) => {}
            Err(e) => {
                // Not deleted: later starts may run.
                slot.terminating.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        self.forget(id);
        let _ = self.events.send(Event {
            instance: id.to_owned(),
            state: "deleted".into(),
            reason: None,
            at: now_secs(),
        });
        tracing::info!(instance = id, "deleted");
        Ok(())
    }

    /// The last `n` lines of the instance's console.
    pub fn console_tail(&self, id: &str, n: usize) -> Result<Vec<String>, OpError> {
        self.slot(id)?;
        Ok(tail_lines(&self.run_dir(id).join(CONSOLE_LOG), n))
    }

    pub fn console_path(&self, id: &str) -> Result<PathBuf, OpError> {
        self.slot(id)?;
        Ok(self.run_dir(id).join(CONSOLE_LOG))
    }

    /// The VMM's own metrics (exits, memory), as JSON.
    pub async fn vmm_metrics(&self, id: &str) -> Result<serde_json::Value, OpError> {
        let slot = self.slot(id)?;
        if !lock(&slot.record).state.has_process() {
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

/// Makes a writable disk the jailed VMM's: the file itself (a symlink is
/// refused, not followed), and only a regular file or a block device. A disk
/// belongs to one instance at a time; it keeps this owner after the instance.
fn give_disk(path: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(std::io::Error::other("not a regular file or block device"));
    }
    std::os::unix::fs::fchown(&file, Some(uid), Some(uid))
}

/// The VMM configuration for an instance; with a run directory, its console,
/// control socket and reboot policy too.
fn vmm_config_file(spec: &InstanceSpec, dir: Option<&Path>) -> ConfigFile {
    let mut disks = Vec::new();
    let mut cmdline = spec.cmdline.clone().unwrap_or_default();
    if let Some(boot) = &spec.boot_disk {
        disks.push(vmm::config::DiskConfig {
            path: boot.clone(),
            read_only: false,
            serial: None,
            direct: true,
            queues: None,
            rate_limit: Default::default(),
        });
        cmdline = format!("{cmdline} root=/dev/vda").trim().to_owned();
    }
    disks.extend(spec.disks.iter().cloned());
    ConfigFile {
        kernel: spec.kernel.clone(),
        initramfs: spec.initramfs.clone(),
        cmdline: Some(cmdline),
        vcpus: Some(spec.vcpus),
        memory_mib: Some(spec.memory_mib),
        serial: Some(match dir {
            Some(d) => SerialConfig {
                mode: SerialMode::File,
                path: Some(d.join(CONSOLE_LOG)),
            },
            None => SerialConfig {
                mode: SerialMode::Off,
                path: None,
            },
        }),
        api_socket: dir.map(|d| d.join(API_SOCKET)),
        // A guest reboot stays inside the VMM: the instance keeps running.
        on_reboot: Some(RebootPolicy::Restart),
        rng: None,
        disks: (!disks.is_empty()).then_some(disks),
        nets: None,
        // The VMM's default, enforce; VIRGA_VMM_SECCOMP=log in hostd's
        // environment reaches every VMM it starts (diagnosis).
        seccomp: None,
        // Set by `launch` when VMMs are jailed.
        jail: None,
    }
}

fn net_config(nic: &crate::instance::NicSpec, fds: Vec<i32>, queues: Option<u16>) -> NetConfig {
    NetConfig {
        tap: fds.is_empty().then(|| nic.tap.clone()),
        fds,
        queues: queues.or(nic.queues),
        mac: nic.mac.clone(),
        vhost: nic.vhost,
        rate_limit: nic.rate_limit,
    }
}

/// What a VMM's exit means for its instance: (state, reason).
fn classify(requested: bool, exit: &Exit, last_line: Option<&str>) -> (State, String) {
    let said = last_line
        .and_then(|l| l.strip_prefix(vmm::EXIT_LINE))
        .and_then(|rest| rest.split_once(": "))
        .map(|(code, what)| (code.trim().parse::<i32>().ok(), what.to_owned()));
    // A VMM that failed before any VM ran (a bad configuration, a jail it could
    // not enter) said why on its last line, without the exit-line prefix.
    let early = last_line
        .filter(|_| said.is_none())
        .and_then(|l| l.strip_prefix("vmm: "));
    match (requested, exit, said) {
        (false, Exit::Code(c), None) if *c != 0 && early.is_some() => (
            State::Error,
            format!("VMM exited with status {c}: {}", early.unwrap_or_default()),
        ),
        (true, _, Some((_, what))) => (State::Shutoff, format!("stopped: {what}")),
        (true, Exit::Signal(s), None) => (
            State::Shutoff,
            format!("stopped (VMM killed by signal {s})"),
        ),
        (true, _, None) => (State::Shutoff, "stopped".into()),
        (false, Exit::Code(0), Some((_, what))) => (State::Shutoff, what),
        (false, Exit::Code(0), None) => (State::Shutoff, "the VMM exited".into()),
        (false, Exit::Code(c), Some((_, what))) => {
            (State::Error, format!("VMM exited with status {c}: {what}"))
        }
        (false, Exit::Code(c), None) => (State::Error, format!("VMM exited with status {c}")),
        (false, Exit::Signal(s), _) => (
            State::Error,
            format!(
                "VMM killed by signal {s}{}",
                if *s == libc::SIGKILL {
                    " (SIGKILL)"
                } else {
                    ""
                }
            ),
        ),
        (false, Exit::Unknown, Some((Some(0), what))) => (State::Shutoff, what),
        (false, Exit::Unknown, Some((_, what))) => (State::Error, format!("VMM failed: {what}")),
        (false, Exit::Unknown, None) => (
            State::Error,
            "VMM died without a word (killed or crashed; re-adopted, so its status is unknown)"
                .into(),
        ),
    }
}

/// The VMM's last line if the VMM wrote it (its exit line, or why it could not
/// start), not a line of its tracing output.
fn last_exit_line(log: &Path) -> Option<String> {
    tail_lines(log, 1).pop().filter(|l| l.starts_with("vmm: "))
}

/// The last `n` lines of a file (empty if it cannot be read); reads at most the
/// last 64 KiB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 << 10;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // a partial first line
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified() {
        let clean = Some("vmm: exit 0: guest powered off");
        let failed = Some("vmm: exit 1: guest triple fault on vCPU 0 (KVM_EXIT_SHUTDOWN)");
        assert_eq!(classify(false, &Exit::Code(0), clean).0, State::Shutoff);
        assert_eq!(classify(false, &Exit::Code(1), failed).0, State::Error);
        assert!(classify(false, &Exit::Code(1), failed)
            .1
            .contains("triple fault"));
        let (s, why) = classify(false, &Exit::Signal(9), None);
        assert_eq!(s, State::Error);
        assert!(why.contains("SIGKILL"), "{why}");
        assert_eq!(classify(true, &Exit::Signal(9), None).0, State::Shutoff);
        assert_eq!(classify(false, &Exit::Unknown, clean).0, State::Shutoff);
        assert_eq!(classify(false, &Exit::Unknown, failed).0, State::Error);
        assert_eq!(classify(false, &Exit::Unknown, None).0, State::Error);
        // A VMM that broke its seccomp filter says which thread and call.
        let seccomp =
            Some("vmm: exit 159: seccomp: the vcpu thread made a forbidden system call (59)");
        let (s, why) = classify(false, &Exit::Code(159), seccomp);
        assert_eq!(s, State::Error);
        assert_eq!(
            why,
            "VMM exited with status 159: seccomp: the vcpu thread made a forbidden system call (59)"
        );
        // One that could not start says why, without an exit line.
        let jail = Some("vmm: invalid configuration: jail: /img: not writable by uid 2000000");
        let (s, why) = classify(false, &Exit::Code(2), jail);
        assert_eq!(s, State::Error);
        assert_eq!(
            why,
            "VMM exited with status 2: invalid configuration: jail: /img: not writable by uid 2000000"
        );
        // Its other lines are no reason for a death it did not report.
        let (_, why) = classify(
            false,
            &Exit::Unknown,
            Some("vmm: serial console on /dev/pts/3"),
        );
        assert!(why.contains("without a word"), "{why}");
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert!(tail_lines(&p, 3).is_empty());
        std::fs::write(&p, "a\nb\r\nc\nd\n").unwrap();
        assert_eq!(tail_lines(&p, 2), vec!["c", "d"]);
        assert_eq!(tail_lines(&p, 10).len(), 4);
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, big).unwrap();
        assert_eq!(tail_lines(&p, 1), vec!["line 19999"]);
    }

    #[test]
    fn vmm_configs() {
        let spec = InstanceSpec {
            id: "a".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: Some("/k".into()),
            kernel_image: None,
            initramfs_image: None,
            disk_images: vec![],
            initramfs: None,
            cmdline: Some("console=ttyS0".into()),
            boot_disk: Some("/img".into()),
            disks: vec![],
            nics: vec![],
            metadata: Default::default(),
        };
        let f = vmm_config_file(&spec, Some(Path::new("/run/x")));
        assert_eq!(f.cmdline.as_deref(), Some("console=ttyS0 root=/dev/vda"));
        assert_eq!(f.disks.unwrap()[0].path, PathBuf::from("/img"));
        assert_eq!(f.api_socket, Some(PathBuf::from("/run/x/api.sock")));
        assert_eq!(f.on_reboot, Some(RebootPolicy::Restart));
    }
}
