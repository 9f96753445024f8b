//! Building a VM is a linear recipe (KVM, memory, irqchip, boot data, devices,
//! vCPUs), each step failing with its own [`VmError`] variant. The result owns
//! everything the guest runs on.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::coalesced_pio::{CoalescedPort, CoalescedRing};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::acpi::{AcpiError, AcpiTables};
use crate::api::ShutdownSignal;
use crate::boot::{self, BootError};
use crate::config::{DiskConfig, NetConfig, VmConfig};
use crate::console::Console;
use crate::cpu::{cpuid, regs};
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::ged::{self, Ged};
use crate::devices::i8042::{self, I8042};
use crate::devices::irq::{IrqLine, KvmLevelLine};
use crate::devices::pci_hotplug::{self, PciHotplug};
use crate::devices::rtc::{self, Rtc};
use crate::devices::serial::{self, SerialDevice};
use crate::devices::{lock, Bus, BusDevice, OverlapError};
use crate::interrupts::GsiRouter;
use crate::layout::{ECAM_BASE, PCI_MMIO_END, PCI_MMIO_START};
use crate::memory::GuestRam;
use crate::metrics::{ExitCounts, VcpuMetrics};
use crate::pci::{
    BarWindow, ConfigPorts, EcamWindow, PciBus, SharedPciDevice, SlotError, CONFIG_PORTS_BASE,
    CONFIG_PORTS_LEN, ECAM_SIZE,
};
use crate::rate_limiter::{RateLimit, RateLimiter, SharedRateLimiter};
use crate::vcpu::{ExitSink, GateTimeout, RunGate, Vcpu, VcpuExitReason, VcpuSet};
use crate::virtio::block::{disk::Disk, Block};
use crate::virtio::net::tap::{Tap, TapError};
use crate::virtio::net::{parse_mac, Net};
use crate::virtio::pci::{TransportError, VirtioPciDevice, BAR_SIZE};
use crate::virtio::rng::Rng;

/// Intel VMX needs a 3-page TSS region inside guest-physical space; it sits in the
/// MMIO hole, where no RAM is.
const TSS_ADDR: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error(transparent)]
    Vcpus(#[from] GateTimeout),
    #[error("writing back a disk's metadata: {0}")]
    Flush(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("mapping KVM's coalesced I/O ring: {0}")]
    CoalescedRing(std::io::Error),
    #[error("KVM lacks {0}, which this VMM needs")]
    MissingCapability(&'static str),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Smbios(#[from] crate::smbios::SmbiosError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("vCPU {id}: {source}")]
    VcpuSetup { id: u8, source: regs::RegsError },
    #[error("creating device interrupt: {0}")]
    Irq(std::io::Error),
    #[error(transparent)]
    Routing(#[from] crate::interrupts::InterruptError),
    #[error(transparent)]
    Bus(#[from] OverlapError),
    #[error("starting vCPU thread: {0}")]
    SpawnVcpu(std::io::Error),
    #[error("virtio device: {0}")]
    Virtio(#[from] TransportError),
    #[error("PCI: {0}")]
    Pci(String),
    #[error(transparent)]
    Disk(#[from] crate::virtio::block::disk::DiskError),
    #[error(transparent)]
    Tap(#[from] TapError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("a device named {0} exists")]
    Exists(String),
    #[error("no device named {0}")]
    NoSuchDevice(String),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Device(#[from] Box<VmError>),
    #[error("interrupting the guest: {0}")]
    Notify(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("no disk named {0}")]
    NoSuchDisk(String),
    #[error(transparent)]
    Grow(#[from] crate::virtio::block::disk::GrowError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error("no disk named {0}")]
    NoSuchDisk(String),
    #[error("disk {0}: {1}")]
    Replace(String, #[source] crate::virtio::block::ReplaceDiskError),
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("no device named {0} (disks are disk0.., NICs net0..)")]
    NoSuchDevice(String),
    #[error("{0} moves packets through vhost-net, which no limit can hold back")]
    Bypassed(String),
}

/// A VM whose vCPUs are running.
pub struct Vm {
    // Field order is drop order: vCPU threads are stopped explicitly first (see
    // `stop`), then the VM goes, then the memory it mapped.
    vcpus: Option<VcpuSet>,
    i8042: Arc<Mutex<I8042>>,
    ged: Arc<Mutex<Ged>>,
    hotplug: Arc<Mutex<PciHotplug>>,
    metrics: Vec<Arc<VcpuMetrics>>,
    started: Instant,
    /// `started` on CLOCK_MONOTONIC, which other processes can read too.
    started_monotonic: std::time::Duration,
    limiters: Limiters,
    /// Every disk by name: a pause writes back the overlays' metadata, and
    /// a disk grows here.
    disks: Disks,
    /// Each device's name and PCI slot.
    slots: DeviceSlots,
    router: Arc<GsiRouter>,
    memory: vm_memory::GuestMemoryMmap,
    // PCI devices stop their workers when dropped, before the memory goes.
    pci: Arc<PciBus>,
    _vm: Arc<VmFd>,
    _kvm: Kvm,
    _memory: GuestRam,
}

impl Vm {
    /// Builds and starts a VM. `on_exit` hears from any vCPU that stops on its own.
    /// `on_eject` hears of each device the guest let go of (see
    /// `devices::pci_hotplug`), and is handed the device to drop.
    pub fn start(
        config: &VmConfig,
        console: &Console,
        on_exit: impl Fn(u8, VcpuExitReason) + Send + Clone + 'static,
        on_eject: impl Fn(u8, SharedPciDevice) + Send + 'static,
    ) -> Result<Vm, VmError> {
        let build_started = Instant::now();
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::UserMemory, "user memory regions"),
            (Cap::Irqfd, "irqfd"),
            (Cap::Pit2, "an in-kernel PIT"),
            (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
            (Cap::ImmediateExit, "immediate_exit"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }

        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm.set_tss_address(TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        // The dummy speaker lets KVM answer port 0x61 itself.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let ram = create_memory(&vm, config)?;
        let memory = ram.memory();

        let acpi = AcpiTables::build(config.vcpus)?;
        acpi.write_to(memory)?;
        crate::smbios::write_to(memory, &config.smbios)?;
        let load_started = Instant::now();
        let entry = boot::load(memory, config, acpi.rsdp_addr)?;
        tracing::debug!(elapsed = ?load_started.elapsed(), mode = ?entry.mode, "kernel, initramfs and command line loaded");
        regs::write_boot_tables(memory, entry.mode)
            .map_err(|source| VmError::VcpuSetup { id: 0, source })?;

        let (mut pio, i8042, ged, tx_coalescing) = create_devices(&kvm, &vm, console)?;
        let router = Arc::new(GsiRouter::new(vm.clone()));
        router.ioapic_only(ged::GSI)?;
        let pci = Arc::new(PciBus::new());
        let (limiters, disks, slots) = create_pci(config, memory, &router, &pci)?;
        pio.insert(
            CONFIG_PORTS_BASE,
            CONFIG_PORTS_LEN,
            Arc::new(Mutex::new(ConfigPorts::new(pci.clone()))),
        )?;
        let hotplug = Arc::new(Mutex::new(PciHotplug::new(pci.clone(), Box::new(on_eject))));
        pio.insert(
            pci_hotplug::BASE,
            pci_hotplug::LEN,
            hotplug.clone() as Arc<Mutex<dyn BusDevice>>,
        )?;
        let pio = Arc::new(pio);
        let mut mmio = Bus::default();
        mmio.insert(
            ECAM_BASE,
            ECAM_SIZE,
            Arc::new(Mutex::new(EcamWindow(pci.clone()))),
        )?;
        mmio.insert(
            PCI_MMIO_START,
            PCI_MMIO_END - PCI_MMIO_START,
            Arc::new(Mutex::new(BarWindow {
                bus: pci.clone(),
                base: PCI_MMIO_START,
            })),
        )?;
        let mmio = Arc::new(mmio);

        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let gate = Arc::new(RunGate::new(usize::from(config.vcpus)));
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        let mut metrics = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut cpuid = base_cpuid.clone();
            cpuid::customize(&mut cpuid, id, config.vcpus, tsc_deadline);
            let setup = |source| VmError::VcpuSetup { id, source };
            fd.set_cpuid2(&cpuid).map_err(|source| {
                setup(regs::RegsError::Kvm {
                    what: "KVM_SET_CPUID2",
                    source,
                })
            })?;
            regs::setup_xcr0(&fd, cpuid::xcr0_offered(&cpuid));
            regs::setup_fpu_and_msrs(&fd).map_err(setup)?;
            regs::setup_lapic(&fd).map_err(setup)?;
            // Application processors wait for INIT/SIPI from the boot CPU; KVM
            // resets their registers then, so only the boot CPU gets boot state.
            if id == 0 {
                regs::setup_boot_vcpu(
                    &fd,
                    entry.mode,
                    entry.entry,
                    crate::layout::PVH_START_INFO_ADDR,
                )
                .map_err(setup)?;
            }
            let m = Arc::new(VcpuMetrics::default());
            metrics.push(m.clone());
            let sink = on_exit.clone();
            let coalesced = match &tx_coalescing {
                Some(port) => Some((
                    CoalescedRing::map(&fd).map_err(VmError::CoalescedRing)?,
                    port.clone(),
                )),
                None => None,
            };
            vcpus.push(Vcpu {
                id,
                fd,
                coalesced,
                pio: pio.clone(),
                mmio: mmio.clone(),
                gate: gate.clone(),
                metrics: m,
                on_exit: Box::new(sink) as ExitSink,
            });
        }

        tracing::debug!(elapsed = ?build_started.elapsed(), "VM built");
        let started = Instant::now();
        let started_monotonic = monotonic_now();
        let mut threads = Vec::with_capacity(vcpus.len());
        let mut spawn_error = None;
        for v in vcpus {
            match v.spawn() {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let set = VcpuSet::new(gate, threads);
        if let Some(e) = spawn_error {
            set.stop();
            return Err(VmError::SpawnVcpu(e));
        }
        Ok(Vm {
            vcpus: Some(set),
            i8042,
            ged,
            hotplug,
            metrics,
            started,
            started_monotonic,
            limiters,
            disks,
            slots,
            router,
            memory: memory.clone(),
            pci,
            _memory: ram,
            _vm: vm,
            _kvm: kvm,
        })
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// When this boot's vCPUs were started, on CLOCK_MONOTONIC: a boot-time
    /// tool that started the VMM reads the same clock and splits the VMM's
    /// setup from the guest's boot.
    pub fn started_monotonic(&self) -> std::time::Duration {
        self.started_monotonic
    }

    pub fn pause(&self) -> Result<(), PauseError> {
        // Generous for a starved host, yet under hostd's 10 s request limit
        // so a stuck vCPU is reported by the VMM rather than as a timeout.
        if let Some(v) = &self.vcpus {
            v.pause(std::time::Duration::from_secs(5))?;
        }
        // A paused guest's disks are copied as they are (a server
        // snapshot): an overlay's metadata must be in its file, not only
        // in the VMM's cache.
        for (_, disk) in self.disks.iter().filter(|(_, d)| d.is_overlay()) {
            disk.flush().map_err(PauseError::Flush)?;
        }
        Ok(())
    }

    pub fn resume(&self) {
        if let Some(v) = &self.vcpus {
            v.resume();
        }
    }

    /// Asks the guest to shut down, the way `signal` says.
    pub fn request_shutdown(&self, signal: ShutdownSignal) {
        match signal {
            ShutdownSignal::CtrlAltDel => lock(&self.i8042).send_ctrl_alt_del(),
            ShutdownSignal::PowerButton => {
                if let Err(e) = lock(&self.ged).notify(ged::POWER_BUTTON) {
                    tracing::warn!("pressing the power button: {e}");
                }
            }
        }
    }

    /// Replaces device `name`'s rate limit.
    pub fn set_rate_limit(&self, name: &str, limit: RateLimit) -> Result<(), RateLimitError> {
        let (_, limiter) = self
            .limiters
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| RateLimitError::NoSuchDevice(name.to_owned()))?;
        let mut l = lock(limiter);
        if l.bypassed && !limit.is_unlimited() {
            return Err(RateLimitError::Bypassed(name.to_owned()));
        }
        l.set(limit, Instant::now());
        Ok(())
    }

    /// Every limited device's current limit.
    pub fn rate_limits(&self) -> Vec<(String, RateLimit)> {
        self.limiters
            .iter()
            .map(|(n, l)| (n.clone(), lock(l).limit()))
            .collect()
    }

    /// Plugs a NIC (named, and given a slot, by the caller) into the
    /// running guest: it is on the bus at once, and the guest is told to
    /// look.
    pub fn add_net(&mut self, net: &NetConfig) -> Result<(), HotplugError> {
        let id = net.id.clone().unwrap_or_default();
        self.check_new(&id)?;
        let (device, limiter) = net_device(net).map_err(Box::new)?;
        self.plug(id, net.pci_slot, device, limiter)
    }

    /// Plugs a disk (named by the caller) into the running guest.
    pub fn add_disk(&mut self, d: &DiskConfig, vcpus: u8) -> Result<(), HotplugError> {
        let id = d.id.clone().unwrap_or_default();
        self.check_new(&id)?;
        let disk = Arc::new(open_disk(d).map_err(Box::new)?);
        let (device, limiter) = block_device(d, disk.clone(), &id, vcpus);
        let plugged = self.plug(id.clone(), d.pci_slot, device, limiter);
        // On the bus (the guest perhaps not told yet): a pause flushes it.
        if let Ok(()) | Err(HotplugError::Notify(_)) = &plugged {
            self.disks.push((id, disk));
        }
        plugged
    }

    fn check_new(&self, id: &str) -> Result<(), HotplugError> {
        if self.slots.iter().any(|(d, _)| d == id) {
            return Err(HotplugError::Exists(id.to_owned()));
        }
        Ok(())
    }

    /// Puts `device` in `slot` (or the lowest free one) and tells the guest.
    fn plug(
        &mut self,
        id: String,
        slot: Option<u8>,
        device: Box<dyn crate::virtio::VirtioDevice>,
        limiter: SharedRateLimiter,
    ) -> Result<(), HotplugError> {
        let slot = match slot {
            Some(s) => s,
            None => self.pci.free_slot()?,
        };
        let dev = VirtioPciDevice::new(
            device,
            self.memory.clone(),
            self.router.clone(),
            bar_for(slot),
        )
        .map_err(|e| Box::new(VmError::from(e)))?;
        self.pci
            .add_at(slot, Arc::new(Mutex::new(dev)) as SharedPciDevice)?;
        self.limiters.push((id.clone(), limiter));
        self.slots.push((id, slot));
        lock(&self.hotplug).plugged(slot);
        lock(&self.ged)
            .notify(ged::PCI_HOTPLUG)
            .map_err(HotplugError::Notify)
    }

    /// Asks the guest to let go of device `id`; it is gone once the guest
    /// ejects it (see [`Vm::ejected`]).
    pub fn unplug(&mut self, id: &str) -> Result<(), HotplugError> {
        let slot = self
            .slot_of(id)
            .ok_or_else(|| HotplugError::NoSuchDevice(id.to_owned()))?;
        lock(&self.hotplug).unplug_requested(slot);
        lock(&self.ged)
            .notify(ged::PCI_HOTPLUG)
            .map_err(HotplugError::Notify)
    }

    /// Grows disk `id` to `bytes` and tells the guest, which sees the new
    /// size at once (Linux: "new size" in its log, and a change uevent).
    pub fn resize_disk(&self, id: &str, bytes: u64) -> Result<(), ResizeError> {
        let (_, disk) = self
            .disks
            .iter()
            .find(|(d, _)| d == id)
            .ok_or_else(|| ResizeError::NoSuchDisk(id.to_owned()))?;
        let before = disk.capacity();
        disk.grow(bytes)?;
        if disk.capacity() != before {
            if let Some(device) = self.slot_of(id).and_then(|s| self.pci.get(s)) {
                lock(&device).device_config_changed();
            }
        }
        Ok(())
    }

    /// Serves disk `id` from `disk`'s files from now on (see
    /// [`crate::virtio::block::Block`]'s `replace_disk`).
    pub fn replace_disk(&mut self, id: &str, disk: Arc<Disk>) -> Result<(), ReplaceError> {
        let no_such = || ReplaceError::NoSuchDisk(id.to_owned());
        let device = self
            .slot_of(id)
            .and_then(|s| self.pci.get(s))
            .ok_or_else(no_such)?;
        let entry = self
            .disks
            .iter_mut()
            .find(|(d, _)| d == id)
            .ok_or_else(no_such)?;
        let mut device = lock(&device);
        let grew = device
            .virtio_mut()
            .ok_or_else(no_such)?
            .replace_disk(disk.clone())
            .map_err(|e| ReplaceError::Replace(id.to_owned(), e))?;
        if grew {
            device.device_config_changed();
        }
        entry.1 = disk;
        Ok(())
    }

    /// The PCI slot of device `id`.
    pub fn slot_of(&self, id: &str) -> Option<u8> {
        self.slots.iter().find(|(d, _)| d == id).map(|(_, s)| *s)
    }

    /// The guest ejected the device in `slot` (already off the bus): forgets
    /// it and returns its name.
    pub fn ejected(&mut self, slot: u8) -> Option<String> {
        let at = self.slots.iter().position(|(_, s)| *s == slot)?;
        let (id, _) = self.slots.remove(at);
        self.limiters.retain(|(d, _)| *d != id);
        self.disks.retain(|(d, _)| *d != id);
        Some(id)
    }

    pub fn exit_counts(&self) -> Vec<ExitCounts> {
        self.metrics.iter().map(|m| m.snapshot()).collect()
    }

    /// Stops the vCPUs; the guest is gone after this.
    pub fn stop(&mut self) {
        if let Some(v) = self.vcpus.take() {
            v.stop();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn create_memory(vm: &VmFd, config: &VmConfig) -> Result<GuestRam, VmError> {
    let ram = GuestRam::new(config.memory_bytes())?;
    for (slot, region) in ram.memory().iter().enumerate() {
        let mapping = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live anonymous mapping of exactly `memory_size`
        // bytes owned by `ram`, which the Vm drops only after the KVM VM (and so the
        // slot) is gone.
        unsafe { vm.set_user_memory_region(mapping) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(ram)
}

/// Rate limiters by device name (`disk0`, `net0`, ...), for the control API.
pub type Limiters = Vec<(String, SharedRateLimiter)>;
/// PCI slots by device name.
type DeviceSlots = Vec<(String, u8)>;
/// Disks by device name.
type Disks = Vec<(String, Arc<Disk>)>;

/// Where the BAR of the device in `slot` starts: each slot has its own
/// stretch of the window, so a device plugged later never meets another's.
fn bar_for(slot: u8) -> u64 {
    PCI_MMIO_START + u64::from(slot.saturating_sub(1)) * BAR_SIZE
}

/// A disk's file, at its path or on its descriptors.
fn open_disk(d: &DiskConfig) -> Result<Disk, VmError> {
    Ok(if d.fds.is_empty() {
        Disk::open(&d.path, d.base.as_deref(), &d.layers, d.read_only, d.direct)?
    } else {
        Disk::from_fds(&d.fds, &d.backing_fds, d.read_only)?
    })
}

/// A disk's virtio device and its rate limiter.
fn block_device(
    d: &DiskConfig,
    disk: Arc<Disk>,
    id: &str,
    vcpus: u8,
) -> (Box<dyn crate::virtio::VirtioDevice>, SharedRateLimiter) {
    let queues = d.queues.unwrap_or(u16::from(vcpus));
    let serial = d.serial.clone().unwrap_or_default();
    let limiter = Arc::new(Mutex::new(RateLimiter::new(d.rate_limit)));
    let block = Block::new(
        disk,
        &serial,
        queues,
        limiter.clone(),
        format!("virtio-blk-{id}"),
    );
    (Box::new(block), limiter)
}

/// A NIC's virtio device and its rate limiter.
fn net_device(
    n: &NetConfig,
) -> Result<(Box<dyn crate::virtio::VirtioDevice>, SharedRateLimiter), VmError> {
    let tap = match &n.tap {
        Some(name) => Tap::open(name, n.queues.unwrap_or(1)),
        None => Tap::from_fds(&n.fds),
    }?;
    let mac = n
        .mac
        .as_deref()
        .and_then(parse_mac)
        .unwrap_or_else(random_mac);
    let limiter = Arc::new(Mutex::new(RateLimiter::new(n.rate_limit)));
    let name = format!("virtio-net-{}", n.id.as_deref().unwrap_or_default());
    let net = Net::new(tap, mac, n.mtu, n.vhost, limiter.clone(), name);
    Ok((Box::new(net), limiter))
}

/// The boot's devices on `bus`: those with a slot of their own first, then
/// the others in the lowest free slots in order (disks, NICs, the RNG).
/// Returns the rate limiters, disks and slots by device name.
fn create_pci(
    config: &VmConfig,
    memory: &vm_memory::GuestMemoryMmap,
    router: &Arc<GsiRouter>,
    bus: &PciBus,
) -> Result<(Limiters, Disks, DeviceSlots), VmError> {
    let mut disks = Vec::new();
    let mut limiters = Limiters::new();
    // (name, wanted slot, device)
    let mut devices: Vec<(String, Option<u8>, Box<dyn crate::virtio::VirtioDevice>)> = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let disk = Arc::new(open_disk(d)?);
        let id = d.id.clone().unwrap_or_else(|| format!("disk{i}"));
        disks.push((id.clone(), disk.clone()));
        let (block, limiter) = block_device(d, disk, &id, config.vcpus);
        limiters.push((id.clone(), limiter));
        devices.push((id, d.pci_slot, block));
    }
    for (i, n) in config.nets.iter().enumerate() {
        let (net, limiter) = net_device(n)?;
        let id = n.id.clone().unwrap_or_else(|| format!("net{i}"));
        limiters.push((id.clone(), limiter));
        devices.push((id, n.pci_slot, net));
    }
    if config.rng {
        devices.push(("rng".into(), None, Box::new(Rng::default())));
    }
    devices.sort_by_key(|(_, slot, _)| slot.is_none());
    let mut slots = Vec::new();
    for (id, slot, device) in devices {
        let slot = match slot {
            Some(s) => s,
            None => bus.free_slot().map_err(|e| VmError::Pci(e.to_string()))?,
        };
        let dev = VirtioPciDevice::new(device, memory.clone(), router.clone(), bar_for(slot))?;
        bus.add_at(slot, Arc::new(Mutex::new(dev)) as SharedPciDevice)
            .map_err(|e| VmError::Pci(e.to_string()))?;
        slots.push((id, slot));
    }
    Ok((limiters, disks, slots))
}

/// A random, locally administered, unicast MAC address.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom fills the 6-byte buffer it is given.
    unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

fn irq_line(vm: &VmFd, gsi: u32) -> Result<IrqLine, VmError> {
    let line = IrqLine::new(gsi).map_err(VmError::Irq)?;
    vm.register_irqfd(line.eventfd(), gsi)
        .map_err(kvm_err("KVM_IRQFD"))?;
    Ok(line)
}

/// The port-I/O devices, the two through which the VMM asks the guest to
/// shut down, and the serial port's coalesced writes (when KVM has them).
type PortDevices = (
    Bus,
    Arc<Mutex<I8042>>,
    Arc<Mutex<Ged>>,
    Option<Arc<CoalescedPort>>,
);

fn create_devices(kvm: &Kvm, vm: &Arc<VmFd>, console: &Console) -> Result<PortDevices, VmError> {
    let mut uart = SerialDevice::new(irq_line(vm, serial::COM1_GSI)?, console.writer());
    let tx_coalescing = CoalescedPort::new(kvm, vm.clone(), serial::COM1_TX_PORT);
    if let Some(port) = &tx_coalescing {
        uart.coalesce_tx(port.clone());
    }
    let serial = Arc::new(Mutex::new(uart));
    console.attach_input(serial.clone());
    let i8042 = Arc::new(Mutex::new(I8042::new(irq_line(vm, i8042::GSI)?)));

    let mut pio = Bus::default();
    pio.insert(
        serial::COM1_BASE,
        serial::COM1_LEN,
        serial as Arc<Mutex<dyn BusDevice>>,
    )?;
    pio.insert(
        i8042::BASE,
        i8042::LEN,
        i8042.clone() as Arc<Mutex<dyn BusDevice>>,
    )?;
    pio.insert(rtc::BASE, rtc::LEN, Arc::new(Mutex::new(Rtc::default())))?;
    pio.insert(acpi_pm::BASE, acpi_pm::LEN, Arc::new(Mutex::new(AcpiPm)))?;
    let ged = Arc::new(Mutex::new(Ged::new(Box::new(KvmLevelLine::new(
        vm.clone(),
        ged::GSI,
    )))));
    pio.insert(
        ged::BASE,
        ged::LEN,
        ged.clone() as Arc<Mutex<dyn BusDevice>>,
    )?;
    Ok((pio, i8042, ged, tx_coalescing))
}

/// CLOCK_MONOTONIC now (`Instant` keeps its value private). Through libc's
/// vDSO path, which needs no system call the seccomp filters would have to
/// allow (rustix's own vDSO lookup opens /proc/self/auxv on first use).
pub fn monotonic_now() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_moves_with_instant() {
        let (a, i) = (monotonic_now(), Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (b, j) = (monotonic_now(), Instant::now());
        assert!(a > std::time::Duration::ZERO);
        let (ours, std) = (b - a, j - i);
        assert!(ours >= std::time::Duration::from_millis(20), "{ours:?}");
        assert!(
            ours.abs_diff(std) < std::time::Duration::from_millis(5),
            "{ours:?} {std:?}"
        );
    }
}
