//! A kernel's module index (modules.dep): module files and their load order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no module named {0} in this kernel")]
    Unknown(String),
}

pub struct ModuleIndex {
    dir: PathBuf,
    /// Module name -> (its file, relative to `dir`; its dependencies' files).
    deps: HashMap<String, (String, Vec<String>)>,
}

/// `kernel/drivers/virtio/virtio_ring.ko` -> `virtio_ring`.
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split(".ko").next().unwrap_or(base).to_owned()
}

impl ModuleIndex {
    pub fn load(kernel_root: &Path, release: &str) -> Result<Self, ModuleError> {
        let dir = kernel_root.join("lib/modules").join(release);
        let path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&path).map_err(|source| ModuleError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(ModuleIndex {
            deps: parse_modules_dep(&text),
            dir,
        })
    }

    /// Whether `name` is a module of this kernel (not built in, not absent).
    pub fn has(&self, name: &str) -> bool {
        self.deps.contains_key(name)
    }

    /// The module files to load, in order, so that `wanted` and their dependencies
    /// all load. Dependencies come first; each file appears once.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<PathBuf>, ModuleError> {
        let mut order: Vec<String> = Vec::new();
        for name in wanted {
            let (file, deps) = self
                .deps
                .get(*name)
                .ok_or_else(|| ModuleError::Unknown((*name).to_owned()))?;
            // modules.dep lists dependencies so that the last must load first.
            for f in deps.iter().rev().chain(std::iter::once(file)) {
                if !order.contains(f) {
                    order.push(f.clone());
                }
            }
        }
        Ok(order.into_iter().map(|f| self.dir.join(f)).collect())
    }
}

fn parse_modules_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (file, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(file), (file.to_owned(), deps)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = "kernel/virtio/virtio_ring.ko:\n\
                   kernel/virtio/virtio.ko: kernel/virtio/virtio_ring.ko\n\
                   kernel/virtio/virtio_pci.ko: kernel/virtio/virtio_pci_modern_dev.ko kernel/virtio/virtio.ko kernel/virtio/virtio_ring.ko\n\
                   kernel/virtio/virtio_pci_modern_dev.ko:\n\
                   kernel/block/virtio_blk.ko: kernel/virtio/virtio.ko kernel/virtio/virtio_ring.ko\n";
        let index = ModuleIndex {
            dir: PathBuf::from("/m"),
            deps: parse_modules_dep(dep),
        };
        let order: Vec<String> = index
            .load_order(&["virtio_pci", "virtio_blk"])
            .unwrap()
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        assert!(matches!(
            index.load_order(&["nope"]),
            Err(ModuleError::Unknown(_))
        ));
        assert_eq!(module_name("a/b/virtio-rng.ko.xz"), "virtio-rng");
    }
}
