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
