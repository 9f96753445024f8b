//! `manifest.json`: the package versions a build used and what it produced.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::debian::Inputs;
use crate::{io_err, write_atomically, ImageError};

pub const MANIFEST: &str = "manifest.json";
pub const BZIMAGE: &str = "bzImage";
pub const VMLINUX: &str = "vmlinux";
pub const BOOT_INITRAMFS: &str = "boot-initramfs.cpio";
pub const ROOTFS: &str = "rootfs.ext4";
/// What a build makes, each recorded with its checksum.
const ARTIFACTS: [&str; 5] = [
    BZIMAGE,
    VMLINUX,
    BOOT_INITRAMFS,
    ROOTFS,
    crate::test_disk::TEST_DISK,
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub inputs: Inputs,
    pub kernel_release: String,
    pub artifacts: BTreeMap<String, Artifact>,
}

impl Manifest {
    pub fn new(inputs: Inputs, kernel_release: String, dir: &Path) -> Result<Self, ImageError> {
        let mut artifacts = BTreeMap::new();
        for name in ARTIFACTS {
            let path = dir.join(name);
            let data = std::fs::read(&path).map_err(io_err(&path))?;
            artifacts.insert(
                name.to_owned(),
                Artifact {
                    bytes: data.len() as u64,
                    sha256: hex(&Sha256::digest(&data)),
                },
            );
        }
        Ok(Manifest {
            inputs,
            kernel_release,
            artifacts,
        })
    }

    pub fn read(dir: &Path) -> Result<Option<Self>, ImageError> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ImageError::Manifest { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(self).map_err(|source| ImageError::Manifest {
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, &json)
    }

    /// Every artifact exists with the recorded size (a cheap check; the checksums
    /// are for people and for pipelines that pin them).
    pub fn artifacts_present(&self, dir: &Path) -> bool {
        self.artifacts
            .iter()
            .all(|(name, a)| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == a.bytes))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_presence() {
        let dir = tempfile::tempdir().unwrap();
        for name in ARTIFACTS {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let inputs = Inputs {
            kernel_package: "linux-image-x".into(),
            kernel_version: "1".into(),
            busybox_version: "2".into(),
            tool_versions: "fio 3 iperf3 3".into(),
            builder_revision: "test".into(),
        };
        let m = Manifest::new(inputs, "6.1.0-x".into(), dir.path()).unwrap();
        assert_eq!(m.artifacts[VMLINUX].bytes, VMLINUX.len() as u64);
        // sha256("vmlinux"), computed independently.
        assert_eq!(
            m.artifacts[VMLINUX].sha256,
            "bda53947e9ee31b2381cad6b07dc756f83c688f16dce16bd23ac1386099b36b3"
        );
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(m.clone()));
        assert!(m.artifacts_present(dir.path()));
        std::fs::write(dir.path().join(VMLINUX), "changed size").unwrap();
        assert!(!m.artifacts_present(dir.path()));
        assert_eq!(Manifest::read(&dir.path().join("none")).unwrap(), None);
    }
}
