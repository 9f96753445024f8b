//! Power cuts under the object store. storaged runs in the testbed with its
//! data on the testbed's scratch disk (ext4); boto3 on this machine PUTs and
//! DELETEs objects through it (`tests/clients/s3_crash.py`, which logs each
//! request before it is sent and once it is acknowledged). Mid-load the
//! testbed's power is cut: QEMU is killed, so L1's page cache and whatever
//! it had not written to the disk are gone, as in a power failure. A new
//! testbed boots on the same disk, storaged starts on what it finds, and
//! every object is read back whole (storaged checks each block's CRC32C,
//! the client the MD5): each key must hold what its last acknowledged
//! request left, or what the request in flight would have.
//!
//! `VIRGA_POWER_CUTS` cuts (3 by default; `cargo xtask crash-trials` runs
//! more). The nested testbed only: natively there is no machine to cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virga_e2e::cloud::{host_token, openstack_cli, start_controller};
use virga_test_support::acked::Expected;
use virga_test_support::ports::{free_ports, HeldPort};

/// An EC2 credential of the admin in the admin project: (access, secret).
fn credential(ctl_port: u16) -> (String, String) {
    let token = virga_test_support::identity::token(ctl_port, "admin", "admin-secret", "admin");
    let me = virga_test_support::http::send(
        ctl_port,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
        b"",
    )
    .expect("token info");
    let user = me.json()["token"]["user"]["id"]
        .as_str()
        .expect("user id")
        .to_owned();
    let made = virga_test_support::http::send(
        ctl_port,
        "POST",
        &format!("/identity/v3/users/{user}/credentials/OS-EC2"),
        &[
            ("X-Auth-Token", &token),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .expect("ec2 credential");
    assert_eq!(made.status, 201, "{}", made.body);
    let cred = &made.json()["credential"];
    let field = |k: &str| cred[k].as_str().expect("credential field").to_owned();
    (field("access"), field("secret"))
}

#[test]
fn acknowledged_objects_survive_power_cuts() {
    let Some(cli) = openstack_cli() else { return };
    let python = cli.with_file_name("python3");
    let client_script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/s3_crash.py");
    if virga_e2e::testbed().mode() != virga_testbed::Mode::Nested {
        eprintln!("skipping: a power cut needs the nested testbed (a machine of its own)");
        return;
    }
    let cuts: u32 = std::env::var("VIRGA_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let held = HeldPort::new();
    let ctl_port = held.port;
    let _controller = start_controller(dir.path(), &held, "");
    let (access, secret) = credential(ctl_port);
    let disk = dir.path().join("storage.ext4");
    let client = |args: &[&str]| {
        std::process::Command::new(&python)
            .arg(&client_script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python")
    };
    let mut expected = Expected::default();
    let mut round = expected.round("");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut failed, mut acked, mut in_flight) = (0, 0, 0);
    println!(
        "{:>5} {:>8} {:>6} {:>6}  findings",
        "boot", "load_ms", "acked", "flight"
    );
    for boot in 0..=cuts {
        // A port of its own each boot: the last QEMU's may linger.
        let [s3_port] = free_ports::<1>();
        let script = format!(
            r#"mkdir -p /srv && mount $SCRATCH /srv && mkdir -p /srv/data
cat > $WORK/storaged.toml <<EOF
host_id = "storage-1"
listen = "0.0.0.0:8780"
data_dir = "/srv/data"
controller_url = "http://$HOST_ADDR:{ctl_port}"
token = "{token}"
heartbeat_secs = 1
s3_listen = "0.0.0.0:{s3_port}"
EOF
$BIN/storaged --config $WORK/storaged.toml &
# Until the power is cut.
wait
"#,
            token = host_token("storage-1"),
        );
        let switch = Arc::new(AtomicBool::new(false));
        let scenario = virga_testbed::Scenario::new("power-cut", &script)
            .binary(virga_e2e::storaged_bin())
            .forward_port(s3_port)
            .with_scratch_ext4(512)
            .with_scratch_file(&disk)
            .with_power_switch(switch.clone())
            .timeout(Duration::from_secs(900));
        let testbed = virga_e2e::testbed();
        let runner = std::thread::spawn(move || testbed.run(&scenario));
        let endpoint = format!("http://127.0.0.1:{s3_port}");
        let ready = client(&["ready", &endpoint, &access, &secret, "cut", "300"])
            .wait_with_output()
            .expect("ready");
        if !ready.status.success() {
            switch.store(true, Ordering::SeqCst);
            let outcome = runner.join().expect("runner");
            panic!(
                "boot {boot}: storaged never answered: {}\n{outcome:?}",
                String::from_utf8_lossy(&ready.stdout)
            );
        }
        // After a cut: everything acknowledged before it is there.
        let mut findings = Vec::new();
        if boot > 0 {
            let check = client(&["check", &endpoint, &access, &secret, "cut"])
                .wait_with_output()
                .expect("check");
            findings = match serde_json::from_slice(&check.stdout) {
                Ok(seen) => expected.check(&round, seen),
                Err(e) => vec![format!(
                    "the check failed ({e}): {}",
                    String::from_utf8_lossy(&check.stderr)
                )],
            };
        }
        // Then load, and the cut.
        let load_ms = if boot < cuts { 2000 + next() % 4000 } else { 0 };
        let log = if boot < cuts {
            let worker = client(&[
                "work",
                &endpoint,
                &access,
                &secret,
                "cut",
                &next().to_string(),
            ]);
            std::thread::sleep(Duration::from_millis(load_ms));
            switch.store(true, Ordering::SeqCst);
            let out = worker.wait_with_output().expect("worker");
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            switch.store(true, Ordering::SeqCst);
            String::new()
        };
        let outcome = runner.join().expect("runner").expect("testbed");
        assert!(
            outcome.power_cut,
            "boot {boot} ended on its own: {outcome:?}"
        );
        round = expected.round(&log);
        acked += round.acked();
        in_flight += u32::from(round.in_flight);
        println!(
            "{boot:>5} {load_ms:>8} {:>6} {:>6}  {}",
            round.acked(),
            u32::from(round.in_flight),
            if findings.is_empty() {
                "ok".to_owned()
            } else {
                findings.join("; ")
            }
        );
        if !findings.is_empty() {
            failed += 1;
        }
    }
    println!(
        "object store power cuts: {cuts} cuts, {acked} requests acknowledged before them, \
         {in_flight} with a request in flight, {failed} with findings"
    );
    assert_eq!(failed, 0, "power cuts with findings (table above)");
}
