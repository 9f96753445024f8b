//! The VMM's control loop: it owns the VM, hears from vCPUs and the API on one
//! channel, and decides how the process ends.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use hyper::StatusCode;

use crate::api::{ApiMessage, ApiReply, ApiRequest, DeviceInfo, MetricsReport, VmInfo, VmState};
use crate::config::{DiskConfig, NetConfig, RebootPolicy, VmConfig, MAX_DISKS, MAX_NICS};
use crate::console::Console;
use crate::metrics::{process_memory, ExitCounts};
use crate::pci::SharedPciDevice;
use crate::vcpu::VcpuExitReason;
use crate::vm::{HotplugError, Vm, VmError};

pub enum VmmEvent {
    VcpuExit {
        /// Which boot of the VM the vCPU belonged to; stale ones are ignored.
        boot: u64,
        vcpu: u8,
        reason: VcpuExitReason,
    },
    Api(ApiMessage),
    /// The guest let go of the device in `slot` (see `devices::pci_hotplug`).
    Ejected {
        boot: u64,
        slot: u8,
        device: SharedPciDevice,
    },
}

/// How the VMM ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered itself off.
    PowerOff,
    /// The guest rebooted and the policy is to exit.
    Reboot,
    /// The guest shut down when asked through the API.
    ShutDown,
    /// The guest ignored the shutdown request; the VMM stopped it.
    ShutdownTimedOut,
    TripleFault {
        vcpu: u8,
    },
    Error(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::PowerOff | Outcome::Reboot | Outcome::ShutDown | Outcome::ShutdownTimedOut => {
                0
            }
            Outcome::TripleFault { .. } | Outcome::Error(_) => 1,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::PowerOff => "guest powered off".into(),
            Outcome::Reboot => "guest rebooted; exiting (on_reboot: exit)".into(),
            Outcome::ShutDown => "guest shut down on request".into(),
            Outcome::ShutdownTimedOut => "guest did not shut down in time; stopped it".into(),
            Outcome::TripleFault { vcpu } => {
                format!("guest triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            Outcome::Error(e) => e.clone(),
        }
    }
}

pub struct Vmm {
    config: VmConfig,
    console: Console,
    events: Receiver<VmmEvent>,
    sender: Sender<VmmEvent>,
    boots: u64,
    /// The descriptors of devices plugged through the API, by device name;
    /// `config` names them by number, and they stay open for reboots.
    plugged_fds: BTreeMap<String, Vec<OwnedFd>>,
    /// Devices the guest was asked to let go of and has not yet: a reboot
    /// finishes the unplug.
    unplugging: BTreeSet<String>,
}

impl Vmm {
    pub fn new(
        config: VmConfig,
        console: Console,
        events: Receiver<VmmEvent>,
        sender: Sender<VmmEvent>,
    ) -> Self {
        Vmm {
            config,
            console,
            events,
            sender,
            boots: 0,
            plugged_fds: BTreeMap::new(),
            unplugging: BTreeSet::new(),
        }
    }

    /// Boots the guest (again, on reboot, if the policy says so) until it ends.
    pub fn run(mut self) -> Result<Outcome, VmError> {
        loop {
            self.boots += 1;
            let boot = self.boots;
            // A reboot finishes what the guest was asked to let go of.
            for id in std::mem::take(&mut self.unplugging) {
                self.forget_device(&id);
            }
            let sender = self.sender.clone();
            let ejects = self.sender.clone();
            let mut vm = Vm::start(
                &self.config,
                &self.console,
                move |vcpu, reason| {
                    // The receiver outlives every VM; a send can only fail at exit.
                    let _ = sender.send(VmmEvent::VcpuExit { boot, vcpu, reason });
                },
                move |slot, device| {
                    let _ = ejects.send(VmmEvent::Ejected { boot, slot, device });
                },
            )?;
            tracing::info!(boot, "guest started");
            let outcome = self.drive(&mut vm);
            vm.stop();
            // A partial last line (a prompt, a cut-off panic) is not lost.
            self.console.flush();
            match outcome {
                Outcome::Reboot if self.config.on_reboot == RebootPolicy::Restart => {
                    tracing::info!("guest rebooted; restarting it");
                }
                other => return Ok(other),
            }
        }
    }

    fn drive(&mut self, vm: &mut Vm) -> Outcome {
        let mut state = VmState::Running;
        let mut deadline: Option<Instant> = None;
        loop {
            let event = match deadline {
                Some(d) => match self
                    .events
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                {
                    Ok(e) => e,
                    Err(RecvTimeoutError::Timeout) => return Outcome::ShutdownTimedOut,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Outcome::Error("control channel closed".into())
                    }
                },
                None => match self.events.recv() {
                    Ok(e) => e,
                    Err(_) => return Outcome::Error("control channel closed".into()),
                },
            };
            match event {
                VmmEvent::VcpuExit { boot, .. } | VmmEvent::Ejected { boot, .. }
                    if boot != self.boots => {}
                VmmEvent::Ejected { slot, device, .. } => {
                    // The device stops its workers and gives back its
                    // interrupts as it goes.
                    drop(device);
                    if let Some(id) = vm.ejected(slot) {
                        tracing::info!(%id, slot, "the guest ejected a device");
                        self.forget_device(&id);
                    }
                }
                VmmEvent::VcpuExit { vcpu, reason, .. } => {
                    let shutting_down = state == VmState::ShuttingDown;
                    return match reason {
                        VcpuExitReason::PowerOff | VcpuExitReason::Reboot if shutting_down => {
                            Outcome::ShutDown
                        }
                        VcpuExitReason::PowerOff => Outcome::PowerOff,
                        VcpuExitReason::Reboot => Outcome::Reboot,
                        VcpuExitReason::TripleFault => Outcome::TripleFault { vcpu },
                        VcpuExitReason::Error(e) => Outcome::Error(format!("vCPU {vcpu}: {e}")),
                    };
                }
                VmmEvent::Api((request, reply)) => {
                    let answer = self.answer(vm, request, &mut state, &mut deadline);
                    // The client may have gone away; the state change stands.
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Drops device `id` from the configuration (so no later boot has it)
    /// and closes its descriptors.
    fn forget_device(&mut self, id: &str) {
        let named = |d: &Option<String>| d.as_deref() == Some(id);
        self.config.nets.retain(|n| !named(&n.id));
        self.config.disks.retain(|d| !named(&d.id));
        if id == "rng" {
            self.config.rng = false;
        }
        self.plugged_fds.remove(id);
        self.unplugging.remove(id);
    }

    /// The name of a device to plug: the one asked for, or `<prefix><N>`
    /// with the lowest N not taken.
    fn new_device_id(
        &self,
        vm: &Vm,
        asked: Option<String>,
        prefix: &str,
    ) -> Result<String, ApiReply> {
        let taken = |id: &str| vm.slot_of(id).is_some() || self.plugged_fds.contains_key(id);
        let id = match asked {
            Some(id) => id,
            None => (0..)
                .map(|n| format!("{prefix}{n}"))
                .find(|id| !taken(id))
                .unwrap_or_default(),
        };
        crate::config::check_device_id(&id).map_err(|e| bad_request(format!("id: {e}")))?;
        if taken(&id) {
            return Err(conflict(format!("a device named {id} exists")));
        }
        Ok(id)
    }

    /// Plugs a NIC: named `net<N>` unless the request names it, on the
    /// descriptors that came with the request (or its tap, opened here).
    fn add_net(
        &mut self,
        vm: &mut Vm,
        mut net: NetConfig,
        fds: Vec<OwnedFd>,
    ) -> Result<DeviceInfo, ApiReply> {
        if self.config.nets.len() >= MAX_NICS {
            return Err(conflict(format!("a guest has at most {MAX_NICS} NICs")));
        }
        let id = self.new_device_id(vm, net.id.take(), "net")?;
        if !fds.is_empty() {
            net.tap = None;
            net.fds = fds.iter().map(AsRawFd::as_raw_fd).collect();
        }
        check_slot(net.pci_slot)?;
        net.id = Some(id.clone());
        crate::config::validate_net(&mut net).map_err(|e| bad_request(e.to_string()))?;
        let started = Instant::now();
        plugged(vm.add_net(&net), &id)?;
        net.pci_slot = vm.slot_of(&id);
        tracing::info!(%id, slot = ?net.pci_slot, took = ?started.elapsed(), "NIC plugged");
        let info = DeviceInfo {
            id: id.clone(),
            pci_slot: net.pci_slot,
        };
        self.config.nets.push(net);
        self.plugged_fds.insert(id, fds);
        Ok(info)
    }

    /// Plugs a disk: named `disk<N>` unless the request names it, on the
    /// descriptors that came with the request (`[buffered]` or `[O_DIRECT,
    /// buffered]`), or at its path, opened here.
    fn add_disk(
        &mut self,
        vm: &mut Vm,
        mut disk: DiskConfig,
        fds: Vec<OwnedFd>,
    ) -> Result<DeviceInfo, ApiReply> {
        if self.config.disks.len() >= MAX_DISKS {
            return Err(conflict(format!("a guest has at most {MAX_DISKS} disks")));
        }
        if disk.base.is_some() || !disk.layers.is_empty() {
            return Err(bad_request(
                "base: a disk plugged at run time has its backing on descriptors".into(),
            ));
        }
        if fds.is_empty() && !(disk.fds.is_empty() && disk.backing_fds.is_empty()) {
            return Err(bad_request(
                "fds: positions among the descriptors sent with the request (SCM_RIGHTS); none came"
                    .into(),
            ));
        }
        let id = self.new_device_id(vm, disk.id.take(), "disk")?;
        match (fds.is_empty(), disk.path.as_os_str().is_empty()) {
            (false, true) if disk.fds.is_empty() && disk.backing_fds.is_empty() => {
                disk.fds = fds.iter().map(AsRawFd::as_raw_fd).collect()
            }
            (false, true) => {
                (disk.fds, disk.backing_fds) = place_fds(&fds, &disk.fds, &disk.backing_fds)?
            }
            (true, false) => {}
            (true, true) => {
                return Err(bad_request(
                    "path: a disk needs a path or descriptors".into(),
                ))
            }
            (false, false) => {
                return Err(bad_request(
                    "path: the descriptors sent are the disk; no path".into(),
                ))
            }
        }
        check_slot(disk.pci_slot)?;
        disk.id = Some(id.clone());
        crate::config::validate_disk(&mut disk, self.config.vcpus)
            .map_err(|e| bad_request(e.to_string()))?;
        let started = Instant::now();
        plugged(vm.add_disk(&disk, self.config.vcpus), &id)?;
        disk.pci_slot = vm.slot_of(&id);
        tracing::info!(%id, slot = ?disk.pci_slot, took = ?started.elapsed(), "disk plugged");
        let info = DeviceInfo {
            id: id.clone(),
            pci_slot: disk.pci_slot,
        };
        self.config.disks.push(disk);
        self.plugged_fds.insert(id, fds);
        Ok(info)
    }

    /// Moves disk `device` onto the files sent (a live snapshot froze its
    /// old ones): the device, and every later boot of this process.
    fn replace_disk_files(
        &mut self,
        vm: &mut Vm,
        device: &str,
        files: crate::api::FilesBody,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ApiReply> {
        if fds.is_empty() {
            return Err(bad_request(
                "fds: the disk's files come as descriptors with the request (SCM_RIGHTS)".into(),
            ));
        }
        let (own, backing) = if files.fds.is_empty() && files.backing_fds.is_empty() {
            (fds.iter().map(AsRawFd::as_raw_fd).collect(), Vec::new())
        } else {
            place_fds(&fds, &files.fds, &files.backing_fds)?
        };
        let at = self
            .config
            .disks
            .iter()
            .enumerate()
            .position(|(i, d)| d.id.clone().unwrap_or_else(|| format!("disk{i}")) == device)
            .ok_or_else(|| {
                ApiReply::Error(StatusCode::NOT_FOUND, format!("no disk named {device}"))
            })?;
        let mut config = self.config.disks[at].clone();
        let disk = crate::virtio::block::disk::Disk::from_fds(&own, &backing, config.read_only)
            .map_err(|e| bad_request(e.to_string()))?;
        vm.replace_disk(device, std::sync::Arc::new(disk))
            .map_err(|e| {
                use crate::virtio::block::ReplaceDiskError as R;
                use crate::vm::ReplaceError;
                let status = match &e {
                    ReplaceError::NoSuchDisk(_) | ReplaceError::Replace(_, R::NotADisk) => {
                        StatusCode::NOT_FOUND
                    }
                    ReplaceError::Replace(_, R::ReadOnly(_) | R::Smaller { .. }) => {
                        StatusCode::BAD_REQUEST
                    }
                    ReplaceError::Replace(_, R::Busy(_)) => StatusCode::SERVICE_UNAVAILABLE,
                    ReplaceError::Replace(_, R::Stopped | R::Flush(_)) => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                ApiReply::Error(status, e.to_string())
            })?;
        config.path = std::path::PathBuf::new();
        config.base = None;
        config.layers = Vec::new();
        (config.fds, config.backing_fds) = (own, backing);
        self.config.disks[at] = config;
        // The old descriptors (if plugged) close; the device holds its own.
        self.plugged_fds.insert(device.to_owned(), fds);
        Ok(())
    }

    fn answer(
        &mut self,
        vm: &mut Vm,
        request: ApiRequest,
        state: &mut VmState,
        deadline: &mut Option<Instant>,
    ) -> ApiReply {
        let shutting_down =
            |what: &str| conflict(format!("cannot {what}: the guest is shutting down"));
        match request {
            ApiRequest::Describe => ApiReply::Info(Box::new(VmInfo {
                state: *state,
                uptime_ms: vm.uptime().as_millis() as u64,
                boots: self.boots,
                config: self.config.clone(),
                rate_limits: vm.rate_limits().into_iter().collect(),
            })),
            ApiRequest::Metrics => {
                let per_vcpu = vm.exit_counts();
                ApiReply::Metrics(Box::new(MetricsReport {
                    uptime_ms: vm.uptime().as_millis() as u64,
                    boot_started_monotonic_us: vm.started_monotonic().as_micros() as u64,
                    vcpu_exits: per_vcpu
                        .iter()
                        .copied()
                        .fold(ExitCounts::default(), |a, b| a + b),
                    per_vcpu_exits: per_vcpu,
                    memory: process_memory(),
                    guest_memory_kib: self.config.memory_bytes() >> 10,
                }))
            }
            ApiRequest::SetState(_) if *state == VmState::ShuttingDown => {
                shutting_down("change state")
            }
            ApiRequest::SetState(VmState::Paused) => {
                if *state == VmState::Running {
                    if let Err(e) = vm.pause() {
                        vm.resume();
                        return ApiReply::Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                    }
                    *state = VmState::Paused;
                    // What the guest wrote before the pause is in the log
                    // when the pause is acknowledged: a partial line would
                    // otherwise appear up to 100 ms later, as if written
                    // while paused.
                    self.console.flush();
                    tracing::info!("guest paused");
                }
                ApiReply::NoContent
            }
            ApiRequest::SetState(_) => {
                if *state == VmState::Paused {
                    vm.resume();
                    *state = VmState::Running;
                    tracing::info!("guest resumed");
                }
                ApiReply::NoContent
            }
            ApiRequest::SetRateLimit { device, limit } => match vm.set_rate_limit(&device, limit) {
                Ok(()) => {
                    tracing::info!(%device, ?limit, "rate limit changed");
                    ApiReply::NoContent
                }
                Err(e @ crate::vm::RateLimitError::NoSuchDevice(_)) => {
                    ApiReply::Error(StatusCode::NOT_FOUND, e.to_string())
                }
                Err(e) => ApiReply::Error(StatusCode::CONFLICT, e.to_string()),
            },
            ApiRequest::AddNet { .. } if *state == VmState::ShuttingDown => {
                shutting_down("plug a NIC")
            }
            ApiRequest::AddNet { net, fds } => match self.add_net(vm, net, fds) {
                Ok(info) => ApiReply::Device(info),
                Err(reply) => reply,
            },
            ApiRequest::AddDisk { .. } if *state == VmState::ShuttingDown => {
                shutting_down("plug a disk")
            }
            ApiRequest::AddDisk { disk, fds } => match self.add_disk(vm, *disk, fds) {
                Ok(info) => ApiReply::Device(info),
                Err(reply) => reply,
            },
            ApiRequest::RemoveDevice(_) if *state == VmState::ShuttingDown => {
                shutting_down("unplug a device")
            }
            ApiRequest::RemoveDevice(id) => match vm.unplug(&id) {
                Ok(()) => {
                    tracing::info!(%id, "asked the guest to let go of a device");
                    self.unplugging.insert(id);
                    ApiReply::Accepted
                }
                Err(e @ HotplugError::NoSuchDevice(_)) => {
                    ApiReply::Error(StatusCode::NOT_FOUND, e.to_string())
                }
                Err(e) => ApiReply::Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            ApiRequest::ReplaceDiskFiles { .. } if *state == VmState::ShuttingDown => {
                shutting_down("move a disk")
            }
            ApiRequest::ReplaceDiskFiles { device, files, fds } => {
                let started = Instant::now();
                match self.replace_disk_files(vm, &device, files, fds) {
                    Ok(()) => {
                        tracing::info!(%device, took = ?started.elapsed(), "disk moved to new files");
                        ApiReply::NoContent
                    }
                    Err(reply) => reply,
                }
            }
            ApiRequest::ResizeDisk { device, bytes } => match vm.resize_disk(&device, bytes) {
                Ok(()) => {
                    tracing::info!(%device, bytes, "disk grown");
                    ApiReply::NoContent
                }
                Err(e) => {
                    use crate::virtio::block::disk::GrowError;
                    use crate::vm::ResizeError;
                    let status = match &e {
                        ResizeError::NoSuchDisk(_) => StatusCode::NOT_FOUND,
                        ResizeError::Grow(GrowError::Unaligned(_) | GrowError::Shrink { .. }) => {
                            StatusCode::BAD_REQUEST
                        }
                        ResizeError::Grow(GrowError::ReadOnly | GrowError::BlockDevice { .. }) => {
                            StatusCode::CONFLICT
                        }
                        ResizeError::Grow(GrowError::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    ApiReply::Error(status, e.to_string())
                }
            },
            ApiRequest::Shutdown { .. } if *state == VmState::ShuttingDown => {
                shutting_down("shut down")
            }
            ApiRequest::Shutdown { timeout, signal } => {
                if *state == VmState::Paused {
                    vm.resume();
                }
                vm.request_shutdown(signal);
                *state = VmState::ShuttingDown;
                *deadline = Some(Instant::now() + timeout);
                tracing::info!(?timeout, ?signal, "shutdown requested");
                ApiReply::Accepted
            }
        }
    }
}

fn conflict(message: String) -> ApiReply {
    ApiReply::Error(StatusCode::CONFLICT, message)
}

fn bad_request(message: String) -> ApiReply {
    ApiReply::Error(StatusCode::BAD_REQUEST, message)
}

/// A plug request's descriptors by the positions it gave them: the disk's
/// own and its backing's, each of those sent used once.
fn place_fds(
    sent: &[OwnedFd],
    own: &[i32],
    backing: &[i32],
) -> Result<(Vec<i32>, Vec<i32>), ApiReply> {
    let mut used = vec![false; sent.len()];
    let mut pick = |positions: &[i32]| -> Result<Vec<i32>, ApiReply> {
        positions
            .iter()
            .map(|&p| {
                let at = usize::try_from(p)
                    .ok()
                    .filter(|&at| at < sent.len() && !used[at])
                    .ok_or_else(|| {
                        bad_request(format!(
                            "fds: {p} is not the position of an unused descriptor of the {} sent",
                            sent.len()
                        ))
                    })?;
                used[at] = true;
                Ok(sent[at].as_raw_fd())
            })
            .collect()
    };
    let (own, backing) = (pick(own)?, pick(backing)?);
    if used.contains(&false) {
        return Err(bad_request(
            "fds: a descriptor sent is neither the disk's nor its backing's".into(),
        ));
    }
    Ok((own, backing))
}

fn check_slot(slot: Option<u8>) -> Result<(), ApiReply> {
    match slot {
        Some(s) => {
            crate::config::check_pci_slot(s).map_err(|e| bad_request(format!("pci_slot: {e}")))
        }
        None => Ok(()),
    }
}

/// A plug's outcome as the API answers it.
fn plugged(result: Result<(), HotplugError>, id: &str) -> Result<(), ApiReply> {
    match result {
        Ok(()) => Ok(()),
        Err(e @ (HotplugError::Exists(_) | HotplugError::Slot(_))) => Err(conflict(e.to_string())),
        Err(e @ HotplugError::Device(_)) => Err(bad_request(e.to_string())),
        Err(e) => {
            // On the bus already; the guest sees it when it next looks.
            tracing::warn!(%id, "plugged, but {e}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plug_descriptors_are_placed_by_position_each_used_once() {
        let sent: Vec<OwnedFd> = (0..3)
            .map(|_| tempfile::tempfile().unwrap().into())
            .collect();
        let raw: Vec<i32> = sent.iter().map(AsRawFd::as_raw_fd).collect();
        let (own, backing) = place_fds(&sent, &[0, 1], &[2]).unwrap();
        assert_eq!((own, backing), (raw[..2].to_vec(), vec![raw[2]]));
        let (own, backing) = place_fds(&sent, &[2], &[0, 1]).unwrap();
        assert_eq!((own, backing), (vec![raw[2]], raw[..2].to_vec()));
        for (own, backing) in [
            (&[0, 1][..], &[1][..]), // used twice
            (&[0, 1], &[3]),         // none sent there
            (&[-1, 1], &[2]),        // no such position
            (&[0], &[1]),            // one left over
        ] {
            assert!(
                place_fds(&sent, own, backing).is_err(),
                "{own:?} {backing:?}"
            );
        }
    }
}
