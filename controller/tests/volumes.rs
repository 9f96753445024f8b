//! Cinder v3 volumes against the controller and a real storaged: volumes
//! made, grown and removed on the storage host (as sparse files), Cinder's
//! statuses and errors, quotas, another project's volumes out of reach,
//! and the reconciler finishing what a storaged that was down left undone.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::hostd::controller_config;
use common::storaged::{wait_registered, Storaged};
use common::{admin_token, call, second_project, start_with, token, Controller, Reply};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// A call at the base microversion (3.0, what a client gets asking none).
fn v3(c: &Controller, method: &str, path: &str, token: &str, body: Value) -> Reply {
    v3_at(c, "volume 3.0", method, path, token, body)
}

fn create(c: &Controller, token: &str, volume: Value) -> Reply {
    v3(c, "POST", "/volumes", token, json!({ "volume": volume }))
}

/// Polls the volume until its status is `want`; returns it.
fn wait_status(c: &Controller, token: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = v3(c, "GET", &format!("/volumes/{id}"), token, Value::Null);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json()["volume"].clone();
        if v["status"] == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "volume {id} stayed {}",
            v["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_gone(c: &Controller, token: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while v3(c, "GET", &format!("/volumes/{id}"), token, Value::Null).status != 404 {
        assert!(Instant::now() < deadline, "volume {id} was never deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn file_size(path: &std::path::Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[test]
fn volumes_are_made_grown_and_removed_on_the_storage_host() {
    made_grown_and_removed(&start_with(None, &controller_config()));
}

#[test]
fn volumes_are_made_grown_and_removed_on_postgres_too() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    made_grown_and_removed(&start_with(Some(pg.url()), &controller_config()));
}

fn made_grown_and_removed(c: &Controller) {
    let admin = admin_token(c);
    let s = Storaged::start(c, "storage-1");
    wait_registered(c, &admin);

    // Discovery names only what is served.
    let r = call(c, "GET", "/volume/", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["versions"][0]["version"], "3.44");
    let r = v3(c, "GET", "/types", &admin, Value::Null);
    assert_eq!(r.json()["volume_types"][0]["name"], "__DEFAULT__");

    let r = create(
        c,
        &admin,
        json!({"size": 1, "name": "data1", "description": "d", "metadata": {"k": "v"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let made = r.json()["volume"].clone();
    assert_eq!(made["status"], "creating");
    assert_eq!(made["bootable"], "false");
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(
        made.get("os-vol-tenant-attr:tenant_id").is_none(),
        "extensions' attributes are for show and detail, as Cinder's"
    );
    let v = wait_status(c, &admin, &id, "available");
    let project = v["os-vol-tenant-attr:tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(v["size"], 1);
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(v["os-vol-host-attr:host"], "storage-1@file#file");
    // The storage host holds it: a thin file of the volume's size.
    let file = s.volume_file(&id);
    assert_eq!(file_size(&file), Some(GIB));

    // The project may be in the URL, as most clients put it.
    let r = v3(
        c,
        "GET",
        &format!("/{project}/volumes/detail?name=data1"),
        &admin,
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["volumes"][0]["id"], id.as_str());
    let r = v3(c, "GET", "/volumes", &admin, Value::Null);
    assert_eq!(r.json()["volumes"][0]["name"], "data1");
    assert!(r.json()["volumes"][0].get("size").is_none(), "a summary");

    // Grown online on the host; shrinking is refused.
    let r = v3(
        c,
        "POST",
        &format!("/volumes/{id}/action"),
        &admin,
        json!({"os-extend": {"new_size": 3}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v = wait_status(c, &admin, &id, "available");
    assert_eq!(v["size"], 3);
    assert_eq!(file_size(&file), Some(3 * GIB));
    let r = v3(
        c,
        "POST",
        &format!("/volumes/{id}/action"),
        &admin,
        json!({"os-extend": {"new_size": 2}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("must be greater than current size"),
        "{}",
        r.body
    );

    let r = v3(
        c,
        "PUT",
        &format!("/volumes/{id}"),
        &admin,
        json!({"volume": {"name": "renamed"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["volume"]["name"], "renamed");
    assert_eq!(r.json()["volume"]["description"], "d");

    let r = v3(c, "DELETE", &format!("/volumes/{id}"), &admin, Value::Null);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_gone(c, &admin, &id);
    assert_eq!(file_size(&file), None, "the data is gone from the host");
}

#[test]
fn bad_requests_get_cinders_errors_and_leave_nothing() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let _s = Storaged::start(&c, "storage-1");
    wait_registered(&c, &admin);

    for (body, want) in [
        (json!({"size": 0}), "size"),
        (json!({"size": "many"}), "size"),
        (json!({"name": "no size"}), "size"),
        (json!({"size": 1, "volume_type": "gold"}), "gold"),
        (json!({"size": 1, "availability_zone": "mars"}), "mars"),
        (json!({"size": 1, "snapshot_id": "x"}), "Snapshot x"),
        (json!({"size": 1, "source_volid": "x"}), "Volume x"),
        (json!({"snapshot_id": "x", "source_volid": "y"}), "not both"),
        (json!({"size": 1, "imageRef": "x"}), "Image x"),
        (json!({"size": 1, "metadata": {"k": 1}}), "metadata"),
    ] {
        let r = create(&c, &admin, body.clone());
        assert!(
            r.status == 400 || r.status == 404,
            "{body}: {} {}",
            r.status,
            r.body
        );
        assert!(r.body.contains(want), "{body}: {}", r.body);
    }
    let r = v3(&c, "POST", "/volumes", &admin, json!({"size": 1}));
    assert_eq!(r.status, 400, "no `volume` object: {}", r.body);
    assert!(r.json()["badRequest"]["message"].is_string(), "{}", r.body);
    // Over the GiB quota (1,000), then over the count (10).
    let r = create(&c, &admin, json!({"size": 1001}));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("gigabytes quota"), "{}", r.body);
    let r = v3(&c, "GET", "/volumes", &admin, Value::Null);
    assert_eq!(r.json()["volumes"], json!([]), "nothing half-made");
    let mut ids = Vec::new();
    for _ in 0..10 {
        let r = create(&c, &admin, json!({"size": 1}));
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.json()["volume"]["id"].as_str().unwrap().to_owned());
    }
    let r = create(&c, &admin, json!({"size": 1}));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("VolumeLimitExceeded"), "{}", r.body);
    let r = v3(&c, "GET", "/limits", &admin, Value::Null);
    assert_eq!(r.json()["limits"]["absolute"]["totalVolumesUsed"], 10);

    // Another project sees none of them and cannot touch them.
    second_project(&c);
    let bob = token(&c, "bob", "bob-password", "other");
    let r = v3(&c, "GET", "/volumes/detail", &bob, Value::Null);
    assert_eq!(r.json()["volumes"], json!([]));
    for (method, path, body) in [
        ("GET", format!("/volumes/{}", ids[0]), Value::Null),
        ("DELETE", format!("/volumes/{}", ids[0]), Value::Null),
        (
            "POST",
            format!("/volumes/{}/action", ids[0]),
            json!({"os-extend": {"new_size": 5}}),
        ),
    ] {
        let r = v3(&c, method, &path, &bob, body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert!(r.json()["itemNotFound"]["message"].is_string());
    }
    // Nor reach the admin's project by putting it in the URL.
    let admin_project = v3(
        &c,
        "GET",
        &format!("/volumes/{}", ids[0]),
        &admin,
        Value::Null,
    )
    .json()["volume"]["os-vol-tenant-attr:tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = v3(
        &c,
        "GET",
        &format!("/{admin_project}/volumes"),
        &bob,
        Value::Null,
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // Each, once available, deleted and gone.
    for id in &ids {
        wait_status(&c, &admin, id, "available");
        assert_eq!(
            v3(&c, "DELETE", &format!("/volumes/{id}"), &admin, Value::Null).status,
            202
        );
    }
    for id in &ids {
        wait_gone(&c, &admin, id);
    }
}

fn snapshot(c: &Controller, token: &str, body: Value) -> Reply {
    v3(c, "POST", "/snapshots", token, json!({ "snapshot": body }))
}

fn wait_snapshot(c: &Controller, token: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = v3(c, "GET", &format!("/snapshots/{id}"), token, Value::Null);
        if want == "gone" && r.status == 404 {
            return Value::Null;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        let s = r.json()["snapshot"].clone();
        if s["status"] == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {id} stayed {}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The files under a storaged's data directory `sub` (volumes, layers, ...).
fn files_in(s: &Storaged, sub: &str) -> usize {
    std::fs::read_dir(s.data_dir.join(sub)).map_or(0, |d| d.count())
}

#[test]
fn snapshots_and_volumes_made_from_them_or_from_volumes() {
    snapshots_and_clones(&start_with(None, &controller_config()));
}

#[test]
fn snapshots_and_volumes_made_from_them_on_postgres_too() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    snapshots_and_clones(&start_with(Some(pg.url()), &controller_config()));
}

fn snapshots_and_clones(c: &Controller) {
    let admin = admin_token(c);
    let s = Storaged::start(c, "storage-1");
    wait_registered(c, &admin);
    let r = create(c, &admin, json!({"size": 2, "name": "data1"}));
    let vol = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(c, &admin, &vol, "available");

    // A snapshot, as the openstack CLI asks for one (force only below 3.66).
    let r = snapshot(
        c,
        &admin,
        json!({"volume_id": vol, "name": "snap1", "description": "d", "force": false, "metadata": {"k": "v"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r.json()["snapshot"].clone();
    assert_eq!(snap["status"], "creating");
    assert_eq!(snap["size"], 2);
    let sid = snap["id"].as_str().unwrap().to_owned();
    let shown = wait_snapshot(c, &admin, &sid, "available");
    assert_eq!(shown["os-extended-snapshot-attributes:progress"], "100%");
    assert_eq!(shown["metadata"], json!({"k": "v"}));
    assert_eq!(shown["volume_id"], vol.as_str());
    for path in [
        format!("/snapshots?volume_id={vol}"),
        "/snapshots/detail?name=snap1".to_owned(),
    ] {
        let r = v3(c, "GET", &path, &admin, Value::Null);
        assert_eq!(
            r.json()["snapshots"][0]["id"],
            sid.as_str(),
            "{path}: {}",
            r.body
        );
    }
    let r = v3(
        c,
        "PUT",
        &format!("/snapshots/{sid}"),
        &admin,
        json!({"snapshot": {"name": "snap-1"}}),
    );
    assert_eq!(
        (r.status, &r.json()["snapshot"]["name"]),
        (200, &json!("snap-1"))
    );
    let limits = v3(c, "GET", "/limits", &admin, Value::Null).json();
    assert_eq!(limits["limits"]["absolute"]["totalSnapshotsUsed"], 1);
    // Snapshots count against the GiB quota, as Cinder counts them.
    assert_eq!(limits["limits"]["absolute"]["totalGigabytesUsed"], 4);

    // Volumes from the snapshot (its size when none is given) and from the
    // volume; neither smaller than its source.
    let r = create(c, &admin, json!({"size": 1, "snapshot_id": sid}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("cannot be smaller"), "{}", r.body);
    let r = create(c, &admin, json!({"snapshot_id": sid, "name": "from-snap"}));
    assert_eq!(r.status, 202, "{}", r.body);
    let from_snap = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    let v = wait_status(c, &admin, &from_snap, "available");
    assert_eq!((&v["size"], &v["snapshot_id"]), (&json!(2), &json!(sid)));
    assert_eq!(v["os-vol-host-attr:host"], "storage-1@file#file");
    let r = create(c, &admin, json!({"size": 3, "source_volid": vol}));
    assert_eq!(r.status, 202, "{}", r.body);
    let clone = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    let v = wait_status(c, &admin, &clone, "available");
    assert_eq!((&v["size"], &v["source_volid"]), (&json!(3), &json!(vol)));

    // Another project sees none of it and makes nothing from it.
    second_project(c);
    let bob = token(c, "bob", "bob-password", "other");
    assert_eq!(
        v3(c, "GET", &format!("/snapshots/{sid}"), &bob, Value::Null).status,
        404
    );
    assert_eq!(
        v3(c, "GET", "/snapshots", &bob, Value::Null).json()["snapshots"],
        json!([])
    );
    assert_eq!(create(c, &bob, json!({"snapshot_id": sid})).status, 404);
    assert_eq!(
        create(c, &bob, json!({"size": 2, "source_volid": vol})).status,
        404
    );
    assert_eq!(snapshot(c, &bob, json!({"volume_id": vol})).status, 404);
    assert_eq!(
        v3(c, "DELETE", &format!("/snapshots/{sid}"), &bob, Value::Null).status,
        404
    );
    // Bad requests.
    for body in [
        json!({}),
        json!({"volume_id": vol, "force": "maybe"}),
        json!({"volume_id": 7}),
    ] {
        let r = snapshot(c, &admin, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }

    // A volume with snapshots is kept unless its snapshots go with it.
    let r = v3(c, "DELETE", &format!("/volumes/{vol}"), &admin, Value::Null);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("have snapshots"), "{}", r.body);
    let r = v3(
        c,
        "DELETE",
        &format!("/volumes/{vol}?cascade=true"),
        &admin,
        Value::Null,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_gone(c, &admin, &vol);
    wait_snapshot(c, &admin, &sid, "gone");
    // What was made from them stays whole.
    for id in [&from_snap, &clone] {
        wait_status(c, &admin, id, "available");
    }
    assert!(files_in(&s, "layers") > 0, "the clones' data is kept");
    for id in [&from_snap, &clone] {
        assert_eq!(
            v3(c, "DELETE", &format!("/volumes/{id}"), &admin, Value::Null).status,
            202
        );
        wait_gone(c, &admin, id);
    }
    assert_eq!(
        (
            files_in(&s, "volumes"),
            files_in(&s, "layers"),
            files_in(&s, "snapshots")
        ),
        (0, 0, 0),
        "nothing left on the storage host"
    );

    // The snapshot quota (10).
    let r = create(c, &admin, json!({"size": 1}));
    let vol = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(c, &admin, &vol, "available");
    for i in 0..10 {
        let r = snapshot(c, &admin, json!({"volume_id": vol}));
        assert_eq!(r.status, 202, "{i}: {}", r.body);
    }
    let r = snapshot(c, &admin, json!({"volume_id": vol}));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("SnapshotLimitExceeded"), "{}", r.body);
}

/// Makes an image of `format` holding `data`; its id.
fn image(c: &Controller, token: &str, format: &str, extra: Value, data: &[u8]) -> String {
    let mut body = json!({"name": "img", "disk_format": format, "container_format": "bare"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let r = call(
        c,
        "POST",
        "/image/v2/images",
        &[
            ("X-Auth-Token", token),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/image/v2/images/{id}/file");
    assert_eq!(common::put_bytes(c, &path, token, data), 204);
    id
}

#[test]
fn volumes_are_made_from_images_on_the_storage_host() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let s = Storaged::start(&c, "storage-1");
    wait_registered(&c, &admin);
    // A disk image: data, a hole, data.
    let mut data = vec![0u8; 3 << 20];
    data[..4].copy_from_slice(b"boot");
    data[(2 << 20)..(2 << 20) + 4].copy_from_slice(b"tail");
    let disk = image(&c, &admin, "raw", json!({"os_distro": "debian"}), &data);
    let r = create(
        &c,
        &admin,
        json!({"size": 2, "imageRef": disk, "name": "root1"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    let v = wait_status(&c, &admin, &id, "available");
    assert_eq!(v["bootable"], "true", "{v}");
    assert_eq!(v["volume_image_metadata"]["image_id"], disk.as_str(), "{v}");
    assert_eq!(v["volume_image_metadata"]["os_distro"], "debian", "{v}");
    // The image is held by the storage host, and the volume starts as it
    // without a copy: a raw file sharing its blocks (XFS, btrfs), else an
    // overlay over the image's own file (storaged's tests read it through).
    let held = s.data_dir.join("images").join(&disk);
    assert!(held.exists());
    let file = s.unwritten_volume_data(&id);
    if file == s.volume_file(&id) {
        assert_eq!(file_size(&file), Some(2 * GIB));
    } else {
        use std::os::unix::fs::MetadataExt;
        let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(inode(&file), inode(&held), "the image's own file");
    }
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..3 << 20], &data[..]);
    assert!(bytes[3 << 20..].iter().all(|b| *b == 0));
    // Without a size: the image's (at least 1 GiB).
    let r = create(&c, &admin, json!({"imageRef": disk}));
    let id2 = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    assert_eq!(wait_status(&c, &admin, &id2, "available")["size"], 1);
    // `os-set_bootable`, as `openstack volume set --bootable` sends it.
    let r = v3(
        &c,
        "POST",
        &format!("/volumes/{id2}/action"),
        &admin,
        json!({"os-set_bootable": {"bootable": false}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = v3(&c, "GET", &format!("/volumes/{id2}"), &admin, Value::Null).json();
    assert_eq!(shown["volume"]["bootable"], "false");

    // Refused: smaller than the image needs, a kernel, another project's
    // private image.
    let big = image(&c, &admin, "raw", json!({"min_disk": 3}), b"x");
    let r = create(&c, &admin, json!({"size": 2, "imageRef": big}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("needs a volume of 3GB"), "{}", r.body);
    let kernel = image(&c, &admin, "aki", json!({}), b"kernel");
    let r = create(&c, &admin, json!({"size": 1, "imageRef": kernel}));
    assert_eq!(r.status, 400, "{}", r.body);
    second_project(&c);
    let bob = token(&c, "bob", "bob-password", "other");
    let r = create(&c, &bob, json!({"size": 1, "imageRef": disk}));
    assert_eq!(r.status, 404, "{}", r.body);
    for id in [&id, &id2] {
        v3(&c, "DELETE", &format!("/volumes/{id}"), &admin, Value::Null);
        wait_gone(&c, &admin, id);
    }
}

#[test]
fn without_a_storage_host_a_volume_ends_in_error_and_can_be_deleted() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let r = create(&c, &admin, json!({"size": 1}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    let v = wait_status(&c, &admin, &id, "error");
    assert_eq!(v["size"], 1);
    assert_eq!(
        v3(&c, "DELETE", &format!("/volumes/{id}"), &admin, Value::Null).status,
        202
    );
    wait_gone(&c, &admin, &id);
}

#[test]
fn what_a_killed_storaged_left_undone_is_finished_once_it_is_back() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let mut s = Storaged::start(&c, "storage-1");
    wait_registered(&c, &admin);
    let r = create(&c, &admin, json!({"size": 2}));
    let first = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(&c, &admin, &first, "available");

    // Down (but not yet past the heartbeat timeout): a create and a delete
    // wait in their transient statuses.
    s.kill();
    let r = create(&c, &admin, json!({"size": 1}));
    assert_eq!(r.status, 202, "{}", r.body);
    let second = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        v3(
            &c,
            "DELETE",
            &format!("/volumes/{first}"),
            &admin,
            Value::Null
        )
        .status,
        202
    );
    std::thread::sleep(Duration::from_secs(2));
    let show = |id: &str| {
        v3(&c, "GET", &format!("/volumes/{id}"), &admin, Value::Null).json()["volume"]["status"]
            .clone()
    };
    assert_eq!(show(&second), "creating");
    assert_eq!(show(&first), "deleting");
    assert_eq!(file_size(&s.volume_file(&first)), Some(2 * GIB));

    // Back: the reconciler's next pass finishes both.
    s.restart();
    wait_status(&c, &admin, &second, "available");
    assert_eq!(file_size(&s.volume_file(&second)), Some(GIB));
    wait_gone(&c, &admin, &first);
    assert_eq!(file_size(&s.volume_file(&first)), None);
}

/// A volume on a storage host that runs no servers, attached to a server
/// elsewhere (over NBD): extended in use, the storage host grows it first
/// (it serves the new size), then the server's host is told; a forced
/// snapshot of it moves nothing on the server's host (storaged moves its
/// own export).
#[test]
fn volumes_attached_over_nbd_grow_and_are_snapshotted_in_use() {
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (c, admin) = (&cloud.c, cloud.admin.as_str());
    let s = Storaged::start(c, "storage-only");
    wait_registered(c, admin);
    let (server, _) = cloud.active_server();
    let r = create(c, admin, json!({"size": 1, "name": "data"}));
    let vol = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(c, admin, &vol, "available");
    let r = call(
        c,
        "POST",
        &format!("/compute/v2.1/servers/{server}/os-volume_attachments"),
        &[
            ("X-Auth-Token", admin),
            ("Content-Type", "application/json"),
        ],
        &json!({"volumeAttachment": {"volumeId": vol}}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(c, admin, &vol, "in-use");
    let calls = cloud.hostd.disk_calls();
    assert!(calls[0].2.get("nbd").is_some(), "over NBD: {calls:?}");
    let r = v3_at(
        c,
        "volume 3.42",
        "POST",
        &format!("/volumes/{vol}/action"),
        admin,
        json!({"os-extend": {"new_size": 2}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    while wait_status(c, admin, &vol, "in-use")["size"] != 2 {
        assert!(Instant::now() < deadline, "never grown");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        file_size(&s.volume_file(&vol)),
        Some(2 << 30),
        "grown on its storage host"
    );
    let dev = vol.replace('-', "");
    let calls = cloud.hostd.disk_calls();
    assert!(
        calls
            .iter()
            .any(|(m, _, w)| m == "PUT" && w["dev"] == dev.as_str() && w["bytes"] == 2u64 << 30),
        "{calls:?}"
    );
    let r = snapshot(c, admin, json!({"volume_id": vol, "force": true}));
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r.json()["snapshot"]["id"].as_str().unwrap().to_owned();
    wait_snapshot(c, admin, &snap, "available");
    assert!(
        !cloud
            .hostd
            .disk_calls()
            .iter()
            .any(|(_, _, w)| w.get("files").is_some()),
        "nothing moved on the server's host"
    );
}

#[test]
fn volumes_attach_to_and_detach_from_a_server_on_the_storage_host() {
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (c, admin) = (&cloud.c, cloud.admin.as_str());
    // The compute host is the storage host too: the volume is its file.
    let s = Storaged::start(c, common::hostd::HOST_ID);
    wait_registered(c, admin);
    let (server, _) = cloud.active_server();
    let r = create(c, admin, json!({"size": 1, "name": "data"}));
    let vol = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(c, admin, &vol, "available");

    let nova = |method: &str, path: &str, body: Value| {
        call(
            c,
            method,
            &format!("/compute/v2.1/servers/{server}/os-volume_attachments{path}"),
            &[
                ("X-Auth-Token", admin),
                ("Content-Type", "application/json"),
            ],
            &if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
        )
    };
    let r = nova("POST", "", json!({"volumeAttachment": {"volumeId": vol}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["volumeAttachment"]["volumeId"], vol.as_str());
    let v = wait_status(c, admin, &vol, "in-use");
    assert_eq!(v["attachments"][0]["server_id"], server.as_str());
    assert_eq!(v["attachments"][0]["host_name"], common::hostd::HOST_ID);
    // hostd was asked to plug the storage host's file, named by the volume.
    let dev = vol.replace('-', "");
    let calls = cloud.hostd.disk_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "POST");
    assert_eq!(calls[0].1, server);
    assert_eq!(calls[0].2["id"], dev.as_str());
    assert_eq!(
        calls[0].2["path"],
        s.volume_file(&vol).display().to_string().as_str()
    );
    let listed = nova("GET", "", Value::Null).json();
    assert_eq!(listed["volumeAttachments"][0]["volumeId"], vol.as_str());
    assert_eq!(
        cloud.show(&server)["os-extended-volumes:volumes_attached"],
        json!([{ "id": vol }])
    );

    // Extended in use (microversion 3.42 on): the server's host grows it
    // (the guest is told), and it is in use again at its new size.
    let extend = |version: &str| {
        call(
            c,
            "POST",
            &format!("/volume/v3/volumes/{vol}/action"),
            &[
                ("X-Auth-Token", admin),
                ("Content-Type", "application/json"),
                ("OpenStack-API-Version", version),
            ],
            &json!({"os-extend": {"new_size": 3}}).to_string(),
        )
    };
    let r = extend("volume 3.0");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("must be available to extend"), "{}", r.body);
    let r = extend("volume 3.42");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("openstack-api-version"), Some("volume 3.42"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = wait_status(c, admin, &vol, "in-use");
        if v["size"] == 3 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["size"], 3, "{v}");
    assert_eq!(v["attachments"][0]["server_id"], server.as_str());
    let calls = cloud.hostd.disk_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        (calls[1].0.as_str(), &calls[1].2),
        ("PUT", &json!({"dev": dev, "bytes": 3 * GIB}))
    );
    // The storage host's file is the guest's to grow, not storaged's.
    assert_eq!(file_size(&s.volume_file(&vol)), Some(GIB));
    assert_eq!(extend("volume 3.99").status, 406);
    // Its attachment is the compute service's: Cinder's API lists it but
    // does not change it.
    let r = v3(c, "GET", "/attachments", admin, Value::Null);
    assert_eq!(r.status, 404, "below 3.27: {}", r.body);
    let attachments = |method: &str, path: &str, body: Value| {
        call(
            c,
            method,
            &format!("/volume/v3/attachments{path}"),
            &[
                ("X-Auth-Token", admin),
                ("Content-Type", "application/json"),
                ("OpenStack-API-Version", "volume 3.44"),
            ],
            &if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
        )
    };
    let listed = attachments("GET", "", Value::Null).json();
    let nova_attachment = listed["attachments"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["attachments"][0]["status"], "attached");
    assert_eq!(listed["attachments"][0]["instance"], server.as_str());
    let r = attachments("DELETE", &format!("/{nova_attachment}"), Value::Null);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("server remove volume"), "{}", r.body);

    // In use: not deleted, not attached twice, a snapshot only when forced:
    // then the server's host moves the disk onto the volume's new files.
    let r = v3(c, "DELETE", &format!("/volumes/{vol}"), admin, Value::Null);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = snapshot(c, admin, json!({"volume_id": vol}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("in-use"), "{}", r.body);
    let r = snapshot(c, admin, json!({"volume_id": vol, "force": true}));
    assert_eq!(r.status, 202, "{}", r.body);
    let live = r.json()["snapshot"]["id"].as_str().unwrap().to_owned();
    wait_snapshot(c, admin, &live, "available");
    let moved = cloud.hostd.disk_calls();
    assert_eq!(
        (moved.len(), moved[2].0.as_str(), &moved[2].2["dev"]),
        (3, "PUT", &json!(dev)),
        "{moved:?}"
    );
    assert_eq!(wait_status(c, admin, &vol, "in-use")["status"], "in-use");
    let r = nova("POST", "", json!({"volumeAttachment": {"volumeId": vol}}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = nova("POST", "", json!({"volumeAttachment": {}}));
    assert_eq!(r.status, 400, "{}", r.body);

    // Detached while the server's VMM restarts (hostd answers 503 twice):
    // tried again until it is done, not put back in use.
    cloud.hostd.disk_calls_unavailable(2);
    let r = nova("DELETE", &format!("/{vol}"), Value::Null);
    assert_eq!(r.status, 202, "{}", r.body);
    let v = wait_status(c, admin, &vol, "available");
    assert_eq!(v["attachments"], json!([]));
    let calls = cloud.hostd.disk_calls();
    assert_eq!(calls.len(), 6, "{calls:?}");
    for call in &calls[3..] {
        assert_eq!(
            (call.0.as_str(), call.2.as_str()),
            ("DELETE", Some(dev.as_str()))
        );
    }
    assert_eq!(nova("DELETE", &format!("/{vol}"), Value::Null).status, 404);

    // Attached again, then the server deleted: the volume is let go.
    assert_eq!(
        nova("POST", "", json!({"volumeAttachment": {"volumeId": vol}})).status,
        200
    );
    wait_status(c, admin, &vol, "in-use");
    let r = call(
        c,
        "DELETE",
        &format!("/compute/v2.1/servers/{server}"),
        &[("X-Auth-Token", admin)],
        "",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    wait_status(c, admin, &vol, "available");
    // (an overlay since its snapshot, where the filesystem cannot reflink)
    let raw = s.volume_file(&vol);
    assert!(
        raw.exists() || raw.with_extension("qcow2").exists(),
        "the data stays with the volume"
    );
}

/// A call at a microversion.
fn v3_at(
    c: &Controller,
    version: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    call(
        c,
        method,
        &format!("/volume/v3{path}"),
        &[
            ("X-Auth-Token", token),
            ("Content-Type", "application/json"),
            ("OpenStack-API-Version", version),
        ],
        &body,
    )
}

#[test]
fn cinders_attachments_and_older_attach_actions_keep_books_for_other_attachers() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let s = Storaged::start(&c, common::hostd::HOST_ID);
    wait_registered(&c, &admin);
    let vol = create(&c, &admin, json!({"size": 1}));
    let vol = vol.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(&c, &admin, &vol, "available");
    let at = |method: &str, path: &str, body: Value| {
        v3_at(
            &c,
            "volume 3.44",
            method,
            &format!("/attachments{path}"),
            &admin,
            body,
        )
    };
    let instance = "0e7c1f3a-9b2d-4c5e-8f6a-7b8c9d0e1f2a";

    // The 3.27/3.44 flow: reserved, attaching with a connector, in-use.
    let r = at(
        "POST",
        "",
        json!({"attachment": {"volume_uuid": vol, "instance_uuid": instance}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json()["attachment"].clone();
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            &a["status"],
            &a["instance"],
            &a["volume_id"],
            &a["attach_mode"]
        ),
        (
            &json!("reserved"),
            &json!(instance),
            &json!(vol),
            &json!("rw")
        )
    );
    wait_status(&c, &admin, &vol, "reserved");
    let connector =
        json!({"host": common::hostd::HOST_ID, "platform": "x86_64", "os_type": "linux"});
    let r = at(
        "PUT",
        &format!("/{id}"),
        json!({"attachment": {"connector": connector}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let info = r.json()["attachment"]["connection_info"].clone();
    assert_eq!(info["driver_volume_type"], "local");
    assert_eq!(
        info["data"]["device_path"],
        s.volume_file(&vol).display().to_string().as_str()
    );
    wait_status(&c, &admin, &vol, "attaching");
    let complete = |version: &str| {
        v3_at(
            &c,
            version,
            "POST",
            &format!("/attachments/{id}/action"),
            &admin,
            json!({"os-complete": null}),
        )
    };
    assert_eq!(complete("volume 3.27").status, 400, "os-complete is 3.44's");
    assert_eq!(complete("volume 3.44").status, 204);
    let v = wait_status(&c, &admin, &vol, "in-use");
    assert_eq!(v["attachments"][0]["attachment_id"], id.as_str());
    assert_eq!(v["attachments"][0]["server_id"], instance);
    assert_eq!(v["attachments"][0]["host_name"], common::hostd::HOST_ID);
    // Its attacher is not our compute service, which a snapshot in use
    // would move onto the new files: refused, even forced.
    let r = snapshot(&c, &admin, json!({"volume_id": vol, "force": true}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("outside this cloud's compute service"),
        "{}",
        r.body
    );
    let r = snapshot(&c, &admin, json!({"volume_id": vol, "force": "maybe"}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not a boolean"), "{}", r.body);
    // Nobody else's to plug or free: a reconciler pass leaves it be.
    std::thread::sleep(Duration::from_millis(5500));
    wait_status(&c, &admin, &vol, "in-use");
    let r = at("GET", "/detail", Value::Null);
    assert_eq!(
        r.json()["attachments"][0]["status"],
        "attached",
        "{}",
        r.body
    );
    assert_eq!(
        at("GET", &format!("/{id}"), Value::Null).json()["attachment"]["id"],
        id.as_str()
    );
    assert_eq!(
        v3(
            &c,
            "DELETE",
            &format!("/volumes/{vol}"),
            &admin,
            Value::Null
        )
        .status,
        400
    );
    let r = at("DELETE", &format!("/{id}"), Value::Null);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"attachments": []})),
        "{}",
        r.body
    );
    let v = wait_status(&c, &admin, &vol, "available");
    assert_eq!(v["attachments"], json!([]));
    assert_eq!(at("GET", &format!("/{id}"), Value::Null).status, 404);

    // From another host: the volume's NBD export on its storage host.
    let r = at(
        "POST",
        "",
        json!({"attachment": {"volume_uuid": vol, "connector": {"host": "elsewhere"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json()["attachment"].clone();
    assert_eq!(a["connection_info"]["driver_volume_type"], "nbd", "{a}");
    assert_eq!(
        a["connection_info"]["data"]["export"]
            .as_str()
            .unwrap()
            .len(),
        32
    );
    let r = at(
        "DELETE",
        &format!("/{}", a["id"].as_str().unwrap()),
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&c, &admin, &vol, "available");

    // Bad requests: nothing stays reserved.
    for body in [
        json!({"attachment": {"instance_uuid": instance}}),
        json!({"attachment": {"volume_uuid": vol, "mode": "rwx"}}),
        json!({"attachment": {"volume_uuid": vol, "connector": "host"}}),
        json!({"attachment": {"volume_uuid": vol, "connector": {"ip": "10.0.0.1"}}}),
    ] {
        let r = at("POST", "", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    wait_status(&c, &admin, &vol, "available");
    assert_eq!(
        at(
            "PUT",
            "/nope",
            json!({"attachment": {"connector": connector}})
        )
        .status,
        404
    );
    assert_eq!(
        v3_at(
            &c,
            "volume 3.26",
            "GET",
            "/attachments",
            &admin,
            Value::Null
        )
        .status,
        404
    );

    // The older actions: reserve, attach, begin and roll back detaching,
    // the connection, detach; and unreserve.
    let act = |body: Value| v3(&c, "POST", &format!("/volumes/{vol}/action"), &admin, body);
    assert_eq!(act(json!({"os-reserve": null})).status, 202);
    wait_status(&c, &admin, &vol, "attaching");
    assert_eq!(act(json!({"os-reserve": null})).status, 400);
    assert_eq!(act(json!({"os-unreserve": null})).status, 202);
    wait_status(&c, &admin, &vol, "available");
    assert_eq!(
        act(json!({"os-attach": {"mountpoint": "/dev/vdb"}})).status,
        400
    );
    assert_eq!(act(json!({"os-reserve": null})).status, 202);
    let r = act(json!({"os-attach": {"instance_uuid": instance, "mountpoint": "/dev/vdb"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let v = wait_status(&c, &admin, &vol, "in-use");
    assert_eq!(v["attachments"][0]["server_id"], instance);
    assert_eq!(act(json!({"os-begin_detaching": null})).status, 202);
    wait_status(&c, &admin, &vol, "detaching");
    assert_eq!(act(json!({"os-roll_detaching": null})).status, 202);
    wait_status(&c, &admin, &vol, "in-use");
    let r = act(json!({"os-initialize_connection": {"connector": connector}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["connection_info"]["driver_volume_type"], "local");
    assert_eq!(
        act(json!({"os-terminate_connection": {"connector": connector}})).status,
        202
    );
    assert_eq!(act(json!({"os-detach": {}})).status, 202);
    wait_status(&c, &admin, &vol, "available");
    assert_eq!(act(json!({"os-detach": {}})).status, 400);
    // os-attach straight from available, by host name.
    let r = act(json!({"os-attach": {"host_name": "metal-7", "mode": "ro"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let v = wait_status(&c, &admin, &vol, "in-use");
    assert_eq!(v["attachments"][0]["host_name"], "metal-7");
    assert_eq!(v["attachments"][0]["server_id"], Value::Null);

    // Another project sees none of it.
    second_project(&c);
    let bob = token(&c, "bob", "bob-password", "other");
    let r = v3_at(&c, "volume 3.44", "GET", "/attachments", &bob, Value::Null);
    assert_eq!(r.json()["attachments"], json!([]), "{}", r.body);
    let r = v3(
        &c,
        "POST",
        &format!("/volumes/{vol}/action"),
        &bob,
        json!({"os-detach": {}}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(act(json!({"os-detach": {}})).status, 202);
    wait_status(&c, &admin, &vol, "available");
}

/// A server boots from a volume whose storage host has no room for it
/// (here: runs no compute at all): its host reaches the volume over NBD,
/// which hostd connects; the server still boots from the volume's /boot.
#[test]
fn a_server_boots_from_a_volume_on_another_host() {
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (c, admin) = (&cloud.c, cloud.admin.as_str());
    let _s = Storaged::start(c, "storage-only");
    wait_registered(c, admin);
    let (flavor, _) = common::hostd::bootable(c, admin, 1, 128);
    let image = image(c, admin, "raw", json!({}), b"a disk image's bytes");
    let r = create(
        c,
        admin,
        json!({"size": 1, "imageRef": image, "name": "root1"}),
    );
    let root = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(c, admin, &root, "available");
    let body = json!({"server": {"name": "bfv", "flavorRef": flavor, "networks": "none",
        "block_device_mapping_v2": [{"uuid": root, "boot_index": 0, "source_type": "volume",
            "destination_type": "volume", "delete_on_termination": false}]}});
    let r = call(
        c,
        "POST",
        "/compute/v2.1/servers",
        &[
            ("X-Auth-Token", admin),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");
    assert_eq!(
        cloud.show(&id)["OS-EXT-SRV-ATTR:host"],
        common::hostd::HOST_ID
    );
    let spec = cloud
        .hostd
        .create_bodies()
        .into_iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap();
    let nbd = &spec["root_volume_nbd"];
    assert!(
        nbd["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{spec}"
    );
    assert_eq!(nbd["export"].as_str().map(str::len), Some(32), "{spec}");
    assert_eq!(spec["root_volume"]["path"], "", "{spec}");
    let v = wait_status(c, admin, &root, "in-use");
    assert_eq!(v["attachments"][0]["host_name"], common::hostd::HOST_ID);
}

#[test]
fn servers_boot_from_volumes_which_outlive_them_unless_told_otherwise() {
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (c, admin) = (&cloud.c, cloud.admin.as_str());
    let s = Storaged::start(c, common::hostd::HOST_ID);
    wait_registered(c, admin);
    let (flavor, _) = common::hostd::bootable(c, admin, 1, 128);
    let image = image(c, admin, "raw", json!({}), b"a disk image's bytes");
    let r = create(
        c,
        admin,
        json!({"size": 1, "imageRef": image, "name": "root1"}),
    );
    let root = r.json()["volume"]["id"].as_str().unwrap().to_owned();
    wait_status(c, admin, &root, "available");
    let nova = |method: &str, path: &str, body: Value| {
        call(
            c,
            method,
            &format!("/compute/v2.1{path}"),
            &[
                ("X-Auth-Token", admin),
                ("Content-Type", "application/json"),
            ],
            &if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
        )
    };
    let server = |bdm: Value, image: Option<&str>| {
        let mut s = json!({"name": "bfv", "flavorRef": flavor, "networks": "none",
                           "block_device_mapping_v2": [bdm]});
        if let Some(i) = image {
            s["imageRef"] = json!(i);
        }
        nova("POST", "/servers", json!({ "server": s }))
    };

    // `server create --volume root1`, as the openstack CLI sends it.
    let r = server(
        json!({"uuid": root, "boot_index": 0, "source_type": "volume",
               "destination_type": "volume", "delete_on_termination": false}),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");
    let shown = cloud.show(&id);
    assert_eq!(shown["image"], "", "{shown}");
    // hostd boots it from the volume's file on this host.
    let spec = cloud
        .hostd
        .create_bodies()
        .into_iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        spec["root_volume"]["path"],
        s.volume_file(&root).display().to_string().as_str(),
        "{spec}"
    );
    assert!(spec.get("root_image").is_none(), "{spec}");
    let v = wait_status(c, admin, &root, "in-use");
    assert_eq!(v["attachments"][0]["server_id"], id.as_str());
    assert_eq!(
        cloud.show(&id)["os-extended-volumes:volumes_attached"],
        json!([{ "id": root }])
    );
    let listed = nova("GET", "/servers/detail", Value::Null).json();
    let mine = listed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        mine["os-extended-volumes:volumes_attached"],
        json!([{ "id": root }])
    );
    // Not detached, deleted or booted by another server meanwhile.
    let r = nova(
        "DELETE",
        &format!("/servers/{id}/os-volume_attachments/{root}"),
        Value::Null,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("root device"), "{}", r.body);
    let r = v3(c, "DELETE", &format!("/volumes/{root}"), admin, Value::Null);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = server(
        json!({"uuid": root, "boot_index": 0, "source_type": "volume", "destination_type": "volume"}),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Rebuilt only with the image its volume was made from (Nova below
    // 2.93): the same volume boots again, under the server's new name.
    let other = self::image(c, admin, "raw", json!({}), b"another disk image");
    let rebuild = |image: &str| {
        nova(
            "POST",
            &format!("/servers/{id}/action"),
            json!({"rebuild": {"imageRef": image, "name": "bfv-rebuilt"}}),
        )
    };
    let r = rebuild(&other);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("different image for a volume-backed server"),
        "{}",
        r.body
    );
    let creates = cloud.hostd.create_bodies().len();
    let r = rebuild(&image);
    assert_eq!(r.status, 202, "{}", r.body);
    let shown = cloud.wait(&id, "ACTIVE");
    assert_eq!(
        (&shown["name"], &shown["image"]),
        (&json!("bfv-rebuilt"), &json!("")),
        "{shown}"
    );
    let specs = cloud.hostd.create_bodies();
    assert_eq!(specs.len(), creates + 1, "made again on its host");
    let again = specs.last().unwrap();
    assert_eq!(again["id"], id.as_str());
    assert_eq!(
        again["root_volume"]["path"],
        s.volume_file(&root).display().to_string().as_str(),
        "{again}"
    );
    assert_eq!(
        wait_status(c, admin, &root, "in-use")["attachments"][0]["server_id"],
        id.as_str()
    );
    // Resized: vCPUs and RAM change, the volume stays its root disk.
    let bigger = nova(
        "POST",
        "/flavors",
        json!({"flavor": {"name": "bfv-bigger", "ram": 256, "vcpus": 2, "disk": 0}}),
    )
    .json()["flavor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = nova(
        "POST",
        &format!("/servers/{id}/action"),
        json!({"resize": {"flavorRef": bigger}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    cloud.wait(&id, "VERIFY_RESIZE");
    let r = nova(
        "POST",
        &format!("/servers/{id}/action"),
        json!({"confirmResize": null}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let shown = cloud.wait(&id, "ACTIVE");
    assert_eq!(shown["flavor"]["id"], bigger.as_str(), "{shown}");
    assert_eq!(wait_status(c, admin, &root, "in-use")["status"], "in-use");
    // Deleted: the volume stays, free again.
    assert_eq!(
        nova("DELETE", &format!("/servers/{id}"), Value::Null).status,
        204
    );
    let v = wait_status(c, admin, &root, "available");
    assert_eq!(v["attachments"], json!([]));

    // `server create --image IMG --boot-from-volume 1`: a volume made from
    // the image for it, going with it when asked.
    let r = server(
        json!({"uuid": image, "boot_index": 0, "source_type": "image",
               "destination_type": "volume", "volume_size": 1, "delete_on_termination": true}),
        Some(&image),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");
    let made = v3(c, "GET", "/volumes/detail", admin, Value::Null).json()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["attachments"][0]["server_id"] == id.as_str())
        .cloned()
        .expect("a volume made for the server");
    assert_eq!(
        (&made["bootable"], &made["status"]),
        (&json!("true"), &json!("in-use"))
    );
    assert_eq!(
        nova("DELETE", &format!("/servers/{id}"), Value::Null).status,
        204
    );
    wait_gone(c, admin, made["id"].as_str().unwrap());

    // Bad block devices.
    for (bdm, image) in [
        (
            json!({"uuid": "nothing", "boot_index": 0, "source_type": "volume", "destination_type": "volume"}),
            None,
        ),
        (
            json!({"uuid": root, "boot_index": 0, "source_type": "volume", "destination_type": "volume"}),
            Some(image.as_str()),
        ),
        (
            json!({"uuid": root, "boot_index": 1, "source_type": "volume", "destination_type": "volume"}),
            None,
        ),
        (
            json!({"uuid": image, "boot_index": 0, "source_type": "image", "destination_type": "volume"}),
            None,
        ),
    ] {
        let r = server(bdm.clone(), image);
        assert_eq!(r.status, 400, "{bdm}: {}", r.body);
    }
    let r = v3(c, "GET", &format!("/volumes/{root}"), admin, Value::Null);
    assert_eq!(r.json()["volume"]["status"], "available", "left as it was");
}

/// Nova's volume proxies (`/os-volumes`, `/os-snapshots`, up to 2.35) make,
/// show and delete the same volumes and snapshots, in Nova's older names.
#[test]
fn volumes_and_snapshots_through_nova() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let _storaged = Storaged::start(&c, "storage-1");
    wait_registered(&c, &admin);
    let nova = |method: &str, path: &str, body: Value| {
        let r = call(
            &c,
            method,
            &format!("/compute/v2.1{path}"),
            &[("X-Auth-Token", admin.as_str())],
            &if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
        );
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v)
    };
    let (status, body) = nova(
        "POST",
        "/os-volumes",
        json!({"volume": {"size": 1, "display_name": "legacy", "metadata": {"k": "v"}}}),
    );
    assert_eq!(status, 200, "{body}");
    let id = body["volume"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["volume"]["displayName"], "legacy");
    assert_eq!(body["volume"]["attachments"], json!([{}]));
    let v = wait_status(&c, &admin, &id, "available");
    assert_eq!(v["name"], "legacy", "the same volume through Cinder");
    let (_, list) = nova("GET", "/os-volumes/detail", Value::Null);
    assert_eq!(list["volumes"][0]["metadata"], json!({"k": "v"}));
    // A show with an empty id is not the list.
    assert_eq!(nova("GET", "/os-volumes/", Value::Null).0, 404);
    assert_eq!(nova("GET", "/os-volumes", Value::Null).0, 200);
    for bad in [
        json!({"volume": {}}),
        json!({"volume": {"size": 0}}),
        json!({"volume": {"size": "x"}}),
    ] {
        assert_eq!(nova("POST", "/os-volumes", bad.clone()).0, 400, "{bad}");
    }

    let (status, body) = nova(
        "POST",
        "/os-snapshots",
        json!({"snapshot": {"volume_id": id, "display_name": "snap"}}),
    );
    assert_eq!(status, 200, "{body}");
    let snap = body["snapshot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["snapshot"]["volumeId"], json!(id));
    let deadline = Instant::now() + Duration::from_secs(20);
    while nova("GET", &format!("/os-snapshots/{snap}"), Value::Null).1["snapshot"]["status"]
        != "available"
    {
        assert!(Instant::now() < deadline, "snapshot never available");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        nova("DELETE", &format!("/os-snapshots/{snap}"), Value::Null).0,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while nova("GET", &format!("/os-snapshots/{snap}"), Value::Null).0 != 404 {
        assert!(Instant::now() < deadline, "snapshot never deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        nova("DELETE", &format!("/os-volumes/{id}"), Value::Null).0,
        202
    );
    wait_gone(&c, &admin, &id);
    assert_eq!(
        nova("GET", &format!("/os-volumes/{id}"), Value::Null).0,
        404
    );
}
