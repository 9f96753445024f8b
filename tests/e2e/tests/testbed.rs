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

/// An L1 that goes silent is first woken with a fresh interrupt (the cure for
/// QEMU's TCG leaving L1's timer interrupt pending while an L2 guest runs):
/// here the scenario stops L1's heartbeat and waits, silent, for a key press
/// to reach L1's keyboard interrupt; it then goes on in the same testbed.
#[test]
fn a_silent_l1_is_woken_and_goes_on() {
    let testbed = virga_e2e::testbed();
    if testbed.mode() == Mode::Native {
        eprintln!("skipping: no L1 to wake natively");
        return;
    }
    // The heartbeat is the setup shell's other child (and the seccomp audit
    // loop, when there is one): stopped, L1 writes nothing at all.
    let scenario = Scenario::new(
        "testbed-woken",
        r#"keys() { awk '/i8042/ { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; n += s } END { print n + 0 }' /proc/interrupts; }
before=$(keys)
siblings=$(ps -o pid,ppid | awk -v pp=$PPID -v me=$$ '$2 == pp && $1 != me { print $1 }')
kill -STOP $siblings
i=0; while [ "$(keys)" = "$before" ] && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
kill -CONT $siblings
[ "$(keys)" != "$before" ] && echo "a key press woke L1 after $i s""#,
    )
    .silent_on_purpose();
    let outcome = testbed
        .run(&scenario)
        .expect("the testbed wakes L1 and runs the scenario to its end");
    assert_eq!(outcome.status, 0, "{}", outcome.output);
    assert!(
        outcome.output.contains("a key press woke L1 after"),
        "{}",
        outcome.output
    );
    assert_eq!(outcome.attempts, 1, "woken in place, not retried");
}
