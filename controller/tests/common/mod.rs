//! Shared by the controller's integration tests: a controller process on a
//! free port, raw HTTP calls, and a throwaway PostgreSQL server.

// Test helpers fail the test on any unexpected error; not every test binary
// uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

pub mod hostd;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = "admin-secret";

pub struct Controller {
    child: Child,
    pub addr: String,
    pub dir_path: std::path::PathBuf,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// `kill -9`: the controller stops wherever it is.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the controller again on the same configuration, database and
    /// port, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.config);
        wait_for(&self.addr);
    }
}

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

fn wait_for(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "controller did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start(database_url: Option<String>) -> Controller {
    start_with(database_url, "")
}

/// As [`start`], with `extra` top-level TOML lines.
pub fn start_with(database_url: Option<String>, extra: &str) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = database_url
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display()));
    let cfg = dir.path().join("controller.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\ndatabase_url = \"{db}\"\n{extra}[bootstrap]\nadmin_password = \"admin-secret\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let child = spawn(&cfg);
    let addr = format!("127.0.0.1:{port}");
    wait_for(&addr);
    Controller {
        child,
        addr,
        dir_path: dir.path().to_owned(),
        config: cfg,
        _dir: dir,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub fn call(
    c: &Controller,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    try_call(&c.addr, method, path, headers, body).unwrap()
}

/// As [`call`], to a controller that may be gone (killed, restarting): an
/// error instead of a panic, and at most 30 s per step.
pub fn try_call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("receive: {e}"))?;
    // Binary bodies (image downloads) are only compared by their headers.
    let out = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A project-scoped token for `user` (password, Default domain), or None when
/// the controller refuses it or cannot be reached.
pub fn try_token(addr: &str, user: &str, password: &str, project: &str) -> Option<String> {
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}});
    let r = try_call(
        addr,
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        &body.to_string(),
    )
    .ok()?;
    if r.status != 201 {
        return None;
    }
    r.header("x-subject-token").map(str::to_owned)
}

/// As [`try_token`], failing the test when there is none.
#[allow(dead_code)]
pub fn token(c: &Controller, user: &str, password: &str, project: &str) -> String {
    try_token(&c.addr, user, password, project)
        .unwrap_or_else(|| panic!("no token for {user} in {project}"))
}

/// The bootstrap admin's token, scoped to the admin project.
#[allow(dead_code)]
pub fn admin_token(c: &Controller) -> String {
    token(c, "admin", ADMIN_PASSWORD, "admin")
}

/// Polls `GET path` (at most 10 s) until it answers `status`: for what the
/// controller finishes in the background (a delete answers at once).
#[allow(dead_code)]
pub fn wait_for_status(c: &Controller, path: &str, token: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(c, "GET", path, &[("X-Auth-Token", token)], "");
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: {} after 10 s, wanted {status}: {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Raw upload: the body is sent as is, with a Content-Length.
pub fn put_bytes(c: &Controller, path: &str, token: &str, data: &[u8]) -> u16 {
    let mut s = TcpStream::connect(&c.addr).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .unwrap();
    s.write_all(data).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

/// Whether this run must have every tool its tests use (`cargo xtask test`
/// installs them and sets VIRGA_REQUIRE_TOOLS=1): then a missing one fails the
/// test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var_os("VIRGA_REQUIRE_TOOLS").is_some()
}

/// A test's tool is missing: fails the test when tools are required, or says
/// the test skips.
#[allow(dead_code)]
pub fn missing_tool(what: &str) {
    assert!(!tools_required(), "{what} is required but missing");
    eprintln!("skipping: {what} is missing (cargo xtask install adds it)");
}

/// A throwaway PostgreSQL server, or None (the test skips) when PostgreSQL
/// is not installed, unless tools are required ([`tools_required`]).
pub struct Postgres;

impl Postgres {
    pub fn start() -> Option<virga_pgserver::PgServer> {
        if !virga_pgserver::PgServer::installed() {
            missing_tool("PostgreSQL");
            return None;
        }
        Some(virga_pgserver::PgServer::start().unwrap())
    }
}
