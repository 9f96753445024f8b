//! Nova servers over HTTP against a real controller, without hosts: the API's
//! shapes, validation, quotas, isolation, and "no valid host" ending in ERROR.
//! Booting on real hosts runs in the testbed.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{call, put_bytes, start, token, wait_for_status, Controller};

/// The id of the project `token` is scoped to.
fn project_of(c: &Controller, token: &str) -> String {
    call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", token), ("X-Subject-Token", token)],
        "",
    )
    .json()["token"]["project"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A tiny flavor and a kernel image; returns (flavor id, image id).
fn flavor_and_image(c: &Controller, admin: &str) -> (String, String) {
    let t = ("X-Auth-Token", admin);
    let f = call(
        c,
        "POST",
        "/compute/v2.1/flavors",
        &[t],
        r#"{"flavor": {"name": "tiny", "ram": 128, "vcpus": 1, "disk": 0}}"#,
    );
    let flavor = f.json()["flavor"]["id"].as_str().unwrap().to_owned();
    let i = call(
        c,
        "POST",
        "/image/v2/images",
        &[t],
        r#"{"name": "kernel", "disk_format": "aki", "container_format": "aki", "visibility": "public"}"#,
    );
    let image = i.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/image/v2/images/{image}/file");
    assert_eq!(
        put_bytes(c, &path, admin, b"\x7fELF not really a kernel"),
        204
    );
    (flavor, image)
}

fn server_body(name: &str, flavor: &str, image: &str) -> String {
    format!(
        r#"{{"server": {{"name": "{name}", "imageRef": "{image}", "flavorRef": "{flavor}", "min_count": 1, "max_count": 1, "networks": "none"}}}}"#
    )
}

#[test]
fn without_hosts_a_server_ends_in_error_with_a_fault() {
    let c = start(None);
    let admin = token(&c, "admin", "admin-secret", "admin");
    let t = ("X-Auth-Token", admin.as_str());
    let (flavor, image) = flavor_and_image(&c, &admin);

    let r = call(
        &c,
        "POST",
        "/compute/v2.1/servers",
        &[t],
        &server_body("vm1", &flavor, &image),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.header("location").is_some());
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        let s = call(&c, "GET", &format!("/compute/v2.1/servers/{id}"), &[t], "").json()["server"]
            .clone();
        if s["status"] != "BUILD" || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(server["status"], "ERROR");
    assert!(
        server["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("No valid host was found"),
        "{server}"
    );
    for key in [
        "id",
        "name",
        "status",
        "image",
        "flavor",
        "user_id",
        "tenant_id",
        "created",
        "updated",
        "metadata",
        "links",
        "addresses",
        "hostId",
    ] {
        assert!(server.get(key).is_some(), "2.1 requires {key}");
    }

    let list = call(
        &c,
        "GET",
        "/compute/v2.1/servers/detail?deleted=False",
        &[t],
        "",
    )
    .json();
    assert_eq!(list["servers"][0]["id"], id.as_str());
    let list = call(&c, "GET", "/compute/v2.1/servers?name=vm1", &[t], "").json();
    assert_eq!(list["servers"][0].as_object().unwrap().len(), 3);
    let limits = call(&c, "GET", "/compute/v2.1/limits", &[t], "").json();
    assert_eq!(limits["limits"]["absolute"]["totalInstancesUsed"], 1);

    // Actions on a server without a host are refused; delete works.
    let r = call(
        &c,
        "POST",
        &format!("/compute/v2.1/servers/{id}/action"),
        &[t],
        r#"{"os-stop": null}"#,
    );
    assert_eq!(r.status, 409);
    assert_eq!(
        call(
            &c,
            "DELETE",
            &format!("/compute/v2.1/servers/{id}"),
            &[t],
            ""
        )
        .status,
        204
    );
    // Answered at once; gone soon after (clients poll, as with Nova).
    wait_for_status(&c, &format!("/compute/v2.1/servers/{id}"), &admin, 404);
}

#[test]
fn bad_requests_and_quotas() {
    let c = start(None);
    let admin = token(&c, "admin", "admin-secret", "admin");
    let t = ("X-Auth-Token", admin.as_str());
    let (flavor, image) = flavor_and_image(&c, &admin);
    let post = |body: &str| call(&c, "POST", "/compute/v2.1/servers", &[t], body);
    assert_eq!(post("{nope").status, 400);
    assert_eq!(post(r#"{"server": {"imageRef": "x"}}"#).status, 400);
    let r = post(&server_body("vm", "no-such-flavor", &image));
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"]
        .as_str()
        .unwrap()
        .contains("Flavor"));
    let r = post(&server_body(
        "vm",
        &flavor,
        "00000000-0000-0000-0000-000000000000",
    ));
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"]
        .as_str()
        .unwrap()
        .contains("Image"));
    let r = post(
        &server_body("vm", &flavor, &image)
            .replace(r#""networks""#, r#""key_name": "nokey", "networks""#),
    );
    assert_eq!(r.status, 400);

    // Quota: 2 instances for this project.
    let project = project_of(&c, &admin);
    let q = call(
        &c,
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{project}"),
        &[t],
        r#"{"quota_set": {"instances": 2}}"#,
    );
    assert_eq!(q.status, 200);
    assert_eq!(post(&server_body("a", &flavor, &image)).status, 202);
    assert_eq!(post(&server_body("b", &flavor, &image)).status, 202);
    let r = post(&server_body("c", &flavor, &image));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Quota exceeded for instances"));

    // Another project sees none of them.
    let other = call(
        &c,
        "POST",
        "/identity/v3/projects",
        &[t],
        r#"{"project": {"name": "other", "domain_id": "default"}}"#,
    );
    let other_id = other.json()["project"]["id"].as_str().unwrap().to_owned();
    let user = call(
        &c,
        "POST",
        "/identity/v3/users",
        &[t],
        r#"{"user": {"name": "eve", "domain_id": "default", "password": "eve-password"}}"#,
    );
    let user_id = user.json()["user"]["id"].as_str().unwrap().to_owned();
    let roles = call(&c, "GET", "/identity/v3/roles?name=member", &[t], "").json();
    let member = roles["roles"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &c,
            "PUT",
            &format!("/identity/v3/projects/{other_id}/users/{user_id}/roles/{member}"),
            &[t],
            ""
        )
        .status,
        204
    );
    let eve = token(&c, "eve", "eve-password", "other");
    let e = ("X-Auth-Token", eve.as_str());
    let mine = call(&c, "GET", "/compute/v2.1/servers/detail", &[t], "").json();
    let first = mine["servers"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&c, "GET", "/compute/v2.1/servers/detail", &[e], "").json()["servers"],
        serde_json::json!([])
    );
    assert_eq!(
        call(
            &c,
            "GET",
            &format!("/compute/v2.1/servers/{first}"),
            &[e],
            ""
        )
        .status,
        404
    );
    assert_eq!(
        call(
            &c,
            "DELETE",
            &format!("/compute/v2.1/servers/{first}"),
            &[e],
            ""
        )
        .status,
        404
    );
}

/// Filters and pages of `GET /servers[/detail]`, the same on both engines.
fn filters_and_pages(c: &Controller) {
    let admin = token(c, "admin", "admin-secret", "admin");
    let t = ("X-Auth-Token", admin.as_str());
    let (flavor, image) = flavor_and_image(c, &admin);
    let names = ["web-1", "web-2", "web-3", "db-1", "DB_2"];
    for name in names {
        let r = call(
            c,
            "POST",
            "/compute/v2.1/servers",
            &[t],
            &server_body(name, &flavor, &image),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let list = |query: &str| {
        let r = call(c, "GET", &format!("/compute/v2.1/servers{query}"), &[t], "");
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()
    };
    let names_of = |v: &serde_json::Value| -> Vec<String> {
        let mut n: Vec<String> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !list("?status=BUILD")["servers"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "builds never ended");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Pages of two, linked by `next`, newest first, each server once.
    let mut seen = Vec::new();
    let mut path = "/detail?limit=2".to_owned();
    for page in 0.. {
        let v = list(&path);
        let servers = v["servers"].as_array().unwrap();
        seen.extend(servers.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match v["servers_links"][0]["href"].as_str() {
            Some(href) => {
                assert_eq!(servers.len(), 2, "only full pages link on");
                assert_eq!(v["servers_links"][0]["rel"], "next");
                path = href.split_once("/servers").unwrap().1.to_owned();
                assert!(path.starts_with("/detail?"), "{href}");
            }
            None => {
                assert_eq!(page, 2, "pages of 2, 2 and 1");
                break;
            }
        }
    }
    let all: Vec<String> = list("/detail")["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, all, "the pages are the whole list, in its order");
    assert_eq!(all.len(), 5);

    // Names: a case-insensitive substring; `_` and `%` are not wildcards.
    assert_eq!(names_of(&list("?name=web")), ["web-1", "web-2", "web-3"]);
    assert_eq!(names_of(&list("?name=%5Eweb-1%24")), ["web-1"]);
    assert_eq!(names_of(&list("?name=DB")), ["DB_2", "db-1"]);
    assert_eq!(names_of(&list("?name=b_")), ["DB_2"]);
    assert_eq!(names_of(&list("?name=%25")), Vec::<String>::new());
    // Status, including one no server can have.
    assert_eq!(
        list("/detail?status=ERROR")["servers"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        list("?status=error")["servers"].as_array().unwrap().len(),
        5
    );
    assert_eq!(list("?status=ACTIVE")["servers"], serde_json::json!([]));
    assert_eq!(
        list("?status=NOT-A-STATUS")["servers"],
        serde_json::json!([])
    );
    assert_eq!(
        list(&format!("?flavor={flavor}"))["servers"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(list("?image=other")["servers"], serde_json::json!([]));
    assert_eq!(list("?deleted=True")["servers"], serde_json::json!([]));
    // changes-since.
    assert_eq!(
        list("?changes-since=2000-01-01T00:00:00Z")["servers"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        list("?changes-since=2999-01-01T00:00:00")["servers"],
        serde_json::json!([])
    );

    // Bad paging and filters: 400 with Nova's error body.
    for bad in [
        "?limit=-1",
        "?limit=ten",
        "?marker=00000000-0000-0000-0000-000000000000",
        "?changes-since=yesterday",
    ] {
        let r = call(c, "GET", &format!("/compute/v2.1/servers{bad}"), &[t], "");
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["badRequest"]["message"].is_string(), "{bad}");
    }
}

#[test]
fn list_filters_and_pages_on_sqlite() {
    filters_and_pages(&start(None));
}

#[test]
fn list_filters_and_pages_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    filters_and_pages(&start(Some(pg.url())));
}

/// Many creates at once in one project with room for three: exactly three are
/// accepted, the rest refused with 403, whatever the interleaving (the quota is
/// checked in the transaction that inserts the server, not read before it).
fn racing_creates_keep_the_quota(c: &Controller) {
    let admin = token(c, "admin", "admin-secret", "admin");
    let t = ("X-Auth-Token", admin.as_str());
    let (flavor, image) = flavor_and_image(c, &admin);
    let project = project_of(c, &admin);
    let q = call(
        c,
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{project}"),
        &[t],
        r#"{"quota_set": {"instances": 3}}"#,
    );
    assert_eq!(q.status, 200, "{}", q.body);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..12)
            .map(|i| {
                let body = server_body(&format!("racer{i}"), &flavor, &image);
                let admin = admin.as_str();
                s.spawn(move || {
                    call(
                        c,
                        "POST",
                        "/compute/v2.1/servers",
                        &[("X-Auth-Token", admin)],
                        &body,
                    )
                    .status
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let accepted = statuses.iter().filter(|&&s| s == 202).count();
    let refused = statuses.iter().filter(|&&s| s == 403).count();
    assert_eq!((accepted, refused), (3, 9), "statuses {statuses:?}");
    let listed = call(c, "GET", "/compute/v2.1/servers", &[t], "").json();
    assert_eq!(listed["servers"].as_array().unwrap().len(), 3, "{listed}");
}

/// (PostgreSQL's row lock is tested on the store: `tests/store_races.rs`.)
#[test]
fn racing_creates_keep_the_quota_on_sqlite() {
    racing_creates_keep_the_quota(&start(None));
}
