//! Finding, downloading and unpacking Debian packages with the system's apt and dpkg.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{BUSYBOX_PACKAGE, KERNEL_METAPACKAGE};

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{0}")]
    Unexpected(String),
}

/// The package versions a build uses; equal inputs mean an identical build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub kernel_package: String,
    pub kernel_version: String,
    pub busybox_version: String,
    /// Installed versions of the benchmark tools copied into the rootfs.
    pub tool_versions: String,
    pub builder_revision: String,
}

pub(crate) fn run(cmd: &mut Command) -> Result<String, DebianError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| DebianError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(DebianError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The candidate version apt would install of `package`.
pub fn candidate_version(package: &str) -> Result<String, DebianError> {
    let out = run(Command::new("apt-cache").args(["policy", package]))?;
    parse_candidate(&out)
        .ok_or_else(|| DebianError::Unexpected(format!("apt knows no candidate for {package}")))
}

fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// The versioned kernel package the metapackage points at today.
pub fn current_kernel_package() -> Result<String, DebianError> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    parse_kernel_dependency(&out).ok_or_else(|| {
        DebianError::Unexpected(format!(
            "{KERNEL_METAPACKAGE} depends on no linux-image package"
        ))
    })
}

fn parse_kernel_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        (dep.starts_with("linux-image-") && dep != KERNEL_METAPACKAGE).then(|| dep.to_owned())
    })
}

pub fn resolve_inputs() -> Result<Inputs, DebianError> {
    let kernel_package = current_kernel_package()?;
    Ok(Inputs {
        kernel_version: candidate_version(&kernel_package)?,
        busybox_version: candidate_version(BUSYBOX_PACKAGE)?,
        tool_versions: installed_versions(&["fio", "iperf3"]),
        kernel_package,
        builder_revision: crate::builder_revision(),
    })
}

/// "name version" of each installed package (or "name missing").
pub fn installed_versions(packages: &[&str]) -> String {
    packages
        .iter()
        .map(|p| {
            let v = Command::new("dpkg-query")
                .args(["-W", "-f", "${Version}", p])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|| "missing".into());
            format!("{p} {v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Downloads `package=version` into `dir` (kept as a cache) and returns the .deb.
pub fn download(package: &str, version: &str, dir: &Path) -> Result<PathBuf, DebianError> {
    std::fs::create_dir_all(dir).map_err(|source| DebianError::Spawn {
        command: format!("mkdir {}", dir.display()),
        source,
    })?;
    let find = || -> Option<PathBuf> {
        let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(dir))?;
    find().ok_or_else(|| {
        DebianError::Unexpected(format!(
            "apt-get download left no .deb for {package} {version}"
        ))
    })
}

pub fn extract(deb: &Path, dest: &Path) -> Result<(), DebianError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(drop)
}

/// The kernel release (`6.1.0-NN-cloud-amd64`) of an unpacked kernel package.
pub fn kernel_release(root: &Path) -> Result<String, DebianError> {
    let modules = root.join("lib/modules");
    let entries = std::fs::read_dir(&modules).map_err(|source| DebianError::Spawn {
        command: format!("reading {}", modules.display()),
        source,
    })?;
    let releases: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(DebianError::Unexpected(format!(
            "expected one kernel release in {}, found {other:?}",
            modules.display()
        ))),
    }
}

/// Generates modules.dep for an unpacked kernel (dpkg's postinst would have).
pub fn depmod(root: &Path, release: &str) -> Result<(), DebianError> {
    run(Command::new("depmod").arg("-b").arg(root).arg(release)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_output() {
        let policy = "linux-image-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("6.1.192-2"));
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(depends).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_kernel_dependency("x\n  Depends: libc6\n"), None);
    }
}
