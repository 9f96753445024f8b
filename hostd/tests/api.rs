//! hostd's API against a real hostd process, without booting anything: auth,
//! bad input, duplicate ids, persistence of created instances, config errors.
//! (Booting instances needs KVM: those tests run in the testbed, tests/e2e.)

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789";

struct Hostd {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path) -> String {
    config_with_vmm(dir, Path::new("/bin/true"))
}

fn config_with_vmm(dir: &Path, vmm: &Path) -> String {
    format!(
        "token = \"{TOKEN}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\nvmm_binary = \"{}\"\ncgroup_root = \"\"\nhost_id = \"test-host\"\n",
        dir.join("hostd.sock").display(),
        dir.join("state").display(),
        vmm.display()
    )
}

fn start_in(dir: tempfile::TempDir) -> Hostd {
    start_with(dir, "")
}

/// Starts hostd with the test config plus `extra` lines.
fn start_with(dir: tempfile::TempDir, extra: &str) -> Hostd {
    let base = config(dir.path());
    start_configured(dir, base + extra)
}

/// Starts hostd whose "VMM" never answers on its control socket: an
/// operation that waits for it is stuck until hostd gives up (a minute).
fn start_with_stuck_vmm(extra: &str) -> Hostd {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let vmm = dir.path().join("stuck-vmm");
    // hostd asks its VMM for its version at start.
    std::fs::write(
        &vmm,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'vmm 0.0.0-stuck'; exit 0; }\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = config_with_vmm(dir.path(), &vmm);
    start_configured(dir, base + "jail = false\n" + extra)
}

fn start_configured(dir: tempfile::TempDir, config: String) -> Hostd {
    let cfg = dir.path().join("hostd.toml");
    std::fs::write(&cfg, config).unwrap();
    let socket = dir.path().join("hostd.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // Made first, so that hostd is stopped however the wait ends.
    let h = Hostd { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&h.socket).is_err() {
        assert!(Instant::now() < deadline, "hostd did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

fn start() -> Hostd {
    start_in(tempfile::tempdir().unwrap())
}

/// One request; returns (status, body).
fn call(h: &Hostd, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(&h.socket).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn api(h: &Hostd, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = call(h, method, path, Some(TOKEN), body);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn kernel(dir: &Path) -> PathBuf {
    let k = dir.join("vmlinux");
    std::fs::write(&k, b"\x7fELF\x02\x01\x01").unwrap();
    k
}

fn spec(id: &str, kernel: &Path, memory_mib: u64) -> String {
    format!(
        r#"{{"id": "{id}", "vcpus": 1, "memory_mib": {memory_mib}, "kernel": "{}"}}"#,
        kernel.display()
    )
}

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
    let controller = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = controller.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = start_with(
        dir,
        &format!(
            "controller_url = \"http://{addr}\"\ncontroller_token = \"ctl-secret\"\nadvertise_url = \"http://10.1.2.3:8790\"\nheartbeat_secs = 1\n"
        ),
    );
    controller.set_nonblocking(false).unwrap();
    let mut requests = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = controller.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then a Content-Length body.
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        requests.push(String::from_utf8_lossy(&req).to_string());
    }
    drop(h);
    for r in &requests {
        assert!(
            r.starts_with("PUT /internal/v1/hosts/test-host HTTP/1.1"),
            "{r}"
        );
        assert!(
            r.to_ascii_lowercase()
                .contains("authorization: bearer ctl-secret"),
            "{r}"
        );
        let body: serde_json::Value =
            serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();
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

/// Waits (at most 10 s) until the instance is building: its VMM started,
/// the start waiting for the VMM's answer.
fn wait_building(h: &Hostd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api(h, "GET", &format!("/instances/{id}"), "").1["state"] != "building" {
        assert!(Instant::now() < deadline, "{id} never started building");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A delete never waits behind a stuck operation: while a start waits for a
/// VMM that never answers (hostd would give up after a minute), a delete
/// kills that VMM and removes the instance at once; the start then fails.
#[test]
fn a_delete_does_not_wait_behind_a_stuck_start() {
    let h = start_with_stuck_vmm("");
    let k = kernel(h.dir.path());
    std::thread::scope(|s| {
        let create = s.spawn(|| api(&h, "POST", "/instances", &spec("stuck-1", &k, 64)));
        wait_building(&h, "stuck-1");
        let t = Instant::now();
        let (status, body) = api(&h, "DELETE", "/instances/stuck-1", "");
        assert_eq!(status, 204, "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the delete waited {:?} behind the start",
            t.elapsed()
        );
        let (status, body) = create.join().unwrap();
        assert!(
            status >= 400,
            "the start of a deleted instance: {status} {body}"
        );
    });
    assert_eq!(api(&h, "GET", "/instances/stuck-1", "").0, 404);
    assert_eq!(api(&h, "GET", "/instances", "").1, serde_json::json!([]));
}

/// Memory is admitted atomically across instances: of two starts racing for
/// room for one, one is refused (409) while the other's VMM runs.
#[test]
fn racing_starts_never_overcommit_memory() {
    let host_mib = vmm::config::host_memory_mib().unwrap();
    let h = start_with_stuck_vmm(&format!("reserved_memory_mib = {}\n", host_mib - 1000));
    let k = kernel(h.dir.path());
    for id in ["race-a", "race-b"] {
        let (status, body) = api(&h, "POST", "/instances?start=false", &spec(id, &k, 600));
        assert_eq!(status, 201, "{body}");
    }
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let starts: Vec<_> = ["race-a", "race-b"]
            .iter()
            .map(|id| {
                let h = &h;
                s.spawn(move || api(h, "POST", &format!("/instances/{id}/actions/start"), ""))
            })
            .collect();
        // Neither VMM ever answers: once one is building and the other
        // refused, end the one building.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = api(&h, "GET", "/instances", "").1;
            let building = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["state"] == "building")
                .count();
            assert!(building <= 1, "both admitted: {list}");
            if building == 1 && starts.iter().any(|t| t.is_finished()) {
                break;
            }
            assert!(Instant::now() < deadline, "no start was refused: {list}");
            std::thread::sleep(Duration::from_millis(20));
        }
        for id in ["race-a", "race-b"] {
            assert_eq!(api(&h, "DELETE", &format!("/instances/{id}"), "").0, 204);
        }
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let refused: Vec<_> = results
        .iter()
        .filter(|(status, body)| {
            *status == 409
                && body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not enough free memory")
        })
        .collect();
    assert_eq!(refused.len(), 1, "{results:?}");
}
