//! The hostd benchmark: what supervision costs. In one testbed boot, the same
//! guest is booted by `vmm` directly and through hostd's API (create to the
//! guest's marker line), one at a time and ten at once; hostd's own memory is
//! read with no instances and with ten.
//!
//! `virga-bench hostd-probe` is the part that runs inside the testbed: it talks
//! to hostd over its Unix socket and watches the instances' console logs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use virga_guest_images::initramfs::BOOT_MARKER;
use virga_testbed::{Scenario, Testbed};

use crate::measure::{Sample, SAMPLE_PREFIX};
use crate::report::{Report, Samples};
use crate::{host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE as CMDLINE};

const GUEST_MIB: u64 = 128;
const TOKEN: &str = "bench-token-0123456789abcdef";
const PEER: &str = "vmm";
const CONCURRENT: usize = 10;

/// One probe result, printed as a JSON line after [`PROBE_PREFIX`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeSample {
    pub system: String,
    pub metric: String,
    pub unit: String,
    pub value: f64,
}

pub const PROBE_PREFIX: &str = "VIRGA-HOSTD-SAMPLE ";

fn script(runs: u32) -> String {
    let bench = "$BIN/virga-bench";
    format!(
        r#"mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
cat > $WORK/hostd.toml <<EOF
token = "{TOKEN}"
socket = "$WORK/hostd.sock"
state_dir = "$WORK/state"
vmm_binary = "$BIN/vmm"
host_id = "bench"
EOF
$BIN/hostd --config $WORK/hostd.toml 2> $WORK/hostd.log &
HOSTD=$!
i=0; while [ ! -S $WORK/hostd.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
failed=0
for round in $(seq {runs}); do
  {bench} measure --system {PEER} --marker {BOOT_MARKER} --guest-mib {GUEST_MIB} -- \
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --vcpus 1 \
    --memory-mib {GUEST_MIB} --cmdline "{CMDLINE}" > $WORK/direct.out || failed=1
  grep '{SAMPLE_PREFIX}' $WORK/direct.out
  {bench} hostd-probe --socket $WORK/hostd.sock --state-dir $WORK/state --hostd-pid $HOSTD \
    --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --cmdline "{CMDLINE}" \
    --count 1 --round $round || failed=1
done
{bench} hostd-probe --socket $WORK/hostd.sock --state-dir $WORK/state --hostd-pid $HOSTD \
  --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --cmdline "{CMDLINE}" \
  --count {CONCURRENT} --round 0 || failed=1
kill $HOSTD
exit $failed
"#
    )
}

pub fn run(runs: u32) -> Result<()> {
    let testbed = Testbed::new(&images_dir())?;
    let bench_bin = std::env::current_exe()?;
    let vmm = vmm_bin();
    let scenario = Scenario::new("bench-hostd", &script(runs))
        .binary(&vmm)
        .binary(vmm.with_file_name("hostd"))
        .binary(bench_bin)
        .timeout(Duration::from_secs(300 + 60 * u64::from(runs)));
    eprintln!(
        "bench hostd: {runs} rounds of vmm vs hostd, then {CONCURRENT} concurrent creates ({})",
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;
    let mut samples = Samples::default();
    collect_samples(&outcome.output, &mut samples);
    if !outcome.success() || samples.systems().len() < 3 {
        bail!(
            "hostd benchmark failed (status {}); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    let report = Report {
        bench: "hostd".into(),
        host: format!("{} ({})", host_cpu(), testbed.mode().as_str()),
        rows: samples.rows(&[PEER, "hostd", "hostd-10x"]),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    if let (Some(direct), Some(via)) = (report.row(PEER, "boot_ms"), report.row("hostd", "boot_ms"))
    {
        let overhead = via.median - direct.median;
        println!(
            "supervision overhead: {overhead:.0} ms = {:.1}% of the VMM's boot time (target: at most 10%)",
            100.0 * overhead / direct.median
        );
    }
    println!("(boot_ms: process start, or API create, to the guest's marker line)");
    println!("written to {}", path.display());
    Ok(())
}

/// Adds the samples the in-testbed probes printed (`measure`'s boot times,
/// the probes' metrics) to `samples`.
pub(crate) fn collect_samples(output: &str, samples: &mut Samples) {
    for line in output.lines() {
        if let Some(json) = line
            .find(SAMPLE_PREFIX)
            .map(|i| &line[i + SAMPLE_PREFIX.len()..])
        {
            if let Ok(s) = serde_json::from_str::<Sample>(json) {
                samples.add(&s.system, "boot_ms", "ms", s.boot_ms);
            }
        } else if let Some(json) = line
            .find(PROBE_PREFIX)
            .map(|i| &line[i + PROBE_PREFIX.len()..])
        {
            if let Ok(s) = serde_json::from_str::<ProbeSample>(json) {
                let unit: &'static str = match s.unit.as_str() {
                    "ms" => "ms",
                    "KiB" => "KiB",
                    "s" => "s",
                    _ => "",
                };
                samples.add(&s.system, &s.metric, unit, s.value);
            }
        }
    }
}

/// Arguments of `virga-bench hostd-probe`.
#[derive(clap::Args)]
pub struct Probe {
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub hostd_pid: u32,
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initramfs: PathBuf,
    #[arg(long)]
    pub cmdline: String,
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub round: u32,
}

fn call(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket).context("connecting to hostd")?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((
        status,
        out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned(),
    ))
}

pub(crate) fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

pub(crate) fn emit(system: &str, metric: &str, unit: &str, value: f64) {
    let s = ProbeSample {
        system: system.into(),
        metric: metric.into(),
        unit: unit.into(),
        value,
    };
    println!(
        "{PROBE_PREFIX}{}",
        serde_json::to_string(&s).unwrap_or_default()
    );
}

/// Creates `count` instances at once, times each from its request to running
/// and to its guest's marker, then deletes them.
pub fn probe(p: &Probe) -> Result<()> {
    let system = if p.count == 1 {
        "hostd".to_owned()
    } else {
        format!("hostd-{}x", p.count)
    };
    if p.count > 1 {
        emit(&system, "hostd_rss_0_kib", "KiB", rss_kib(p.hostd_pid));
    }
    let ids: Vec<String> = (0..p.count)
        .map(|i| format!("bench-{}-{i}", p.round))
        .collect();
    let started = Instant::now();
    let threads: Vec<_> = ids
        .iter()
        .map(|id| {
            let spec = serde_json::json!({
                "id": id, "vcpus": 1, "memory_mib": GUEST_MIB,
                "kernel": p.kernel, "initramfs": p.initramfs, "cmdline": p.cmdline,
            })
            .to_string();
            let socket = p.socket.clone();
            let console = p.state_dir.join("instances").join(id).join("console.log");
            std::thread::spawn(move || -> Result<(f64, f64)> {
                let t0 = Instant::now();
                let (status, body) = call(&socket, "POST", "/instances", &spec)?;
                if status != 201 {
                    bail!("create answered {status}: {body}");
                }
                let running = t0.elapsed().as_secs_f64() * 1000.0;
                let deadline = t0 + Duration::from_secs(120);
                loop {
                    let text = std::fs::read(&console).unwrap_or_default();
                    if text
                        .windows(BOOT_MARKER.len())
                        .any(|w| w == BOOT_MARKER.as_bytes())
                    {
                        return Ok((running, t0.elapsed().as_secs_f64() * 1000.0));
                    }
                    if Instant::now() > deadline {
                        bail!("no marker on {} within 120 s", console.display());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok((running, marker))) => {
                emit(&system, "create_to_running_ms", "ms", running);
                emit(&system, "boot_ms", "ms", marker);
            }
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(anyhow::anyhow!("a probe thread panicked")),
        }
    }
    if p.count > 1 {
        emit(
            &system,
            "all_booted_ms",
            "ms",
            started.elapsed().as_secs_f64() * 1000.0,
        );
        emit(
            &system,
            &format!("hostd_rss_{}_kib", p.count),
            "KiB",
            rss_kib(p.hostd_pid),
        );
    }
    for id in &ids {
        let _ = call(&p.socket, "DELETE", &format!("/instances/{id}"), "");
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_measures_both_ways() {
        let s = script(3);
        assert!(s.contains("measure --system vmm"));
        assert!(s.contains("--count 1 --round $round"));
        assert!(s.contains(&format!("--count {CONCURRENT} --round 0")));
        assert!(s.contains(TOKEN));
    }
}
