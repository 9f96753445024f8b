//! The block benchmarks: fio in the guest on a virtio-blk disk, all in one
//! testbed boot.
//! - `blk`: virga and QEMU (virtio-blk-pci, aio=io_uring, cache=none) on a
//!   raw device, and fio directly on that device.
//! - `blk-overlay`: root disks as hostd makes them on ext4, qcow2 overlays,
//!   against a raw file on the same filesystem: virga on the raw file, on an
//!   overlay whose clusters are all written (its steady state), and on a
//!   fresh overlay over the data (a new server's reads go to the image);
//!   QEMU on the same two kinds of overlay.
//! - `blk-volume`: volumes as storaged keeps them on ext4, against fio on
//!   the file itself: a raw volume, one snapshotted once (a fresh qcow2
//!   overlay over the data) and twice (over an empty qcow2 layer over the
//!   data: the chain a second snapshot makes), and QEMU on the same chain;
//!   and the raw volume as another host reaches it: storaged's NBD server
//!   and the kernel's NBD client (hostctl nbd-connect, as hostd does), over
//!   loopback, so the figure is the transport's cost without a network's;
//!   its peer is the same guest on the same file served by `qemu-nbd`
//!   through the same client (in the testbed, loopback TCP itself carries
//!   only about 75 MiB/s: L1's CPU is emulated).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use virga_guest_images::rootfs::{fio_script, FIO_JOBS, FIO_RESULT};
use virga_testbed::{Scenario, Testbed};

use crate::report::{Report, Samples};
use crate::{
    host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE as CMDLINE, QEMU, QEMU_FIRMWARE,
    SCRUB_FREE_MEMORY,
};

const SYSTEM_MARKER: &str = "VIRGA-BENCH-SYSTEM";
const PEER: &str = "qemu";
const GUEST_MIB: u64 = 512;
const SCRATCH_MIB: u64 = 256;
/// The overlay benchmark's disks live on an ext4 scratch disk of this size.
const OVERLAY_SCRATCH_MIB: u64 = 1024;
const OVERLAY_DISK_MIB: u64 = 256;
const QEMU_IMG: &str = "/usr/bin/qemu-img";
const QEMU_NBD: &str = "/usr/bin/qemu-nbd";

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

/// The overlay benchmark's rounds: the disks are made on the ext4 scratch
/// disk with qemu-img (the overlay as hostd makes it: 64 KiB clusters, a raw
/// backing file), and each system boots the fio guest on one of them.
fn overlay_script(runs: u32) -> String {
    let guest_cmdline = format!("{CMDLINE} virga.root=/dev/vda virga.mode=fio");
    let virga = |disk: &str| {
        format!(
            "$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --vcpus 2 \
             --memory-mib {GUEST_MIB} --cmdline \"{guest_cmdline}\" --disk path=$ROOTFS --disk {disk}"
        )
    };
    let qemu = |disk: &str| {
        format!(
            "{QEMU} -M pc -enable-kvm -cpu host -smp 2 -m {GUEST_MIB} -nodefaults -no-user-config \
             -display none -serial stdio -no-reboot -kernel $GUEST/vmlinux \
             -initrd $GUEST/boot-initramfs.cpio -append \"{guest_cmdline}\" \
             -drive file=$ROOTFS,if=none,id=root,format=raw -device virtio-blk-pci,drive=root \
             -drive file={disk},if=none,id=data,format=qcow2,aio=io_uring,cache=none \
             -device virtio-blk-pci,drive=data"
        )
    };
    let mib = OVERLAY_DISK_MIB;
    let mut s = format!(
        "D=$WORK/disks; mkdir -p $D && mount -t ext4 $SCRATCH $D || exit 1
dd if=/dev/urandom of=$D/data.raw bs=1M count={mib} 2>/dev/null || exit 1
dd if=/dev/zero of=$D/empty.raw bs=1M count=0 seek={mib} 2>/dev/null
{QEMU_IMG} convert -O qcow2 -o cluster_size=65536 -B $D/empty.raw -F raw $D/data.raw $D/full.qcow2 || exit 1
sync
failed=0
for round in $(seq {runs}); do
rm -f $D/fresh.qcow2 $D/qemu-fresh.qcow2
for f in fresh qemu-fresh; do
    {QEMU_IMG} create -q -f qcow2 -o cluster_size=65536 -F raw -b $D/data.raw $D/$f.qcow2 || exit 1
done
# The testbed jails every VMM as VMM_UID: the disks it writes are that user's.
[ -z \"$VMM_UID\" ] || chown $VMM_UID:$VMM_UID $D/data.raw $D/full.qcow2 $D/fresh.qcow2
"
    );
    for (system, command) in [
        ("virga", virga("path=$D/data.raw")),
        ("virga-qcow2", virga("path=$D/full.qcow2,base=$D/empty.raw")),
        (
            "virga-qcow2-fresh",
            virga("path=$D/fresh.qcow2,base=$D/data.raw"),
        ),
        ("qemu-qcow2", qemu("$D/full.qcow2")),
        ("qemu-qcow2-fresh", qemu("$D/qemu-fresh.qcow2")),
    ] {
        s.push_str(&format!(
            "echo 3 > /proc/sys/vm/drop_caches
echo {SYSTEM_MARKER} {system}
{command} || failed=1
"
        ));
    }
    s.push_str(
        "done
exit $failed
",
    );
    s
}

/// The remote volume's id and NBD export name in the volume benchmark.
const REMOTE_VOLUME: &str = "5e1f0c2a-7b3d-4e8f-9a6b-1c2d3e4f5a6b";
const REMOTE_EXPORT: &str = "b3c4d5e6f708192a3b4c5d6e7f809102";

/// The volume benchmark's rounds: the chain made as storaged makes it (its
/// own qcow2 writer's layout: 64 KiB clusters, the layer under named by its
/// header), each system on it in turn, and fio on the raw file.
fn volume_script(runs: u32) -> String {
    let guest_cmdline = format!("{CMDLINE} virga.root=/dev/vda virga.mode=fio");
    let virga = |disk: &str| {
        format!(
            "$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --vcpus 2 \
             --memory-mib {GUEST_MIB} --cmdline \"{guest_cmdline}\" --disk path=$ROOTFS --disk {disk}"
        )
    };
    let qemu = format!(
        "{QEMU} -M pc -enable-kvm -cpu host -smp 2 -m {GUEST_MIB} -nodefaults -no-user-config \
         -display none -serial stdio -no-reboot -kernel $GUEST/vmlinux \
         -initrd $GUEST/boot-initramfs.cpio -append \"{guest_cmdline}\" \
         -drive file=$ROOTFS,if=none,id=root,format=raw -device virtio-blk-pci,drive=root \
         -drive file=$D/qemu-top.qcow2,if=none,id=data,format=qcow2,aio=io_uring,cache=none \
         -device virtio-blk-pci,drive=data"
    );
    let mib = OVERLAY_DISK_MIB;
    let mut s = format!(
        "{SCRUB_FREE_MEMORY}D=$WORK/disks; mkdir -p $D && mount -t ext4 $SCRATCH $D || exit 1
dd if=/dev/urandom of=$D/data.raw bs=1M count={mib} 2>/dev/null || exit 1
sync
failed=0
for round in $(seq {runs}); do
rm -f $D/*.qcow2
{QEMU_IMG} create -q -f qcow2 -o cluster_size=65536 -F raw -b $D/data.raw $D/snap1.qcow2 || exit 1
{QEMU_IMG} create -q -f qcow2 -o cluster_size=65536 -F raw -b $D/data.raw $D/layer.qcow2 || exit 1
{QEMU_IMG} create -q -f qcow2 -o cluster_size=65536 -F qcow2 -b $D/layer.qcow2 $D/snap2.qcow2 || exit 1
{QEMU_IMG} create -q -f qcow2 -o cluster_size=65536 -F qcow2 -b $D/layer.qcow2 $D/qemu-top.qcow2 || exit 1
# The testbed jails every VMM as VMM_UID: the disks it writes are that user's.
[ -z \"$VMM_UID\" ] || chown $VMM_UID:$VMM_UID $D/data.raw $D/snap1.qcow2 $D/snap2.qcow2
if [ -z \"$NBD\" ]; then
    # The raw volume served by storaged over NBD, as to another host: its
    # data directory made by hand (the volume a link to the data).
    S=$D/storaged; mkdir -p $S/volumes $S/exports
    ln -f $D/data.raw $S/volumes/{REMOTE_VOLUME}.raw
    echo '{REMOTE_VOLUME} bench' > $S/exports/{REMOTE_EXPORT}
    printf 'host_id = \"storage\"\nlisten = \"127.0.0.1:8781\"\nnbd_listen = \"127.0.0.1:10809\"\ndata_dir = \"%s\"\ncontroller_url = \"http://127.0.0.1:9\"\ntoken = \"bench-token-0123456789\"\nheartbeat_secs = 300\n' $S > $S/storaged.toml
    $BIN/storaged --config $S/storaged.toml 2> $S/storaged.log &
    i=0; while ! grep -q 'NBD listener ready' $S/storaged.log && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    NBD=$($BIN/hostctl nbd-connect 127.0.0.1:10809 {REMOTE_EXPORT} | cut -d' ' -f1)
    [ -b \"$NBD\" ] || {{ echo 'no NBD device'; cat $S/storaged.log; exit 1; }}
    # The peer of storaged's NBD server: QEMU's, on the same file, through
    # the same kernel client (O_DIRECT as storaged; -e: hostd's several
    # connections at once; no lock on the file, which QEMU's guest on the
    # chain opens too: storaged takes none either).
    {QEMU_NBD} --image-opts -x {REMOTE_EXPORT} -b 127.0.0.1 -p 10810 --cache=none \
        --aio=native -e 16 -t --fork --pid-file=$D/qemu-nbd.pid \
        driver=raw,file.driver=file,file.filename=$D/data.raw,file.locking=off || exit 1
    QNBD=$($BIN/hostctl nbd-connect 127.0.0.1:10810 {REMOTE_EXPORT} | cut -d' ' -f1)
    [ -b \"$QNBD\" ] || {{ echo 'no NBD device from qemu-nbd'; exit 1; }}
    [ -z \"$VMM_UID\" ] || chown $VMM_UID:$VMM_UID $NBD $QNBD
fi
"
    );
    let mut blocks: Vec<String> = [
        ("virga-volume", virga("path=$D/data.raw")),
        ("virga-snap1", virga("path=$D/snap1.qcow2,base=$D/data.raw")),
        (
            "virga-snap2",
            virga("path=$D/snap2.qcow2,base=$D/data.raw,layers=$D/layer.qcow2"),
        ),
        ("qemu-snap2", qemu.clone()),
        ("virga-remote", virga("path=$NBD")),
        ("virga-qemu-nbd", virga("path=$QNBD")),
    ]
    .into_iter()
    .map(|(system, command)| {
        format!(
            "echo 3 > /proc/sys/vm/drop_caches
echo {SYSTEM_MARKER} {system}
{command} || failed=1
scrub_free_memory 1
"
        )
    })
    .collect();
    blocks.push(format!(
        "echo 3 > /proc/sys/vm/drop_caches\necho {SYSTEM_MARKER} file\n{}",
        fio_script("/usr/bin/fio", "$D/data.raw")
    ));
    // Each guest's memory is scrubbed once it ends (SCRUB_FREE_MEMORY says
    // why). What else one system leaves behind in L1 (dirty pages written
    // back, a fuller disk) could slow the next ones: every other round runs
    // them in the reverse order, so no system always comes late.
    s.push_str("if [ $((round % 2)) = 1 ]; then\n");
    s.push_str(&blocks.concat());
    s.push_str("else\n");
    blocks.reverse();
    s.push_str(&blocks.concat());
    s.push_str("fi\n");
    s.push_str(
        "done
exit $failed
",
    );
    s
}

pub fn run_volume(runs: u32) -> Result<()> {
    let bins = vmm_bin().parent().map(Path::to_owned).unwrap_or_default();
    let scenario = Scenario::new("bench-blk-volume", &volume_script(runs))
        .host_binary(QEMU_IMG)
        .host_binary(QEMU_NBD)
        .binary(bins.join("storaged"))
        .binary(bins.join("hostctl"))
        .with_scratch_ext4(OVERLAY_SCRATCH_MIB);
    let systems = [
        "virga-volume",
        "virga-snap1",
        "virga-snap2",
        "qemu-snap2",
        "virga-remote",
        "virga-qemu-nbd",
        "file",
    ];
    let report = measure(
        "blk-volume",
        scenario,
        runs,
        &systems,
        // fio's jobs, and a scrub of L1's memory after each guest.
        80 + 240,
        "volumes as storaged keeps them (raw, after one and two snapshots) against fio on the file",
    )?;
    println!(
        "(file = fio on the volume's file itself; snap1/snap2 = fresh overlays after one and two \
         snapshots, whose reads go down to the data)"
    );
    for job in [
        "randread-4k-qd32_iops",
        "randread-4k-qd1_iops",
        "randwrite-4k-qd32_iops",
        "read-1m_mib_s",
    ] {
        let ratio = |a: &str, b: &str| {
            report
                .ratio(a, b, job)
                .map_or("-".to_owned(), |r| format!("{r:.2}x"))
        };
        println!(
            "{job}: volume {} of the file; after one snapshot {}, after two {} of the volume; \
             two {} of QEMU's; over NBD (loopback) {} of the local volume, {} of the same \
             guest on qemu-nbd",
            ratio("virga-volume", "file"),
            ratio("virga-snap1", "virga-volume"),
            ratio("virga-snap2", "virga-volume"),
            ratio("virga-snap2", "qemu-snap2"),
            ratio("virga-remote", "virga-volume"),
            ratio("virga-remote", "virga-qemu-nbd"),
        );
    }
    Ok(())
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
    let mut scenario = Scenario::new("bench-blk", &script(runs)).with_scratch_disk(SCRATCH_MIB);
    scenario.script = format!("CMDLINE='{CMDLINE}'\n{}", scenario.script);
    let report = measure(
        "blk",
        scenario,
        runs,
        &["virga", "qemu", "host"],
        80,
        "virga, qemu and host fio",
    )?;
    println!("(host = fio directly on the backing device; latency rows: lower is better)");
    let _ = report
        .ratio("virga", "host", "randread-4k-qd32_iops")
        .map(|r| {
            println!("virga random-read IOPS at QD32: {r:.2}x host-native fio");
        });
    Ok(())
}

pub fn run_overlay(runs: u32) -> Result<()> {
    let scenario = Scenario::new("bench-blk-overlay", &overlay_script(runs))
        .host_binary(QEMU_IMG)
        .with_scratch_ext4(OVERLAY_SCRATCH_MIB);
    let systems = [
        "virga",
        "virga-qcow2",
        "virga-qcow2-fresh",
        "qemu-qcow2",
        "qemu-qcow2-fresh",
    ];
    let report = measure(
        "blk-overlay",
        scenario,
        runs,
        &systems,
        80,
        "virga on a raw file and on qcow2 overlays, qemu on the overlay",
    )?;
    println!(
        "(virga = a raw file on the same ext4; virga-qcow2 = an overlay with every cluster written; \
         -fresh = a new overlay over the data, whose reads go to the image through the page cache)"
    );
    for job in ["randread-4k-qd32_iops", "randread-4k-qd1_iops"] {
        if let Some(r) = report.ratio("virga-qcow2", "virga", job) {
            println!("{job}: qcow2 overlay {r:.2}x the raw file");
        }
    }
    for job in ["randwrite-4k-qd32_iops", "write-1m_mib_s"] {
        if let Some(r) = report.ratio("virga-qcow2-fresh", "qemu-qcow2-fresh", job) {
            println!("{job}: a fresh overlay's first writes {r:.2}x QEMU's");
        }
    }
    Ok(())
}

/// Runs `scenario` (its script prints a system marker before each system's
/// fio results) with the VMM, QEMU and fio, and reports `systems` against
/// QEMU.
fn measure(
    bench: &str,
    scenario: Scenario,
    runs: u32,
    systems: &[&str],
    secs_per_system: u64,
    what: &str,
) -> Result<Report> {
    let testbed = Testbed::new(&images_dir())?;
    let scenario = scenario
        .binary(vmm_bin())
        .host_binary(QEMU)
        .host_binary("/usr/bin/fio")
        .host_paths(QEMU_FIRMWARE.iter().filter(|f| Path::new(f).exists()))
        .with_rootfs()
        .timeout(Duration::from_secs(
            300 + secs_per_system * systems.len() as u64 * u64::from(runs),
        ));
    eprintln!(
        "bench {bench}: {runs} rounds of {what} ({})",
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;
    // Every round's figures, in the order the systems ran.
    let dir = workspace().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(format!("{bench}.log"));
    std::fs::write(&log, &outcome.output).with_context(|| format!("writing {}", log.display()))?;

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
    let expected = FIO_JOBS.len() * systems.len();
    if !outcome.success() || samples.systems().len() != systems.len() || samples.len() < expected {
        bail!(
            "{bench} benchmark failed (status {}); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    let report = Report {
        bench: bench.into(),
        host: format!("{} ({})", host_cpu(), testbed.mode().as_str()),
        rows: samples.rows(systems),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    let peer = systems
        .iter()
        .find(|s| s.starts_with(PEER))
        .copied()
        .unwrap_or(PEER);
    print!("{}", report.table(peer));
    println!("written to {}", path.display());
    Ok(report)
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
    fn the_volume_script_covers_every_system_on_the_chain() {
        let s = volume_script(1);
        for sys in [
            "virga-volume",
            "virga-snap1",
            "virga-snap2",
            "qemu-snap2",
            "virga-remote",
            "virga-qemu-nbd",
            "file",
        ] {
            assert!(s.contains(&format!("{SYSTEM_MARKER} {sys}\n")), "{sys}");
        }
        assert!(s.contains("--disk path=$NBD ||") && s.contains("--disk path=$QNBD ||"));
        assert!(s.contains("layers=$D/layer.qcow2"));
        // Odd rounds in one order, even rounds in the other.
        let order = |part: &str| {
            part.lines()
                .filter_map(|l| l.strip_prefix(&format!("echo {SYSTEM_MARKER} ")))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let (odd, even) = s.split_once("\nelse\n").expect("two orders");
        let mut backwards = order(even);
        backwards.reverse();
        assert_eq!(order(odd), backwards);
        assert_eq!(order(odd).len(), 7);
        // Every guest's memory is scrubbed once it ends, before the next
        // system starts; fio on the file runs no guest.
        assert!(s.starts_with("scrub_free_memory() {"));
        for block in s.split(&format!("echo {SYSTEM_MARKER} ")).skip(1) {
            let scrubs = block.contains("\nscrub_free_memory 1\n");
            assert_eq!(scrubs, !block.starts_with("file\n"), "{block}");
        }
        crate::assert_shell_parses(&s);
    }

    #[test]
    fn script_covers_every_system() {
        let s = script(2);
        for sys in ["virga", "qemu", "host"] {
            assert!(s.contains(&format!("{SYSTEM_MARKER} {sys}")));
        }
        assert!(s.contains("aio=io_uring,cache=none"));
        let s = overlay_script(2);
        for sys in [
            "virga",
            "virga-qcow2",
            "virga-qcow2-fresh",
            "qemu-qcow2",
            "qemu-qcow2-fresh",
        ] {
            assert!(s.contains(&format!("{SYSTEM_MARKER} {sys}\n")), "{sys}");
        }
        assert!(s.contains("path=$D/full.qcow2,base=$D/empty.raw"));
    }
}
