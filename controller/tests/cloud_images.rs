//! Servers from cloud images (a raw disk without a `kernel_id`), against the
//! stand-in hostd: what the controller asks the host for (the image as a
//! root disk of the flavor's size, a config drive with the server's key,
//! hostname and user data), Nova's user-data rules, and an image the host
//! finds unbootable ending the build in ERROR with the host's reason,
//! without trying other hosts.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use common::cloud::Cloud;
use common::hostd::Delays;
use common::{call, put_bytes};

const NO_DELAYS: Delays = Delays::NONE;
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs7sAvZ0nq6Q0m9M2dpBmbJYk8y9m8Ocq6m1E8K8y2J test@virga";

/// A flavor with a root disk of `disk` GiB (and a 1 GiB ephemeral disk and
/// 256 MiB of swap) and an active image of `disk_format` holding a few
/// bytes; returns (flavor, image).
fn flavor_and_image(cloud: &Cloud, disk: i64, disk_format: &str) -> (String, String) {
    let t = cloud.auth();
    let flavor = call(
        &cloud.c,
        "POST",
        "/compute/v2.1/flavors",
        &[t],
        &serde_json::json!({"flavor": {"name": format!("d{disk}-{disk_format}"), "ram": 256,
            "vcpus": 1, "disk": disk, "OS-FLV-EXT-DATA:ephemeral": 1, "swap": 256}})
        .to_string(),
    )
    .json()["flavor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = call(
        &cloud.c,
        "POST",
        "/image/v2/images",
        &[t],
        &serde_json::json!({"name": "debian", "disk_format": disk_format,
            "container_format": "bare"})
        .to_string(),
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/image/v2/images/{image}/file");
    assert_eq!(put_bytes(&cloud.c, &path, &cloud.admin, &[0u8; 4096]), 204);
    (flavor, image)
}

fn create(cloud: &Cloud, body: serde_json::Value) -> common::Reply {
    call(
        &cloud.c,
        "POST",
        "/compute/v2.1/servers",
        &[cloud.auth()],
        &serde_json::json!({ "server": body }).to_string(),
    )
}

#[test]
fn a_cloud_image_boots_from_a_root_disk_with_a_config_drive() {
    let cloud = Cloud::start(NO_DELAYS);
    let (flavor, image) = flavor_and_image(&cloud, 3, "raw");
    let key = call(
        &cloud.c,
        "POST",
        "/compute/v2.1/os-keypairs",
        &[cloud.auth()],
        &serde_json::json!({"keypair": {"name": "mykey", "public_key": PUBLIC_KEY}}).to_string(),
    );
    assert_eq!(key.status, 200, "{}", key.body);
    let user_data =
        base64::engine::general_purpose::STANDARD.encode("#cloud-config\nruncmd: [echo hi]\n");
    let r = create(
        &cloud,
        serde_json::json!({"name": "Web Server 1", "imageRef": image, "flavorRef": flavor,
            "key_name": "mykey", "user_data": user_data, "config_drive": true}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let shown = cloud.wait(&id, "ACTIVE");
    assert_eq!(shown["config_drive"], "True");

    let sent = cloud.hostd.create_bodies();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let spec = &sent[0];
    assert_eq!(spec["root_image"], image.as_str(), "{spec}");
    assert_eq!(spec["root_disk_gib"], 3);
    // The flavor's ephemeral disk and swap, for hostd to make.
    assert_eq!(
        (&spec["ephemeral_gib"], &spec["swap_mib"]),
        (&1.into(), &256.into())
    );
    assert!(spec.get("kernel_image").is_none(), "{spec}");
    assert!(
        spec.get("cmdline").is_none(),
        "the image's own /boot says: {spec}"
    );
    let meta = &spec["config_drive"]["meta_data"];
    assert_eq!(meta["uuid"], id.as_str());
    assert_eq!(meta["name"], "Web Server 1");
    assert_eq!(meta["hostname"], "web-server-1");
    assert_eq!(meta["public_keys"]["mykey"], PUBLIC_KEY);
    assert_eq!(meta["keys"][0]["data"], PUBLIC_KEY);
    assert_eq!(spec["config_drive"]["user_data"], user_data.as_str());
}

/// Whether the guest of a server made with `extra` in its create body (on
/// `cloud`, from `image`) gets a config drive: (server show's
/// `config_drive`, a drive in what hostd was asked for).
fn drive_of(cloud: &Cloud, flavor: &str, image: &str, extra: serde_json::Value) -> (String, bool) {
    let mut body = serde_json::json!({"name": "vm", "imageRef": image, "flavorRef": flavor});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = create(cloud, body);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let shown = cloud.wait(&id, "ACTIVE");
    let spec = cloud
        .hostd
        .create_bodies()
        .into_iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap();
    (
        shown["config_drive"].as_str().unwrap().to_owned(),
        spec.get("config_drive").is_some_and(|d| !d.is_null()),
    )
}

#[test]
fn a_config_drive_is_attached_as_nova_decides() {
    let cloud = Cloud::start(NO_DELAYS);
    let (flavor, image) = flavor_and_image(&cloud, 1, "raw");
    // Not asked for: the metadata service alone tells the guest.
    assert_eq!(
        drive_of(&cloud, &flavor, &image, serde_json::json!({})),
        ("".into(), false)
    );
    for yes in [
        serde_json::json!(true),
        serde_json::json!("True"),
        serde_json::json!("yes"),
    ] {
        let got = drive_of(
            &cloud,
            &flavor,
            &image,
            serde_json::json!({"config_drive": yes}),
        );
        assert_eq!(got, ("True".into(), true), "config_drive: {yes}");
    }
    assert_eq!(
        drive_of(
            &cloud,
            &flavor,
            &image,
            serde_json::json!({"config_drive": false})
        ),
        ("".into(), false)
    );
    for bad in [serde_json::json!(42), serde_json::json!("maybe")] {
        let r = create(
            &cloud,
            serde_json::json!({"name": "vm", "imageRef": image, "flavorRef": flavor,
                "config_drive": bad}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("config_drive"), "{}", r.body);
    }
    // An image that needs one.
    let r = call(
        &cloud.c,
        "PATCH",
        &format!("/image/v2/images/{image}"),
        &[
            cloud.auth(),
            (
                "Content-Type",
                "application/openstack-images-v2.1-json-patch",
            ),
        ],
        r#"[{"op": "add", "path": "/img_config_drive", "value": "mandatory"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        drive_of(&cloud, &flavor, &image, serde_json::json!({})),
        ("True".into(), true)
    );
}

#[test]
fn a_deployment_can_force_a_config_drive_on_every_server() {
    let cloud = Cloud::start_with(NO_DELAYS, "\n[compute]\nforce_config_drive = true\n");
    let (flavor, image) = flavor_and_image(&cloud, 1, "raw");
    assert_eq!(
        drive_of(&cloud, &flavor, &image, serde_json::json!({})),
        ("True".into(), true)
    );
}

#[test]
fn user_data_is_base64_of_at_most_65535_characters() {
    let cloud = Cloud::start(NO_DELAYS);
    let (flavor, image) = flavor_and_image(&cloud, 1, "raw");
    for (user_data, why) in [
        (serde_json::json!("not base64!"), "not a base64 string"),
        (serde_json::json!("QUJD".repeat(16384)), "at most 65535"),
        (serde_json::json!(42), "must be a string"),
    ] {
        let r = create(
            &cloud,
            serde_json::json!({"name": "vm", "imageRef": image, "flavorRef": flavor,
                "user_data": user_data}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(why), "{why}: {}", r.body);
    }
    assert!(cloud.hostd.create_bodies().is_empty());
}

#[test]
fn an_image_that_cannot_boot_ends_in_error_with_the_hosts_reason_at_once() {
    let cloud = Cloud::start(NO_DELAYS);
    let (flavor, image) = flavor_and_image(&cloud, 1, "raw");
    let reason = "the root disk cannot boot: nothing to boot on the image: \
                  no kernel under /boot on partition 3 (ext4)";
    cloud.hostd.refuse_creates(422, reason);
    let r = create(
        &cloud,
        serde_json::json!({"name": "vm", "imageRef": image, "flavorRef": flavor}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let shown = cloud.wait(&id, "ERROR");
    assert_eq!(shown["fault"]["message"], reason, "{shown}");
    assert_eq!(
        cloud.hostd.create_bodies().len(),
        1,
        "another host would not boot it either"
    );

    // A format hostd cannot boot from its own /boot is refused before any
    // host is asked.
    let (flavor, ramdisk) = flavor_and_image(&cloud, 1, "ari");
    let r = create(
        &cloud,
        serde_json::json!({"name": "vm2", "imageRef": ramdisk, "flavorRef": flavor}),
    );
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let shown = cloud.wait(&id, "ERROR");
    let fault = shown["fault"]["message"].as_str().unwrap();
    assert!(
        fault.contains("upload the image as raw or qcow2"),
        "{fault}"
    );
    assert_eq!(cloud.hostd.create_bodies().len(), 1);
}

/// A raw image uploaded with its zeros is stored with holes, so a host
/// fetching it gets its data only (a sparse stream), and the same bytes.
#[test]
fn a_raw_upload_reaches_hosts_without_its_zeros() {
    let cloud = Cloud::start(NO_DELAYS);
    let t = cloud.auth();
    let image = call(
        &cloud.c,
        "POST",
        "/image/v2/images",
        &[t],
        r#"{"name": "mostly-empty", "disk_format": "raw", "container_format": "bare"}"#,
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut data = vec![0u8; 16 << 20];
    data[7] = 1;
    data[(9 << 20) + 3] = 2;
    let path = format!("/image/v2/images/{image}/file");
    assert_eq!(put_bytes(&cloud.c, &path, &cloud.admin, &data), 204);
    let host = format!("Bearer {}", common::hostd::host_token(&cloud.hostd.host_id));
    let raw = call(
        &cloud.c,
        "GET",
        &format!("/internal/v1/images/{image}/raw"),
        &[
            ("Authorization", &host),
            ("Accept", hostd_proto::sparse::CONTENT_TYPE),
        ],
        "",
    );
    assert_eq!(raw.status, 200);
    assert!(raw.bytes.len() < 64 << 10, "{} bytes sent", raw.bytes.len());
    let got = hostd_proto::sparse::decode_all(&raw.bytes, u64::MAX).unwrap();
    assert!(got == data, "the image as uploaded");
    // Without asking for a sparse stream: the plain bytes.
    let plain = call(
        &cloud.c,
        "GET",
        &format!("/internal/v1/images/{image}/raw"),
        &[("Authorization", &host)],
        "",
    );
    assert!(plain.bytes == data);
}
