//! Glance over HTTP against a real controller: upload, download, listing,
//! patching, isolation between projects.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, put_bytes, second_project, start, token, Postgres};

#[test]
fn images_upload_download_patch_and_stay_private() {
    let c = start(None);
    second_project(&c);
    let admin = token(&c, "admin", "admin-secret", "admin");
    let bob = token(&c, "bob", "bob-password", "other");
    let a = ("X-Auth-Token", admin.as_str());
    let b = ("X-Auth-Token", bob.as_str());

    assert_eq!(call(&c, "GET", "/image", &[], "").status, 300);
    assert_eq!(call(&c, "GET", "/image/v2/images", &[], "").status, 401);

    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[a],
        r#"{"name": "cirros", "disk_format": "raw", "container_format": "bare", "owner_specified.openstack.md5": ""}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let img = r.json();
    let id = img["id"].as_str().unwrap().to_owned();
    assert_eq!(img["status"], "queued");
    assert_eq!(img["owner_specified.openstack.md5"], "");

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        put_bytes(&c, &format!("/image/v2/images/{id}/file"), &admin, &data),
        204
    );
    assert_eq!(
        put_bytes(&c, &format!("/image/v2/images/{id}/file"), &admin, &data),
        409,
        "uploaded once"
    );
    let r = call(&c, "GET", &format!("/image/v2/images/{id}"), &[a], "");
    let img = r.json();
    assert_eq!(img["status"], "active");
    assert_eq!(img["size"], 300_000);
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(img["checksum"].as_str().unwrap().len(), 32);

    let r = call(&c, "GET", &format!("/image/v2/images/{id}/file"), &[a], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-md5"), img["checksum"].as_str());

    // Another project sees nothing of it.
    assert_eq!(
        call(&c, "GET", &format!("/image/v2/images/{id}"), &[b], "").status,
        404
    );
    assert_eq!(
        call(&c, "GET", &format!("/image/v2/images/{id}/file"), &[b], "").status,
        404
    );
    assert_eq!(
        call(&c, "DELETE", &format!("/image/v2/images/{id}"), &[b], "").status,
        404
    );
    let r = call(&c, "GET", "/image/v2/images", &[b], "");
    assert_eq!(r.json()["images"], serde_json::json!([]));
    // Only admins publish.
    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[b],
        r#"{"name": "x", "visibility": "public"}"#,
    );
    assert_eq!(r.status, 403);

    // JSON patch.
    let patch = r#"[{"op": "replace", "path": "/name", "value": "cirros-2"}, {"op": "add", "path": "/os_distro", "value": "cirros"}]"#;
    let r = call(
        &c,
        "PATCH",
        &format!("/image/v2/images/{id}"),
        &[
            a,
            (
                "Content-Type",
                "application/openstack-images-v2.1-json-patch",
            ),
        ],
        patch,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], "cirros-2");
    assert_eq!(r.json()["os_distro"], "cirros");
    let r = call(
        &c,
        "PATCH",
        &format!("/image/v2/images/{id}"),
        &[a],
        r#"[{"op": "replace", "path": "/status", "value": "active"}]"#,
    );
    assert_eq!(r.status, 403, "read-only");
    // Deactivated: the data stays, for admins only; reactivated: for all.
    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[b],
        r#"{"name": "bobs", "disk_format": "raw", "container_format": "bare"}"#,
    );
    let bobs = r.json()["id"].as_str().unwrap().to_owned();
    let act = |what: &str, who| {
        call(
            &c,
            "POST",
            &format!("/image/v2/images/{bobs}/actions/{what}"),
            &[who],
            "",
        )
        .status
    };
    assert_eq!(act("deactivate", b), 403, "a queued image");
    assert_eq!(
        put_bytes(
            &c,
            &format!("/image/v2/images/{bobs}/file"),
            &bob,
            b"bob's bytes"
        ),
        204
    );
    assert_eq!(act("deactivate", b), 204);
    assert_eq!(act("deactivate", b), 204, "twice: no change");
    let file = format!("/image/v2/images/{bobs}/file");
    assert_eq!(call(&c, "GET", &file, &[b], "").status, 403);
    assert_eq!(call(&c, "GET", &file, &[a], "").body, "bob's bytes");
    let shown = call(&c, "GET", &format!("/image/v2/images/{bobs}"), &[b], "").json();
    assert_eq!(shown["status"], "deactivated");
    assert_eq!(act("reactivate", b), 204);
    assert_eq!(call(&c, "GET", &file, &[b], "").body, "bob's bytes");

    // Sharing: the owner names bob's project as a member of a shared
    // image; bob sees it, lists it once accepted, and answers for himself.
    let other = call(
        &c,
        "GET",
        "/identity/v3/auth/tokens",
        &[b, ("X-Subject-Token", &bob)],
        "",
    )
    .json()["token"]["project"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let members = format!("/image/v2/images/{id}/members");
    let share = format!(r#"{{"member": "{other}"}}"#);
    let patch_private = r#"[{"op": "replace", "path": "/visibility", "value": "private"}]"#;
    assert_eq!(
        call(
            &c,
            "PATCH",
            &format!("/image/v2/images/{id}"),
            &[a],
            patch_private
        )
        .status,
        200
    );
    assert_eq!(
        call(&c, "POST", &members, &[a], &share).status,
        403,
        "not a shared image"
    );
    let patch_shared = r#"[{"op": "replace", "path": "/visibility", "value": "shared"}]"#;
    assert_eq!(
        call(
            &c,
            "PATCH",
            &format!("/image/v2/images/{id}"),
            &[a],
            patch_shared
        )
        .status,
        200
    );
    let r = call(&c, "POST", &members, &[a], &share);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("pending")),
        "{}",
        r.body
    );
    assert_eq!(call(&c, "POST", &members, &[a], &share).status, 409);
    assert_eq!(
        call(&c, "GET", &format!("/image/v2/images/{id}"), &[b], "").status,
        200
    );
    let listed = |q: &str| -> Vec<String> {
        call(&c, "GET", &format!("/image/v2/images{q}"), &[b], "").json()["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!listed("").contains(&id), "pending: not listed");
    assert!(listed("?member_status=pending").contains(&id));
    let mine = format!("{members}/{other}");
    assert_eq!(
        call(&c, "PUT", &mine, &[a], r#"{"status": "accepted"}"#).status,
        403,
        "the owner does not answer"
    );
    assert_eq!(
        call(&c, "PUT", &mine, &[b], r#"{"status": "maybe"}"#).status,
        400
    );
    assert_eq!(
        call(&c, "PUT", &mine, &[b], r#"{"status": "accepted"}"#).status,
        200
    );
    assert!(listed("").contains(&id), "accepted: listed");
    assert_eq!(
        call(&c, "GET", &members, &[b], "").json()["members"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(call(&c, "DELETE", &mine, &[b], "").status, 403);
    assert_eq!(call(&c, "DELETE", &mine, &[a], "").status, 204);
    assert_eq!(
        call(&c, "GET", &format!("/image/v2/images/{id}"), &[b], "").status,
        404
    );
    assert_eq!(
        call(&c, "GET", "/image/v2/schemas/members", &[a], "").json()["name"],
        "members"
    );

    // Tags, one at a time.
    let tag = |m: &str, t: &str, who| {
        call(
            &c,
            m,
            &format!("/image/v2/images/{id}/tags/{t}"),
            &[who],
            "",
        )
        .status
    };
    assert_eq!(tag("PUT", "blue%20sky", a), 204);
    assert_eq!(tag("PUT", "blue%20sky", a), 204, "again: no change");
    let shown = call(&c, "GET", &format!("/image/v2/images/{id}"), &[a], "").json();
    assert_eq!(shown["tags"], serde_json::json!(["blue sky"]));
    assert_eq!(tag("PUT", "x", b), 404, "another project's image");
    assert_eq!(tag("DELETE", "blue%20sky", a), 204);
    assert_eq!(tag("DELETE", "blue%20sky", a), 404);
    // Glance's older patch form (tempest's): the operation names the path.
    let r = call(
        &c,
        "PATCH",
        &format!("/image/v2/images/{id}"),
        &[
            a,
            (
                "Content-Type",
                "application/openstack-images-v2.0-json-patch",
            ),
        ],
        r#"[{"replace": "/protected", "value": false}, {"add": "/colour", "value": "red"}, {"remove": "/colour"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["protected"], false);
    assert!(r.json().get("colour").is_none(), "{}", r.body);
    let r = call(&c, "GET", "/image/v2/images?name=cirros-2", &[a], "");
    assert_eq!(r.json()["images"][0]["id"], id);
    let r = call(
        &c,
        "GET",
        &format!("/image/v2/images?id=in:{id},nope"),
        &[a],
        "",
    );
    assert_eq!(r.json()["images"].as_array().unwrap().len(), 1);

    // Any other parameter filters on a field or property (how Nova's backup
    // rotation and tempest find a server's backups); sorting as Glance's.
    for (name, kind) in [
        ("sort-b", "backup"),
        ("sort-a", "backup"),
        ("sort-c", "snapshot"),
    ] {
        let body = format!(r#"{{"name": "{name}", "kind": "{kind}", "disk_format": "raw"}}"#);
        assert_eq!(
            call(&c, "POST", "/image/v2/images", &[a], &body).status,
            201
        );
    }
    let names = |query: &str| -> Vec<String> {
        let r = call(&c, "GET", &format!("/image/v2/images?{query}"), &[a], "");
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names("kind=backup&sort_key=name&sort_dir=asc"),
        ["sort-a", "sort-b"]
    );
    assert_eq!(names("kind=backup&sort=name:desc"), ["sort-b", "sort-a"]);
    assert_eq!(
        names("kind=snapshot&status=queued&disk_format=raw"),
        ["sort-c"]
    );
    assert!(names("kind=backup&status=active").is_empty());
    assert!(names("kind=other").is_empty());
    assert_eq!(
        names("kind=backup&sort_key=name&limit=1"),
        ["sort-b"],
        "descending by default"
    );
    for bad in [
        "sort_key=colour",
        "sort_dir=up",
        "sort=name:sideways",
        "sort=name&sort_key=id",
    ] {
        let r = call(&c, "GET", &format!("/image/v2/images?{bad}"), &[a], "");
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // Bad input.
    assert_eq!(
        call(&c, "POST", "/image/v2/images", &[a], "{bad").status,
        400
    );
    assert_eq!(
        call(
            &c,
            "POST",
            "/image/v2/images",
            &[a],
            r#"{"disk_format": "vmdk"}"#
        )
        .status,
        400
    );
    assert_eq!(
        call(&c, "POST", "/image/v2/images", &[a], r#"{"custom": 5}"#).status,
        400
    );

    assert_eq!(
        call(&c, "DELETE", &format!("/image/v2/images/{id}"), &[a], "").status,
        204
    );
    assert_eq!(
        call(&c, "GET", &format!("/image/v2/images/{id}"), &[a], "").status,
        404
    );
    assert!(
        !c.dir_path.join("images").join(&id).exists(),
        "bytes removed"
    );
}

#[test]
fn qcow2_images_get_a_raw_copy_and_garbage_is_refused() {
    let c = start(None);
    let admin = token(&c, "admin", "admin-secret", "admin");
    let a = ("X-Auth-Token", admin.as_str());
    // A real qcow2 made by qemu-img.
    let q = c.dir_path.join("disk.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("8M")
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        common::missing_tool("qemu-img");
        return;
    }
    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[a],
        r#"{"name": "q", "disk_format": "qcow2", "container_format": "bare"}"#,
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        put_bytes(
            &c,
            &format!("/image/v2/images/{id}/file"),
            &admin,
            &std::fs::read(&q).unwrap()
        ),
        204
    );
    let img = call(&c, "GET", &format!("/image/v2/images/{id}"), &[a], "").json();
    assert_eq!(img["virtual_size"], 8 << 20);
    let raw = c.dir_path.join("images").join(format!("{id}.raw"));
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 8 << 20);

    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[a],
        r#"{"name": "junk", "disk_format": "qcow2", "container_format": "bare"}"#,
    );
    let junk = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        put_bytes(
            &c,
            &format!("/image/v2/images/{junk}/file"),
            &admin,
            b"not a qcow2"
        ),
        400
    );
    let img = call(&c, "GET", &format!("/image/v2/images/{junk}"), &[a], "").json();
    assert_eq!(img["status"], "queued", "a failed upload can be retried");
}

#[test]
fn images_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let c = common::start(Some(pg.url()));
    let admin = token(&c, "admin", "admin-secret", "admin");
    let a = ("X-Auth-Token", admin.as_str());
    let r = call(
        &c,
        "POST",
        "/image/v2/images",
        &[a],
        r#"{"name": "pg", "disk_format": "raw", "container_format": "bare", "k": "v"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        put_bytes(
            &c,
            &format!("/image/v2/images/{id}/file"),
            &admin,
            &[7u8; 4096]
        ),
        204
    );
    let img = call(&c, "GET", &format!("/image/v2/images/{id}"), &[a], "").json();
    assert_eq!(
        (
            img["status"].as_str(),
            img["size"].as_i64(),
            img["k"].as_str()
        ),
        (Some("active"), Some(4096), Some("v"))
    );
    assert_eq!(
        call(&c, "DELETE", &format!("/image/v2/images/{id}"), &[a], "").status,
        204
    );
}

/// With a storage host registered, an image's bytes live on its storaged,
/// not on the controller: a download streams from there, and a host that
/// fetches what it boots is redirected there with a ticket, which is good
/// for that image only. Bad data leaves nothing behind; a delete removes
/// the bytes; a storage host gone answers 503, not a hang.
#[test]
fn images_live_on_the_storage_host_and_hosts_fetch_them_there() {
    use common::storaged::{wait_registered, Storaged};
    let c = common::start_with(None, &common::hostd::controller_config());
    let admin = token(&c, "admin", "admin-secret", "admin");
    let a = ("X-Auth-Token", admin.as_str());
    let mut storage = Storaged::start(&c, "storage-1");
    wait_registered(&c, &admin);
    let images_dir = storage.data_dir.join("images");
    let create = |format: &str| {
        let body =
            format!(r#"{{"name": "i", "disk_format": "{format}", "container_format": "bare"}}"#);
        let r = call(&c, "POST", "/image/v2/images", &[a], &body);
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    };

    // A mostly empty disk: data at the start and at 2 MiB.
    let mut data = vec![0u8; 3 << 20];
    data[..5000].fill(1);
    data[(2 << 20)..(2 << 20) + 7].fill(2);
    let id = create("raw");
    assert_eq!(
        put_bytes(&c, &format!("/image/v2/images/{id}/file"), &admin, &data),
        204
    );
    let img = call(&c, "GET", &format!("/image/v2/images/{id}"), &[a], "").json();
    assert_eq!(
        (img["status"].as_str(), img["size"].as_u64()),
        (Some("active"), Some(3 << 20))
    );
    // Stored with holes, yet Glance's checksums are the whole file's.
    use sha2::Digest;
    assert_eq!(
        img["os_hash_value"].as_str(),
        Some(format!("{:x}", sha2::Sha512::digest(&data)).as_str()),
        "{img}"
    );
    assert_eq!(
        img["checksum"].as_str(),
        Some(format!("{:x}", md5::Md5::digest(&data)).as_str()),
        "{img}"
    );
    assert!(images_dir.join(&id).exists(), "on the storage host");
    assert!(
        !c.dir_path.join("images").join(&id).exists(),
        "not on the controller"
    );
    let r = call(&c, "GET", &format!("/image/v2/images/{id}/file"), &[a], "");
    assert_eq!(r.status, 200);
    assert!(r.bytes == data, "the download is the upload");
    assert_eq!(r.header("content-md5"), img["checksum"].as_str());

    // A host asks the controller; it is sent to the storage host.
    let host = common::hostd::host_token("compute-1");
    let bearer = format!("Bearer {host}");
    let sparse = ("Accept", hostd_proto::sparse::CONTENT_TYPE);
    let raw = format!("/internal/v1/images/{id}/raw");
    let r = call(&c, "GET", &raw, &[("Authorization", &bearer), sparse], "");
    assert_eq!(r.status, 307, "{}", r.body);
    let location = r.header("location").unwrap().to_owned();
    let (authority, path) = location
        .strip_prefix("http://")
        .and_then(|l| l.split_once('/'))
        .unwrap();
    let path = format!("/{path}");
    let fetched = virga_test_support::http::send(authority, "GET", &path, &[sparse], b"").unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert!(fetched.bytes.len() < data.len() / 2, "holes are not sent");
    assert!(hostd_proto::sparse::decode_all(&fetched.bytes, 1 << 30).unwrap() == data);
    // The ticket is for this image, unchanged, and nothing else.
    let other = create("raw");
    let forged = [
        path.replace(&id, &other),
        path.replace("expires=", "expires=1"),
        path.replace("ticket=", "ticket=0"),
        format!("/v1/images/{id}/raw"),
        format!("/v1/images/{id}/file?{}", path.split_once('?').unwrap().1),
    ];
    for p in &forged {
        let r = virga_test_support::http::send(authority, "GET", p, &[], b"").unwrap();
        assert!([401, 403].contains(&r.status), "{p}: {}", r.status);
    }
    // Only hosts are told where.
    assert_eq!(call(&c, "GET", &raw, &[a, sparse], "").status, 401);

    // A qcow2 is converted there; garbage is refused and leaves nothing.
    let q = c.dir_path.join("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("8M")
        .status();
    if made.is_ok_and(|s| s.success()) {
        let qid = create("qcow2");
        let bytes = std::fs::read(&q).unwrap();
        assert_eq!(
            put_bytes(&c, &format!("/image/v2/images/{qid}/file"), &admin, &bytes),
            204
        );
        let img = call(&c, "GET", &format!("/image/v2/images/{qid}"), &[a], "").json();
        assert_eq!(img["virtual_size"], 8 << 20);
        let raw = images_dir.join(format!("{qid}.raw"));
        assert_eq!(std::fs::metadata(raw).unwrap().len(), 8 << 20);
    } else {
        common::missing_tool("qemu-img");
    }
    let junk = create("qcow2");
    let r = put_bytes(
        &c,
        &format!("/image/v2/images/{junk}/file"),
        &admin,
        b"not a qcow2",
    );
    assert_eq!(r, 400);
    let img = call(&c, "GET", &format!("/image/v2/images/{junk}"), &[a], "").json();
    assert_eq!(img["status"], "queued", "a failed upload can be retried");
    let left: Vec<_> = std::fs::read_dir(&images_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&junk))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A delete removes the bytes.
    assert_eq!(
        call(&c, "DELETE", &format!("/image/v2/images/{id}"), &[a], "").status,
        204
    );
    assert!(!images_dir.join(&id).exists());

    // The storage host gone (its last heartbeat still recent): a clear
    // 503, the image still queued.
    storage.kill();
    // Small enough to sit in socket buffers: the answer comes before the
    // controller reads the body.
    let r = put_bytes(
        &c,
        &format!("/image/v2/images/{other}/file"),
        &admin,
        &data[..5000],
    );
    assert_eq!(r, 503);
    let img = call(&c, "GET", &format!("/image/v2/images/{other}"), &[a], "").json();
    assert_eq!(img["status"], "queued");
}

/// What Glance serves besides images that clients read: the metadata
/// definitions' schemas, the (empty) list of import methods; and an empty
/// image id is no image.
#[test]
fn schemas_import_info_and_an_empty_id() {
    let c = start(None);
    let t = common::admin_token(&c);
    let h = [("X-Auth-Token", t.as_str())];
    for (which, name) in [
        ("namespace", "namespace"),
        ("resource_types", "resource_type_associations"),
        ("tags", "tags"),
    ] {
        let r = call(
            &c,
            "GET",
            &format!("/image/v2/schemas/metadefs/{which}"),
            &h,
            "",
        );
        assert_eq!(r.status, 200, "{which}: {}", r.body);
        assert_eq!(r.json()["name"], name);
    }
    assert_eq!(
        call(&c, "GET", "/image/v2/schemas/metadefs/nothing", &h, "").status,
        404
    );
    let r = call(&c, "GET", "/image/v2/info/import", &h, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["import-methods"]["value"], serde_json::json!([]));
    assert_eq!(call(&c, "GET", "/image/v2/images/", &h, "").status, 404);
    assert_eq!(call(&c, "DELETE", "/image/v2/images/", &h, "").status, 404);
    assert_eq!(call(&c, "GET", "/image/v2/images", &h, "").status, 200);
    assert_eq!(
        call(&c, "GET", "/image/v2/info/import", &[], "").status,
        401
    );
}
