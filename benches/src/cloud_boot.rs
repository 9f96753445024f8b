//! The cloud-image boot benchmark: the Debian cloud image (`cargo xtask
//! images` builds it) from `server create` to cloud-init's "finished" line
//! on the console, what a user waits for before logging in.
//!
//! - **virga**: `POST /servers` to the controller (on this machine), hostd
//!   and the VMM in the testbed: scheduling, the root disk (a qcow2 overlay
//!   on the testbed's ext4), the config drive, the boot picker reading the
//!   image's `/boot`, the kernel started directly. Timed from inside the
//!   testbed by `api-probe`, as in the API benchmark; the first server's
//!   image is fetched into hostd's cache (`virga-cold`, not compared).
//! - **qemu-q35-ovmf** and **qemu-pc-seabios**: QEMU booting the same image
//!   (hostd's cached copy, under a fresh qcow2 overlay each run) through
//!   firmware and the image's own GRUB, with an equal config drive, as Nova
//!   with libvirt would. Timed from QEMU's start. Not OVMF in the nested
//!   testbed: any L2 guest running OVMF aborts the L1 QEMU (Debian 12's 7.2,
//!   TCG: "tcg_handle_interrupt: assertion failed:
//!   (qemu_mutex_iothread_locked())"; q35 with SeaBIOS runs), so there the
//!   UEFI path is left out and said so; on hardware KVM both run.
//!
//! Both sides also report the guest's own uptime at cloud-init's last line,
//! which splits a boot into what the guest spent and what came before its
//! kernel (API, disk, firmware, GRUB).
//!
//! Same guest size (1 vCPU, 512 MiB, 3 GiB root disk, which cloud-init
//! grows), the same CPU (the host's, without VMX or SVM: Virga offers no
//! nested virtualization, so QEMU's guest does not get it either), no
//! network on either side; rounds interleave the systems, so drift in the
//! testbed hits all alike. The first round prints QEMU's console too, to set
//! beside Virga's (`--show-console`) phase by phase.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use virga_testbed::{Mode, Scenario, Testbed};

use crate::api::{admin, create_flavor, create_image, Controller};
use crate::hostd::collect_samples;
use crate::report::{Report, Samples};
use crate::{host_cpu, images_dir, vmm_bin, workspace, QEMU, QEMU_FIRMWARE, SCRUB_FREE_MEMORY};

const GUEST_MIB: u64 = 512;
const DISK_GB: u64 = 3;
/// cloud-init's last words: "Cloud-init v. 22.4.2 finished at <date>.
/// Datasource DataSourceConfigDrive [...].  Up 25.01 seconds".
const MARKER: &str = "finished at";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const QEMU_IMG: &str = "/usr/bin/qemu-img";
const QEMU_SYSTEMS: [&str; 2] = ["qemu-q35-ovmf", "qemu-pc-seabios"];

/// The QEMU systems that can run in `mode` (see the module's comment).
fn qemu_systems(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Native => &QEMU_SYSTEMS,
        Mode::Nested => &QEMU_SYSTEMS[1..],
    }
}
/// One boot may take this long (the testbed runs the guest's every exit
/// through an emulated CPU).
const BOOT_TIMEOUT_SECS: u64 = 900;

/// What the in-testbed script needs.
struct Setup {
    ctl_port: u16,
    hostd_port: u16,
    token: String,
    image: String,
    flavor: String,
    config_drive: String,
}

fn script(runs: u32, s: &Setup, qemu_systems: &[&str]) -> String {
    let Setup {
        ctl_port,
        hostd_port,
        token,
        image,
        flavor,
        config_drive,
    } = s;
    let probe = format!(
        "$BIN/virga-bench api-probe --controller $HOST_ADDR:{ctl_port} --token {token} \
         --image {image} --flavor {flavor} --state-dir $WORK/state --marker '{MARKER}' \
         --system virga --timeout-secs {BOOT_TIMEOUT_SECS}"
    );
    let qemu = format!(
        "{QEMU} $FIRMWARE -enable-kvm -cpu host,-vmx,-svm -smp 1 -m {GUEST_MIB} -nodefaults -no-user-config \
         -display none -serial stdio -no-reboot \
         -smbios 'type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova' \
         -drive file=$WORK/state/qemu.qcow2,if=virtio,format=qcow2,cache=none,aio=io_uring \
         -drive file={config_drive},if=virtio,format=raw,readonly=on"
    );
    format!(
        r#"mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
# State on the scratch disk (ext4: root disks are qcow2 overlays), not L1's RAM.
mkdir -p $WORK/state && mount -t ext4 $SCRATCH $WORK/state
echo never > /sys/kernel/mm/transparent_hugepage/enabled
failed=0
# L1's CPU every 2 s, to place what a slow phase waited for (the kernel, a
# disk, a process).
( while sleep 2; do set -- $(head -n1 /proc/stat); echo "$(date +%T) $2 $3 $4 $5 $6 $7 $8"; done ) > $WORK/cpu.log 2>/dev/null &
SAMPLER=$!
{start_hostd}
# The first server fetches the image into hostd's cache, which QEMU's runs
# then boot from.
{probe} --runs 0 --show-console || {{ failed=1; tail -n 20 $WORK/hostd.log; }}
BASE=$WORK/state/images/{image}
[ -f $BASE ] || {{ echo "no cached image at $BASE"; exit 1; }}
# What hostd did for each server, and what runs in L1 between boots: the
# phases (fetch, root disk, picker, start, delete) beside the boot times.
phases() {{ echo "--- hostd's phases, then L1's processes ---"; grep -E 'image cached|root disk made|config drive made|boot picked|instance state|deleted' $WORK/hostd.log | cut -c1-200 | tail -n 14; grep -E '^(Dirty|Writeback):' /proc/meminfo; cat /proc/pressure/io 2>/dev/null; top -b -n1 | head -n 12; }}
# After each guest ends, every free page of L1 is written once (twice, to
# show what the first pass cost), so the next system's start does not pay
# for the last one's guest (see SCRUB_FREE_MEMORY in the benches' main.rs).
{SCRUB_FREE_MEMORY}scrub() {{
  # The deleted server's VMM gone first (at most a minute).
  i=0; while [ -n "$(ls $WORK/state/instances 2>/dev/null)" ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
  scrub_free_memory 2
}}
phases
scrub
for round in $(seq {runs}); do
  # Round 1 prints this server's console too, to set beside QEMU's.
  {probe} --runs 1 --no-cold $([ $round = 1 ] && echo --show-console) || {{ failed=1; tail -n 20 $WORK/hostd.log; }}
  phases
  scrub
  for system in {systems}; do
    rm -f $WORK/state/qemu.qcow2
    {QEMU_IMG} create -q -f qcow2 -F raw -b $BASE $WORK/state/qemu.qcow2 {DISK_GB}G || exit 1
    case $system in
      qemu-q35-ovmf)
        cp {OVMF_VARS} $WORK/ovmf-vars.fd
        FIRMWARE="-M q35 -drive if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE} -drive if=pflash,format=raw,unit=1,file=$WORK/ovmf-vars.fd" ;;
      *) FIRMWARE="-M pc" ;;
    esac
    $BIN/virga-bench measure --system $system --marker '{MARKER}' --guest-mib {GUEST_MIB} \
      --stop-at-marker --console $WORK/qemu-console.log -- {qemu} > $WORK/qemu.out \
      || {{ failed=1; tail -n 30 $WORK/qemu-console.log; }}
    grep VIRGA- $WORK/qemu.out
    [ $round = 1 ] && {{ echo "--- console of $system ---"; cat $WORK/qemu-console.log; }}
    scrub
  done
done
kill $HOSTD; wait $HOSTD
kill $SAMPLER
echo "--- L1's CPU every 2 s: time, then jiffies of user nice system idle iowait irq softirq ---"
cat $WORK/cpu.log
exit $failed
"#,
        start_hostd = crate::api::start_hostd(*ctl_port, *hostd_port),
        systems = qemu_systems.join(" "),
    )
}

pub fn run(runs: u32) -> Result<()> {
    for f in [OVMF_CODE, OVMF_VARS, QEMU, QEMU_IMG] {
        if !Path::new(f).exists() {
            bail!("{f} is missing (cargo xtask install adds it)");
        }
    }
    let cloud = virga_guest_images::cloud_image::load(&images_dir().join("debian-12"))
        .context("the Debian cloud image (cargo xtask images builds it)")?;
    let testbed = Testbed::new(&images_dir())?;
    let mode = testbed.mode().as_str().to_owned();
    let qemus = qemu_systems(testbed.mode());
    if qemus.len() < QEMU_SYSTEMS.len() {
        eprintln!(
            "bench cloud-boot: no qemu-q35-ovmf in the nested testbed (OVMF in L2 aborts its L1 QEMU 7.2); hardware KVM runs it"
        );
    }
    let ctl = Controller::start(None, "[scheduler]\ncpu_allocation_ratio = 16.0")?;
    let (mut c, project) = admin(&ctl)?;
    eprintln!("bench cloud-boot: uploading the Debian image");
    let qcow2 = std::fs::read(cloud.qcow2())
        .with_context(|| format!("reading {}", cloud.qcow2().display()))?;
    // No network here: cloud-init reads its config drive, on both sides.
    let image = create_image(
        &mut c,
        "debian-12",
        "qcow2",
        json!({"img_config_drive": "mandatory"}),
        qcow2,
    )?;
    let flavor = create_flavor(&mut c, 1, GUEST_MIB, DISK_GB)?;

    // QEMU's config drive: what hostd writes for a server, with Nova's keys.
    let dir = tempfile::tempdir()?;
    let config_drive = dir.path().join("config-2.img");
    let uuid = "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c";
    let drive = hostd_proto::instance::ConfigDrive {
        meta_data: json!({"uuid": uuid, "name": "bench-qemu", "hostname": "bench-qemu",
                          "launch_index": 0, "availability_zone": "nova",
                          "project_id": project, "public_keys": {}})
        .as_object()
        .cloned()
        .unwrap_or_default(),
        user_data: None,
        vendor_data: Default::default(),
        network_data: json!({"links": [], "networks": [], "services": []})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    hostd::config_drive::write(&drive, &config_drive).context("writing QEMU's config drive")?;

    let setup = Setup {
        ctl_port: ctl.port,
        hostd_port: crate::api::free_port()?,
        token: c.auth.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
        image,
        flavor,
        config_drive: config_drive.display().to_string(),
    };
    let vmm = vmm_bin();
    let mut scenario = Scenario::new("bench-cloud-boot", &script(runs, &setup, qemus))
        .binary(&vmm)
        .binary(vmm.with_file_name("hostd"))
        .binary(vmm.with_file_name("virga-bootpick"))
        .binary(std::env::current_exe()?)
        .host_binary(QEMU)
        .host_binary(QEMU_IMG)
        .host_paths(QEMU_FIRMWARE.iter().filter(|f| Path::new(f).exists()))
        .host_paths([OVMF_CODE, OVMF_VARS])
        .host_path(&config_drive)
        .forward_port(setup.hostd_port)
        .with_scratch_ext4(16 << 10)
        // The cold first server, then three boots a round (about two
        // minutes each in the testbed).
        .timeout(Duration::from_secs(
            BOOT_TIMEOUT_SECS + 3 * 300 * u64::from(runs),
        ));
    for program in ["/usr/sbin/mke2fs", "/usr/sbin/mkswap"] {
        if Path::new(program).exists() {
            scenario = scenario.host_binary(program);
        }
    }
    eprintln!(
        "bench cloud-boot: 1 + {runs} servers through the API, {runs} boots of {} ({mode})",
        qemus.join(" and ")
    );
    let outcome = testbed.run(&scenario)?;
    let log = workspace().join("target/bench/cloud-boot.log");
    std::fs::create_dir_all(workspace().join("target/bench"))?;
    std::fs::write(&log, &outcome.output).with_context(|| format!("writing {}", log.display()))?;
    let mut samples = Samples::default();
    collect_samples(&outcome.output, &mut samples);
    let mut systems = vec!["virga"];
    systems.extend(qemus);
    systems.push("virga-cold");
    if !outcome.success() || systems.iter().any(|s| !samples.systems().contains(s)) {
        bail!(
            "the cloud-boot scenario failed (status {}):\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 60)
        );
    }
    let report = Report {
        bench: "cloud-boot".into(),
        host: format!("{} ({})", host_cpu(), outcome.mode.as_str()),
        rows: samples.rows(&systems),
    };
    let peer = fastest_qemu(&report).context("no QEMU boot time")?;
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(peer));
    if let Some(r) = report.ratio("virga", peer, "boot_ms") {
        println!(
            "create to cloud-init finished: virga {r:.2}x {peer}, the faster QEMU path (target: at most 0.5x)"
        );
    }
    println!("(boot_ms: POST /servers, or QEMU's start, to cloud-init's \"finished\" line; virga-cold: the first server, the image not yet in hostd's cache)");
    println!(
        "written to {} (the testbed's output, with the first server's console: {})",
        path.display(),
        log.display()
    );
    Ok(())
}

/// The QEMU system with the lower median boot time.
fn fastest_qemu(report: &Report) -> Option<&'static str> {
    QEMU_SYSTEMS
        .iter()
        .filter_map(|s| report.row(s, "boot_ms").map(|r| (*s, r.median)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_interleaves_virga_and_both_firmware_paths() {
        let s = script(
            2,
            &Setup {
                ctl_port: 8774,
                hostd_port: 8790,
                token: "tok".into(),
                image: "img".into(),
                flavor: "fl".into(),
                config_drive: "/tmp/c.img".into(),
            },
            qemu_systems(Mode::Native),
        );
        assert!(s.contains("--runs 0 --show-console ||"));
        assert!(s.contains("--runs 1 --no-cold"));
        assert!(s.contains("for system in qemu-q35-ovmf qemu-pc-seabios"));
        assert!(s.contains(&format!("file={OVMF_CODE}")));
        assert!(s.contains("BASE=$WORK/state/images/img\n"));
        assert!(s.contains("-b $BASE $WORK/state/qemu.qcow2 3G"));
        assert!(s.contains("file=/tmp/c.img,if=virtio,format=raw,readonly=on"));
        assert!(s.contains("--marker 'finished at'"));
        assert!(s.contains("--stop-at-marker"));
        assert_eq!(qemu_systems(Mode::Nested), ["qemu-pc-seabios"]);
        // Scrubbed after the first server, after each round's server and
        // after each QEMU boot.
        assert!(s.contains("scrub_free_memory() {"));
        assert_eq!(s.lines().filter(|l| l.trim() == "scrub").count(), 3);
        crate::assert_shell_parses(&s);
    }
}
