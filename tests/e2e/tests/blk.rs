//! virtio-blk: data written by one boot is read back by the next; a read-only disk
//! refuses writes; several disks (and NICs) on one VM show up; a VMM killed
//! while its guest writes loses nothing the guest saw flushed.

use virga_e2e::{run, run_scenario, value};

#[test]
fn disk_data_survives_reboots_and_read_only_disks_refuse_writes() {
    let out = run(
        "virtio-blk",
        r#"img=$WORK/disk.raw
dd if=/dev/zero of=$img bs=1M count=64 2>/dev/null
other=$WORK/other.raw
dd if=/dev/zero of=$other bs=1M count=8 2>/dev/null
# The jailed VMM (see the testbed) writes them as its own user.
chown $VMM_UID $img $other
boot() {
    mode=$1; shift
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
        --vcpus 2 --memory-mib 256 --cmdline "$CMDLINE virga.mode=$mode" "$@"
}
boot disk-write --disk path=$img,serial=virga-test-disk --disk path=$other \
    --net tap=dtap0 --net tap=dtap1,queues=1
echo "WRITE_EXIT=$?"
echo "HOST_MD5=$(dd if=$img bs=64k skip=16 count=64 2>/dev/null | md5sum | cut -d' ' -f1)"
boot disk-read --disk path=$img,direct=off,queues=1
echo "READ_EXIT=$?"
boot disk-write --disk path=$img,readonly=on
echo "RO_EXIT=$?"
echo "HOST_MD5_AFTER_RO=$(dd if=$img bs=64k skip=16 count=64 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/dev/zero of=$WORK/roots.raw bs=1M count=1 2>/dev/null
boot disk-write --disk path=$WORK/roots.raw 2> $WORK/refused.log
echo "NOT_OWNED_EXIT=$?"
echo "NOT_OWNED_SAYS=$(tail -1 $WORK/refused.log)""#,
    );
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    let written = o
        .lines()
        .find_map(|l| l.strip_prefix("virga-disk-written "))
        .expect("the guest wrote the disk");
    assert_eq!(value(o, "WRITE_EXIT"), Some("0"));
    assert_eq!(
        value(o, "HOST_MD5"),
        Some(written),
        "the host file holds what the guest wrote"
    );
    assert!(
        o.contains(&format!("virga-disk-read {written}")),
        "a second boot reads it back"
    );
    assert!(o.contains("virga-disks vda vdb"), "two disks");
    assert!(
        o.contains("virga-nics eth0 eth1"),
        "two NICs on the same VM"
    );
    assert!(
        o.contains("virga-disk-serial virga-test-disk"),
        "serial via GET_ID"
    );
    assert!(
        o.contains("virga-disk-ro 1"),
        "read-only disk flagged to the guest"
    );
    assert!(
        o.contains("virga-disk-write-failed"),
        "read-only disk refuses writes"
    );
    assert_eq!(
        value(o, "HOST_MD5_AFTER_RO"),
        Some(written),
        "and its data is untouched"
    );
    assert_eq!(value(o, "READ_EXIT"), Some("0"));
    assert_eq!(value(o, "RO_EXIT"), Some("0"));
    // The VMM runs jailed as the testbed's VMM user: a disk it may not write
    // is named before any VM exists.
    assert_eq!(value(o, "NOT_OWNED_EXIT"), Some("2"));
    assert_eq!(
        value(o, "NOT_OWNED_SAYS"),
        Some(
            "vmm: invalid configuration: jail: /virga/work/roots.raw: not writable by uid 1999999 \
             (Permission denied (os error 13))"
        ),
    );
}

#[test]
fn disk_rate_limit_holds_reads_back_and_changes_at_run_time() {
    let out = run(
        "virtio-blk-rate-limit",
        r#"img=$WORK/disk.raw
dd if=/dev/zero of=$img bs=1M count=16 2>/dev/null
chown $VMM_UID $img
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --memory-mib 256 --cmdline "$CMDLINE virga.mode=disk-read" \
    --disk path=$img,bw=1048576 --api-socket $WORK/api.sock &
pid=$!
i=0; while [ ! -S $WORK/api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
$BIN/vmmctl --socket $WORK/api.sock put /vm/devices/disk9/rate-limit '{"ops_per_sec": 10}' 2>$WORK/s
echo "UNKNOWN_DEVICE=$(cat $WORK/s)"
$BIN/vmmctl --socket $WORK/api.sock put /vm/devices/disk0/rate-limit '{"bytes_per_sec": 524288}' 2>$WORK/s
echo "SET_LIMIT=$(cat $WORK/s)"
echo "LIMITS=$($BIN/vmmctl --socket $WORK/api.sock get /vm 2>/dev/null | grep -o '"rate_limits":{[^}]*}}')"
wait $pid
echo "VMM_EXIT=$?""#,
    );
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert_eq!(value(o, "UNKNOWN_DEVICE"), Some("404"));
    assert_eq!(value(o, "SET_LIMIT"), Some("204"));
    assert_eq!(
        value(o, "LIMITS"),
        Some(r#""rate_limits":{"disk0":{"bytes_per_sec":524288}}"#)
    );
    let (t0, t1) = o
        .lines()
        .find_map(|l| {
            let mut it = l
                .strip_prefix("virga-disk-read-seconds ")?
                .split_whitespace();
            Some((
                it.next()?.parse::<f64>().ok()?,
                it.next()?.parse::<f64>().ok()?,
            ))
        })
        .expect("the guest timed its read");
    // 4 MiB at 512 KiB/s with at most one second of burst: at least 7 s. A lower
    // bound only: a slow machine cannot make this fail, a missing limit does.
    assert!(
        t1 - t0 >= 6.0,
        "4 MiB read in {:.2} s despite a 512 KiB/s limit",
        t1 - t0
    );
    assert_eq!(value(o, "VMM_EXIT"), Some("0"));
}

/// A disk plugged into the running guest through the control API, on the
/// descriptor sent with the request (as hostd will send a volume's): the
/// guest sees it and reads what the host wrote, and sees it grow; unplugged,
/// it goes once the guest lets go, also when the unplug came while the
/// guest booted. Bad requests are refused.
#[test]
fn disks_plug_and_unplug_while_the_guest_runs() {
    let script = r#"log=$WORK/console.log
api() { $BIN/vmmctl --socket $WORK/api.sock "$@"; }
@WAITS@dd if=/dev/zero of=$WORK/hot.img bs=1M count=16 2>/dev/null
printf virga-hot-disk-1 | dd of=$WORK/hot.img conv=notrunc 2>/dev/null
dd if=/dev/zero of=$WORK/cold.img bs=1M count=1 2>/dev/null
chown $VMM_UID $WORK/cold.img
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --vcpus 1 --memory-mib 256 --cmdline "$CMDLINE virga.mode=hotplug" --serial file:$log \
    --disk path=$WORK/cold.img --api-socket $WORK/api.sock 2> $WORK/vmm.log &
pid=$!
i=0; until api get /vm >/dev/null 2>&1 || [ $i -ge 200 ]; do sleep 0.05; i=$((i + 1)); done
# Unplugged as soon as the VMM answers, while the guest boots.
echo "EARLY_REMOVE=$(api delete /vm/devices/disk0 2>&1 | tr '\n' ' ')"
wait_for "virga-hotplug-ready"
i=0; while api get /vm 2>/dev/null | grep -q '"id":"disk0"' && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "EARLY_GONE=$(api get /vm 2>/dev/null | grep -c '"id":"disk0"')"
echo "ADD=$(api --disk $WORK/hot.img post /vm/disks '{"serial": "hot1"}' 2>&1 | tr '\n' ' ')"
wait_for "virga-hotplug-disk vda virga-hot-disk-1"
wait_for "virga-hotplug-sizes vda=32768 "
echo "GROW=$(api put /vm/devices/disk0/size '{"bytes": 50331648}' 2>&1 | tr '\n' ' ')"
wait_for "virga-hotplug-sizes vda=98304 "
echo "FILE_BYTES=$(stat -c %s $WORK/hot.img)"
echo "SHRINK=$(api put /vm/devices/disk0/size '{"bytes": 1048576}' 2>&1 >/dev/null)"
echo "GROW_NONE=$(api put /vm/devices/disk9/size '{"bytes": 50331648}' 2>&1 >/dev/null)"
echo "REMOVE=$(api delete /vm/devices/disk0 2>&1 | tr '\n' ' ')"
wait_n "virga-hotplug-disks vd\*" 2
i=0; while api get /vm 2>/dev/null | grep -q '"id":"disk0"' && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "DISKS_AFTER=$(api get /vm 2>/dev/null | grep -c '"id":"disk0"')"
echo "BAD_NOTHING=$(api post /vm/disks '{}' 2>&1 >/dev/null)"
echo "BAD_PATH=$(api post /vm/disks '{"path": "/nonexistent.img"}' 2>&1 >/dev/null)"
echo "BAD_BOTH=$(api --disk $WORK/hot.img post /vm/disks '{"path": "/x"}' 2>&1 >/dev/null)"
echo "BAD_BASE=$(api --disk $WORK/hot.img post /vm/disks '{"base": "/x"}' 2>&1 >/dev/null)"
api put /vm/actions/shutdown '{"timeout_ms": 20000}'
wait $pid
echo "VMM_EXIT=$?"
grep virga-hotplug $log"#
        .replace("@WAITS@", virga_e2e::CONSOLE_WAITS);
    let out = run("virtio-blk-hotplug", &script);
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert!(!o.contains("TIMEOUT"), "a step timed out");
    // The unplug asked for while the guest booted waited for the guest's
    // GED driver (it once reached the unprogrammed PIC and panicked the
    // guest, or was lost).
    assert!(value(o, "EARLY_REMOVE").is_some_and(|r| r.starts_with("202")));
    assert_eq!(
        value(o, "EARLY_GONE"),
        Some("0"),
        "ejected once the guest was up"
    );
    assert!(value(o, "ADD").is_some_and(|r| r.starts_with("201 {\"id\":\"disk0\"")));
    assert!(
        o.contains("virga-hotplug-disk vda virga-hot-disk-1"),
        "the guest read the disk"
    );
    // Grown while in use: the guest saw the new size at once.
    assert!(value(o, "GROW").is_some_and(|r| r.starts_with("204")));
    assert!(
        o.contains("virga-hotplug-sizes vda=98304 "),
        "the guest saw it grow"
    );
    assert_eq!(value(o, "FILE_BYTES"), Some("50331648"));
    assert_eq!(value(o, "SHRINK"), Some("400"));
    assert_eq!(value(o, "GROW_NONE"), Some("404"));
    assert!(value(o, "REMOVE").is_some_and(|r| r.starts_with("202")));
    assert_eq!(value(o, "DISKS_AFTER"), Some("0"), "gone from the config");
    for bad in ["BAD_NOTHING", "BAD_PATH", "BAD_BOTH", "BAD_BASE"] {
        assert_eq!(value(o, bad), Some("400"), "{bad}");
    }
    assert_eq!(value(o, "VMM_EXIT"), Some("0"));
}

/// `kill -9` of the VMM while its guest writes: every record the guest saw
/// flushed (a virtio FLUSH answered) is on the disk at the next boot, on a
/// raw disk and on a qcow2 overlay (whose metadata the VMM writes back on
/// FLUSH). Each trial boots the guest on the disk left by the last, which
/// counts the records there, writes more, and is killed 0.1 to 1 s after
/// its first acknowledgement. `VIRGA_VMM_CRASH_TRIALS` trials of each kind
/// (3 by default; `cargo xtask crash-trials` runs 25 of each).
#[test]
fn flushed_writes_survive_the_vmm_killed_anywhere() {
    let trials: u32 = std::env::var("VIRGA_VMM_CRASH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let script = r#"@WAITS@
trials=@TRIALS@
dd if=/dev/zero of=$WORK/raw.img bs=1M count=64 2>/dev/null
dd if=/dev/zero of=$WORK/base.raw bs=1M count=64 2>/dev/null
/usr/bin/qemu-img create -q -f qcow2 -o cluster_size=65536 -F raw -b $WORK/base.raw \
    $WORK/top.qcow2 64M || echo "NO_OVERLAY"
chown $VMM_UID $WORK/raw.img $WORK/base.raw $WORK/top.qcow2
boot() {
    log=$WORK/$label-$1.log
    : > $log
    chown $VMM_UID $log
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
        --vcpus 1 --memory-mib 128 --cmdline "$CMDLINE virga.mode=writer" \
        --serial file:$log --disk "$disk" 2> $WORK/$label-$1.vmm.log &
    pid=$!
    wait_for "virga-writer-found"
    found=$(sed -n 's/.*virga-writer-found \([0-9]*\).*/\1/p' $log | head -n 1)
    if [ "${found:-0}" -gt "$acked" ]; then
        kept=$((kept + 1))
    else
        echo "LOST $label boot $1: $found records found, $((acked + 1)) acknowledged"
    fi
}
for kind in raw overlay; do
    label=$kind; acked=-1; kept=0
    if [ $kind = raw ]; then disk="path=$WORK/raw.img"; else disk="path=$WORK/top.qcow2,base=$WORK/base.raw"; fi
    for t in $(seq $trials); do
        boot $t
        wait_for "virga-writer-ack"
        sleep 0.$((RANDOM % 10))$((RANDOM % 10))
        sleep 0.1
        kill -9 $pid
        wait $pid 2>/dev/null
        last=$(sed -n 's/.*virga-writer-ack \([0-9]*\).*/\1/p' $log | tail -n 1)
        acked=${last:-$acked}
        echo "TRIAL $kind $t found=$found acked=$acked"
    done
    # The last kill's records, read back by one more boot.
    boot final
    kill -9 $pid
    wait $pid 2>/dev/null
    echo "KEPT_$kind=$kept"
done
grep -h "virga-writer-failed" $WORK/*.log || true"#
        .replace("@WAITS@", virga_e2e::CONSOLE_WAITS)
        .replace("@TRIALS@", &trials.to_string());
    let out = run_scenario("vmm-crash-trials", &script, |s| {
        s.host_binary("/usr/bin/qemu-img")
            .timeout(std::time::Duration::from_secs(120 + 30 * u64::from(trials)))
    });
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert!(!o.contains("TIMEOUT"), "a step timed out");
    assert!(!o.contains("NO_OVERLAY"), "qemu-img made no overlay");
    assert!(!o.contains("LOST"), "flushed records were lost");
    assert!(!o.contains("virga-writer-failed"), "a write failed");
    // Every boot found at least what the one before it acknowledged, and
    // each trial wrote something before it was killed.
    for kind in ["raw", "overlay"] {
        assert_eq!(
            value(o, &format!("KEPT_{kind}")),
            Some((trials + 1).to_string().as_str()),
            "{kind}"
        );
        let trials_seen = o
            .lines()
            .filter(|l| l.starts_with(&format!("TRIAL {kind} ")))
            .count();
        assert_eq!(trials_seen, trials as usize, "{kind}");
    }
    println!("{trials} kills of the VMM on each kind of disk; nothing flushed was lost");
}
