//! Instances as hostd's API and state file see them: what was asked for (the
//! spec), where it stands (the state), and the VMM process running it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vmm::config::DiskConfig;
use vmm::rate_limiter::RateLimit;

/// Most metadata entries, and the longest key and value.
const MAX_METADATA: usize = 128;
const MAX_METADATA_KEY: usize = 255;
const MAX_METADATA_VALUE: usize = 4096;

/// An instance id (or host id): 1-63 of `a-z 0-9 -`, not starting with `-`.
pub fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A NIC as the API takes it: hostd opens the tap and hands the VMM its queues.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// TAP interface to attach to; created if missing.
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The MTU the guest is told (virtio-net's MTU feature); none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Queue pairs (multiqueue); 1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    #[serde(default)]
    pub vhost: vmm::virtio::net::VhostMode,
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rate_limit: RateLimit,
}

/// What an instance is: the body of `POST /instances` (`?start=false` creates it
/// without starting it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub id: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The guest kernel (ELF vmlinux or bzImage); VMs boot it directly. Or:
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// ... an image at the controller, fetched into hostd's image cache. Or:
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image: Option<String>,
    /// ... a disk image at the controller that boots from its own `/boot`:
    /// the instance gets a writable copy of it as /dev/vda (its root disk,
    /// kept until the instance is deleted), and the kernel, initramfs and
    /// command line are picked from that disk before every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_image: Option<String>,
    /// The root disk's size; the image's own when smaller or unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk_gib: Option<u32>,
    /// ... or a volume the guest boots from (its files on this host, as its
    /// storage host exports them): /dev/vda, the kernel, initramfs and
    /// command line picked from its own `/boot` before every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<DiskConfig>,
    /// ... on another host: its storage host's NBD export. hostd connects
    /// it when it makes the instance (the root volume's path, empty in the
    /// request, is then the device; `remote_disks` says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume_nbd: Option<NbdSource>,
    /// An ephemeral disk of this size (ext4, labelled `ephemeral0`) and a
    /// swap disk of this size, made once beside the root disk and attached
    /// after it (root, ephemeral, swap: Nova's order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_gib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_mib: Option<u32>,
    /// Attached read-only after the root disk, for cloud-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<hostd_proto::instance::ConfigDrive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs_image: Option<String>,
    /// Images at the controller attached read-only, after `disks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// A disk the guest boots from: attached first, as /dev/vda, with
    /// `root=/dev/vda` added to the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_disk: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// Which of `disks` are volumes on another host, and how they are
    /// reached (their path is the NBD device they are connected as).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_disks: Vec<RemoteDisk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A disk that is a volume on another host: its storage host's NBD
/// export, connected as `/dev/nbd{index}` (connected again, perhaps as
/// another device, when it is not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteDisk {
    /// The disk's id among the instance's `disks`.
    pub id: String,
    pub nbd: NbdSource,
    pub index: u32,
}

/// Where a remote volume is exported: `HOST:PORT` and the export's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdSource {
    pub address: String,
    pub export: String,
}

impl InstanceSpec {
    /// Checks what hostd itself owns; the VMM's own rules are checked by building
    /// its configuration (see `supervisor::vmm_config`).
    pub fn check(&self) -> Result<(), String> {
        if !valid_id(&self.id) {
            return Err(format!(
                "id {:?}: 1-63 of a-z, 0-9 and '-', not starting with '-'",
                self.id
            ));
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(format!("metadata: at most {MAX_METADATA} entries"));
        }
        if let Some((k, _)) = self.metadata.iter().find(|(k, v)| {
            k.is_empty() || k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE
        }) {
            return Err(format!(
                "metadata {k:?}: keys 1-{MAX_METADATA_KEY} bytes, values at most {MAX_METADATA_VALUE}"
            ));
        }
        let boots = [
            self.kernel.is_some(),
            self.kernel_image.is_some(),
            self.root_image.is_some(),
            self.root_volume.is_some(),
        ];
        if boots.iter().filter(|b| **b).count() != 1 {
            return Err(
                "give exactly one of kernel (a path), kernel_image (an image id), \
                 root_image (a disk image id) or root_volume (a volume's files)"
                    .into(),
            );
        }
        if let Some(v) = &self.root_volume {
            let paths = std::iter::once(&v.path)
                .chain(v.base.iter())
                .chain(v.layers.iter());
            if paths.into_iter().any(|p| !p.is_absolute())
                || !v.fds.is_empty()
                || !v.backing_fds.is_empty()
                || (v.base.is_none() && !v.layers.is_empty())
                || v.read_only
            {
                return Err(
                    "root_volume: absolute paths (path; base and layers for an overlay), \
                     writable, no fds"
                        .into(),
                );
            }
        }
        if let Some(v) = self
            .root_volume
            .as_ref()
            .filter(|_| self.root_volume_nbd.is_some())
        {
            let connected = v.id.as_ref().is_some_and(|id| {
                self.remote_disks
                    .iter()
                    .any(|r| &r.id == id && v.path == crate::nbd::device(r.index))
            });
            if !connected || v.base.is_some() {
                return Err(
                    "root_volume_nbd: the root volume is that export, connected (no base or layers)"
                        .into(),
                );
            }
        } else if self.root_volume_nbd.is_some() {
            return Err("root_volume_nbd: only with root_volume".into());
        }
        if (self.root_image.is_some() || self.root_volume.is_some())
            && (self.initramfs.is_some()
                || self.initramfs_image.is_some()
                || self.cmdline.is_some())
        {
            return Err(
                "root_image, root_volume: the disk's own /boot names the initramfs and command line"
                    .into(),
            );
        }
        if self.root_disk_gib.is_some() && self.root_image.is_none() {
            return Err("root_disk_gib: only with root_image".into());
        }
        if self
            .root_disk_gib
            .is_some_and(|g| g > crate::root_disk::MAX_GIB)
        {
            return Err(format!(
                "root_disk_gib: at most {}",
                crate::root_disk::MAX_GIB
            ));
        }
        if self
            .ephemeral_gib
            .is_some_and(|g| g == 0 || g > crate::root_disk::MAX_GIB)
        {
            return Err(format!(
                "ephemeral_gib: 1-{} (none: leave it out)",
                crate::root_disk::MAX_GIB
            ));
        }
        if self.swap_mib.is_some_and(|m| m == 0 || m > MAX_SWAP_MIB) {
            return Err(format!("swap_mib: 1-{MAX_SWAP_MIB} (none: leave it out)"));
        }
        if let Some(drive) = &self.config_drive {
            crate::config_drive::check(drive)?;
        }
        let image_ids = self
            .kernel_image
            .iter()
            .chain(self.root_image.iter())
            .chain(self.initramfs_image.iter())
            .chain(self.disk_images.iter());
        for id in image_ids {
            if !crate::images::valid_image_id(id) {
                return Err(format!("image id {id:?}: 1-64 of 0-9, a-f and '-'"));
            }
        }
        for nic in &self.nics {
            if nic.tap.is_empty() || nic.tap.len() > 15 || nic.tap.contains(['/', '\0', ' ']) {
                return Err(format!(
                    "nics.tap {:?}: 1 to 15 bytes, no '/' or spaces",
                    nic.tap
                ));
            }
            if let Some(mtu) = nic.mtu {
                vmm::config::check_mtu(mtu).map_err(|e| format!("nics.mtu {mtu}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Where an instance stands: the states the controller reads too.
pub use hostd_proto::instance::State;

/// The VMM process running an instance, as recorded for re-adoption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: i32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): with the
    /// pid, it tells our VMM from a later process that reused the pid.
    pub start_ticks: u64,
}

/// An instance record: the API's view and the state file's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    #[serde(flatten)]
    pub spec: InstanceSpec,
    pub state: State,
    /// Why the instance is in ERROR (or SHUTOFF after a VMM exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Unix seconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// Times a VMM was started for it.
    pub starts: u64,
    /// The user (and group) its jailed VMM runs as, kept for the instance's
    /// life: its writable disks belong to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_uid: Option<u32>,
    /// Set while hostd makes the instance ready (images fetched, disks
    /// made): kept in the record so that a hostd killed meanwhile carries on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preparing: Option<Preparing>,
    /// The ERROR is the image's (it cannot boot): another host would not do
    /// better.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_fault: bool,
    /// What the instance was before a resize not yet confirmed or reverted
    /// (its root disk as it was is kept beside the new one until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resized_from: Option<Size>,
    /// Its root disk was made from its image and no guest has run on it
    /// yet: it boots what the image's first pick found (see `pick_cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh_root: bool,
}

pub use hostd_proto::instance::Size;

/// The largest swap disk hostd makes (1 TiB).
pub const MAX_SWAP_MIB: u32 = 1 << 20;

impl InstanceSpec {
    pub fn size(&self) -> Size {
        Size {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            root_disk_gib: self.root_disk_gib,
        }
    }
}

/// What follows an instance's preparation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preparing {
    /// Created with `start=false`: it stays SHUTOFF.
    ThenStay,
    ThenStart,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "web-1".into(),
            vcpus: 1,
            memory_mib: 128,
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
            cmdline: None,
            boot_disk: None,
            disks: vec![],
            remote_disks: vec![],
            nics: vec![],
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn ids() {
        for good in ["a", "web-1", "0abc", &"x".repeat(63)] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "-a", "Web", "a_b", "a/b", "a b", &"x".repeat(64), "é"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn create_requests_parse_strictly() {
        let r: InstanceSpec = serde_json::from_str(
            r#"{"id": "a", "vcpus": 1, "memory_mib": 64, "kernel": "/k",
                "nics": [{"tap": "t0", "queues": 2}], "metadata": {"k": "v"}}"#,
        )
        .unwrap();
        assert_eq!(r.nics[0].queues, Some(2));
        for bad in [
            r#"{"id": "a", "vcpus": 1, "memory_mib": 64, "kernel": "/k", "colour": 1}"#,
            r#"{"id": "a", "vcpus": 1, "memory_mib": 64, "kernel_image": 5}"#,
            r#"{"id": "a", "vcpus": 1, "memory_mib": 64, "kernel": "/k", "nics": [{"tap": "t", "fds": [3]}]}"#,
            r#"{"id": "a", "vcpus": 300, "memory_mib": 64, "kernel": "/k"}"#,
        ] {
            assert!(serde_json::from_str::<InstanceSpec>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_checks() {
        assert!(spec().check().is_ok());
        let mut s = spec();
        s.id = "Bad".into();
        assert!(s.check().unwrap_err().contains("id"));
        let mut s = spec();
        s.metadata.insert(String::new(), "v".into());
        assert!(s.check().unwrap_err().contains("metadata"));
        let mut s = spec();
        s.nics.push(NicSpec {
            tap: "../x".into(),
            mac: None,
            mtu: None,
            queues: None,
            vhost: Default::default(),
            rate_limit: RateLimit::default(),
        });
        assert!(s.check().unwrap_err().contains("nics.tap"));
        s.nics[0].tap = "tap0".into();
        s.nics[0].mtu = Some(40);
        assert!(s.check().unwrap_err().contains("nics.mtu"));
        s.nics[0].mtu = Some(1450);
        assert!(s.check().is_ok());
    }

    #[test]
    fn records_round_trip() {
        let i = Instance {
            spec: spec(),
            state: State::Running,
            reason: None,
            process: Some(Process {
                pid: 42,
                start_ticks: 7,
            }),
            created_at: 1,
            updated_at: 2,
            starts: 1,
            vmm_uid: Some(2_000_001),
            preparing: Some(Preparing::ThenStart),
            image_fault: true,
            resized_from: None,
            fresh_root: false,
        };
        let json = serde_json::to_string(&i).unwrap();
        assert!(json.contains(r#""state":"running""#));
        let back: Instance = serde_json::from_str(&json).unwrap();
        assert_eq!(back.spec, i.spec);
        assert_eq!(back.process, i.process);
        assert_eq!(back.vmm_uid, i.vmm_uid);
        assert_eq!(back.preparing, i.preparing);
        assert!(back.image_fault);
        // Records written before these fields existed still load.
        let old = json.replace(r#","preparing":"then_start","image_fault":true"#, "");
        assert_ne!(old, json);
        let back: Instance = serde_json::from_str(&old).unwrap();
        assert_eq!((back.preparing, back.image_fault), (None, false));
    }

    /// Every spec the controller sends is one hostd takes, field for field.
    #[test]
    fn the_controllers_spec_is_a_hostd_spec() {
        let sent = hostd_proto::instance::ImageInstanceSpec {
            id: "0b5f7c1e-2f4a-4c55-9d2e-8a9f6b3c1d2e".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel_image: Some("0a-1".into()),
            root_image: None,
            root_disk_gib: None,
            root_volume: None,
            root_volume_nbd: None,
            ephemeral_gib: Some(10),
            swap_mib: Some(512),
            config_drive: Some(Default::default()),
            initramfs_image: Some("0b-1".into()),
            disk_images: vec!["0d-1".into()],
            cmdline: Some("console=ttyS0".into()),
            metadata: BTreeMap::from([("name".into(), "vm".into())]),
            nics: vec![hostd_proto::instance::PortNic {
                tap: "tap5d3f9a7e-6c".into(),
                mac: "fa:16:3e:00:11:22".into(),
                mtu: Some(1450),
            }],
        };
        let got: InstanceSpec =
            serde_json::from_value(serde_json::to_value(&sent).unwrap()).unwrap();
        assert!(got.check().is_ok(), "{:?}", got.check());
        assert_eq!(
            (got.id, got.vcpus, got.memory_mib),
            (sent.id, sent.vcpus, sent.memory_mib)
        );
        assert_eq!(got.kernel_image, sent.kernel_image);
        assert_eq!(
            (got.ephemeral_gib, got.swap_mib),
            (sent.ephemeral_gib, sent.swap_mib)
        );
        assert_eq!(got.config_drive, sent.config_drive);
        assert_eq!(got.initramfs_image, sent.initramfs_image);
        assert_eq!(got.disk_images, sent.disk_images);
        assert_eq!(got.cmdline, sent.cmdline);
        assert_eq!(got.metadata, sent.metadata);
        assert_eq!(got.nics.len(), 1);
        assert_eq!(got.nics[0].tap, sent.nics[0].tap);
        assert_eq!(got.nics[0].mac, Some(sent.nics[0].mac.clone()));
        assert_eq!(got.nics[0].mtu, Some(1450));
        assert_eq!(
            (got.kernel, got.initramfs, got.boot_disk),
            (None, None, None)
        );
    }
}
