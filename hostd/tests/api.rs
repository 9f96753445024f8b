//! hostd's API against a real hostd process, without booting anything: auth,
//! bad input, duplicate ids, persistence of created instances, config errors.
//! (Booting instances needs KVM: those tests run in the testbed, tests/e2e.)

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn every_request_needs_the_token() {
    let h = start();
    let (status, body) = call(&h, "GET", "/host", None, "");
    assert_eq!(status, 401);
    assert!(body.contains("bearer token"), "{body}");
    assert_eq!(
        call(&h, "GET", "/instances", Some("wrong-token-0123456789"), "").0,
        401
    );
    assert_eq!(call(&h, "GET", "/metrics", Some(&TOKEN[1..]), "").0, 401);
    let (status, host) = api(&h, "GET", "/host", "");
    assert_eq!(status, 200);
    assert_eq!(host["host_id"], "test-host");
    assert!(host["memory_mib"].as_u64().unwrap() > 0);
    assert!(host["kvm"]["mode"].is_string());
}

#[test]
fn bad_input_gets_a_json_error_and_leaves_nothing_behind() {
    let h = start();
    let k = kernel(h.dir.path());
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "request body"),
        (
            format!(
                r#"{{"id": "a", "vcpus": 1, "memory_mib": 64, "kernel": "{}", "colour": 1}}"#,
                k.display()
            ),
            400,
            "unknown field `colour`",
        ),
        (spec("big", &k, 1 << 30), 400, "memory_mib"),
        (
            spec("nokernel", Path::new("/nonexistent/vmlinux"), 64),
            400,
            "kernel",
        ),
        (spec("Bad_Id", &k, 64), 400, "id"),
        (r#"{"id": "a"}"#.into(), 400, "missing field"),
    ];
    for (body, code, says) in cases {
        let (status, err) = api(&h, "POST", "/instances?start=false", &body);
        assert_eq!(status, code, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
        assert_eq!(err["error"]["code"], code);
    }
    assert_eq!(api(&h, "GET", "/instances", "").1, serde_json::json!([]));
    let run_dirs = std::fs::read_dir(h.dir.path().join("state/instances"))
        .unwrap()
        .count();
    assert_eq!(run_dirs, 0, "no run directory left behind");

    assert_eq!(api(&h, "GET", "/nowhere", "").0, 404);
    assert_eq!(api(&h, "PUT", "/instances", "").0, 405);
    assert_eq!(api(&h, "GET", "/instances/ghost", "").0, 404);
    assert_eq!(api(&h, "POST", "/instances/ghost/actions/start", "").0, 404);
    assert_eq!(api(&h, "GET", "/instances/ghost/console?tail=x", "").0, 404);
}

#[test]
fn instances_are_created_once_and_survive_a_restart() {
    let h = start();
    let k = kernel(h.dir.path());
    let (status, created) = api(&h, "POST", "/instances?start=false", &spec("web-1", &k, 64));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "shutoff");
    let (status, err) = api(&h, "POST", "/instances?start=false", &spec("web-1", &k, 64));
    assert_eq!(status, 409, "duplicate id: {err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already exists"));
    // Wrong state for the action, unknown action, bad action body.
    assert_eq!(api(&h, "POST", "/instances/web-1/actions/pause", "").0, 409);
    assert_eq!(api(&h, "POST", "/instances/web-1/actions/stop", "").0, 409);
    assert_eq!(
        api(&h, "POST", "/instances/web-1/actions/explode", "").0,
        404
    );
    assert_eq!(
        api(
            &h,
            "POST",
            "/instances/web-1/actions/stop",
            r#"{"hard": "yes"}"#
        )
        .0,
        400
    );
    assert_eq!(api(&h, "GET", "/instances/web-1/console?tail=5", "").0, 200);

    // kill -9 and restart: the record is still there.
    let mut h = h;
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    let dir = std::mem::replace(&mut h.dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = start_in(dir);
    let (status, list) = api(&h, "GET", "/instances", "");
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], "web-1");
    assert_eq!(list[0]["state"], "shutoff");
    assert_eq!(api(&h, "DELETE", "/instances/web-1", "").0, 204);
    assert_eq!(api(&h, "GET", "/instances/web-1", "").0, 404);

    let (status, metrics) = call(&h, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("hostd_instances{state=\"running\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hostd_api_responses_total{code=\"404\"}"),
        "{metrics}"
    );
}

#[test]
fn a_bad_config_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hostd.toml");
    std::fs::write(&cfg, config(dir.path()).replace(TOKEN, "short")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid configuration: token"), "{err}");

    std::fs::write(&cfg, "token = \"x\"\nlisten = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn state_changes_stream_as_json_lines() {
    let h = start();
    let k = kernel(h.dir.path());
    let mut events = UnixStream::connect(&h.socket).unwrap();
    write!(
        events,
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    // Let the subscription start before anything happens.
    let mut head = [0u8; 12];
    events.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(
        api(&h, "POST", "/instances?start=false", &spec("ev-1", &k, 64)).0,
        201
    );
    assert_eq!(api(&h, "DELETE", "/instances/ev-1", "").0, 204);
    events
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"deleted\"") {
        let n = events.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        seen.contains(r#""instance":"ev-1","state":"shutoff""#),
        "{seen}"
    );
    assert!(
        seen.contains(r#""instance":"ev-1","state":"deleted""#),
        "{seen}"
    );
}

#[test]
fn hostd_registers_and_sends_heartbeats_to_its_controller() {
    // A stand-in for the controller's registration endpoint: records requests.
    let (seen, requests) = std::sync::mpsc::channel();
    let seen = std::sync::Mutex::new(seen);
    let controller = virga_test_support::stub::StubServer::start(move |r| {
        let _ = seen.lock().unwrap().send(r);
        virga_test_support::stub::Response::empty(204)
    });
    let dir = tempfile::tempdir().unwrap();
    let h = start_with(
        dir,
        &format!(
            "controller_url = \"{}\"\ncontroller_token = \"ctl-secret\"\nadvertise_url = \"http://10.1.2.3:8790\"\nheartbeat_secs = 1\n",
            controller.url()
        ),
    );
    let requests: Vec<_> = (0..2)
        .map(|_| requests.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    drop(h);
    for r in &requests {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("PUT", "/internal/v1/hosts/test-host")
        );
        assert_eq!(r.header("authorization"), Some("Bearer ctl-secret"));
        let body = r.json();
        assert_eq!(body["host_id"], "test-host");
        assert_eq!(body["url"], "http://10.1.2.3:8790");
        assert!(body["cpus"].as_u64().unwrap() >= 1);
        assert!(body["memory_usable_mib"].as_u64().unwrap() > 0);
    }
}

#[test]
fn console_tail_and_follow() {
    let h = start();
    let k = kernel(h.dir.path());
    assert_eq!(
        api(&h, "POST", "/instances?start=false", &spec("con-1", &k, 64)).0,
        201
    );
    // Stand in for a VMM writing the guest's console.
    let run_dir = h.dir.path().join("state/instances/con-1");
    std::fs::create_dir_all(&run_dir).unwrap();
    let log = run_dir.join("console.log");
    std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
    let (status, body) = call(
        &h,
        "GET",
        "/instances/con-1/console?tail=2",
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(body, "two\nthree\n");
    assert_eq!(
        call(
            &h,
            "GET",
            "/instances/con-1/console?tail=99999",
            Some(TOKEN),
            ""
        )
        .0,
        400
    );

    let mut follow = UnixStream::connect(&h.socket).unwrap();
    write!(
        follow,
        "GET /instances/con-1/console?tail=1&follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    follow
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("three") {
        let n = follow.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains("two"), "only the tail first: {seen}");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"four: appended\n").unwrap();
    while !seen.contains("four: appended") {
        let n = follow.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}
