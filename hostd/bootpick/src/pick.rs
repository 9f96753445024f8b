//! The search for what an image boots, in the order boot loaders use: Boot
//! Loader Spec entries, then grub.cfg's default entry, then the newest
//! `vmlinuz-*` with its initramfs. Each way that fails says why; the error
//! lists them all.

use ext4_view::Ext4;

use crate::disk::{partitions, Image};
use crate::loader::{bls_entry, clean_path, compare_versions, grub_default, sort_bls, Entry};

/// Bounds on what is read from an image, checked before reading.
#[derive(Clone, Debug)]
pub struct Limits {
    pub kernel_bytes: u64,
    /// All initrds of an entry together.
    pub initrd_bytes: u64,
    /// One configuration file (grub.cfg, a BLS entry).
    pub config_bytes: u64,
    pub cmdline_bytes: usize,
    /// BLS entries or kernels looked at per directory.
    pub entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            kernel_bytes: 256 << 20,
            initrd_bytes: 1 << 30,
            config_bytes: 1 << 20,
            cmdline_bytes: 4096,
            entries: 256,
        }
    }
}

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootChoice {
    pub kernel: Vec<u8>,
    /// The initrds, concatenated (the kernel reads them as one); empty if
    /// none.
    pub initrd: Vec<u8>,
    pub cmdline: String,
    /// How it was found, for logs and faults: e.g. "grub.cfg entry 'Debian
    /// GNU/Linux'".
    pub how: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    #[error("no ext4 filesystem on the image ({0} partitions looked at)")]
    NoFilesystem(usize),
    #[error("nothing to boot on the image: {}", .0.join("; "))]
    NoKernel(Vec<String>),
}

/// A filesystem of the image, with its UUID as GRUB and `root=UUID=` write it.
struct Fs {
    fs: Ext4,
    uuid: String,
}

const BLS_DIRS: &[&str] = &["/loader/entries", "/boot/loader/entries"];
const GRUB_CFGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub2/grub.cfg",
];
/// Where kernels live: `/boot` on the root filesystem, or the top of a
/// separate boot filesystem.
const KERNEL_DIRS: &[&str] = &["/boot", "/"];

/// Finds what `image` boots.
pub fn pick(image: &Image, limits: &Limits) -> Result<BootChoice, PickError> {
    let regions = partitions(image);
    let filesystems: Vec<Fs> = regions
        .iter()
        .filter_map(|r| {
            let fs = Ext4::load(Box::new(r.clone())).ok()?;
            Some(Fs {
                uuid: fs.uuid().to_string(),
                fs,
            })
        })
        .collect();
    if filesystems.is_empty() {
        return Err(PickError::NoFilesystem(regions.len()));
    }
    let mut why = Vec::new();
    for way in [from_bls, from_grub, newest_kernel] {
        match way(&filesystems, limits) {
            Ok(choice) => return Ok(choice),
            Err(e) => why.push(e),
        }
    }
    Err(PickError::NoKernel(why))
}

/// A regular file's bytes, at most `max` of them (checked before reading;
/// symbolic links followed as the kernel would, loops refused).
fn read_bounded(fs: &Ext4, path: &str, max: u64, what: &str) -> Result<Vec<u8>, String> {
    let meta = fs
        .metadata(path)
        .map_err(|e| format!("{what} {path}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{what} {path}: a directory"));
    }
    if meta.len() > max {
        return Err(format!(
            "{what} {path}: {} bytes, more than the {max} allowed",
            meta.len()
        ));
    }
    fs.read(path).map_err(|e| format!("{what} {path}: {e}"))
}

/// The names in a directory (at most `limit`), or none if it is missing.
fn names(fs: &Ext4, dir: &str, limit: usize) -> Vec<String> {
    let Ok(entries) = fs.read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().as_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .take(limit)
        .collect()
}

/// Loads what an entry names from filesystem `fs`.
fn load(fs: &Fs, e: &Entry, how: String, limits: &Limits) -> Result<BootChoice, String> {
    let kernel_path =
        clean_path(&e.linux).ok_or_else(|| format!("{how}: kernel path {:?}", e.linux))?;
    let kernel = read_bounded(&fs.fs, &kernel_path, limits.kernel_bytes, "kernel")?;
    let mut initrd = Vec::new();
    for path in &e.initrds {
        let path = clean_path(path).ok_or_else(|| format!("{how}: initrd path {path:?}"))?;
        let left = limits.initrd_bytes.saturating_sub(initrd.len() as u64);
        initrd.extend(read_bounded(&fs.fs, &path, left, "initrd")?);
    }
    if e.options.len() > limits.cmdline_bytes {
        return Err(format!(
            "{how}: a command line of {} bytes, more than the {} allowed",
            e.options.len(),
            limits.cmdline_bytes
        ));
    }
    Ok(BootChoice {
        kernel,
        initrd,
        cmdline: e.options.clone(),
        how,
    })
}

fn from_bls(filesystems: &[Fs], limits: &Limits) -> Result<BootChoice, String> {
    let mut entries: Vec<(String, (usize, Entry))> = Vec::new();
    for (i, fs) in filesystems.iter().enumerate() {
        for dir in BLS_DIRS {
            for name in names(&fs.fs, dir, limits.entries) {
                if !name.ends_with(".conf") {
                    continue;
                }
                let path = format!("{dir}/{name}");
                let Ok(bytes) = read_bounded(&fs.fs, &path, limits.config_bytes, "entry") else {
                    continue;
                };
                if let Some(e) = bls_entry(&String::from_utf8_lossy(&bytes), &name) {
                    entries.push((name, (i, e)));
                }
            }
        }
    }
    sort_bls(&mut entries);
    let Some((_, (i, e))) = entries.first() else {
        return Err("no Boot Loader Spec entries".into());
    };
    load(
        &filesystems[*i],
        e,
        format!("Boot Loader Spec entry '{}'", e.title),
        limits,
    )
}

fn from_grub(filesystems: &[Fs], limits: &Limits) -> Result<BootChoice, String> {
    for fs in filesystems {
        for cfg in GRUB_CFGS {
            let Ok(bytes) = read_bounded(&fs.fs, cfg, limits.config_bytes, "grub.cfg") else {
                continue;
            };
            let Some(e) = grub_default(&String::from_utf8_lossy(&bytes)) else {
                return Err(format!("{cfg}: no menu entry with a kernel"));
            };
            // The paths are on the filesystem the entry searches for, or on
            // the one holding grub.cfg.
            let on = e
                .fs_uuid
                .as_ref()
                .and_then(|u| filesystems.iter().find(|f| f.uuid.eq_ignore_ascii_case(u)))
                .unwrap_or(fs);
            return load(on, &e, format!("grub.cfg entry '{}'", e.title), limits);
        }
    }
    Err("no grub.cfg".into())
}

fn newest_kernel(filesystems: &[Fs], limits: &Limits) -> Result<BootChoice, String> {
    let mut found: Option<(usize, &str, String)> = None;
    let mut all = Vec::new();
    for (i, fs) in filesystems.iter().enumerate() {
        for dir in KERNEL_DIRS {
            for name in names(&fs.fs, dir, limits.entries) {
                if let Some(version) = name.strip_prefix("vmlinuz-") {
                    all.push((i, *dir, version.to_owned()));
                }
            }
        }
    }
    for (i, dir, version) in all {
        let newer = found
            .as_ref()
            .is_none_or(|(_, _, v)| compare_versions(&version, v).is_gt());
        if newer {
            found = Some((i, dir, version));
        }
    }
    let Some((i, dir, version)) = found else {
        return Err("no /boot/vmlinuz-*".into());
    };
    let fs = &filesystems[i];
    let at = |name: String| {
        if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        }
    };
    let initrds: Vec<String> = [
        format!("initrd.img-{version}"),
        format!("initramfs-{version}.img"),
    ]
    .into_iter()
    .map(at)
    .filter(|p| fs.fs.exists(p.as_str()).unwrap_or(false))
    .take(1)
    .collect();
    // The root filesystem: the one with /etc, else the kernel's own.
    let root = filesystems
        .iter()
        .find(|f| f.fs.exists("/etc").unwrap_or(false))
        .unwrap_or(fs);
    let entry = Entry {
        title: version.clone(),
        linux: at(format!("vmlinuz-{version}")),
        initrds,
        options: format!("root=UUID={} ro", root.uuid),
        fs_uuid: None,
    };
    load(fs, &entry, format!("the newest kernel, {version}"), limits)
}
