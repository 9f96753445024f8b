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
use common::token as token_for;
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

/// A controller and a storaged serving S3, with a key for the admin
/// project and one for another project.
struct Cloud {
    c: Controller,
    storage: Storaged,
    port: u16,
    access: String,
    secret: String,
    other_access: String,
    other_secret: String,
}

fn cloud() -> Cloud {
    let c = start_with(None, &controller_config());
    let port = common::free_port();
    let storage = Storaged::start_with(
        &c,
        "storage-1",
        &format!("s3_listen = \"127.0.0.1:{port}\"\ns3_domain = \"s3.test\"\n"),
    );
    let admin = admin_token(&c);
    wait_registered(&c, &admin);
    second_project(&c);
    let bob = token(&c, "bob", "bob-password", "other");
    let (access, secret) = ec2(&c, &admin);
    let (other_access, other_secret) = ec2(&c, &bob);
    Cloud {
        c,
        storage,
        port,
        access,
        secret,
        other_access,
        other_secret,
    }
}

/// Runs a client; its stdout, failing the test (with what it said) if it
/// failed.
fn client(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The AWS CLI (v1, pinned) as its users drive it: `aws s3` copies in
/// parts above 8 MiB, syncs only what changed, presigns URLs that curl-like
/// clients use until they expire; `aws s3api` calls the operations one by
/// one.
#[test]
fn aws_cli_copies_syncs_presigns_and_calls_the_api() {
    let Some(python) = python() else { return };
    let Cloud {
        c: _c,
        storage: _storage,
        port,
        access,
        secret,
        ..
    } = cloud();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let aws = |args: &[&str]| {
        client(
            Command::new(python.with_file_name("aws"))
                .args(["--endpoint-url", &endpoint])
                .args(args)
                .env("AWS_ACCESS_KEY_ID", &access)
                .env("AWS_SECRET_ACCESS_KEY", &secret)
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_CONFIG_FILE", dir.path().join("none"))
                .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
                .env_remove("AWS_CA_BUNDLE")
                .env_remove("AWS_PROFILE"),
        )
    };
    aws(&["s3", "mb", "s3://cli-bucket"]);
    // 20 MiB: three parts of the CLI's default 8 MiB.
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_path = dir.path().join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    aws(&[
        "s3",
        "cp",
        big_path.to_str().unwrap(),
        "s3://cli-bucket/big.bin",
    ]);
    let head: Value = serde_json::from_str(&aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "big.bin",
    ]))
    .unwrap();
    assert!(head["ETag"].as_str().unwrap().ends_with("-3\""), "{head}");
    assert_eq!(head["ContentLength"], 20 << 20);
    let back = dir.path().join("back.bin");
    aws(&[
        "s3",
        "cp",
        "s3://cli-bucket/big.bin",
        back.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&back).unwrap() == big,
        "the download is the upload"
    );

    // sync: everything the first time, only the changed file the second.
    let tree = dir.path().join("tree");
    for (name, body) in [("a.txt", "a"), ("sub/b.txt", "bb"), ("sub/c.txt", "ccc")] {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
    }
    let first = aws(&[
        "s3",
        "sync",
        tree.to_str().unwrap(),
        "s3://cli-bucket/tree/",
    ]);
    assert_eq!(first.matches("upload:").count(), 3, "{first}");
    std::fs::write(tree.join("sub/b.txt"), "changed").unwrap();
    let second = aws(&[
        "s3",
        "sync",
        tree.to_str().unwrap(),
        "s3://cli-bucket/tree/",
    ]);
    assert_eq!(second.matches("upload:").count(), 1, "{second}");
    assert!(second.contains("sub/b.txt"), "{second}");
    let listed: Value = serde_json::from_str(&aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "tree/",
        "--delimiter",
        "/",
    ]))
    .unwrap();
    assert_eq!(listed["Contents"][0]["Key"], "tree/a.txt", "{listed}");
    assert_eq!(
        listed["CommonPrefixes"][0]["Prefix"], "tree/sub/",
        "{listed}"
    );
    let down = dir.path().join("down");
    aws(&[
        "s3",
        "sync",
        "s3://cli-bucket/tree/",
        down.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(down.join("sub/b.txt")).unwrap(),
        "changed"
    );

    // s3api, one call at a time: metadata and content type kept.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "small").unwrap();
    aws(&[
        "s3api",
        "put-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "small.txt",
        "--body",
        small.to_str().unwrap(),
        "--content-type",
        "text/plain",
        "--metadata",
        "k=v",
    ]);
    let head: Value = serde_json::from_str(&aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "small.txt",
    ]))
    .unwrap();
    assert_eq!(
        (&head["ContentType"], &head["Metadata"]),
        (&json!("text/plain"), &json!({"k": "v"}))
    );

    // A presigned URL works with curl and no credentials; not for another
    // key under the same signature.
    let url = aws(&[
        "s3",
        "presign",
        "s3://cli-bucket/small.txt",
        "--expires-in",
        "60",
    ]);
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-s", "-w", " %{http_code}", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(url.trim()), "small 200");
    let tampered = url.trim().replace("small.txt", "big.bin");
    assert!(curl(&tampered).ends_with(" 403"), "{}", curl(&tampered));

    // Bad input: an invalid bucket name is refused with S3's code.
    let out = Command::new(python.with_file_name("aws"))
        .args(["--endpoint-url", &endpoint, "s3", "mb", "s3://Not_Valid"])
        .env("AWS_ACCESS_KEY_ID", &access)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidBucketName"),
        "{out:?}"
    );

    aws(&["s3", "rm", "--recursive", "s3://cli-bucket"]);
    aws(&["s3", "rb", "s3://cli-bucket"]);
    let buckets = aws(&["s3", "ls"]);
    assert_eq!(buckets.trim(), "", "{buckets}");
}

/// s3cmd (pinned in tests/clients/requirements.txt; multipart above 15 MiB)
/// and rclone (the distribution's) doing what their users do: make a
/// bucket, upload, list, download and compare, sync a tree, delete.
#[test]
fn s3cmd_and_rclone_move_files_as_users_do() {
    let Some(python) = python() else { return };
    let rclone = PathBuf::from("/usr/bin/rclone");
    if !rclone.exists() {
        common::missing_tool("rclone (apt-get install rclone)");
        return;
    }
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..(20u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let cfg = dir.path().join("s3cfg");
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = 127.0.0.1:{port}\n\
             host_bucket = 127.0.0.1:{port}\nuse_https = False\nsignature_v2 = False\n\
             bucket_location = us-east-1\n",
            cloud.access,
            cloud.secret,
            port = cloud.port
        ),
    )
    .unwrap();
    let s3cmd = |args: &[&str]| {
        client(
            Command::new(python.with_file_name("s3cmd"))
                .arg("-c")
                .arg(&cfg)
                .args(args),
        )
    };
    s3cmd(&["mb", "s3://files"]);
    s3cmd(&["put", big.to_str().unwrap(), "s3://files/dir/big.bin"]);
    let listed = s3cmd(&["ls", "-r", "s3://files"]);
    assert!(
        listed.contains("20971520") && listed.contains("s3://files/dir/big.bin"),
        "{listed}"
    );
    let back = dir.path().join("back.bin");
    s3cmd(&["get", "s3://files/dir/big.bin", back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "s3cmd got back what it put"
    );
    s3cmd(&["del", "s3://files/dir/big.bin"]);
    s3cmd(&["rb", "s3://files"]);

    // rclone: a tree copied up, checked (MD5 against the ETags), synced
    // down to nothing, removed.
    let tree = dir.path().join("tree");
    for (name, size) in [
        ("a.txt", 10usize),
        ("sub/b.bin", 70_000),
        ("sub/deeper/c", 0),
    ] {
        let path = tree.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![b'x'; size]).unwrap();
    }
    let endpoint = format!("http://127.0.0.1:{}", cloud.port);
    let rc = |args: &[&str]| {
        client(
            Command::new(&rclone)
                .args(args)
                .env("RCLONE_CONFIG_V_TYPE", "s3")
                .env("RCLONE_CONFIG_V_PROVIDER", "Other")
                .env("RCLONE_CONFIG_V_ACCESS_KEY_ID", &cloud.access)
                .env("RCLONE_CONFIG_V_SECRET_ACCESS_KEY", &cloud.secret)
                .env("RCLONE_CONFIG_V_ENDPOINT", &endpoint)
                .env("RCLONE_CONFIG_V_REGION", "us-east-1")
                .env("RCLONE_CONFIG", "/dev/null")
                // rclone 1.60's AWS SDK fails on any CA bundle it is given
                // ("unsupported transport"); the endpoint is plain HTTP.
                .env_remove("AWS_CA_BUNDLE"),
        )
    };
    rc(&["mkdir", "v:tree"]);
    rc(&["copy", tree.to_str().unwrap(), "v:tree"]);
    let files = rc(&["lsf", "-R", "--files-only", "v:tree"]);
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    assert_eq!(files, ["a.txt", "sub/b.bin", "sub/deeper/c"]);
    rc(&["check", tree.to_str().unwrap(), "v:tree"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    rc(&["sync", empty.to_str().unwrap(), "v:tree"]);
    assert_eq!(rc(&["lsf", "-R", "v:tree"]).trim(), "");
    rc(&["rmdir", "v:tree"]);
    // Nothing left behind on the storage host.
    for sub in ["objects/blobs", "objects/tmp"] {
        let left = walk(&cloud.storage.data_dir.join(sub));
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
}

#[test]
fn boto3_uses_buckets_and_objects_as_on_s3() {
    let Some(python) = python() else { return };
    let Cloud {
        c: _c,
        storage,
        port,
        access,
        secret,
        other_access,
        other_secret,
    } = cloud();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/s3_basics.py");
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
    expect("virtual_host", json!(["top", "BucketAlreadyOwnedByYou"]));
    expect("malformed_xml", json!("MalformedXML"));
    expect("bad_names", json!(vec!["InvalidBucketName"; 5]));
    expect("oversize_part", json!("EntityTooLarge"));
    expect("presigned_expired", json!([403, true]));
    expect(
        "keys_after_bad_input",
        json!(["dir/a.bin", "dir/b.txt", "top.txt"]),
    );
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

/// The Swift API with its clients: the openstack CLI (container and object
/// commands, through the catalog's `object-store` entry) and
/// python-swiftclient (pinned; upload, list, stat, MD5-checked download,
/// delete); objects put over Swift are read over S3; a reader reads but
/// changes nothing; another project's token gets 403.
#[test]
fn swift_clients_use_containers_and_objects() {
    let Some(python) = python() else { return };
    let swift_port = common::free_port();
    let s3_port = common::free_port();
    let c = start_with(
        None,
        &format!(
            "{}object_store_url = \"http://127.0.0.1:{swift_port}\"\n",
            controller_config()
        ),
    );
    let _storage = Storaged::start_with(
        &c,
        "storage-1",
        &format!(
            "swift_listen = \"127.0.0.1:{swift_port}\"\ns3_listen = \"127.0.0.1:{s3_port}\"\n"
        ),
    );
    let admin = admin_token(&c);
    wait_registered(&c, &admin);
    second_project(&c);
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  virga:\n    auth:\n      auth_url: http://{}/identity\n      username: admin\n      password: {}\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n",
            c.addr,
            common::ADMIN_PASSWORD
        ),
    )
    .unwrap();
    let bin = python.parent().unwrap().to_owned();
    let os = |args: &[&str]| {
        client(
            Command::new(bin.join("openstack"))
                .args(["--os-cloud", "virga"])
                .args(args)
                .env("OS_CLIENT_CONFIG_FILE", &clouds)
                .env_remove("OS_CLOUD"),
        )
    };
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, b"hello over swift\n").unwrap();
    os(&["container", "create", "docs"]);
    assert!(os(&["container", "list", "-f", "value"]).contains("docs"));
    os(&[
        "object",
        "create",
        "--name",
        "notes/hello.txt",
        "docs",
        file.to_str().unwrap(),
    ]);
    let listed = os(&["object", "list", "docs", "-f", "value", "-c", "Name"]);
    assert_eq!(listed.trim(), "notes/hello.txt");
    let shown = os(&["object", "show", "docs", "notes/hello.txt", "-f", "json"]);
    assert!(shown.contains("\"content-length\": \"17\""), "{shown}");
    let saved = dir.path().join("saved.txt");
    os(&[
        "object",
        "save",
        "--file",
        saved.to_str().unwrap(),
        "docs",
        "notes/hello.txt",
    ]);
    assert_eq!(std::fs::read(&saved).unwrap(), b"hello over swift\n");

    // python-swiftclient with the same token: a tree up, listed with a
    // delimiter, downloaded (swiftclient checks every MD5), deleted.
    let token = admin.clone();
    let project = {
        let me = call(
            &c,
            "GET",
            "/identity/v3/auth/tokens",
            &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
            "",
        );
        me.json()["token"]["project"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let storage_url = format!("http://127.0.0.1:{swift_port}/v1/AUTH_{project}");
    let swift = |args: &[&str], cwd: &std::path::Path| {
        client(
            Command::new(bin.join("swift"))
                .args(["--os-auth-token", &token, "--os-storage-url", &storage_url])
                .args(args)
                .current_dir(cwd),
        )
    };
    let tree = dir.path().join("tree");
    for (name, size) in [("a.txt", 5usize), ("sub/b.bin", 200_000), ("sub/c", 0)] {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![b'z'; size]).unwrap();
    }
    swift(&["upload", "tree", "."], &tree);
    let top = swift(&["list", "tree", "--delimiter", "/"], &tree);
    assert_eq!(top.lines().collect::<Vec<_>>(), ["a.txt", "sub/"], "{top}");
    let stat = swift(&["stat", "tree"], &tree);
    assert!(
        stat.contains("Objects: 3") && stat.contains("Bytes: 200005"),
        "{stat}"
    );
    let down = dir.path().join("down");
    std::fs::create_dir_all(&down).unwrap();
    swift(&["download", "tree"], &down);
    assert_eq!(
        std::fs::read(down.join("sub/b.bin")).unwrap().len(),
        200_000
    );
    let account = swift(&["stat"], &tree);
    assert!(account.contains("Containers: 2"), "{account}");
    // Metadata changed in place (POST), and copies (COPY, X-Copy-From)
    // that keep it.
    swift(&["post", "tree", "a.txt", "-m", "color:blue"], &tree);
    let stat = swift(&["stat", "tree", "a.txt"], &tree);
    assert!(stat.contains("Meta Color: blue"), "{stat}");
    swift(
        &["copy", "tree", "a.txt", "--destination", "/tree/a-copy.txt"],
        &tree,
    );
    let stat = swift(&["stat", "tree", "a-copy.txt"], &tree);
    assert!(
        stat.contains("Meta Color: blue") && stat.contains("Content Length: 5"),
        "{stat}"
    );
    let copied = virga_test_support::http::send(
        swift_port,
        "PUT",
        &format!("/v1/AUTH_{project}/tree/b-copy.bin"),
        &[
            ("X-Auth-Token", &admin),
            ("X-Copy-From", "/tree/sub/b.bin"),
            ("Content-Length", "0"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(copied.status, 201, "{}", copied.body);
    let missing = virga_test_support::http::send(
        swift_port,
        "PUT",
        &format!("/v1/AUTH_{project}/tree/nothing"),
        &[
            ("X-Auth-Token", &admin),
            ("X-Copy-From", "/tree/absent"),
            ("Content-Length", "0"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(missing.status, 404);
    let listed = swift(&["list", "tree"], &tree);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["a-copy.txt", "a.txt", "b-copy.bin", "sub/b.bin", "sub/c"],
        "{listed}"
    );
    let (access, secret) = ec2(&c, &admin);
    // Segmented uploads: a static large object (swiftclient's default when
    // /info offers SLO) and a dynamic one, each downloaded whole (and
    // MD5-checked by swiftclient) and read across a segment boundary.
    let big: Vec<u8> = (0..(3u32 << 20) + 1000).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    for (container, how, shows) in [
        ("large", "--use-slo", "Static-Large-Object: True"),
        ("large2", "--use-dlo", "Manifest: large2_segments/big.bin/"),
    ] {
        swift(
            &[
                "upload",
                container,
                "big.bin",
                "--segment-size",
                "1048576",
                how,
            ],
            dir.path(),
        );
        let stat = swift(&["stat", container, "big.bin"], dir.path());
        assert!(stat.contains(shows), "{how}: {stat}");
        // Over S3 a large object is refused with a reason, not served wrong.
        let over_s3 = Command::new(&python)
            .args([
                "-c",
                "import boto3,sys\nfrom botocore.exceptions import ClientError\ntry:\n    boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], region_name='us-east-1').get_object(Bucket=sys.argv[4], Key='big.bin')\n    print('served')\nexcept ClientError as e:\n    print(e.response['Error']['Code'])",
                &format!("http://127.0.0.1:{s3_port}"),
                &access,
                &secret,
                container,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&over_s3.stdout).trim(),
            "NotImplemented",
            "{how}"
        );
        let got = dir.path().join(format!("got-{container}"));
        std::fs::create_dir_all(&got).unwrap();
        swift(&["download", container, "big.bin"], &got);
        assert!(
            std::fs::read(got.join("big.bin")).unwrap() == big,
            "{how}: the segments joined"
        );
        let across = virga_test_support::http::send(
            swift_port,
            "GET",
            &format!("/v1/AUTH_{project}/{container}/big.bin"),
            &[("X-Auth-Token", &admin), ("Range", "bytes=1048570-1048589")],
            b"",
        )
        .unwrap();
        assert_eq!(across.status, 206, "{how}");
        assert_eq!(across.bytes, big[1_048_570..1_048_590], "{how}");
        // Deleting the object deletes its segments (swiftclient asks).
        swift(&["delete", container], dir.path());
        let segments = format!("{container}_segments");
        let left = swift(&["list", &segments], dir.path());
        assert_eq!(left.trim(), "", "{how}: segments left");
        swift(&["delete", &segments], dir.path());
    }
    // A manifest naming a segment that is not there, or too small, is 400.
    let bad_slo = |body: &str| {
        virga_test_support::http::send(
            swift_port,
            "PUT",
            &format!("/v1/AUTH_{project}/tree/slo?multipart-manifest=put"),
            &[
                ("X-Auth-Token", &admin),
                ("Content-Length", &body.len().to_string()),
            ],
            body.as_bytes(),
        )
        .unwrap()
        .status
    };
    assert_eq!(bad_slo(r#"[{"path": "/tree/absent"}]"#), 400);
    assert_eq!(
        bad_slo(r#"[{"path": "/tree/a.txt"}, {"path": "/tree/a.txt"}]"#),
        400
    );
    assert_eq!(bad_slo("not json"), 400);

    // Read back over S3: one store under both APIs.
    let out = Command::new(&python)
        .args([
            "-c",
            "import boto3,sys; print(boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], region_name='us-east-1').get_object(Bucket='docs', Key='notes/hello.txt')['Body'].read().decode(), end='')",
            &format!("http://127.0.0.1:{s3_port}"),
            &access,
            &secret,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello over swift\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another project's token: 403 on this account. Bob as a reader here:
    // reads, no writes.
    let bob = token_for(&c, "bob", "bob-password", "other");
    let raw = |tok: &str, method: &str, path: &str| {
        virga_test_support::http::send(
            swift_port,
            method,
            &format!("/v1/AUTH_{project}{path}"),
            &[("X-Auth-Token", tok), ("Content-Length", "0")],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(raw(&bob, "GET", "/docs"), 403);
    assert_eq!(raw("not-a-token", "GET", "/docs"), 401);
    let bob_user = {
        let me = call(
            &c,
            "GET",
            "/identity/v3/auth/tokens",
            &[("X-Auth-Token", &bob), ("X-Subject-Token", &bob)],
            "",
        );
        me.json()["token"]["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let reader_role = call(
        &c,
        "GET",
        "/identity/v3/roles?name=reader",
        &[("X-Auth-Token", &admin)],
        "",
    );
    let reader = reader_role.json()["roles"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let granted = call(
        &c,
        "PUT",
        &format!("/identity/v3/projects/{project}/users/{bob_user}/roles/{reader}"),
        &[("X-Auth-Token", &admin)],
        "",
    );
    assert!(granted.status < 300, "{}", granted.body);
    let bob_here = token_for(&c, "bob", "bob-password", "admin");
    assert_eq!(raw(&bob_here, "GET", "/docs"), 200);
    assert_eq!(raw(&bob_here, "DELETE", "/docs/notes/hello.txt"), 403);
    assert_eq!(raw(&bob_here, "PUT", "/docs/new"), 403);

    // Container metadata and ACLs, as `swift post` sets them.
    swift(
        &["post", "docs", "-m", "owner:ops", "-r", ".r:*,.rlistings"],
        &tree,
    );
    let stat = swift(&["stat", "docs"], &tree);
    assert!(
        stat.contains("Meta Owner: ops") && stat.contains("Read ACL: .r:*,.rlistings"),
        "{stat}"
    );
    let anon = |method: &str, path: &str| {
        virga_test_support::http::send(
            swift_port,
            method,
            &format!("/v1/AUTH_{project}{path}"),
            &[("Content-Length", "0")],
            b"",
        )
        .unwrap()
    };
    let got = anon("GET", "/docs/notes/hello.txt");
    assert_eq!((got.status, got.body.as_str()), (200, "hello over swift\n"));
    assert_eq!(anon("GET", "/docs").body.trim(), "notes/hello.txt");
    let head = anon("HEAD", "/docs");
    assert_eq!(head.header("x-container-meta-owner"), Some("ops"));
    assert_eq!(
        head.header("x-container-read"),
        None,
        "ACLs are the owner's"
    );
    assert_eq!(anon("PUT", "/docs/anon").status, 401);
    assert_eq!(anon("DELETE", "/docs/notes/hello.txt").status, 401);
    assert_eq!(anon("GET", "").status, 401, "never the account");
    // The same container over S3, anonymously: public-read.
    let s3_anon =
        virga_test_support::http::send(s3_port, "GET", "/docs/notes/hello.txt", &[], b"").unwrap();
    assert_eq!(s3_anon.status, 200, "{}", s3_anon.body);
    // Objects only (no .rlistings): no listing.
    swift(&["post", "docs", "-r", ".r:*"], &tree);
    assert_eq!(anon("GET", "/docs").status, 401);
    assert_eq!(anon("GET", "/docs/notes/hello.txt").status, 200);
    // Removed: private again, over S3 too.
    swift(&["post", "docs", "-r", ""], &tree);
    assert_eq!(anon("GET", "/docs/notes/hello.txt").status, 401);
    let s3_anon =
        virga_test_support::http::send(s3_port, "GET", "/docs/notes/hello.txt", &[], b"").unwrap();
    assert_eq!(s3_anon.status, 403);
    // Another project's users, by grant: bob (in "other") reads, then writes.
    let other = {
        let me = call(
            &c,
            "GET",
            "/identity/v3/auth/tokens",
            &[("X-Auth-Token", &bob), ("X-Subject-Token", &bob)],
            "",
        );
        me.json()["token"]["project"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(raw(&bob, "GET", "/docs/notes/hello.txt"), 403);
    swift(&["post", "docs", "-r", &format!("{other}:*")], &tree);
    assert_eq!(raw(&bob, "GET", "/docs/notes/hello.txt"), 200);
    assert_eq!(raw(&bob, "GET", "/docs"), 200);
    assert_eq!(raw(&bob, "PUT", "/docs/from-bob"), 403);
    swift(
        &["post", "docs", "-w", &format!("{other}:{bob_user}")],
        &tree,
    );
    assert_eq!(raw(&bob, "PUT", "/docs/from-bob"), 201);
    assert_eq!(raw(&bob, "DELETE", "/docs/from-bob"), 204);
    assert_eq!(raw(&bob, "COPY", "/docs/notes/hello.txt"), 403, "no copies");
    assert_eq!(raw(&bob, "POST", "/docs"), 403, "not the container");
    assert_eq!(raw(&bob, "GET", ""), 403, "not the account");
    // What is not honoured is refused, as is metadata beyond Swift's limits.
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("X-Auth-Token", admin.as_str()), ("Content-Length", "0")];
        all.extend_from_slice(headers);
        virga_test_support::http::send(
            swift_port,
            "POST",
            &format!("/v1/AUTH_{project}/docs"),
            &all,
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(post(&[("X-Container-Read", ".r:example.com")]), 400);
    assert_eq!(post(&[("X-Container-Write", ".r:*")]), 400);
    let long = "v".repeat(300);
    assert_eq!(post(&[("X-Container-Meta-Big", long.as_str())]), 400);
    assert_eq!(
        post(&[
            ("X-Remove-Container-Meta-Owner", "x"),
            ("X-Remove-Container-Read", "x"),
            ("X-Remove-Container-Write", "x")
        ]),
        204
    );
    let stat = swift(&["stat", "docs"], &tree);
    assert!(
        !stat.contains("Meta Owner") && !stat.contains(&other),
        "{stat}"
    );

    // Bad input: a wrong ETag is refused and stores nothing; an absent
    // object is 404; a non-empty container is not deleted.
    let bad = virga_test_support::http::send(
        swift_port,
        "PUT",
        &format!("/v1/AUTH_{project}/docs/bad"),
        &[
            ("X-Auth-Token", &admin),
            ("ETag", "00000000000000000000000000000000"),
            ("Content-Length", "3"),
        ],
        b"abc",
    )
    .unwrap();
    assert_eq!(bad.status, 422);
    assert_eq!(raw(&admin, "HEAD", "/docs/bad"), 404);
    assert_eq!(raw(&admin, "DELETE", "/docs"), 409);
    let bulk = virga_test_support::http::send(
        swift_port,
        "POST",
        &format!("/v1/AUTH_{project}?bulk-delete"),
        &[
            ("X-Auth-Token", &admin),
            ("Accept", "application/json"),
            ("Content-Type", "text/plain"),
        ],
        b"/tree/a-copy.txt\n/tree/absent\n/nocontainer/x\n/tree\n",
    )
    .unwrap();
    assert_eq!(bulk.status, 200, "{}", bulk.body);
    let counts: serde_json::Value = serde_json::from_str(&bulk.body).unwrap();
    assert_eq!(
        (
            &counts["Number Deleted"],
            &counts["Number Not Found"],
            counts["Errors"].as_array().map(Vec::len)
        ),
        (&json!(1), &json!(2), Some(1)),
        "the container still has objects: {counts}"
    );
    swift(&["delete", "tree"], &tree);
    os(&["object", "delete", "docs", "notes/hello.txt"]);
    os(&["container", "delete", "docs"]);
    assert_eq!(os(&["container", "list", "-f", "value"]).trim(), "");
}
