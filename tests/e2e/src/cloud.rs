//! A controller on this machine and hosts in the testbed, driven with the
//! openstack CLI: what the cloud-level scenarios share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use virga_test_support::ports::HeldPort;

use crate::controller_bin;

pub const HOSTD_SECRET: &str = "cloud-e2e-hostd-secret-0123";

/// A host's token, as `controller host-token` prints it.
pub fn host_token(host: &str) -> String {
    hostd_proto::token::for_host(HOSTD_SECRET, host)
}

/// The openstack CLI `cargo xtask test` installs (`VIRGA_OPENSTACK`); None
/// (the test skips) when it is not set, unless tools are required.
pub fn openstack_cli() -> Option<PathBuf> {
    let cli = std::env::var_os("VIRGA_OPENSTACK").map(PathBuf::from);
    if cli.is_none() {
        assert!(
            std::env::var_os("VIRGA_REQUIRE_TOOLS").is_none(),
            "the openstack CLI (VIRGA_OPENSTACK) is required but missing"
        );
        eprintln!("skipping: VIRGA_OPENSTACK is not set (cargo xtask test sets it)");
    }
    cli
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A controller serving `port` (held by the test, handed over as systemd
/// would) with its state under `dir`; `tables` is TOML placed before its
/// `[bootstrap]` table. Returns once it answers.
pub fn start_controller(dir: &Path, port: &HeldPort, tables: &str) -> Killed {
    let cfg = dir.join("controller.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{}\"\nstate_dir = \"{}\"\nhostd_secret = \"{HOSTD_SECRET}\"\n{tables}[bootstrap]\nadmin_password = \"admin-secret\"\n",
            port.addr(),
            dir.join("controller").display()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(controller_bin());
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "warn");
    port.hand_to(&mut cmd);
    let mut controller = Killed(
        cmd.spawn()
            .expect("start the controller (built by cargo xtask test)"),
    );
    virga_test_support::wait::until("the controller to answer", Duration::from_secs(60), || {
        if let Ok(Some(status)) = controller.0.try_wait() {
            panic!("the controller exited: {status}");
        }
        virga_test_support::http::send_within(
            port.port,
            Duration::from_secs(1),
            "GET",
            "/",
            &[],
            b"",
        )
        .ok()
    });
    controller
}

/// The openstack CLI against the controller on `port`, as one user of one
/// project.
pub struct Cli {
    cli: PathBuf,
    clouds: PathBuf,
}

impl Cli {
    /// As `user` (password `password`) in `project`; the config is written
    /// under `dir`.
    pub fn new(
        cli: &Path,
        dir: &Path,
        port: u16,
        user: &str,
        password: &str,
        project: &str,
    ) -> Cli {
        let clouds = dir.join(format!("clouds-{user}-{project}.yaml"));
        std::fs::write(
            &clouds,
            format!(
                "clouds:\n  virga:\n    auth:\n      auth_url: http://127.0.0.1:{port}/identity\n      username: {user}\n      password: {password}\n      project_name: {project}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n"
            ),
        )
        .expect("clouds.yaml");
        Cli {
            cli: cli.to_owned(),
            clouds,
        }
    }

    /// The admin, in the admin project.
    pub fn admin(cli: &Path, dir: &Path, port: u16) -> Cli {
        Cli::new(cli, dir, port, "admin", "admin-secret", "admin")
    }

    /// (succeeded, stdout, stderr)
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.cli)
            .args(["--os-cloud", "virga"])
            .args(args)
            .env("OS_CLIENT_CONFIG_FILE", &self.clouds)
            .output()
            .expect("run openstack");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Stdout of a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "openstack {args:?} failed:\n{err}");
        out
    }

    /// Waits (up to `secs`) until `check` on the output of `args` holds.
    pub fn wait_until(&self, args: &[&str], secs: u64, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = self.ok(args);
            if check(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "openstack {args:?} still says:\n{out}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
