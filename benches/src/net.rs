//! The network benchmark: iperf3 between the guest and the host side of its tap,
//! both directions, one and four streams, for virga with vhost-net (one queue
//! pair, and one per vCPU), virga moving packets itself, and QEMU
//! (virtio-net-pci, vhost=on), all in one testbed boot.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use virga_guest_images::rootfs::{IPERF_HOST_ADDR, IPERF_JOBS, IPERF_RESULT};
use virga_testbed::{Scenario, Testbed};

use crate::report::{Report, Samples};
use crate::{
    host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE as CMDLINE, QEMU, QEMU_FIRMWARE,
};

const SYSTEM_MARKER: &str = "VIRGA-BENCH-SYSTEM";
const PEER: &str = "qemu";
const SYSTEMS: &[&str] = &["virga", "virga-mq", "virga-userspace", "qemu"];
const GUEST_MIB: u64 = 512;
const VCPUS: u32 = 2;
const TAP: &str = "btap0";
const MAC: &str = "02:00:00:00:00:02";

/// (system, command): each boots the rootfs in iperf mode on a tap named TAP.
fn systems() -> Vec<(&'static str, String)> {
    let guest_cmdline = format!("{CMDLINE} virga.root=/dev/vda virga.mode=iperf");
    let virga = |net: &str| {
        format!(
            "$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
             --vcpus {VCPUS} --memory-mib {GUEST_MIB} --cmdline \"{guest_cmdline}\" \
             --disk path=$ROOTFS --net tap={TAP},mac={MAC},{net}"
        )
    };
    let qemu = format!(
        "{QEMU} -M pc -enable-kvm -cpu host -smp {VCPUS} -m {GUEST_MIB} -nodefaults \
         -no-user-config -display none -serial stdio -no-reboot -kernel $GUEST/vmlinux \
         -initrd $GUEST/boot-initramfs.cpio -append \"{guest_cmdline}\" \
         -drive file=$ROOTFS,if=none,id=root,format=raw -device virtio-blk-pci,drive=root \
         -netdev tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=on \
         -device virtio-net-pci,netdev=n0,mac={MAC},romfile="
    );
    vec![
        ("virga", virga("vhost=on")),
        ("virga-mq", virga(&format!("vhost=on,queues={VCPUS}"))),
        ("virga-userspace", virga("vhost=off")),
        ("qemu", qemu),
    ]
}

fn script(runs: u32) -> String {
    // One iperf3 server on the host serves every run, one test at a time.
    let mut s = format!("/usr/bin/iperf3 -s -D\nfailed=0\nfor round in $(seq {runs}); do\n");
    for (system, command) in systems() {
        s.push_str(&format!(
            "echo {SYSTEM_MARKER} {system}\n{command} &\npid=$!\n\
             i=0; while [ ! -e /sys/class/net/{TAP} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done\n\
             ip addr add {IPERF_HOST_ADDR}/24 dev {TAP}\nip link set {TAP} up\n\
             wait $pid || failed=1\n"
        ));
    }
    s.push_str("done\nexit $failed\n");
    s
}

/// Mbit/s from an iperf3 summary line (`... 345 Mbits/sec ... receiver`).
fn parse_mbits(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

pub fn run(runs: u32) -> Result<()> {
    let testbed = Testbed::new(&images_dir())?;
    let scenario = Scenario::new("bench-net", &script(runs))
        .binary(vmm_bin())
        .host_binary(QEMU)
        .host_binary("/usr/bin/iperf3")
        .host_paths(QEMU_FIRMWARE.iter().filter(|f| Path::new(f).exists()))
        .with_rootfs()
        .timeout(Duration::from_secs(300 + 200 * u64::from(runs)));
    eprintln!(
        "bench net: {runs} rounds of {} ({})",
        SYSTEMS.join(", "),
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;

    let mut samples = Samples::default();
    let mut system = String::new();
    for line in outcome.output.lines() {
        if let Some(s) = line.strip_prefix(SYSTEM_MARKER) {
            system = s.trim().to_owned();
        } else if let Some(rest) = line
            .find(IPERF_RESULT)
            .map(|i| &line[i + IPERF_RESULT.len()..])
        {
            let mut parts = rest.trim().splitn(2, ' ');
            if let (Some(job), Some(mbits)) = (parts.next(), parts.next().and_then(parse_mbits)) {
                samples.add(&system, &format!("{job}_mbit_s"), "Mbit/s", mbits);
            }
        }
    }
    let expected = IPERF_JOBS.len() * SYSTEMS.len();
    if !outcome.success() || samples.len() < expected {
        bail!(
            "network benchmark failed (status {}, {} of {expected} results); output:\n{}",
            outcome.status,
            samples.len(),
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    let report = Report {
        bench: "net".into(),
        host: format!("{} ({})", host_cpu(), testbed.mode().as_str()),
        rows: samples.rows(SYSTEMS),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!("(iperf3 in the guest against the host side of the tap; higher is better)");
    println!("written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf_summaries() {
        let line = "[SUM]   0.00-3.00   sec   412 MBytes  1151 Mbits/sec                  receiver";
        assert_eq!(parse_mbits(line), Some(1151.0));
        assert_eq!(
            parse_mbits("[  5]   0.00-3.00 sec 9.5 MBytes 26.6 Mbits/sec receiver"),
            Some(26.6)
        );
        assert_eq!(parse_mbits(""), None);
        assert_eq!(parse_mbits("Mbits/sec"), None);
        assert_eq!(parse_mbits("iperf3: error - unable to connect"), None);
    }

    #[test]
    fn script_runs_every_system_on_the_tap() {
        let s = script(2);
        for sys in SYSTEMS {
            assert!(s.contains(&format!("{SYSTEM_MARKER} {sys}\n")));
        }
        assert_eq!(s.matches(&format!("ifname={TAP}")).count(), 1);
        assert_eq!(s.matches(&format!("tap={TAP}")).count(), 3);
        assert!(s.contains("vhost=on"));
    }
}
