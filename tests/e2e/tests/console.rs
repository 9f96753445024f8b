//! The guest's serial console reaches the host byte for byte: guest UART ->
//! VMM -> the scenario's output (in the testbed: L1's virtio console -> a
//! file on the host), while something else writes to the same output.

use virga_e2e::run;
use virga_guest_images::initramfs::{flood_line, FLOOD_LINES};

/// Lines the scenario's own writer prints meanwhile.
const WRITER_LINES: usize = 400;

#[test]
fn a_console_flood_arrives_byte_for_byte_beside_another_writer() {
    // The guest prints FLOOD_LINES lines of every printable character; the
    // scenario's shell writes its own lines to the same output meanwhile, as a
    // supervisor logging beside a VMM would.
    let out = run(
        "console-flood",
        &format!(
            r#"(i=0; while [ $i -lt {WRITER_LINES} ]; do echo "scenario-line $i"; i=$((i + 1)); sleep 0.01; done) &
WRITER=$!
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --memory-mib 128 --cmdline "$CMDLINE virga.mode=flood"
echo "FLOOD_EXIT=$?"
wait $WRITER"#
        ),
    );
    assert!(out.success(), "scenario failed");
    assert_eq!(virga_e2e::value(&out.output, "FLOOD_EXIT"), Some("0"));
    // The other writer's lines are whole (echo writes each at once), but may
    // land inside a guest line the VMM had to write in pieces (the guest
    // paused mid-line): take them out and the guest's bytes must remain,
    // every one, in order.
    let text = out.output.replace('\r', "");
    let mut guest = text.clone();
    for i in 0..WRITER_LINES {
        let line = format!("scenario-line {i}\n");
        assert!(guest.contains(&line), "the other writer's line {i}");
        guest = guest.replacen(&line, "", 1);
    }
    let flood: Vec<&str> = guest
        .lines()
        .filter(|l| l.contains("virga-flood"))
        .collect();
    let expected: Vec<String> = (0..FLOOD_LINES).map(flood_line).collect();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            flood.get(i).copied(),
            Some(want.as_str()),
            "guest console line {i}"
        );
    }
    assert_eq!(flood.get(FLOOD_LINES).copied(), Some("virga-flood-done"));
    assert_eq!(flood.len(), FLOOD_LINES + 1, "no extra flood lines");
    // Written a line at a time, the guest's lines stay whole unless the guest
    // stalled mid-line past the VMM's partial-line delay: count those.
    let split = (0..FLOOD_LINES)
        .filter(|&i| !text.contains(&format!("{}\n", flood_line(i))))
        .count();
    println!("guest lines split by the other writer: {split} of {FLOOD_LINES}");
}
