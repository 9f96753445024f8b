//! A run's boots, as kept in a file: what was booted (paths and content
//! hashes), where, and each boot's phases. A baseline is such a file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file format's version; a file of another is refused, not guessed at.
pub const FORMAT: u32 = 1;

/// Where a variant's kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A kernel (and initramfs) given as files.
    Kernel {
        kernel: PathBuf,
        initramfs: Option<PathBuf>,
    },
    /// A raw disk image (a cloud image): its kernel, initramfs and command
    /// line are picked from its own `/boot`, as hostd does, and each boot
    /// gets a fresh copy-on-write root disk over it.
    Image(PathBuf),
}

/// What is booted: the VMM's inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub source: Source,
    /// The kernel command line; for an image, None boots the one its boot
    /// entry names.
    pub cmdline: Option<String>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The console line (a substring) that ends a boot.
    pub marker: String,
    /// More VMM flags, as given (e.g. `--disk path=...`).
    pub vmm_args: Vec<String>,
    /// The VMM binary, when this variant names its own (comparing two
    /// builds of Virga); else the run's.
    pub vmm: Option<PathBuf>,
}

/// A variant made ready to boot: an image's kernel picked, the command line
/// settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    /// The image each boot's root disk is made over.
    pub image: Option<PathBuf>,
    /// The VMM binary that boots it.
    pub vmm: PathBuf,
    pub variant: Variant,
}

/// A variant as a file records it: contents by hash, so a baseline says
/// what it measured even after the files change. For an image, the hashes
/// are of the kernel and initramfs picked from it (hashing gigabytes per run
/// would cost more than the boots); its size is kept beside its path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantInfo {
    pub kernel: String,
    pub kernel_sha256: String,
    pub initramfs: Option<String>,
    pub initramfs_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub marker: String,
    #[serde(default)]
    pub vmm_args: Vec<String>,
    /// The VMM binary's path and contents (absent in files from before
    /// they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_sha256: Option<String>,
}

impl VariantInfo {
    pub fn of(r: &Ready) -> std::io::Result<VariantInfo> {
        let v = &r.variant;
        let image_bytes = r
            .image
            .as_deref()
            .map(|i| std::fs::metadata(i).map(|m| m.len()))
            .transpose()?;
        Ok(VariantInfo {
            kernel: r.kernel.display().to_string(),
            kernel_sha256: sha256_file(&r.kernel)?,
            initramfs: r.initramfs.as_ref().map(|p| p.display().to_string()),
            initramfs_sha256: r.initramfs.as_deref().map(sha256_file).transpose()?,
            image: r.image.as_ref().map(|p| p.display().to_string()),
            image_bytes,
            cmdline: r.cmdline.clone(),
            vcpus: v.vcpus,
            memory_mib: v.memory_mib,
            marker: v.marker.clone(),
            vmm_args: v.vmm_args.clone(),
            vmm: Some(r.vmm.display().to_string()),
            vmm_sha256: Some(sha256_file(&r.vmm)?),
        })
    }

    /// A short name: the image's file name, or the kernel's and, if any,
    /// the initramfs's.
    pub fn label(&self) -> String {
        let name = |p: &str| {
            Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.to_owned())
        };
        match (&self.image, &self.initramfs) {
            (Some(i), _) => format!("image {}", name(i)),
            (None, Some(i)) => format!("{} + {}", name(&self.kernel), name(i)),
            (None, None) => name(&self.kernel),
        }
    }

    /// Whether `other` was booted by a different VMM build (unknown for
    /// files that did not record it: not different).
    pub fn other_vmm(&self, other: &VariantInfo) -> bool {
        matches!((&self.vmm_sha256, &other.vmm_sha256), (Some(a), Some(b)) if a != b)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The phases of a boot a comparison looks at, in boot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The VMM's process start to the guest's first instruction.
    VmmSetup,
    /// The first instruction to the kernel starting init (seen only when
    /// the kernel prints "Run /init as init process": not with `quiet`).
    Kernel,
    /// Init's start to the marker.
    Userspace,
    /// The first instruction to the marker.
    Guest,
    /// The VMM's process start to the marker: what a user waits for.
    Total,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::VmmSetup,
        Phase::Kernel,
        Phase::Userspace,
        Phase::Guest,
        Phase::Total,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::VmmSetup => "vmm_setup",
            Phase::Kernel => "kernel",
            Phase::Userspace => "userspace",
            Phase::Guest => "guest",
            Phase::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// One boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    /// Milliseconds per phase; a phase the boot did not show is absent.
    pub phases_ms: BTreeMap<Phase, f64>,
    /// The kernel's printk clock when it started init, if printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_clock_at_init_s: Option<f64>,
    /// vCPU exits by reason during each phase (`kernel`, `userspace`,
    /// `guest`), as the VMM counted them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exits: BTreeMap<Phase, BTreeMap<String, u64>>,
    /// `initcall_debug`'s durations (µs), when the command line asks for them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub initcalls_us: BTreeMap<String, u64>,
}

impl Boot {
    pub fn phase(&self, p: Phase) -> Option<f64> {
        self.phases_ms.get(&p).copied()
    }
}

/// A run of boots of one variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleFile {
    pub format: u32,
    pub tool_version: String,
    /// Where it ran: kernel release and CPU model.
    pub host: String,
    /// Seconds since the Unix epoch when the run ended.
    pub recorded_at: u64,
    pub variant: VariantInfo,
    pub boots: Vec<Boot>,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleFileError {
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a boot-time sample file")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: format {found}, this tool reads format {FORMAT}")]
    Format { path: String, found: u32 },
    #[error("{path}: holds boots of another variant ({theirs}) than this run's ({ours})")]
    OtherVariant {
        path: String,
        theirs: String,
        ours: String,
    },
}

impl SampleFile {
    pub fn new(variant: VariantInfo) -> SampleFile {
        SampleFile {
            format: FORMAT,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: host_description(),
            recorded_at: now_secs(),
            variant,
            boots: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<SampleFile, SampleFileError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SampleFileError::Io {
            path: p.clone(),
            source,
        })?;
        // The format first, so an old or new file gets that answer.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head =
            serde_json::from_slice(&bytes).map_err(|source| SampleFileError::Parse {
                path: p.clone(),
                source,
            })?;
        if head.format != FORMAT {
            return Err(SampleFileError::Format {
                path: p,
                found: head.format,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| SampleFileError::Parse { path: p, source })
    }

    /// Writes the file whole (a temporary file renamed over it), so a run
    /// cut short never leaves half a baseline.
    pub fn save(&self, path: &Path) -> Result<(), SampleFileError> {
        let io = |source| SampleFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        serde_json::to_writer_pretty(&mut tmp, self).map_err(|e| io(e.into()))?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Adds `more`'s boots, refusing boots of another variant.
    pub fn append(&mut self, more: SampleFile, path: &Path) -> Result<(), SampleFileError> {
        if more.variant != self.variant {
            return Err(SampleFileError::OtherVariant {
                path: path.display().to_string(),
                theirs: describe(&self.variant),
                ours: describe(&more.variant),
            });
        }
        self.boots.extend(more.boots);
        self.recorded_at = more.recorded_at;
        Ok(())
    }

    /// One phase's values over the boots that showed it.
    pub fn values(&self, p: Phase) -> Vec<f64> {
        self.boots.iter().filter_map(|b| b.phase(p)).collect()
    }
}

fn describe(v: &VariantInfo) -> String {
    format!(
        "{} sha256 {}.., cmdline {:?}",
        v.label(),
        &v.kernel_sha256[..v.kernel_sha256.len().min(12)],
        v.cmdline
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "Linux 6.1.0-28-amd64, AMD EPYC 7B13" from /proc.
pub fn host_description() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("Linux {}, {cpu}", release.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(dir: &Path, kernel_bytes: &[u8]) -> Ready {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, kernel_bytes).unwrap();
        let vmm = dir.join("vmm");
        std::fs::write(&vmm, b"a VMM").unwrap();
        Ready {
            kernel: kernel.clone(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
            image: None,
            vmm,
            variant: Variant {
                source: Source::Kernel {
                    kernel,
                    initramfs: None,
                },
                cmdline: None,
                vcpus: 1,
                memory_mib: 128,
                marker: "READY".into(),
                vmm_args: vec![],
                vmm: None,
            },
        }
    }

    #[test]
    fn files_round_trip_and_refuse_what_they_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let info = VariantInfo::of(&variant(dir.path(), b"abc")).unwrap();
        // sha256("abc")
        assert!(info.kernel_sha256.starts_with("ba7816bf8f01cfea"));
        let mut f = SampleFile::new(info.clone());
        f.boots.push(Boot {
            phases_ms: [(Phase::Total, 812.5), (Phase::VmmSetup, 9.0)].into(),
            ..Default::default()
        });
        let path = dir.path().join("base.json");
        f.save(&path).unwrap();
        let back = SampleFile::load(&path).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.values(Phase::Total), vec![812.5]);
        assert!(back.values(Phase::Kernel).is_empty());

        std::fs::write(&path, br#"{"format": 99}"#).unwrap();
        assert!(matches!(
            SampleFile::load(&path),
            Err(SampleFileError::Format { found: 99, .. })
        ));
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            SampleFile::load(&path),
            Err(SampleFileError::Parse { .. })
        ));
        assert!(matches!(
            SampleFile::load(&dir.path().join("missing.json")),
            Err(SampleFileError::Io { .. })
        ));
    }

    #[test]
    fn appending_takes_only_the_same_variant() {
        let dir = tempfile::tempdir().unwrap();
        let a = VariantInfo::of(&variant(dir.path(), b"one")).unwrap();
        let b = VariantInfo::of(&variant(dir.path(), b"two")).unwrap();
        let mut file = SampleFile::new(a.clone());
        let mut more = SampleFile::new(a);
        more.boots.push(Boot::default());
        file.append(more, Path::new("x.json")).unwrap();
        assert_eq!(file.boots.len(), 1);
        let err = file
            .append(SampleFile::new(b), Path::new("x.json"))
            .unwrap_err();
        assert!(err.to_string().contains("another variant"), "{err}");
    }

    #[test]
    fn phases_have_stable_names() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.name()), Some(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
        assert_eq!(Phase::parse("boot"), None);
    }
}
