//! The control plane under `kill -9`: clients create, delete and act on servers
//! against a real controller (SQLite) and a stand-in hostd that takes its time;
//! the controller is killed with SIGKILL at a random moment, started again, and
//! once it has settled these must hold:
//! - no server is left in a task state or building;
//! - the host's claims (hypervisor vCPUs and RAM used) equal the sum of the
//!   flavors of the servers placed on it;
//! - hostd runs exactly the instances of the servers placed on it (none the
//!   controller deleted or never recorded);
//! - every request the controller accepted completed, or its server shows the
//!   failure (ERROR with a fault); an accepted delete leaves no server.
//!
//! storaged under `kill -9`: a volume with data is snapshotted, a volume
//! made from the snapshot and a clone made of the volume, the volume grown,
//! and everything deleted, while storaged is killed at a random moment and
//! started again; every step must finish (nothing stuck in a transient
//! status), the data written before the snapshot must be under all three
//! volumes, and nothing may be left on the storage host at the end.
//!
//! The trials are a long suite, not part of `cargo test`: `cargo xtask
//! crash-trials [--trials N]` runs them (VIRGA_CRASH_TRIALS, 50 by default) and
//! prints every trial's outcome. `cargo test` runs the one race found this way
//! that needs no kill (a delete during the host's create), a build cut by a
//! kill (resumed at start), and an image upload killed midway (the image is
//! queued again and its bytes are gone).

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hostd::{bootable, controller_config, Delays, StandInHostd, HOST_ID};
use common::{call, put_bytes, start_with, try_call, try_token, Controller, ADMIN_PASSWORD};
use serde_json::{json, Value};

const FLAVOR_VCPUS: i64 = 1;
const FLAVOR_RAM: i64 = 64;
/// How long the controller gets to settle after a restart.
const SETTLE: Duration = Duration::from_secs(20);

/// What the clients were told, per server.
#[derive(Default)]
struct Accepted {
    creates: BTreeSet<String>,
    deletes: BTreeSet<String>,
    /// Deletes that got no answer: the controller may have recorded them
    /// (and then finishes them) or not.
    maybe_deleted: BTreeSet<String>,
    /// Requests that got no answer (the controller died under them).
    unanswered: usize,
}

/// A tiny deterministic generator: trials are reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Setup {
    /// One token for every client: a password check (argon2) per client
    /// would take longer than many trials last.
    token: String,
    image: String,
    flavor: String,
}

fn setup(c: &Controller) -> Setup {
    let admin = try_token(&c.addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let t = ("X-Auth-Token", admin.as_str());
    let (flavor, image) = bootable(c, &admin, FLAVOR_VCPUS, FLAVOR_RAM);
    let project = call(c, "GET", "/identity/v3/projects?name=admin", &[t], "").json()["projects"]
        [0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        c,
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{project}"),
        &[t],
        r#"{"quota_set": {"instances": 1000, "cores": 1000, "ram": 1000000}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    Setup {
        token: admin,
        image,
        flavor,
    }
}

/// One client: creates, deletes and acts on servers until told to stop.
fn client(
    addr: String,
    setup: Arc<Setup>,
    seed: u64,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Accepted>>,
) {
    let mut rng = Rng(seed | 1);
    let t = ("X-Auth-Token", setup.token.as_str());
    let mut mine: Vec<String> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let roll = rng.below(10);
        let result = if roll < 6 || mine.is_empty() {
            let body = json!({"server": {"name": "crash", "imageRef": setup.image, "flavorRef": setup.flavor}});
            try_call(
                &addr,
                "POST",
                "/compute/v2.1/servers",
                &[t],
                &body.to_string(),
            )
            .map(|r| {
                if r.status == 202 {
                    if let Some(id) = r.json()["server"]["id"].as_str() {
                        mine.push(id.to_owned());
                        accepted.lock().unwrap().creates.insert(id.to_owned());
                    }
                }
            })
        } else if roll < 8 {
            let id = mine.swap_remove(rng.below(mine.len() as u64) as usize);
            match try_call(
                &addr,
                "DELETE",
                &format!("/compute/v2.1/servers/{id}"),
                &[t],
                "",
            ) {
                Ok(r) => {
                    if r.status < 300 {
                        accepted.lock().unwrap().deletes.insert(id);
                    }
                    Ok(())
                }
                Err(e) => {
                    accepted.lock().unwrap().maybe_deleted.insert(id);
                    Err(e)
                }
            }
        } else {
            let id = &mine[rng.below(mine.len() as u64) as usize];
            let action = [
                r#"{"os-stop": null}"#,
                r#"{"os-start": null}"#,
                r#"{"reboot": {"type": "HARD"}}"#,
            ][rng.below(3) as usize];
            try_call(
                &addr,
                "POST",
                &format!("/compute/v2.1/servers/{id}/action"),
                &[t],
                action,
            )
            .map(|_| ())
        };
        if result.is_err() {
            accepted.lock().unwrap().unanswered += 1;
            return;
        }
    }
}

/// Everything the controller shows, as (id → server).
fn servers(addr: &str, admin: &str) -> Option<BTreeMap<String, Value>> {
    let r = try_call(
        addr,
        "GET",
        "/compute/v2.1/servers/detail?all_tenants=1&limit=1000",
        &[("X-Auth-Token", admin)],
        "",
    )
    .ok()?;
    let list = r.json()["servers"].as_array()?.clone();
    Some(
        list.into_iter()
            .filter_map(|s| Some((s["id"].as_str()?.to_owned(), s)))
            .collect(),
    )
}

fn claims(addr: &str, admin: &str) -> Option<(i64, i64)> {
    let r = try_call(
        addr,
        "GET",
        "/compute/v2.1/os-hypervisors/detail",
        &[("X-Auth-Token", admin)],
        "",
    )
    .ok()?;
    let h = r.json()["hypervisors"]
        .as_array()?
        .iter()
        .find(|h| h["hypervisor_hostname"] == HOST_ID || h["service"]["host"] == HOST_ID)?
        .clone();
    Some((h["vcpus_used"].as_i64()?, h["memory_mb_used"].as_i64()?))
}

/// What is still wrong once the controller had [`SETTLE`] to converge
/// (empty: nothing): its reconcilers finish deletes and remove leftovers in
/// rounds of a few seconds.
fn check(addr: &str, hostd: &StandInHostd, accepted: &Accepted) -> Vec<String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let wrong = check_once(addr, hostd, accepted);
        if wrong.is_empty() || Instant::now() > deadline {
            return wrong;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check_once(addr: &str, hostd: &StandInHostd, accepted: &Accepted) -> Vec<String> {
    let admin = try_token(addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let all = servers(addr, &admin).unwrap_or_default();
    let mut wrong = Vec::new();
    for (id, s) in &all {
        if !s["OS-EXT-STS:task_state"].is_null() || s["status"] == "BUILD" {
            wrong.push(format!(
                "stuck: {id} is {} with task {}",
                s["status"], s["OS-EXT-STS:task_state"]
            ));
        }
        if s["status"] == "ERROR" && s["fault"]["message"].as_str().unwrap_or("").is_empty() {
            wrong.push(format!("ERROR without a fault: {id}"));
        }
    }
    let placed: BTreeSet<&String> = all
        .iter()
        .filter(|(_, s)| s["OS-EXT-SRV-ATTR:host"] == HOST_ID)
        .map(|(id, _)| id)
        .collect();
    let n = placed.len() as i64;
    match claims(addr, &admin) {
        Some((vcpus, ram)) if (vcpus, ram) != (n * FLAVOR_VCPUS, n * FLAVOR_RAM) => {
            wrong.push(format!(
                "claims: host has {vcpus} vCPUs, {ram} MiB claimed for {n} servers placed on it"
            ))
        }
        Some(_) => {}
        None => wrong.push("claims: the host is not listed".into()),
    }
    let running: BTreeSet<String> = hostd.instances().into_keys().collect();
    for id in running.iter().filter(|id| !placed.contains(id)) {
        let why = match all.get(id) {
            Some(s) => format!("its server is {} with no host", s["status"]),
            None if accepted.deletes.contains(id) || accepted.maybe_deleted.contains(id) => {
                "its server was deleted".into()
            }
            None => "no server has its id".into(),
        };
        wrong.push(format!("orphan on hostd: {id} ({why})"));
    }
    for id in placed.iter().filter(|id| !running.contains(id.as_str())) {
        let s = &all[id.as_str()];
        if s["status"] != "ERROR" {
            wrong.push(format!(
                "lost: {id} is {} but hostd has no instance",
                s["status"]
            ));
        }
    }
    for id in &accepted.creates {
        if !all.contains_key(id)
            && !accepted.deletes.contains(id)
            && !accepted.maybe_deleted.contains(id)
        {
            wrong.push(format!("vanished: accepted create {id} has no server"));
        }
    }
    for id in &accepted.deletes {
        if all.contains_key(id) {
            wrong.push(format!("undeleted: accepted delete {id} left its server"));
        }
    }
    wrong
}

/// Deletes every server, so that the next trial starts empty; returns what
/// could not be removed.
fn clean_up(addr: &str) -> Vec<String> {
    let admin = try_token(addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let t = ("X-Auth-Token", admin.as_str());
    let deadline = Instant::now() + SETTLE;
    loop {
        let all = servers(addr, &admin).unwrap_or_default();
        if all.is_empty() {
            return Vec::new();
        }
        if Instant::now() > deadline {
            return all.keys().map(|id| format!("cannot delete {id}")).collect();
        }
        for id in all.keys() {
            let _ = try_call(
                addr,
                "DELETE",
                &format!("/compute/v2.1/servers/{id}"),
                &[t],
                "",
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Without a kill: a delete that arrives while the host is still creating the
/// instance (it answers the delete with 404 first) leaves neither an instance
/// on the host nor a claim (issue 11's first defect).
#[test]
fn a_delete_during_the_hosts_create_leaves_nothing_behind() {
    let hostd = StandInHostd::start(Delays {
        create: Duration::from_millis(1500),
        action: Duration::ZERO,
        delete: Duration::ZERO,
    });
    let c = start_with(None, &controller_config());
    hostd.register(&c);
    let setup = setup(&c);
    let t = ("X-Auth-Token", setup.token.as_str());
    let body =
        json!({"server": {"name": "racer", "imageRef": setup.image, "flavorRef": setup.flavor}});
    let r = call(&c, "POST", "/compute/v2.1/servers", &[t], &body.to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    // The build is now waiting on the host's create.
    std::thread::sleep(Duration::from_millis(500));
    let r = call(
        &c,
        "DELETE",
        &format!("/compute/v2.1/servers/{id}"),
        &[t],
        "",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let wrong = check(
        &c.addr,
        &hostd,
        &Accepted {
            creates: [id.clone()].into(),
            deletes: [id].into(),
            ..Accepted::default()
        },
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(hostd.instances().is_empty());
}

/// A build cut by `kill -9` while the host was creating its instance is
/// resumed when the controller starts again: the server ends ACTIVE on that
/// host (the instance the first create made counts), its create action
/// succeeds, and the claims and the host's instances match.
#[test]
fn a_build_cut_by_a_kill_resumes_at_start() {
    let hostd = StandInHostd::start(Delays {
        create: Duration::from_millis(1500),
        action: Duration::ZERO,
        delete: Duration::ZERO,
    });
    let mut c = start_with(None, &controller_config());
    hostd.register(&c);
    let setup = setup(&c);
    let t = ("X-Auth-Token", setup.token.as_str());
    let body =
        json!({"server": {"name": "cut", "imageRef": setup.image, "flavorRef": setup.flavor}});
    let r = call(&c, "POST", "/compute/v2.1/servers", &[t], &body.to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    // The build is now waiting on the host's create, which goes on without it.
    std::thread::sleep(Duration::from_millis(500));
    c.kill();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(hostd.instances().contains_key(&id));
    c.restart();
    let wrong = check(
        &c.addr,
        &hostd,
        &Accepted {
            creates: [id.clone()].into(),
            ..Accepted::default()
        },
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    let server = call(&c, "GET", &format!("/compute/v2.1/servers/{id}"), &[t], "").json();
    assert_eq!(server["server"]["status"], "ACTIVE", "{server}");
    let actions = call(
        &c,
        "GET",
        &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
        &[t],
        "",
    )
    .json();
    assert_eq!(actions["instanceActions"][0]["action"], "create");
    assert!(
        actions["instanceActions"][0]["message"].is_null(),
        "{actions}"
    );
}

/// An image upload cut short by `kill -9`: after the restart the image is
/// queued again (never active with part of its data), none of its bytes are
/// left on disk, and the upload can be made again.
#[test]
fn an_upload_killed_midway_leaves_no_image_data_behind() {
    use std::io::Write;
    let mut c = start_with(None, "");
    let admin = try_token(&c.addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let t = ("X-Auth-Token", admin.as_str());
    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[t],
        r#"{"name": "big", "disk_format": "raw", "container_format": "bare"}"#,
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let mut upload = std::net::TcpStream::connect(&c.addr).unwrap();
    write!(
        upload,
        "PUT /image/v2/images/{id}/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {admin}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        64 << 20
    )
    .unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..8 {
        upload.write_all(&chunk).unwrap();
    }
    // The controller is storing it: saving, with a partial file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&c, "GET", &format!("/image/v2/images/{id}"), &[t], "").json()["status"] != "saving"
    {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill();
    drop(upload);
    c.restart();
    let admin = try_token(&c.addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let t = ("X-Auth-Token", admin.as_str());
    let image = call(&c, "GET", &format!("/image/v2/images/{id}"), &[t], "").json();
    assert_eq!(image["status"], "queued", "{image}");
    let mut left = Vec::new();
    let mut dirs = vec![c.dir_path.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(&id) {
                left.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "bytes left behind: {left:?}");
    let path = format!("/image/v2/images/{id}/file");
    assert_eq!(put_bytes(&c, &path, &admin, b"whole"), 204);
    let image = call(&c, "GET", &format!("/image/v2/images/{id}"), &[t], "").json();
    assert_eq!(
        (image["status"].as_str(), image["size"].as_i64()),
        (Some("active"), Some(5))
    );
}

#[test]
#[ignore = "a long suite: cargo xtask crash-trials"]
fn the_control_plane_survives_kill_9_anywhere() {
    let trials: u64 = std::env::var("VIRGA_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let hostd = StandInHostd::start(Delays {
        create: Duration::from_millis(150),
        action: Duration::from_millis(100),
        delete: Duration::from_millis(100),
    });
    let mut rng = Rng(0x5eed_c0de_0000_0001);
    let mut failed = 0;
    let mut findings: BTreeMap<String, usize> = BTreeMap::new();
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>10}  findings",
        "trial", "kill_ms", "creates", "deletes", "unanswered"
    );
    for trial in 1..=trials {
        // Each trial on a controller and database of its own, and an empty
        // hostd: a finding is not counted again by the next trial.
        hostd.clear();
        let mut c = start_with(None, &controller_config());
        hostd.register(&c);
        let setup = Arc::new(setup(&c));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Accepted::default()));
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let (addr, setup, stop, accepted) = (
                    c.addr.clone(),
                    setup.clone(),
                    stop.clone(),
                    accepted.clone(),
                );
                let seed = rng.next() ^ i;
                std::thread::spawn(move || client(addr, setup, seed, stop, accepted))
            })
            .collect();
        let kill_ms = 100 + rng.below(1500);
        std::thread::sleep(Duration::from_millis(kill_ms));
        c.kill();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            let _ = w.join();
        }
        c.restart();
        hostd.register(&c);
        let accepted = accepted.lock().unwrap();
        let mut wrong = check(&c.addr, &hostd, &accepted);
        wrong.extend(clean_up(&c.addr));
        println!(
            "{trial:>5} {kill_ms:>8} {:>8} {:>8} {:>10}  {}",
            accepted.creates.len(),
            accepted.deletes.len(),
            accepted.unanswered,
            if wrong.is_empty() {
                "ok".to_owned()
            } else {
                wrong.join("; ")
            }
        );
        if !wrong.is_empty() {
            failed += 1;
        }
        for w in &wrong {
            let kind = w.split(':').next().unwrap_or_default().to_owned();
            *findings.entry(kind).or_default() += 1;
        }
    }
    println!(
        "crash trials: {trials} run, {} clean, {failed} with findings",
        trials - failed
    );
    for (kind, n) in &findings {
        println!("  {kind}: {n}");
    }
    assert_eq!(failed, 0, "trials with findings (table above)");
}

/// A volume API call for the storaged trials.
fn v3(addr: &str, token: &str, method: &str, path: &str, body: Value) -> Value {
    let r = try_call(
        addr,
        method,
        &format!("/volume/v3{path}"),
        &[
            ("X-Auth-Token", token),
            ("Content-Type", "application/json"),
        ],
        &if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
    )
    .unwrap();
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// Waits (storaged may be down meanwhile) until `kind`/`id` is `want`
/// ("gone": 404); what it stayed in otherwise.
fn settle(addr: &str, token: &str, kind: &str, id: &str, want: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let r = try_call(
            addr,
            "GET",
            &format!("/volume/v3/{kind}s/{id}"),
            &[("X-Auth-Token", token)],
            "",
        )
        .unwrap();
        if r.status == 404 {
            if want == "gone" {
                return Ok(());
            }
            last = "gone".into();
        } else {
            last = r.json()[kind]["status"].as_str().unwrap_or("?").to_owned();
            if last == want {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{kind} {id} stayed {last}, never {want}"))
}

/// The raw file at the bottom of a volume's files in `data`: the volume's
/// own when raw, else the base its qcow2 layers lie over (each header names
/// the layer under it).
fn raw_base(data: &std::path::Path, id: &str) -> Result<std::path::PathBuf, String> {
    let mut path = ["qcow2", "raw"]
        .iter()
        .map(|ext| data.join(format!("volumes/{id}.{ext}")))
        .find(|p| p.exists())
        .ok_or(format!("volume {id} has no file"))?;
    for _ in 0..40 {
        if path.extension().is_some_and(|e| e == "raw") {
            return Ok(path);
        }
        let header = std::fs::read(&path).map_err(|e| e.to_string())?;
        let offset = u64::from_be_bytes(header[8..16].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        let under = String::from_utf8_lossy(&header[offset..offset + len]).into_owned();
        path = ["qcow2", "raw"]
            .iter()
            .map(|ext| data.join(format!("layers/{under}.{ext}")))
            .find(|p| p.exists())
            .ok_or(format!(
                "{} lies over {under}, which is missing",
                path.display()
            ))?;
    }
    Err(format!("volume {id}: a chain too deep"))
}

/// One trial's volume work: a volume with data, a snapshot, a volume from
/// it and a clone of the volume, a grow, then everything deleted. What did
/// not go as it should.
/// Whether what the trial wrote before its first snapshot is at the
/// bottom of volume `id`'s chain.
fn written_at_base(data: &std::path::Path, id: &str) -> Result<(), String> {
    let bytes = raw_base(data, id).and_then(|p| std::fs::read(&p).map_err(|e| e.to_string()))?;
    if bytes.starts_with(b"written before") {
        Ok(())
    } else {
        Err(format!("volume {id}: the data is not at its base"))
    }
}

fn volume_work(addr: &str, token: &str, data: &std::path::Path, volume: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut step = |r: Result<(), String>| {
        if let Err(e) = r {
            wrong.push(e);
        }
    };
    let s = v3(
        addr,
        token,
        "POST",
        "/snapshots",
        json!({"snapshot": {"volume_id": volume}}),
    );
    let snap = s["snapshot"]["id"].as_str().unwrap().to_owned();
    step(settle(addr, token, "snapshot", &snap, "available"));
    let b = v3(
        addr,
        token,
        "POST",
        "/volumes",
        json!({"volume": {"snapshot_id": snap}}),
    );
    let b = b["volume"]["id"].as_str().unwrap().to_owned();
    step(settle(addr, token, "volume", &b, "available"));
    let c = v3(
        addr,
        token,
        "POST",
        "/volumes",
        json!({"volume": {"size": 2, "source_volid": volume}}),
    );
    let c = c["volume"]["id"].as_str().unwrap().to_owned();
    step(settle(addr, token, "volume", &c, "available"));
    // Two more snapshots: deleting the first of them leaves its layer
    // (no raw bottom) under the second's alone, and it is merged into it.
    let snap_of_volume = || {
        let s = v3(
            addr,
            token,
            "POST",
            "/snapshots",
            json!({"snapshot": {"volume_id": volume}}),
        );
        s["snapshot"]["id"].as_str().unwrap().to_owned()
    };
    let (s2, s3) = (snap_of_volume(), snap_of_volume());
    for s in [&s2, &s3] {
        step(settle(addr, token, "snapshot", s, "available"));
    }
    // What was written before the snapshot is at the bottom of all three.
    for id in [volume, &b, &c] {
        step(written_at_base(data, id));
    }
    v3(
        addr,
        token,
        "DELETE",
        &format!("/snapshots/{snap}"),
        Value::Null,
    );
    v3(
        addr,
        token,
        "POST",
        &format!("/volumes/{volume}/action"),
        json!({"os-extend": {"new_size": 3}}),
    );
    step(settle(addr, token, "snapshot", &snap, "gone"));
    step(settle(addr, token, "volume", volume, "available"));
    v3(
        addr,
        token,
        "DELETE",
        &format!("/snapshots/{s2}"),
        Value::Null,
    );
    step(settle(addr, token, "snapshot", &s2, "gone"));
    // Merged or not, the third snapshot holds the data.
    let d = v3(
        addr,
        token,
        "POST",
        "/volumes",
        json!({"volume": {"snapshot_id": s3}}),
    );
    let d = d["volume"]["id"].as_str().unwrap().to_owned();
    step(settle(addr, token, "volume", &d, "available"));
    step(written_at_base(data, &d));
    v3(addr, token, "DELETE", &format!("/volumes/{d}"), Value::Null);
    step(settle(addr, token, "volume", &d, "gone"));
    v3(
        addr,
        token,
        "DELETE",
        &format!("/snapshots/{s3}"),
        Value::Null,
    );
    step(settle(addr, token, "snapshot", &s3, "gone"));
    for id in [volume, b.as_str(), c.as_str()] {
        v3(
            addr,
            token,
            "DELETE",
            &format!("/volumes/{id}"),
            Value::Null,
        );
    }
    for id in [volume, b.as_str(), c.as_str()] {
        step(settle(addr, token, "volume", id, "gone"));
    }
    wrong
}

#[test]
#[ignore = "a long suite: cargo xtask crash-trials"]
fn volumes_survive_storaged_killed_anywhere() {
    let trials: u64 = std::env::var("VIRGA_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let c = start_with(None, &controller_config());
    let admin = try_token(&c.addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let mut s = common::storaged::Storaged::start(&c, "storage-1");
    common::storaged::wait_registered(&c, &admin);
    let mut rng = Rng(0x5eed_c0de_0000_0002);
    let mut failed = 0;
    let mut mid_work = 0;
    println!(
        "{:>5} {:>8} {:>8} {:>9}  findings",
        "trial", "kill_ms", "down_ms", "mid_work"
    );
    for trial in 1..=trials {
        let v = v3(
            &c.addr,
            &admin,
            "POST",
            "/volumes",
            json!({"volume": {"size": 1}}),
        );
        let volume = v["volume"]["id"].as_str().unwrap().to_owned();
        settle(&c.addr, &admin, "volume", &volume, "available").unwrap();
        std::fs::write(s.volume_file(&volume), b"written before the snapshot").unwrap();
        let (addr, token, data, id) = (c.addr.clone(), admin.clone(), s.data_dir.clone(), volume);
        let work = std::thread::spawn(move || volume_work(&addr, &token, &data, &id));
        // Killed somewhere in the work (it takes about a second without
        // kills), down for a moment, started again.
        let kill_ms = rng.below(1000);
        let down_ms = rng.below(300);
        std::thread::sleep(Duration::from_millis(kill_ms));
        let mid = !work.is_finished();
        mid_work += u64::from(mid);
        s.kill();
        std::thread::sleep(Duration::from_millis(down_ms));
        s.restart();
        let mut wrong = work
            .join()
            .unwrap_or_else(|_| vec!["the work panicked".into()]);
        // Everything deleted: nothing may be left on the storage host.
        let left: Vec<String> = ["volumes", "layers", "snapshots", "moving"]
            .iter()
            .flat_map(|d| std::fs::read_dir(s.data_dir.join(d)).into_iter().flatten())
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        if !left.is_empty() {
            wrong.push(format!("left on the storage host: {left:?}"));
            for d in ["volumes", "layers", "snapshots", "moving"] {
                let _ = std::fs::remove_dir_all(s.data_dir.join(d));
            }
        }
        println!(
            "{trial:>5} {kill_ms:>8} {down_ms:>8} {mid:>9}  {}",
            if wrong.is_empty() {
                "ok".to_owned()
            } else {
                wrong.join("; ")
            }
        );
        if !wrong.is_empty() {
            failed += 1;
        }
    }
    println!(
        "storaged crash trials: {trials} run ({mid_work} killed during the work), {} clean, {failed} with findings",
        trials - failed
    );
    assert_eq!(failed, 0, "trials with findings (table above)");
}

/// The object store under `kill -9`: a boto3 client PUTs (0 B to 1 MiB)
/// and DELETEs random keys of one bucket while storaged is killed at a
/// random moment and started again. Then every key must hold what its last
/// acknowledged request left, or what the request in flight at the kill
/// would have left; the data read back must be exactly one of the versions
/// written (never torn: storaged checks every block it reads); no key may
/// exist that was never written; and no temporary file may remain.
#[test]
#[ignore = "a long suite: cargo xtask crash-trials"]
fn objects_survive_storaged_killed_anywhere() {
    let trials: u64 = std::env::var("VIRGA_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let Some(openstack) = std::env::var_os("VIRGA_OPENSTACK") else {
        common::missing_tool("the pinned Python clients (VIRGA_OPENSTACK)");
        return;
    };
    let python = std::path::PathBuf::from(openstack).with_file_name("python3");
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/s3_crash.py");
    let c = start_with(None, &controller_config());
    let admin = try_token(&c.addr, "admin", ADMIN_PASSWORD, "admin").unwrap();
    let port = common::free_port();
    let mut s = common::storaged::Storaged::start_with(
        &c,
        "storage-1",
        &format!("s3_listen = \"127.0.0.1:{port}\"\n"),
    );
    common::storaged::wait_registered(&c, &admin);
    let me = common::call(
        &c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &admin), ("X-Subject-Token", &admin)],
        "",
    );
    let user = me.json()["token"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cred = common::call(
        &c,
        "POST",
        &format!("/identity/v3/users/{user}/credentials/OS-EC2"),
        &[
            ("X-Auth-Token", &admin),
            ("Content-Type", "application/json"),
        ],
        "{}",
    );
    assert_eq!(cred.status, 201, "{}", cred.body);
    let cred = cred.json()["credential"].clone();
    let (access, secret) = (
        cred["access"].as_str().unwrap().to_owned(),
        cred["secret"].as_str().unwrap().to_owned(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let wait_s3 = || {
        virga_test_support::wait::until("storaged's S3 API", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
    };
    wait_s3();
    let client = |args: &[&str]| {
        std::process::Command::new(&python)
            .arg(&script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The bucket, made with the client's own call.
    let make = std::process::Command::new(&python)
        .args([
            "-c",
            "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], region_name='us-east-1', config=boto3.session.Config(s3={'addressing_style': 'path'})).create_bucket(Bucket='trials')",
            &endpoint,
            &access,
            &secret,
        ])
        .status()
        .unwrap();
    assert!(make.success());
    // What each key holds (md5 of its data), as last verified.
    let mut expected = virga_test_support::acked::Expected::default();
    let mut rng = Rng(0x5eed_c0de_0000_0003);
    let (mut failed, mut acked_puts, mut acked_dels, mut in_flight) = (0, 0, 0, 0);
    println!(
        "{:>5} {:>8} {:>8} {:>6} {:>6}  findings",
        "trial", "kill_ms", "down_ms", "acked", "flight"
    );
    for trial in 1..=trials {
        let seed = rng.next().to_string();
        let worker = client(&["work", &endpoint, &access, &secret, "trials", &seed]);
        // boto3 takes about half a second to start: kill after it has.
        let kill_ms = 600 + rng.below(1200);
        let down_ms = rng.below(300);
        std::thread::sleep(Duration::from_millis(kill_ms));
        s.kill();
        let out = worker.wait_with_output().unwrap();
        std::thread::sleep(Duration::from_millis(down_ms));
        s.restart();
        wait_s3();
        // What each key may hold now: what its last acknowledged request
        // left, or what the one in flight would have.
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        let round = expected.round(&log);
        acked_puts += round.acked_puts;
        acked_dels += round.acked_dels;
        in_flight += u64::from(round.in_flight);
        let (acked, flight) = (round.acked(), u64::from(round.in_flight));
        let check = client(&["check", &endpoint, &access, &secret, "trials"])
            .wait_with_output()
            .unwrap();
        let mut wrong = match serde_json::from_slice::<BTreeMap<String, String>>(&check.stdout) {
            Ok(seen) => expected.check(&round, seen),
            Err(e) => vec![format!("the check failed: {e}")],
        };
        let tmp: Vec<_> = std::fs::read_dir(s.data_dir.join("objects/tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        if !tmp.is_empty() {
            wrong.push(format!(
                "{} temporary files left after the restart",
                tmp.len()
            ));
        }
        println!(
            "{trial:>5} {kill_ms:>8} {down_ms:>8} {acked:>6} {flight:>6}  {}",
            if wrong.is_empty() {
                "ok".to_owned()
            } else {
                wrong.join("; ")
            }
        );
        if !wrong.is_empty() {
            failed += 1;
        }
    }
    println!(
        "object store crash trials: {trials} run, {acked_puts} PUTs and {acked_dels} DELETEs acknowledged, \
         {in_flight} kills with a request in flight, {} clean, {failed} with findings",
        trials - failed
    );
    assert_eq!(failed, 0, "trials with findings (table above)");
}
