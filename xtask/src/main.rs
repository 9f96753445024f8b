//! `cargo xtask`: the project's automation, one subcommand per job.
//!
//! - `up`: install what is needed, build, and run the all-in-one cloud: the
//!   controller here, hostd where KVM is usable (the testbed unless KVM is
//!   hardware-backed), a default flavor and test image, `target/virga/clouds.yaml`.
//! - `test`: install what is needed and run every test, unit and end-to-end.
//! - `images`: build the guest kernel and initramfs from Debian packages.
//! - `testbed -- CMD`: run a shell command where VMM scenarios run.
//! - `bench boot [--check]`: the boot-time benchmark and regression check;
//!   `bench blk`, `bench net`, `bench overlay`: the disk and network
//!   benchmarks (the overlay one natively, in namespaces).
//! - `fuzz [--target T] [--minutes N]`: the fuzz targets, long.
//! - `conformance [--service S]... [--admin]`: tempest's API tests against
//!   the running all-in-one.
//! - `crash-trials [--trials N]`: `kill -9` of the controller during creates,
//!   deletes and actions, of storaged during volume changes, and of the VMM
//!   under a writing guest, and what each left behind; power cuts under the
//!   object store.

mod conformance;
mod flakes;
mod fuzz;
mod install;
mod lanes;
mod up;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Virga project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the all-in-one cloud (controller, hostd, a flavor and a test image) until Ctrl-C.
    Up,
    /// Install what is needed and run every test (unit and end-to-end).
    Test {
        /// Skip the end-to-end tests (unit tests only).
        #[arg(long)]
        unit_only: bool,
        /// Only the end-to-end tests (no fmt, clippy or unit tests).
        #[arg(long, conflicts_with = "unit_only")]
        e2e_only: bool,
        /// Hunt flakes: run the tests this many times (no fmt/clippy) and
        /// print a pass/fail table per test.
        #[arg(long, value_name = "N")]
        repeat: Option<u32>,
        /// Only the tests whose names contain PATTERN (libtest's filter);
        /// implies one round when --repeat is not given.
        #[arg(long, value_name = "PATTERN")]
        filter: Option<String>,
    },
    /// Build the guest images (kernel, vmlinux, boot-test initramfs) under target/images.
    Images,
    /// Run a shell command where VMM scenarios run ($BIN/vmm, $GUEST/vmlinux, ...).
    Testbed {
        /// Attach a writable copy of the guest rootfs at $ROOTFS.
        #[arg(long)]
        rootfs: bool,
        /// Attach an empty disk of this many MiB at $SCRATCH.
        #[arg(long)]
        scratch_mib: Option<u64>,
        /// Also bring the benchmarks' peers: QEMU (with its firmware), fio, iperf3.
        #[arg(long)]
        peers: bool,
        /// Also bring this host file, at the same path (repeat), e.g. an
        /// older build of the VMM for `virga-boottime compare --baseline-vmm`.
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Run a benchmark (boot, blk, net); its JSON goes to target/bench/.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the system packages the project needs (apt).
    Install,
    /// Run the VMM's fuzz targets long (release mode), one after another.
    Fuzz {
        /// Only this target (virtio_blk, virtio_net, virtio_rng, pci, legacy_ports, config, api).
        #[arg(long)]
        target: Option<String>,
        /// Minutes per target.
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
    },
    /// Kill the controller with SIGKILL at random moments during server
    /// creates, deletes and actions, and storaged during volume snapshots,
    /// clones, grows and deletes and under S3 PUTs and DELETEs; restart them, and check what they left
    /// (controller/tests/crash_trials.rs). Then kill the VMM while its
    /// guest writes, in the testbed, and check nothing flushed was lost
    /// (tests/e2e/tests/blk.rs); and hostd, while its guest writes and a
    /// disk is being plugged or unplugged (tests/e2e/tests/hostd.rs). Last,
    /// cut the testbed's power under storaged's S3 load and check every
    /// acknowledged object (tests/e2e/tests/power_cut.rs).
    CrashTrials {
        #[arg(long, default_value_t = 50)]
        trials: u32,
    },
    /// Run OpenStack's API tests (tempest, pinned) against the running
    /// all-in-one (`cargo xtask up` in another terminal): accounts
    /// provisioned, tempest.conf written from what the cloud offers, results
    /// per service under target/conformance.
    Conformance {
        /// Services to test (identity, image, compute, network, volume,
        /// object); identity, image and compute when none is given.
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        /// The admin API tests too.
        #[arg(long)]
        admin: bool,
        /// Tests run at once.
        #[arg(long, default_value_t = 2)]
        concurrency: u32,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn images_dir() -> PathBuf {
    root().join("target/images")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn images() -> Result<virga_guest_images::ImageSet> {
    let set = virga_guest_images::build(&images_dir(), &|m| eprintln!("images: {m}"))
        .context("building guest images")?;
    virga_guest_images::cloud_image::build(&images_dir().join("debian-12"), &|m| {
        eprintln!("images: {m}")
    })
    .context("building the Debian cloud image")?;
    Ok(set)
}

/// The guest images and the release binaries, built side by side: the
/// images mostly download and unpack packages while the compiler has the CPUs.
fn images_and_vmm() -> Result<PathBuf> {
    let images = std::thread::spawn(images);
    let vmm = build_vmm();
    images_built(images)?;
    vmm
}

fn images_built(
    building: std::thread::JoinHandle<Result<virga_guest_images::ImageSet>>,
) -> Result<()> {
    building
        .join()
        .map_err(|_| anyhow::anyhow!("building the guest images panicked"))?
        .map(drop)
}

/// The VMM's target, named explicitly so that static linking applies to it
/// and not to the build's host tools (proc macros cannot be static).
const VMM_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the release binaries scenarios use and returns the vmm's path (vmmctl
/// sits beside it).
fn build_vmm() -> Result<PathBuf> {
    // hostd, hostctl, the boot picker, netd, storaged, the controller and
    // the boot-time tool are built alongside: the end-to-end tests, the
    // benchmarks and `up` use them. Not the `vmm` binary: cargo would put
    // its dynamic build where the static one goes.
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "hostd",
        "-p",
        "virga-bootpick",
        "-p",
        "netd",
        "-p",
        "storaged",
        "-p",
        "controller",
        "-p",
        "virga-boottime",
    ]))?;
    // The VMM, linked statically: one process runs per VM, and every page of
    // a shared library it touches counts in each VM's overhead (1.7 MiB of
    // libc, libm, ld.so and libgcc_s: 5.0 MiB overhead dynamic, 3.3 static);
    // it also starts without the dynamic loader. It makes no NSS lookups, the
    // one thing static glibc cannot do. (Fat LTO took 0.3 MiB more off, but
    // that build called a null pointer in the disk worker's thread: static
    // glibc with LTO links only part of libc's threading objects, a known
    // toolchain problem, rust-lang/rust#94564.) vmmctl is built with it:
    // built on its own, the vmm crate compiled again (51 s of CI).
    let rustflags = format!(
        "{} -C target-feature=+crt-static",
        std::env::var("RUSTFLAGS").unwrap_or_default()
    );
    run(cargo().env("RUSTFLAGS", rustflags.trim()).args([
        "build",
        "--release",
        "-p",
        "vmm",
        "--bin",
        "vmm",
        "--bin",
        "vmmctl",
        "--target",
        VMM_TARGET,
    ]))?;
    // Beside the other binaries (hostd and the tools look for them there),
    // by rename: a VMM running from the old file keeps it.
    for name in ["vmmctl", "vmm"] {
        let built = root().join(format!("target/{VMM_TARGET}/release/{name}"));
        let dest = root().join("target/release").join(name);
        let part = dest.with_extension("part");
        std::fs::copy(&built, &part).with_context(|| format!("copying {}", built.display()))?;
        std::fs::rename(&part, &dest).with_context(|| format!("installing {}", dest.display()))?;
    }
    Ok(root().join("target/release/vmm"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Install => install::system_packages(),
        Cmd::Images => images().map(drop),
        Cmd::Up => up(),
        Cmd::Test {
            unit_only,
            e2e_only,
            repeat,
            filter,
        } => match (repeat, filter) {
            (None, None) => test(unit_only, e2e_only),
            (repeat, filter) => hunt_flakes(unit_only, repeat.unwrap_or(1), filter.as_deref()),
        },
        Cmd::Testbed {
            rootfs,
            scratch_mib,
            peers,
            files,
            command,
        } => testbed(&command.join(" "), rootfs, scratch_mib, peers, &files),
        Cmd::Bench { args } => bench(&args),
        Cmd::Fuzz { target, minutes } => fuzz::fuzz(target.as_deref(), minutes),
        Cmd::Conformance {
            services,
            admin,
            concurrency,
        } => {
            let openstack = install::python_clients(&root())?;
            let services = if services.is_empty() {
                ["identity", "image", "compute"].map(String::from).to_vec()
            } else {
                services
            };
            let options = conformance::Options {
                services,
                admin,
                concurrency,
            };
            conformance::run(&root(), &openstack, &options)
        }
        Cmd::CrashTrials { trials } => {
            // The object store's trials drive boto3 from the pinned venv.
            let openstack = install::python_clients(&root())?;
            run(cargo()
                .args([
                    "test",
                    "--release",
                    "-p",
                    "controller",
                    "--test",
                    "crash_trials",
                ])
                .args(["--", "--include-ignored", "--nocapture"])
                .env("VIRGA_CRASH_TRIALS", trials.to_string())
                .env("VIRGA_OPENSTACK", &openstack)
                .env("VIRGA_REQUIRE_TOOLS", "1"))?;
            // The VMM killed under a writing guest, in the testbed: half
            // the trials on a raw disk, half on a qcow2 overlay.
            let vmm = images_and_vmm()?;
            run(cargo()
                .args(["test", "--release", "-p", "virga-e2e", "--test", "blk"])
                .args(["--", "--nocapture", "flushed_writes_survive"])
                .env("VIRGA_VMM_BIN", &vmm)
                .env("VIRGA_IMAGES", images_dir())
                .env("VIRGA_VMM_CRASH_TRIALS", trials.div_ceil(2).to_string()))?;
            run(cargo()
                .args(["test", "--release", "-p", "virga-e2e", "--test", "hostd"])
                .args(["--", "--nocapture", "hostd_killed_anywhere"])
                .env("VIRGA_VMM_BIN", &vmm)
                .env("VIRGA_IMAGES", images_dir())
                .env("VIRGA_HOSTD_CRASH_TRIALS", trials.to_string()))?;
            // Power cuts under the object store: a testbed boot each, so a
            // fifth of the trials.
            run(cargo()
                .args([
                    "test",
                    "--release",
                    "-p",
                    "virga-e2e",
                    "--test",
                    "power_cut",
                ])
                .args(["--", "--nocapture"])
                .env("VIRGA_IMAGES", images_dir())
                .env("VIRGA_OPENSTACK", &openstack)
                .env("VIRGA_REQUIRE_TOOLS", "1")
                .env("VIRGA_POWER_CUTS", trials.div_ceil(5).to_string()))
        }
    }
}

fn up() -> Result<()> {
    install::system_packages()?;
    let vmm = images_and_vmm()?;
    let openstack = install::python_clients(&root())?;
    let bins = vmm.parent().map(Path::to_owned).unwrap_or_default();
    up::run(&root(), &bins, &images_dir(), &openstack)
}

fn test(unit_only: bool, e2e_only: bool) -> Result<()> {
    let mut steps = Steps::default();
    if let Some(free) = free_gib(&root().join("target")) {
        println!("xtask test: {free:.1} GiB free for target/ at the start");
    }
    let result = test_steps(unit_only, e2e_only, &mut steps);
    steps.print();
    result
}

fn test_steps(unit_only: bool, e2e_only: bool, steps: &mut Steps) -> Result<()> {
    steps.run("install", || {
        install::system_packages()?;
        install::rust_components()
    })?;
    // The OpenStack client installs (downloads, mostly) while clippy builds.
    let clients = std::thread::spawn(|| install::python_clients(&root()));
    // So do the guest images (downloads and unpacking; a CPU at most), beside
    // clippy and the unit tests, which leave some CPU idle, rather than
    // beside the release build, which keeps every CPU busy.
    let mut images = (!unit_only).then(|| std::thread::spawn(images));
    let result = steps_after_install(unit_only, e2e_only, clients, &mut images, steps);
    // Waited for after a failed step too: a build cut off halfway would
    // leave its temporary files to the next run.
    if let Some(building) = images {
        let _ = images_built(building);
    }
    result
}

fn steps_after_install(
    unit_only: bool,
    e2e_only: bool,
    clients: std::thread::JoinHandle<Result<PathBuf>>,
    images: &mut Option<std::thread::JoinHandle<Result<virga_guest_images::ImageSet>>>,
    steps: &mut Steps,
) -> Result<()> {
    if !e2e_only {
        steps.run("fmt, clippy", || {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    let openstack = steps.run("python clients (after clippy)", || {
        clients
            .join()
            .map_err(|_| anyhow::anyhow!("installing the python clients panicked"))?
    })?;
    // No test may skip for a missing tool here (PostgreSQL, qemu-img, the
    // OpenStack client): all were installed.
    if !e2e_only {
        steps.run("unit tests", || {
            run(cargo()
                .args(["test", "--workspace", "--exclude", "virga-e2e"])
                .env("VIRGA_REQUIRE_TOOLS", "1")
                .env("VIRGA_OPENSTACK", &openstack))
        })?;
    }
    if unit_only {
        return Ok(());
    }
    let vmm = steps.run("release build, images", || {
        let vmm = build_vmm()?;
        if let Some(building) = images.take() {
            images_built(building)?;
        }
        Ok(vmm)
    })?;
    let binaries = steps.run("e2e build", || {
        flakes::test_binaries(
            &root(),
            &["--release", "-p", "virga-e2e"],
            &["--test-threads=1"],
            &[
                ("VIRGA_VMM_BIN", vmm.clone().into_os_string()),
                ("VIRGA_IMAGES", images_dir().into_os_string()),
                ("VIRGA_OPENSTACK", openstack.clone().into_os_string()),
                ("VIRGA_REQUIRE_TOOLS", "1".into()),
            ],
        )
    })?;
    let hangs = root().join("target/testbed-hangs");
    let _ = std::fs::remove_dir_all(&hangs);
    let lanes = lanes::lane_count()?;
    let result = steps.run("e2e tests", || {
        lanes::run(binaries, lanes, &root().join("target/e2e-logs"), &hangs)
    });
    // The one retry there is (a hung L1), and the hangs a kick woke, counted
    // and shown whatever the result.
    println!("{}", flakes::hang_counts(&hangs));
    for line in flakes::hang_summaries(&hangs) {
        println!("{line}");
    }
    result
}

/// How long each step of `cargo xtask test` took: CI has a time budget, and
/// this shows where it goes.
#[derive(Default)]
struct Steps(Vec<(&'static str, std::time::Duration, Option<f64>)>);

impl Steps {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let result = f();
        self.0
            .push((name, started.elapsed(), free_gib(&root().join("target"))));
        result
    }

    fn print(&self) {
        // Free space too: a CI machine's disk is not always large, and a
        // build that fills it fails far from the cause.
        println!("xtask test, time per step (and space left for target/ after it):");
        for (name, took, free) in &self.0 {
            let free = free.map_or("?".into(), |f| format!("{f:.1} GiB free"));
            println!("  {name:<30} {:>6.0} s   {free}", took.as_secs_f64());
        }
        let total: std::time::Duration = self.0.iter().map(|(_, t, _)| *t).sum();
        println!("  {:<30} {:>6.0} s", "total", total.as_secs_f64());
    }
}

/// Space left to unprivileged users on the filesystem holding `path` (or
/// its nearest existing parent).
fn free_gib(path: &Path) -> Option<f64> {
    let path = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(path).ok()?;
    Some((st.f_bavail * st.f_frsize) as f64 / (1u64 << 30) as f64)
}

/// `cargo xtask test --repeat N [--filter P]`: the same tests, built once and
/// run N times, each with the environment `test` gives it.
fn hunt_flakes(unit_only: bool, rounds: u32, filter: Option<&str>) -> Result<()> {
    install::system_packages()?;
    install::rust_components()?;
    let openstack = install::python_clients(&root())?.into_os_string();
    let mut binaries = flakes::test_binaries(
        &root(),
        &["--workspace", "--exclude", "virga-e2e"],
        &[],
        &[
            ("VIRGA_REQUIRE_TOOLS", "1".into()),
            ("VIRGA_OPENSTACK", openstack.clone()),
        ],
    )?;
    if !unit_only {
        let vmm = images_and_vmm()?;
        binaries.extend(flakes::test_binaries(
            &root(),
            &["--release", "-p", "virga-e2e"],
            &["--test-threads=1"],
            &[
                ("VIRGA_VMM_BIN", vmm.into_os_string()),
                ("VIRGA_IMAGES", images_dir().into_os_string()),
                ("VIRGA_OPENSTACK", openstack),
                ("VIRGA_REQUIRE_TOOLS", "1".into()),
            ],
        )?);
    }
    if !flakes::hunt(&root(), &binaries, rounds, filter)? {
        bail!("some tests failed at least once (table above)");
    }
    Ok(())
}

/// Host programs `testbed --peers` brings, at their own paths (with the QEMU
/// firmware they load), when installed.
const PEERS: &[&str] = &[
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/fio",
    "/usr/bin/iperf3",
];
const PEER_FILES: &[&str] = &[
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_VARS_4M.fd",
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

fn testbed(
    command: &str,
    rootfs: bool,
    scratch_mib: Option<u64>,
    peers: bool,
    files: &[PathBuf],
) -> Result<()> {
    for f in files {
        if !f.is_absolute() || !f.is_file() {
            bail!("--file {}: an absolute path to a file", f.display());
        }
    }
    install::system_packages()?;
    let vmm = images_and_vmm()?;
    let testbed = virga_testbed::Testbed::new(&images_dir())?;
    let mut scenario = virga_testbed::Scenario::new("xtask", command)
        .binary(vmm.with_file_name("vmmctl"))
        .binary(vmm.with_file_name("virga-boottime"))
        .binary(vmm);
    if rootfs {
        scenario = scenario.with_rootfs();
    }
    if let Some(mib) = scratch_mib {
        scenario = scenario.with_scratch_disk(mib);
    }
    if peers {
        for p in PEERS.iter().filter(|p| Path::new(p).exists()) {
            scenario = scenario.host_binary(p);
        }
        scenario = scenario.host_paths(PEER_FILES.iter().filter(|f| Path::new(f).exists()));
    }
    scenario = scenario.host_paths(files);
    let outcome = testbed.run(&scenario)?;
    print!("{}", outcome.output);
    std::process::exit(outcome.status);
}

fn bench(args: &[String]) -> Result<()> {
    install::system_packages()?;
    let vmm = images_and_vmm()?;
    run(cargo()
        .args(["run", "--release", "-q", "-p", "virga-bench", "--"])
        .args(args)
        .env("VIRGA_VMM_BIN", vmm)
        .env("VIRGA_IMAGES", images_dir()))
}
