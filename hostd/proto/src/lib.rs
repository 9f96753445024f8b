//! The messages between hostd and the controller. Both depend on this crate
//! rather than on each other: the controller need not build hostd (nor the
//! VMM it links) to read a heartbeat.

use serde::{Deserialize, Serialize};

pub mod instance;
pub mod sparse;
pub mod token;

/// What hostd reports about its host every `heartbeat_secs`
/// (`PUT {controller_url}/internal/v1/hosts/{host_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host_id: String,
    /// Where the controller reaches this hostd.
    pub url: String,
    pub cpus: u64,
    pub memory_mib: u64,
    pub memory_usable_mib: u64,
    pub disk_free_mib: u64,
    /// Size of the filesystem holding hostd's state (0 from hostds that
    /// predate the field).
    #[serde(default)]
    pub disk_total_mib: u64,
    pub vcpus_used: u64,
    pub memory_used_mib: u64,
    pub instances: usize,
    pub kvm_mode: String,
    pub version: String,
    /// When the host booted, Unix seconds (0 from hostds that predate it).
    #[serde(default)]
    pub booted_at: i64,
    /// The load averages over 1, 5 and 15 minutes.
    #[serde(default)]
    pub load_average: [f64; 3],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trips_and_refuses_missing_fields() {
        let beat = Heartbeat {
            host_id: "h1".into(),
            url: "http://10.0.0.1:8790".into(),
            cpus: 8,
            memory_mib: 16384,
            memory_usable_mib: 15360,
            disk_free_mib: 1000,
            disk_total_mib: 4000,
            vcpus_used: 2,
            memory_used_mib: 512,
            instances: 1,
            kvm_mode: "hardware".into(),
            version: "0.1.0".into(),
            booted_at: 1_796_000_000,
            load_average: [0.5, 0.25, 0.0],
        };
        let text = serde_json::to_string(&beat).unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<Heartbeat>(&text).ok(),
            Some(beat.clone())
        );
        assert!(serde_json::from_str::<Heartbeat>(r#"{"host_id": "h1"}"#).is_err());
        // An older hostd's beat, without the uptime.
        let mut old = serde_json::to_value(&beat).unwrap_or_default();
        if let Some(o) = old.as_object_mut() {
            o.remove("booted_at");
            o.remove("load_average");
        }
        let read = serde_json::from_value::<Heartbeat>(old).ok();
        assert_eq!(
            read.map(|b| (b.booted_at, b.load_average)),
            Some((0, [0.0; 3]))
        );
    }
}
