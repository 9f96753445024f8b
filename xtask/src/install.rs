//! Installing what the project needs on a fresh machine.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages and a command (or file) each provides (to skip what is there).
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    // storaged (and the controller, for images it keeps) converts qcow2
    // uploads to raw with qemu-img.
    ("qemu-utils", "qemu-img"),
    ("kmod", "depmod"),
    ("dpkg", "dpkg-deb"),
    ("e2fsprogs", "mkfs.ext4"),
    // The Debian cloud image the real-guest tests boot.
    ("mmdebstrap", "mmdebstrap"),
    // UEFI firmware for QEMU, the cloud-boot benchmark's q35 peer.
    ("ovmf", "/usr/share/OVMF/OVMF_CODE_4M.fd"),
    // Benchmark tools for the guest rootfs.
    ("fio", "fio"),
    // The NBD benchmark's peer (benches/src/nbd.rs).
    ("nbdkit", "nbdkit"),
    // An S3 client the object store is tested with (controller/tests/objects.rs).
    ("rclone", "rclone"),
    // Presigned S3 URLs fetched as users do (controller/tests/objects.rs).
    ("curl", "curl"),
    ("iperf3", "iperf3"),
    // netd's tests: network namespaces, veths, ping across them.
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    // netd's security groups: one nftables ruleset per host.
    ("nftables", "nft"),
    // netd's tests: a real DHCP client in a "guest" namespace.
    ("udhcpc", "udhcpc"),
    // The cloud test logs in to its Debian guest through its floating IP.
    ("openssh-client", "ssh"),
    // The controller's store tests run against a real PostgreSQL server.
    ("postgresql", "/usr/lib/postgresql/*/bin/initdb"),
];

fn have(command: &str) -> bool {
    let test = if command.starts_with('/') {
        format!("ls {command}")
    } else {
        format!("command -v {command}")
    };
    Command::new("sh")
        .args(["-c", &test])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn as_root(args: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg(args[0]);
        c
    };
    c.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Refreshes apt's index (guest images resolve the current kernel from it) and
/// installs missing packages, until every command is there: apt may remove a
/// package while installing another (found on a fresh machine: installing
/// Debian's qemu-system-x86 removed the backports qemu-utils it conflicts
/// with, and qemu-img was gone), so what an install took away is installed
/// again, from the same release as the rest.
pub fn system_packages() -> Result<()> {
    let update = as_root(&["apt-get", "update", "-qq"])
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        eprintln!("install: apt-get update failed; continuing with the package index we have");
    }
    let missing = || -> Vec<&str> {
        PACKAGES
            .iter()
            .filter(|(_, cmd)| !have(cmd))
            .map(|(pkg, _)| *pkg)
            .collect()
    };
    for _ in 0..2 {
        let wanted = missing();
        if wanted.is_empty() {
            return Ok(());
        }
        eprintln!("install: {}", wanted.join(" "));
        let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&wanted);
        let status = as_root(&args).status().context("running apt-get install")?;
        if !status.success() {
            bail!("apt-get install {} failed", wanted.join(" "));
        }
    }
    let still = missing();
    if !still.is_empty() {
        bail!(
            "installed, yet missing: {} (apt removes one of them when installing another)",
            still.join(" ")
        );
    }
    Ok(())
}

/// rustfmt and clippy, which `cargo xtask test` runs.
pub fn rust_components() -> Result<()> {
    if have("rustfmt")
        && Command::new("cargo")
            .args(["clippy", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["component", "add", "rustfmt", "clippy"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup component add rustfmt clippy failed");
    }
    Ok(())
}

/// The OpenStack client tests drive, in `target/venv` from the pinned
/// requirements; reinstalled only when the requirements change.
pub fn python_clients(root: &std::path::Path) -> Result<std::path::PathBuf> {
    let venv = root.join("target/venv");
    venv_of(
        &root.join("tests/clients/requirements.txt"),
        &venv,
        "the Python clients",
    )?;
    Ok(venv.join("bin/openstack"))
}

/// A venv at `venv` with exactly the pinned `requirements`, made again only
/// when they change; returns `venv`.
pub fn venv(
    requirements: &std::path::Path,
    venv: &std::path::Path,
    what: &str,
) -> Result<std::path::PathBuf> {
    venv_of(requirements, venv, what)?;
    Ok(venv.to_owned())
}

fn venv_of(requirements: &std::path::Path, venv: &std::path::Path, what: &str) -> Result<()> {
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!("install: {what} into {}", venv.display());
    let _ = std::fs::remove_dir_all(venv);
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv failed (Debian: apt-get install python3-venv)");
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "-r"])
        .arg(requirements)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install -r {} failed", requirements.display());
    }
    std::fs::write(&stamp, wanted).context("writing the venv stamp")?;
    Ok(())
}
