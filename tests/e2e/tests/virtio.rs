//! Virtio over PCI: the guest finds the devices on the PCI bus and uses them.

use virga_e2e::{markers, run};

#[test]
fn guest_gets_entropy_from_virtio_rng_over_pci() {
    let out = run(
        "virtio-rng",
        r#"$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --memory-mib 256 --cmdline "$CMDLINE virga.mode=devices"
echo "WITH_RNG_EXIT=$?"
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --memory-mib 256 --cmdline "$CMDLINE virga.mode=devices" --no-rng
echo "WITHOUT_RNG_EXIT=$?""#,
    );
    assert!(out.success(), "scenario failed");
    assert_eq!(markers(&out.output).len(), 2, "both guests booted");
    let (with, without) = out
        .output
        .split_once("WITH_RNG_EXIT=0")
        .expect("the first guest exits 0");
    assert!(
        with.contains("virga-pci 0000:00:00.0 0x1b36:0x0008"),
        "host bridge"
    );
    assert!(
        with.contains("0x1af4:0x1044 class=0xff0000 driver=virtio-pci"),
        "virtio-rng bound to virtio-pci"
    );
    assert!(with.contains("virga-rng-current virtio_rng.0"));
    // The VMM's SMBIOS tables, found by the guest without firmware.
    assert!(
        with.contains("virga-dmi Virga|Virga VM||Virga"),
        "SMBIOS: {}",
        with.lines()
            .find(|l| l.contains("virga-dmi"))
            .unwrap_or("no virga-dmi line")
    );
    assert!(
        with.contains("virga-rng-bytes 4096"),
        "4 KiB of entropy read"
    );
    assert!(!without.contains("0x1af4:0x1044"), "--no-rng leaves it out");
    assert!(without.contains("WITHOUT_RNG_EXIT=0"));
}
