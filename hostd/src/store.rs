//! hostd's view of its instances on disk: one record file per instance, owned
//! by that instance's actor, each replaced atomically (written to a temporary
//! file, synced, renamed over the old one, directory synced), so that a crash
//! at any moment leaves either the old or the new record.
//!
//! Records live apart from the instances' run directories: a run directory
//! holds what the VMM writes (console, log, control socket), and nothing the
//! VMM can write may ever be read back as hostd's own record.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::instance::Instance;

/// The single state file of hostd before per-instance records; read once
/// and replaced by records.
const LEGACY_STATE_FILE: &str = "instances.json";
const LEGACY_FORMAT_VERSION: u32 = 1;
const RECORDS: &str = "records";
const RUN_DIRS: &str = "instances";
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a hostd record: {message}")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct LegacyStateFile {
    version: u32,
    instances: Vec<Instance>,
}

#[derive(Serialize, Deserialize)]
struct RecordFile {
    version: u32,
    instance: Instance,
}

pub struct Store {
    dir: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Opens (creating) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        for sub in [RUN_DIRS, RECORDS] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    /// The run directory of one instance (config, control socket, console log).
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.dir.join(RUN_DIRS).join(id)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(RECORDS).join(format!("{id}.json"))
    }

    /// The saved instances. A state file of an older hostd is turned into
    /// records first (and then removed), so an upgrade keeps its instances.
    pub fn load(&self) -> Result<Vec<Instance>, StoreError> {
        self.migrate_legacy_file()?;
        let dir = self.dir.join(RECORDS);
        let mut instances = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let path = entry.map_err(io_error(&dir))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue; // a temporary file a crash left behind
            };
            let instance = read_record(&path)?;
            if instance.spec.id != id {
                return Err(StoreError::Corrupt {
                    path,
                    message: format!("it holds instance {:?}", instance.spec.id),
                });
            }
            instances.push(instance);
        }
        instances.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(instances)
    }

    fn migrate_legacy_file(&self) -> Result<(), StoreError> {
        let path = self.dir.join(LEGACY_STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let file: LegacyStateFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if file.version != LEGACY_FORMAT_VERSION {
            return Err(StoreError::Corrupt {
                path,
                message: format!(
                    "format version {} (this hostd reads {LEGACY_FORMAT_VERSION})",
                    file.version
                ),
            });
        }
        for instance in &file.instances {
            self.save(instance)?;
        }
        // Only once every record is safely written.
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        sync_dir(&self.dir)
    }

    /// Writes one instance's record, replacing the previous one atomically.
    pub fn save(&self, instance: &Instance) -> Result<(), StoreError> {
        let path = self.record_path(&instance.spec.id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&RecordFile {
            version: FORMAT_VERSION,
            instance: instance.clone(),
        })
        .map_err(|e| io_error(&tmp)(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
        f.write_all(&body).map_err(io_error(&tmp))?;
        f.sync_all().map_err(io_error(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
        sync_dir(&self.dir.join(RECORDS))
    }

    /// Removes an instance: its record first (so that a crash midway leaves
    /// at most a run directory without a record, which `remove_orphan_run_dirs`
    /// clears), then its run directory.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.record_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir.join(RECORDS))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        let run = self.run_dir(id);
        match std::fs::remove_dir_all(&run) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path: run, source }),
        }
    }

    /// Removes the run directories of instances that have no record (a
    /// delete cut short by a crash); returns their names.
    pub fn remove_orphan_run_dirs(&self, known: &[Instance]) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(RUN_DIRS)) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.iter().all(|i| i.spec.id != name)
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                removed.push(name);
            }
        }
        removed
    }
}

fn read_record(path: &Path) -> Result<Instance, StoreError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let file: RecordFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this hostd reads {FORMAT_VERSION})",
            file.version
        )));
    }
    Ok(file.instance)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
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
                metadata: Default::default(),
            },
            state: State::Shutoff,
            reason: None,
            process: None,
            created_at: 0,
            updated_at: 0,
            starts: 0,
            vmm_uid: None,
            preparing: None,
            image_fault: false,
            resized_from: None,
            fresh_root: false,
        }
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        store.save(&instance("b")).unwrap();
        store.save(&instance("a")).unwrap();
        let mut a = instance("a");
        a.starts = 7;
        store.save(&a).unwrap();
        let back = store.load().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].spec.id, "a");
        assert_eq!(back[0].starts, 7);
        assert!(!dir.path().join("records/a.json.tmp").exists());
        // A torn temporary file from a crash does not affect what is loaded.
        std::fs::write(dir.path().join("records/a.json.tmp"), b"{\"vers").unwrap();
        assert_eq!(store.load().unwrap()[0].starts, 7);
    }

    #[test]
    fn a_removed_instance_leaves_no_record_and_no_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&instance("a")).unwrap();
        std::fs::create_dir_all(store.run_dir("a")).unwrap();
        std::fs::write(store.run_dir("a").join("console.log"), b"x").unwrap();
        store.remove("a").unwrap();
        assert!(store.load().unwrap().is_empty());
        assert!(!store.run_dir("a").exists());
        // Again: nothing left to remove is no error.
        store.remove("a").unwrap();
        // A run dir whose record went (a crash inside a delete) is cleared.
        std::fs::create_dir_all(store.run_dir("b")).unwrap();
        store.save(&instance("c")).unwrap();
        std::fs::create_dir_all(store.run_dir("c")).unwrap();
        let known = store.load().unwrap();
        assert_eq!(store.remove_orphan_run_dirs(&known), vec!["b".to_owned()]);
        assert!(store.run_dir("c").exists());
    }

    #[test]
    fn an_older_hostds_state_file_becomes_records() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = serde_json::json!({
            "version": 1,
            "instances": [instance("a"), instance("b")],
        });
        std::fs::write(
            dir.path().join("instances.json"),
            serde_json::to_vec(&legacy).unwrap(),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = store
            .load()
            .unwrap()
            .into_iter()
            .map(|i| i.spec.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(!dir.path().join("instances.json").exists());
        assert_eq!(store.load().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_record_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("records/a.json"), b"garbage").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        std::fs::write(
            dir.path().join("records/a.json"),
            br#"{"version": 99, "instance": {}}"#,
        )
        .unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        // A record under another instance's name.
        store.save(&instance("b")).unwrap();
        std::fs::rename(
            dir.path().join("records/b.json"),
            dir.path().join("records/a.json"),
        )
        .unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        std::fs::write(dir.path().join("instances.json"), b"garbage").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }
}
