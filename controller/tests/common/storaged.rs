//! A real storaged for the controller's tests: its volumes in a temporary
//! directory, heartbeating every second to the controller as `host_id`
//! with the token the stand-in hostd's secret gives it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::hostd::host_token;
use super::Controller;

/// The storaged the workspace built (next to this test's own directory of
/// binaries), or `VIRGA_STORAGED_BIN`.
pub fn storaged_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VIRGA_STORAGED_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("storaged"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build -p storaged`)",
        bin.display()
    );
    bin
}

pub struct Storaged {
    child: Option<Child>,
    config: PathBuf,
    pub data_dir: PathBuf,
    pub host_id: String,
    _dir: tempfile::TempDir,
}

impl Storaged {
    /// Starts one for `c` (see [`wait_registered`] for its first heartbeat).
    pub fn start(c: &Controller, host_id: &str) -> Storaged {
        Self::start_with(c, host_id, "")
    }

    /// As [`Storaged::start`], with `extra` configuration lines.
    pub fn start_with(c: &Controller, host_id: &str, extra: &str) -> Storaged {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config = dir.path().join("storaged.toml");
        std::fs::write(
            &config,
            format!(
                "host_id = \"{host_id}\"\nlisten = \"127.0.0.1:0\"\nnbd_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontroller_url = \"http://{}\"\ntoken = \"{}\"\nheartbeat_secs = 1\n{extra}",
                data_dir.display(),
                c.addr,
                host_token(host_id)
            ),
        )
        .unwrap();
        let mut s = Storaged {
            child: None,
            config,
            data_dir,
            host_id: host_id.to_owned(),
            _dir: dir,
        };
        s.restart();
        s
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(
            Command::new(storaged_bin())
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "warn,storaged::volumes=info")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    /// The file holding a volume's data.
    /// A volume's own file: `<id>.raw`, or `<id>.qcow2` when it is an
    /// overlay (made over an image this host holds, or snapshotted).
    pub fn volume_file(&self, id: &str) -> PathBuf {
        let raw = self.data_dir.join(format!("volumes/{id}.raw"));
        let overlay = raw.with_extension("qcow2");
        if overlay.exists() {
            overlay
        } else {
            raw
        }
    }

    /// The raw file holding the data of a volume nothing has written yet:
    /// its own, or the image's file under it when it was made over an
    /// image this host holds.
    pub fn unwritten_volume_data(&self, id: &str) -> PathBuf {
        let own = self.volume_file(id);
        match own.extension().is_some_and(|e| e == "qcow2") {
            true => self.data_dir.join(format!("layers/{id}.raw")),
            false => own,
        }
    }
}

/// Waits (at most 10 s) until the controller offers an availability zone
/// for volumes: a storaged has registered.
pub fn wait_registered(c: &Controller, token: &str) {
    virga_test_support::wait::until("a storaged to register", Duration::from_secs(10), || {
        let r = super::call(
            c,
            "GET",
            "/volume/v3/os-availability-zone",
            &[("X-Auth-Token", token)],
            "",
        );
        (r.status == 200 && r.json()["availabilityZoneInfo"][0]["zoneName"] == "nova").then_some(())
    });
}

impl Drop for Storaged {
    fn drop(&mut self) {
        self.kill();
    }
}
