//! virtio-blk: data written by one boot is read back by the next; a read-only disk
//! refuses writes; several disks show up.

use virga_e2e::{run, value};

#[test]
fn disk_data_survives_reboots_and_read_only_disks_refuse_writes() {
    let out = run(
        "virtio-blk",
        r#"img=$WORK/disk.raw
dd if=/dev/zero of=$img bs=1M count=64 2>/dev/null
other=$WORK/other.raw
dd if=/dev/zero of=$other bs=1M count=8 2>/dev/null
boot() {
    mode=$1; shift
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
        --vcpus 2 --memory-mib 256 --cmdline "$CMDLINE virga.mode=$mode" "$@"
}
boot disk-write --disk path=$img,serial=virga-test-disk --disk path=$other
echo "WRITE_EXIT=$?"
echo "HOST_MD5=$(dd if=$img bs=64k skip=16 count=64 2>/dev/null | md5sum | cut -d' ' -f1)"
boot disk-read --disk path=$img,direct=off,queues=1
echo "READ_EXIT=$?"
boot disk-write --disk path=$img,readonly=on
echo "RO_EXIT=$?"
echo "HOST_MD5_AFTER_RO=$(dd if=$img bs=64k skip=16 count=64 2>/dev/null | md5sum | cut -d' ' -f1)""#,
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
}
