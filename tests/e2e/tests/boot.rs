//! The vmm boots the Debian cloud kernel to userspace and powers off cleanly.

use virga_e2e::{markers, run, value};

/// MemTotal of a 256 MiB guest: the kernel keeps its image and reservations out of
/// it, but a guest that lost a region of RAM would fall far below this.
const MEMTOTAL_256_MIB_RANGE: std::ops::RangeInclusive<u64> = 180_000..=262_144;

#[test]
fn boots_with_1_2_and_4_vcpus_and_powers_off() {
    let out = run(
        "boot-vcpus",
        r#"for n in 1 2 4; do
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
        --vcpus $n --memory-mib 256 --cmdline "$CMDLINE"
    echo "EXIT_$n=$?"
done"#,
    );
    assert!(out.success(), "scenario failed");
    let found = markers(&out.output);
    assert_eq!(found.len(), 3, "one marker per boot:\n{}", out.output);
    for (marker, n) in found.iter().zip([1u32, 2, 4]) {
        assert_eq!(marker.cpus, n, "guest sees the configured vCPUs");
        assert!(
            MEMTOTAL_256_MIB_RANGE.contains(&marker.memtotal_kib),
            "MemTotal {} KiB for 256 MiB",
            marker.memtotal_kib
        );
        assert_eq!(
            value(&out.output, &format!("EXIT_{n}")),
            Some("0"),
            "poweroff exits 0"
        );
    }
}

#[test]
fn boots_a_bzimage_and_honours_the_reboot_policy() {
    let out = run(
        "boot-bzimage-reboot",
        r#"$BIN/vmm --kernel $GUEST/bzImage --initramfs $GUEST/boot-initramfs.cpio \
    --vcpus 2 --memory-mib 256 --cmdline "$CMDLINE"
echo "BZIMAGE_EXIT=$?"
# A guest reboot ends the vmm with status 0 by default...
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --memory-mib 128 --cmdline "$CMDLINE virga.mode=reboot"
echo "REBOOT_EXIT=$?"
# ...and boots the guest again with on_reboot=restart.
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --memory-mib 128 --cmdline "$CMDLINE virga.mode=reboot" --on-reboot restart \
    --serial file:$WORK/restart.log &
pid=$!
i=0
boots() { n=$(grep -c VIRGA-BOOT-OK $WORK/restart.log 2>/dev/null); echo "${n:-0}"; }
while [ "$(boots)" -lt 2 ] && [ $i -lt 600 ]; do
    sleep 0.1; i=$((i + 1))
done
echo "RESTART_BOOTS=$(boots)"
kill $pid
wait $pid || true"#,
    );
    assert!(out.success(), "scenario failed");
    let found = markers(&out.output);
    assert_eq!(
        found.len(),
        2,
        "bzImage and reboot-exit boots:\n{}",
        out.output
    );
    assert_eq!(found[0].cpus, 2);
    assert_eq!(value(&out.output, "BZIMAGE_EXIT"), Some("0"));
    assert_eq!(value(&out.output, "REBOOT_EXIT"), Some("0"));
    let boots: u32 = value(&out.output, "RESTART_BOOTS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        boots >= 2,
        "restart policy booted the guest {boots} time(s)"
    );
}
