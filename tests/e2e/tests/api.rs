//! The control API drives a running guest: pause, resume, shutdown; bad requests
//! are refused without disturbing it.

use virga_e2e::{run, value};

#[test]
fn pause_resume_and_shutdown_through_the_api() {
    let out = run(
        "api-lifecycle",
        r#"sock=$WORK/api.sock
log=$WORK/console.log
$BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio \
    --vcpus 2 --memory-mib 256 --cmdline "$CMDLINE virga.mode=ticks" \
    --serial file:$log --api-socket $sock &
pid=$!
ticks() { n=$(grep -c virga-tick $log 2>/dev/null); echo "${n:-0}"; }
wait_ticks() {
    i=0
    while [ "$(ticks)" -lt "$1" ]; do
        i=$((i + 1)); [ $i -gt 900 ] && return 1; sleep 0.1
    done
}
wait_ticks 3 || { echo "guest never ticked"; cat $log; exit 1; }

# Bad requests get 4xx and leave the guest alone.
$BIN/vmmctl --socket $sock put /vm/state '{"state":' 2>$WORK/s; echo "MALFORMED=$(cat $WORK/s)"
$BIN/vmmctl --socket $sock put /vm/state '{"state":"asleep"}' 2>$WORK/s; echo "BADSTATE=$(cat $WORK/s)"
$BIN/vmmctl --socket $sock get /nowhere 2>$WORK/s; echo "UNKNOWN=$(cat $WORK/s)"
$BIN/vmmctl --socket $sock get /vm/state 2>$WORK/s; echo "WRONGMETHOD=$(cat $WORK/s)"

$BIN/vmmctl --socket $sock put /vm/state '{"state":"paused"}' 2>$WORK/s; echo "PAUSE=$(cat $WORK/s)"
before=$(ticks); sleep 2; after=$(ticks)
echo "PAUSED_BEFORE=$before"; echo "PAUSED_AFTER=$after"
echo "STATE_WHILE_PAUSED=$($BIN/vmmctl --socket $sock get /vm 2>/dev/null | grep -o '"state":"[a-z_]*"' | head -1)"
$BIN/vmmctl --socket $sock put /vm/state '{"state":"running"}' 2>$WORK/s; echo "RESUME=$(cat $WORK/s)"
wait_ticks $((after + 3)) && echo "TICKING_AGAIN=yes"
echo "EXITS=$($BIN/vmmctl --socket $sock get /metrics 2>/dev/null | grep -o '"io_out":[0-9]*' | head -1)"

$BIN/vmmctl --socket $sock put /vm/actions/shutdown '{"timeout_ms": 30000}' 2>$WORK/s; echo "SHUTDOWN=$(cat $WORK/s)"
wait $pid; echo "VMM_EXIT=$?"
grep -q virga-shutdown-requested $log && echo "GUEST_SAW_SHUTDOWN=yes"
[ -e $sock ] && echo "SOCKET_LEFT=yes" || echo "SOCKET_LEFT=no"
$BIN/vmmctl --socket $sock get /vm > /dev/null 2>&1 && echo "SOCKET_ANSWERS=yes" || echo "SOCKET_ANSWERS=no"
tail -3 $log"#,
    );
    assert!(out.success(), "scenario failed");
    let v = |k| value(&out.output, k);
    assert_eq!(v("MALFORMED"), Some("400"));
    assert_eq!(v("BADSTATE"), Some("400"));
    assert_eq!(v("UNKNOWN"), Some("404"));
    assert_eq!(v("WRONGMETHOD"), Some("405"));
    assert_eq!(v("PAUSE"), Some("204"));
    let before: u32 = v("PAUSED_BEFORE")
        .and_then(|s| s.parse().ok())
        .expect("tick count");
    let after: u32 = v("PAUSED_AFTER")
        .and_then(|s| s.parse().ok())
        .expect("tick count");
    assert!(before >= 3);
    assert_eq!(before, after, "no ticks while paused");
    assert_eq!(v("STATE_WHILE_PAUSED"), Some("\"state\":\"paused\""));
    assert_eq!(v("RESUME"), Some("204"));
    assert_eq!(
        v("TICKING_AGAIN"),
        Some("yes"),
        "guest ticks again after resume"
    );
    assert!(
        v("EXITS").is_some_and(|e| e != "\"io_out\":0"),
        "exit counters move"
    );
    assert_eq!(v("SHUTDOWN"), Some("202"));
    assert_eq!(
        v("GUEST_SAW_SHUTDOWN"),
        Some("yes"),
        "guest got Ctrl+Alt+Del"
    );
    assert_eq!(v("VMM_EXIT"), Some("0"));
    // Jailed, as every testbed VMM is, the VMM cannot reach the socket's path
    // to remove it; nothing answers there, and the next VMM reuses the path.
    assert_eq!(v("SOCKET_LEFT"), Some("yes"), "the jail hides the path");
    assert_eq!(
        v("SOCKET_ANSWERS"),
        Some("no"),
        "nobody serves it after exit"
    );
}
