//! The block benchmark: fio in the guest on a virtio-blk disk, for virga and for
//! QEMU (virtio-blk-pci, aio=io_uring, cache=none), and fio directly on the same
//! backing device, all in one testbed boot.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use virga_guest_images::rootfs::{fio_script, FIO_JOBS, FIO_RESULT};
use virga_testbed::{Scenario, Testbed};

use crate::report::{Report, Samples};
use crate::{
    host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE as CMDLINE, QEMU, QEMU_FIRMWARE,
};

const SYSTEM_MARKER: &str = "VIRGA-BENCH-SYSTEM";
const PEER: &str = "qemu";
const GUEST_MIB: u64 = 512;
const SCRATCH_MIB: u64 = 256;

fn script(runs: u32) -> String {
    let guest_cmdline = format!("{CMDLINE} virga.root=/dev/vda virga.mode=fio");
    let virga = format!(
        "$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --vcpus 2 \
         --memory-mib {GUEST_MIB} --cmdline \"{guest_cmdline}\" --disk path=$ROOTFS --disk path=$SCRATCH"
    );
    let qemu = format!(
        "{QEMU} -M pc -enable-kvm -cpu host -smp 2 -m {GUEST_MIB} -nodefaults -no-user-config \
         -display none -serial stdio -no-reboot -kernel $GUEST/vmlinux \
         -initrd $GUEST/boot-initramfs.cpio -append \"{guest_cmdline}\" \
         -drive file=$ROOTFS,if=none,id=root,format=raw -device virtio-blk-pci,drive=root \
         -drive file=$SCRATCH,if=none,id=data,format=raw,aio=io_uring,cache=none \
         -device virtio-blk-pci,drive=data"
    );
    let mut s = format!("failed=0\nfor round in $(seq {runs}); do\n");
    s.push_str(&format!(
        "echo {SYSTEM_MARKER} virga\n{virga} || failed=1\n"
    ));
    s.push_str(&format!("echo {SYSTEM_MARKER} qemu\n{qemu} || failed=1\n"));
    s.push_str(&format!("echo {SYSTEM_MARKER} host\n"));
    s.push_str(&fio_script("/usr/bin/fio", "$SCRATCH"));
    s.push_str("done\nexit $failed\n");
    s
}

/// One fio job's figures from its terse (v3) line.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct FioResult {
    read_iops: f64,
    read_kib_s: f64,
    write_iops: f64,
    write_kib_s: f64,
    read_p99_us: Option<f64>,
    write_p99_us: Option<f64>,
}

fn parse_terse(line: &str) -> Option<FioResult> {
    let f: Vec<&str> = line.split(';').collect();
    if f.len() < 80 || f[0] != "3" {
        return None;
    }
    let num = |i: usize| f.get(i)?.parse::<f64>().ok();
    let p99 = |range: std::ops::Range<usize>| {
        f[range]
            .iter()
            .find_map(|p| p.strip_prefix("99.000000%="))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(FioResult {
        read_kib_s: num(6)?,
        read_iops: num(7)?,
        write_kib_s: num(47)?,
        write_iops: num(48)?,
        read_p99_us: p99(17..37),
        write_p99_us: p99(58..78),
    })
}

/// The metric each job reports: IOPS for 4 KiB jobs, MiB/s for 1 MiB ones, plus
/// p99 latency at queue depth 1.
fn metrics(job: &str, r: &FioResult) -> Vec<(String, &'static str, f64)> {
    let write = job.contains("write");
    let (iops, kib_s, p99) = if write {
        (r.write_iops, r.write_kib_s, r.write_p99_us)
    } else {
        (r.read_iops, r.read_kib_s, r.read_p99_us)
    };
    let mut m = Vec::new();
    if job.contains("-1m") {
        m.push((format!("{job}_mib_s"), "MiB/s", kib_s / 1024.0));
    } else {
        m.push((format!("{job}_iops"), "IOPS", iops));
    }
    if job.ends_with("qd1") {
        if let Some(p) = p99 {
            m.push((format!("{job}_p99_us"), "us", p));
        }
    }
    m
}

pub fn run(runs: u32) -> Result<()> {
    let testbed = Testbed::new(&images_dir())?;
    let mut scenario = Scenario::new("bench-blk", &script(runs))
        .binary(vmm_bin())
        .host_binary(QEMU)
        .host_binary("/usr/bin/fio")
        .host_paths(QEMU_FIRMWARE.iter().filter(|f| Path::new(f).exists()))
        .with_rootfs()
        .with_scratch_disk(SCRATCH_MIB)
        .timeout(Duration::from_secs(300 + 240 * u64::from(runs)));
    scenario.script = format!("CMDLINE='{CMDLINE}'\n{}", scenario.script);
    eprintln!(
        "bench blk: {runs} rounds of virga, qemu and host fio ({})",
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;

    let mut samples = Samples::default();
    let mut system = String::new();
    for line in outcome.output.lines() {
        if let Some(s) = line.strip_prefix(SYSTEM_MARKER) {
            system = s.trim().to_owned();
        } else if let Some(rest) = line.find(FIO_RESULT).map(|i| &line[i + FIO_RESULT.len()..]) {
            let mut parts = rest.trim().splitn(2, ' ');
            let (Some(job), Some(terse)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Some(r) = parse_terse(terse) {
                for (metric, unit, v) in metrics(job, &r) {
                    samples.add(&system, &metric, unit, v);
                }
            }
        }
    }
    let expected = FIO_JOBS.len() * 3;
    if !outcome.success() || samples.systems().len() != 3 || samples.len() < expected {
        bail!(
            "block benchmark failed (status {}); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    let rows = samples.rows(&["virga", "qemu", "host"]);
    let report = Report {
        bench: "blk".into(),
        host: format!("{} ({})", host_cpu(), testbed.mode().as_str()),
        rows,
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!("(host = fio directly on the backing device; latency rows: lower is better)");
    println!("written to {}", path.display());
    let _ = report
        .ratio("virga", "host", "randread-4k-qd32_iops")
        .map(|r| {
            println!("virga random-read IOPS at QD32: {r:.2}x host-native fio");
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_terse_lines() {
        let mut f = vec!["0".to_owned(); 130];
        f[0] = "3".into();
        f[6] = "4096".into();
        f[7] = "1024".into();
        f[20] = "99.000000%=250".into();
        f[47] = "2048".into();
        f[48] = "512".into();
        f[60] = "99.000000%=900".into();
        let r = parse_terse(&f.join(";")).unwrap();
        assert_eq!(
            (r.read_iops, r.read_kib_s, r.write_iops),
            (1024.0, 4096.0, 512.0)
        );
        assert_eq!((r.read_p99_us, r.write_p99_us), (Some(250.0), Some(900.0)));
        assert!(parse_terse("2;fio;x").is_none());
        let m = metrics("randread-4k-qd1", &r);
        assert_eq!(m[0], ("randread-4k-qd1_iops".to_owned(), "IOPS", 1024.0));
        assert_eq!(m[1], ("randread-4k-qd1_p99_us".to_owned(), "us", 250.0));
        assert_eq!(metrics("write-1m", &r)[0].2, 2.0);
    }

    #[test]
    fn script_covers_every_system() {
        let s = script(2);
        for sys in ["virga", "qemu", "host"] {
            assert!(s.contains(&format!("{SYSTEM_MARKER} {sys}")));
        }
        assert!(s.contains("aio=io_uring,cache=none"));
    }
}
