//! Nova's microversions 2.2 to 2.47 as Virga serves them, each asked for
//! and checked against the answer the version before gives, over HTTP
//! against a real controller with a stand-in hostd.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::call;
use common::cloud::Cloud;
use common::hostd::{bootable, Delays};
use serde_json::{json, Value};

/// A self-signed certificate, and its SHA-1 fingerprint as openssl prints it.
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUCuUyZR7/ZK5rWdZsk8Otcg0s2YMwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKdmlyZ2EtdGVzdDAeFw0yNjEyMDUxMTI3MjNaFw0zNjEyMDIx
MTI3MjNaMBUxEzARBgNVBAMMCnZpcmdhLXRlc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARGDpR/moi6bAVNnzAYpcF2sN/x9Ci4ZHdQD/ydccNXUcuqmzA/4FAT
J3cOK+LkXqFUq59Eyu9Kq95DU95mD19Io1MwUTAdBgNVHQ4EFgQUMvVKgp0P2mXK
Q5IUxJ3hDSv9q9IwHwYDVR0jBBgwFoAUMvVKgp0P2mXKQ5IUxJ3hDSv9q9IwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAzg0DFnaE4HxyAFvR7XoZ
e8koYWB5xQwoH/Ks6kwMiMICIF9CygwbM9h4vvdZMTMmuNv0bOFYN1g0voNNSyR4
BnJP
-----END CERTIFICATE-----";
const CERT_SHA1: &str = "f7:5c:a6:23:cf:0f:b0:25:7b:fc:ef:13:30:66:0e:e1:9f:8c:ac:3a";

struct Nova {
    cloud: Cloud,
}

impl Nova {
    /// `(status, body)` of a call at microversion `v`.
    fn at(&self, v: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let version = format!("compute {v}");
        let r = call(
            &self.cloud.c,
            method,
            &format!("/compute/v2.1{path}"),
            &[self.cloud.auth(), ("OpenStack-API-Version", &version)],
            &body,
        );
        assert_eq!(
            r.header("openstack-api-version"),
            Some(version.as_str()),
            "answered at the version asked"
        );
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v)
    }
}

fn nova() -> Nova {
    Nova {
        cloud: Cloud::start(Delays {
            create: Duration::ZERO,
            action: Duration::ZERO,
            delete: Duration::ZERO,
        }),
    }
}

#[test]
fn servers_show_what_each_version_adds() {
    let n = nova();
    let r = call(&n.cloud.c, "GET", "/compute/v2.1", &[], "");
    assert_eq!(r.json()["version"]["version"], "2.47");

    let (flavor, image) = bootable(&n.cloud.c, &n.cloud.admin, 1, 128);
    let create = |v: &str, extra: Value| {
        let mut server = json!({"name": "vm", "imageRef": image, "flavorRef": flavor});
        server
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        n.at(v, "POST", "/servers", json!({ "server": server }))
    };
    assert_eq!(create("2.37", json!({})).0, 400, "2.37 wants networks");
    assert_eq!(
        create("2.18", json!({"description": "d"})).0,
        400,
        "no description before 2.19"
    );
    let (status, body) = create("2.37", json!({"networks": "none", "description": "web"}));
    assert_eq!(status, 202, "{body}");
    let id = body["server"]["id"].as_str().unwrap().to_owned();
    n.cloud.wait(&id, "ACTIVE");

    let show = |v: &str| n.at(v, "GET", &format!("/servers/{id}"), Value::Null).1["server"].clone();
    let old = show("2.1");
    for key in [
        "locked",
        "description",
        "tags",
        "host_status",
        "OS-EXT-SRV-ATTR:hostname",
    ] {
        assert!(old.get(key).is_none(), "{key} at 2.1");
    }
    assert!(old["flavor"]["links"].is_array(), "a link at 2.1");
    assert_eq!(
        show("2.3")["OS-EXT-SRV-ATTR:hostname"],
        "vm",
        "admins see it from 2.3"
    );
    assert_eq!(show("2.3")["OS-EXT-SRV-ATTR:root_device_name"], "/dev/vda");
    assert_eq!(show("2.9")["locked"], false);
    assert_eq!(show("2.16")["host_status"], "UP");
    assert_eq!(show("2.19")["description"], "web");
    assert_eq!(show("2.26")["tags"], json!([]));
    let new = show("2.47");
    assert_eq!(new["flavor"]["original_name"], "f1-128");
    assert_eq!(
        (&new["flavor"]["vcpus"], &new["flavor"]["ram"]),
        (&json!(1), &json!(128))
    );
    assert!(new["flavor"].get("id").is_none());
    let (_, list) = n.at("2.47", "GET", "/servers/detail", Value::Null);
    assert_eq!(list["servers"][0]["flavor"]["original_name"], "f1-128");

    // An update's answer at 2.47: the flavor and the description, none of
    // the extensions'.
    let (status, body) = n.at(
        "2.47",
        "PUT",
        &format!("/servers/{id}"),
        json!({"server": {"description": null}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server"]["description"], Value::Null);
    assert!(body["server"].get("OS-EXT-STS:vm_state").is_none());
    assert_eq!(body["server"]["flavor"]["original_name"], "f1-128");

    // Tags (2.26).
    let tags = |m: &str, p: &str, b: Value| n.at("2.26", m, &format!("/servers/{id}/tags{p}"), b);
    assert_eq!(tags("PUT", "/web%20tier", Value::Null).0, 201);
    assert_eq!(tags("PUT", "/web%20tier", Value::Null).0, 204);
    assert_eq!(tags("GET", "/web%20tier", Value::Null).0, 204);
    assert_eq!(tags("GET", "/db", Value::Null).0, 404);
    assert_eq!(
        tags("PUT", "", json!({"tags": ["b", "a", "b"]})).1,
        json!({"tags": ["a", "b"]})
    );
    assert_eq!(tags("PUT", "", json!({"tags": ["a/b"]})).0, 400);
    let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    assert_eq!(
        tags("PUT", "", json!({ "tags": many })).0,
        400,
        "at most 50"
    );
    assert_eq!(
        n.at("2.25", "GET", &format!("/servers/{id}/tags"), Value::Null)
            .0,
        404
    );
    let count = |q: &str| {
        n.at("2.26", "GET", &format!("/servers?{q}"), Value::Null).1["servers"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        (count("tags=a,b"), count("tags=a,c"), count("tags-any=c,b")),
        (1, 0, 1)
    );
    assert_eq!((count("not-tags=a,c"), count("not-tags-any=a")), (1, 0));
    assert_eq!(tags("DELETE", "/a", Value::Null).0, 204);
    assert_eq!(tags("DELETE", "/a", Value::Null).0, 404);
    assert_eq!(tags("DELETE", "", Value::Null).0, 204);
    assert_eq!(show("2.26")["tags"], json!([]));

    // A bogus status filter: an empty list at 2.1, a 400 from 2.38.
    assert_eq!(count("status=FLYING"), 0);
    assert_eq!(
        n.at("2.38", "GET", "/servers?status=FLYING", Value::Null).0,
        400
    );

    // Consoles: the action until 2.5, remote-consoles from 2.6.
    let act = |v: &str, b: Value| n.at(v, "POST", &format!("/servers/{id}/action"), b);
    assert_eq!(
        act("2.6", json!({"os-getSerialConsole": {"type": "serial"}})).0,
        404
    );
    let (status, body) = n.at(
        "2.6",
        "POST",
        &format!("/servers/{id}/remote-consoles"),
        json!({"remote_console": {"protocol": "serial", "type": "serial"}}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["remote_console"]["url"]
        .as_str()
        .unwrap()
        .starts_with("ws"));
    let vnc = json!({"remote_console": {"protocol": "vnc", "type": "novnc"}});
    assert_eq!(
        n.at(
            "2.6",
            "POST",
            &format!("/servers/{id}/remote-consoles"),
            vnc
        )
        .0,
        400
    );

    // A deleted server's actions (2.21).
    assert_eq!(
        n.at("2.47", "DELETE", &format!("/servers/{id}"), Value::Null)
            .0,
        204
    );
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while n
        .at("2.47", "GET", &format!("/servers/{id}"), Value::Null)
        .0
        != 404
    {
        assert!(std::time::Instant::now() < gone, "not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let actions = format!("/servers/{id}/os-instance-actions");
    assert_eq!(n.at("2.20", "GET", &actions, Value::Null).0, 404);
    let (status, body) = n.at("2.21", "GET", &actions, Value::Null);
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<&str> = body["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["create", "delete"]);
}

#[test]
fn keypairs_limits_quotas_and_the_proxies_by_version() {
    let n = nova();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl0K8w9tXKpI0x3W2lq2Y9d0t1vQ1mZ2mH0Yl8p7e5k me";
    let (status, body) = n.at(
        "2.1",
        "POST",
        "/os-keypairs",
        json!({"keypair": {"name": "k1", "public_key": key}}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["keypair"].get("type").is_none(), "no type at 2.1");
    assert_eq!(
        n.at(
            "2.1",
            "POST",
            "/os-keypairs",
            json!({"keypair": {"name": "k2", "public_key": key, "type": "ssh"}})
        )
        .0,
        400,
        "type is unknown at 2.1"
    );
    let (status, body) = n.at(
        "2.2",
        "POST",
        "/os-keypairs",
        json!({"keypair": {"name": "cert", "public_key": CERT, "type": "x509"}}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (&body["keypair"]["type"], &body["keypair"]["fingerprint"]),
        (&json!("x509"), &json!(CERT_SHA1))
    );
    assert_eq!(
        n.at(
            "2.2",
            "POST",
            "/os-keypairs",
            json!({"keypair": {"name": "bad", "public_key": key, "type": "x509"}})
        )
        .0,
        400
    );
    assert_eq!(
        n.at("2.2", "GET", "/os-keypairs/k1", Value::Null).1["keypair"]["type"],
        "ssh"
    );
    for i in 0..3 {
        n.at(
            "2.2",
            "POST",
            "/os-keypairs",
            json!({"keypair": {"name": format!("p{i}"), "public_key": key}}),
        );
    }
    let names = |v: &str, q: &str| -> (Vec<String>, Value) {
        let (_, body) = n.at(v, "GET", &format!("/os-keypairs?{q}"), Value::Null);
        let names = body["keypairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["keypair"]["name"].as_str().unwrap().to_owned())
            .collect();
        (names, body["keypairs_links"].clone())
    };
    assert_eq!(names("2.34", "limit=2").0.len(), 5, "no paging before 2.35");
    let (page, next) = names("2.35", "limit=2");
    assert_eq!(page, ["cert", "k1"]);
    assert!(next[0]["href"].as_str().unwrap().contains("marker=k1"));
    assert_eq!(names("2.35", "limit=2&marker=k1").0, ["p0", "p1"]);
    assert_eq!(
        n.at("2.35", "GET", "/os-keypairs?marker=nope", Value::Null)
            .0,
        400
    );
    // From 2.10 an admin makes and reads another user's keypairs.
    let other = json!({"keypair": {"name": "theirs", "public_key": key, "user_id": "u-other"}});
    assert_eq!(n.at("2.9", "POST", "/os-keypairs", other.clone()).0, 400);
    let (status, body) = n.at("2.10", "POST", "/os-keypairs", other);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["keypair"]["user_id"], "u-other");
    let (status, body) = n.at(
        "2.10",
        "GET",
        "/os-keypairs/theirs?user_id=u-other",
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        n.at("2.10", "GET", "/os-keypairs/theirs", Value::Null).0,
        404,
        "not the admin's"
    );
    // No public key: one is made and its private half answered, once.
    let (status, body) = n.at(
        "2.2",
        "POST",
        "/os-keypairs",
        json!({"keypair": {"name": "made"}}),
    );
    assert_eq!(status, 201, "{body}");
    let made = &body["keypair"];
    let (public, private) = (
        made["public_key"].as_str().unwrap(),
        made["private_key"].as_str().unwrap(),
    );
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert_eq!(
        made["fingerprint"].as_str().unwrap(),
        controller::compute::keypairs::fingerprint(public)
            .unwrap()
            .1
    );
    let parsed = ssh_key::PrivateKey::from_openssh(private).unwrap();
    assert_eq!(
        parsed.public_key().to_openssh().unwrap(),
        public,
        "the private key is the public key's"
    );
    // OpenSSH (where installed) reads the private key and derives the same
    // public key.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("id_ed25519");
    std::fs::write(&key_file, private).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    if let Ok(out) = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key_file)
        .output()
    {
        let derived = String::from_utf8_lossy(&out.stdout);
        let key_of = |line: &str| {
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(
            out.status.success() && key_of(&derived) == key_of(public),
            "ssh-keygen: {derived} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shown = n.at("2.2", "GET", "/os-keypairs/made", Value::Null).1;
    assert_eq!(shown["keypair"]["public_key"], public);
    assert!(
        shown["keypair"].get("private_key").is_none(),
        "never stored"
    );
    // An x509 key pair made here: a certificate and its RSA key.
    let (status, body) = n.at(
        "2.2",
        "POST",
        "/os-keypairs",
        json!({"keypair": {"name": "cert2", "type": "x509"}}),
    );
    assert_eq!(status, 201, "{body}");
    let made = &body["keypair"];
    let (cert, private) = (
        made["public_key"].as_str().unwrap(),
        made["private_key"].as_str().unwrap(),
    );
    assert_eq!(made["type"], "x509");
    assert!(
        private.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{private}"
    );
    assert_eq!(
        made["fingerprint"].as_str().unwrap(),
        controller::compute::keypairs::x509_fingerprint(cert).unwrap()
    );
    // OpenSSL (where installed) reads both: the key is the certificate's,
    // for the user, for client logins.
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, private).unwrap();
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .ok()
            .map(|o| {
                assert!(
                    o.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                String::from_utf8_lossy(&o.stdout).into_owned()
            })
    };
    let cert_path = cert_file.to_str().unwrap();
    if let Some(text) = openssl(&["x509", "-in", cert_path, "-noout", "-text"]) {
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(text.contains("sha256WithRSAEncryption"), "{text}");
        assert!(text.contains("(2048 bit)"), "{text}");
        let modulus = openssl(&["x509", "-in", cert_path, "-noout", "-modulus"]);
        let key_path = key_file.to_str().unwrap();
        assert_eq!(
            openssl(&["rsa", "-in", key_path, "-noout", "-modulus"]),
            modulus
        );
    }
    assert!(
        n.at("2.2", "GET", "/os-keypairs/cert2", Value::Null).1["keypair"]
            .get("private_key")
            .is_none(),
        "never stored"
    );
    assert_eq!(
        n.at(
            "2.2",
            "POST",
            "/os-keypairs",
            json!({"keypair": {"name": "num", "public_key": 7}})
        )
        .0,
        400
    );
    assert_eq!(
        n.at("2.2", "DELETE", "/os-keypairs/made", Value::Null).0,
        204
    );
    // Deleted with 202 at 2.1, 204 from 2.2.
    assert_eq!(n.at("2.1", "DELETE", "/os-keypairs/p0", Value::Null).0, 202);
    assert_eq!(n.at("2.2", "DELETE", "/os-keypairs/p1", Value::Null).0, 204);

    let absolute = |v: &str| n.at(v, "GET", "/limits", Value::Null).1["limits"]["absolute"].clone();
    assert!(absolute("2.35").get("maxSecurityGroups").is_some());
    assert!(absolute("2.36").get("maxSecurityGroups").is_none());
    assert!(absolute("2.38").get("maxImageMeta").is_some());
    assert!(absolute("2.39").get("maxImageMeta").is_none());
    let quotas =
        |v: &str| n.at(v, "GET", "/os-quota-sets/any/defaults", Value::Null).1["quota_set"].clone();
    assert!(quotas("2.35").get("floating_ips").is_some());
    assert!(quotas("2.36").get("floating_ips").is_none());

    for path in [
        "/os-security-groups",
        "/os-floating-ips",
        "/os-tenant-networks",
        "/os-networks",
        "/images",
    ] {
        assert_eq!(
            n.at("2.35", "GET", path, Value::Null).0,
            200,
            "{path} at 2.35"
        );
        assert_eq!(
            n.at("2.36", "GET", path, Value::Null).0,
            404,
            "{path} at 2.36"
        );
    }
    assert_eq!(n.at("2.42", "GET", "/os-hosts", Value::Null).0, 200);
    assert_eq!(n.at("2.43", "GET", "/os-hosts", Value::Null).0, 404);
    let (_, services) = n.at("2.11", "GET", "/os-services", Value::Null);
    assert_eq!(services["services"][0]["forced_down"], false);
    let (_, hypervisors) = n.at("2.28", "GET", "/os-hypervisors/detail", Value::Null);
    assert!(hypervisors["hypervisors"][0]["cpu_info"].is_object());
    let (_, hypervisors) = n.at("2.27", "GET", "/os-hypervisors/detail", Value::Null);
    assert!(hypervisors["hypervisors"][0]["cpu_info"].is_string());
}

#[test]
fn server_groups_hold_their_servers_within_quotas() {
    let n = nova();
    let make = |v: &str, name: &str, policy: &str| {
        n.at(
            v,
            "POST",
            "/os-server-groups",
            json!({"server_group": {"name": name, "policies": [policy]}}),
        )
    };
    let (status, body) = make("2.1", "web", "anti-affinity");
    assert_eq!(status, 200, "{body}");
    let group = body["server_group"].clone();
    assert_eq!(
        (&group["policies"], &group["members"]),
        (&json!(["anti-affinity"]), &json!([]))
    );
    assert!(group.get("project_id").is_none(), "2.13 adds it");
    let id = group["id"].as_str().unwrap().to_owned();
    assert_eq!(make("2.14", "x", "soft-affinity").0, 400, "soft from 2.15");
    let (status, body) = make("2.15", "soft", "soft-affinity");
    assert_eq!(status, 200, "{body}");
    for bad in [
        json!({"name": "x", "policies": ["sideways"]}),
        json!({"name": "x", "policies": []}),
        json!({"name": "", "policies": ["affinity"]}),
        json!({"policies": ["affinity"]}),
    ] {
        assert_eq!(
            n.at(
                "2.15",
                "POST",
                "/os-server-groups",
                json!({ "server_group": bad })
            )
            .0,
            400
        );
    }

    let (flavor, image) = bootable(&n.cloud.c, &n.cloud.admin, 1, 128);
    let (status, body) = n.at(
        "2.1",
        "POST",
        "/servers",
        json!({"server": {"name": "member", "imageRef": image, "flavorRef": flavor},
               "os:scheduler_hints": {"group": id}}),
    );
    assert_eq!(status, 202, "{body}");
    let server = body["server"]["id"].as_str().unwrap().to_owned();
    n.cloud.wait(&server, "ACTIVE");
    let (_, shown) = n.at(
        "2.13",
        "GET",
        &format!("/os-server-groups/{id}"),
        Value::Null,
    );
    assert_eq!(shown["server_group"]["members"], json!([server]));
    assert!(shown["server_group"]["project_id"].is_string());
    // One host: a second anti-affinity member has nowhere to go.
    let (status, body) = n.at(
        "2.1",
        "POST",
        "/servers",
        json!({"server": {"name": "apart", "imageRef": image, "flavorRef": flavor},
               "os:scheduler_hints": {"group": id}}),
    );
    assert_eq!(status, 202, "{body}");
    let apart = body["server"]["id"].as_str().unwrap().to_owned();
    let s = n.cloud.wait(&apart, "ERROR");
    assert!(
        s["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("anti-affinity"),
        "{s}"
    );
    let missing = json!({"server": {"name": "x", "imageRef": image, "flavorRef": flavor},
                         "os:scheduler_hints": {"group": "00000000-0000-4000-8000-000000000000"}});
    assert_eq!(n.at("2.1", "POST", "/servers", missing).0, 400);

    assert_eq!(
        n.at("2.1", "DELETE", &format!("/servers/{server}"), Value::Null)
            .0,
        204
    );
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while !n
        .at(
            "2.1",
            "GET",
            &format!("/os-server-groups/{id}"),
            Value::Null,
        )
        .1["server_group"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m != &json!(server))
    {
        assert!(std::time::Instant::now() < gone, "still a member");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, list) = n.at("2.1", "GET", "/os-server-groups", Value::Null);
    assert_eq!(list["server_groups"].as_array().unwrap().len(), 2);
    for i in 0..8 {
        assert_eq!(make("2.1", &format!("g{i}"), "affinity").0, 200);
    }
    assert_eq!(make("2.1", "one-too-many", "affinity").0, 403);
    assert_eq!(
        n.at(
            "2.1",
            "DELETE",
            &format!("/os-server-groups/{id}"),
            Value::Null
        )
        .0,
        204
    );
    assert_eq!(
        n.at(
            "2.1",
            "GET",
            &format!("/os-server-groups/{id}"),
            Value::Null
        )
        .0,
        404
    );
}
