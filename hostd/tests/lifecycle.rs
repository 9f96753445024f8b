//! Instance lifecycles in hostd, each instance run by its actor, against the
//! stand-in VMM (`virga-fake-vmm`), which serves the control socket without
//! KVM: start, pause, stop, reboot, crash, re-adoption after a kill -9, and a
//! delete or hard stop that never waits behind a request in progress.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn action(h: &Hostd, id: &str, action: &str, body: &str) -> (u16, serde_json::Value) {
    api(
        h,
        "POST",
        &format!("/instances/{id}/actions/{action}"),
        body,
    )
}

fn message(body: &serde_json::Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn an_instance_goes_through_its_lifecycle() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    let (status, created) = api(&h, "POST", "/instances", &fake_spec("life-1", &k, 64, ""));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "running");
    assert_eq!(created["starts"], 1);

    let (status, paused) = action(&h, "life-1", "pause", "");
    assert_eq!(
        (status, &paused["state"]),
        (200, &"paused".into()),
        "{paused}"
    );
    assert_eq!(action(&h, "life-1", "pause", "").0, 409);
    assert_eq!(action(&h, "life-1", "resume", "").1["state"], "running");

    let (status, metrics) = api(&h, "GET", "/instances/life-1/metrics", "");
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(metrics["guest_memory_kib"], 64 << 10);
    let (_, console) = call(
        &h,
        "GET",
        "/instances/life-1/console?tail=5",
        Some(TOKEN),
        "",
    );
    assert!(console.contains("fake guest: booted"), "{console}");

    // A graceful stop: the guest powers off when asked.
    let (status, stopped) = action(&h, "life-1", "stop", "");
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "shutoff");
    assert_eq!(stopped["reason"], "stopped: guest powered off");
    assert_eq!(action(&h, "life-1", "stop", "").0, 409);

    assert_eq!(action(&h, "life-1", "start", "").1["state"], "running");
    assert_eq!(action(&h, "life-1", "start", "").0, 409);
    let (status, rebooted) = action(&h, "life-1", "reboot", r#"{"hard": true}"#);
    assert_eq!(status, 200, "{rebooted}");
    assert_eq!(rebooted["state"], "running");
    assert_eq!(rebooted["starts"], 3);

    assert_eq!(api(&h, "DELETE", "/instances/life-1", "").0, 204);
    assert_eq!(api(&h, "GET", "/instances/life-1", "").0, 404);
    let state = h.dir.path().join("state");
    assert!(!state.join("instances/life-1").exists());
    assert!(!state.join("records/life-1.json").exists());
    // The id may be used again at once.
    let (status, again) = api(&h, "POST", "/instances", &fake_spec("life-1", &k, 64, ""));
    assert_eq!(status, 201, "{again}");
    assert_eq!(api(&h, "DELETE", "/instances/life-1", "").0, 204);
}

#[test]
fn a_vmm_that_fails_leaves_its_instance_in_error_with_the_reason() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    let spec = fake_spec("crash-1", &k, 64, "fake.crash_after_ms=300");
    assert_eq!(api(&h, "POST", "/instances", &spec).0, 201);
    let record = wait_state(&h, "crash-1", "error");
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("VMM exited with status 3: guest triple fault (fake)"),
        "{reason}"
    );
    assert!(
        reason.contains("fake guest: booted"),
        "the console's tail: {reason}"
    );
    let (_, metrics) = call(&h, "GET", "/metrics", Some(TOKEN), "");
    assert!(
        metrics.contains("hostd_vmm_exits_total{outcome=\"error\"} 1"),
        "{metrics}"
    );
}

/// A hard stop is not queued behind a graceful stop that waits for a guest
/// ignoring the power button (for a minute here): the VMM goes at once, and
/// the graceful stop ends too.
#[test]
fn a_hard_stop_does_not_wait_behind_a_graceful_stop() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    let spec = fake_spec("deaf-1", &k, 64, "fake.ignore_shutdown");
    assert_eq!(api(&h, "POST", "/instances", &spec).0, 201);
    std::thread::scope(|s| {
        let graceful = s.spawn(|| action(&h, "deaf-1", "stop", r#"{"timeout_ms": 60000}"#));
        wait_state(&h, "deaf-1", "stopping");
        let t = Instant::now();
        let (status, body) = action(&h, "deaf-1", "stop", r#"{"hard": true}"#);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "shutoff");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let (status, body) = graceful.join().unwrap();
        assert_eq!((status, &body["state"]), (200, &"shutoff".into()), "{body}");
    });
    assert_eq!(api(&h, "DELETE", "/instances/deaf-1", "").0, 204);
}

/// A delete never waits behind a stuck operation: while a start waits for a
/// VMM that never answers (hostd would give up after a minute), a delete
/// kills that VMM and removes the instance at once; the start then fails.
#[test]
fn a_delete_does_not_wait_behind_a_stuck_start() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    let spec = fake_spec("stuck-1", &k, 64, "fake.silent");
    std::thread::scope(|s| {
        let create = s.spawn(|| api(&h, "POST", "/instances", &spec));
        wait_state(&h, "stuck-1", "building");
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

/// An instance's queue is bounded: while one start is stuck, eight more
/// requests wait and the rest are refused at once; a delete still goes
/// first, and every waiting request is answered at once.
#[test]
fn a_full_queue_is_refused_and_a_delete_still_wins() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    let spec = fake_spec("busy-1", &k, 64, "fake.silent");
    assert_eq!(api(&h, "POST", "/instances?start=false", &spec).0, 201);
    std::thread::scope(|s| {
        let first = s.spawn(|| action(&h, "busy-1", "start", ""));
        wait_state(&h, "busy-1", "building");
        let more: Vec<_> = (0..12)
            .map(|_| s.spawn(|| action(&h, "busy-1", "start", "")))
            .collect();
        // Eight wait in the queue; four are refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while more.iter().filter(|t| t.is_finished()).count() < 4 {
            assert!(Instant::now() < deadline, "no request was refused");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        assert_eq!(api(&h, "DELETE", "/instances/busy-1", "").0, 204);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let answers: Vec<_> = more.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let full = answers
            .iter()
            .filter(|(status, body)| *status == 409 && message(body).contains("requests waiting"))
            .count();
        assert_eq!(full, 4, "{answers:?}");
        assert!(
            answers.iter().all(|(status, _)| *status >= 400),
            "{answers:?}"
        );
        assert!(first.join().unwrap().0 >= 400);
    });
}

/// hostd killed with SIGKILL comes back with its instances and takes back
/// the VMMs still running; they are then stopped as usual.
#[test]
fn a_restarted_hostd_takes_back_its_running_vmms() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    for id in ["keep-1", "keep-2"] {
        assert_eq!(
            api(&h, "POST", "/instances", &fake_spec(id, &k, 64, "")).0,
            201
        );
    }
    assert_eq!(action(&h, "keep-2", "pause", "").0, 200);
    let pid = api(&h, "GET", "/instances/keep-1", "").1["process"]["pid"].clone();
    let h = restart(h);
    let (_, one) = api(&h, "GET", "/instances/keep-1", "");
    assert_eq!(one["state"], "running", "{one}");
    assert_eq!(one["process"]["pid"], pid);
    assert_eq!(api(&h, "GET", "/instances/keep-2", "").1["state"], "paused");
    let (_, metrics) = call(&h, "GET", "/metrics", Some(TOKEN), "");
    assert!(metrics.contains("hostd_vmm_adopted_total 2"), "{metrics}");
    let (status, stopped) = action(&h, "keep-1", "stop", "");
    assert_eq!(
        (status, &stopped["state"]),
        (200, &"shutoff".into()),
        "{stopped}"
    );
    for id in ["keep-1", "keep-2"] {
        assert_eq!(api(&h, "DELETE", &format!("/instances/{id}"), "").0, 204);
    }
}

/// Memory is admitted atomically across instances: of two starts racing for
/// room for one, one is refused (409) while the other's VMM runs.
#[test]
fn racing_starts_never_overcommit_memory() {
    let host_mib = vmm::config::host_memory_mib().unwrap();
    let h = start_with_fake_vmm(&format!("reserved_memory_mib = {}\n", host_mib - 1000));
    let k = kernel(h.dir.path());
    for id in ["race-a", "race-b"] {
        let (status, body) = api(
            &h,
            "POST",
            "/instances?start=false",
            &fake_spec(id, &k, 600, "fake.silent"),
        );
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

/// An instance being prepared holds no memory yet, and its own preparation
/// is not counted against its start: one that takes all the host offers
/// runs; the next, created without waiting, ends in ERROR saying why.
#[test]
fn an_instance_may_take_all_the_memory_the_host_offers() {
    let host_mib = vmm::config::host_memory_mib().unwrap();
    let h = start_with_fake_vmm(&format!("reserved_memory_mib = {}\n", host_mib - 1000));
    let k = kernel(h.dir.path());
    let (status, body) = api(&h, "POST", "/instances", &fake_spec("all-1", &k, 1000, ""));
    assert_eq!((status, &body["state"]), (201, &"running".into()), "{body}");
    let (status, body) = api(
        &h,
        "POST",
        "/instances?wait=false",
        &fake_spec("all-2", &k, 1000, ""),
    );
    assert_eq!(
        (status, &body["state"]),
        (202, &"building".into()),
        "{body}"
    );
    let record = wait_state(&h, "all-2", "error");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("not enough free memory: 1000 MiB asked, 0 MiB free"),
        "{record}"
    );
    assert_eq!(api(&h, "DELETE", "/instances/all-1", "").0, 204);
    let (status, body) = api(&h, "POST", "/instances/all-2/actions/start", "");
    assert_eq!((status, &body["state"]), (200, &"running".into()), "{body}");
    assert_eq!(api(&h, "DELETE", "/instances/all-2", "").0, 204);
}

/// What is typed on the console reaches the VMM (the stand-in echoes it to
/// the console as a guest's tty does); typing on an instance without a VMM,
/// or more than one pipe write at once, is refused.
#[test]
fn typing_on_the_serial_console() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    let (status, body) = api(
        &h,
        "POST",
        "/instances?start=false",
        &fake_spec("tty-1", &k, 64, ""),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&h, "POST", "/instances/tty-1/console", Some(TOKEN), "ls\n");
    assert_eq!(status, 409, "no VMM yet: {body}");
    assert_eq!(api(&h, "POST", "/instances/tty-1/actions/start", "").0, 200);
    for typed in ["root\n", "echo hi\n"] {
        let (status, body) = call(&h, "POST", "/instances/tty-1/console", Some(TOKEN), typed);
        assert_eq!(status, 204, "{body}");
    }
    virga_test_support::wait::until("the echo", Duration::from_secs(10), || {
        let (_, console) = call(
            &h,
            "GET",
            "/instances/tty-1/console?tail=10",
            Some(TOKEN),
            "",
        );
        console.contains("root\necho hi\n").then_some(())
    });
    let (status, _) = call(
        &h,
        "POST",
        "/instances/tty-1/console",
        Some(TOKEN),
        &"x".repeat(4097),
    );
    assert_eq!(status, 400);
    assert_eq!(
        call(&h, "POST", "/instances/tty-1/console", None, "ls\n").0,
        401
    );
    assert_eq!(api(&h, "DELETE", "/instances/tty-1", "").0, 204);
    assert_eq!(
        call(&h, "POST", "/instances/tty-1/console", Some(TOKEN), "ls\n").0,
        404
    );
}

/// NICs come and go while an instance runs (plugged into the VMM on a tap
/// hostd opens, unplugged once the guest lets go) and while it is stopped
/// (its spec only); a start brings every NIC it has then.
/// A server booting from a volume on another host: hostd connects the
/// volume's NBD export first; one that cannot be reached, or a request
/// that gives the volume a path of its own too, is refused and leaves
/// nothing behind.
#[test]
fn a_root_volume_on_another_host_is_connected_first_or_refused() {
    let h = start_with_fake_vmm("");
    let spec = |root: &str, nbd: &str| {
        format!(
            r#"{{"id": "rv-1", "vcpus": 1, "memory_mib": 64, "root_volume": {root}, "root_volume_nbd": {nbd}}}"#
        )
    };
    let root = r#"{"id": "7f5e1b9a0c3d4e2f8a6b5c4d3e2f1a0b", "path": "", "serial": "7f5e1b9a-0c3d-4e2f-8"}"#;
    for (body, status, why) in [
        (
            spec(root, r#"{"address": "127.0.0.1:1", "export": "x"}"#),
            500,
            "connecting to 127.0.0.1:1",
        ),
        (
            spec(
                r#"{"id": "d1", "path": "/tmp/v.raw"}"#,
                r#"{"address": "127.0.0.1:1", "export": "x"}"#,
            ),
            400,
            "no path, base or layers here",
        ),
        (spec(root, r#"{"address": "127.0.0.1:1"}"#), 400, "export"),
        (
            r#"{"id": "rv-1", "vcpus": 1, "memory_mib": 64, "kernel": "/k", "root_volume_nbd": {"address": "a:1", "export": "x"}}"#
                .to_owned(),
            400,
            "only with root_volume",
        ),
    ] {
        let (got, answer) = api(&h, "POST", "/instances", &body);
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer.to_string().contains(why), "{body}: {answer}");
        assert_eq!(api(&h, "GET", "/instances/rv-1", "").0, 404, "nothing kept");
    }
}

/// A volume snapshotted in use: its file became the snapshot's layer and
/// the disk moves onto a fresh overlay over it, in the running VMM and in
/// the spec every later start uses; a start from a spec the move has not
/// reached yet waits rather than boot the wrong layers.
#[test]
fn a_disk_moves_onto_new_files_running_or_stopped() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    assert_eq!(
        api(&h, "POST", "/instances", &fake_spec("mv-1", &k, 64, "")).0,
        201
    );
    let volume = h.dir.path().join("volume.raw");
    std::fs::write(&volume, vec![0u8; 1 << 20]).unwrap();
    let dev = "6e4f0a8f7d2c5f1b0a3e9c8d7b6f5e4d";
    let disk = format!(r#"{{"id": "{dev}", "path": "{}"}}"#, volume.display());
    assert_eq!(api(&h, "POST", "/instances/mv-1/disks", &disk).0, 200);
    // storaged's freeze: the file becomes the layer, an overlay over it.
    let layer = h.dir.path().join("snap-1.raw");
    std::fs::hard_link(&volume, &layer).unwrap();
    std::fs::remove_file(&volume).unwrap();
    let overlay = h.dir.path().join("volume.qcow2");
    vmm::virtio::block::qcow2::create_overlay(&overlay, "snap-1", 1 << 20).unwrap();
    let files = |path: &std::path::Path, base: &std::path::Path| {
        format!(
            r#"{{"path": "{}", "base": "{}"}}"#,
            path.display(),
            base.display()
        )
    };
    let put = |dev: &str, body: &str| {
        api(
            &h,
            "PUT",
            &format!("/instances/mv-1/disks/{dev}/files"),
            body,
        )
    };
    let (status, moved) = put(dev, &files(&overlay, &layer));
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["disks"][0]["path"], overlay.display().to_string());
    assert_eq!(moved["disks"][0]["base"], layer.display().to_string());
    let noted = h.dir.path().join("state/instances/mv-1/fake-moved");
    let noted = std::fs::read_to_string(&noted).unwrap();
    assert!(
        noted.starts_with(&format!("{dev} ")),
        "the VMM moved: {noted}"
    );
    // Bad requests change nothing.
    for (dev, body, status, why) in [
        ("nope", files(&overlay, &layer), 404, "no disk nope"),
        (
            dev,
            r#"{"path": "relative.qcow2"}"#.to_owned(),
            400,
            "absolute",
        ),
        (
            dev,
            format!(r#"{{"path": "{}", "layers": ["/a"]}}"#, overlay.display()),
            400,
            "over a base",
        ),
        (
            dev,
            r#"{"path": "/x", "colour": "red"}"#.to_owned(),
            400,
            "colour",
        ),
        (
            dev,
            files(std::path::Path::new("/nonexistent/v.qcow2"), &layer),
            400,
            "/nonexistent",
        ),
    ] {
        let (got, body) = put(dev, &body);
        assert_eq!(got, status, "{body}");
        assert!(message(&body).contains(why), "{body}");
    }
    let (_, shown) = api(&h, "GET", "/instances/mv-1", "");
    assert_eq!(shown["disks"][0]["path"], overlay.display().to_string());

    // Stopped, then snapshotted again: the spec still names the first
    // layer under an overlay that now lies over the second. The start
    // waits (503) until the move comes; then it boots.
    assert_eq!(action(&h, "mv-1", "stop", "").0, 200);
    let layer2 = h.dir.path().join("snap-2.qcow2");
    std::fs::rename(&overlay, &layer2).unwrap();
    vmm::virtio::block::qcow2::create_layer(&overlay, "snap-2", "qcow2", 1 << 20).unwrap();
    let (status, body) = action(&h, "mv-1", "start", "");
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains("lies over snap-2"), "{body}");
    let both = format!(
        r#"{{"path": "{}", "layers": ["{}"], "base": "{}"}}"#,
        overlay.display(),
        layer2.display(),
        layer.display()
    );
    let (status, moved) = put(dev, &both);
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["state"], "shutoff");
    let (status, started) = action(&h, "mv-1", "start", "");
    assert_eq!(status, 200, "{started}");
    assert_eq!(
        started["disks"][0]["layers"][0],
        layer2.display().to_string()
    );

    // Snapshotted again and moved while stopped; then the storage host
    // merges snap-2's layer into snap-3's (snap-2 deleted): snap-3 lies
    // over snap-1 and snap-2's file is gone. The start drops it from the
    // spec, which names nothing new.
    assert_eq!(action(&h, "mv-1", "stop", "").0, 200);
    let layer3 = h.dir.path().join("snap-3.qcow2");
    std::fs::rename(&overlay, &layer3).unwrap();
    vmm::virtio::block::qcow2::create_layer(&overlay, "snap-3", "qcow2", 1 << 20).unwrap();
    let three = format!(
        r#"{{"path": "{}", "layers": ["{}", "{}"], "base": "{}"}}"#,
        overlay.display(),
        layer3.display(),
        layer2.display(),
        layer.display()
    );
    assert_eq!(put(dev, &three).0, 200);
    let merged = h.dir.path().join("merged.qcow2");
    vmm::virtio::block::qcow2::create_layer(&merged, "snap-1", "raw", 1 << 20).unwrap();
    std::fs::rename(&merged, &layer3).unwrap();
    std::fs::remove_file(&layer2).unwrap();
    let (status, started) = action(&h, "mv-1", "start", "");
    assert_eq!(status, 200, "{started}");
    let disk = &started["disks"][0];
    assert_eq!(
        disk["layers"],
        serde_json::json!([layer3.display().to_string()])
    );
    assert_eq!(disk["base"], layer.display().to_string());
    let (_, shown) = api(&h, "GET", "/instances/mv-1", "");
    assert_eq!(shown["disks"][0]["layers"].as_array().unwrap().len(), 1);
}

#[test]
fn disks_are_attached_and_detached_running_or_stopped() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    assert_eq!(
        api(&h, "POST", "/instances", &fake_spec("vol-1", &k, 64, "")).0,
        201
    );
    // A volume: a file the storage host made.
    let volume = h.dir.path().join("volume.raw");
    std::fs::File::create(&volume)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let dev = "5d3f9a7e6c1b4e0a9f2d8b7c6a5e4d3c";
    let disk = format!(
        r#"{{"id": "{dev}", "path": "{}", "serial": "5d3f9a7e-6c1b-4e0a-9"}}"#,
        volume.display()
    );
    let (status, added) = api(&h, "POST", "/instances/vol-1/disks", &disk);
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["state"], "running");
    assert_eq!(added["disks"][0]["id"], dev);
    assert_eq!(api(&h, "POST", "/instances/vol-1/disks", &disk).0, 409);
    for (bad, why) in [
        (r#"{"path": "/tmp/x"}"#.to_owned(), "an id"),
        (r#"{"id": "a.b", "path": "/tmp/x"}"#.to_owned(), "disks.id"),
        (r#"{"id": "d2", "path": "relative"}"#.to_owned(), "absolute"),
        (
            r#"{"id": "d3", "path": "/nonexistent/volume"}"#.to_owned(),
            "/nonexistent",
        ),
    ] {
        let (status, body) = api(&h, "POST", "/instances/vol-1/disks", &bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(message(&body).contains(why), "{bad}: {body}");
    }
    // A volume made from a snapshot: an overlay over the snapshot's layer,
    // both sent to the VMM, the layer read-only.
    let layer = h.dir.path().join("layer.raw");
    std::fs::write(&layer, vec![0u8; 1 << 20]).unwrap();
    let overlay = h.dir.path().join("clone.qcow2");
    vmm::virtio::block::qcow2::create_overlay(&overlay, "layer", 1 << 20).unwrap();
    let clone = |base: &str| {
        format!(
            r#"{{"id": "clone", "path": "{}", "base": "{base}"}}"#,
            overlay.display()
        )
    };
    for (bad, why) in [
        (clone("layer.raw"), "absolute"),
        (clone("/nonexistent/layer"), "/nonexistent"),
    ] {
        let (status, body) = api(&h, "POST", "/instances/vol-1/disks", &bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(message(&body).contains(why), "{bad}: {body}");
    }
    let (status, added) = api(
        &h,
        "POST",
        "/instances/vol-1/disks",
        &clone(&layer.display().to_string()),
    );
    assert_eq!(status, 200, "{added}");
    // A plug hostd was killed before recording: the VMM has the disk, the
    // spec does not. Attaching it again works: the leftover goes first.
    let socket = h.dir.path().join("state/instances/vol-1/api.sock");
    let file = std::fs::File::open(&volume).unwrap();
    let plugged = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(vmm::api_client::request_with_fds(
            &socket,
            hyper::Method::POST,
            "/vm/disks",
            Some(r#"{"id": "left", "fds": [0]}"#),
            &[std::os::fd::AsFd::as_fd(&file)],
        ))
        .unwrap();
    assert_eq!(plugged.0, 201, "{}", String::from_utf8_lossy(&plugged.1));
    let left = format!(r#"{{"id": "left", "path": "{}"}}"#, volume.display());
    let (status, added) = api(&h, "POST", "/instances/vol-1/disks", &left);
    assert_eq!(status, 200, "{added}");
    assert_eq!(api(&h, "DELETE", "/instances/vol-1/disks/left", "").0, 200);
    // A volume on another host: its NBD export, which hostd connects (here
    // nothing listens there: a clear error, and nothing kept).
    for (bad, status, why) in [
        (
            r#"{"id": "r1", "nbd": {"address": "127.0.0.1:1", "export": "x"}}"#,
            500,
            "connecting to 127.0.0.1:1",
        ),
        (
            r#"{"id": "r1", "path": "/x", "nbd": {"address": "127.0.0.1:1", "export": "x"}}"#,
            400,
            "no path",
        ),
        (
            r#"{"id": "r1", "nbd": {"address": "127.0.0.1:1"}}"#,
            400,
            "nbd",
        ),
    ] {
        let (got, body) = api(&h, "POST", "/instances/vol-1/disks", bad);
        assert_eq!(got, status, "{bad}: {body}");
        assert!(message(&body).contains(why), "{bad}: {body}");
    }
    let (_, shown) = api(&h, "GET", "/instances/vol-1", "");
    assert!(!shown.to_string().contains("\"r1\""), "{shown}");
    // Grown while the guest runs: by its VMM, which tells the guest.
    let grow = |dev: &str, bytes: u64| {
        api(
            &h,
            "PUT",
            &format!("/instances/vol-1/disks/{dev}/size"),
            &format!(r#"{{"bytes": {bytes}}}"#),
        )
    };
    assert_eq!(grow(dev, 2 << 20).0, 200);
    let grown = h.dir.path().join("state/instances/vol-1/fake-grown");
    assert_eq!(
        std::fs::read_to_string(&grown).unwrap(),
        format!("{dev} {}\n", 2 << 20)
    );
    assert_eq!(grow("nope", 2 << 20).0, 404);
    assert_eq!(grow(dev, 1000).0, 400);
    assert_eq!(api(&h, "DELETE", "/instances/vol-1/disks/clone", "").0, 200);

    // A VMM whose socket refuses (restarting): 503, worth trying again,
    // and the disk stays.
    let path = format!("/instances/vol-1/disks/{dev}");
    let away = socket.with_extension("away");
    std::fs::rename(&socket, &away).unwrap();
    let (status, body) = api(&h, "DELETE", &path, "");
    std::fs::rename(&away, &socket).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains("try again"), "{body}");
    let (status, removed) = api(&h, "DELETE", &path, "");
    assert_eq!(status, 200, "{removed}");
    assert_eq!(
        removed.get("disks").cloned().unwrap_or_default(),
        serde_json::json!(null)
    );
    assert_eq!(api(&h, "DELETE", &path, "").0, 404);

    // Stopped: only the spec changes; the next start has the disk.
    assert_eq!(action(&h, "vol-1", "stop", "").1["state"], "shutoff");
    let (status, added) = api(&h, "POST", "/instances/vol-1/disks", &disk);
    assert_eq!(
        (status, &added["state"]),
        (200, &"shutoff".into()),
        "{added}"
    );
    // Stopped: the file grows here (never shrinks).
    assert_eq!(grow(dev, 4 << 20).0, 200);
    assert_eq!(std::fs::metadata(&volume).unwrap().len(), 4 << 20);
    let (status, body) = grow(dev, 3 << 20);
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("cannot shrink"), "{body}");
    assert_eq!(action(&h, "vol-1", "start", "").1["state"], "running");
    let config =
        std::fs::read_to_string(h.dir.path().join("state/instances/vol-1/vmm.json")).unwrap();
    assert!(config.contains(&format!("\"id\": \"{dev}\"")), "{config}");
    assert!(config.contains(&volume.display().to_string()), "{config}");
    assert_eq!(api(&h, "DELETE", "/instances/vol-1", "").0, 204);
}

#[test]
fn nics_are_added_and_removed_running_or_stopped() {
    let h = start_with_fake_vmm("");
    let k = kernel(h.dir.path());
    assert_eq!(
        api(&h, "POST", "/instances", &fake_spec("nic-1", &k, 64, "")).0,
        201
    );
    let tap = format!("vhp{}", std::process::id() % 100_000);
    let nic = format!(r#"{{"tap": "{tap}", "mac": "fa:16:3e:00:00:01", "mtu": 1450}}"#);
    let (status, added) = api(&h, "POST", "/instances/nic-1/nics", &nic);
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["state"], "running");
    assert_eq!(added["nics"][0]["tap"], tap.as_str());
    let (status, again) = api(&h, "POST", "/instances/nic-1/nics", &nic);
    assert_eq!(status, 409, "{again}");
    let (status, bad) = api(&h, "POST", "/instances/nic-1/nics", r#"{"tap": "a/b"}"#);
    assert_eq!(status, 400, "{bad}");
    assert!(message(&bad).contains("nics.tap"), "{bad}");
    // A name the VMM cannot take as the device's (so it could never be
    // unplugged by it): refused while the guest runs.
    let (status, bad) = api(&h, "POST", "/instances/nic-1/nics", r#"{"tap": "vhp.1"}"#);
    assert_eq!(status, 400, "{bad}");
    assert!(message(&bad).contains("nics.tap"), "{bad}");

    let path = format!("/instances/nic-1/nics/{tap}");
    let (status, removed) = api(&h, "DELETE", &path, "");
    assert_eq!(status, 200, "{removed}");
    assert_eq!(
        removed.get("nics").cloned().unwrap_or_default(),
        serde_json::json!(null)
    );
    assert_eq!(api(&h, "DELETE", &path, "").0, 404);

    // Stopped: only the spec changes; the next start has the NIC.
    assert_eq!(action(&h, "nic-1", "stop", "").1["state"], "shutoff");
    let (status, added) = api(&h, "POST", "/instances/nic-1/nics", &nic);
    assert_eq!(
        (status, &added["state"]),
        (200, &"shutoff".into()),
        "{added}"
    );
    assert_eq!(action(&h, "nic-1", "start", "").1["state"], "running");
    let config =
        std::fs::read_to_string(h.dir.path().join("state/instances/nic-1/vmm.json")).unwrap();
    assert!(config.contains(&format!("\"id\": \"{tap}\"")), "{config}");
    assert_eq!(api(&h, "DELETE", "/instances/nic-1", "").0, 204);
}
