//! Runs `virga-bootpick` on an instance's root disk before each boot: the
//! disk is the guest's, so whatever its `/boot` holds is read in that
//! sandboxed process (it gets the disk on its standard input and two files
//! to write the kernel and initramfs to, nothing else), never in hostd.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

/// Longer than the picker's own CPU limit (60 s), for a starved host.
const PICK_TIMEOUT: Duration = Duration::from_secs(180);
/// Most of the picker's standard output and error hostd reads.
const MAX_OUTPUT: usize = 64 << 10;

/// What to boot, as the picker found it on the disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Picked {
    pub kernel: PathBuf,
    /// None when the entry names no initramfs.
    pub initramfs: Option<PathBuf>,
    /// The entry's command line, with Virga's console added.
    pub cmdline: String,
    /// How it was found (`bls`, `grub`, `newest`), for the log.
    pub how: String,
    /// The picker's CPU time and the 512-byte blocks it read from storage
    /// (page cache misses), for the log: a slow pick tells why by them.
    pub cpu_ms: u64,
    pub blocks_read: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// The image cannot boot; the picker said why.
    #[error("the root disk cannot boot: {0}")]
    Unbootable(String),
    #[error("picking the kernel: {0}")]
    Failed(String),
}

#[derive(Deserialize)]
struct Answer {
    cmdline: String,
    how: String,
    initrd_bytes: u64,
    #[serde(default)]
    cpu_ms: u64,
    #[serde(default)]
    blocks_read: u64,
}

/// Picks what `disk` boots, writing the kernel and initramfs into `dir`.
/// With `backing` (qcow2 layers, the one right under it first, then a raw
/// base), `disk` is a qcow2 overlay over them.
pub async fn pick(
    binary: &Path,
    disk: &Path,
    backing: &[&Path],
    dir: &Path,
) -> Result<Picked, PickError> {
    let failed = |what: &str, e: std::io::Error| PickError::Failed(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| failed(&dir.display().to_string(), e))?;
    let kernel_path = dir.join("kernel");
    let initrd_path = dir.join("initramfs");
    // New files, never the old ones rewritten: a kept pick may link to
    // them (see `pick_cache`).
    let create = |p: &Path| {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(failed(&p.display().to_string(), e))
            }
            _ => {}
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(|e| failed(&p.display().to_string(), e))
    };
    let kernel = create(&kernel_path)?;
    let initrd = create(&initrd_path)?;
    let image = std::fs::File::open(disk).map_err(|e| failed(&disk.display().to_string(), e))?;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| failed(&p.display().to_string(), e));
    // The base at 5, the layers from 6 on (the one right under the overlay
    // first).
    let mut passed = Vec::new();
    if let Some((base, layers)) = backing.split_last() {
        passed.push(open(base)?);
        for layer in layers {
            passed.push(open(layer)?);
        }
    }

    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear()
        .stdin(Stdio::from(image))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !passed.is_empty() {
        cmd.arg("--overlay");
        cmd.args(["--layers", &(passed.len() - 1).to_string()]);
    }
    let fds: Vec<i32> = [kernel.as_raw_fd(), initrd.as_raw_fd()]
        .into_iter()
        .chain(passed.iter().map(|f| f.as_raw_fd()))
        .collect();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (fcntl, dup2) on plain integers; `fds` is
    // only read (the child's copy of it).
    unsafe {
        cmd.pre_exec(move || {
            // All duplicated above the highest target first, so that
            // placing one cannot close another; 3, 4, ... are made from
            // the duplicates.
            let floor = 3 + fds.len() as i32 + 10;
            let mut high = Vec::with_capacity(fds.len());
            for fd in &fds {
                let dup = libc::fcntl(*fd, libc::F_DUPFD, floor);
                if dup < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(dup);
            }
            for (fd, target) in high.into_iter().zip(3..) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| failed(&binary.display().to_string(), e))?;
    drop((kernel, initrd, passed));
    let output = match tokio::time::timeout(PICK_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| failed("waiting for the picker", e))?,
        Err(_) => {
            return Err(PickError::Failed(format!(
                "the picker took longer than {PICK_TIMEOUT:?}"
            )))
        }
    };
    let said = |bytes: &[u8]| {
        String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)])
            .trim()
            .to_owned()
    };
    if !output.status.success() {
        let why = said(&output.stderr);
        let why = why
            .strip_prefix("virga-bootpick: ")
            .unwrap_or(&why)
            .to_owned();
        return Err(match output.status.code() {
            Some(1) => PickError::Unbootable(why),
            _ => PickError::Failed(format!("the picker ended with {}: {why}", output.status)),
        });
    }
    let answer: Answer = serde_json::from_str(&said(&output.stdout))
        .map_err(|e| PickError::Failed(format!("the picker's answer: {e}")))?;
    Ok(Picked {
        kernel: kernel_path,
        initramfs: (answer.initrd_bytes > 0).then_some(initrd_path),
        cmdline: with_console(&answer.cmdline),
        how: answer.how,
        cpu_ms: answer.cpu_ms,
        blocks_read: answer.blocks_read,
    })
}

/// The image's command line with Virga's serial console (ttyS0, where the
/// console log and the interactive console are) as the kernel's console,
/// unless the image already names it.
fn with_console(cmdline: &str) -> String {
    let has_serial = cmdline
        .split_whitespace()
        .any(|w| w == "console=ttyS0" || w.starts_with("console=ttyS0,"));
    if has_serial {
        cmdline.trim().to_owned()
    } else {
        format!("{} console=ttyS0", cmdline.trim())
            .trim()
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_console_is_added_once() {
        assert_eq!(
            with_console("root=UUID=x ro"),
            "root=UUID=x ro console=ttyS0"
        );
        assert_eq!(
            with_console("ro console=tty0 console=ttyS0,115200"),
            "ro console=tty0 console=ttyS0,115200"
        );
        assert_eq!(with_console(""), "console=ttyS0");
    }
}
