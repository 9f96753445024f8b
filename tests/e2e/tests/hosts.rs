//! Two hosts in one testbed, each a network namespace with its own hostd
//! and netd, joined by an underlay the testbed routes (its veths): real
//! guests of one project on one network, placed on different hosts, get
//! their addresses from their own host's DHCP, reach each other across the
//! VXLAN overlay (the default security group lets members in) and move
//! data; a guest of another project, on its own network with the same
//! addresses, reaches neither. A volume on host1 (its storaged) attached
//! to the guest on host2 goes over NBD (the kernel's client there): what
//! that guest writes, the guest on host1 reads once the volume moves; and
//! storaged killed (-9) and started again while that guest writes costs
//! it a pause, no error and no acknowledged write.

use std::time::{Duration, Instant};

use virga_e2e::cloud::{host_token, openstack_cli, start_controller, Cli};
use virga_test_support::ports::{free_ports, HeldPort};

/// The lines of the testbed script that make host `n`: its namespace, its
/// veth to the testbed (10.98.n.2, routed and masqueraded by the testbed),
/// and its hostd and netd.
fn host_script(n: u8, hostd_port: u16, ctl_port: u16) -> String {
    let token = host_token(&format!("host{n}"));
    format!(
        r#"$IP netns add host{n}
$IP link add h{n} type veth peer name up0 netns host{n}
$IP addr add 10.98.{n}.1/24 dev h{n}
$IP link set h{n} up
$IP -n host{n} addr add 10.98.{n}.2/24 dev up0
$IP -n host{n} link set up0 up
$IP -n host{n} link set lo up
$IP -n host{n} route add default via 10.98.{n}.1
mkdir -p $WORK/host{n}/state
cat > $WORK/host{n}/hostd.toml <<EOF
token = "{token}"
listen = "0.0.0.0:{hostd_port}"
state_dir = "$WORK/host{n}/state"
vmm_binary = "$BIN/vmm"
host_id = "host{n}"
controller_url = "http://$HOST_ADDR:{ctl_port}"
controller_token = "{token}"
advertise_url = "http://127.0.0.1:{hostd_port}"
heartbeat_secs = 2
cgroup_root = "/sys/fs/cgroup/virga-host{n}"
vmm_uid_base = {uid_base}
EOF
cat > $WORK/host{n}/netd.toml <<EOF
host_id = "host{n}"
controller_url = "http://$HOST_ADDR:{ctl_port}"
token = "{token}"
vtep = "10.98.{n}.2"
underlay_dev = "up0"
sync_ms = 500
EOF
# hostd keeps the testbed's cgroup mount (nsenter changes the network
# namespace only); netd gets a /sys of its namespace (ip netns exec).
$NSENTER --net=/run/netns/host{n} $BIN/hostd --config $WORK/host{n}/hostd.toml 2> $WORK/host{n}/hostd.log &
PIDS="$PIDS $!"
$IP netns exec host{n} $BIN/netd --config $WORK/host{n}/netd.toml 2> $WORK/host{n}/netd.log &
PIDS="$PIDS $!"
"#,
        uid_base = 2_000_000 + u32::from(n) * 100_000,
    )
}

#[test]
fn guests_on_two_hosts_reach_each_other_and_no_other_project() {
    let Some(cli) = openstack_cli() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let held = HeldPort::new();
    let ctl_port = held.port;
    let [port1, port2, storage_port] = free_ports::<3>();
    let controller = start_controller(
        dir.path(),
        &held,
        "[scheduler]\ncpu_allocation_ratio = 16.0\n",
    );
    let script = format!(
        r#"mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
echo never > /sys/kernel/mm/transparent_hugepage/enabled
IP=/usr/bin/ip
NSENTER=/usr/bin/nsenter
# The underlay: the testbed routes between the hosts' veths, forwards each
# hostd's port to its host and masquerades what the hosts send out (to the
# controller).
echo 1 > /proc/sys/net/ipv4/ip_forward
nft -f - <<EOF
table ip hosts {{
    chain pre {{
        type nat hook prerouting priority -100;
        tcp dport {port1} dnat to 10.98.1.2
        tcp dport {port2} dnat to 10.98.2.2
        tcp dport {storage_port} dnat to 10.98.1.2
    }}
    chain post {{
        type nat hook postrouting priority 100;
        ip saddr 10.98.0.0/16 oifname "eth0" masquerade
    }}
}}
EOF
PIDS=
{host1}{host2}
# host1 is the storage host too: other hosts reach its volumes over NBD,
# and the images it holds over HTTP, at its underlay address.
cat > $WORK/host1/storaged.toml <<EOF
host_id = "host1"
listen = "0.0.0.0:{storage_port}"
advertise_url = "http://127.0.0.1:{storage_port}"
peer_url = "http://10.98.1.2:{storage_port}"
nbd_listen = "0.0.0.0:10809"
nbd_advertise = "10.98.1.2:10809"
data_dir = "$WORK/host1/storage"
controller_url = "http://$HOST_ADDR:{ctl_port}"
token = "{storage_token}"
heartbeat_secs = 2
EOF
start_storaged() {{
    $NSENTER --net=/run/netns/host1 $BIN/storaged --config $WORK/host1/storaged.toml 2>> $WORK/host1/storaged.log &
    STORAGED=$!
}}
start_storaged
# The last record vm-b (the one guest on host2) acknowledged writing on
# the volume it reaches over NBD.
last_record() {{
    grep -aho "virga-peers-rec [0-9]*" $WORK/host2/state/*/*/console.log 2>/dev/null | tail -n 1 | cut -d' ' -f2
}}
# The time in hundredths of a second (busybox's date has no %N).
centis() {{
    cut -d' ' -f1 /proc/uptime | tr -d .
}}
# Runs until the test stops its controller (three failed probes in a row).
# Once vm-b has acknowledged 20 records, storaged is killed (-9) under it
# and started again 3 s later: vm-b's next record must follow.
killed=
f=0; while [ $f -lt 3 ]; do
    wget -q -O /dev/null http://$HOST_ADDR:{ctl_port}/identity/v3 && f=0 || f=$((f + 1)); sleep 1
    n0=$(last_record)
    if [ -z "$killed" ] && [ "${{n0:-0}}" -ge 20 ]; then
        kill -9 $STORAGED; wait $STORAGED 2>/dev/null
        t0=$(centis)
        sleep 3
        start_storaged
        killed=1
        n=$n0
        while [ "$n" -le "$n0" ] && [ $(( $(centis) - t0 )) -lt 20000 ]; do
            sleep 0.2; n=$(last_record)
        done
        echo "virga-storaged-killed at record $n0; record $n after $(( ($(centis) - t0) * 10 )) ms"
    fi
done
kill $PIDS $STORAGED; wait
# The images are host1's storaged's: host2 fetched them from there.
echo "virga-images-held $(ls $WORK/host1/storage/images | wc -l)"
grep -h "image cached" $WORK/host2/hostd.log | head -n 3
tail -n 10 $WORK/host1/storaged.log
for n in 1 2; do
    echo "HOST${{n}}_LOGS_BEGIN"; grep -i "disk\|nbd" $WORK/host$n/hostd.log | tail -n 10; tail -n 10 $WORK/host$n/hostd.log; tail -n 10 $WORK/host$n/netd.log; echo "HOST${{n}}_LOGS_END"
done
"#,
        host1 = host_script(1, port1, ctl_port),
        host2 = host_script(2, port2, ctl_port),
        storage_token = host_token("host1"),
    );
    let mut scenario = virga_testbed::Scenario::new("two-hosts", &script)
        .binary(virga_e2e::vmm_bin())
        .binaries(virga_e2e::hostd_bins())
        .binary(virga_e2e::netd_bin())
        .binary(virga_e2e::storaged_bin())
        .forward_port(port1)
        .forward_port(port2)
        .forward_port(storage_port)
        .timeout(Duration::from_secs(1500));
    for program in virga_e2e::hostd_host_programs()
        .into_iter()
        .chain(virga_e2e::netd_host_programs())
        .chain(virga_e2e::storaged_host_programs())
        .chain(["/usr/bin/ip".into(), "/usr/bin/nsenter".into()])
    {
        scenario = scenario.host_binary(program);
    }
    let testbed = virga_e2e::testbed();
    let runner = std::thread::spawn(move || testbed.run(&scenario));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drive(&cli, dir.path(), ctl_port, &|| !runner.is_finished())
    }));
    drop(controller);
    drop(held);
    let outcome = runner.join().expect("testbed thread");
    match &outcome {
        Ok(o) => println!("--- testbed ({}) ---\n{}", o.mode.as_str(), o.output),
        Err(e) => println!("--- testbed failed: {e}"),
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let outcome = outcome.expect("testbed");
    assert!(outcome.success(), "scenario failed");
    // The kill came while vm-b was writing, not after.
    let killed = outcome
        .output
        .lines()
        .find_map(|l| l.strip_prefix("virga-storaged-killed at record "))
        .and_then(|rest| rest.split(';').next()?.trim().parse::<usize>().ok())
        .expect("storaged was never killed under the writing guest");
    assert!(
        killed < virga_guest_images::initramfs::PEER_RECORDS,
        "storaged was killed after the guest's last record ({killed})"
    );
    // The kernel and initramfs the guests booted and the disk image a
    // volume was made from: held by the storage host, fetched there by both
    // hosts (host2 at its peer_url).
    let held = outcome
        .output
        .lines()
        .find_map(|l| l.strip_prefix("virga-images-held "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    assert_eq!(held, Some(3), "images on host1's storaged");
}

fn drive(cli: &std::path::Path, dir: &std::path::Path, ctl_port: u16, alive: &dyn Fn() -> bool) {
    let admin = Cli::admin(cli, dir, ctl_port);
    let started = Instant::now();
    loop {
        let hosts = admin.ok(&[
            "hypervisor",
            "list",
            "-f",
            "value",
            "-c",
            "Hypervisor Hostname",
        ]);
        if hosts.contains("host1") && hosts.contains("host2") {
            break;
        }
        assert!(
            alive() && started.elapsed() < Duration::from_secs(600),
            "the hosts never registered: {hosts}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("both hosts registered after {:?}", started.elapsed());

    let images = virga_e2e::images_dir();
    let path = |f: &str| images.join(f).display().to_string();
    admin.ok(&[
        "flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "0", "tiny",
    ]);
    let ramdisk = admin.ok(&[
        "image",
        "create",
        "--public",
        "--file",
        &path("boot-initramfs.cpio"),
        "--disk-format",
        "ari",
        "--container-format",
        "ari",
        "boot-initramfs",
        "-f",
        "value",
        "-c",
        "id",
    ]);
    admin.ok(&[
        "image",
        "create",
        "--public",
        "--file",
        &path("vmlinux"),
        "--disk-format",
        "aki",
        "--container-format",
        "aki",
        "--property",
        &format!("ramdisk_id={}", ramdisk.trim()),
        "--property",
        &format!("os_command_line={} virga.mode=peers", virga_e2e::CMDLINE),
        "peers",
    ]);
    admin.ok(&["network", "create", "net1"]);
    admin.ok(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.0/24",
        "sub1",
    ]);

    // One guest on each host: the other host is disabled while it is placed.
    let service = |action: &str, host: &str| {
        admin.ok(&["compute", "service", "set", action, host, "nova-compute"]);
    };
    service("--disable", "host2");
    let creating = Instant::now();
    admin.ok(&[
        "server",
        "create",
        "--image",
        "peers",
        "--flavor",
        "tiny",
        "--network",
        "net1",
        "--wait",
        "vm-a",
    ]);
    // Nova's visible sequence: the server ACTIVE, then its port ACTIVE once
    // netd has plugged the tap.
    let active = creating.elapsed();
    admin.wait_until(
        &[
            "port", "list", "--server", "vm-a", "-f", "value", "-c", "Status",
        ],
        60,
        |s| s.trim() == "ACTIVE",
    );
    println!(
        "vm-a: server create to ACTIVE {active:?}, to its port ACTIVE {:?}",
        creating.elapsed()
    );
    service("--enable", "host2");
    service("--disable", "host1");
    admin.ok(&[
        "server",
        "create",
        "--image",
        "peers",
        "--flavor",
        "tiny",
        "--network",
        "net1",
        "--wait",
        "vm-b",
    ]);
    service("--enable", "host1");
    let host_of = |name: &str| {
        admin
            .ok(&[
                "server",
                "show",
                name,
                "-f",
                "value",
                "-c",
                "OS-EXT-SRV-ATTR:host",
            ])
            .trim()
            .to_owned()
    };
    assert_eq!(
        (host_of("vm-a"), host_of("vm-b")),
        ("host1".into(), "host2".into())
    );

    // Another project, its own network with the same addresses.
    admin.ok(&["project", "create", "other"]);
    admin.ok(&["user", "create", "--password", "other-secret", "other-user"]);
    admin.ok(&[
        "role",
        "add",
        "--project",
        "other",
        "--user",
        "other-user",
        "member",
    ]);
    let other = Cli::new(cli, dir, ctl_port, "other-user", "other-secret", "other");
    other.ok(&["network", "create", "net-other"]);
    other.ok(&[
        "subnet",
        "create",
        "--network",
        "net-other",
        "--subnet-range",
        "10.0.0.0/24",
        "sub-other",
    ]);
    other.ok(&[
        "server",
        "create",
        "--image",
        "peers",
        "--flavor",
        "tiny",
        "--network",
        "net-other",
        "--wait",
        "vm-c",
    ]);

    let console = |cli: &Cli, name: &str, want: &str| {
        cli.wait_until(&["console", "log", "show", name], 600, |log| {
            log.contains(want)
        })
    };
    let value = |log: &str, key: &str| -> String {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let a = console(&admin, "vm-a", "virga-peers-serving");
    let b = console(&admin, "vm-b", "virga-peers-serving");
    let (a_ip, b_ip) = (
        value(&a, "virga-peers-address"),
        value(&b, "virga-peers-address"),
    );
    let (a_md5, b_md5) = (
        value(&a, "virga-peers-serving"),
        value(&b, "virga-peers-serving"),
    );
    assert!(
        a_ip.starts_with("10.0.0.") && b_ip.starts_with("10.0.0."),
        "{a}\n{b}"
    );
    // Across the overlay, both ways: ping, then the other's blob intact.
    console(
        &admin,
        "vm-a",
        &format!("virga-peers-fetched {b_ip} {b_md5}"),
    );
    console(
        &admin,
        "vm-b",
        &format!("virga-peers-fetched {a_ip} {a_md5}"),
    );
    println!("vm-a ({a_ip}, host1) and vm-b ({b_ip}, host2) reached each other");
    // The other project's guest, done scanning, reached nobody.
    let c = console(&other, "vm-c", "virga-peers-done");
    assert!(
        value(&c, "virga-peers-address").starts_with("10.0.0."),
        "{c}"
    );
    assert!(
        !c.contains("virga-peers-reached"),
        "another project's guest was reached:\n{c}"
    );

    // A volume on host1's storaged, attached to vm-b on host2: over NBD.
    // vm-b finds it blank and writes a marker (flushed); moved to vm-a on
    // host1 (the file itself there), the marker is read back.
    // Waits for the volume's status; a wrong end shows the volume (its
    // fault says why).
    let status = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let shown = admin.ok(&["volume", "show", "rvol", "-f", "json"]);
            let v: serde_json::Value = serde_json::from_str(&shown).unwrap_or_default();
            if v["status"] == want {
                return;
            }
            assert!(Instant::now() < deadline, "rvol never {want}: {shown}");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    admin.ok(&["volume", "create", "--size", "1", "rvol"]);
    status("available");
    let attaching = Instant::now();
    admin.ok(&["server", "add", "volume", "vm-b", "rvol"]);
    status("in-use");
    console(&admin, "vm-b", "virga-peers-disk-written vda");
    println!(
        "a volume on host1 attached to vm-b on host2 (NBD) and written in {:?}",
        attaching.elapsed()
    );
    // Then records, each flushed before vm-b acknowledges it, while
    // storaged is killed and started again under them (the testbed script
    // does it): hostd on host2 connects the device again and none fails.
    let records = virga_guest_images::initramfs::PEER_RECORDS;
    let b = console(&admin, "vm-b", "virga-peers-recs-end");
    assert!(
        b.contains(&format!("virga-peers-recs-end {records}")),
        "a write failed on the remote volume:\n{b}"
    );
    println!(
        "vm-b wrote {records} flushed records over NBD in {:?} from the attach",
        attaching.elapsed()
    );
    // A snapshot of it while vm-b has it (`--force`): host1's storaged
    // moves its NBD export onto the volume's new overlay as it takes it.
    // Then grown in use: host1's storaged serves the new size, host2's
    // hostd resizes the NBD device and vm-b's VMM tells the guest, which
    // marks the volume's start (after the snapshot).
    let wait_named = |what: &[&str], name: &str, want: &str| {
        let mut args = what.to_vec();
        args.extend(["show", name, "-f", "value", "-c", "status"]);
        admin.wait_until(&args, 120, |s| s.trim() == want);
    };
    let snapped = Instant::now();
    admin.ok(&[
        "volume", "snapshot", "create", "--volume", "rvol", "--force", "rsnap",
    ]);
    wait_named(&["volume", "snapshot"], "rsnap", "available");
    println!(
        "a snapshot of the volume in use over NBD taken in {:?}",
        snapped.elapsed()
    );
    let grown = Instant::now();
    admin.ok(&["volume", "set", "--size", "2", "rvol"]);
    console(&admin, "vm-b", "virga-peers-disk-grown vda 4194304");
    status("in-use");
    let size = admin.ok(&["volume", "show", "rvol", "-f", "value", "-c", "size"]);
    assert_eq!(size.trim(), "2", "the volume's recorded size");
    println!(
        "the volume attached over NBD grown in the guest in {:?}",
        grown.elapsed()
    );
    admin.ok(&["server", "remove", "volume", "vm-b", "rvol"]);
    status("available");
    admin.ok(&["volume", "create", "--snapshot", "rsnap", "rcopy"]);
    wait_named(&["volume"], "rcopy", "available");
    admin.ok(&["server", "add", "volume", "vm-a", "rvol"]);
    status("in-use");
    console(
        &admin,
        "vm-a",
        &format!("virga-peers-disk vda [virga-grown-2ok!] records {records}"),
    );
    println!("vm-a on host1 read what vm-b on host2 wrote over NBD: the marker and every record");
    admin.ok(&["server", "remove", "volume", "vm-a", "rvol"]);
    status("available");
    // The snapshot holds what vm-b had written when it was taken: every
    // record, and the first marker, not the one written after.
    admin.ok(&["server", "add", "volume", "vm-a", "rcopy"]);
    wait_named(&["volume"], "rcopy", "in-use");
    console(
        &admin,
        "vm-a",
        &format!("virga-peers-disk vda [virga-over-nbd-1] records {records}"),
    );
    admin.ok(&["server", "remove", "volume", "vm-a", "rcopy"]);
    wait_named(&["volume"], "rcopy", "available");
    admin.ok(&["volume", "delete", "rcopy"]);
    admin.ok(&["volume", "snapshot", "delete", "rsnap"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while admin
        .ok(&["volume", "snapshot", "list", "-f", "value"])
        .contains("rsnap")
    {
        assert!(Instant::now() < deadline, "rsnap never deleted");
        std::thread::sleep(Duration::from_secs(1));
    }
    admin.ok(&["volume", "delete", "rvol"]);

    // A server on host2 booting from a volume on host1's storaged (host1
    // disabled: the scheduler would put it beside its volume): host2's
    // hostd connects the volume over NBD and picks the kernel from the
    // device's own /boot at each of the guest's boots (it reboots once).
    let disk = dir.join("cloud.img");
    virga_e2e::cloud_disk(&disk, true, "virga.mode=cloud");
    admin.ok(&[
        "image",
        "create",
        "--file",
        &disk.display().to_string(),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "cloud-disk",
    ]);
    admin.ok(&[
        "volume",
        "create",
        "--image",
        "cloud-disk",
        "--size",
        "1",
        "rootv",
    ]);
    wait_named(&["volume"], "rootv", "available");
    service("--disable", "host1");
    let booting = Instant::now();
    admin.ok(&[
        "server", "create", "--volume", "rootv", "--flavor", "tiny", "--nic", "none", "--wait",
        "vm-d",
    ]);
    service("--enable", "host1");
    assert_eq!(host_of("vm-d"), "host2");
    console(
        &admin,
        "vm-d",
        "virga-cloud-boot 2 root=vda3 sectors=2097152",
    );
    println!(
        "a server on host2 booted (twice) from a volume on host1 over NBD in {:?}",
        booting.elapsed()
    );
    admin.ok(&["server", "delete", "--wait", "vm-d"]);
    wait_named(&["volume"], "rootv", "available");
    admin.ok(&["volume", "delete", "rootv"]);
}
