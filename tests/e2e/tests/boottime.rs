//! `virga-boottime` in the testbed, as a pipeline runs it: identical
//! variants pass, a known slowdown fails with a JUnit failure, a baseline
//! file works like a second variant, and a boot that never shows its marker
//! is an error (status 2), not a verdict.
//!
//! The thresholds here are wide (50%): this checks the tool's plumbing on
//! real boots; how often its statistics cry wolf, and how small a slowdown
//! they find, is measured by `cargo xtask bench boot-stats` and its unit
//! tests.

use virga_e2e::{run_scenario, value, vmm_bin, BOOT_MARKER};

#[test]
fn identical_boots_pass_and_a_known_slowdown_fails() {
    let tool = vmm_bin().with_file_name("virga-boottime");
    let script = format!(
        r#"BT="$BIN/virga-boottime"
ARGS="--kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --marker {BOOT_MARKER} --warmup 0"
# Wide: the plumbing on real boots, not the statistics' fine print.
RULE="--threshold 50"
$BT compare $ARGS $RULE --runs 5 --cmdline "$CMDLINE" --baseline-cmdline "$CMDLINE" \
    --json $WORK/aa.json --junit $WORK/aa.xml
echo "AA_EXIT=$?"
echo "AA_VERDICT=$(grep -o '"verdict": "[a-z_]*"' $WORK/aa.json | tail -n 1)"
echo "AA_PHASES=$(grep -c '"vmm_setup"\|"guest"' $WORK/aa.json)"
# A second more before the marker: about twice the testbed's boot.
$BT compare $ARGS $RULE --runs 5 --cmdline "$CMDLINE virga.delay_ms=2000" --baseline-cmdline "$CMDLINE" \
    --junit $WORK/slow.xml --save $WORK/slow.json
echo "SLOW_EXIT=$?"
echo "SLOW_FAILURES=$(grep -c '<failure' $WORK/slow.xml)"
$BT record $ARGS --runs 5 --cmdline "$CMDLINE" --out $WORK/base.json > $WORK/record.out
echo "RECORD_EXIT=$?"
grep median_total_ms $WORK/record.out
$BT compare --baseline $WORK/base.json --candidate $WORK/slow.json $RULE > /dev/null
echo "FILES_EXIT=$?"
$BT compare --baseline $WORK/base.json --candidate $WORK/base.json --phase kernel > /dev/null 2>&1
echo "UNDECIDED_EXIT=$?"
$BT compare $ARGS --runs 3 --cmdline "$CMDLINE" --baseline $WORK/base.json 2> $WORK/few.err
echo "FEW_EXIT=$?"
echo "FEW_SAYS=$(grep -c 'can never reach' $WORK/few.err)"
$BT record --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --cmdline "$CMDLINE" \
    --marker NEVER-PRINTED --runs 1 --warmup 0 --out $WORK/never.json 2> $WORK/never.err
echo "NEVER_EXIT=$?"
echo "NEVER_SAYS=$(grep -c 'before the marker' $WORK/never.err)"
[ -e $WORK/never.json ] && echo "NEVER_FILE=1" || echo "NEVER_FILE=0"
"#
    );
    let out = run_scenario("boottime", &script, |s| s.binary(tool));
    let get = |k: &str| value(&out.output, k).unwrap_or("missing");
    assert_eq!(
        get("AA_EXIT"),
        "0",
        "identical variants pass:\n{}",
        out.output
    );
    assert_eq!(get("AA_VERDICT"), r#""verdict": "no_change""#);
    // Every boot split into the VMM's setup and the guest's part.
    assert_ne!(get("AA_PHASES"), "0");
    assert_eq!(get("SLOW_EXIT"), "1", "a known slowdown fails");
    assert_eq!(get("SLOW_FAILURES"), "1");
    assert_eq!(get("RECORD_EXIT"), "0");
    let median: f64 = get("median_total_ms").parse().unwrap_or(0.0);
    assert!(median > 0.0, "record prints its median");
    assert_eq!(get("FILES_EXIT"), "1", "a baseline file is compared too");
    assert_eq!(
        get("UNDECIDED_EXIT"),
        "2",
        "a quiet kernel shows no kernel phase"
    );
    assert_eq!(
        get("FEW_EXIT"),
        "2",
        "too few runs to ever fail are refused"
    );
    assert_eq!(get("FEW_SAYS"), "1");
    assert_eq!(
        get("NEVER_EXIT"),
        "2",
        "a boot without its marker is an error"
    );
    assert_eq!(get("NEVER_SAYS"), "1");
    assert_eq!(get("NEVER_FILE"), "0", "no baseline from failed boots");
}
