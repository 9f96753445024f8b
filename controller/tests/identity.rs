//! Keystone over HTTP against a real controller process and database.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Controller {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(database_url: Option<String>) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = database_url
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display()));
    let cfg = dir.path().join("controller.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\ndatabase_url = \"{db}\"\n[bootstrap]\nadmin_password = \"admin-secret\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "controller did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Controller {
        child,
        addr,
        _dir: dir,
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn call(c: &Controller, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(&c.addr).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

const ADMIN_AUTH: &str = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"admin-secret"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}"#;

fn exercise_keystone(c: &Controller) {
    // Discovery.
    let r = call(c, "GET", "/identity", &[], "");
    assert_eq!(r.status, 300);
    assert_eq!(r.json()["versions"]["values"][0]["id"], "v3.14");
    assert!(r
        .header("x-openstack-request-id")
        .unwrap()
        .starts_with("req-"));
    assert_eq!(call(c, "GET", "/identity/v3", &[], "").status, 200);

    // Issue.
    let r = call(c, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.header("x-subject-token").unwrap().to_owned();
    let body = r.json();
    assert_eq!(body["token"]["user"]["name"], "admin");
    assert_eq!(body["token"]["project"]["name"], "admin");
    assert_eq!(body["token"]["roles"][0]["name"], "admin");
    let types: Vec<&str> = body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["identity", "compute", "image"]);
    assert!(body["token"]["expires_at"]
        .as_str()
        .unwrap()
        .ends_with(".000000Z"));

    // Validate (GET and HEAD), then revoke.
    let both = [
        ("X-Auth-Token", token.as_str()),
        ("X-Subject-Token", token.as_str()),
    ];
    let r = call(c, "GET", "/identity/v3/auth/tokens", &both, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-subject-token"), Some(token.as_str()));
    assert_eq!(
        call(c, "HEAD", "/identity/v3/auth/tokens", &both, "").status,
        200
    );
    let other = call(c, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
    let other = other.header("x-subject-token").unwrap().to_owned();
    let r = call(
        c,
        "DELETE",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &other)],
        "",
    );
    assert_eq!(r.status, 204);
    let r = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &other)],
        "",
    );
    assert_eq!(r.status, 404, "a revoked token is gone");

    // Mistakes.
    let wrong = ADMIN_AUTH.replace("admin-secret", "nope");
    let r = call(c, "POST", "/identity/v3/auth/tokens", &[], &wrong);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], 401);
    assert!(r.header("x-subject-token").is_none());
    assert_eq!(
        call(c, "POST", "/identity/v3/auth/tokens", &[], "{oops").status,
        400
    );
    assert_eq!(
        call(c, "POST", "/identity/v3/auth/tokens", &[], "{}").status,
        400
    );
    let r = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Subject-Token", &token)],
        "",
    );
    assert_eq!(r.status, 401, "no caller token");
    assert_eq!(call(c, "GET", "/nowhere", &[], "").status, 404);
    assert_eq!(
        call(c, "PUT", "/identity/v3/auth/tokens", &[], "").status,
        405
    );
}

#[test]
fn keystone_on_sqlite() {
    let c = start(None);
    exercise_keystone(&c);
}

#[test]
fn a_bad_config_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[bootstrap]\nadmin_password = \"short\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootstrap.admin_password"), "{err}");
}

/// A throwaway PostgreSQL server (Debian's `postgresql` package), in a temp
/// directory on a free port; stopped when dropped.
struct Postgres {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn bin_dir() -> Option<std::path::PathBuf> {
        let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop()
    }

    /// None when PostgreSQL is not installed, unless the test run requires it
    /// (`cargo xtask test` installs it and sets VIRGA_REQUIRE_POSTGRES=1).
    fn start() -> Option<Postgres> {
        let Some(bin) = Self::bin_dir() else {
            assert!(
                std::env::var_os("VIRGA_REQUIRE_POSTGRES").is_none(),
                "PostgreSQL is required but not installed"
            );
            eprintln!("skipping: PostgreSQL is not installed (cargo xtask install adds it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // initdb refuses to run as root: run the server as the package's user.
        let root = running_as_root();
        if root {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let ok = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(ok.success(), "initdb failed");
        let port = free_port();
        let ok = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                dir.path().display()
            ))
            .args(["-w", "start"])
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl start failed");
        Some(Postgres {
            bin,
            data,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL program as the `postgres` user when we are root.
fn as_postgres(cmd: &std::path::Path) -> Command {
    let mut c = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.stdout(std::process::Stdio::null());
    c
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .status();
    }
}

#[test]
fn keystone_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let c = start(Some(pg.url()));
    exercise_keystone(&c);
    // A second controller on the same database shares the identities.
    let c2 = start(Some(pg.url()));
    let r = call(&c2, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
    assert_eq!(r.status, 201);
}
