//! The controller and hostd as real processes talking to each other, on this
//! machine (no guest boots, so no testbed): hostd registers with its
//! heartbeats, and fetches an image the controller stores when an instance
//! names it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use virga_e2e::{controller_bin, hostd_bins};

const HOSTD_TOKEN: &str = "cloud-e2e-shared-token-0123";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (status, headers+body) of one HTTP/1.1 request.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("write");
    s.write_all(body).expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let out = String::from_utf8_lossy(&out).into_owned();
    (out[9..12].parse().expect("status"), out)
}

fn body_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn hostd_registers_and_fetches_images_from_the_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ctl_port, hostd_port) = (free_port(), free_port());
    let ctl_cfg = dir.path().join("controller.toml");
    std::fs::write(
        &ctl_cfg,
        format!(
            "listen = \"127.0.0.1:{ctl_port}\"\nstate_dir = \"{}\"\nhostd_token = \"{HOSTD_TOKEN}\"\n[bootstrap]\nadmin_password = \"admin-secret\"\n",
            dir.path().join("controller").display()
        ),
    )
    .expect("config");
    let _controller = Killed(
        Command::new(controller_bin())
            .arg("--config")
            .arg(&ctl_cfg)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start the controller (built by cargo xtask test)"),
    );
    wait_for_port(ctl_port);

    let auth = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"admin-secret"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}"#;
    let (status, resp) = http(
        ctl_port,
        "POST",
        "/identity/v3/auth/tokens",
        &[("Content-Type", "application/json")],
        auth.as_bytes(),
    );
    assert_eq!(status, 201);
    let token = resp
        .lines()
        .find_map(|l| l.strip_prefix("x-subject-token: "))
        .expect("a token")
        .trim()
        .to_owned();
    let t = ("X-Auth-Token", token.as_str());
    let (status, resp) = http(
        ctl_port,
        "POST",
        "/image/v2/images",
        &[t, ("Content-Type", "application/json")],
        br#"{"name": "kernel", "disk_format": "aki", "container_format": "aki"}"#,
    );
    assert_eq!(status, 201);
    let image = body_json(&resp)["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    let kernel: Vec<u8> = b"\x7fELF\x02\x01\x01"
        .iter()
        .copied()
        .chain((0..100_000u32).map(|i| i as u8))
        .collect();
    let (status, _) = http(
        ctl_port,
        "PUT",
        &format!("/image/v2/images/{image}/file"),
        &[t],
        &kernel,
    );
    assert_eq!(status, 204);

    let [hostd, _] = hostd_bins();
    let hostd_cfg = dir.path().join("hostd.toml");
    std::fs::write(
        &hostd_cfg,
        format!(
            "token = \"{HOSTD_TOKEN}\"\nlisten = \"127.0.0.1:{hostd_port}\"\nstate_dir = \"{}\"\nvmm_binary = \"/bin/true\"\ncgroup_root = \"\"\nhost_id = \"e2e-host\"\ncontroller_url = \"http://127.0.0.1:{ctl_port}\"\ncontroller_token = \"{HOSTD_TOKEN}\"\nheartbeat_secs = 1\n",
            dir.path().join("hostd").display()
        ),
    )
    .expect("config");
    let _hostd = Killed(
        Command::new(&hostd)
            .arg("--config")
            .arg(&hostd_cfg)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start hostd"),
    );
    wait_for_port(hostd_port);

    // Registered by its heartbeat.
    let bearer = format!("Bearer {HOSTD_TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, resp) = http(
            ctl_port,
            "GET",
            "/internal/v1/hosts",
            &[("Authorization", &bearer)],
            b"",
        );
        assert_eq!(status, 200);
        let hosts = body_json(&resp);
        if hosts["hosts"][0]["host_id"] == "e2e-host" {
            assert_eq!(
                hosts["hosts"][0]["url"],
                format!("http://127.0.0.1:{hostd_port}").as_str()
            );
            break;
        }
        assert!(Instant::now() < deadline, "hostd never registered: {resp}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An instance naming the image by id: hostd fetches it into its cache.
    let spec = format!(
        r#"{{"id": "fetch-test", "vcpus": 1, "memory_mib": 64, "kernel_image": "{image}"}}"#
    );
    let (status, resp) = http(
        hostd_port,
        "POST",
        "/instances?start=false",
        &[("Authorization", &bearer)],
        spec.as_bytes(),
    );
    assert_eq!(status, 201, "{resp}");
    let cached = dir.path().join("hostd/images").join(&image);
    assert_eq!(std::fs::read(&cached).expect("cached image"), kernel);
    assert_eq!(
        body_json(&resp)["kernel"],
        cached.display().to_string().as_str()
    );
    // An unknown image is refused, and nothing is left behind.
    let spec = r#"{"id": "missing", "vcpus": 1, "memory_mib": 64, "kernel_image": "00000000-0000-0000-0000-000000000000"}"#;
    let (status, resp) = http(
        hostd_port,
        "POST",
        "/instances?start=false",
        &[("Authorization", &bearer)],
        spec.as_bytes(),
    );
    assert_eq!(status, 500, "{resp}");
    assert!(resp.contains("404"), "{resp}");
}
