//! `nbd`: storaged's NBD server against nbdkit's file plugin (the reference
//! NBD server), each serving one file on loopback to one client, qemu-img
//! bench, natively. No kernel client, no guest and no testbed: what is
//! measured is the server's own cost per request, which the testbed's
//! emulated L1 hides under its own (see `blk-volume`). qemu-img bench on
//! the file itself, through the page cache as both servers read it, is the
//! ceiling.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use virga_test_support::ports::free_ports;

use crate::report::{Report, Samples};

const PEER: &str = "nbdkit";
const VOLUME: &str = "0b5e6a8c-1f2d-4e3a-9b7c-6d5e4f3a2b1c";
const EXPORT: &str = "5e1f0c2b9a8d7e6f5a4b3c2d1e0f9a8b";
const MIB: u64 = 1 << 20;

/// One client workload: name, qemu-img bench arguments, requests, size.
struct Case {
    name: &'static str,
    write: bool,
    depth: u32,
    count: u64,
    size: u64,
}

const CASES: &[Case] = &[
    Case {
        name: "4k-read-qd1",
        write: false,
        depth: 1,
        count: 20_000,
        size: 4096,
    },
    Case {
        name: "4k-read-qd32",
        write: false,
        depth: 32,
        count: 40_000,
        size: 4096,
    },
    Case {
        name: "1m-read-qd8",
        write: false,
        depth: 8,
        count: 2_000,
        size: MIB,
    },
    Case {
        name: "4k-write-qd32",
        write: true,
        depth: 32,
        count: 40_000,
        size: 4096,
    },
    Case {
        name: "1m-write-qd8",
        write: true,
        depth: 8,
        count: 1_000,
        size: MIB,
    },
];

/// Kills its process when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(runs: u32) -> Result<()> {
    for tool in ["qemu-img", "nbdkit"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed (apt-get install qemu-utils nbdkit)");
        }
    }
    let work = crate::workspace().join("target/bench-nbd");
    let _ = std::fs::remove_dir_all(&work);
    for dir in ["volumes", "exports"] {
        std::fs::create_dir_all(work.join(dir))?;
    }
    // storaged's data directory made by hand: one volume, one export.
    let file = work.join(format!("volumes/{VOLUME}.raw"));
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=1024", "status=none"])
        .arg(format!("of={}", file.display()))
        .status()?;
    if !status.success() {
        bail!("dd made no volume");
    }
    std::fs::write(
        work.join("exports").join(EXPORT),
        format!("{VOLUME} bench\n"),
    )?;
    let [api, ours, theirs] = free_ports::<3>();
    let config = work.join("storaged.toml");
    std::fs::write(
        &config,
        format!(
            "host_id = \"bench\"\nlisten = \"127.0.0.1:{api}\"\nnbd_listen = \"127.0.0.1:{ours}\"\n\
             data_dir = \"{}\"\ncontroller_url = \"http://127.0.0.1:9\"\n\
             token = \"bench-token-0123456789\"\nheartbeat_secs = 300\n",
            work.display()
        ),
    )?;
    let log = std::fs::File::create(work.join("storaged.log"))?;
    let _storaged = Server(
        Command::new(crate::release_bin("storaged")?)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting storaged")?,
    );
    let _nbdkit = Server(
        Command::new("nbdkit")
            .args(["-f", "-i", "127.0.0.1", "-p", &theirs.to_string(), "file"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nbdkit")?,
    );
    for port in [ours, theirs] {
        wait_listening(port)?;
    }
    // Read once, so that every system starts from the page cache.
    std::fs::read(&file)?;
    let targets = [
        ("virga-storaged", format!("nbd://127.0.0.1:{ours}/{EXPORT}")),
        (PEER, format!("nbd://127.0.0.1:{theirs}/{EXPORT}")),
        ("file", file.display().to_string()),
    ];
    let mut samples = Samples::default();
    for _ in 0..runs {
        for case in CASES {
            for (system, target) in &targets {
                let seconds = bench(case, target)?;
                let (value, unit) = if case.size >= MIB {
                    ((case.count * case.size) as f64 / seconds / 1e6, "MB/s")
                } else {
                    (case.count as f64 / seconds, "IOPS")
                };
                samples.add(system, case.name, unit, value);
            }
        }
    }
    let report = Report {
        bench: "nbd".into(),
        host: format!("{} (native, loopback)", crate::host_cpu()),
        rows: samples.rows(&["virga-storaged", PEER, "file"]),
    };
    let path = report.write(&crate::workspace().join("target/bench"))?;
    let _ = std::fs::remove_dir_all(&work);
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!("written to {}", path.display());
    Ok(())
}

/// Seconds qemu-img bench took for `case` on `target`.
fn bench(case: &Case, target: &str) -> Result<f64> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-t", "writeback"])
        .args(["-c", &case.count.to_string()])
        .args(["-d", &case.depth.to_string()])
        .args(["-s", &case.size.to_string()]);
    if case.write {
        cmd.arg("-w");
    }
    let started = Instant::now();
    let out = cmd.arg(target).output().context("running qemu-img bench")?;
    if !out.status.success() {
        bail!(
            "qemu-img bench on {target}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // "Run completed in 0.528 seconds.": the client's own clock, without
    // its start.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .strip_suffix(" seconds.")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| started.elapsed().as_secs_f64()))
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
