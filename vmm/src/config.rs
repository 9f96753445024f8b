//! VM configuration: a JSON file and/or command-line flags, merged and validated
//! before anything touches KVM.
//!
//! Every validation failure names the offending field, so the binary can print a
//! one-line error and exit with status 2 without creating a VM.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rate_limiter::RateLimit;

/// Fewest and most vCPUs a VM may have. 32 keeps every APIC ID in the xAPIC range.
pub const MIN_VCPUS: u8 = 1;
pub const MAX_VCPUS: u8 = 32;
/// Below this the Debian kernel cannot unpack an initramfs and reach init.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Linux's x86 COMMAND_LINE_SIZE, including the terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 2048;

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialMode {
    #[default]
    Stdout,
    File,
    Pty,
    Off,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default)]
    pub mode: SerialMode,
    /// Output file, required for `mode: file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// With `mode: file`, a FIFO (named pipe) the guest's console input is
    /// read from: whoever writes it types on the console (hostd does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PathBuf>,
}

/// A virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The device's name in the API (rate limits, unplugging); `disk<N>` by
    /// position when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The PCI slot (1-31); the lowest free one when unset. Kept for a
    /// device plugged at run time, so a guest reboot finds it where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_slot: Option<u8>,
    /// A raw image file or a block device; with `base`, a qcow2 overlay.
    /// Empty for a disk on descriptors (`fds`).
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub path: PathBuf,
    /// A disk's descriptors, sent by the supervisor with a plug request:
    /// `[buffered]` or `[O_DIRECT, buffered]`. In the request itself, when
    /// given, the positions of those among the descriptors sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<i32>,
    /// With `fds`, a qcow2 overlay's read-only backing: its layers (qcow2,
    /// the one right under it first), then its raw base; one descriptor
    /// each, given in the plug request as positions like `fds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backing_fds: Vec<i32>,
    /// The raw image a qcow2 overlay at `path` reads through to, opened
    /// read-only. The overlay's own backing-file name is never followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
    /// Read-only qcow2 layers between the overlay at `path` and its `base`,
    /// the one right under the overlay first (a volume's snapshots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    /// Reported to the guest (VIRTIO_BLK_T_GET_ID), at most 20 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// O_DIRECT (the default) or through the host's page cache.
    #[serde(default = "yes")]
    pub direct: bool,
    /// Request queues; one per vCPU when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// Bytes/s and requests/s; changeable at run time through the API.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rate_limit: RateLimit,
}

fn yes() -> bool {
    true
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

fn number(key: &str, v: &str) -> Result<u64, String> {
    v.parse().map_err(|_| format!("{key}: not a number: {v:?}"))
}

/// Most queues a disk may have.
pub const MAX_DISK_QUEUES: u16 = 32;
pub const MAX_DISKS: usize = 16;
const MAX_SERIAL_LEN: usize = 20;

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// `path=FILE[,base=RAW[,layers=QCOW2:QCOW2...]][,readonly=on][,serial=S][,direct=off][,queues=N][,bw=BYTES/s][,iops=N]`
    fn from_str(s: &str) -> Result<Self, String> {
        let mut disk = DiskConfig {
            id: None,
            pci_slot: None,
            fds: Vec::new(),
            backing_fds: Vec::new(),
            path: PathBuf::new(),
            base: None,
            layers: Vec::new(),
            read_only: false,
            serial: None,
            direct: true,
            queues: None,
            rate_limit: RateLimit::default(),
        };
        let flag = |k: &str, v: &str| match v {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(format!("{k}: expected on or off, got {v:?}")),
        };
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {part:?}"))?;
            match k {
                "path" => disk.path = PathBuf::from(v),
                "base" => disk.base = Some(PathBuf::from(v)),
                // Read-only qcow2 layers between the overlay and its base,
                // the one right under the overlay first.
                "layers" => disk.layers = v.split(':').map(PathBuf::from).collect(),
                "readonly" | "read_only" => disk.read_only = flag(k, v)?,
                "direct" => disk.direct = flag(k, v)?,
                "serial" => disk.serial = Some(v.to_owned()),
                "queues" => {
                    disk.queues = Some(
                        v.parse()
                            .map_err(|_| format!("queues: not a number: {v:?}"))?,
                    )
                }
                "bw" => disk.rate_limit.bytes_per_sec = Some(number(k, v)?),
                "iops" => disk.rate_limit.ops_per_sec = Some(number(k, v)?),
                other => return Err(format!("unknown disk option {other:?}")),
            }
        }
        if disk.path.as_os_str().is_empty() {
            return Err("path=FILE is required".into());
        }
        Ok(disk)
    }
}

/// A virtio-net NIC backed by a TAP device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The device's name in the API; `net<N>` by position when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The PCI slot (1-31); the lowest free one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_slot: Option<u8>,
    /// TAP interface to attach to (created if missing and allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Already-open TAP descriptors inherited from the supervisor, one per queue
    /// pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<i32>,
    /// Queue pairs: 1 when unset and `tap` is given, as many as `fds` otherwise.
    /// With more than one the guest spreads flows over them when it supports
    /// multiqueue (each pair gets its own worker or vhost-net thread); a tap that
    /// cannot have several queues gets one. One is the default because on a host
    /// whose CPUs the vCPUs share, spreading receive interrupts over vCPUs costs
    /// more than it gains (see `cargo xtask bench net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// Guest MAC address; a random locally administered one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The MTU offered to the guest (virtio-net's MTU feature); the guest
    /// picks its own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// vhost-net: auto (default), on, or off.
    #[serde(default)]
    pub vhost: crate::virtio::net::VhostMode,
    /// Bytes/s and packets/s each way; a limit keeps packets in the VMM (no vhost).
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rate_limit: RateLimit,
}

pub const MAX_NICS: usize = 8;

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// `tap=NAME[,queues=N][,mac=MAC][,mtu=N][,vhost=auto|on|off][,bw=BYTES/s][,pps=N]`,
    /// or `fd=N[:N...][,...]` (one descriptor per queue pair)
    fn from_str(s: &str) -> Result<Self, String> {
        let mut net = NetConfig {
            id: None,
            pci_slot: None,
            tap: None,
            fds: Vec::new(),
            queues: None,
            mac: None,
            mtu: None,
            vhost: Default::default(),
            rate_limit: RateLimit::default(),
        };
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {part:?}"))?;
            match k {
                "tap" => net.tap = Some(v.to_owned()),
                "fd" => {
                    net.fds = v
                        .split(':')
                        .map(|fd| fd.parse().map_err(|_| format!("fd: not a number: {fd:?}")))
                        .collect::<Result<_, _>>()?
                }
                "queues" => {
                    net.queues = Some(
                        v.parse()
                            .map_err(|_| format!("queues: not a number: {v:?}"))?,
                    )
                }
                "mac" => net.mac = Some(v.to_owned()),
                "mtu" => {
                    net.mtu = Some(v.parse().map_err(|_| format!("mtu: not a number: {v:?}"))?)
                }
                "bw" => net.rate_limit.bytes_per_sec = Some(number(k, v)?),
                "pps" => net.rate_limit.ops_per_sec = Some(number(k, v)?),
                "vhost" => {
                    net.vhost = match v {
                        "auto" => crate::virtio::net::VhostMode::Auto,
                        "on" => crate::virtio::net::VhostMode::On,
                        "off" => crate::virtio::net::VhostMode::Off,
                        _ => return Err(format!("vhost: expected auto, on or off, got {v:?}")),
                    }
                }
                other => return Err(format!("unknown net option {other:?}")),
            }
        }
        Ok(net)
    }
}

/// An MTU a virtio-net device may offer: at least IPv4's minimum (68).
pub fn check_mtu(mtu: u16) -> Result<(), String> {
    if mtu < 68 {
        return Err("below IPv4's minimum of 68".into());
    }
    Ok(())
}

/// Gives each device without a name its positional one, and checks that
/// names and slots are unique and well formed.
fn name_devices(disks: &mut [DiskConfig], nets: &mut [NetConfig]) -> Result<(), ConfigError> {
    for (i, d) in disks.iter_mut().enumerate() {
        d.id.get_or_insert_with(|| format!("disk{i}"));
    }
    for (i, n) in nets.iter_mut().enumerate() {
        n.id.get_or_insert_with(|| format!("net{i}"));
    }
    let devices = disks
        .iter()
        .map(|d| (&d.id, d.pci_slot))
        .chain(nets.iter().map(|n| (&n.id, n.pci_slot)));
    let mut ids = std::collections::BTreeSet::new();
    let mut slots = std::collections::BTreeSet::new();
    for (id, slot) in devices {
        let id = id.as_deref().unwrap_or_default();
        check_device_id(id).map_err(|e| invalid("id", e))?;
        if !ids.insert(id) {
            return Err(invalid("id", format!("{id:?} names two devices")));
        }
        if let Some(slot) = slot {
            check_pci_slot(slot).map_err(|e| invalid("pci_slot", e))?;
            if !slots.insert(slot) {
                return Err(invalid("pci_slot", format!("{slot} holds two devices")));
            }
        }
    }
    Ok(())
}

/// A device name: 1 to 32 letters, digits, `-` or `_` (it is a path
/// segment of the API).
pub fn check_device_id(id: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?}: 1 to 32 letters, digits, '-' or '_'"))
    }
}

/// Slot 0 is the host bridge's; bus 0 has 32.
pub fn check_pci_slot(slot: u8) -> Result<(), String> {
    if (1..crate::pci::SLOTS as u8).contains(&slot) {
        Ok(())
    } else {
        Err(format!(
            "{slot}: slots 1 to {} take devices",
            crate::pci::SLOTS - 1
        ))
    }
}

/// Checks a NIC and settles its queue-pair count.
pub(crate) fn validate_net(net: &mut NetConfig) -> Result<(), ConfigError> {
    use crate::virtio::net::MAX_QUEUE_PAIRS;
    if let Some(mtu) = net.mtu {
        check_mtu(mtu).map_err(|e| invalid("nets.mtu", format!("{mtu}: {e}")))?;
    }
    let pairs = match (&net.tap, net.fds.as_slice()) {
        (Some(name), []) if !name.is_empty() && name.len() <= 15 => net.queues.unwrap_or(1),
        (Some(name), []) => {
            return Err(invalid("nets.tap", format!("{name:?}: 1 to 15 bytes")));
        }
        (None, fds) if !fds.is_empty() => {
            if let Some(fd) = fds.iter().find(|&&fd| fd <= 2) {
                return Err(invalid("nets.fds", format!("{fd} is not a TAP descriptor")));
            }
            if net.queues.is_some_and(|q| usize::from(q) != fds.len()) {
                return Err(invalid("nets.queues", "must equal the number of fds"));
            }
            u16::try_from(fds.len()).unwrap_or(u16::MAX)
        }
        _ => return Err(invalid("nets", "exactly one of tap or fds")),
    };
    if !(1..=MAX_QUEUE_PAIRS).contains(&pairs) {
        return Err(invalid(
            "nets.queues",
            format!("must be between 1 and {MAX_QUEUE_PAIRS}, got {pairs}"),
        ));
    }
    net.queues = Some(pairs);
    net.rate_limit
        .validate()
        .map_err(|e| invalid("nets.rate_limit", e))?;
    if !net.rate_limit.is_unlimited() && net.vhost == crate::virtio::net::VhostMode::On {
        return Err(invalid(
            "nets.rate_limit",
            "cannot be enforced with vhost=on (packets bypass the VMM); use vhost=auto or off",
        ));
    }
    if let Some(mac) = &net.mac {
        if crate::virtio::net::parse_mac(mac).is_none_or(|m| m[0] & 1 == 1) {
            return Err(invalid(
                "nets.mac",
                format!("{mac:?} is not a unicast MAC address"),
            ));
        }
    }
    Ok(())
}

/// What a guest-initiated reboot does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootPolicy {
    /// The VMM exits with status 0, leaving the restart to its supervisor.
    #[default]
    Exit,
    /// The VMM rebuilds the VM from scratch in the same process.
    Restart,
}

/// The configuration file's shape. Every field is optional here so that flags can
/// supply what the file leaves out; [`VmConfig::validate`] enforces the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reboot: Option<RebootPolicy>,
    /// A virtio-rng device (on unless set to false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<NetConfig>>,
    /// seccomp filters: enforce (the default), log or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<crate::seccomp::SeccompMode>,
    /// Run in a jail as this user (see [`crate::jail`]); none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::jail::JailConfig>,
    /// What the guest's SMBIOS tables say (vendor, product, serial, UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smbios: Option<crate::smbios::SmbiosInfo>,
}

impl ConfigFile {
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let mut text = String::new();
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
        Self::from_json(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Fields set in `other` win over the ones set here.
    pub fn overlay(self, other: ConfigFile) -> ConfigFile {
        ConfigFile {
            kernel: other.kernel.or(self.kernel),
            initramfs: other.initramfs.or(self.initramfs),
            cmdline: other.cmdline.or(self.cmdline),
            vcpus: other.vcpus.or(self.vcpus),
            memory_mib: other.memory_mib.or(self.memory_mib),
            serial: other.serial.or(self.serial),
            api_socket: other.api_socket.or(self.api_socket),
            on_reboot: other.on_reboot.or(self.on_reboot),
            rng: other.rng.or(self.rng),
            disks: other.disks.or(self.disks),
            nets: other.nets.or(self.nets),
            seccomp: other.seccomp.or(self.seccomp),
            jail: other.jail.or(self.jail),
            smbios: other.smbios.or(self.smbios),
        }
    }
}

/// How the kernel image is laid out, found by looking at its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// A validated configuration: everything the VM builder may rely on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub kernel_format: KernelFormat,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub serial: SerialConfig,
    pub api_socket: Option<PathBuf>,
    pub on_reboot: RebootPolicy,
    pub rng: bool,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub seccomp: crate::seccomp::SeccompMode,
    pub jail: Option<crate::jail::JailConfig>,
    pub smbios: crate::smbios::SmbiosInfo,
}

impl VmConfig {
    /// Checks every field against the host (files readable, memory available).
    pub fn validate(file: ConfigFile, host_memory_mib: u64) -> Result<Self, ConfigError> {
        let kernel = file.kernel.ok_or_else(|| {
            invalid(
                "kernel",
                "missing (set \"kernel\" in the config file or pass --kernel)",
            )
        })?;
        let kernel_format = detect_kernel_format(&kernel)?;
        if let Some(initramfs) = &file.initramfs {
            check_readable_file("initramfs", initramfs)?;
        }

        let cmdline = file.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
        if cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(invalid(
                "cmdline",
                format!(
                    "{} bytes, longer than the kernel's limit of {}",
                    cmdline.len(),
                    MAX_CMDLINE_LEN - 1
                ),
            ));
        }
        if cmdline.bytes().any(|b| b == 0 || !b.is_ascii()) {
            return Err(invalid("cmdline", "must be printable ASCII without NUL"));
        }

        let vcpus = file.vcpus.unwrap_or(1);
        if !(MIN_VCPUS..=MAX_VCPUS).contains(&vcpus) {
            return Err(invalid(
                "vcpus",
                format!("must be between {MIN_VCPUS} and {MAX_VCPUS}, got {vcpus}"),
            ));
        }

        let memory_mib = file.memory_mib.unwrap_or(256);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(invalid(
                "memory_mib",
                format!("must be at least {MIN_MEMORY_MIB} MiB, got {memory_mib}"),
            ));
        }
        if u64::from(memory_mib) > host_memory_mib {
            return Err(invalid(
                "memory_mib",
                format!("{memory_mib} MiB is more than the host's {host_memory_mib} MiB"),
            ));
        }

        let serial = file.serial.unwrap_or_default();
        match (serial.mode, &serial.path) {
            (SerialMode::File, None) => {
                return Err(invalid(
                    "serial.path",
                    "required when serial.mode is \"file\"",
                ))
            }
            (SerialMode::File, Some(path)) => check_parent_dir("serial.path", path)?,
            (_, Some(_)) => {
                return Err(invalid(
                    "serial.path",
                    "only allowed when serial.mode is \"file\"",
                ))
            }
            _ => {}
        }
        if serial.input.is_some() && serial.mode != SerialMode::File {
            return Err(invalid(
                "serial.input",
                "only allowed when serial.mode is \"file\"",
            ));
        }
        if let Some(socket) = &file.api_socket {
            check_parent_dir("api_socket", socket)?;
        }

        let mut disks = file.disks.unwrap_or_default();
        if disks.len() > MAX_DISKS {
            return Err(invalid(
                "disks",
                format!("at most {MAX_DISKS}, got {}", disks.len()),
            ));
        }
        for disk in &mut disks {
            validate_disk(disk, vcpus)?;
        }

        let mut nets = file.nets.unwrap_or_default();
        if nets.len() > MAX_NICS {
            return Err(invalid(
                "nets",
                format!("at most {MAX_NICS}, got {}", nets.len()),
            ));
        }
        for net in &mut nets {
            validate_net(net)?;
        }
        name_devices(&mut disks, &mut nets)?;

        if let Some(jail) = &file.jail {
            jail.check().map_err(|e| invalid("jail", e))?;
        }
        let smbios = file.smbios.unwrap_or_default();
        smbios.check().map_err(|e| invalid("smbios", e))?;

        Ok(VmConfig {
            smbios,
            jail: file.jail,
            nets,
            disks,
            kernel,
            kernel_format,
            initramfs: file.initramfs,
            cmdline,
            vcpus,
            memory_mib,
            serial,
            api_socket: file.api_socket,
            on_reboot: file.on_reboot.unwrap_or_default(),
            rng: file.rng.unwrap_or(true),
            seccomp: file.seccomp.unwrap_or_default(),
        })
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

pub(crate) fn validate_disk(disk: &mut DiskConfig, vcpus: u8) -> Result<(), ConfigError> {
    if !disk.fds.is_empty() {
        return validate_disk_fds(disk, vcpus);
    }
    let meta = std::fs::metadata(&disk.path)
        .map_err(|e| invalid("disks.path", format!("{}: {e}", disk.path.display())))?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(invalid(
            "disks.path",
            format!(
                "{}: not a regular file or block device",
                disk.path.display()
            ),
        ));
    }
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path);
    if let Err(e) = writable {
        return Err(invalid(
            "disks.path",
            format!("{}: {e}", disk.path.display()),
        ));
    }
    if let Some(base) = &disk.base {
        if !meta.is_file() {
            return Err(invalid(
                "disks.base",
                format!(
                    "{}: only a regular file can be an overlay",
                    disk.path.display()
                ),
            ));
        }
        check_readable_file("disks.base", base)?;
        if disk.layers.len() > crate::virtio::block::qcow2::MAX_LAYERS {
            return Err(invalid(
                "disks.layers",
                format!(
                    "{} layers; at most {}",
                    disk.layers.len(),
                    crate::virtio::block::qcow2::MAX_LAYERS
                ),
            ));
        }
        for layer in &disk.layers {
            check_readable_file("disks.layers", layer)?;
        }
    } else if !disk.layers.is_empty() {
        return Err(invalid(
            "disks.layers",
            "layers lie over a base: no base given",
        ));
    }
    if !disk.backing_fds.is_empty() {
        return Err(invalid(
            "disks.backing_fds",
            "a disk at a path has its backing at paths (base, layers)",
        ));
    }
    validate_disk_settings(disk, vcpus)
}

/// What any disk is checked for, whatever holds its bytes: serial, limits,
/// queues.
fn validate_disk_settings(disk: &mut DiskConfig, vcpus: u8) -> Result<(), ConfigError> {
    if let Some(serial) = &disk.serial {
        if serial.len() > MAX_SERIAL_LEN || !serial.is_ascii() {
            return Err(invalid(
                "disks.serial",
                format!("at most {MAX_SERIAL_LEN} ASCII characters, got {serial:?}"),
            ));
        }
    }
    disk.rate_limit
        .validate()
        .map_err(|e| invalid("disks.rate_limit", e))?;
    let queues = disk.queues.unwrap_or(u16::from(vcpus));
    if !(1..=MAX_DISK_QUEUES).contains(&queues) {
        return Err(invalid(
            "disks.queues",
            format!("must be between 1 and {MAX_DISK_QUEUES}, got {queues}"),
        ));
    }
    disk.queues = Some(queues);
    Ok(())
}

/// A disk on descriptors: one or two of them, no path, no base; the rest
/// as any disk.
fn validate_disk_fds(disk: &mut DiskConfig, vcpus: u8) -> Result<(), ConfigError> {
    if !path_is_empty(&disk.path) || disk.base.is_some() || !disk.layers.is_empty() {
        return Err(invalid(
            "disks.fds",
            "a disk on descriptors has no path, base or layers",
        ));
    }
    if disk.backing_fds.len() > crate::virtio::block::qcow2::MAX_LAYERS + 1
        || disk.backing_fds.iter().any(|&fd| fd <= 2)
    {
        return Err(invalid(
            "disks.backing_fds",
            format!(
                "at most {} layers and a base, got {:?}",
                crate::virtio::block::qcow2::MAX_LAYERS,
                disk.backing_fds
            ),
        ));
    }
    if !(1..=2).contains(&disk.fds.len()) || disk.fds.iter().any(|&fd| fd <= 2) {
        return Err(invalid(
            "disks.fds",
            format!(
                "[buffered] or [direct, buffered] descriptors, got {:?}",
                disk.fds
            ),
        ));
    }
    crate::virtio::block::disk::Disk::from_fds(&disk.fds, &disk.backing_fds, disk.read_only)
        .map_err(|e| invalid("disks.fds", e.to_string()))?;
    validate_disk_settings(disk, vcpus)
}

fn check_readable_file(field: &'static str, path: &Path) -> Result<File, ConfigError> {
    let file = File::open(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(invalid(
            field,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(file)
}

fn check_parent_dir(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{}: directory does not exist", parent.display()),
        ))
    }
}

/// An ELF vmlinux starts with `\x7fELF`; a bzImage carries `HdrS` at 0x202.
fn detect_kernel_format(path: &Path) -> Result<KernelFormat, ConfigError> {
    let mut file = check_readable_file("kernel", path)?;
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(invalid("kernel", format!("{}: {e}", path.display()))),
        }
    }
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(invalid(
            "kernel",
            format!("{}: neither an ELF vmlinux nor a bzImage", path.display()),
        ))
    }
}

/// The host's MemTotal in MiB, the upper bound for a guest's memory.
pub fn host_memory_mib() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib / 1024)
        })
        .ok_or_else(|| std::io::Error::other("no MemTotal in /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn elf_kernel() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF\x02\x01\x01").unwrap();
        f
    }

    fn bzimage_kernel() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        f.write_all(&img).unwrap();
        f
    }

    fn with_kernel(path: &Path) -> ConfigFile {
        ConfigFile {
            kernel: Some(path.to_owned()),
            ..Default::default()
        }
    }

    fn field_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn defaults_fill_in_and_formats_are_detected() {
        let k = elf_kernel();
        let cfg = VmConfig::validate(with_kernel(k.path()), 4096).unwrap();
        assert_eq!(cfg.kernel_format, KernelFormat::Elf);
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.memory_mib, 256);
        assert_eq!(cfg.cmdline, DEFAULT_CMDLINE);
        assert_eq!(cfg.serial.mode, SerialMode::Stdout);
        assert_eq!(cfg.on_reboot, RebootPolicy::Exit);

        let b = bzimage_kernel();
        let cfg = VmConfig::validate(with_kernel(b.path()), 4096).unwrap();
        assert_eq!(cfg.kernel_format, KernelFormat::BzImage);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = ConfigFile::from_json(r#"{"kernel": "/k", "vcpu": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpu`"), "{err}");
        let err =
            ConfigFile::from_json(r#"{"serial": {"mode": "stdout", "colour": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = ConfigFile::from_json(r#"{"serial": {"mode": "tty"}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `tty`"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let file =
            ConfigFile::from_json(r#"{"kernel": "/a", "vcpus": 2, "memory_mib": 128}"#).unwrap();
        let flags = ConfigFile {
            vcpus: Some(4),
            ..Default::default()
        };
        let merged = file.overlay(flags);
        assert_eq!(merged.vcpus, Some(4));
        assert_eq!(merged.memory_mib, Some(128));
        assert_eq!(merged.kernel, Some(PathBuf::from("/a")));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let k = elf_kernel();
        let base = || with_kernel(k.path());

        assert_eq!(
            field_of(VmConfig::validate(ConfigFile::default(), 4096).unwrap_err()),
            "kernel"
        );
        let missing = with_kernel(Path::new("/nonexistent/vmlinux"));
        assert_eq!(
            field_of(VmConfig::validate(missing, 4096).unwrap_err()),
            "kernel"
        );
        let garbage = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            field_of(VmConfig::validate(with_kernel(garbage.path()), 4096).unwrap_err()),
            "kernel"
        );

        for vcpus in [0u8, 33] {
            let cfg = ConfigFile {
                vcpus: Some(vcpus),
                ..base()
            };
            assert_eq!(
                field_of(VmConfig::validate(cfg, 4096).unwrap_err()),
                "vcpus"
            );
        }
        for mib in [0u32, 63, 4097] {
            let cfg = ConfigFile {
                memory_mib: Some(mib),
                ..base()
            };
            assert_eq!(
                field_of(VmConfig::validate(cfg, 4096).unwrap_err()),
                "memory_mib"
            );
        }
        let cfg = ConfigFile {
            cmdline: Some("x".repeat(MAX_CMDLINE_LEN)),
            ..base()
        };
        assert_eq!(
            field_of(VmConfig::validate(cfg, 4096).unwrap_err()),
            "cmdline"
        );
        let cfg = ConfigFile {
            initramfs: Some("/nonexistent/initrd".into()),
            ..base()
        };
        assert_eq!(
            field_of(VmConfig::validate(cfg, 4096).unwrap_err()),
            "initramfs"
        );
        let cfg = ConfigFile {
            serial: Some(SerialConfig {
                mode: SerialMode::File,
                path: None,
                input: None,
            }),
            ..base()
        };
        assert_eq!(
            field_of(VmConfig::validate(cfg, 4096).unwrap_err()),
            "serial.path"
        );
        let cfg = ConfigFile {
            api_socket: Some("/nonexistent/dir/api.sock".into()),
            ..base()
        };
        assert_eq!(
            field_of(VmConfig::validate(cfg, 4096).unwrap_err()),
            "api_socket"
        );
    }

    #[test]
    fn disks_parse_from_flags_and_validate() {
        let d: DiskConfig = "path=/x,readonly=on,serial=abc,direct=off,queues=2"
            .parse()
            .unwrap();
        assert_eq!(
            d,
            DiskConfig {
                id: None,
                pci_slot: None,
                fds: Vec::new(),
                backing_fds: Vec::new(),
                path: "/x".into(),
                base: None,
                layers: Vec::new(),
                read_only: true,
                serial: Some("abc".into()),
                direct: false,
                queues: Some(2),
                rate_limit: RateLimit::default(),
            }
        );
        let limited: DiskConfig = "path=/x,bw=1048576,iops=100".parse().unwrap();
        assert_eq!(limited.rate_limit.bytes_per_sec, Some(1 << 20));
        assert_eq!(limited.rate_limit.ops_per_sec, Some(100));
        assert!(
            "readonly=on".parse::<DiskConfig>().is_err(),
            "path required"
        );
        assert!("path=/x,colour=red".parse::<DiskConfig>().is_err());
        assert!("path=/x,readonly=maybe".parse::<DiskConfig>().is_err());

        let k = elf_kernel();
        let img = tempfile::NamedTempFile::new().unwrap();
        let with_disk = |disk: &str| ConfigFile {
            disks: Some(vec![disk.parse().unwrap()]),
            vcpus: Some(2),
            ..with_kernel(k.path())
        };
        let ok =
            VmConfig::validate(with_disk(&format!("path={}", img.path().display())), 4096).unwrap();
        assert_eq!(ok.disks[0].queues, Some(2), "one queue per vCPU by default");
        for (disk, field) in [
            ("path=/nonexistent/disk.raw".to_owned(), "disks.path"),
            (
                format!(
                    "path={},serial=this-serial-is-far-too-long",
                    img.path().display()
                ),
                "disks.serial",
            ),
            (
                format!("path={},queues=0", img.path().display()),
                "disks.queues",
            ),
        ] {
            assert_eq!(
                field_of(VmConfig::validate(with_disk(&disk), 4096).unwrap_err()),
                field
            );
        }
        let err =
            ConfigFile::from_json(r#"{"disks": [{"path": "/x", "readonly": true}]}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `readonly`"),
            "{err}"
        );
    }

    #[test]
    fn nics_parse_and_validate() {
        let mut n: NetConfig = "tap=vtap0,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.tap.as_deref(), Some("vtap0"));
        assert!(validate_net(&mut n).is_ok());
        assert_eq!(n.queues, Some(1), "one pair by default");
        let mut n: NetConfig = "tap=vtap0,queues=8".parse().unwrap();
        validate_net(&mut n).unwrap();
        assert_eq!(n.queues, Some(8));
        let mut n: NetConfig = "tap=vtap0,mtu=1450".parse().unwrap();
        validate_net(&mut n).unwrap();
        assert_eq!(n.mtu, Some(1450));
        assert!("tap=t,mtu=70000".parse::<NetConfig>().is_err());
        let d: DiskConfig = "path=/v.qcow2,base=/b.raw,layers=/l2:/l1".parse().unwrap();
        assert_eq!(d.layers, [PathBuf::from("/l2"), PathBuf::from("/l1")]);
        let mut n: NetConfig = "fd=3:4,vhost=off".parse().unwrap();
        validate_net(&mut n).unwrap();
        assert_eq!((n.fds.as_slice(), n.queues), (&[3, 4][..], Some(2)));
        for bad in [
            "tap=a,fd=5",
            "mac=02:00:00:00:00:01",
            "fd=1",
            "fd=3:2",
            "fd=3,queues=2",
            "tap=0123456789abcdef",
            "tap=t,queues=0",
            "tap=t,queues=9",
            "tap=t,mtu=67",
        ] {
            let mut n: NetConfig = bad.parse().unwrap();
            assert!(validate_net(&mut n).is_err(), "{bad}");
        }
        let mut multicast: NetConfig = "tap=t,mac=01:00:5e:00:00:01".parse().unwrap();
        assert!(validate_net(&mut multicast).is_err());
        assert!("tap=t,speed=10".parse::<NetConfig>().is_err());
        assert!("fd=3:x".parse::<NetConfig>().is_err());
        assert!("tap=t,queues=-1".parse::<NetConfig>().is_err());
    }

    #[test]
    fn disks_on_descriptors_validate_without_a_path() {
        use std::os::fd::AsRawFd;
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let fd = file.as_file().as_raw_fd();
        let on = |fds: Vec<i32>| DiskConfig {
            fds,
            .."path=/x".parse::<DiskConfig>().unwrap()
        };
        let mut ok = on(vec![fd]);
        ok.path = PathBuf::new();
        validate_disk(&mut ok, 2).unwrap();
        assert_eq!(ok.queues, Some(2), "settings checked as for any disk");
        let mut two = on(vec![fd, fd]);
        two.path = PathBuf::new();
        validate_disk(&mut two, 1).unwrap();
        for (fds, path, base) in [
            (vec![fd], "/x", None),        // a path too
            (vec![fd], "", Some("/base")), // a base
            (vec![1], "", None),           // stdout
            (vec![fd, fd, fd], "", None),
            (vec![987_654], "", None), // not open
        ] {
            let mut d = on(fds.clone());
            d.path = PathBuf::from(path);
            d.base = base.map(PathBuf::from);
            assert!(validate_disk(&mut d, 1).is_err(), "{fds:?} {path} {base:?}");
        }
    }

    #[test]
    fn devices_are_named_by_position_unless_named_and_slots_are_unique() {
        let net = |s: &str| s.parse::<NetConfig>().unwrap();
        let mut nets = vec![net("tap=a"), net("tap=b"), net("tap=c")];
        nets[1].id = Some("uplink".into());
        nets[2].pci_slot = Some(7);
        name_devices(&mut [], &mut nets).unwrap();
        let ids: Vec<_> = nets.iter().map(|n| n.id.as_deref().unwrap()).collect();
        assert_eq!(ids, ["net0", "uplink", "net2"]);
        for (id, slot) in [
            (Some("first"), None), // two named alike
            (Some("a/b"), None),
            (Some(""), None),
            (None, Some(0)), // the host bridge's
            (None, Some(32)),
            (None, Some(7)), // taken
        ] {
            let mut nets = vec![net("tap=a"), net("tap=b"), net("tap=c")];
            nets[0].id = Some("first".into());
            nets[2].pci_slot = Some(7);
            nets[1].id = id.map(str::to_owned);
            if let Some(slot) = slot {
                nets[1].pci_slot = Some(slot);
            }
            assert!(name_devices(&mut [], &mut nets).is_err(), "{id:?} {slot:?}");
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let k = elf_kernel();
        let cfg = ConfigFile {
            vcpus: Some(32),
            memory_mib: Some(64),
            ..with_kernel(k.path())
        };
        let cfg = VmConfig::validate(cfg, 64).unwrap();
        assert_eq!(cfg.vcpus, 32);
        assert_eq!(cfg.memory_bytes(), 64 << 20);
    }
}
