//! cgroup v2 for instances: one group per VMM under hostd's root group, with
//! `cpu.max` from its vCPUs and `memory.max` from its RAM plus the VMM's own
//! overhead. The VMM joins its group between fork and exec, so it never runs
//! outside it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError {
        path: path.to_owned(),
        source,
    }
}

/// The CPU period `cpu.max` quotas are in.
const CPU_PERIOD_US: u64 = 100_000;

/// hostd's root group, with the cpu and memory controllers enabled for its
/// children.
#[derive(Clone, Debug)]
pub struct CgroupRoot {
    path: PathBuf,
}

impl CgroupRoot {
    /// Sets up `path` (its parent must be a cgroup v2 group that has, or can
    /// enable, the cpu and memory controllers).
    pub fn init(path: &Path) -> Result<CgroupRoot, CgroupError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let controllers = parent.join("cgroup.controllers");
        std::fs::read_to_string(&controllers).map_err(err(&controllers))?;
        std::fs::create_dir_all(path).map_err(err(path))?;
        for dir in [parent, path] {
            let control = dir.join("cgroup.subtree_control");
            std::fs::write(&control, "+cpu +memory").map_err(err(&control))?;
        }
        Ok(CgroupRoot {
            path: path.to_owned(),
        })
    }

    pub fn group_path(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    /// Creates (or reuses) an instance's group with its limits; returns the
    /// `cgroup.procs` file the VMM writes itself into.
    pub fn prepare(&self, id: &str, vcpus: u8, memory_bytes: u64) -> Result<File, CgroupError> {
        let group = self.group_path(id);
        std::fs::create_dir_all(&group).map_err(err(&group))?;
        let cpu = group.join("cpu.max");
        std::fs::write(&cpu, cpu_max(vcpus)).map_err(err(&cpu))?;
        let mem = group.join("memory.max");
        std::fs::write(&mem, memory_bytes.to_string()).map_err(err(&mem))?;
        let procs = group.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(err(&procs))
    }

    /// Removes an instance's group (once its VMM is gone).
    pub fn remove(&self, id: &str) {
        let group = self.group_path(id);
        if let Err(e) = std::fs::remove_dir(&group) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(instance = id, "removing cgroup {}: {e}", group.display());
            }
        }
    }
}

/// `cpu.max` for a VM: its vCPUs' worth of CPU time per period.
pub fn cpu_max(vcpus: u8) -> String {
    format!("{} {CPU_PERIOD_US}", u64::from(vcpus) * CPU_PERIOD_US)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(cpu_max(1), "100000 100000");
        assert_eq!(cpu_max(4), "400000 100000");
    }

    #[test]
    fn a_missing_hierarchy_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = CgroupRoot::init(&dir.path().join("virga")).unwrap_err();
        assert!(e.to_string().contains("cgroup.controllers"), "{e}");
    }
}
