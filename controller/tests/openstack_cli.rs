//! The real `openstack` CLI (python-openstackclient, pinned in
//! tests/clients/requirements.txt) against a controller process.
//!
//! `cargo xtask test` installs the client and sets `VIRGA_OPENSTACK` to it;
//! elsewhere the test is skipped with a note.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{start, Controller, ADMIN_PASSWORD};

fn openstack() -> Option<PathBuf> {
    match std::env::var_os("VIRGA_OPENSTACK") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            common::missing_tool("the openstack CLI (VIRGA_OPENSTACK)");
            None
        }
    }
}

/// `clouds.yaml` with a cloud named `virga` for this controller.
fn clouds_yaml(c: &Controller, password: &str) -> PathBuf {
    let path = c.dir_path.join("clouds.yaml");
    std::fs::write(
        &path,
        format!(
            "clouds:\n  virga:\n    auth:\n      auth_url: http://{}/identity\n      username: admin\n      password: {password}\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n",
            c.addr
        ),
    )
    .unwrap();
    path
}

/// Runs `openstack` and returns its output, failing the test if it failed.
fn succeed(cli: &Path, clouds: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run(cli, clouds, args);
    assert!(ok, "openstack {args:?} failed:\n{err}");
    out
}

fn run(cli: &Path, clouds: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli)
        .args(["--os-cloud", "virga"])
        .args(args)
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env_remove("OS_CLOUD")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn openstack_token_issue() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let (ok, out, err) = run(&cli, &clouds, &["token", "issue", "-f", "json"]);
    assert!(ok, "openstack token issue failed:\n{err}");
    let token: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(token["id"].as_str().unwrap().len(), 43, "{out}");
    assert_eq!(token["project_id"].as_str().unwrap().len(), 32, "{out}");
    assert!(token["expires"].as_str().unwrap().contains('T'), "{out}");
    assert_eq!(token["user_id"].as_str().unwrap().len(), 32, "{out}");

    let bad = clouds_yaml(&c, "not-the-password");
    let (ok, _, err) = run(&cli, &bad, &["token", "issue"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

#[test]
fn openstack_flavor_create_list_show_delete() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let (ok, out, err) = run(
        &cli,
        &clouds,
        &[
            "flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "1", "m1.tiny", "-f",
            "json",
        ],
    );
    assert!(ok, "flavor create failed:\n{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["name"], "m1.tiny");
    assert_eq!(created["ram"], 256);
    let (ok, out, err) = run(&cli, &clouds, &["flavor", "list", "-f", "json"]);
    assert!(ok, "flavor list failed:\n{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["Name"], "m1.tiny", "{out}");
    assert_eq!(list[0]["VCPUs"], 1, "{out}");
    let (ok, out, err) = run(&cli, &clouds, &["flavor", "show", "m1.tiny", "-f", "json"]);
    assert!(ok, "flavor show by name failed:\n{err}");
    assert!(out.contains("m1.tiny"));
    // Extra specs: set, shown as properties, unset.
    let set = [
        "flavor",
        "set",
        "--property",
        "hw:cpu_policy=dedicated",
        "--property",
        "k2=v2",
        "m1.tiny",
    ];
    let (ok, _, err) = run(&cli, &clouds, &set);
    assert!(ok, "flavor set failed:\n{err}");
    let properties = |clouds: &Path| {
        let (ok, out, err) = run(&cli, clouds, &["flavor", "show", "m1.tiny", "-f", "json"]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["properties"].clone()
    };
    assert_eq!(
        properties(&clouds),
        serde_json::json!({"hw:cpu_policy": "dedicated", "k2": "v2"})
    );
    let unset = ["flavor", "unset", "--property", "k2", "m1.tiny"];
    let (ok, _, err) = run(&cli, &clouds, &unset);
    assert!(ok, "flavor unset failed:\n{err}");
    assert_eq!(
        properties(&clouds),
        serde_json::json!({"hw:cpu_policy": "dedicated"})
    );
    let (ok, _, err) = run(&cli, &clouds, &["flavor", "delete", "m1.tiny"]);
    assert!(ok, "flavor delete failed:\n{err}");
    let (ok, out, _) = run(&cli, &clouds, &["flavor", "list", "-f", "json"]);
    assert!(ok);
    assert_eq!(out.trim(), "[]");
}

#[test]
fn openstack_image_create_list_save_delete() {
    let Some(cli) = openstack() else { return };
    // With a storage host, as the all-in-one has: the bytes go there.
    let c = common::start_with(None, &common::hostd::controller_config());
    let storage = common::storaged::Storaged::start(&c, "storage-1");
    common::storaged::wait_registered(&c, &common::admin_token(&c));
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let file = c.dir_path.join("disk.raw");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let (ok, out, err) = run(
        &cli,
        &clouds,
        &[
            "image",
            "create",
            "--file",
            file.to_str().unwrap(),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "test-image",
            "-f",
            "json",
        ],
    );
    assert!(ok, "image create failed:\n{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["status"], "active", "{out}");
    assert_eq!(created["size"], 1_000_000, "{out}");
    let held = storage
        .data_dir
        .join("images")
        .join(created["id"].as_str().unwrap());
    assert!(held.exists(), "on the storage host");
    let (ok, out, err) = run(&cli, &clouds, &["image", "list", "-f", "json"]);
    assert!(ok, "image list failed:\n{err}");
    assert!(out.contains("test-image"), "{out}");
    let saved = c.dir_path.join("saved.raw");
    let (ok, _, err) = run(
        &cli,
        &clouds,
        &[
            "image",
            "save",
            "--file",
            saved.to_str().unwrap(),
            "test-image",
        ],
    );
    assert!(ok, "image save failed:\n{err}");
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        data,
        "downloaded bytes match (the client verifies the hash too)"
    );
    let (ok, _, err) = run(&cli, &clouds, &["image", "delete", "test-image"]);
    assert!(ok, "image delete failed:\n{err}");
    assert!(!held.exists(), "removed from the storage host");
    let (ok, out, _) = run(&cli, &clouds, &["image", "list", "-f", "json"]);
    assert!(ok);
    assert_eq!(out.trim(), "[]");
}

/// `clouds.yaml` entry for any user and project.
fn clouds_for(c: &Controller, name: &str, user: &str, password: &str, project: &str) -> PathBuf {
    let path = c.dir_path.join(format!("clouds-{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "clouds:\n  virga:\n    auth:\n      auth_url: http://{}/identity\n      username: {user}\n      password: {password}\n      project_name: {project}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n",
            c.addr
        ),
    )
    .unwrap();
    path
}

#[test]
fn openstack_projects_users_roles_and_isolation() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let admin = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &admin, args);
    ok(&["project", "create", "--domain", "default", "demo"]);
    ok(&[
        "user",
        "create",
        "--domain",
        "default",
        "--password",
        "alice-password",
        "alice",
    ]);
    ok(&[
        "role",
        "add",
        "--project",
        "demo",
        "--user",
        "alice",
        "member",
    ]);
    let projects = ok(&["project", "list", "-f", "value", "-c", "Name"]);
    assert!(
        projects.contains("admin") && projects.contains("demo"),
        "{projects}"
    );
    assert!(ok(&["user", "list", "-f", "value", "-c", "Name"]).contains("alice"));

    // The admin's private image is invisible to the demo project.
    let file = c.dir_path.join("img.raw");
    std::fs::write(&file, [1u8; 4096]).unwrap();
    ok(&[
        "image",
        "create",
        "--private",
        "--file",
        file.to_str().unwrap(),
        "--disk-format",
        "raw",
        "admin-only",
    ]);
    let alice = clouds_for(&c, "alice", "alice", "alice-password", "demo");
    let (ok_list, out, err) = run(&cli, &alice, &["image", "list", "-f", "json"]);
    assert!(ok_list, "{err}");
    assert_eq!(
        out.trim(),
        "[]",
        "another project's private image is not listed"
    );
    let (found, _, err) = run(&cli, &alice, &["image", "show", "admin-only"]);
    assert!(!found, "and not shown");
    assert!(
        err.contains("No Image found") || err.contains("404") || err.contains("Could not find"),
        "{err}"
    );
    // A private flavor opened to the demo project (Nova's flavor access):
    // alice sees it until it is closed to demo again.
    ok(&[
        "flavor",
        "create",
        "--private",
        "--project",
        "demo",
        "--ram",
        "256",
        "--vcpus",
        "1",
        "--disk",
        "1",
        "demo-only",
    ]);
    let demo = ok(&["project", "show", "demo", "-f", "value", "-c", "id"]);
    let access = ok(&[
        "flavor",
        "show",
        "demo-only",
        "-f",
        "value",
        "-c",
        "access_project_ids",
    ]);
    assert!(access.contains(demo.trim()), "{access}");
    let alice_flavors = || {
        let (listed, out, err) = run(
            &cli,
            &alice,
            &["flavor", "list", "-f", "value", "-c", "Name"],
        );
        assert!(listed, "{err}");
        out
    };
    assert!(alice_flavors().contains("demo-only"));
    ok(&["flavor", "unset", "--project", "demo", "demo-only"]);
    assert!(!alice_flavors().contains("demo-only"));
    assert!(
        ok(&["flavor", "list", "--private", "-f", "value", "-c", "Name"]).contains("demo-only")
    );

    // And a member cannot administer identities.
    let (allowed, _, err) = run(&cli, &alice, &["project", "create", "sneaky"]);
    assert!(!allowed);
    assert!(err.contains("403"), "{err}");

    // `user set` and `project set` (Keystone's PATCH): a new password
    // replaces the old one; a disabled user gets no token.
    ok(&["user", "set", "--password", "alice-new-password", "alice"]);
    let (works, _, _) = run(&cli, &alice, &["token", "issue"]);
    assert!(!works, "the old password no longer works");
    let alice_new = clouds_for(&c, "alice-new", "alice", "alice-new-password", "demo");
    let (works, _, err) = run(&cli, &alice_new, &["token", "issue"]);
    assert!(works, "{err}");
    ok(&["user", "set", "--disable", "alice"]);
    let (works, _, _) = run(&cli, &alice_new, &["token", "issue"]);
    assert!(!works, "a disabled user gets no token");
    ok(&["user", "set", "--enable", "alice"]);
    ok(&[
        "project",
        "set",
        "--description",
        "the demo project",
        "demo",
    ]);
    let shown = ok(&[
        "project",
        "show",
        "demo",
        "-f",
        "value",
        "-c",
        "description",
    ]);
    assert_eq!(shown.trim(), "the demo project");
    let (renamed, _, err) = run(&cli, &admin, &["user", "set", "--name", "admin", "alice"]);
    assert!(!renamed && err.contains("409"), "names stay unique: {err}");

    ok(&[
        "role",
        "remove",
        "--project",
        "demo",
        "--user",
        "alice",
        "member",
    ]);
    let (works, _, _) = run(&cli, &alice, &["token", "issue"]);
    assert!(!works, "no role on the project: no token for it");
    ok(&["user", "delete", "alice"]);
    ok(&["project", "delete", "demo"]);

    // Roles and domains, as an admin makes them.
    ok(&[
        "role",
        "create",
        "--description",
        "reads the books",
        "auditor",
    ]);
    let shown = ok(&[
        "role",
        "show",
        "auditor",
        "-f",
        "value",
        "-c",
        "description",
    ]);
    assert_eq!(shown.trim(), "reads the books");
    ok(&["role", "set", "--name", "auditors", "auditor"]);
    let (changed, _, err) = run(&cli, &admin, &["role", "delete", "member"]);
    assert!(!changed && err.contains("immutable"), "{err}");
    ok(&["role", "delete", "auditors"]);
    ok(&["domain", "create", "--description", "a customer", "acme"]);
    ok(&["project", "create", "--domain", "acme", "web"]);
    let (deleted, _, err) = run(&cli, &admin, &["domain", "delete", "acme"]);
    assert!(!deleted && err.contains("disable it first"), "{err}");
    ok(&["domain", "set", "--disable", "acme"]);
    ok(&["domain", "delete", "acme"]);
    let projects = ok(&["project", "list", "-f", "value", "-c", "Name"]);
    assert!(
        !projects.contains("web"),
        "went with its domain: {projects}"
    );
}

/// OpenStack's secure defaults (api/policy.rs): a user whose only role in
/// a project is `reader` lists what is there and changes nothing, in every
/// service; their own keypairs are theirs. Each refusal leaves nothing.
#[test]
fn a_reader_reads_and_changes_nothing() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let admin = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &admin, args);
    ok(&["project", "create", "seen"]);
    ok(&["user", "create", "--password", "rita-password", "rita"]);
    ok(&[
        "role",
        "add",
        "--project",
        "seen",
        "--user",
        "rita",
        "reader",
    ]);
    let rita = clouds_for(&c, "rita", "rita", "rita-password", "seen");
    ok(&[
        "flavor", "create", "--ram", "64", "--vcpus", "1", "--disk", "0", "tiny",
    ]);
    let file = c.dir_path.join("r.raw");
    std::fs::write(&file, [0u8; 512]).unwrap();
    let image = file.to_str().unwrap();
    ok(&[
        "image",
        "create",
        "--public",
        "--file",
        image,
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "pub",
    ]);
    for (what, args) in [
        (
            "server",
            vec![
                "server", "create", "--flavor", "tiny", "--image", "pub", "s1",
            ],
        ),
        (
            "image",
            vec![
                "image",
                "create",
                "--file",
                file.to_str().unwrap(),
                "--disk-format",
                "raw",
                "--container-format",
                "bare",
                "i1",
            ],
        ),
        ("network", vec!["network", "create", "n1"]),
        ("security group", vec!["security", "group", "create", "g1"]),
        ("volume", vec!["volume", "create", "--size", "1", "v1"]),
    ] {
        let (made, _, err) = run(&cli, &rita, &args);
        assert!(!made, "a reader made a {what}");
        assert!(
            err.contains("403") || err.contains("Forbidden"),
            "{what}: {err}"
        );
    }
    for list in [
        vec!["server", "list"],
        vec!["image", "list"],
        vec!["network", "list"],
        vec!["volume", "list"],
        vec!["flavor", "list"],
    ] {
        let (listed, _, err) = run(&cli, &rita, &list);
        assert!(listed, "{list:?}: {err}");
    }
    // Nothing was made by the refusals.
    for (kind, name) in [("image", "i1"), ("network", "n1"), ("security group", "g1")] {
        let mut args: Vec<&str> = kind.split(' ').collect();
        args.extend(["show", name]);
        let (found, _, _) = run(&cli, &admin, &args);
        assert!(!found, "{kind} {name} exists");
    }
    // A keypair is the user's own, whatever the role.
    let (made, _, err) = run(&cli, &rita, &["keypair", "create", "ritas-key"]);
    assert!(made, "{err}");
}

#[test]
fn openstack_keypairs() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    // An ed25519 public key: its type name, then 32 key bytes.
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[9u8; 32]);
    use base64::Engine;
    let key = format!(
        "ssh-ed25519 {} test@virga\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    let pub_file = c.dir_path.join("id.pub");
    std::fs::write(&pub_file, &key).unwrap();
    let (ok, out, err) = run(
        &cli,
        &clouds,
        &[
            "keypair",
            "create",
            "--public-key",
            pub_file.to_str().unwrap(),
            "mykey",
            "-f",
            "json",
        ],
    );
    assert!(ok, "keypair create failed:\n{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["name"], "mykey");
    assert_eq!(created["fingerprint"].as_str().unwrap().len(), 47);
    let (ok, out, err) = run(
        &cli,
        &clouds,
        &["keypair", "list", "-f", "value", "-c", "Name"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "mykey");
    let (ok, _, err) = run(&cli, &clouds, &["keypair", "show", "mykey"]);
    assert!(ok, "keypair show failed:\n{err}");
    let (dup, _, err) = run(
        &cli,
        &clouds,
        &[
            "keypair",
            "create",
            "--public-key",
            pub_file.to_str().unwrap(),
            "mykey",
        ],
    );
    assert!(!dup && err.contains("409"), "duplicate refused: {err}");
    let (ok, _, err) = run(&cli, &clouds, &["keypair", "delete", "mykey"]);
    assert!(ok, "{err}");
}

/// A flavor `tiny` and an image `kernel` (not a real one: no server boots).
fn tiny_flavor_and_kernel(c: &Controller, ok: &dyn Fn(&[&str]) -> String) {
    ok(&[
        "flavor", "create", "--ram", "128", "--vcpus", "1", "--disk", "0", "tiny",
    ]);
    let kernel = c.dir_path.join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF stand-in").unwrap();
    ok(&[
        "image",
        "create",
        "--file",
        kernel.to_str().unwrap(),
        "--disk-format",
        "aki",
        "--container-format",
        "aki",
        "kernel",
    ]);
}

#[test]
fn openstack_server_lifecycle_without_hosts() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    tiny_flavor_and_kernel(&c, &ok);
    // No host has registered: the build fails, and the client says so.
    let (created, _, err) = run(
        &cli,
        &clouds,
        &[
            "server", "create", "--image", "kernel", "--flavor", "tiny", "--wait", "vm1",
        ],
    );
    assert!(!created, "no host, no server");
    assert!(
        err.contains("Error creating server") || err.contains("ERROR"),
        "{err}"
    );
    let list = ok(&["server", "list", "-f", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["Name"], "vm1");
    assert_eq!(list[0]["Status"], "ERROR");
    let show = ok(&["server", "show", "vm1", "-f", "json"]);
    assert!(show.contains("No valid host was found"), "{show}");
    ok(&["server", "delete", "--wait", "vm1"]);
    assert_eq!(ok(&["server", "list", "-f", "json"]).trim(), "[]");
}

/// What the CLI can send wrong, and the list, paging and event commands.
#[test]
fn openstack_server_bad_input_quotas_paging_and_events() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    let fails = |args: &[&str]| {
        let (ok, _, err) = run(&cli, &clouds, args);
        assert!(!ok, "openstack {args:?} should fail");
        err
    };
    tiny_flavor_and_kernel(&c, &ok);
    // Unknown flavor and image: the lookups answer 404 and the client says so.
    let err = fails(&[
        "server", "create", "--image", "kernel", "--flavor", "nope", "vm",
    ]);
    assert!(err.contains("No Flavor found"), "{err}");
    let err = fails(&[
        "server", "create", "--image", "nope", "--flavor", "tiny", "vm",
    ]);
    assert!(err.contains("No Image found"), "{err}");

    // Quotas: two instances, the third is refused with Nova's 403.
    ok(&["quota", "set", "--instances", "2", "admin"]);
    let quota = ok(&["quota", "show", "admin", "-f", "json"]);
    assert!(
        quota.contains("\"instances\"") || quota.contains("Instances"),
        "{quota}"
    );
    ok(&[
        "server", "create", "--image", "kernel", "--flavor", "tiny", "vm-a",
    ]);
    ok(&[
        "server", "create", "--image", "kernel", "--flavor", "tiny", "vm-b",
    ]);
    let err = fails(&[
        "server", "create", "--image", "kernel", "--flavor", "tiny", "vm-c",
    ]);
    assert!(err.contains("Quota exceeded for instances"), "{err}");
    assert!(err.contains("403"), "{err}");

    // Paging: one at a time, the second page after the first's marker.
    let page = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "server", "list", "-f", "value", "-c", "Name", "--limit", "1",
        ];
        args.extend_from_slice(extra);
        ok(&args).lines().map(str::to_owned).collect()
    };
    let first = page(&[]);
    assert_eq!(first.len(), 1, "{first:?}");
    let first_id = ok(&["server", "show", &first[0], "-f", "value", "-c", "id"]);
    let second = page(&["--marker", first_id.trim()]);
    assert_eq!(second.len(), 1, "{second:?}");
    let mut both = vec![first[0].clone(), second[0].clone()];
    both.sort();
    assert_eq!(both, ["vm-a", "vm-b"]);
    let filtered = ok(&[
        "server", "list", "--name", "a$", "-f", "value", "-c", "Name",
    ]);
    assert_eq!(filtered.trim(), "vm-a");

    // Events: the create, with its request id.
    let events = ok(&["server", "event", "list", "vm-a", "-f", "json"]);
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    assert_eq!(events[0]["Action"], "create", "{events}");
    assert!(events[0]["Request ID"]
        .as_str()
        .unwrap()
        .starts_with("req-"));

    // Actions on servers without a host: 409 with the reason.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok(&["server", "show", "vm-a", "-f", "value", "-c", "status"]).contains("ERROR") {
        assert!(std::time::Instant::now() < deadline, "vm-a never failed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let err = fails(&["server", "suspend", "vm-a"]);
    assert!(
        err.contains("409") && err.contains("Cannot 'suspend'"),
        "{err}"
    );
    let err = fails(&["server", "show", "no-such-server"]);
    assert!(err.contains("No Server found"), "{err}");

    // Another project's user sees none of these servers.
    ok(&["project", "create", "--domain", "default", "other"]);
    ok(&[
        "user",
        "create",
        "--domain",
        "default",
        "--password",
        "bob-password",
        "bob",
    ]);
    ok(&[
        "role",
        "add",
        "--project",
        "other",
        "--user",
        "bob",
        "member",
    ]);
    let bob = clouds_for(&c, "bob", "bob", "bob-password", "other");
    let (listed, out, err) = run(&cli, &bob, &["server", "list", "-f", "json"]);
    assert!(listed, "{err}");
    assert_eq!(out.trim(), "[]");
    let (shown, _, err) = run(&cli, &bob, &["server", "show", first_id.trim()]);
    assert!(!shown, "another project's server is not shown");
    assert!(
        err.contains("No Server found") || err.contains("404"),
        "{err}"
    );
    let (deleted, _, _) = run(&cli, &bob, &["server", "delete", first_id.trim()]);
    assert!(!deleted, "nor deleted");
    ok(&["server", "delete", "--wait", "vm-a", "vm-b"]);
}

/// Operators see and drain hosts with `compute service` and `hypervisor`.
#[test]
fn openstack_compute_services_and_hypervisors() {
    let Some(cli) = openstack() else { return };
    let secret = "cli-hostd-secret-0123456789";
    let c = common::start_with(None, &format!("hostd_secret = \"{secret}\"\n"));
    let beat = hostd_proto::Heartbeat {
        host_id: "compute-1".into(),
        url: "http://127.0.0.1:9".into(),
        cpus: 8,
        memory_mib: 16896,
        memory_usable_mib: 16384,
        disk_free_mib: 50_000,
        disk_total_mib: 100_000,
        vcpus_used: 0,
        memory_used_mib: 0,
        instances: 0,
        kvm_mode: "hardware".into(),
        version: "0.1.0".into(),
        booted_at: 0,
        load_average: [0.0; 3],
    };
    let bearer = format!(
        "Bearer {}",
        hostd_proto::token::for_host(secret, "compute-1")
    );
    let r = common::call(
        &c,
        "PUT",
        "/internal/v1/hosts/compute-1",
        &[("Authorization", &bearer)],
        &serde_json::to_string(&beat).unwrap(),
    );
    assert_eq!(r.status, 204);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    let services: serde_json::Value =
        serde_json::from_str(&ok(&["compute", "service", "list", "-f", "json"])).unwrap();
    assert_eq!(services[0]["Host"], "compute-1");
    assert_eq!(services[0]["Binary"], "nova-compute");
    assert_eq!(services[0]["Status"], "enabled");
    assert_eq!(services[0]["State"], "up");
    let hypervisors = ok(&[
        "hypervisor",
        "list",
        "-f",
        "value",
        "-c",
        "Hypervisor Hostname",
    ]);
    assert_eq!(hypervisors.trim(), "compute-1");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["hypervisor", "show", "compute-1", "-f", "json"])).unwrap();
    assert_eq!(shown["vcpus"], 8, "{shown}");
    assert_eq!(shown["memory_mb"], 16384, "{shown}");

    // Drained: no new servers go there, with the reason on record.
    ok(&[
        "compute",
        "service",
        "set",
        "--disable",
        "--disable-reason",
        "new disks",
        "compute-1",
        "nova-compute",
    ]);
    let services: serde_json::Value =
        serde_json::from_str(&ok(&["compute", "service", "list", "--long", "-f", "json"])).unwrap();
    assert_eq!(services[0]["Status"], "disabled");
    assert_eq!(services[0]["Disabled Reason"], "new disks");
    tiny_flavor_and_kernel(&c, &ok);
    let (created, _, _) = run(
        &cli,
        &clouds,
        &[
            "server", "create", "--image", "kernel", "--flavor", "tiny", "--wait", "vm",
        ],
    );
    assert!(!created, "no enabled host");
    let fault = ok(&["server", "show", "vm", "-f", "value", "-c", "fault"]);
    assert!(fault.contains("compute-1: disabled"), "{fault}");
    ok(&[
        "compute",
        "service",
        "set",
        "--enable",
        "compute-1",
        "nova-compute",
    ]);
    let status = ok(&["compute", "service", "list", "-f", "value", "-c", "Status"]);
    assert_eq!(status.trim(), "enabled");

    // Host aggregates: one puts the host in its availability zone.
    let agg: serde_json::Value = serde_json::from_str(&ok(&[
        "aggregate",
        "create",
        "--zone",
        "az-east",
        "--property",
        "ssd=true",
        "agg1",
        "-f",
        "json",
    ]))
    .unwrap();
    assert_eq!(agg["availability_zone"], "az-east", "{agg}");
    ok(&["aggregate", "add", "host", "agg1", "compute-1"]);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["aggregate", "show", "agg1", "-f", "json"])).unwrap();
    assert_eq!(shown["hosts"], serde_json::json!(["compute-1"]), "{shown}");
    assert!(shown["properties"].to_string().contains("ssd"), "{shown}");
    let zones = ok(&["availability", "zone", "list", "--compute", "-f", "value"]);
    assert!(zones.contains("az-east"), "{zones}");
    let hosts = ok(&["availability", "zone", "list", "--long", "-f", "value"]);
    // Zone, status, type, host, service...: the host listed in its zone.
    assert!(
        hosts.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&"az-east") && cols.contains(&"compute-1")
        }),
        "{hosts}"
    );
    ok(&[
        "aggregate",
        "set",
        "--name",
        "agg-east",
        "--property",
        "gpu=none",
        "agg1",
    ]);
    ok(&["aggregate", "unset", "--property", "gpu", "agg-east"]);
    let listed = ok(&["aggregate", "list", "--long", "-f", "value"]);
    assert!(
        listed.contains("agg-east") && !listed.contains("gpu"),
        "{listed}"
    );
    ok(&["aggregate", "create", "--zone", "az-west", "agg2"]);
    for (args, why) in [
        (&["aggregate", "create", "agg2"][..], "409"),
        (
            &["aggregate", "add", "host", "agg2", "compute-1"][..],
            "az-east",
        ),
        (
            &["aggregate", "add", "host", "agg2", "nowhere"][..],
            "nowhere",
        ),
        (
            &["aggregate", "remove", "host", "agg2", "compute-1"][..],
            "404",
        ),
        (&["aggregate", "delete", "agg-east"][..], "not empty"),
    ] {
        let (done, _, err) = run(&cli, &clouds, args);
        assert!(!done, "{args:?} succeeded");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    ok(&["aggregate", "remove", "host", "agg-east", "compute-1"]);
    ok(&["aggregate", "delete", "agg-east", "agg2"]);
    assert_eq!(ok(&["aggregate", "list", "-f", "value"]).trim(), "");

    // Members cannot see or change hosts.
    ok(&[
        "user",
        "create",
        "--domain",
        "default",
        "--password",
        "carol-password",
        "carol",
    ]);
    ok(&[
        "role",
        "add",
        "--project",
        "admin",
        "--user",
        "carol",
        "member",
    ]);
    let carol = clouds_for(&c, "carol", "carol", "carol-password", "admin");
    let (listed, _, err) = run(&cli, &carol, &["compute", "service", "list"]);
    assert!(!listed && err.contains("403"), "{err}");
    let (listed, _, err) = run(&cli, &carol, &["hypervisor", "list"]);
    assert!(!listed && err.contains("403"), "{err}");
    let (made, _, err) = run(&cli, &carol, &["aggregate", "create", "agg3"]);
    assert!(!made && err.contains("403"), "{err}");
    let (listed, _, err) = run(&cli, &carol, &["aggregate", "list"]);
    assert!(!listed && err.contains("403"), "{err}");
}

#[test]
fn openstack_networks_subnets_ports_and_security_groups() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    let fails = |args: &[&str]| {
        let (ok, _, err) = run(&cli, &clouds, args);
        assert!(!ok, "openstack {args:?} succeeded");
        err
    };
    let js = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };

    let net = js(ok(&[
        "network", "create", "net1", "--tag", "blue", "-f", "json",
    ]));
    assert_eq!(net["mtu"], 1450, "{net}");
    assert_eq!(net["status"], "ACTIVE");
    assert_eq!(net["tags"], serde_json::json!(["blue"]));
    let sub = js(ok(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.0/24",
        "--dns-nameserver",
        "192.0.2.53",
        "sub1",
        "-f",
        "json",
    ]));
    assert_eq!(sub["gateway_ip"], "10.0.0.1", "{sub}");
    assert_eq!(sub["allocation_pools"][0]["start"], "10.0.0.2", "{sub}");
    let port = js(ok(&[
        "port",
        "create",
        "--network",
        "net1",
        "--fixed-ip",
        "subnet=sub1,ip-address=10.0.0.10",
        "p1",
        "-f",
        "json",
    ]));
    assert_eq!(port["fixed_ips"][0]["ip_address"], "10.0.0.10", "{port}");
    assert!(port["mac_address"]
        .as_str()
        .unwrap()
        .starts_with("fa:16:3e:"));
    let listed = js(ok(&["port", "list", "--network", "net1", "-f", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let nets = js(ok(&["network", "list", "--tags", "blue", "-f", "json"]));
    assert_eq!(nets[0]["Name"], "net1", "{nets}");
    assert_eq!(nets[0]["Subnets"], serde_json::json!([sub["id"]]), "{nets}");

    // Neutron's errors, as the CLI shows them.
    let err = fails(&[
        "port",
        "create",
        "--network",
        "net1",
        "--fixed-ip",
        "ip-address=10.0.0.10",
        "p2",
    ]);
    assert!(err.contains("already allocated"), "{err}");
    let err = fails(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.0/25",
        "sub2",
    ]);
    assert!(err.contains("overlaps"), "{err}");
    let err = fails(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.300/24",
        "sub3",
    ]);
    assert!(err.contains("cidr"), "{err}");
    let err = fails(&["network", "delete", "net1"]);
    assert!(err.contains("ports still in use"), "{err}");

    // The project's default group, and a rule opening SSH.
    let groups = js(ok(&["security", "group", "list", "-f", "json"]));
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["Name"], "default");
    let rule = js(ok(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "default",
        "-f",
        "json",
    ]));
    assert_eq!(rule["port_range_min"], 22, "{rule}");
    assert_eq!(rule["remote_ip_prefix"], "0.0.0.0/0", "{rule}");
    let err = fails(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "default",
    ]);
    assert!(err.contains("already exists"), "{err}");
    let rules = js(ok(&[
        "security", "group", "rule", "list", "default", "-f", "json",
    ]));
    assert_eq!(rules.as_array().unwrap().len(), 5, "{rules}");

    // Network quotas join compute's (OSC prints rows or a map by version).
    let quota = ok(&["quota", "show", "-f", "json"]);
    assert!(quota.contains("\"networks\""), "{quota}");
    assert!(quota.contains("\"subnets\""), "{quota}");
    assert!(ok(&["extension", "list", "--network", "-f", "json"]).contains("security-group"));

    ok(&["port", "delete", "p1"]);
    ok(&["subnet", "delete", "sub1"]);
    ok(&["network", "delete", "net1"]);
    assert_eq!(ok(&["network", "list", "-f", "json"]).trim(), "[]");
}

#[test]
fn openstack_routers_and_floating_ips() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let clouds = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    let fails = |args: &[&str]| {
        let (ok, _, err) = run(&cli, &clouds, args);
        assert!(!ok, "openstack {args:?} succeeded");
        err
    };
    let js = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };

    ok(&["network", "create", "--external", "public"]);
    ok(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "172.24.4.0/24",
        "--no-dhcp",
        "public-subnet",
    ]);
    ok(&["network", "create", "net1"]);
    ok(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.0/24",
        "sub1",
    ]);
    ok(&["port", "create", "--network", "net1", "p1"]);

    let router = js(ok(&["router", "create", "r1", "-f", "json"]));
    assert_eq!(router["status"], "ACTIVE", "{router}");
    ok(&["router", "set", "--external-gateway", "public", "r1"]);
    ok(&["router", "add", "subnet", "r1", "sub1"]);
    let router = js(ok(&["router", "show", "r1", "-f", "json"]));
    let gateway = router["external_gateway_info"].to_string();
    assert!(
        gateway.contains("172.24.4.2") && gateway.contains("\"enable_snat\": true")
            || gateway.contains("\"enable_snat\":true"),
        "{router}"
    );
    let err = fails(&["router", "add", "subnet", "r1", "sub1"]);
    assert!(err.contains("already has a port on subnet"), "{err}");
    let err = fails(&["network", "delete", "net1"]);
    assert!(err.contains("409") || err.contains("in use"), "{err}");

    let fip = js(ok(&["floating", "ip", "create", "public", "-f", "json"]));
    let address = fip["floating_ip_address"].as_str().unwrap().to_owned();
    assert_eq!(address, "172.24.4.3", "{fip}");
    assert_eq!(fip["status"], "DOWN");
    ok(&["floating", "ip", "set", "--port", "p1", &address]);
    let fip = js(ok(&["floating", "ip", "show", &address, "-f", "json"]));
    assert_eq!(fip["fixed_ip_address"], "10.0.0.2", "{fip}");
    assert_eq!(fip["router_id"], router["id"], "{fip}");
    let listed = js(ok(&["floating", "ip", "list", "-f", "json"]));
    assert_eq!(listed[0]["Fixed IP Address"], "10.0.0.2", "{listed}");
    let err = fails(&["router", "remove", "subnet", "r1", "sub1"]);
    assert!(
        err.contains("required by one or more floating IPs"),
        "{err}"
    );
    ok(&["floating", "ip", "unset", "--port", &address]);
    let fip = js(ok(&["floating", "ip", "show", &address, "-f", "json"]));
    assert_eq!(fip["port_id"], serde_json::Value::Null, "{fip}");

    ok(&["floating", "ip", "delete", &address]);
    ok(&["router", "remove", "subnet", "r1", "sub1"]);
    ok(&["router", "unset", "--external-gateway", "r1"]);
    ok(&["router", "delete", "r1"]);
    assert_eq!(ok(&["router", "list", "-f", "json"]).trim(), "[]");
    ok(&["port", "delete", "p1"]);
    ok(&["network", "delete", "net1"]);
    ok(&["network", "delete", "public"]);
}

#[test]
fn openstack_volumes() {
    let Some(cli) = openstack() else { return };
    // A compute host (a stand-in hostd) that is the storage host too.
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (c, admin) = (&cloud.c, cloud.admin.clone());
    let s = common::storaged::Storaged::start(c, common::hostd::HOST_ID);
    common::storaged::wait_registered(c, &admin);
    let clouds = clouds_yaml(c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    let js = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };
    let status = |name: &str| {
        ok(&["volume", "show", name, "-f", "value", "-c", "status"])
            .trim()
            .to_owned()
    };
    let wait = |name: &str, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while status(name) != want {
            assert!(std::time::Instant::now() < deadline, "{name} never {want}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };

    let made = js(ok(&[
        "volume",
        "create",
        "--size",
        "1",
        "--description",
        "scratch",
        "--property",
        "team=storage",
        "data1",
        "-f",
        "json",
    ]));
    let id = made["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();
    wait("data1", "available");
    let shown = js(ok(&["volume", "show", "data1", "-f", "json"]));
    assert_eq!(shown["size"], 1, "{shown}");
    assert_eq!(shown["type"], "__DEFAULT__", "{shown}");
    assert_eq!(shown["description"], "scratch");
    assert!(
        shown["properties"].to_string().contains("storage"),
        "{shown}"
    );
    assert_eq!(shown["bootable"], false, "{shown}");
    let listed = js(ok(&["volume", "list", "-f", "json"]));
    assert_eq!(listed[0]["Name"], "data1", "{listed}");
    assert_eq!(listed[0]["Status"], "available");
    assert_eq!(listed[0]["Size"], 1);

    // `volume set --size` extends it; the storage host's file grows.
    ok(&["volume", "set", "--size", "2", "--name", "data2", "data1"]);
    wait("data2", "available");
    let shown = js(ok(&["volume", "show", "data2", "-f", "json"]));
    assert_eq!(shown["size"], 2, "{shown}");
    assert_eq!(
        std::fs::metadata(s.volume_file(&id)).unwrap().len(),
        2 << 30
    );

    // Attached to a server and detached, as users do it.
    let (server, _) = cloud.active_server();
    ok(&["server", "add", "volume", &server, "data2"]);
    wait("data2", "in-use");
    let shown = js(ok(&["volume", "show", "data2", "-f", "json"]));
    assert!(
        shown["attachments"].to_string().contains(&server),
        "{shown}"
    );
    let (done, _, err) = run(&cli, &clouds, &["volume", "delete", "data2"]);
    assert!(!done, "an attached volume was deleted");
    assert!(err.contains("must be available"), "{err}");
    // Extended in use (the CLI picks microversion 3.42 for it): the
    // server's host grows it in the guest.
    ok(&["volume", "set", "--size", "3", "data2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let shown = js(ok(&["volume", "show", "data2", "-f", "json"]));
        if shown["status"] == "in-use" && shown["size"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never grown: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(
        cloud
            .hostd
            .disk_calls()
            .iter()
            .any(|(method, _, what)| method == "PUT" && what["bytes"] == 3u64 << 30),
        "{:?}",
        cloud.hostd.disk_calls()
    );
    // A snapshot of it in use: refused unless forced, as Cinder; forced,
    // the server's host is told to move the disk onto the volume's new
    // files (the old ones are the snapshot's now).
    let (done, _, err) = run(
        &cli,
        &clouds,
        &["volume", "snapshot", "create", "--volume", "data2", "live0"],
    );
    assert!(!done, "a snapshot of a volume in use without --force");
    assert!(err.contains("must be available"), "{err}");
    let live = js(ok(&[
        "volume", "snapshot", "create", "--volume", "data2", "--force", "live0", "-f", "json",
    ]));
    assert_eq!(live["status"], "creating", "{live}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let live_status = || {
        js(ok(&["volume", "snapshot", "show", "live0", "-f", "json"]))["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    while live_status() != "available" {
        assert!(
            std::time::Instant::now() < deadline,
            "live0 never available"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let dev = id.replace('-', "");
    let moved: Vec<_> = cloud
        .hostd
        .disk_calls()
        .into_iter()
        .filter(|(method, _, what)| {
            method == "PUT" && what["dev"] == dev.as_str() && what.get("files").is_some()
        })
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    // Moved, so settled: storaged knows the frozen file is written no more
    // (and may merge it once a snapshot under it goes).
    let marks = std::fs::read_dir(s.data_dir.join("moving"))
        .unwrap()
        .count();
    assert_eq!(marks, 0, "the layer is still marked as written");
    let files = &moved[0].2["files"];
    let path = files["path"].as_str().unwrap_or_default();
    assert!(path.contains(&id), "the volume's own file: {files}");
    assert_eq!(
        files.get("base").is_some(),
        path.ends_with(".qcow2"),
        "an overlay has a base: {files}"
    );
    assert_eq!(
        js(ok(&["volume", "show", "data2", "-f", "json"]))["status"],
        "in-use"
    );
    ok(&["volume", "snapshot", "delete", "live0"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while run(&cli, &clouds, &["volume", "snapshot", "show", "live0"]).0 {
        assert!(std::time::Instant::now() < deadline, "live0 never deleted");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    ok(&["server", "remove", "volume", &server, "data2"]);
    wait("data2", "available");

    // A snapshot, a volume from it and a clone of the volume.
    let snap = js(ok(&[
        "volume", "snapshot", "create", "--volume", "data2", "snap1", "-f", "json",
    ]));
    assert_eq!(snap["size"], 3, "{snap}");
    let snapshot_status = |name: &str| {
        run(
            &cli,
            &clouds,
            &[
                "volume", "snapshot", "show", name, "-f", "value", "-c", "status",
            ],
        )
        .1
        .trim()
        .to_owned()
    };
    let wait_snapshot = |name: &str, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while snapshot_status(name) != want {
            assert!(std::time::Instant::now() < deadline, "{name} never {want}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    wait_snapshot("snap1", "available");
    let listed = js(ok(&["volume", "snapshot", "list", "-f", "json"]));
    assert_eq!(listed[0]["Name"], "snap1", "{listed}");
    ok(&["volume", "create", "--snapshot", "snap1", "from-snap"]);
    wait("from-snap", "available");
    let shown = js(ok(&["volume", "show", "from-snap", "-f", "json"]));
    assert_eq!(shown["size"], 3, "{shown}");
    assert_eq!(shown["snapshot_id"], snap["id"], "{shown}");
    ok(&[
        "volume", "create", "--source", "data2", "--size", "3", "clone1",
    ]);
    wait("clone1", "available");
    let shown = js(ok(&["volume", "show", "clone1", "-f", "json"]));
    assert_eq!(
        (&shown["size"], &shown["source_volid"]),
        (&serde_json::json!(3), &serde_json::json!(id))
    );
    let (done, _, err) = run(&cli, &clouds, &["volume", "delete", "data2"]);
    assert!(!done, "a volume with snapshots was deleted");
    assert!(err.contains("snapshots"), "{err}");
    ok(&["volume", "snapshot", "delete", "snap1"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while run(&cli, &clouds, &["volume", "snapshot", "show", "snap1"]).0 {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot never deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    ok(&["volume", "delete", "from-snap", "clone1"]);
    // A snapshot left for `volume delete --purge` (cascade) to take along.
    ok(&["volume", "snapshot", "create", "--volume", "data2", "snap2"]);
    wait_snapshot("snap2", "available");

    // From an image, bootable, as for booting from a volume.
    let raw = c.dir_path.join("disk.raw");
    std::fs::write(&raw, b"an image's first bytes").unwrap();
    ok(&[
        "image",
        "create",
        "--file",
        raw.to_str().unwrap(),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "disk-image",
    ]);
    ok(&[
        "volume",
        "create",
        "--image",
        "disk-image",
        "--size",
        "1",
        "--bootable",
        "root1",
    ]);
    wait("root1", "available");
    let shown = js(ok(&["volume", "show", "root1", "-f", "json"]));
    assert_eq!(shown["bootable"], true, "{shown}");
    assert!(
        shown["volume_image_metadata"]
            .to_string()
            .contains("disk-image"),
        "{shown}"
    );
    let root = shown["id"].as_str().unwrap().to_owned();
    assert_eq!(
        &std::fs::read(s.unwritten_volume_data(&root)).unwrap()[..22],
        b"an image's first bytes"
    );
    // A server booted from it (`--volume`), as Nova does it.
    let (flavor, _) = common::hostd::bootable(c, &admin, 1, 64);
    ok(&[
        "server", "create", "--volume", "root1", "--flavor", &flavor, "--wait", "bfv1",
    ]);
    let shown = ok(&["server", "show", "bfv1", "-f", "value", "-c", "image"]);
    assert!(shown.contains("booted from volume"), "{shown}");
    wait("root1", "in-use");
    let (done, _, err) = run(
        &cli,
        &clouds,
        &["server", "remove", "volume", "bfv1", "root1"],
    );
    assert!(!done, "the root volume was detached");
    assert!(err.contains("root device"), "{err}");
    ok(&["server", "delete", "--wait", "bfv1"]);
    wait("root1", "available");
    ok(&["volume", "set", "--non-bootable", "root1"]);
    assert_eq!(
        js(ok(&["volume", "show", "root1", "-f", "json"]))["bootable"],
        false
    );
    ok(&["volume", "delete", "root1"]);

    // Without properties or a description (the SDK sends nulls then).
    ok(&["volume", "create", "--size", "1", "plain"]);
    wait("plain", "available");
    ok(&["volume", "delete", "plain"]);

    // Cinder's errors, as the CLI shows them.
    let (done, _, err) = run(&cli, &clouds, &["volume", "create", "--size", "0", "bad"]);
    assert!(!done);
    assert!(err.contains("400") || err.contains("size"), "{err}");
    let (done, _, err) = run(&cli, &clouds, &["volume", "show", "nothing-here"]);
    assert!(!done);
    assert!(
        err.contains("No Volume found") || err.contains("could not be found"),
        "{err}"
    );

    ok(&["volume", "delete", "--purge", "data2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while run(&cli, &clouds, &["volume", "show", &id]).0 {
        assert!(std::time::Instant::now() < deadline, "never deleted");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(!s.volume_file(&id).exists());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let left = || {
        ["volumes", "layers", "snapshots"]
            .iter()
            .map(|d| std::fs::read_dir(s.data_dir.join(d)).map_or(0, |d| d.count()))
            .sum::<usize>()
    };
    while left() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "files left on the storage host"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// `openstack ec2 credentials create|list|show|delete` as a member of a
/// project, each user seeing only their own; and the lookup a storage
/// host's storaged makes to verify an S3 signature: the secret and
/// project of the one key asked for, only to a registered storage host,
/// and only while the user holds a role in that project.
#[test]
fn openstack_ec2_credentials_and_their_lookup_by_a_storage_host() {
    use common::hostd::{controller_config, host_token};
    let Some(cli) = openstack() else { return };
    let c = common::start_with(None, &controller_config());
    let admin = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &admin, args);
    ok(&["project", "create", "--domain", "default", "demo"]);
    ok(&["user", "create", "--password", "bob-password", "bob"]);
    ok(&[
        "role",
        "add",
        "--project",
        "demo",
        "--user",
        "bob",
        "member",
    ]);
    let bob = clouds_for(&c, "bob", "bob", "bob-password", "demo");
    let made = succeed(&cli, &bob, &["ec2", "credentials", "create", "-f", "json"]);
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let access = made["access"].as_str().unwrap().to_owned();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert_eq!((access.len(), secret.len()), (32, 32), "{made}");
    let listed = succeed(
        &cli,
        &bob,
        &["ec2", "credentials", "list", "-f", "value", "-c", "Access"],
    );
    assert_eq!(listed.trim(), access);
    let shown = succeed(
        &cli,
        &bob,
        &["ec2", "credentials", "show", &access, "-f", "json"],
    );
    assert!(shown.contains(&secret), "{shown}");
    // Not the admin's (the admin lists their own).
    assert!(!ok(&["ec2", "credentials", "list"]).contains(&access));

    // The lookup: storage hosts only, one key at a time.
    let storage = common::storaged::Storaged::start(&c, "storage-1");
    common::storaged::wait_registered(&c, &common::admin_token(&c));
    let lookup = |host: &str, key: &str| {
        let bearer = format!("Bearer {}", host_token(host));
        common::call(
            &c,
            "GET",
            &format!("/internal/v1/ec2-credentials/{key}"),
            &[("Authorization", &bearer)],
            "",
        )
    };
    let found = lookup("storage-1", &access);
    assert_eq!(found.status, 200, "{}", found.body);
    let signer: storaged_proto::Ec2Signer = serde_json::from_str(&found.body).unwrap();
    assert_eq!(
        (signer.access.as_str(), signer.secret.as_str()),
        (access.as_str(), secret.as_str())
    );
    assert_eq!(signer.project_id, made["project_id"].as_str().unwrap());
    assert_eq!(lookup("storage-1", "0123456789abcdef").status, 404);
    assert_eq!(
        lookup("compute-1", &access).status,
        403,
        "not a storage host"
    );
    let none = common::call(
        &c,
        "GET",
        &format!("/internal/v1/ec2-credentials/{access}"),
        &[],
        "",
    );
    assert_eq!(none.status, 401);
    // A role taken away ends the key's use.
    ok(&[
        "role",
        "remove",
        "--project",
        "demo",
        "--user",
        "bob",
        "member",
    ]);
    assert_eq!(lookup("storage-1", &access).status, 404);
    ok(&[
        "role",
        "add",
        "--project",
        "demo",
        "--user",
        "bob",
        "member",
    ]);
    assert_eq!(lookup("storage-1", &access).status, 200);

    // No credential in a project without a role there.
    let (made_there, _, err) = run(
        &cli,
        &bob,
        &["ec2", "credentials", "create", "--project", "admin"],
    );
    assert!(!made_there, "a key in a project bob has no role in");
    assert!(err.contains("403") || err.contains("No project"), "{err}");
    succeed(&cli, &bob, &["ec2", "credentials", "delete", &access]);
    assert_eq!(lookup("storage-1", &access).status, 404);
    let (gone, _, _) = run(&cli, &bob, &["ec2", "credentials", "show", &access]);
    assert!(!gone);
    drop(storage);
}

/// `openstack application credential create|list|show|delete` as a member
/// holding `member` and `reader`, and the credential as clouds.yaml's
/// `v3applicationcredential` auth: a token for its project carrying only
/// the role it was given (a reader's: lists work, writes are refused); a
/// restricted one cannot make another; a wrong secret, and a deleted
/// credential, authenticate no more.
#[test]
fn openstack_application_credentials() {
    let Some(cli) = openstack() else { return };
    let c = start(None);
    let admin = clouds_yaml(&c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &admin, args);
    let demo = ok(&["project", "create", "demo", "-f", "value", "-c", "id"]);
    ok(&["user", "create", "--password", "bob-password", "bob"]);
    for role in ["member", "reader"] {
        ok(&["role", "add", "--project", "demo", "--user", "bob", role]);
    }
    let bob = clouds_for(&c, "bob", "bob", "bob-password", "demo");
    let made = succeed(
        &cli,
        &bob,
        &[
            "application",
            "credential",
            "create",
            "--role",
            "reader",
            "--expiration",
            "2099-01-01T00:00:00",
            "--description",
            "for CI",
            "ci",
            "-f",
            "json",
        ],
    );
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let id = made["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();
    let secret = made["Secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 64, "{made}");
    assert_eq!(made["Project ID"].as_str(), Some(demo.trim()), "{made}");
    assert!(made["Roles"].to_string().contains("reader"), "{made}");
    assert!(!made["Roles"].to_string().contains("member"), "{made}");
    assert_eq!(
        made["Expires At"].as_str(),
        Some("2099-01-01T00:00:00"),
        "{made}"
    );
    assert_eq!(made["Unrestricted"], false, "{made}");
    let listed = succeed(
        &cli,
        &bob,
        &[
            "application",
            "credential",
            "list",
            "-f",
            "value",
            "-c",
            "Name",
        ],
    );
    assert_eq!(listed.trim(), "ci");
    let shown = succeed(
        &cli,
        &bob,
        &["application", "credential", "show", "ci", "-f", "json"],
    );
    assert!(
        !shown.contains(&secret),
        "the secret is shown once:\n{shown}"
    );
    let (dup, _, err) = run(&cli, &bob, &["application", "credential", "create", "ci"]);
    assert!(!dup && err.contains("409"), "{err}");
    // Another user's are not bob's to see.
    let (seen, _, err) = run(
        &cli,
        &bob,
        &["application", "credential", "list", "--user", "admin"],
    );
    assert!(!seen && err.contains("403"), "{err}");

    let as_app = |secret: &str| {
        let path = c.dir_path.join("clouds-app.yaml");
        std::fs::write(
            &path,
            format!(
                "clouds:\n  virga:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://{}/identity\n      application_credential_id: {id}\n      application_credential_secret: {secret}\n    region_name: RegionOne\n    identity_api_version: 3\n",
                c.addr
            ),
        )
        .unwrap();
        path
    };
    let app = as_app(&secret);
    let token = succeed(&cli, &app, &["token", "issue", "-f", "json"]);
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(token["project_id"].as_str(), Some(demo.trim()), "{token}");
    succeed(&cli, &app, &["network", "list"]);
    let (wrote, _, err) = run(&cli, &app, &["network", "create", "n1"]);
    assert!(
        !wrote && err.contains("403"),
        "a reader's credential writes nothing: {err}"
    );
    // Bob's own password still carries his member role.
    succeed(&cli, &bob, &["network", "create", "n1"]);
    let (more, _, err) = run(&cli, &app, &["application", "credential", "create", "ci2"]);
    assert!(!more && err.contains("403"), "restricted: {err}");
    let (wrong, _, err) = run(&cli, &as_app("not-the-secret"), &["token", "issue"]);
    assert!(!wrong && err.contains("401"), "{err}");

    succeed(&cli, &bob, &["application", "credential", "delete", "ci"]);
    let (gone, _, err) = run(&cli, &as_app(&secret), &["token", "issue"]);
    assert!(!gone && err.contains("401"), "{err}");
    let listed = succeed(
        &cli,
        &bob,
        &["application", "credential", "list", "-f", "value"],
    );
    assert!(listed.trim().is_empty(), "{listed}");
}

/// `openstack usage list` and `usage show` (Nova's os-simple-tenant-usage),
/// and `server show --diagnostics`, as an admin runs them.
#[test]
fn openstack_usage_and_diagnostics() {
    let Some(cli) = openstack() else { return };
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (server, _) = cloud.active_server();
    let clouds = clouds_yaml(&cloud.c, ADMIN_PASSWORD);
    let ok = |args: &[&str]| succeed(&cli, &clouds, args);
    let js = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };

    // The server is counted with what it holds (`-f json` gives the
    // servers themselves).
    let listed = js(ok(&["usage", "list", "-f", "json"]));
    assert_eq!(
        listed[0]["Servers"][0]["instance_id"],
        server.as_str(),
        "{listed}"
    );
    assert_eq!(listed[0]["Servers"][0]["memory_mb"], 128, "{listed}");
    assert!(
        listed[0]["RAM MB-Hours"].as_f64().unwrap() > 0.0,
        "{listed}"
    );
    let shown = js(ok(&[
        "usage",
        "show",
        "--start",
        "2000-01-01",
        "-f",
        "json",
    ]));
    assert!(shown["CPU Hours"].as_f64().unwrap() > 0.0, "{shown}");

    let diagnostics = js(ok(&[
        "server",
        "show",
        "--diagnostics",
        &server,
        "-f",
        "json",
    ]));
    assert_eq!(diagnostics["driver"], "virga", "{diagnostics}");
    // openstacksdk keeps the keys 2.48 standardised (these are among them).
    assert_eq!(diagnostics["num_cpus"], 1, "{diagnostics}");
    assert_eq!(diagnostics["uptime"], 5, "{diagnostics}");
}
