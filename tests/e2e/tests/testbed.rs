//! The testbed's own promises: a scenario's output is exactly what it wrote,
//! its exit status arrives, and when L1 dies the report shows why.

use virga_testbed::{Mode, Scenario};

#[test]
fn scenario_output_is_byte_exact_and_its_status_arrives() {
    let scenario = Scenario::new(
        "testbed-output",
        "printf 'first\\n'; printf 'partial, then stderr: '; echo err >&2; printf 'no newline at the end'; exit 7",
    );
    let outcome = virga_e2e::testbed()
        .run(&scenario)
        .expect("the testbed runs the scenario");
    assert_eq!(outcome.status, 7);
    assert_eq!(
        outcome.output.replace('\r', ""),
        "first\npartial, then stderr: err\nno newline at the end"
    );
}

#[test]
fn an_l1_kernel_panic_is_reported_whole() {
    let testbed = virga_e2e::testbed();
    if testbed.mode() == Mode::Native {
        eprintln!("skipping: no L1 kernel to panic natively");
        return;
    }
    let scenario = Scenario::new(
        "testbed-panic",
        "echo output-before-the-panic; echo c > /proc/sysrq-trigger; sleep 60",
    );
    let report = match testbed.run(&scenario) {
        Ok(o) => panic!("L1 panicked, yet the scenario reported exit {}", o.status),
        Err(e) => e.to_string(),
    };
    assert!(
        report.contains("ended without reporting the scenario's exit status"),
        "{report}"
    );
    assert!(report.contains("output-before-the-panic"), "{report}");
    // The panic's own line, not only the end of its call trace.
    assert!(
        report.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{report}"
    );
    assert!(report.contains("Call Trace"), "{report}");
}
