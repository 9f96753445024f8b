//! hostd's view of its instances on disk: one JSON file, replaced atomically
//! (written to a temporary file, synced, renamed over the old one, directory
//! synced), so that a crash at any moment leaves either the old or the new view.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::instance::Instance;

const STATE_FILE: &str = "instances.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a hostd state file: {message}")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    instances: Vec<Instance>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir.join("instances")).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    /// The run directory of one instance (config, control socket, console log).
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.dir.join("instances").join(id)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved instances; none when nothing was saved yet.
    pub fn load(&self) -> Result<Vec<Instance>, StoreError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if file.version != FORMAT_VERSION {
            return Err(StoreError::Corrupt {
                path,
                message: format!(
                    "format version {} (this hostd reads {FORMAT_VERSION})",
                    file.version
                ),
            });
        }
        Ok(file.instances)
    }

    pub fn save(&self, instances: &[Instance]) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io = |source, path: &Path| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let body = serde_json::to_vec_pretty(&StateFile {
            version: FORMAT_VERSION,
            instances: instances.to_vec(),
        })
        .map_err(|e| io(std::io::Error::other(e), &tmp))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
        f.write_all(&body).map_err(|e| io(e, &tmp))?;
        f.sync_all().map_err(|e| io(e, &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| io(e, &path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(e, &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{InstanceSpec, State};

    fn instance(id: &str) -> Instance {
        Instance {
            spec: InstanceSpec {
                id: id.into(),
                vcpus: 1,
                memory_mib: 64,
                kernel: Some("/k".into()),
                kernel_image: None,
                initramfs_image: None,
                disk_images: vec![],
                initramfs: None,
                cmdline: None,
                boot_disk: None,
                disks: vec![],
                nics: vec![],
                metadata: Default::default(),
            },
            state: State::Shutoff,
            reason: None,
            process: None,
            created_at: 0,
            updated_at: 0,
            starts: 0,
            vmm_uid: None,
        }
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        store.save(&[instance("a"), instance("b")]).unwrap();
        let back = store.load().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].spec.id, "b");
        assert!(!dir.path().join("instances.json.tmp").exists());
        // A torn temporary file from a crash does not affect what is loaded.
        std::fs::write(dir.path().join("instances.json.tmp"), b"{\"vers").unwrap();
        assert_eq!(store.load().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_file_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("instances.json"), b"garbage").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        std::fs::write(
            dir.path().join("instances.json"),
            br#"{"version": 99, "instances": []}"#,
        )
        .unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }
}
