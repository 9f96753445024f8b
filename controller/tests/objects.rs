//! storaged's S3 API with real clients: boto3 (pinned in
//! tests/clients/requirements.txt) signs with EC2 credentials the
//! controller's Keystone made; storaged checks each signature with the
//! secret it asks the controller for.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::hostd::controller_config;
use common::storaged::{wait_registered, Storaged};
use common::{admin_token, call, second_project, start_with, token, Controller};
use serde_json::{json, Value};

/// The Python of the venv the openstack CLI is in (boto3 beside it).
fn python() -> Option<PathBuf> {
    match std::env::var_os("VIRGA_OPENSTACK") {
        Some(p) => Some(PathBuf::from(p).with_file_name("python3")),
        None => {
            common::missing_tool("the pinned Python clients (VIRGA_OPENSTACK)");
            None
        }
    }
}

/// An EC2 credential for the token's user in its project: (access, secret).
fn ec2(c: &Controller, token: &str) -> (String, String) {
    let me = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", token), ("X-Subject-Token", token)],
        "",
    );
    let user = me.json()["token"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        c,
        "POST",
        &format!("/identity/v3/users/{user}/credentials/OS-EC2"),
        &[
            ("X-Auth-Token", token),
            ("Content-Type", "application/json"),
        ],
        &json!({}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let cred = &r.json()["credential"];
    (
        cred["access"].as_str().unwrap().to_owned(),
        cred["secret"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn boto3_uses_buckets_and_objects_as_on_s3() {
    let Some(python) = python() else { return };
    let c = start_with(None, &controller_config());
    let port = common::free_port();
    let storage = Storaged::start_with(
        &c,
        "storage-1",
        &format!("s3_listen = \"127.0.0.1:{port}\"\n"),
    );
    let admin = admin_token(&c);
    wait_registered(&c, &admin);
    second_project(&c);
    let bob = token(&c, "bob", "bob-password", "other");
    let (access, secret) = ec2(&c, &admin);
    let (other_access, other_secret) = ec2(&c, &bob);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/s3_basics.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([
            &format!("http://127.0.0.1:{port}"),
            &access,
            &secret,
            &other_access,
            &other_secret,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expect = |key: &str, want: Value| assert_eq!(seen[key], want, "{key}: {seen:#}");
    expect("create_again", json!("BucketAlreadyOwnedByYou"));
    expect("etag_ok", json!(true));
    assert!(
        seen["crc32"].is_string(),
        "boto3 sent its CRC32 and got it back: {seen:#}"
    );
    expect("get_ok", json!(true));
    expect("meta", json!({"k": "v"}));
    expect("ctype", json!("application/x-test"));
    expect("range_ok", json!(true));
    expect("suffix_ok", json!(true));
    expect("list_keys", json!(["top.txt"]));
    expect("prefixes", json!(["dir/"]));
    expect("paged", json!(["dir/a.bin", "dir/b.txt", "top.txt"]));
    expect("v1", json!(["dir/a.bin", "dir/b.txt"]));
    expect("head_len", json!(5));
    expect("if_none_match", json!("304"));
    expect("if_match_bad", json!("PreconditionFailed"));
    expect("missing", json!("NoSuchKey"));
    expect("no_bucket", json!("NoSuchBucket"));
    expect("bad_md5", json!("BadDigest"));
    expect("bad_crc", json!("BadDigest"));
    expect("bad_left", json!("404"));
    expect("other_get", json!("AccessDenied"));
    expect("other_put", json!("AccessDenied"));
    expect("other_buckets", json!([]));
    expect("other_create", json!("BucketAlreadyExists"));
    expect("bad_sig", json!("SignatureDoesNotMatch"));
    expect("unknown_key", json!("InvalidAccessKeyId"));
    expect("presigned", json!("top"));
    expect("presigned_tampered", json!(403));
    expect("multipart_back", json!(true));
    expect("multipart_etag_ok", json!(true));
    expect("uploads", json!(["parts"]));
    expect("parts", json!([1, 2]));
    expect("too_small", json!("EntityTooSmall"));
    expect("wrong_etag", json!("InvalidPart"));
    expect("wrong_order", json!("InvalidPartOrder"));
    expect("one_part", json!("ok"));
    expect("one_part_back", json!(true));
    expect("aborted", json!("NoSuchUpload"));
    expect("copy_ok", json!([true, {"k": "v"}, "application/x-test"]));
    expect(
        "copy_replaced",
        json!([{"new": "yes"}, "text/plain", 1048580]),
    );
    expect("copy_self", json!("InvalidRequest"));
    expect("copy_missing", json!("NoSuchKey"));
    expect("copy_if_match", json!("PreconditionFailed"));
    expect("bad_range", json!("InvalidArgument"));
    expect("joined_ok", json!(true));
    expect("other_copy", json!("AccessDenied"));
    expect("other_upload", json!("AccessDenied"));
    expect("anon_get", json!([200, "hello world"]));
    expect("anon_list", json!(200));
    expect("anon_put", json!(403));
    expect("anon_private", json!(403));
    expect("anon_buckets", json!(403));
    expect("acl", json!(["FULL_CONTROL", "READ"]));
    expect("anon_after_private", json!(403));
    expect("other_acl", json!("AccessDenied"));
    expect("not_empty", json!("BucketNotEmpty"));
    expect("deleted", json!(["dir/a.bin", "dir/b.txt", "top.txt"]));
    expect("buckets_after", json!([]));
    // Nothing left on disk: no blob, no temporary file.
    for sub in ["objects/blobs", "objects/tmp"] {
        let left: Vec<_> = walk(&storage.data_dir.join(sub));
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            files.extend(walk(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}
