//! A flavor's ephemeral and swap disks, as Nova's libvirt driver makes them:
//! sparse files of the flavor's size, the ephemeral one formatted ext4 and
//! labelled `ephemeral0`, the swap one with a swap signature. cloud-init
//! finds them by that label and type (its ConfigDrive datasource falls back
//! to `LABEL=ephemeral0` and `TYPE=swap`) and mounts the ephemeral disk on
//! /mnt and enables the swap by default. Made once, when the instance is
//! prepared; kept across stops and reboots; removed with the instance.
//!
//! The formatting is e2fsprogs' and util-linux's (`mke2fs`, `mkswap`), run
//! on a file hostd just made: nothing a guest or a client controls reaches
//! them but the size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a format may take (a sparse file formats in well under a
/// second; this bounds a tool that hangs).
const FORMAT_TIMEOUT: Duration = Duration::from_secs(120);

/// Makes `dest`, an ext4 filesystem of `gib` GiB labelled `ephemeral0`,
/// unless it exists (a preparation started again after a crash).
pub fn make_ephemeral(dest: &Path, gib: u32) -> Result<(), String> {
    make(dest, u64::from(gib) << 30, |part| {
        let mut c = Command::new(system_tool("mke2fs"));
        c.args(["-q", "-F", "-t", "ext4", "-L", "ephemeral0"])
            .arg(part);
        c
    })
    .map_err(|e| format!("making the ephemeral disk: {e}"))
}

/// Makes `dest`, a swap disk of `mib` MiB, unless it exists.
pub fn make_swap(dest: &Path, mib: u32) -> Result<(), String> {
    make(dest, u64::from(mib) << 20, |part| {
        let mut c = Command::new(system_tool("mkswap"));
        c.arg(part);
        c
    })
    .map_err(|e| format!("making the swap disk: {e}"))
}

/// The system's `name` (e2fsprogs', util-linux's) where distributions put
/// it, before whatever else `PATH` finds (a busybox applet of the same name
/// knows no ext4).
fn system_tool(name: &str) -> std::path::PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

/// Formats a sparse file of `size` bytes beside `dest` with `format` and
/// renames it into place, so `dest` is either absent or whole.
fn make(dest: &Path, size: u64, format: impl FnOnce(&Path) -> Command) -> Result<(), String> {
    if dest.exists() {
        return Ok(());
    }
    let part = dest.with_extension("part");
    let _ = std::fs::remove_file(&part);
    let result = (|| {
        let file = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        file.set_len(size)
            .map_err(|e| format!("{}: {e}", part.display()))?;
        run(format(&part))?;
        file.sync_all()
            .map_err(|e| format!("{}: {e}", part.display()))?;
        std::fs::rename(&part, dest).map_err(|e| format!("{}: {e}", dest.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Runs `cmd` to its end (at most [`FORMAT_TIMEOUT`]); its output says why
/// it failed.
fn run(mut cmd: Command) -> Result<(), String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {name}: {e}"))?;
    let deadline = Instant::now() + FORMAT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name} took longer than {FORMAT_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for {name}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    Err(format!("{name} failed ({status}): {}", stderr.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `blkid`'s view of a disk: (type, label).
    fn probe(path: &Path) -> Option<(String, String)> {
        let out = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(path)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
                .to_owned()
        };
        Some((field("TYPE"), field("LABEL")))
    }

    #[test]
    fn disks_are_sparse_formatted_and_made_once() {
        use std::os::unix::fs::MetadataExt;
        let have = |tool: &str| Command::new(system_tool(tool)).arg("-V").output().is_ok();
        if !(have("mke2fs") && have("mkswap") && have("blkid")) {
            assert!(
                std::env::var_os("VIRGA_REQUIRE_TOOLS").is_none(),
                "mke2fs, mkswap and blkid are required"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let eph = dir.path().join("ephemeral.img");
        make_ephemeral(&eph, 2).unwrap();
        let meta = std::fs::metadata(&eph).unwrap();
        assert_eq!(meta.len(), 2 << 30);
        assert!(meta.blocks() * 512 < 128 << 20, "sparse: {}", meta.blocks());
        assert_eq!(
            probe(&eph),
            Some(("ext4".to_owned(), "ephemeral0".to_owned()))
        );
        // Made once: a second call keeps what the guest wrote.
        let before = std::fs::metadata(&eph).unwrap().modified().unwrap();
        make_ephemeral(&eph, 2).unwrap();
        assert_eq!(std::fs::metadata(&eph).unwrap().modified().unwrap(), before);

        let swap = dir.path().join("swap.img");
        make_swap(&swap, 64).unwrap();
        assert_eq!(std::fs::metadata(&swap).unwrap().len(), 64 << 20);
        assert_eq!(probe(&swap).map(|p| p.0), Some("swap".to_owned()));

        // A failure leaves nothing behind and says why.
        let tiny = dir.path().join("tiny.img");
        let e = make(&tiny, 4096, |part| {
            let mut c = Command::new(system_tool("mke2fs"));
            c.args(["-q", "-F", "-t", "ext4"]).arg(part);
            c
        })
        .unwrap_err();
        assert!(e.contains("mke2fs failed"), "{e}");
        assert!(!tiny.exists() && !tiny.with_extension("part").exists());
    }
}
