//! The VMM's configuration file for an instance, and the jail's share of it.

use std::path::Path;

use vmm::config::{ConfigFile, NetConfig, RebootPolicy, SerialConfig, SerialMode};
use vmm::smbios::SmbiosInfo;

use super::{
    OpError, API_SOCKET, CONFIG_DRIVE, CONSOLE_INPUT, CONSOLE_LOG, EPHEMERAL_DISK, JAIL_ROOT,
    SWAP_DISK,
};
use crate::boot_picker::Picked;

/// How an instance booted from a disk (its root disk, or a volume) boots
/// this time: what was picked from the disk, and the disk (with what an
/// overlay lies over).
pub(super) struct DiskBoot {
    pub picked: Picked,
    pub root: vmm::config::DiskConfig,
}
use crate::instance::InstanceSpec;

/// Readies the jail of a VMM that runs as `uid`: an empty directory in its run
/// directory `dir` to mount its root on, and its writable disks given to it.
pub(super) fn prepare_jail(
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
/// control socket and reboot policy too. An instance booted from a disk
/// image boots what was picked from its root disk, which comes first; a
/// config drive comes last (both live in the run directory).
pub(super) fn vmm_config_file(
    spec: &InstanceSpec,
    dir: Option<&Path>,
    boot: Option<&DiskBoot>,
) -> ConfigFile {
    let mut disks = Vec::new();
    let mut cmdline = spec.cmdline.clone().unwrap_or_default();
    let (mut kernel, mut initramfs) = (spec.kernel.clone(), spec.initramfs.clone());
    if let Some(boot) = boot {
        kernel = Some(boot.picked.kernel.clone());
        initramfs = boot.picked.initramfs.clone();
        cmdline = boot.picked.cmdline.clone();
        disks.push(boot.root.clone());
    }
    if let Some(boot) = &spec.boot_disk {
        disks.push(disk(boot.clone(), false));
        cmdline = format!("{cmdline} root=/dev/vda").trim().to_owned();
    }
    // Disks named by an id were attached (volumes, `POST .../disks`); the
    // others came with the spec and may be what the guest boots from.
    let (attached, given): (Vec<_>, Vec<_>) =
        spec.disks.iter().cloned().partition(|d| d.id.is_some());
    disks.extend(given);
    if let Some(dir) = dir {
        // After the disks the guest boots from, as Nova orders them: the
        // ephemeral disk is /dev/vdb behind a root disk.
        if spec.ephemeral_gib.is_some() {
            disks.push(disk(dir.join(EPHEMERAL_DISK), false));
        }
        if spec.swap_mib.is_some() {
            disks.push(disk(dir.join(SWAP_DISK), false));
        }
    }
    // Volumes after the flavor's disks, as Nova orders them: the ephemeral
    // disk stays /dev/vdb (cloud-init's fstab names it so) with volumes
    // attached.
    disks.extend(attached);
    if let (Some(_), Some(dir)) = (&spec.config_drive, dir) {
        // Last, as Nova attaches it; cloud-init finds it by its label.
        disks.push(disk(dir.join(CONFIG_DRIVE), true));
    }
    ConfigFile {
        kernel,
        initramfs,
        cmdline: Some(cmdline),
        vcpus: Some(spec.vcpus),
        memory_mib: Some(spec.memory_mib),
        serial: Some(match dir {
            Some(d) => SerialConfig {
                mode: SerialMode::File,
                path: Some(d.join(CONSOLE_LOG)),
                input: Some(d.join(CONSOLE_INPUT)),
            },
            None => SerialConfig {
                mode: SerialMode::Off,
                path: None,
                input: None,
            },
        }),
        api_socket: dir.map(|d| d.join(API_SOCKET)),
        // A guest reboot stays inside the VMM: the instance keeps running.
        // Except for a disk-booted guest: its /boot may have changed (a
        // kernel upgrade), so hostd picks again and starts a new VMM.
        on_reboot: Some(if spec.root_image.is_some() {
            RebootPolicy::Exit
        } else {
            RebootPolicy::Restart
        }),
        rng: None,
        disks: (!disks.is_empty()).then_some(disks),
        nets: None,
        // The VMM's default, enforce; VIRGA_VMM_SECCOMP=log in hostd's
        // environment reaches every VMM it starts (diagnosis).
        seccomp: None,
        // Set by `launch` when VMMs are jailed.
        jail: None,
        smbios: Some(smbios(spec)),
    }
}

pub(super) fn disk(path: std::path::PathBuf, read_only: bool) -> vmm::config::DiskConfig {
    vmm::config::DiskConfig {
        id: None,
        pci_slot: None,
        fds: Vec::new(),
        backing_fds: Vec::new(),
        path,
        base: None,
        layers: Vec::new(),
        read_only,
        serial: None,
        direct: !read_only,
        queues: None,
        rate_limit: Default::default(),
    }
}

/// The machine as an OpenStack guest sees it (what Nova's libvirt driver
/// writes): cloud-init and `dmidecode` recognise an OpenStack Nova
/// instance; the serial and, for UUID ids, the system UUID are the
/// instance's.
fn smbios(spec: &InstanceSpec) -> SmbiosInfo {
    let mut info = SmbiosInfo {
        manufacturer: "OpenStack Foundation".into(),
        product: "OpenStack Nova".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        serial: spec.id.clone(),
        uuid: Some(spec.id.clone()),
        family: "Virtual Machine".into(),
    };
    if info.check().is_err() {
        info.uuid = None; // not a UUID
    }
    info
}

pub(super) fn net_config(
    nic: &crate::instance::NicSpec,
    fds: Vec<i32>,
    queues: Option<u16>,
) -> NetConfig {
    NetConfig {
        // Named by its tap, so hostd can unplug it by that name.
        id: vmm::config::check_device_id(&nic.tap)
            .is_ok()
            .then(|| nic.tap.clone()),
        pci_slot: None,
        tap: fds.is_empty().then(|| nic.tap.clone()),
        fds,
        queues: queues.or(nic.queues),
        mac: nic.mac.clone(),
        mtu: nic.mtu,
        vhost: nic.vhost,
        rate_limit: nic.rate_limit,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn vmm_configs() {
        let spec = InstanceSpec {
            id: "a".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: Some("/k".into()),
            kernel_image: None,
            root_image: None,
            root_disk_gib: None,
            root_volume: None,
            root_volume_nbd: None,
            ephemeral_gib: None,
            swap_mib: None,
            config_drive: None,
            initramfs_image: None,
            disk_images: vec![],
            initramfs: None,
            cmdline: Some("console=ttyS0".into()),
            boot_disk: Some("/img".into()),
            disks: vec![],
            remote_disks: vec![],
            nics: vec![],
            metadata: Default::default(),
        };
        let f = vmm_config_file(&spec, Some(Path::new("/run/x")), None);
        assert_eq!(f.cmdline.as_deref(), Some("console=ttyS0 root=/dev/vda"));
        assert_eq!(f.disks.unwrap()[0].path, PathBuf::from("/img"));
        assert_eq!(f.api_socket, Some(PathBuf::from("/run/x/api.sock")));
        assert_eq!(f.on_reboot, Some(RebootPolicy::Restart));
        let tables = f.smbios.unwrap();
        assert_eq!(tables.product, "OpenStack Nova");
        assert_eq!(
            (tables.serial.as_str(), tables.uuid),
            ("a", None),
            "not a UUID"
        );
        let uuid = "7d5e6a1c-0000-4000-8000-000000000001";
        let s = smbios(&InstanceSpec {
            id: uuid.into(),
            ..spec.clone()
        });
        assert_eq!(s.uuid.as_deref(), Some(uuid));

        // An attached volume comes after the ephemeral disk and swap, a
        // disk given with the spec before them.
        let named = |path: &str, id: Option<&str>| vmm::config::DiskConfig {
            id: id.map(str::to_owned),
            ..disk(path.into(), false)
        };
        let with_volume = InstanceSpec {
            ephemeral_gib: Some(1),
            swap_mib: Some(64),
            disks: vec![named("/vol", Some("vol1")), named("/data", None)],
            remote_disks: vec![],
            ..spec
        };
        let f = vmm_config_file(&with_volume, Some(Path::new("/run/x")), None);
        let paths: Vec<PathBuf> = f.disks.unwrap().into_iter().map(|d| d.path).collect();
        assert_eq!(
            paths,
            [
                "/img",
                "/data",
                "/run/x/ephemeral.img",
                "/run/x/swap.img",
                "/vol"
            ]
            .map(PathBuf::from)
        );
    }
}
