//! Guest artifacts built from Debian packages: the kernel (bzImage as shipped, its
//! modules, and the ELF vmlinux cut out of it) and a boot-test initramfs; and,
//! apart, a Debian cloud image as users upload one ([`cloud_image`]).
//!
//! Package versions are resolved when building (the archive drops superseded
//! kernels, so pins rot) and recorded with output checksums in `manifest.json`.
//! A build whose inputs match the manifest is skipped.

pub mod cloud_image;
pub mod cpio_archive;
pub mod debian;
pub mod gpt_layout;
pub mod grub_install;
pub mod initramfs;
pub mod manifest;
pub mod modules;
pub mod rootfs;
pub mod test_disk;
pub mod vmlinux;

use std::path::{Path, PathBuf};

pub use manifest::Manifest;

/// What the images are built with besides packages: this crate's own source,
/// so that any change to an init script or a layout rebuilds them (a
/// hand-bumped revision was forgotten once, and tests ran on stale images).
pub fn builder_revision() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (_, source) in BUILDER_SOURCES {
        hash.update(source.as_bytes());
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file of this crate's `src/` (a test checks that none is missing)
/// but [`cloud_image`] and [`grub_install`], which have a revision of their
/// own (the Debian image takes minutes to build and depends on nothing else
/// here but [`gpt_layout`], which its revision covers too).
const BUILDER_SOURCES: &[(&str, &str)] = &[
    ("cpio_archive.rs", include_str!("cpio_archive.rs")),
    ("debian.rs", include_str!("debian.rs")),
    ("gpt_layout.rs", include_str!("gpt_layout.rs")),
    ("initramfs.rs", include_str!("initramfs.rs")),
    ("lib.rs", include_str!("lib.rs")),
    ("manifest.rs", include_str!("manifest.rs")),
    ("modules.rs", include_str!("modules.rs")),
    ("rootfs.rs", include_str!("rootfs.rs")),
    ("test_disk.rs", include_str!("test_disk.rs")),
    ("vmlinux.rs", include_str!("vmlinux.rs")),
];

/// The metapackage that always depends on the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The modules the boot-test initramfs loads (with their dependencies).
pub const BOOT_TEST_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "virtio-rng"];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Debian(#[from] debian::DebianError),
    #[error("extracting vmlinux: {0}")]
    Vmlinux(#[from] vmlinux::VmlinuxError),
    #[error("kernel modules: {0}")]
    Modules(#[from] modules::ModuleError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no guest images in {0}: run `cargo xtask images` first")]
    NotBuilt(PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Built artifacts and where they are.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ImageSet {
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join(manifest::BZIMAGE)
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(manifest::VMLINUX)
    }
    pub fn boot_initramfs(&self) -> PathBuf {
        self.dir.join(manifest::BOOT_INITRAMFS)
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(manifest::ROOTFS)
    }
    /// The boot-test kernel and initramfs as a bootable disk ([`test_disk`]).
    pub fn test_disk(&self) -> PathBuf {
        self.dir.join(test_disk::TEST_DISK)
    }
    /// Where the kernel package was unpacked (holds `lib/modules/RELEASE`).
    pub fn kernel_root(&self) -> PathBuf {
        self.dir.join("kernel").join(&self.manifest.kernel_release)
    }
    pub fn busybox(&self) -> PathBuf {
        self.dir.join("busybox")
    }
    pub fn modules(&self) -> Result<modules::ModuleIndex, ImageError> {
        Ok(modules::ModuleIndex::load(
            &self.kernel_root(),
            &self.manifest.kernel_release,
        )?)
    }
}

/// Loads what an earlier [`build`] left in `dir`.
pub fn load(dir: &Path) -> Result<ImageSet, ImageError> {
    let manifest = Manifest::read(dir)?.ok_or_else(|| ImageError::NotBuilt(dir.to_owned()))?;
    let set = ImageSet {
        dir: dir.to_owned(),
        manifest,
    };
    if !set.manifest.artifacts_present(dir) {
        return Err(ImageError::NotBuilt(dir.to_owned()));
    }
    Ok(set)
}

/// Builds (or reuses) every guest artifact under `dir`. `log` hears what happens.
pub fn build(dir: &Path, log: &dyn Fn(&str)) -> Result<ImageSet, ImageError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cached = Manifest::read(dir).ok().flatten();

    let inputs = match debian::resolve_inputs() {
        Ok(inputs) => inputs,
        Err(e) => match cached {
            // Offline, or the package index is unavailable: what we built still works.
            Some(m) if m.artifacts_present(dir) => {
                log(&format!(
                    "cannot resolve packages ({e}); using the images built before"
                ));
                return Ok(ImageSet {
                    dir: dir.to_owned(),
                    manifest: m,
                });
            }
            _ => return Err(e.into()),
        },
    };
    if let Some(m) = cached {
        if m.inputs == inputs && m.artifacts_present(dir) {
            log(&format!(
                "guest images up to date ({} {})",
                inputs.kernel_package, inputs.kernel_version
            ));
            return Ok(ImageSet {
                dir: dir.to_owned(),
                manifest: m,
            });
        }
    }

    log(&format!(
        "building guest images from {} {} and {} {}",
        inputs.kernel_package, inputs.kernel_version, BUSYBOX_PACKAGE, inputs.busybox_version
    ));
    let debs = dir.join("debs");
    let kernel_deb = debian::download(&inputs.kernel_package, &inputs.kernel_version, &debs)?;
    let busybox_deb = debian::download(BUSYBOX_PACKAGE, &inputs.busybox_version, &debs)?;

    let unpack = dir.join("unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    debian::extract(&kernel_deb, &unpack)?;
    let release = debian::kernel_release(&unpack)?;
    let kernel_root = dir.join("kernel").join(&release);
    let _ = std::fs::remove_dir_all(&kernel_root);
    std::fs::create_dir_all(kernel_root.parent().unwrap_or(dir)).map_err(io_err(dir))?;
    std::fs::rename(&unpack, &kernel_root).map_err(io_err(&kernel_root))?;
    debian::depmod(&kernel_root, &release)?;

    let bzimage = dir.join(manifest::BZIMAGE);
    std::fs::copy(
        kernel_root.join(format!("boot/vmlinuz-{release}")),
        &bzimage,
    )
    .map_err(io_err(&bzimage))?;
    let vmlinux = dir.join(manifest::VMLINUX);
    let image = std::fs::read(&bzimage).map_err(io_err(&bzimage))?;
    let elf = vmlinux::extract(&image)?;
    write_atomically(&vmlinux, &elf)?;

    let bb_root = dir.join("busybox-unpack");
    let _ = std::fs::remove_dir_all(&bb_root);
    debian::extract(&busybox_deb, &bb_root)?;
    let busybox = dir.join("busybox");
    std::fs::copy(bb_root.join("bin/busybox"), &busybox).map_err(io_err(&busybox))?;
    let _ = std::fs::remove_dir_all(&bb_root);

    let index = modules::ModuleIndex::load(&kernel_root, &release)?;
    let boot_initramfs = dir.join(manifest::BOOT_INITRAMFS);
    let archive = initramfs::boot_test(&busybox, &index, BOOT_TEST_MODULES)?;
    write_atomically(&boot_initramfs, &archive)?;

    let rootfs = dir.join(manifest::ROOTFS);
    log("building the ext4 root filesystem (busybox, fio, iperf3)");
    rootfs::build(&busybox, &rootfs, &dir.join("rootfs-staging"))?;
    test_disk::build(dir, &release, &bzimage, &boot_initramfs)?;

    let manifest = Manifest::new(inputs, release, dir)?;
    manifest.write(dir)?;
    log(&format!("guest images written to {}", dir.display()));
    Ok(ImageSet {
        dir: dir.to_owned(),
        manifest,
    })
}

/// Temp file, fsync, rename: a crash never leaves a half-written artifact under the
/// final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod builder_tests {
    #[test]
    fn the_builder_revision_covers_every_source_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut listed: Vec<&str> = super::BUILDER_SOURCES.iter().map(|(n, _)| *n).collect();
        // The cloud image's builder has its own revision.
        listed.extend(["cloud_image.rs", "grub_install.rs"]);
        listed.sort();
        assert_eq!(files, listed);
        assert_eq!(super::builder_revision().len(), 16);
    }
}
