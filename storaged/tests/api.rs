//! The storaged binary as the controller meets it: it registers with a
//! heartbeat (where its API is, its free space), and its volume API does
//! what `storaged_proto` promises, with the token and nothing else.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use virga_test_support::http::send;
use virga_test_support::stub::{Response, StubServer};

const TOKEN: &str = "storaged-test-token-0123456789";
const A: &str = "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c";
const B: &str = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d";
const S: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn it_registers_and_serves_its_volumes_to_the_token_only() {
    // A stand-in controller that records heartbeats.
    let beats: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let seen = beats.clone();
    let controller = StubServer::start(move |req| {
        let auth = req.header("authorization").unwrap_or_default().to_owned();
        seen.lock()
            .unwrap()
            .push((req.path.clone(), auth, req.json()));
        Response::empty(204)
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("storaged.toml");
    std::fs::write(
        &config,
        format!(
            "host_id = \"s1\"\nlisten = \"127.0.0.1:0\"\nnbd_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontroller_url = \"http://127.0.0.1:{}\"\ntoken = \"{TOKEN}\"\navailability_zone = \"zone-a\"\nheartbeat_secs = 1\n",
            dir.path().join("data").display(),
            controller.port
        ),
    )
    .unwrap();
    let _storaged = Killed(
        Command::new(env!("CARGO_BIN_EXE_storaged"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let beat = virga_test_support::wait::until("a heartbeat", Duration::from_secs(10), || {
        beats.lock().unwrap().first().cloned()
    });
    assert_eq!(beat.0, "/internal/v1/storage-hosts/s1");
    assert_eq!(beat.1, format!("Bearer {TOKEN}"));
    assert_eq!(beat.2["availability_zone"], "zone-a");
    assert!(beat.2["free_bytes"].as_u64().unwrap() > 0, "{}", beat.2);
    let url = beat.2["url"].as_str().unwrap().to_owned();
    let addr = url.strip_prefix("http://").unwrap().to_owned();

    let bearer = format!("Bearer {TOKEN}");
    let call = |method: &str, path: &str, body: Value| {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        send(
            addr.as_str(),
            method,
            path,
            &[("Authorization", bearer.as_str())],
            &body,
        )
        .unwrap()
    };
    let volume = format!("/v1/volumes/{A}");
    for auth in [
        vec![],
        vec![("Authorization", "Bearer wrong-token-0123456789")],
    ] {
        let r = send(addr.as_str(), "PUT", &volume, &auth, br#"{"size_gib": 1}"#).unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert!(!dir.path().join(format!("data/volumes/{A}.raw")).exists());

    let r = call("PUT", &volume, json!({"size_gib": 2}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["size_gib"], 2);
    assert_eq!(call("PUT", &volume, json!({"size_gib": 2})).status, 200);
    assert_eq!(call("PUT", &volume, json!({"size_gib": 3})).status, 409);
    let r = call("POST", &format!("{volume}/extend"), json!({"size_gib": 4}));
    assert_eq!((r.status, r.json()["size_gib"].clone()), (200, json!(4)));
    assert_eq!(
        call("POST", &format!("{volume}/extend"), json!({"size_gib": 1})).status,
        409
    );
    assert_eq!(call("GET", &volume, Value::Null).json()["size_gib"], 4);
    assert_eq!(call("GET", "/v1/volumes", Value::Null).json()[0]["id"], A);
    // Exported to its own host as the file; to another, refused.
    let r = call(
        "POST",
        &format!("{volume}/export"),
        json!({"host_id": "s1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let file = std::path::PathBuf::from(r.json()["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 4 << 30);
    // To another host, an NBD export of it, which a real client (qemu-io)
    // reads and writes; its name is the secret that opens it.
    let r = call(
        "POST",
        &format!("{volume}/export"),
        json!({"host_id": "s2"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let nbd = r.json()["nbd"].clone();
    assert_eq!(r.json()["path"], "", "{nbd}");
    let (address, export) = (
        nbd["address"].as_str().unwrap().to_owned(),
        nbd["export"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        call(
            "POST",
            &format!("{volume}/export"),
            json!({"host_id": "s2"})
        )
        .json()["nbd"]["export"],
        export.as_str(),
        "one export per host"
    );
    let qemu_io = |name: &str, commands: &[&str]| {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw", &format!("nbd://{address}/{name}")]);
        for c in commands {
            cmd.args(["-c", c]);
        }
        match cmd.output() {
            Ok(o) => Some(format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(_) => None,
        }
    };
    match qemu_io(
        &export,
        &["write -P 0xab 1M 64k", "flush", "read -P 0xab 1M 64k"],
    ) {
        Some(out) => {
            assert!(
                out.contains("wrote 65536/65536 bytes at offset 1048576"),
                "{out}"
            );
            assert!(
                out.contains("read 65536/65536 bytes at offset 1048576"),
                "{out}"
            );
            assert!(!out.contains("Pattern verification failed"), "{out}");
            // Flushed to the volume's file.
            let mut on_disk = vec![0u8; 65536];
            std::os::unix::fs::FileExt::read_exact_at(
                &std::fs::File::open(&file).unwrap(),
                &mut on_disk,
                1 << 20,
            )
            .unwrap();
            assert!(on_disk.iter().all(|&b| b == 0xab));
            // Past the end, and a name that is no export's.
            let out = qemu_io(&export, &["read 4G 4k"]).unwrap();
            assert!(!out.contains("read 4096/4096"), "{out}");
            let out = qemu_io("0123456789abcdef0123456789abcdef", &["read 0 4k"]).unwrap();
            assert!(!out.contains("read 4096/4096"), "{out}");
            // Unexported: the name opens nothing any more.
            assert_eq!(
                call("DELETE", &format!("{volume}/exports/s2"), Value::Null).status,
                204
            );
            let out = qemu_io(&export, &["read 0 4k"]).unwrap();
            assert!(!out.contains("read 4096/4096"), "{out}");
        }
        None if std::env::var_os("VIRGA_REQUIRE_TOOLS").is_some() => {
            panic!("qemu-io is not installed (qemu-utils)")
        }
        None => eprintln!("skipping the NBD client checks: no qemu-io"),
    }
    // Bad input: an id that is no volume's, a body that is not the call's.
    assert_eq!(
        call("PUT", "/v1/volumes/..%2F..%2Fetc", json!({"size_gib": 1})).status,
        400
    );
    assert_eq!(call("PUT", &volume, json!({"size": 1})).status, 400);
    assert_eq!(call("PUT", &volume, json!({"size_gib": 0})).status, 400);

    // Snapshots, and volumes made from one or from a volume.
    let snapshot = format!("/v1/snapshots/{S}");
    let r = call("PUT", &snapshot, json!({"volume_id": A}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json(), json!({"id": S, "volume_id": A, "size_gib": 4}));
    assert_eq!(call("PUT", &snapshot, json!({"volume_id": A})).status, 200);
    assert_eq!(call("GET", &snapshot, Value::Null).json()["volume_id"], A);
    assert_eq!(call("PUT", &snapshot, json!({"volume_id": B})).status, 409);
    let clone = format!("/v1/volumes/{B}");
    let from_snapshot = json!({"size_gib": 4, "source": {"snapshot": S}});
    let r = call(
        "PUT",
        &clone,
        json!({"size_gib": 2, "source": {"snapshot": S}}),
    );
    assert_eq!(r.status, 400, "smaller than the snapshot: {}", r.body);
    assert_eq!(call("PUT", &clone, from_snapshot.clone()).status, 201);
    assert_eq!(call("PUT", &clone, from_snapshot).status, 200);
    // Where the filesystem shares no blocks (these tests' temporary
    // directories), the clone is an overlay over the snapshot's data.
    let r = call("POST", &format!("{clone}/export"), json!({"host_id": "s1"}));
    let backing = r.json()["backing"].as_array().cloned().unwrap_or_default();
    assert!(backing.is_empty() || backing.len() == 1, "{}", r.body);
    // Over NBD the clone is the guest's view: the snapshot's data under
    // it, its own writes on top, whatever its format here.
    let r = call("POST", &format!("{clone}/export"), json!({"host_id": "s3"}));
    let export = r.json()["nbd"]["export"].as_str().unwrap().to_owned();
    if let Some(out) = qemu_io(
        &export,
        &[
            "read -P 0xab 1M 64k",
            "write -P 0xcd 2M 4k",
            "flush",
            "read -P 0xcd 2M 4k",
            "read -P 0 3M 4k",
        ],
    ) {
        assert_eq!(out.matches("read ").count(), 3, "{out}");
        assert!(!out.contains("Pattern verification failed"), "{out}");
        assert!(out.contains("wrote 4096/4096"), "{out}");
    }
    let r = call(
        "PUT",
        "/v1/volumes/7c6b5a49-3827-4165-9504-f3e2d1c0b9a8",
        json!({"size_gib": 4, "source": {"volume": B}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let missing = json!({"size_gib": 4, "source": {"snapshot": B}});
    assert_eq!(
        call(
            "PUT",
            "/v1/volumes/1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9",
            missing
        )
        .status,
        404
    );
    assert_eq!(
        call(
            "PUT",
            &clone,
            json!({"size_gib": 4, "source": {"backup": S}})
        )
        .status,
        400
    );
    assert_eq!(call("DELETE", &snapshot, Value::Null).status, 204);
    assert_eq!(call("DELETE", &snapshot, Value::Null).status, 204);
    assert_eq!(call("GET", &snapshot, Value::Null).status, 404);
    assert_eq!(call("GET", &clone, Value::Null).json()["size_gib"], 4);

    // From an image: filled in the background (202 meanwhile); a fill that
    // fails (this stand-in controller sends no image) is told once, and
    // leaves nothing.
    let from_image = "/v1/volumes/3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e";
    let body = json!({"size_gib": 1, "source": {"image": S}});
    let r = call("PUT", from_image, body.clone());
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.json()["pending"].as_str().unwrap().contains(S),
        "{}",
        r.body
    );
    let failed =
        virga_test_support::wait::until("the fill to fail", Duration::from_secs(10), || {
            let r = call("PUT", from_image, body.clone());
            (r.status != 202).then_some(r)
        });
    assert_eq!(failed.status, 409, "{}", failed.body);
    assert!(failed.body.contains("image"), "{}", failed.body);
    assert_eq!(call("GET", from_image, Value::Null).status, 404);
    assert!(!std::fs::read_dir(dir.path().join("data/volumes"))
        .unwrap()
        .any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("3c4d5e6f")));
    let r = call(
        "PUT",
        from_image,
        json!({"size_gib": 1, "source": {"image": "../x"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // An image this host holds is the volume's start, without asking the
    // controller (which has none to send): its data, then zeros to the
    // volume's size, nothing copied.
    let mut data = vec![0u8; 3 << 20];
    data[..4].copy_from_slice(b"boot");
    data[(2 << 20)..(2 << 20) + 4].copy_from_slice(b"tail");
    let stored = send(
        addr.as_str(),
        "PUT",
        &format!("/v1/images/{S}?max_bytes={}&disk_format=raw", 1u64 << 30),
        &[("Authorization", bearer.as_str())],
        &data,
    )
    .unwrap();
    assert_eq!(stored.status, 201, "{}", stored.body);
    let r = call("PUT", from_image, body.clone());
    assert_eq!(r.status, 202, "{}", r.body);
    let made = virga_test_support::wait::until("the fill", Duration::from_secs(10), || {
        let r = call("PUT", from_image, body.clone());
        (r.status != 202).then_some(r)
    });
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.json()["size_gib"], 1);
    let data_dir = dir.path().join("data");
    let raw = data_dir.join("volumes/3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e.raw");
    let overlay = data_dir.join("volumes/3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e.qcow2");
    let layer = data_dir.join("layers/3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e.raw");
    let disk = if overlay.exists() {
        // No reflink here: an overlay over the image's own file.
        use std::os::unix::fs::MetadataExt;
        let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(inode(&layer), inode(&data_dir.join(format!("images/{S}"))));
        vmm::virtio::block::disk::Disk::open(&overlay, Some(&layer), &[], true, false).unwrap()
    } else {
        vmm::virtio::block::disk::Disk::open(&raw, None, &[], true, false).unwrap()
    };
    let mut held = vec![1u8; 4 << 20];
    disk.read_at(&mut held, 0).unwrap();
    assert!(held[..3 << 20] == data[..], "the image's bytes");
    assert!(held[3 << 20..].iter().all(|b| *b == 0));
    let mut end = vec![1u8; 4096];
    disk.read_at(&mut end, (1 << 30) - 4096).unwrap();
    assert_eq!(end, vec![0; 4096]);
    assert_eq!(call("DELETE", from_image, Value::Null).status, 204);

    assert_eq!(call("DELETE", &volume, Value::Null).status, 204);
    assert_eq!(call("DELETE", &volume, Value::Null).status, 204);
    assert_eq!(call("GET", &volume, Value::Null).status, 404);
}
