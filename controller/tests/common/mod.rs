//! Shared by the controller's integration tests: a controller process on a
//! free port, raw HTTP calls, and a throwaway PostgreSQL server.

// Test helpers fail the test on any unexpected error; not every test binary
// uses every helper.
#![allow(clippy::unwrap_used, dead_code, unused_imports)]

pub mod cloud;
pub mod hostd;
pub mod storaged;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = "admin-secret";

pub struct Controller {
    child: Child,
    pub addr: String,
    pub dir_path: std::path::PathBuf,
    config: std::path::PathBuf,
    /// The database it keeps its state in.
    pub database_url: String,
    /// The controller's port, held by the test and handed to each process.
    port: HeldPort,
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
        self.child = spawn(&self.config, &self.port);
        wait_for(&mut self.child, &self.addr);
    }
}

fn spawn(config: &std::path::Path, port: &HeldPort) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_controller"));
    cmd.arg("--config").arg(config).env("RUST_LOG", "warn");
    port.hand_to(&mut cmd);
    cmd.spawn().unwrap()
}

/// Waits (at most 30 s) until the controller answers; fails at once if it
/// exits instead.
fn wait_for(child: &mut Child, addr: &str) {
    virga_test_support::wait::until("the controller to answer", Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the controller exited: {status}");
        }
        virga_test_support::http::send_within(addr, Duration::from_secs(1), "GET", "/", &[], b"")
            .ok()
    });
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second project, `other`, with a member user `bob` (password
/// `bob-password`), made directly in the controller's database.
pub fn second_project(c: &Controller) {
    let url = c.database_url.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = controller::store::Store::open(&url).await.unwrap();
        let id = controller::identity::Identity::new(store, std::time::Duration::from_secs(3600));
        let project = id.create_project("other", "default").await.unwrap();
        let user = id
            .create_user("bob", "default", "bob-password")
            .await
            .unwrap();
        id.assign_role(&user, &project, "member").await.unwrap();
    });
}

pub fn start(database_url: Option<String>) -> Controller {
    start_with(database_url, "")
}

/// As [`start`], with `extra` top-level TOML lines.
pub fn start_with(database_url: Option<String>, extra: &str) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let held = HeldPort::new();
    let port = held.port;
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
    let mut child = spawn(&cfg, &held);
    let addr = held.addr();
    wait_for(&mut child, &addr);
    Controller {
        child,
        addr,
        dir_path: dir.path().to_owned(),
        config: cfg,
        database_url: db,
        port: held,
        _dir: dir,
    }
}

pub use virga_test_support::http::Reply;
pub use virga_test_support::identity::try_token;
pub use virga_test_support::ports::{free_port, HeldPort};
pub use virga_test_support::tools::{missing as missing_tool, required as tools_required};

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
    virga_test_support::http::send(addr, method, path, headers, body.as_bytes())
}

/// As [`try_token`], failing the test when there is none.
pub fn token(c: &Controller, user: &str, password: &str, project: &str) -> String {
    virga_test_support::identity::token(&c.addr, user, password, project)
}

/// The bootstrap admin's token, scoped to the admin project.
pub fn admin_token(c: &Controller) -> String {
    token(c, "admin", ADMIN_PASSWORD, "admin")
}

/// Polls `GET path` (at most 10 s) until it answers `status`: for what the
/// controller finishes in the background (a delete answers at once).
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
    let headers = [
        ("X-Auth-Token", token),
        ("Content-Type", "application/octet-stream"),
    ];
    virga_test_support::http::send(&c.addr, "PUT", path, &headers, data)
        .unwrap()
        .status
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
