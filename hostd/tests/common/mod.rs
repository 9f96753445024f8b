//! Helpers for hostd's tests: a real hostd process in a temporary directory,
//! with a VMM binary of the test's choosing, and a client for its API.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used, dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789";

pub struct Hostd {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config(dir: &Path) -> String {
    config_with_vmm(dir, Path::new("/bin/true"))
}

pub fn config_with_vmm(dir: &Path, vmm: &Path) -> String {
    format!(
        "token = \"{TOKEN}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\nvmm_binary = \"{}\"\ncgroup_root = \"\"\nhost_id = \"test-host\"\n",
        dir.join("hostd.sock").display(),
        dir.join("state").display(),
        vmm.display()
    )
}

pub fn start_in(dir: tempfile::TempDir) -> Hostd {
    start_with(dir, "")
}

/// Starts hostd with the test config plus `extra` lines.
pub fn start_with(dir: tempfile::TempDir, extra: &str) -> Hostd {
    let base = config(dir.path());
    start_configured(dir, base + extra)
}

/// Starts hostd with the stand-in VMM (`virga-fake-vmm`), which serves the
/// control socket without KVM; an instance's command line picks how it
/// behaves (see that binary).
pub fn start_with_fake_vmm(extra: &str) -> Hostd {
    let dir = tempfile::tempdir().unwrap();
    let base = config_with_vmm(dir.path(), Path::new(env!("CARGO_BIN_EXE_virga-fake-vmm")));
    start_configured(dir, base + "jail = false\n" + extra)
}

pub fn start_configured(dir: tempfile::TempDir, config: String) -> Hostd {
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
    virga_test_support::wait::until("hostd to listen", Duration::from_secs(10), || {
        UnixStream::connect(&h.socket).ok()
    });
    h
}

pub fn start() -> Hostd {
    start_in(tempfile::tempdir().unwrap())
}

/// One request; returns (status, body).
pub fn call(h: &Hostd, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    let r =
        virga_test_support::http::send(h.socket.as_path(), method, path, &headers, body.as_bytes())
            .unwrap();
    (r.status, r.body)
}

pub fn api(h: &Hostd, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = call(h, method, path, Some(TOKEN), body);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

pub fn kernel(dir: &Path) -> PathBuf {
    let k = dir.join("vmlinux");
    std::fs::write(&k, b"\x7fELF\x02\x01\x01").unwrap();
    k
}

pub fn spec(id: &str, kernel: &Path, memory_mib: u64) -> String {
    format!(
        r#"{{"id": "{id}", "vcpus": 1, "memory_mib": {memory_mib}, "kernel": "{}"}}"#,
        kernel.display()
    )
}

/// A spec for the stand-in VMM; `cmdline` picks its behaviour.
pub fn fake_spec(id: &str, kernel: &Path, memory_mib: u64, cmdline: &str) -> String {
    format!(
        r#"{{"id": "{id}", "vcpus": 1, "memory_mib": {memory_mib}, "kernel": "{}", "cmdline": "{cmdline}"}}"#,
        kernel.display()
    )
}

/// Waits (at most 10 s) until the instance is in `state`; returns its record.
pub fn wait_state(h: &Hostd, id: &str, state: &str) -> serde_json::Value {
    virga_test_support::wait::until(
        &format!("{id} to be {state}"),
        Duration::from_secs(10),
        || {
            let (_, record) = api(h, "GET", &format!("/instances/{id}"), "");
            (record["state"] == state).then_some(record)
        },
    )
}

/// Kills hostd with SIGKILL and starts it again on the same state and
/// configuration; the VMMs it ran keep running.
pub fn restart(mut h: Hostd) -> Hostd {
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    let dir = std::mem::replace(&mut h.dir, tempfile::tempdir().unwrap());
    drop(h);
    let config = std::fs::read_to_string(dir.path().join("hostd.toml")).unwrap();
    start_configured(dir, config)
}
