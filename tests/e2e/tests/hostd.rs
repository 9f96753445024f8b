//! hostd end to end: real VMMs booting real guests under hostd, driven through
//! its API with hostctl. Lifecycle of three instances; `kill -9` of hostd and
//! re-adoption without disturbing guests; `kill -9` of one VMM.

use virga_e2e::run;

/// Shell helpers every hostd scenario starts with: `hc` (hostctl with the
/// token), `state ID`, `pid ID`, `ticks ID` (how many ticks the guest has
/// printed, read from the console log), `ticks_past ID N` (waits for more than
/// N), `wait_for ID STATE`, `wait_booted ID`, `vmms` (VMM processes running),
/// and an instance spec writer. Waits have deadlines in seconds, not loop
/// counts: a starved testbed runs each `hc` call several times slower.
const PRELUDE: &str = r#"
TOKEN=e2e-token-0123456789abcdef
mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
cat > $WORK/hostd.toml <<EOF
token = "$TOKEN"
socket = "$WORK/hostd.sock"
state_dir = "$WORK/state"
vmm_binary = "$BIN/vmm"
host_id = "testbed"
stop_timeout_ms = 20000
EOF
start_hostd() {
    rm -f $WORK/hostd.sock
    $BIN/hostd --config $WORK/hostd.toml 2>> $WORK/hostd.log &
    HOSTD=$!
    d=$(($(date +%s) + 60)); while [ ! -S $WORK/hostd.sock ] && [ $(date +%s) -lt $d ]; do sleep 0.1; done
}
hc() { $BIN/hostctl --socket $WORK/hostd.sock --token $TOKEN "$@"; }
state() { hc show $1 2>/dev/null | grep -o '"state": "[a-z]*"' | head -1 | cut -d'"' -f4; }
pid() { hc show $1 2>/dev/null | grep -o '"pid": [0-9]*' | head -1 | cut -d' ' -f2; }
# From the console file itself, so it works while hostd is down. Counts tick
# lines rather than parsing the last one, which need not be a tick (a starved
# guest's kernel may have printed a warning after it).
ticks() { n=$(grep -c 'virga-tick' $WORK/state/instances/$1/console.log); echo "${n:-0}"; }
ticks_past() {
    d=$(($(date +%s) + 30)); while [ "$(ticks $1)" -le "$2" ] && [ $(date +%s) -lt $d ]; do sleep 0.1; done
    ticks $1
}
booted() { n=$(hc console $1 --tail 1000 | grep -c VIRGA-BOOT-OK); echo ${n:-0}; }
vmms() { n=$(ps -o stat,comm | grep -c '^[^Z].* vmm$'); echo ${n:-0}; }
# Waits on hostd's answers poll every 0.5 s: each look runs hostctl, which on
# the testbed's one emulated CPU takes time from the guests being waited for.
wait_for() {
    d=$(($(date +%s) + 60)); while [ "$(state $1)" != "$2" ] && [ $(date +%s) -lt $d ]; do sleep 0.5; done
    echo "STATE $1 $(state $1)"
}
wait_booted() {
    d=$(($(date +%s) + 300)); while [ "$(booted $1)" = 0 ] && [ $(date +%s) -lt $d ]; do sleep 0.5; done
    echo "BOOTED $1 $(booted $1)"
}
spec() {
    echo "{\"id\": \"$1\", \"vcpus\": 1, \"memory_mib\": 128, \"kernel\": \"$GUEST/vmlinux\", \"initramfs\": \"$GUEST/boot-initramfs.cpio\", \"cmdline\": \"$CMDLINE virga.mode=ticks\"}" > $WORK/$1.json
}
start_hostd
"#;

fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

#[test]
fn instances_live_through_their_lifecycle() {
    let script = format!(
        "{PRELUDE}{}",
        r#"
dd if=/dev/zero of=$WORK/vm1.raw bs=1M count=1 2>/dev/null
for vm in vm1 vm2 vm3; do
    spec $vm
    # vm1 has a writable disk, which hostd gives to its VMM's user.
    [ $vm = vm1 ] && sed -i "s|}\$|, \"disks\": [{\"path\": \"$WORK/vm1.raw\"}]}|" $WORK/vm1.json
    hc create $WORK/$vm.json > /dev/null && echo "CREATED $vm"
done
for vm in vm1 vm2 vm3; do wait_booted $vm; echo "STATE $vm $(state $vm)"; done
echo "VMMS_3 $(vmms)"
# Each VMM is jailed: its own user, no capabilities, its own mount namespace
# whose root holds only its kernel, initramfs and /dev/kvm.
for vm in vm1 vm2 vm3; do
    p=$(pid $vm)
    set -- $(grep '^Uid:' /proc/$p/status); echo "JAIL_UID $vm $2 $3 $4 $5"
    set -- $(grep '^CapEff:' /proc/$p/status); echo "JAIL_CAPS $vm $2"
    [ "$(readlink /proc/$p/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && echo "JAIL_NS $vm own" || echo "JAIL_NS $vm shared"
done
p=$(pid vm1)
set -- $(grep '^Uid:' /proc/$p/status); echo "DISK_OWNER $(stat -c %u:%g $WORK/vm1.raw) $2"
echo "JAIL_FILES $(cd /proc/$p/root && find . -path ./proc -prune -o ! -type d -print | sort | tr '\n' ' ')"
# (Root sees every process in any proc; the mount options are what hide them.)
echo "JAIL_PROC $(grep ' /proc ' /proc/$p/mountinfo | grep -c 'hidepid=invisible,subset=pid')"
echo "CGROUP_CPU_MAX $(cat /sys/fs/cgroup/virga/vm1/cpu.max 2>/dev/null)"

hc pause vm1 > /dev/null; echo "PAUSED $(state vm1)"
t0=$(ticks vm1); sleep 1.5; t1=$(ticks vm1)
[ "$t0" = "$t1" ] && echo "PAUSE_HOLDS yes" || echo "PAUSE_HOLDS no $t0 $t1"
hc resume vm1 > /dev/null; echo "RESUMED $(state vm1)"
t2=$(ticks_past vm1 $t1)
[ "$t2" -gt "$t1" ] && echo "RESUME_TICKS yes" || echo "RESUME_TICKS no $t1 $t2"
echo "VMM_METRICS $(hc metrics vm1 | grep -c '"uptime_ms"')"

hc stop vm2 > /dev/null; echo "STOPPED $(state vm2)"
echo "STOP_REASON $(hc show vm2 | grep -o '"reason": "[^"]*"')"
echo "VMMS_2 $(vmms)"
hc start vm2 > /dev/null; wait_for vm2 running > /dev/null; echo "RESTARTED $(state vm2)"
d=$(($(date +%s) + 300)); while [ "$(booted vm2)" -lt 2 ] && [ $(date +%s) -lt $d ]; do sleep 0.5; done
echo "VM2_BOOTS $(booted vm2)"

p0=$(pid vm3); hc reboot vm3 > /dev/null; p1=$(pid vm3)
echo "REBOOTED $(state vm3)"
[ -n "$p1" ] && [ "$p0" != "$p1" ] && ! kill -0 $p0 2>/dev/null && echo "NEW_VMM yes" || echo "NEW_VMM no $p0 $p1"

hc delete vm3 && echo "DELETED yes"
hc show vm3 > /dev/null 2>&1 || echo "GONE yes"
[ -e $WORK/state/instances/vm3 ] && echo "RUNDIR_LEFT yes" || echo "RUNDIR_LEFT no"
echo "VMMS_AFTER_DELETE $(vmms)"
hc create $WORK/vm1.json > /dev/null 2>&1; echo "DUPLICATE_EXIT $?"

hc stop vm2 --hard > /dev/null
echo "HARD_REASON $(hc show vm2 | grep -o '"reason": "[^"]*"')"
for vm in vm1 vm2; do hc delete $vm; done
echo "VMMS_END $(vmms)"
kill $HOSTD; wait $HOSTD; echo "HOSTD_EXIT $?"
"#
    );
    let out = run("hostd-lifecycle", &script);
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    for vm in ["vm1", "vm2", "vm3"] {
        assert!(o.contains(&format!("CREATED {vm}")), "{vm} created");
        assert!(
            o.contains(&format!("BOOTED {vm} 1")),
            "{vm} shows the guest marker"
        );
        assert!(o.contains(&format!("STATE {vm} running")), "{vm} running");
    }
    assert_eq!(value(o, "VMMS_3"), Some("3"), "three VMM processes");
    let mut uids = Vec::new();
    for vm in ["vm1", "vm2", "vm3"] {
        let ids = value(o, &format!("JAIL_UID {vm}")).unwrap_or_default();
        let ids: Vec<u32> = ids.split(' ').filter_map(|i| i.parse().ok()).collect();
        assert_eq!(
            ids.len(),
            4,
            "{vm}: real, effective, saved, fs uid: {ids:?}"
        );
        assert!(ids.iter().all(|&i| i == ids[0]), "{vm}: one uid: {ids:?}");
        assert!(ids[0] >= 2_000_000, "{vm} runs as a jail user: {ids:?}");
        uids.push(ids[0]);
        assert_eq!(
            value(o, &format!("JAIL_CAPS {vm}")),
            Some("0000000000000000"),
            "{vm} has no capabilities"
        );
        assert_eq!(value(o, &format!("JAIL_NS {vm}")), Some("own"), "{vm}");
    }
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "one user per VMM");
    assert_eq!(
        value(o, "JAIL_FILES"),
        Some("./dev/kvm ./virga/guest/boot-initramfs.cpio ./virga/guest/vmlinux ./virga/work/vm1.raw"),
        "the jail holds the VM's files and nothing else"
    );
    assert_eq!(
        value(o, "JAIL_PROC"),
        Some("1"),
        "its /proc shows itself only"
    );
    assert_eq!(value(o, "PAUSED"), Some("paused"));
    assert_eq!(
        value(o, "PAUSE_HOLDS"),
        Some("yes"),
        "no ticks while paused"
    );
    assert_eq!(value(o, "RESUMED"), Some("running"));
    assert_eq!(value(o, "RESUME_TICKS"), Some("yes"));
    assert_eq!(
        value(o, "VMM_METRICS"),
        Some("1"),
        "the VMM's metrics through hostd"
    );
    assert_eq!(value(o, "STOPPED"), Some("shutoff"));
    assert!(
        value(o, "STOP_REASON").is_some_and(|r| r.contains("shut down")),
        "graceful stop reached the guest"
    );
    assert_eq!(value(o, "VMMS_2"), Some("2"));
    assert_eq!(value(o, "RESTARTED"), Some("running"));
    assert_eq!(
        value(o, "VM2_BOOTS"),
        Some("2"),
        "started again: a second boot"
    );
    assert_eq!(value(o, "REBOOTED"), Some("running"));
    assert_eq!(value(o, "NEW_VMM"), Some("yes"), "reboot replaced the VMM");
    assert_eq!(value(o, "DELETED"), Some("yes"));
    assert_eq!(value(o, "GONE"), Some("yes"));
    assert_eq!(value(o, "RUNDIR_LEFT"), Some("no"));
    assert_eq!(value(o, "VMMS_AFTER_DELETE"), Some("2"));
    assert_eq!(
        value(o, "DUPLICATE_EXIT"),
        Some("1"),
        "duplicate id refused"
    );
    assert!(
        value(o, "HARD_REASON").is_some_and(|r| r.contains("signal 9")),
        "a hard stop is reported as such, not with an earlier run's exit line"
    );
    assert_eq!(value(o, "VMMS_END"), Some("0"));
    assert_eq!(value(o, "HOSTD_EXIT"), Some("0"), "SIGTERM is a clean exit");
    // The scenario mounts cgroup2 itself, so limits must be in place.
    assert_eq!(
        value(o, "CGROUP_CPU_MAX"),
        Some("100000 100000"),
        "cpu.max from 1 vCPU"
    );
}

#[test]
fn hostd_restarts_without_disturbing_guests_and_notices_a_dead_vmm() {
    let script = format!(
        "{PRELUDE}{}",
        r#"
for vm in vm1 vm2; do spec $vm; hc create $WORK/$vm.json > /dev/null; wait_booted $vm; done
p1=$(pid vm1); p2=$(pid vm2)
kill -9 $HOSTD; wait $HOSTD 2>/dev/null
t0=$(ticks vm1); t1=$(ticks_past vm1 $t0)
[ "$t1" -gt "$t0" ] && echo "GUEST_RUNS_WITHOUT_HOSTD yes" || echo "GUEST_RUNS_WITHOUT_HOSTD no $t0 $t1"
start_hostd
for vm in vm1 vm2; do echo "AFTER_RESTART $vm $(state $vm)"; done
[ "$(pid vm1)" = "$p1" ] && [ "$(pid vm2)" = "$p2" ] && echo "SAME_VMMS yes" || echo "SAME_VMMS no"
t2=$(ticks_past vm1 $t1)
[ "$t2" -gt "$t1" ] && echo "TICKS_GROW yes" || echo "TICKS_GROW no $t1 $t2"
echo "BOOTS_VM1 $(booted vm1)"
echo "CONSOLE_INTACT $(hc console vm1 --tail 10000 | grep -c 'virga-tick')"

kill $HOSTD; wait $HOSTD; echo "TERM_EXIT $?"
kill -0 $p1 && kill -0 $p2 && echo "GUESTS_SURVIVE_TERM yes"
start_hostd
echo "AFTER_TERM $(state vm1) $(state vm2)"

kill -9 $p1
wait_for vm1 error
echo "DEAD_REASON $(hc show vm1 | grep -o '"reason": "[^"\\]*')"
echo "OTHER_STATE $(state vm2)"
kill -0 $p2 && echo "OTHER_ALIVE yes"
hc stop vm2 --hard > /dev/null; echo "HARD_STOP $(state vm2)"
for vm in vm1 vm2; do hc delete $vm; done
kill $HOSTD; wait $HOSTD
echo "VMMS_END $(vmms)"
"#
    );
    let out = run("hostd-readopt", &script);
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert_eq!(value(o, "GUEST_RUNS_WITHOUT_HOSTD"), Some("yes"));
    assert!(o.contains("AFTER_RESTART vm1 running"));
    assert!(o.contains("AFTER_RESTART vm2 running"));
    assert_eq!(
        value(o, "SAME_VMMS"),
        Some("yes"),
        "re-adopted, not restarted"
    );
    assert_eq!(
        value(o, "TICKS_GROW"),
        Some("yes"),
        "guest uptime keeps growing"
    );
    assert_eq!(value(o, "BOOTS_VM1"), Some("1"), "the guest never rebooted");
    assert!(
        value(o, "CONSOLE_INTACT")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 10),
        "console kept across the restart"
    );
    assert_eq!(value(o, "TERM_EXIT"), Some("0"));
    assert_eq!(
        value(o, "GUESTS_SURVIVE_TERM"),
        Some("yes"),
        "SIGTERM leaves guests running"
    );
    assert_eq!(value(o, "AFTER_TERM"), Some("running running"));
    assert!(o.contains("STATE vm1 error"), "a killed VMM is noticed");
    assert!(
        value(o, "DEAD_REASON").is_some_and(|r| r.contains("VMM")),
        "with a reason"
    );
    assert_eq!(
        value(o, "OTHER_STATE "),
        Some("running"),
        "the other instance is untouched"
    );
    assert_eq!(value(o, "OTHER_ALIVE"), Some("yes"));
    assert_eq!(value(o, "HARD_STOP"), Some("shutoff"));
    assert_eq!(value(o, "VMMS_END"), Some("0"));
}

/// hostd killed (-9) at random moments under a guest that writes records,
/// each flushed before it is acknowledged, while a disk is being plugged
/// or unplugged: every kill finds the same VMM running when hostd comes
/// back, the guest goes on writing, the disk can be plugged and unplugged
/// whatever the kills interrupted, and the next boot finds every
/// acknowledged record. `VIRGA_HOSTD_CRASH_TRIALS` trials (4 by default;
/// `cargo xtask crash-trials` runs 50).
#[test]
fn hostd_killed_anywhere_loses_no_write_and_no_device() {
    let trials: u32 = std::env::var("VIRGA_HOSTD_CRASH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let script = format!(
        "{PRELUDE}trials={trials}\n{}",
        r#"
dd if=/dev/zero of=$WORK/w.raw bs=1M count=64 2>/dev/null
dd if=/dev/zero of=$WORK/p.raw bs=1M count=4 2>/dev/null
echo "{\"id\": \"w\", \"vcpus\": 1, \"memory_mib\": 128, \"kernel\": \"$GUEST/vmlinux\", \"initramfs\": \"$GUEST/boot-initramfs.cpio\", \"cmdline\": \"$CMDLINE virga.mode=writer\", \"disks\": [{\"path\": \"$WORK/w.raw\"}]}" > $WORK/w.json
hc create $WORK/w.json > /dev/null
log=$WORK/state/instances/w/console.log
acked() { n=$(grep -ao 'virga-writer-ack [0-9]*' $log 2>/dev/null | tail -n 1 | cut -d' ' -f2); echo "${n:--1}"; }
acked_past() {
    d=$(($(date +%s) + 60)); while [ "$(acked)" -le "$1" ] && [ $(date +%s) -lt $d ]; do sleep 0.1; done
    acked
}
acked_past -1 > /dev/null
p=$(pid w)
for t in $(seq $trials); do
    a0=$(acked)
    # In flight when hostd dies: a disk plugged, or unplugged.
    if [ $((t % 2)) = 1 ]; then
        hc request POST /instances/w/disks "{\"id\": \"p\", \"path\": \"$WORK/p.raw\"}" > /dev/null 2>&1 &
    else
        hc request DELETE /instances/w/disks/p > /dev/null 2>&1 &
    fi
    op=$!
    sleep 0.$((RANDOM % 10))$((RANDOM % 10))
    kill -9 $HOSTD; wait $HOSTD 2>/dev/null; wait $op 2>/dev/null
    start_hostd
    same=no; [ "$(pid w)" = "$p" ] && same=yes
    a1=$(acked_past $a0)
    echo "TRIAL $t state=$(state w) same_vmm=$same acked=$a0..$a1"
done
# Whatever the kills interrupted, the disk plugs and unplugs.
hc request DELETE /instances/w/disks/p > /dev/null 2>&1
hc request POST /instances/w/disks "{\"id\": \"p\", \"path\": \"$WORK/p.raw\"}" > /dev/null && echo "PLUG_AFTER ok" || echo "PLUG_AFTER failed"
hc request DELETE /instances/w/disks/p > /dev/null && echo "UNPLUG_AFTER ok" || echo "UNPLUG_AFTER failed"
# The next boot counts the records on the disk.
acked=$(acked)
hc stop w --hard > /dev/null
hc start w > /dev/null
d=$(($(date +%s) + 300)); while [ "$(grep -ac 'virga-writer-found' $log)" -lt 2 ] && [ $(date +%s) -lt $d ]; do sleep 0.5; done
found=$(grep -ao 'virga-writer-found [0-9]*' $log | tail -n 1 | cut -d' ' -f2)
echo "RECORDS found=${found:-none} acked=$acked"
grep -a "virga-writer-failed" $log || true
hc stop w --hard > /dev/null; hc delete w
kill $HOSTD; wait $HOSTD
grep -a "interrupted plug" $WORK/hostd.log | head -n 3
"#
    );
    let out = virga_e2e::run_scenario("hostd-crash-trials", &script, |s| {
        s.timeout(std::time::Duration::from_secs(300 + 20 * u64::from(trials)))
    });
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    let lines: Vec<&str> = o.lines().filter(|l| l.starts_with("TRIAL ")).collect();
    assert_eq!(lines.len(), trials as usize, "every trial ran");
    for l in &lines {
        assert!(
            l.contains("state=running") && l.contains("same_vmm=yes"),
            "the guest's VMM was re-adopted: {l}"
        );
        let (a0, a1) = l
            .split("acked=")
            .nth(1)
            .and_then(|r| r.split_once(".."))
            .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?)))
            .unwrap_or((0, 0));
        assert!(a1 > a0, "the guest went on writing: {l}");
    }
    assert_eq!(value(o, "PLUG_AFTER"), Some("ok"));
    assert_eq!(value(o, "UNPLUG_AFTER"), Some("ok"));
    assert!(!o.contains("virga-writer-failed"), "a write failed");
    let records = value(o, "RECORDS").unwrap_or_default();
    let number = |key: &str| {
        records
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.parse::<i64>().ok())
    };
    let (found, acked) = (number("found="), number("acked="));
    assert!(
        found.zip(acked).is_some_and(|(f, a)| f > a),
        "every acknowledged record is on the disk: {records}"
    );
    println!("{trials} kills of hostd under a writing guest: {records}");
}
