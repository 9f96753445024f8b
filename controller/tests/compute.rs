//! Nova over HTTP against a real controller: discovery, microversions, flavors.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use common::{admin_token, call, start, start_with, Controller, Postgres};
use serde_json::{json, Value};

#[test]
fn discovery_and_microversions() {
    let c = start(None);
    let r = call(&c, "GET", "/compute", &[], "");
    assert_eq!(r.status, 200);
    let versions = r.json()["versions"].clone();
    assert_eq!(versions[0]["id"], "v2.0", "v2.0 is listed first");
    assert_eq!(versions[1]["min_version"], "2.1");
    let r = call(&c, "GET", "/compute/v2.1", &[], "");
    assert_eq!(r.json()["version"]["id"], "v2.1");

    let token = admin_token(&c);
    let t = ("X-Auth-Token", token.as_str());
    let r = call(&c, "GET", "/compute/v2.1/flavors", &[t], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("openstack-api-version"), Some("compute 2.1"));
    assert_eq!(r.header("x-openstack-nova-api-version"), Some("2.1"));
    let r = call(
        &c,
        "GET",
        "/compute/v2.1/flavors",
        &[t, ("OpenStack-API-Version", "compute latest")],
        "",
    );
    assert_eq!(r.status, 200);
    let r = call(
        &c,
        "GET",
        "/compute/v2.1/flavors",
        &[t, ("X-OpenStack-Nova-API-Version", "2.96")],
        "",
    );
    assert_eq!(r.status, 406);
    assert_eq!(r.json()["notAcceptable"]["code"], 406);

    let r = call(&c, "GET", "/compute/v2.1/flavors", &[], "");
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Keystone uri="));
    let r = call(
        &c,
        "GET",
        "/compute/v2.1/flavors",
        &[("X-Auth-Token", "forged")],
        "",
    );
    assert_eq!(r.status, 401);
    assert!(r.header("x-openstack-request-id").is_some());
}

#[test]
fn flavors_are_created_listed_and_deleted() {
    exercise_flavors(&start(None));
}

#[test]
fn flavors_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    exercise_flavors(&start(Some(pg.url())));
}

fn exercise_flavors(c: &Controller) {
    let token = admin_token(c);
    let t = ("X-Auth-Token", token.as_str());
    let body = r#"{"flavor": {"name": "m1.tiny", "ram": 256, "vcpus": 1, "disk": 1, "id": null, "os-flavor-access:is_public": true}}"#;
    let r = call(c, "POST", "/compute/v2.1/flavors", &[t], body);
    assert_eq!(r.status, 200, "{}", r.body);
    let f = r.json()["flavor"].clone();
    let id = f["id"].as_str().unwrap().to_owned();
    assert_eq!(f["ram"], 256);
    assert_eq!(f["swap"], "");
    let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 11, "exactly the 2.1 keys: {keys:?}");

    let r = call(c, "POST", "/compute/v2.1/flavors", &[t], body);
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["conflictingRequest"]["code"], 409);
    let r = call(
        c,
        "POST",
        "/compute/v2.1/flavors",
        &[t],
        r#"{"flavor": {"name": "bad", "ram": 0, "vcpus": 1, "disk": 1}}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"]
        .as_str()
        .unwrap()
        .contains("ram"));
    assert_eq!(
        call(c, "POST", "/compute/v2.1/flavors", &[t], "{nope").status,
        400
    );

    let r = call(
        c,
        "GET",
        "/compute/v2.1/flavors/detail?is_public=None",
        &[t],
        "",
    );
    assert_eq!(r.json()["flavors"][0]["name"], "m1.tiny");
    let r = call(c, "GET", "/compute/v2.1/flavors", &[t], "");
    assert_eq!(
        r.json()["flavors"][0].as_object().unwrap().len(),
        3,
        "id, name, links"
    );
    assert_eq!(
        call(c, "GET", &format!("/compute/v2.1/flavors/{id}"), &[t], "").status,
        200
    );
    let r = call(c, "GET", "/compute/v2.1/flavors/m1.tiny", &[t], "");
    assert_eq!(r.status, 404, "a name is not an id: clients then list");
    assert_eq!(r.json()["itemNotFound"]["code"], 404);

    // Extra specs: admins set them, anyone who sees the flavor reads them.
    let specs = format!("/compute/v2.1/flavors/{id}/os-extra_specs");
    let json = ("Content-Type", "application/json");
    let r = call(
        c,
        "POST",
        &specs,
        &[t, json],
        r#"{"extra_specs": {"a": "1", "b": 2}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"extra_specs": {"a": "1", "b": "2"}})
    );
    let a = format!("{specs}/a");
    let r = call(c, "PUT", &a, &[t, json], r#"{"a": "one"}"#);
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"a": "one"})));
    for (bad, why) in [
        (r#"{"b": "x"}"#, "mismatch"),
        (r#"{"a": "x", "b": "y"}"#, "too many"),
        (r#"{"a": [1]}"#, "not a string"),
    ] {
        let r = call(c, "PUT", &a, &[t, json], bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains(why), "{bad}: {}", r.body);
    }
    common::second_project(c);
    let bob = common::token(c, "bob", "bob-password", "other");
    let b = ("X-Auth-Token", bob.as_str());
    let r = call(c, "GET", &specs, &[b], "");
    assert_eq!(r.json()["extra_specs"]["a"], "one", "{}", r.body);
    assert_eq!(call(c, "PUT", &a, &[b, json], r#"{"a": "x"}"#).status, 403);
    assert_eq!(call(c, "DELETE", &a, &[b], "").status, 403);
    assert_eq!(call(c, "DELETE", &a, &[t], "").status, 200);
    assert_eq!(call(c, "DELETE", &a, &[t], "").status, 404);
    assert_eq!(call(c, "GET", &a, &[t], "").status, 404);
    let r = call(c, "GET", &format!("{specs}/b"), &[t], "");
    assert_eq!(r.json(), serde_json::json!({"b": "2"}));
    flavor_access(c, t, b, &id);
    let r = call(
        c,
        "GET",
        "/compute/v2.1/flavors/nope/os-extra_specs",
        &[t],
        "",
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        call(
            c,
            "DELETE",
            &format!("/compute/v2.1/flavors/{id}"),
            &[t],
            ""
        )
        .status,
        202
    );
    assert_eq!(
        call(
            c,
            "DELETE",
            &format!("/compute/v2.1/flavors/{id}"),
            &[t],
            ""
        )
        .status,
        404
    );
    assert_eq!(
        call(c, "PUT", "/compute/v2.1/flavors", &[t], "").status,
        405
    );
}

/// A private flavor is seen and used by admins and by the projects it is
/// opened to, as Nova's os-flavor-access; `public` is a public flavor's id.
fn flavor_access(c: &Controller, t: (&str, &str), b: (&str, &str), public: &str) {
    let json = ("Content-Type", "application/json");
    let r = call(
        c,
        "POST",
        "/compute/v2.1/flavors",
        &[t, json],
        r#"{"flavor": {"name": "secret", "ram": 512, "vcpus": 1, "disk": 1, "os-flavor-access:is_public": false}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let private = r.json()["flavor"]["id"].as_str().unwrap().to_owned();
    let names = |who: (&str, &str), query: &str| -> Vec<String> {
        let r = call(
            c,
            "GET",
            &format!("/compute/v2.1/flavors{query}"),
            &[who],
            "",
        );
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()["flavors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let shown = |who| {
        call(
            c,
            "GET",
            &format!("/compute/v2.1/flavors/{private}"),
            &[who],
            "",
        )
        .status
    };
    // Nobody was given it: only admins who ask see it.
    assert!(!names(b, "").contains(&"secret".into()));
    assert!(
        !names(b, "?is_public=none").contains(&"secret".into()),
        "non-admins cannot widen"
    );
    assert_eq!(shown(b), 404);
    assert!(
        !names(t, "").contains(&"secret".into()),
        "not open to the admin's project either"
    );
    assert_eq!(names(t, "?is_public=false"), ["secret"]);
    assert!(names(t, "?is_public=None").contains(&"secret".into()));
    assert_eq!(
        call(c, "GET", "/compute/v2.1/flavors?is_public=maybe", &[t], "").status,
        400
    );
    assert_eq!(shown(t), 200);

    let access = format!("/compute/v2.1/flavors/{private}/os-flavor-access");
    let action = format!("/compute/v2.1/flavors/{private}/action");
    let r = call(c, "GET", &access, &[t], "");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"flavor_access": []}))
    );
    let r = call(c, "GET", "/identity/v3/projects?name=other", &[t], "");
    let other = r.json()["projects"][0]["id"].as_str().unwrap().to_owned();
    let add = format!(r#"{{"addTenantAccess": {{"tenant": "{other}"}}}}"#);
    let remove = format!(r#"{{"removeTenantAccess": {{"tenant": "{other}"}}}}"#);
    assert_eq!(call(c, "GET", &access, &[b], "").status, 403);
    assert_eq!(call(c, "POST", &action, &[b, json], &add).status, 403);
    let r = call(c, "POST", &action, &[t, json], &add);
    assert_eq!(r.status, 200, "{}", r.body);
    let entry = serde_json::json!({"flavor_access": [{"flavor_id": private, "tenant_id": other}]});
    assert_eq!(r.json(), entry);
    assert_eq!(
        call(c, "POST", &action, &[t, json], &add).status,
        409,
        "already open"
    );
    assert_eq!(call(c, "GET", &access, &[t], "").json(), entry);
    assert!(names(b, "").contains(&"secret".into()));
    assert_eq!(shown(b), 200);
    assert_eq!(call(c, "POST", &action, &[b, json], &remove).status, 403);

    for (body, status) in [
        (r#"{"addTenantAccess": {"tenant": "no-such-project"}}"#, 400),
        (r#"{"addTenantAccess": {}}"#, 400),
        (r#"{"addTenantAccess": {"tenant": "p"}, "x": 1}"#, 400),
        (r#"{"grantEverything": {}}"#, 400),
    ] {
        let r = call(c, "POST", &action, &[t, json], body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    // A public flavor is open to all: it has no list and takes no entries.
    let public_access = format!("/compute/v2.1/flavors/{public}/os-flavor-access");
    assert_eq!(call(c, "GET", &public_access, &[t], "").status, 404);
    let r = call(
        c,
        "POST",
        &format!("/compute/v2.1/flavors/{public}/action"),
        &[t, json],
        &add,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        call(
            c,
            "GET",
            "/compute/v2.1/flavors/nope/os-flavor-access",
            &[t],
            ""
        )
        .status,
        404
    );

    let r = call(c, "POST", &action, &[t, json], &remove);
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"flavor_access": []}))
    );
    assert_eq!(call(c, "POST", &action, &[t, json], &remove).status, 404);
    assert!(!names(b, "").contains(&"secret".into()));
    assert_eq!(shown(b), 404);
    // Deleting the flavor takes its access list along.
    assert_eq!(call(c, "POST", &action, &[t, json], &add).status, 200);
    let gone = call(
        c,
        "DELETE",
        &format!("/compute/v2.1/flavors/{private}"),
        &[t],
        "",
    );
    assert_eq!(gone.status, 202);
    assert_eq!(call(c, "GET", &access, &[t], "").status, 404);
}

const HOSTD_SECRET: &str = "hostd-secret-0123456789";

fn host_token(host: &str) -> String {
    hostd_proto::token::for_host(HOSTD_SECRET, host)
}

#[test]
fn hosts_register_with_heartbeats() {
    let c = start_with(None, &format!("hostd_secret = \"{HOSTD_SECRET}\"\n"));
    exercise_hosts(&c);
    // Without a configured secret no host can register.
    let closed = start(None);
    let auth = format!("Bearer {}", host_token("compute-1"));
    assert_eq!(
        call(
            &closed,
            "PUT",
            "/internal/v1/hosts/compute-1",
            &[("Authorization", &auth)],
            "{}"
        )
        .status,
        401
    );
}

/// `controller host-token HOST` prints what the controller accepts from and
/// sends to that host; without a secret it says so and exits 2.
#[test]
fn host_token_command_prints_the_hosts_token() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let path = dir.path().join("controller.toml");
        std::fs::write(&path, config).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
            .arg("--config")
            .arg(&path)
            .args(["host-token", "compute-7"])
            .output()
            .unwrap()
    };
    let bootstrap = "[bootstrap]\nadmin_password = \"secret-password\"\n";
    let out = run(&format!(
        "state_dir = \"{}\"\nhostd_secret = \"{HOSTD_SECRET}\"\n{bootstrap}",
        dir.path().display()
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        host_token("compute-7")
    );
    let out = run(&format!(
        "state_dir = \"{}\"\n{bootstrap}",
        dir.path().display()
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hostd_secret"));
}

#[test]
fn hosts_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    exercise_hosts(&start_with(
        Some(pg.url()),
        &format!("hostd_secret = \"{HOSTD_SECRET}\"\n"),
    ));
}

fn exercise_hosts(c: &Controller) {
    let token = host_token("compute-1");
    let beat = hostd_proto::Heartbeat {
        host_id: "compute-1".into(),
        url: "http://10.0.0.5:8790".into(),
        cpus: 16,
        memory_mib: 65536,
        memory_usable_mib: 64512,
        disk_free_mib: 100_000,
        disk_total_mib: 200_000,
        vcpus_used: 2,
        memory_used_mib: 512,
        instances: 2,
        kvm_mode: "hardware".into(),
        version: "0.1.0".into(),
        // Up for a day: booted a day before the test's clock.
        booted_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 86_400,
        load_average: [0.5, 0.25, 0.125],
    };
    let body = serde_json::to_string(&beat).unwrap();
    let auth = format!("Bearer {token}");
    let a = ("Authorization", auth.as_str());
    assert_eq!(
        call(c, "PUT", "/internal/v1/hosts/compute-1", &[a], &body).status,
        204
    );
    assert_eq!(
        call(c, "PUT", "/internal/v1/hosts/compute-1", &[a], &body).status,
        204,
        "again: an update"
    );
    assert_eq!(
        call(c, "PUT", "/internal/v1/hosts/compute-1", &[], &body).status,
        401
    );
    let forged = hostd_proto::token::for_host("another-secret-0123456", "compute-1");
    for wrong in ["wrong-token-0123456789", HOSTD_SECRET, forged.as_str()] {
        assert_eq!(
            call(
                c,
                "PUT",
                "/internal/v1/hosts/compute-1",
                &[("Authorization", &format!("Bearer {wrong}"))],
                &body
            )
            .status,
            401,
            "{wrong}"
        );
    }
    // A host registers only itself: its token is refused for another host.
    let r = call(c, "PUT", "/internal/v1/hosts/other", &[a], &body);
    assert_eq!(r.status, 403, "{}", r.body);
    let other = format!("Bearer {}", host_token("other"));
    assert_eq!(
        call(
            c,
            "PUT",
            "/internal/v1/hosts/other",
            &[("Authorization", &other)],
            &body
        )
        .status,
        400,
        "path and body disagree"
    );
    assert_eq!(
        call(c, "PUT", "/internal/v1/hosts/compute-1", &[a], "{}").status,
        400
    );
    let r = call(c, "GET", "/internal/v1/hosts", &[a], "");
    assert_eq!(r.status, 200);
    let hosts = r.json()["hosts"].clone();
    assert_eq!(hosts.as_array().unwrap().len(), 1);
    assert_eq!(hosts[0]["host_id"], "compute-1");
    assert_eq!(hosts[0]["memory_usable_mib"], 64512);
    assert!(hosts[0]["seconds_since_heartbeat"].as_i64().unwrap() < 60);

    // The operator's view: the host as a Nova service and hypervisor.
    let admin = admin_token(c);
    let t = ("X-Auth-Token", admin.as_str());
    let get = |path: &str| {
        let r = call(c, "GET", &format!("/compute/v2.1/{path}"), &[t], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    };
    let put = |path: &str, body: &str| call(c, "PUT", &format!("/compute/v2.1/{path}"), &[t], body);
    let services = get("os-services");
    let svc = &services["services"][0];
    assert_eq!(svc["host"], "compute-1");
    assert_eq!(svc["binary"], "nova-compute");
    assert_eq!(
        (svc["status"].as_str(), svc["state"].as_str()),
        (Some("enabled"), Some("up"))
    );
    let id = svc["id"].as_i64().unwrap();
    assert!(id >= 1, "an integer id at 2.1");
    assert_eq!(
        get("os-services?host=elsewhere")["services"],
        serde_json::json!([])
    );
    let hv = get("os-hypervisors/detail")["hypervisors"][0].clone();
    assert_eq!(hv["id"], id);
    assert_eq!(hv["hypervisor_hostname"], "compute-1");
    assert_eq!(hv["vcpus"], 16);
    assert_eq!(hv["memory_mb"], 64512);
    assert_eq!(hv["local_gb"], 200_000 / 1024);
    assert_eq!(hv["local_gb_used"], 100_000 / 1024);
    assert_eq!(hv["running_vms"], 2);
    assert_eq!(hv["host_ip"], "10.0.0.5");
    assert_eq!(hv["hypervisor_version"], 1000);
    assert_eq!(
        get(&format!("os-hypervisors/{id}"))["hypervisor"]["hypervisor_hostname"],
        "compute-1"
    );
    assert_eq!(
        get("os-hypervisors/statistics")["hypervisor_statistics"]["count"],
        1
    );
    assert_eq!(
        call(c, "GET", "/compute/v2.1/os-hypervisors/999", &[t], "").status,
        404
    );
    // The host's uptime, as the `uptime` command prints it.
    let up = get(&format!("os-hypervisors/{id}/uptime"))["hypervisor"].clone();
    let line = up["uptime"].as_str().unwrap();
    assert!(line.contains(" up 1 day, "), "{line}");
    assert!(
        line.ends_with("load average: 0.50, 0.25, 0.12")
            || line.ends_with("load average: 0.50, 0.25, 0.13"),
        "{line}"
    );
    assert_eq!(up["hypervisor_hostname"], "compute-1");
    let r = call(
        c,
        "GET",
        "/compute/v2.1/os-hypervisors/999/uptime",
        &[t],
        "",
    );
    assert_eq!(r.status, 404);
    // Before 2.53: by a part of the name, alone or with servers (none
    // placed here: no `servers` key, as Nova).
    let found = get("os-hypervisors/mpute/search")["hypervisors"].clone();
    assert_eq!(found[0]["hypervisor_hostname"], "compute-1");
    let with = get("os-hypervisors/compute-1/servers")["hypervisors"][0].clone();
    assert_eq!(with["id"], id);
    assert!(with.get("servers").is_none(), "{with}");
    let r = call(
        c,
        "GET",
        "/compute/v2.1/os-hypervisors/elsewhere/search",
        &[t],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Disabled with a reason: it stays so across heartbeats, until enabled.
    let r = put(
        "os-services/disable-log-reason",
        r#"{"host": "compute-1", "binary": "nova-compute", "disabled_reason": "new disks"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["service"]["disabled_reason"], "new disks");
    assert_eq!(
        call(c, "PUT", "/internal/v1/hosts/compute-1", &[a], &body).status,
        204
    );
    let svc = get("os-services")["services"][0].clone();
    assert_eq!(
        (svc["status"].as_str(), svc["disabled_reason"].as_str()),
        (Some("disabled"), Some("new disks"))
    );
    assert_eq!(
        get("os-hypervisors")["hypervisors"][0]["status"],
        "disabled"
    );
    let r = put(
        "os-services/enable",
        r#"{"host": "compute-1", "binary": "nova-compute"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let svc = get("os-services")["services"][0].clone();
    assert_eq!(svc["status"], "enabled");
    assert!(svc["disabled_reason"].is_null());
    // Bad requests.
    for (path, body, status) in [
        ("os-services/disable", r#"{"binary": "nova-compute"}"#, 400),
        (
            "os-services/disable",
            r#"{"host": "nope", "binary": "nova-compute"}"#,
            404,
        ),
        (
            "os-services/disable",
            r#"{"host": "compute-1", "binary": "nova-scheduler"}"#,
            404,
        ),
        (
            "os-services/disable-log-reason",
            r#"{"host": "compute-1", "binary": "nova-compute"}"#,
            400,
        ),
        (
            "os-services/reboot",
            r#"{"host": "compute-1", "binary": "nova-compute"}"#,
            404,
        ),
        ("os-services/disable", "not json", 400),
    ] {
        let r = put(path, body);
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
    }
    exercise_aggregates(c, &admin);

    // The usage audit: not run by Virga's hosts (Nova's default), said so
    // for the last whole month or the one before a time.
    let audit = |path: &str, token: &str| {
        call(
            c,
            "GET",
            &format!("/compute/v2.1/os-instance_usage_audit_log{path}"),
            &[("X-Auth-Token", token)],
            "",
        )
    };
    let r = audit("", &admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let logs = r.json()["instance_usage_audit_logs"].clone();
    assert_eq!(logs["hosts_not_run"], json!(["compute-1"]), "{logs}");
    assert_eq!(logs["overall_status"], "0 of 1 hosts done. 0 errors.");
    let r = audit("/2026-12-06%2007:00:00", &admin);
    let log = r.json()["instance_usage_audit_log"].clone();
    assert_eq!(
        (&log["period_beginning"], &log["period_ending"]),
        (&json!("2026-11-01 00:00:00"), &json!("2026-12-01 00:00:00")),
        "{}",
        r.body
    );
    assert_eq!(audit("/yesterday", &admin).status, 400);
    common::second_project(c);
    let bob = common::token(c, "bob", "bob-password", "other");
    assert_eq!(audit("", &bob).status, 403);
    assert_eq!(audit("/2026-12-06%2007:00:00", &bob).status, 403);
    exercise_os_hosts(c, &admin, &bob);
}

/// The deprecated os-hosts, as tempest and `openstack host ...` call it.
fn exercise_os_hosts(c: &Controller, admin: &str, member: &str) {
    let at = |method: &str, path: &str, token: &str, body: &str| {
        call(
            c,
            method,
            &format!("/compute/v2.1/os-hosts{path}"),
            &[
                ("X-Auth-Token", token),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    };
    let r = at("GET", "", admin, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let hosts = r.json()["hosts"].as_array().unwrap().clone();
    let compute = hosts
        .iter()
        .find(|h| h["service"] == "compute")
        .cloned()
        .unwrap();
    assert_eq!(compute["host_name"], "compute-1");
    // The controller's services too, in the internal zone.
    assert!(
        hosts
            .iter()
            .any(|h| h["service"] == "scheduler" && h["zone"] == "internal"),
        "{hosts:?}"
    );
    let zone = compute["zone"].as_str().unwrap();
    let r = at("GET", &format!("?zone={zone}"), admin, "");
    assert_eq!(r.json()["hosts"], json!([compute]));
    assert_eq!(at("GET", "?zone=", admin, "").json()["hosts"], json!(hosts));
    assert_eq!(at("GET", "?zone=xxx", admin, "").json()["hosts"], json!([]));
    // Its figures: totals, claimed now, its servers' sum (none here).
    let r = at("GET", "/compute-1", admin, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let detail = r.json()["host"].clone();
    assert_eq!(detail[0]["resource"]["project"], "(total)");
    assert_eq!(detail[0]["resource"]["cpu"], 16);
    assert_eq!(detail[0]["resource"]["memory_mb"], 64512);
    assert_eq!(detail[2]["resource"]["project"], "(used_max)");
    assert_eq!(detail[2]["resource"]["host"], "compute-1");
    // Disabled and enabled again, as os-services shows.
    let r = at("PUT", "/compute-1", admin, r#"{"status": "disable"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"host": "compute-1", "status": "disabled"}));
    let services = call(
        c,
        "GET",
        "/compute/v2.1/os-services",
        &[("X-Auth-Token", admin)],
        "",
    );
    assert_eq!(services.json()["services"][0]["status"], "disabled");
    let r = at("PUT", "/compute-1", admin, r#"{"status": "Enable"}"#);
    assert_eq!(r.json()["status"], "enabled", "{}", r.body);
    for (method, path, token, body, status) in [
        ("GET", "", member, "", 403),
        ("GET", "/compute-1", member, "", 403),
        ("GET", "/nope", admin, "", 404),
        ("PUT", "/compute-1", member, r#"{"status": "enable"}"#, 403),
        ("PUT", "/compute-1", admin, r#"{"status": "invalid"}"#, 400),
        (
            "PUT",
            "/compute-1",
            admin,
            r#"{"status": null, "maintenance_mode": null}"#,
            400,
        ),
        ("PUT", "/nope", admin, r#"{"status": "enable"}"#, 404),
        (
            "PUT",
            "/compute-1",
            admin,
            r#"{"maintenance_mode": "enable"}"#,
            501,
        ),
        ("GET", "/compute-1/reboot", admin, "", 501),
        ("GET", "/nope/startup", admin, "", 404),
        ("GET", "/compute-1/shutdown", member, "", 403),
    ] {
        let r = at(method, path, token, body);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
    }
}

/// Host aggregates over HTTP, as tempest's and the CLI's requests make
/// them: Nova's shapes, integer ids, errors; a zone given to the
/// aggregate's hosts.
fn exercise_aggregates(c: &Controller, admin: &str) {
    let at = |method: &str, path: &str, version: &str, body: &str| {
        call(
            c,
            method,
            &format!("/compute/v2.1/os-aggregates{path}"),
            &[
                ("X-Auth-Token", admin),
                ("Content-Type", "application/json"),
                ("OpenStack-API-Version", version),
            ],
            body,
        )
    };
    let r = at(
        "POST",
        "",
        "compute 2.1",
        r#"{"aggregate": {"name": "agg1", "availability_zone": "az-east"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let made = r.json()["aggregate"].clone();
    let id = made["id"].as_i64().expect("an integer id");
    assert_eq!(made["availability_zone"], "az-east");
    assert_eq!(
        (&made["deleted"], &made["deleted_at"]),
        (&json!(false), &Value::Null)
    );
    assert!(
        made.get("hosts").is_none() && made.get("uuid").is_none(),
        "{made}"
    );
    let r = at(
        "POST",
        &format!("/{id}/action"),
        "compute 2.41",
        r#"{"add_host": {"host": "compute-1"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = r.json()["aggregate"].clone();
    assert_eq!(shown["hosts"], json!(["compute-1"]));
    assert_eq!(shown["metadata"], json!({"availability_zone": "az-east"}));
    assert_eq!(shown["uuid"].as_str().map(str::len), Some(36), "{shown}");
    // The host is in the aggregate's zone now.
    let zones = call(
        c,
        "GET",
        "/compute/v2.1/os-availability-zone/detail",
        &[("X-Auth-Token", admin)],
        "",
    );
    assert!(
        zones.body.contains("az-east") && zones.body.contains("compute-1"),
        "{}",
        zones.body
    );
    let r = at(
        "POST",
        &format!("/{id}/action"),
        "compute 2.1",
        r#"{"set_metadata": {"metadata": {"ssd": "true", "gone": null}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["aggregate"]["metadata"]["ssd"], "true");
    let r = at(
        "PUT",
        &format!("/{id}"),
        "compute 2.1",
        r#"{"aggregate": {"name": "agg-one"}}"#,
    );
    assert_eq!(
        (r.status, &r.json()["aggregate"]["name"]),
        (200, &json!("agg-one"))
    );
    // Another aggregate may not put the host in a second zone.
    let r = at(
        "POST",
        "",
        "compute 2.1",
        r#"{"aggregate": {"name": "agg2", "availability_zone": "az-west"}}"#,
    );
    let other = r.json()["aggregate"]["id"].as_i64().unwrap();
    assert_eq!(other, id + 1);
    let add = r#"{"add_host": {"host": "compute-1"}}"#;
    let r = at("POST", &format!("/{other}/action"), "compute 2.1", add);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("az-east"), "{}", r.body);
    let long = "x".repeat(256);
    for (method, path, body, status, why) in [
        (
            "POST",
            "".to_owned(),
            r#"{"aggregate": {"name": "agg-one"}}"#.to_owned(),
            409,
            "already exists",
        ),
        (
            "POST",
            "".to_owned(),
            r#"{"aggregate": {"name": ""}}"#.to_owned(),
            400,
            "name",
        ),
        (
            "POST",
            "".to_owned(),
            format!(r#"{{"aggregate": {{"name": "{long}"}}}}"#),
            400,
            "name",
        ),
        (
            "POST",
            "".to_owned(),
            r#"{"aggregate": {"zone": "z"}}"#.to_owned(),
            400,
            "name",
        ),
        (
            "GET",
            "/999".to_owned(),
            String::new(),
            404,
            "Aggregate 999 could not be found",
        ),
        (
            "GET",
            "/abc".to_owned(),
            String::new(),
            404,
            "could not be found",
        ),
        (
            "DELETE",
            "/999".to_owned(),
            String::new(),
            404,
            "could not be found",
        ),
        ("DELETE", format!("/{id}"), String::new(), 400, "not empty"),
        (
            "POST",
            format!("/{id}/action"),
            add.to_owned(),
            409,
            "already has host compute-1",
        ),
        (
            "POST",
            format!("/{id}/action"),
            r#"{"add_host": {"host": "nowhere"}}"#.to_owned(),
            404,
            "Compute host nowhere",
        ),
        (
            "POST",
            format!("/{other}/action"),
            r#"{"remove_host": {"host": "compute-1"}}"#.to_owned(),
            404,
            "has no host compute-1",
        ),
        (
            "POST",
            format!("/{id}/action"),
            r#"{"explode": {}}"#.to_owned(),
            400,
            "add_host",
        ),
        (
            "PUT",
            format!("/{other}"),
            r#"{"aggregate": {}}"#.to_owned(),
            400,
            "enough properties",
        ),
    ] {
        let r = at(method, &path, "compute 2.1", &body);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
        assert!(r.body.contains(why), "{method} {path}: {}", r.body);
    }
    let listed = at("GET", "", "compute 2.1", "").json();
    assert_eq!(
        listed["aggregates"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    // Emptied, then deleted; the host is back in the zone it reports.
    let r = at(
        "POST",
        &format!("/{id}/action"),
        "compute 2.1",
        r#"{"remove_host": {"host": "compute-1"}}"#,
    );
    assert_eq!(r.json()["aggregate"]["hosts"], json!([]), "{}", r.body);
    for a in [id, other] {
        let r = at("DELETE", &format!("/{a}"), "compute 2.1", "");
        assert_eq!((r.status, r.body.as_str()), (200, ""), "no body, as Nova");
    }
    assert_eq!(
        at("GET", "", "compute 2.1", "").json(),
        json!({"aggregates": []})
    );
    let zones = call(
        c,
        "GET",
        "/compute/v2.1/os-availability-zone/detail",
        &[("X-Auth-Token", admin)],
        "",
    );
    assert!(!zones.body.contains("az-east"), "{}", zones.body);
}

#[test]
fn limits_and_quotas() {
    let c = start(None);
    let token = admin_token(&c);
    let t = ("X-Auth-Token", token.as_str());
    let r = call(&c, "GET", "/compute/v2.1/limits", &[t], "");
    assert_eq!(r.status, 200);
    let abs = r.json()["limits"]["absolute"].clone();
    assert_eq!(abs["maxTotalInstances"], 10);
    assert_eq!(abs["totalInstancesUsed"], 0);
    // The token body names the project; quotas are per project.
    let project = call(
        &c,
        "GET",
        "/identity/v3/auth/tokens",
        &[t, ("X-Subject-Token", &token)],
        "",
    )
    .json()["token"]["project"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/compute/v2.1/os-quota-sets/{project}");
    assert_eq!(
        call(&c, "GET", &path, &[t], "").json()["quota_set"]["cores"],
        20
    );
    let r = call(
        &c,
        "PUT",
        &path,
        &[t],
        r#"{"quota_set": {"instances": 5, "cores": "8", "force": true}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["quota_set"].get("id").is_none(),
        "as Nova's update: {}",
        r.body
    );
    let q = call(&c, "GET", &path, &[t], "").json();
    assert_eq!(
        (
            q["quota_set"]["instances"].as_i64(),
            q["quota_set"]["cores"].as_i64()
        ),
        (Some(5), Some(8))
    );
    assert_eq!(
        call(&c, "GET", &format!("{path}/defaults"), &[t], "").json()["quota_set"]["instances"],
        10
    );
    assert_eq!(
        call(&c, "PUT", &path, &[t], r#"{"quota_set": {"bogus": 1}}"#).status,
        400
    );
    assert_eq!(
        call(&c, "PUT", &path, &[t], r#"{"quota_set": {"force": 1}}"#).status,
        400,
        "force is a boolean"
    );
    assert_eq!(
        call(&c, "PUT", &path, &[t], r#"{"quota_set": {"cores": -5}}"#).status,
        400
    );
    let r = call(&c, "GET", "/compute/v2.1/limits", &[t], "");
    assert_eq!(r.json()["limits"]["absolute"]["maxTotalInstances"], 5);
    // Each limit with its use (`openstack quota show --usage`).
    let r = call(&c, "GET", &format!("{path}/detail"), &[t], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["quota_set"]["cores"],
        serde_json::json!({"limit": 8, "in_use": 0, "reserved": 0})
    );
    assert_eq!(r.json()["quota_set"]["id"], project.as_str());
    // Deleted: the defaults again.
    assert_eq!(call(&c, "DELETE", &path, &[t], "").status, 202);
    let q = call(&c, "GET", &path, &[t], "").json();
    assert_eq!(q["quota_set"]["cores"], 20, "{q}");
    assert_eq!(call(&c, "DELETE", &path, &[t], "").status, 202, "again");
}

/// A server asked for an aggregate's zone goes to that aggregate's host; a
/// zone no host is in finds none.
#[test]
fn servers_go_to_the_zone_an_aggregate_gives_its_hosts() {
    let cloud = common::cloud::Cloud::start(common::hostd::Delays::NONE);
    let (c, admin) = (&cloud.c, cloud.admin.as_str());
    let t = [("X-Auth-Token", admin)];
    let r = call(
        c,
        "POST",
        "/compute/v2.1/os-aggregates",
        &t,
        r#"{"aggregate": {"name": "rack1", "availability_zone": "az-east"}}"#,
    );
    let id = r.json()["aggregate"]["id"].as_i64().unwrap();
    let add = format!(
        r#"{{"add_host": {{"host": "{}"}}}}"#,
        common::hostd::HOST_ID
    );
    let r = call(
        c,
        "POST",
        &format!("/compute/v2.1/os-aggregates/{id}/action"),
        &t,
        &add,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (flavor, image) = common::hostd::bootable(c, admin, 1, 128);
    let create = |zone: &str| {
        let r = call(
            c,
            "POST",
            "/compute/v2.1/servers",
            &t,
            &format!(
                r#"{{"server": {{"name": "vm", "imageRef": "{image}", "flavorRef": "{flavor}", "availability_zone": "{zone}"}}}}"#
            ),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["server"]["id"].as_str().unwrap().to_owned()
    };
    let placed = cloud.wait(&create("az-east"), "ACTIVE");
    assert_eq!(placed["OS-EXT-AZ:availability_zone"], "az-east", "{placed}");
    // A zone no host is in.
    let lost = cloud.wait(&create("az-west"), "ERROR");
    assert!(
        lost["fault"].to_string().contains("No valid host"),
        "{lost}"
    );
}
