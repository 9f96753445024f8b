//! virtio-net over a TAP: the guest pings the host side of the tap, and TCP
//! transfers both ways arrive intact. All traffic stays between the guest and the
//! testbed (link-local addresses on one tap).

use virga_e2e::{run, value};

fn transfer_scenario(vhost: &str) {
    let script = r#"log=$WORK/console.log
mkdir -p $WORK/www
dd if=/dev/urandom of=$WORK/www/blob bs=1M count=64 2>/dev/null
echo "HOST_BLOB_MD5=$(md5sum < $WORK/www/blob | cut -d' ' -f1)"
RUST_LOG=info $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --vcpus 2 --memory-mib 256 --cmdline "$CMDLINE virga.mode=net" \
    --net tap=vtap0,mac=02:00:00:00:00:02,mtu=1450,queues=2,vhost=@VHOST@ --serial file:$log \
    --api-socket $WORK/api.sock 2> $WORK/vmm.log &
pid=$!
i=0; while [ ! -e /sys/class/net/vtap0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add 169.254.100.1/24 dev vtap0
ip link set vtap0 up
httpd -p 169.254.100.1:8080 -h $WORK/www
i=0; while ! grep -q virga-net-serving $log && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
wget -q -O $WORK/upload http://169.254.100.2:8080/upload
echo "HOST_UPLOAD_MD5=$(md5sum < $WORK/upload | cut -d' ' -f1)"
$BIN/vmmctl --socket $WORK/api.sock put /vm/actions/shutdown '{"timeout_ms": 20000}'
wait $pid
echo "VMM_EXIT=$?"
grep -q "packets move through vhost-net" $WORK/vmm.log && echo "VHOST_USED=yes" || echo "VHOST_USED=no"
cat $log | grep virga-net"#
        .replace("@VHOST@", vhost);
    let out = run(&format!("virtio-net-vhost-{vhost}"), &script);
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert!(
        o.contains("virga-net-mac 02:00:00:00:00:02"),
        "configured MAC"
    );
    assert!(
        o.contains("virga-net-mtu 1450"),
        "the MTU offered through virtio-net's MTU feature"
    );
    assert!(
        o.contains("virga-net-queues 2"),
        "two queue pairs, selected by the guest through the control queue"
    );
    assert!(
        o.contains("virga-net-ping-ok"),
        "guest pings the host side of the tap"
    );
    let blob = value(o, "HOST_BLOB_MD5").expect("host blob checksum");
    assert!(
        o.contains(&format!("virga-net-download {blob}")),
        "64 MiB host->guest intact"
    );
    let upload = o
        .lines()
        .find_map(|l| l.strip_prefix("virga-net-upload-md5 "))
        .expect("guest upload checksum");
    assert_eq!(
        value(o, "HOST_UPLOAD_MD5"),
        Some(upload),
        "16 MiB guest->host intact"
    );
    assert_eq!(value(o, "VMM_EXIT"), Some("0"));
    let expect_vhost = if vhost == "on" { "yes" } else { "no" };
    assert_eq!(value(o, "VHOST_USED"), Some(expect_vhost), "datapath");
}

#[test]
fn guest_reaches_the_host_through_vhost_net() {
    transfer_scenario("on");
}

#[test]
fn guest_reaches_the_host_through_the_vmm_datapath() {
    transfer_scenario("off");
}

/// NIC hotplug through the control API: a NIC plugged into the running
/// guest (on a tap descriptor sent with the request, as hostd sends it)
/// appears, carries traffic, and goes when unplugged once the guest lets go
/// of it; its slot then takes another NIC, which works too (nothing of the
/// first one's interrupts or notifications was left behind).
#[test]
fn nics_plug_and_unplug_while_the_guest_runs() {
    let script = r#"log=$WORK/console.log
api() { $BIN/vmmctl --socket $WORK/api.sock "$@"; }
@WAITS@RUST_LOG=info $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --vcpus 1 --memory-mib 256 --cmdline "$CMDLINE virga.mode=hotplug" \
    --net tap=vtap0,mac=02:00:00:00:00:10,vhost=off --serial file:$log \
    --api-socket $WORK/api.sock 2> $WORK/vmm.log &
pid=$!
i=0; while [ ! -e /sys/class/net/vtap0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add 169.254.100.1/24 dev vtap0
ip link set vtap0 up
wait_for "virga-hotplug-ping eth0"
echo "ADD1=$(api --tap vtap1 post /vm/nets '{"mac": "02:00:00:00:00:11", "vhost": "off"}' 2>&1 | tr '\n' ' ')"
ip addr add 169.254.101.1/24 dev vtap1
ip link set vtap1 up
wait_for "virga-hotplug-ping eth1"
echo "REMOVE=$(api delete /vm/devices/net1 2>&1 | tr '\n' ' ')"
wait_n "virga-hotplug-nics eth0[[:space:]]*$" 2
i=0; while api get /vm 2>/dev/null | grep -q '"id":"net1"' && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "NETS_AFTER=$(api get /vm 2>/dev/null | grep -o '"id":"net[0-9]*"' | tr '\n' ' ')"
echo "VTAP1_GONE=$([ -e /sys/class/net/vtap1 ] && echo no || echo yes)"
echo "ADD2=$(api --tap vtap2 post /vm/nets '{"mac": "02:00:00:00:00:12", "vhost": "off"}' 2>&1 | tr '\n' ' ')"
ip addr add 169.254.101.1/24 dev vtap2
ip link set vtap2 up
wait_for "virga-hotplug-ping eth1 02:00:00:00:00:12"
echo "BAD_NO_TAP=$(api post /vm/nets '{"mac": "02:00:00:00:00:13"}' 2>&1 >/dev/null)"
echo "BAD_FD_NUMBERS=$(api post /vm/nets '{"fds": [7]}' 2>&1 >/dev/null)"
echo "BAD_SAME_NAME=$(api --tap vtap3 post /vm/nets '{"id": "net0"}' 2>&1 >/dev/null)"
echo "BAD_NO_DEVICE=$(api delete /vm/devices/nope 2>&1 >/dev/null)"
api put /vm/actions/shutdown '{"timeout_ms": 20000}'
wait $pid
echo "VMM_EXIT=$?"
echo "IOEVENTFD_WARNINGS=$(grep -c 'no ioeventfd' $WORK/vmm.log)"
grep -E "ERROR|WARN" $WORK/vmm.log | head -5
grep virga-hotplug $log"#
        .replace("@WAITS@", virga_e2e::CONSOLE_WAITS);
    let out = run("virtio-net-hotplug", &script);
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert!(!o.contains("TIMEOUT"), "a step timed out");
    for want in [
        "virga-hotplug-ping eth0 02:00:00:00:00:10 ok",
        "virga-hotplug-nics eth0 eth1",
        // The plugged NIC carries traffic.
        "virga-hotplug-ping eth1 02:00:00:00:00:11 ok",
        // Another NIC in the freed slot works as well.
        "virga-hotplug-ping eth1 02:00:00:00:00:12 ok",
    ] {
        assert!(o.contains(want), "no {want:?}");
    }
    let add = value(o, "ADD1").unwrap_or_default();
    assert!(
        add.starts_with("201 {\"id\":\"net1\",\"pci_slot\":"),
        "{add}"
    );
    assert!(value(o, "REMOVE").is_some_and(|r| r.starts_with("202")));
    assert_eq!(
        value(o, "NETS_AFTER"),
        Some("\"id\":\"net0\""),
        "net1 gone from the config"
    );
    assert_eq!(value(o, "VTAP1_GONE"), Some("yes"), "its descriptor closed");
    assert!(value(o, "ADD2").is_some_and(|r| r.starts_with("201 {\"id\":\"net1\"")));
    assert_eq!(value(o, "BAD_NO_TAP"), Some("400"));
    assert_eq!(value(o, "BAD_FD_NUMBERS"), Some("400"));
    assert_eq!(value(o, "BAD_SAME_NAME"), Some("409"));
    assert_eq!(value(o, "BAD_NO_DEVICE"), Some("404"));
    assert_eq!(value(o, "VMM_EXIT"), Some("0"));
    assert_eq!(value(o, "IOEVENTFD_WARNINGS"), Some("0"));
}
