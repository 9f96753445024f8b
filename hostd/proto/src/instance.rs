//! Instances across the controller/hostd boundary: what the controller asks
//! hostd to run (an instance whose kernel, initramfs and disks are images at
//! the controller), the states hostd reports, and the actions it takes.
//! hostd's own spec (`hostd::instance::InstanceSpec`) accepts every
//! [`ImageInstanceSpec`] (hostd's tests check it); it also takes local paths,
//! disks and NICs that only hostd's own users give.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The body of `POST /instances` as the controller sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageInstanceSpec {
    /// The server's id.
    pub id: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Image ids at the controller, fetched into hostd's image cache. A
    /// kernel the VMM boots directly; or, instead:
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image: Option<String>,
    /// ... a disk image (raw) the instance boots from its own `/boot`, through
    /// a writable copy of it of at least `root_disk_gib` (/dev/vda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk_gib: Option<u32>,
    /// ... or a volume the instance boots from (its own `/boot`), as /dev/vda.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolume>,
    /// The root volume is on another host: hostd connects this export
    /// through the kernel's NBD client and `root_volume`'s `path` (empty
    /// here) becomes that device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume_nbd: Option<NbdExport>,
    /// The flavor's ephemeral disk (ext4 labelled `ephemeral0`, /dev/vdb
    /// after the root disk) and swap disk (after it), as Nova makes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_gib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_mib: Option<u32>,
    /// What the guest's cloud-init reads: attached read-only as a config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<ConfigDrive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs_image: Option<String>,
    /// Attached read-only, in order (the first is /dev/vda).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The server's NICs, one per port: hostd creates the tap when it is
    /// missing and gives the guest a virtio-net device with the port's MAC;
    /// the host's netd plugs the tap into the port's network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<PortNic>,
}

/// A volume's NBD export on its storage host, for one other host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdExport {
    /// `HOST:PORT` of storaged's NBD listener.
    pub address: String,
    /// The export's name (a secret the controller and that host know).
    pub export: String,
}

/// A volume a server boots from, as its storage host exports it to the
/// server's host (hostd takes it as a VMM disk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootVolume {
    /// The device's name (the volume's id without dashes).
    pub id: String,
    /// The volume's own file: raw, or a qcow2 overlay over `base` (through
    /// `layers`, the one right under it first).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// What the guest reads as the disk's serial (the volume id's first 20
    /// characters, as Nova sets it).
    pub serial: String,
}

/// A NIC of a server's port (hostd's `NicSpec` takes it as it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortNic {
    /// `tap` and the first 11 characters of the port's id, as Neutron's
    /// agents name them (at most 15 bytes, Linux's limit).
    pub tap: String,
    pub mac: String,
    /// The network's MTU, offered to the guest through virtio-net's MTU
    /// feature (guests that ignore DHCP's option 26 still get it right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// An OpenStack config drive's contents (Nova's layout under
/// `openstack/latest/`), written by hostd as a vfat filesystem labelled
/// `config-2`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDrive {
    /// `meta_data.json`: `uuid`, `name`, `hostname`, `public_keys`, ...
    pub meta_data: serde_json::Map<String, serde_json::Value>,
    /// `user_data`, base64 as Nova's API takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// `vendor_data.json`, `vendor_data2.json` and `network_data.json`.
    #[serde(default)]
    pub vendor_data: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub network_data: serde_json::Map<String, serde_json::Value>,
}

/// Where an instance stands on its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made ready (its images fetched, its disks made) or its VMM
    /// started and not answering yet.
    Building,
    Running,
    Paused,
    /// A stop was asked for; the VMM has not exited yet.
    Stopping,
    /// Not running: stopped, powered off by its guest, or never started.
    Shutoff,
    /// The VMM failed or died; `reason` says how.
    Error,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Building,
        State::Running,
        State::Paused,
        State::Stopping,
        State::Shutoff,
        State::Error,
    ];

    /// Whether a VMM process belongs to this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            State::Building | State::Running | State::Paused | State::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Building => "building",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Shutoff => "shutoff",
            State::Error => "error",
        }
    }
}

/// What the controller reads of an instance hostd reports (in its list, or
/// after a create or an action); hostd's record carries more.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub state: State,
    /// Why it is in ERROR (or SHUTOFF after a VMM exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The ERROR is the image's (it cannot boot): another host would not do
    /// better.
    #[serde(default)]
    pub image_fault: bool,
}

/// An instance's size: what a resize changes (`POST /instances/{id}/resize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The root disk's size (instances booted from a disk image only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk_gib: Option<u32>,
}

/// An action on a running instance: `POST /instances/{id}/actions/{name}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Pause,
    Resume,
    Reboot { hard: bool },
}

/// The body of an action request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Stop: power off at once instead of asking the guest; reboot: reset
    /// instead of asking the guest.
    #[serde(default)]
    pub hard: bool,
    /// How long a stop waits for the guest before giving up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Action {
    /// The `{name}` in the action's path.
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Reboot { .. } => "reboot",
        }
    }

    pub fn body(self) -> ActionBody {
        ActionBody {
            hard: matches!(self, Action::Reboot { hard: true }),
            timeout_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_lowercase_words() {
        for s in State::ALL {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, s.as_str());
            assert_eq!(serde_json::from_value::<State>(json).unwrap(), s);
        }
        assert!(serde_json::from_str::<State>("\"exploded\"").is_err());
    }

    #[test]
    fn a_status_is_read_from_a_fuller_record() {
        let record = r#"{"id": "s1", "vcpus": 1, "state": "error", "reason": "VMM exited 1",
                         "created_at": 5, "process": null}"#;
        let s: InstanceStatus = serde_json::from_str(record).unwrap();
        assert_eq!(
            s,
            InstanceStatus {
                id: "s1".into(),
                state: State::Error,
                reason: Some("VMM exited 1".into()),
                image_fault: false,
            }
        );
    }

    #[test]
    fn only_a_hard_reboot_says_hard() {
        assert!(Action::Reboot { hard: true }.body().hard);
        assert!(!Action::Reboot { hard: false }.body().hard);
        assert!(!Action::Stop.body().hard);
        assert_eq!(
            serde_json::to_value(Action::Stop.body()).unwrap(),
            serde_json::json!({"hard": false})
        );
    }
}
