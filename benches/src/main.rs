//! `virga-bench`: Virga's benchmarks. Each runs our system and its peers in the
//! same testbed boot (or natively), prints a table of medians and ratios, and
//! writes `target/bench/<bench>.json`.
//!
//! - `boot [--runs N] [--check]`: VMM process start to the guest's marker line, and
//!   the VMM's memory, for virga (vmlinux, bzImage) against QEMU microvm and pc.
//! - `blk [--runs N]`: fio in the guest on virtio-blk, virga against QEMU and
//!   against fio on the backing device.
//! - `blk-overlay [--runs N]`: the same on qcow2 overlays (root disks on
//!   ext4) against a raw file, and QEMU on the overlay.
//! - `blk-volume [--runs N]`: volumes as storaged keeps them (raw, after one
//!   and two snapshots) against fio on the file, and QEMU on the same chain;
//!   the raw volume over NBD against the same guest on qemu-nbd.
//! - `attach [--runs N]`: a disk plugged into and unplugged from a running
//!   guest, virga's control API against QEMU's QMP.
//! - `nbd [--runs N]`: storaged's NBD server against nbdkit, natively, on
//!   loopback with qemu-img bench as the client (no kernel, no guest).
//! - `s3 [--runs N]`: storaged's S3 API against fio doing the same durable
//!   writes and reads (natively; objects of 4 KiB to 64 MiB).
//! - `net [--runs N]`: iperf3 between the guest and the host side of its tap,
//!   virga (vhost-net and in-VMM datapath) against QEMU with vhost=on.
//! - `overlay [--runs N]`: guest to guest across two hosts (namespaces, no
//!   testbed): netd's overlay against bare VXLAN and a plain bridge.
//! - `overlay-guests [--runs N]`: the same with two real guests on two hosts
//!   in the testbed: netd's overlay against a plain bridge.
//! - `hostd [--runs N]`: create-to-boot through hostd against the VMM alone,
//!   ten concurrent creates, hostd's memory.
//! - `api [--runs N] [--servers N] [--part all|boot|latency]`: POST /servers to
//!   ACTIVE and to the guest's marker against the VMM alone; list and show
//!   latency with 1,000 servers on SQLite and PostgreSQL.
//! - `rootdisk [--runs N]`: making a server's root disk from a cached image
//!   (hostd's code) against a plain sparse copy and a qcow2 overlay.
//! - `cloud-boot [--runs N]`: the Debian cloud image from `POST /servers` to
//!   "cloud-init finished", against QEMU booting the same image through
//!   firmware and GRUB (q35 with OVMF, pc with SeaBIOS).
//! - `measure ...`, `hostd-probe ...`, `api-probe ...`: the in-testbed probes.

mod api;
mod attach;
mod blk;
mod boot;
mod boot_stats;
mod cloud_boot;
mod hostd;
mod http;
mod measure;
mod nbd;
mod net;
mod netd_scale;
mod overlay;
mod overlay_guests;
mod report;
mod rootdisk;
mod s3;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Virga benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot time and VMM memory against QEMU.
    Boot {
        /// Runs per system.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Fail when virga's boot time regressed past the stored tolerance.
        #[arg(long)]
        check: bool,
    },
    /// How far virga-boottime's verdicts can be trusted: A/A false alarms
    /// and a known slowdown found, on real boots.
    BootStats {
        /// Rounds (two interleaved boots each) for A/A and again for A/B.
        #[arg(long, default_value_t = 40)]
        rounds: u32,
        /// The known slowdown, in percent of the median boot.
        #[arg(long, default_value_t = 5)]
        slowdown_pct: u32,
    },
    /// fio in the guest (virga vs QEMU) and on the backing device.
    Blk {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// fio in the guest on qcow2 overlays and a raw file (virga vs QEMU).
    BlkOverlay {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// storaged's S3 API against fio (natively).
    S3 {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// storaged's NBD server against nbdkit (natively, qemu-img bench).
    Nbd {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// fio in the guest on volumes as storaged keeps them (raw, after one
    /// and two snapshots) against fio on the file and QEMU on the chain.
    BlkVolume {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// A disk plugged into and unplugged from a running guest: the request
    /// to the guest seeing it (virga vs QEMU).
    Attach {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// iperf3 guest<->host over a tap (virga vs QEMU).
    Net {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Guest to guest across hosts: netd's overlay vs a plain bridge
    /// (namespaces on this machine, no testbed).
    Overlay {
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Guest to guest across hosts with real guests in the testbed: netd's
    /// overlay vs a plain bridge.
    OverlayGuests {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Build the hosts and boot the guests of overlay-guests (used inside
    /// the testbed).
    OverlayGuestsInner(overlay_guests::Inner),
    /// netd with many ports on one host vs a few: time to converge, time
    /// for a change to show, nftables rules (namespaces, no testbed).
    NetdScale {
        #[arg(long, default_value_t = 1000)]
        ports: usize,
        #[arg(long, default_value_t = 5)]
        toggles: u32,
    },
    /// Supervision overhead: booting through hostd vs the VMM alone.
    Hostd {
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// The control plane: boot through the API vs the VMM alone; read latency.
    Api {
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Servers in the database for the latency part.
        #[arg(long, default_value_t = 1000)]
        servers: usize,
        #[arg(long, value_enum, default_value_t = api::Part::All)]
        part: api::Part,
    },
    /// Root disk creation from a cached image (virga vs cp and a qcow2 overlay).
    Rootdisk {
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// The Debian cloud image from `server create` to cloud-init finished
    /// (virga vs QEMU through OVMF and SeaBIOS with GRUB).
    CloudBoot {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Boot servers through the controller and time them (used inside the testbed).
    ApiProbe(api::Probe),
    /// Create instances through hostd and time them (used inside the testbed).
    HostdProbe(hostd::Probe),
    /// Time one VMM run to its marker line (used inside the testbed).
    Measure {
        #[arg(long)]
        system: String,
        #[arg(long)]
        marker: String,
        #[arg(long)]
        guest_mib: u64,
        /// Kill the guest at its marker instead of waiting for it to exit.
        #[arg(long)]
        stop_at_marker: bool,
        /// Also write the guest's console (the command's output) here.
        #[arg(long)]
        console: Option<PathBuf>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of this workspace's release build, or how to make it.
fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = workspace().join("target/release").join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} is missing: cargo build --release -p controller -p netd",
            path.display()
        );
    }
    Ok(path)
}

fn images_dir() -> PathBuf {
    std::env::var_os("VIRGA_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/images"))
}

fn vmm_bin() -> PathBuf {
    std::env::var_os("VIRGA_VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/vmm"))
}

/// The guests' kernel command line in every benchmark (quiet: the serial
/// console is slow in the testbed).
const GUEST_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.dumbkbd";

/// A shell function for benchmark scripts in the testbed:
/// `scrub_free_memory PASSES` writes every free page of L1 once per pass (a
/// file of MemFree less 256 MiB in `$WORK`, then removed) and prints how
/// long each pass took. The testbed's CPU is emulated: the first writes into
/// memory a guest has just freed cost L1 minutes in its kernel, whoever makes
/// them (most likely QEMU's TCG dropping the code it translated from those
/// pages), so a system started right after another's guest would pay for
/// it. Scripts call this after each guest ends, outside any timing.
const SCRUB_FREE_MEMORY: &str = r#"scrub_free_memory() {
  pass=1
  while [ $pass -le $1 ]; do
    free=$(awk '/^MemFree:/ {print int($2 / 1024) - 256}' /proc/meminfo)
    read t0 _ < /proc/uptime
    dd if=/dev/zero of=$WORK/scrub bs=1M count=$free 2>/dev/null; rm -f $WORK/scrub
    read t1 _ < /proc/uptime
    echo "scrub: pass $pass over $free MiB of free memory: $(awk "BEGIN { print $t1 - $t0 }") s"
    pass=$((pass + 1))
  done
}
"#;

/// Fails unless `sh -n` parses `script`: the benchmarks' scripts run only in
/// the testbed, so a syntax error would otherwise show first there.
#[cfg(test)]
fn assert_shell_parses(script: &str) {
    let parsed = std::process::Command::new("sh")
        .args(["-n", "-c", script])
        .status()
        .expect("sh runs");
    assert!(parsed.success(), "the script parses:\n{script}");
}

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// What QEMU loads for `-M pc` and `-M microvm` with `-kernel`. Debian keeps
/// SeaBIOS apart from QEMU's own ROMs; QEMU searches both.
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Boot { runs, check } => boot::run(runs, check),
        Cmd::BootStats {
            rounds,
            slowdown_pct,
        } => boot_stats::run(rounds, slowdown_pct),
        Cmd::Rootdisk { runs } => rootdisk::run(runs),
        Cmd::CloudBoot { runs } => cloud_boot::run(runs),
        Cmd::Blk { runs } => blk::run(runs),
        Cmd::BlkOverlay { runs } => blk::run_overlay(runs),
        Cmd::BlkVolume { runs } => blk::run_volume(runs),
        Cmd::Nbd { runs } => nbd::run(runs),
        Cmd::Attach { runs } => attach::run(runs),
        Cmd::S3 { runs } => s3::run(runs),
        Cmd::Net { runs } => net::run(runs),
        Cmd::Overlay { runs } => overlay::run(runs),
        Cmd::OverlayGuests { runs } => overlay_guests::run(runs),
        Cmd::OverlayGuestsInner(i) => overlay_guests::inner(&i),
        Cmd::NetdScale { ports, toggles } => netd_scale::run(ports, toggles),
        Cmd::Hostd { runs } => hostd::run(runs),
        Cmd::Api {
            runs,
            servers,
            part,
        } => api::run(runs, servers, part),
        Cmd::ApiProbe(p) => api::probe(&p),
        Cmd::HostdProbe(p) => hostd::probe(&p),
        Cmd::Measure {
            system,
            marker,
            guest_mib,
            stop_at_marker,
            console,
            command,
        } => measure::run(
            &measure::Run {
                system: &system,
                marker: &marker,
                guest_mib,
                stop: stop_at_marker,
                console: console.as_deref(),
            },
            &command,
        ),
    }
}
