//! `attach`: how long a disk plugged into a running guest takes to show up
//! in it, and an unplugged one to go, with our VMM (its control API, as
//! hostd plugs a volume: the file's descriptor sent with the request) and
//! with QEMU `-M pc` (QMP `blockdev-add` + `device_add virtio-blk-pci`, and
//! `device_del`), in one testbed boot. Both use ACPI PCI hotplug, and the
//! guest (the test initramfs in `virga.mode=hotplug`) must read the new
//! disk's first bytes, or let go of the old one, before a step counts as
//! done. Each round boots both systems (alternating which goes first) and
//! plugs and unplugs a disk several times in each.
//!
//! The guest looks for new disks every 0.2 s and the script at its console
//! every 0.1 s, so every figure carries up to 0.3 s of polling, the same for
//! both systems.

use std::time::Duration;

use anyhow::{bail, Result};
use virga_testbed::{Scenario, Testbed};

use crate::report::{Report, Samples};
use crate::{
    host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE, QEMU, QEMU_FIRMWARE, SCRUB_FREE_MEMORY,
};

const PEER: &str = "qemu";
const SYSTEMS: &[&str] = &["virga", PEER];
/// Each line of results: `VIRGA-ATTACH <system> <metric> <ms>`.
const RESULT: &str = "VIRGA-ATTACH";
/// Plugs and unplugs per boot.
const CYCLES: u32 = 4;

/// The script's shell functions: waiting for console lines, the time.
const FUNCTIONS: &str = r#"wait_n() {
    i=0; while [ $(grep -c "$1" $log) -lt $2 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    [ $(grep -c "$1" $log) -ge $2 ] || { echo "TIMEOUT $1"; failed=1; }
}
now() { read t _ < /proc/uptime; echo $t; }
report() { echo "VIRGA-ATTACH $1 $2 $(awk "BEGIN { printf \"%d\", ($4 - $3) * 1000 }")"; }
"#;

fn script(runs: u32) -> String {
    let cmdline = format!("{GUEST_CMDLINE} virga.mode=hotplug");
    let boot = "--kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio";
    // The guest reads the new disk's first 16 bytes: the plug is done once
    // they show, the unplug once the guest's list of disks is empty again
    // (its `vd*` glob matching nothing: once at boot, then once per unplug).
    let plugged = "virga-hotplug-disk vda virga-hot-disk-1";
    let gone = "virga-hotplug-disks vd\\*";
    // Before the next plug, each system has finished the unplug on its side
    // too (not timed): the VMM's config no longer lists the disk, QEMU has
    // sent DEVICE_DELETED (a device_add while QEMU still ejected the last
    // one was once lost).
    let virga = format!(
        r#"log=$WORK/virga-console.log; : > $log
api() {{ $BIN/vmmctl --socket $WORK/api.sock "$@"; }}
$BIN/vmm {boot} --vcpus 1 --memory-mib 256 --cmdline "{cmdline}" --serial file:$log \
    --api-socket $WORK/api.sock 2> $WORK/vmm.log &
pid=$!
wait_n virga-hotplug-ready 1
for c in $(seq {CYCLES}); do
    t0=$(now)
    id=$(api --disk $WORK/disk/hot.img post /vm/disks '{{"serial": "hot1"}}' 2>/dev/null | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
    [ -n "$id" ] || {{ echo "virga: the plug was refused"; failed=1; break; }}
    wait_n "{plugged}" $c
    t1=$(now)
    api delete /vm/devices/$id > /dev/null 2>&1 || {{ echo "virga: the unplug was refused"; failed=1; break; }}
    wait_n "{gone}" $((c + 1))
    t2=$(now)
    report virga plug $t0 $t1; report virga unplug $t1 $t2
    i=0; while api get /vm 2>/dev/null | grep -q "\"id\":\"$id\"" && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
done
api put /vm/actions/shutdown '{{"timeout_ms": 20000}}' > /dev/null 2>&1
wait $pid
rm -f $WORK/api.sock
scrub_free_memory 1
"#
    );
    let qemu = format!(
        r#"log=$WORK/qemu-console.log; : > $log
rm -f $WORK/qmp.in $WORK/qmp.out; mkfifo $WORK/qmp.in $WORK/qmp.out
{QEMU} -M pc -enable-kvm -cpu host -smp 1 -m 256 -nodefaults -no-user-config -display none \
    -serial file:$log -chardev pipe,id=qmp,path=$WORK/qmp -mon chardev=qmp,mode=control \
    -no-reboot -kernel $GUEST/vmlinux -initrd $GUEST/boot-initramfs.cpio -append "{cmdline}" \
    2> $WORK/qemu.log &
pid=$!
cat $WORK/qmp.out > $WORK/qmp.log &
qmp() {{ echo "$1" > $WORK/qmp.in; }}
qmp '{{"execute": "qmp_capabilities"}}'
wait_n virga-hotplug-ready 1
for c in $(seq {CYCLES}); do
    t0=$(now)
    qmp "{{\"execute\": \"blockdev-add\", \"arguments\": {{\"driver\": \"raw\", \"node-name\": \"d$c\", \"cache\": {{\"direct\": true}}, \"file\": {{\"driver\": \"file\", \"filename\": \"$WORK/disk/hot.img\", \"aio\": \"io_uring\"}}}}}}"
    qmp "{{\"execute\": \"device_add\", \"arguments\": {{\"driver\": \"virtio-blk-pci\", \"drive\": \"d$c\", \"id\": \"vd$c\"}}}}"
    wait_n "{plugged}" $c
    t1=$(now)
    qmp "{{\"execute\": \"device_del\", \"arguments\": {{\"id\": \"vd$c\"}}}}"
    wait_n "{gone}" $((c + 1))
    t2=$(now)
    report qemu plug $t0 $t1; report qemu unplug $t1 $t2
    i=0; while ! grep -q "\"device\": *\"vd$c\"" $WORK/qmp.log && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    qmp "{{\"execute\": \"blockdev-del\", \"arguments\": {{\"node-name\": \"d$c\"}}}}"
done
grep -q '"error"' $WORK/qmp.log && {{ echo "qemu: QMP said"; cat $WORK/qmp.log; failed=1; }}
qmp '{{"execute": "quit"}}'
wait $pid
scrub_free_memory 1
"#
    );
    format!(
        r#"{SCRUB_FREE_MEMORY}{FUNCTIONS}failed=0
# The disk on ext4 (L1's root takes no O_DIRECT, which both open it with).
mkdir -p $WORK/disk && mount -t ext4 $SCRATCH $WORK/disk || exit 1
dd if=/dev/zero of=$WORK/disk/hot.img bs=1M count=16 2>/dev/null
printf virga-hot-disk-1 | dd of=$WORK/disk/hot.img conv=notrunc 2>/dev/null
for round in $(seq {runs}); do
if [ $((round % 2)) = 1 ]; then
{virga}{qemu}else
{qemu}{virga}fi
done
exit $failed
"#
    )
}

/// `(system, metric, ms)` from the script's result lines.
fn results(output: &str) -> Samples {
    let mut samples = Samples::default();
    for line in output.lines() {
        let Some(rest) = line.find(RESULT).map(|i| &line[i + RESULT.len()..]) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        if let (Some(system), Some(metric), Some(Ok(ms))) = (
            words.next(),
            words.next(),
            words.next().map(str::parse::<f64>),
        ) {
            samples.add(system, &format!("{metric}_ms"), "ms", ms);
        }
    }
    samples
}

pub fn run(runs: u32) -> Result<()> {
    let testbed = Testbed::new(&images_dir())?;
    let scenario = Scenario::new("bench-attach", &script(runs))
        .binary(vmm_bin())
        .binary(vmm_bin().with_file_name("vmmctl"))
        .host_binary(QEMU)
        .host_paths(
            QEMU_FIRMWARE
                .iter()
                .filter(|f| std::path::Path::new(f).exists()),
        )
        .with_scratch_ext4(64)
        // Two boots, their plugs, and a scrub after each, per round.
        .timeout(Duration::from_secs(300 + 600 * u64::from(runs)));
    eprintln!(
        "bench attach: {runs} rounds of {CYCLES} disk plugs and unplugs into a running guest, virga and qemu ({})",
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;
    let report = Report {
        bench: "attach".into(),
        host: format!(
            "{} ({}, guests: 1 vCPU, 256 MiB)",
            host_cpu(),
            outcome.mode.as_str()
        ),
        rows: results(&outcome.output).rows(SYSTEMS),
    };
    let expected = (runs * CYCLES) as usize;
    let complete = SYSTEMS.iter().all(|s| {
        ["plug_ms", "unplug_ms"]
            .iter()
            .all(|m| report.row(s, m).is_some_and(|r| r.runs == expected))
    });
    if !outcome.success() || !complete {
        bail!(
            "the attach benchmark failed (status {}); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!(
        "(plug: the request to the guest reading the new disk; unplug: the request to the guest without it; lower is better; each includes up to 0.3 s of polling)"
    );
    println!("written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_plugs_and_unplugs_on_both_systems_in_both_orders() {
        let s = script(2);
        assert!(s.contains("--disk $WORK/disk/hot.img post /vm/disks"));
        assert!(s.contains("delete /vm/devices/$id"));
        assert!(
            s.contains(r#"\"driver\": \"virtio-blk-pci\", \"drive\": \"d$c\", \"id\": \"vd$c\""#)
        );
        assert!(
            s.contains(r#"qmp "{\"execute\": \"device_del\", \"arguments\": {\"id\": \"vd$c\"}}""#)
        );
        // Odd rounds virga first, even rounds qemu first.
        let (odd, even) = s.split_once("\nelse\n").expect("two orders");
        assert!(odd.find("$BIN/vmm ").unwrap() < odd.find(QEMU).unwrap());
        assert!(even.find(QEMU).unwrap() < even.find("$BIN/vmm ").unwrap());
        // Each boot is followed by a scrub of what its guest freed.
        assert_eq!(s.matches("\nscrub_free_memory 1\n").count(), 4);
        crate::assert_shell_parses(&s);
    }

    #[test]
    fn results_are_read_per_system_and_step() {
        let out = "x\nVIRGA-ATTACH virga plug 1230\nVIRGA-ATTACH qemu unplug 2500\n\
                   VIRGA-ATTACH virga plug 1250\nVIRGA-ATTACH virga plug oops\n";
        let r = Report {
            bench: "attach".into(),
            host: String::new(),
            rows: results(out).rows(SYSTEMS),
        };
        let plug = r.row("virga", "plug_ms").expect("virga's plugs");
        assert_eq!(plug.runs, 2);
        assert_eq!(plug.median, 1240.0);
        assert_eq!(r.row("qemu", "unplug_ms").map(|r| r.runs), Some(1));
        assert!(r.row("qemu", "plug_ms").is_none());
    }
}
