//! Root on virtio-blk: the guest boots from an ext4 image, a file it writes is
//! there on the next boot, and a read-only root refuses writes.

use virga_e2e::{run_with_rootfs, value};

#[test]
fn root_on_virtio_blk_persists_and_read_only_root_refuses_writes() {
    let out = run_with_rootfs(
        "root-on-virtio-blk",
        r#"boot() {
    mode=$1; shift
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
        --vcpus 2 --memory-mib 256 --cmdline "$CMDLINE virga.root=/dev/vda virga.mode=$mode" "$@"
}
boot root-write --disk path=$ROOTFS
echo "WRITE_EXIT=$?"
boot root-read --disk path=$ROOTFS
echo "READ_EXIT=$?"
boot root-write --disk path=$ROOTFS,readonly=on
echo "RO_EXIT=$?""#,
    );
    assert!(out.success(), "scenario failed");
    let o = &out.output;
    assert!(
        o.contains("VIRGA-ROOT-OK root=rw fio=fio-"),
        "rw root with fio:\n{o}"
    );
    assert!(o.contains("VIRGA-ROOT-OK root=ro"), "read-only root");
    let wrote = o
        .lines()
        .find_map(|l| l.strip_prefix("virga-root-wrote "))
        .expect("the guest wrote a file on its root");
    assert!(
        o.contains(&format!("virga-root-read {wrote}")),
        "read back intact"
    );
    assert!(
        o.contains("virga-root-write-failed"),
        "read-only root refuses writes"
    );
    for k in ["WRITE_EXIT", "READ_EXIT", "RO_EXIT"] {
        assert_eq!(value(o, k), Some("0"), "{k}");
    }
}
