//! `rootdisk [--runs N]`: how long making a server's root disk takes, the
//! step between "the image is cached on the host" and "the VMM can start".
//! Virga's is hostd's own code (`hostd::root_disk::make`: blocks shared
//! where the filesystem can, else a qcow2 overlay over the image, at the
//! flavor's size); the peers are `cp --sparse=always` (a plain copy) and
//! `qemu-img create -b` (Nova's default qcow2 overlay, constant time). Images: 1 GiB and 10 GiB with a quarter
//! of data (1 MiB of every 4 MiB), and the Debian cloud image when built.
//! The filesystem under `target/` decides whether sharing is possible; the
//! table says which it was.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::report::{Report, Samples};

const PEER: &str = "qcow2-overlay";
const MIB: u64 = 1 << 20;

pub fn run(runs: u32) -> Result<()> {
    let work = crate::workspace().join("target/bench-rootdisk");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    for gib in [1u64, 10] {
        let path = work.join(format!("image-{gib}g.raw"));
        synthetic_image(&path, gib << 30)?;
        images.push((format!("{gib}GiB-image"), path));
    }
    let debian = crate::images_dir().join("debian-12");
    if let Ok(image) = virga_guest_images::cloud_image::load(&debian) {
        images.push(("debian-12".into(), image.raw()));
    }

    let mut samples = Samples::default();
    let mut how = Vec::new();
    for run in 0..runs {
        for (name, image) in &images {
            let dir = work.join("instance");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let started = Instant::now();
            let (_, made) = hostd::root_disk::make(image, &dir, Some(20))
                .with_context(|| format!("root disk from {}", image.display()))?;
            samples.add("virga", name, "ms", started.elapsed().as_secs_f64() * 1e3);
            if run == 0 {
                how.push(format!("{name}: {made:?}"));
            }
            std::fs::remove_dir_all(&dir)?;
            let dest = work.join("root.img");

            let started = Instant::now();
            command(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(image)
                    .arg(&dest),
            )?;
            samples.add(
                "cp-sparse",
                name,
                "ms",
                started.elapsed().as_secs_f64() * 1e3,
            );
            std::fs::remove_file(&dest)?;

            let overlay = work.join("root.qcow2");
            let _ = std::fs::remove_file(&overlay);
            let started = Instant::now();
            command(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(image)
                    .arg(&overlay)
                    .arg("20G"),
            )?;
            samples.add(PEER, name, "ms", started.elapsed().as_secs_f64() * 1e3);
            std::fs::remove_file(&overlay)?;
        }
    }
    let report = Report {
        bench: "rootdisk".into(),
        host: format!("{} (native, {})", crate::host_cpu(), filesystem(&work)),
        rows: samples.rows(&["virga", "cp-sparse", PEER]),
    };
    let path = report.write(&crate::workspace().join("target/bench"))?;
    let _ = std::fs::remove_dir_all(&work);
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!("how virga made them: {}", how.join("; "));
    println!("written to {}", path.display());
    Ok(())
}

fn command(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A sparse image of `len` bytes with 1 MiB of data in every 4 MiB.
fn synthetic_image(path: &Path, len: u64) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 | 1).collect();
    let mut at = 0;
    while at < len {
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&block)?;
        at += 4 * MIB;
    }
    f.set_len(len)?;
    f.sync_all()?;
    Ok(())
}

/// The filesystem type `dir` is on, as `stat -f` names it.
fn filesystem(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown filesystem".into())
}
