//! What an owner changes on a running server without its host (name,
//! access addresses, disk config label, metadata, through `PUT /servers/{id}`
//! and the metadata API), its addresses (`/ips`), several servers from one
//! request (min_count/max_count), and flavor list filters and pages, against
//! a controller with a stand-in hostd.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::call;
use common::cloud::Cloud;
use common::hostd::{bootable, Delays};
use serde_json::{json, Value};

fn cloud() -> Cloud {
    Cloud::start(Delays {
        create: Duration::ZERO,
        action: Duration::ZERO,
        delete: Duration::ZERO,
    })
}

#[test]
fn an_owner_renames_a_server_and_changes_its_metadata() {
    let cloud = cloud();
    let (c, t) = (&cloud.c, cloud.auth());
    let (id, _) = cloud.active_server();
    let at = |path: &str| format!("/compute/v2.1/servers/{id}{path}");
    let send = |method: &str, path: &str, body: Value| {
        let r = call(c, method, &at(path), &[t], &body.to_string());
        (
            r.status,
            if r.body.is_empty() {
                Value::Null
            } else {
                r.json()
            },
        )
    };

    let (status, body) = send(
        "PUT",
        "",
        json!({"server": {"name": "renamed", "accessIPv4": "192.0.2.7",
                          "accessIPv6": "2001:db8::7", "OS-DCF:diskConfig": "AUTO"}}),
    );
    assert_eq!(status, 200, "{body}");
    let shown = cloud.show(&id);
    for (key, want) in [
        ("name", "renamed"),
        ("accessIPv4", "192.0.2.7"),
        ("accessIPv6", "2001:db8::7"),
        ("OS-DCF:diskConfig", "AUTO"),
    ] {
        assert_eq!(body["server"][key], want, "the answer's {key}");
        assert_eq!(shown[key], want, "the stored {key}");
    }
    // Refused whole: nothing changes.
    for bad in [
        json!({"server": {"accessIPv4": "2001:db8::1"}}),
        json!({"server": {"accessIPv6": "10.0.0.1"}}),
        json!({"server": {"OS-DCF:diskConfig": "SOMETIMES"}}),
        json!({"server": {"name": ""}}),
        json!({"server": {"name": "x", "flavorRef": "1"}}),
        json!({"server": "renamed"}),
        json!({}),
    ] {
        assert_eq!(send("PUT", "", bad.clone()).0, 400, "{bad}");
    }
    assert_eq!(cloud.show(&id)["name"], "renamed");

    // Metadata: replace, merge, one key, delete.
    let (status, body) = send(
        "PUT",
        "/metadata",
        json!({"metadata": {"a": "1", "b": "2"}}),
    );
    assert_eq!(
        (status, &body["metadata"]),
        (200, &json!({"a": "1", "b": "2"}))
    );
    let (status, body) = send(
        "POST",
        "/metadata",
        json!({"metadata": {"b": "3", "c": "4"}}),
    );
    assert_eq!(
        (status, &body["metadata"]),
        (200, &json!({"a": "1", "b": "3", "c": "4"}))
    );
    assert_eq!(
        send("GET", "/metadata/b", Value::Null).1,
        json!({"meta": {"b": "3"}})
    );
    assert_eq!(
        send("PUT", "/metadata/d", json!({"meta": {"d": "5"}})).0,
        200
    );
    assert_eq!(
        send("PUT", "/metadata/d", json!({"meta": {"e": "5"}})).0,
        400,
        "key and URI differ"
    );
    assert_eq!(
        send("PUT", "/metadata/d", json!({"meta": {"d": "5", "e": "6"}})).0,
        400,
        "one key only"
    );
    assert_eq!(send("DELETE", "/metadata/a", Value::Null).0, 204);
    assert_eq!(send("DELETE", "/metadata/a", Value::Null).0, 404);
    assert_eq!(send("GET", "/metadata/a", Value::Null).0, 404);
    assert_eq!(
        send("GET", "/metadata", Value::Null).1["metadata"],
        json!({"b": "3", "c": "4", "d": "5"})
    );
    assert_eq!(
        cloud.show(&id)["metadata"],
        json!({"b": "3", "c": "4", "d": "5"})
    );
    for bad in [
        json!({"metadata": {"": "empty key"}}),
        json!({"metadata": {"k": 1}}),
        json!({"metadata": {"k": "v".repeat(256)}}),
        json!({"metadata": {"k".repeat(256): "v"}}),
        json!({"metadata": ["k"]}),
        json!({"meta": {"k": "v"}}),
    ] {
        assert_eq!(send("POST", "/metadata", bad.clone()).0, 400, "{bad}");
    }
    let many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, body) = send("PUT", "/metadata", json!({ "metadata": many }));
    assert_eq!(status, 403, "more than 128 items: {body}");
    assert_eq!(
        send("GET", "/metadata", Value::Null).1["metadata"]
            .as_object()
            .unwrap()
            .len(),
        3
    );

    // Stopped: still allowed; another project's server: not found.
    let r = call(c, "POST", &at("/action"), &[t], r#"{"os-stop": null}"#);
    assert_eq!(r.status, 202);
    cloud.wait(&id, "SHUTOFF");
    assert_eq!(
        send("POST", "/metadata", json!({"metadata": {"e": "6"}})).0,
        200
    );
    assert_eq!(send("GET", "/ips", Value::Null).0, 200);
    assert_eq!(send("GET", "/ips/no-such-network", Value::Null).0, 404);
    let missing = "/compute/v2.1/servers/00000000-0000-4000-8000-000000000000/metadata";
    assert_eq!(call(c, "GET", missing, &[t], "").status, 404);
}

#[test]
fn one_request_makes_several_servers_within_the_quota() {
    let cloud = cloud();
    let (c, t) = (&cloud.c, cloud.auth());
    let (flavor, image) = bootable(c, &cloud.admin, 1, 128);
    let create = |extra: Value| {
        let mut server = json!({"name": "many", "imageRef": image, "flavorRef": flavor});
        server
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        call(
            c,
            "POST",
            "/compute/v2.1/servers",
            &[t],
            &json!({ "server": server }).to_string(),
        )
    };
    let names = || -> Vec<String> {
        let list = call(c, "GET", "/compute/v2.1/servers", &[t], "").json();
        let mut names: Vec<String> = list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    for bad in [
        json!({"min_count": 0}),
        json!({"max_count": 0}),
        json!({"min_count": "two"}),
        json!({"min_count": 1.5}),
        json!({"min_count": 3, "max_count": 2}),
        json!({"return_reservation_id": "perhaps"}),
    ] {
        assert_eq!(create(bad.clone()).status, 400, "{bad}");
    }
    assert!(names().is_empty(), "nothing made by refused requests");

    let r = create(json!({"min_count": 2}));
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.json()["server"]["id"].is_string());
    assert_eq!(names(), ["many-1", "many-2"]);
    // Names filter as regular expressions, as Nova's do.
    let matching = |q: &str| {
        let r = call(c, "GET", &format!("/compute/v2.1/servers?{q}"), &[t], "");
        (r.status, r.json()["servers"].as_array().map_or(0, Vec::len))
    };
    assert_eq!(matching("name=%5Emany-%5B0-9%5D%2B%24"), (200, 2));
    assert_eq!(matching("name=y-2%24"), (200, 1));
    assert_eq!(
        matching("name=MANY"),
        (200, 2),
        "a plain name is a substring"
    );
    assert_eq!(matching("name=%5Emany-%5B0-9%5D%2B%24&limit=1"), (200, 1));
    assert_eq!(matching("name=%28unclosed").0, 400);
    assert_eq!(matching("ip=10%5C.").1, 0, "no addresses without networks");

    let r = create(json!({"min_count": "1", "max_count": "2", "return_reservation_id": true}));
    assert_eq!(r.status, 202, "{}", r.body);
    let reservation = r.json()["reservation_id"].as_str().unwrap().to_owned();
    let mine = call(
        c,
        "GET",
        &format!("/compute/v2.1/servers?reservation_id={reservation}"),
        &[t],
        "",
    )
    .json();
    assert_eq!(mine["servers"].as_array().unwrap().len(), 2);

    // Room for 6 more of 10: max 8 makes 6; min 5 of the 0 left fails and
    // leaves nothing behind.
    let r = create(json!({"min_count": 1, "max_count": 8}));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(names().len(), 10);
    let r = create(json!({"min_count": 1}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(names().len(), 10);
}

#[test]
fn flavors_are_filtered_sorted_and_paged() {
    let cloud = cloud();
    let (c, t) = (&cloud.c, cloud.auth());
    for (id, ram, disk) in [
        ("f1", 512, 1),
        ("f2", 1024, 5),
        ("f3", 2048, 10),
        ("f4", 4096, 20),
    ] {
        let body = json!({"flavor": {"name": format!("n{id}"), "id": id, "ram": ram,
                                     "vcpus": 1, "disk": disk}});
        assert_eq!(
            call(c, "POST", "/compute/v2.1/flavors", &[t], &body.to_string()).status,
            200
        );
    }
    let ids = |query: &str| -> (u16, Vec<String>, Value) {
        let r = call(
            c,
            "GET",
            &format!("/compute/v2.1/flavors/detail?{query}"),
            &[t],
            "",
        );
        if r.status != 200 {
            return (r.status, Vec::new(), Value::Null);
        }
        let body = r.json();
        let ids = body["flavors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .filter(|id| id.starts_with('f'))
            .collect();
        (200, ids, body["flavors_links"].clone())
    };
    assert_eq!(ids("minRam=1024").1, ["f2", "f3", "f4"]);
    assert_eq!(ids("minDisk=10").1, ["f3", "f4"]);
    assert_eq!(ids("minDisk=6&minRam=1").1, ["f3", "f4"]);
    assert_eq!(
        ids("sort_key=memory_mb&sort_dir=desc").1,
        ["f4", "f3", "f2", "f1"]
    );
    let (_, page, next) = ids("minRam=512&limit=2");
    assert_eq!(page, ["f1", "f2"]);
    let next = next[0]["href"].as_str().unwrap();
    assert!(
        next.contains("marker=f2") && next.contains("minRam=512"),
        "{next}"
    );
    let (_, page, next) = ids("minRam=512&limit=2&marker=f2");
    assert_eq!(
        (page, next),
        (vec!["f3".to_owned(), "f4".to_owned()], Value::Null)
    );
    assert_eq!(ids("marker=f4").1, Vec::<String>::new());
    for bad in [
        "marker=nope",
        "minRam=big",
        "limit=-1",
        "sort_key=colour",
        "sort_dir=up",
    ] {
        assert_eq!(ids(bad).0, 400, "{bad}");
    }
}

#[test]
fn a_locked_server_refuses_its_owners_changes_until_unlocked() {
    let cloud = cloud();
    let c = &cloud.c;
    common::second_project(c);
    let bob = common::token(c, "bob", "bob-password", "other");
    let b = ("X-Auth-Token", bob.as_str());
    let (flavor, image) = bootable(c, &cloud.admin, 1, 128);
    let r = call(
        c,
        "PATCH",
        &format!("/image/v2/images/{image}"),
        &[
            cloud.auth(),
            (
                "Content-Type",
                "application/openstack-images-v2.1-json-patch",
            ),
        ],
        r#"[{"op": "replace", "path": "/visibility", "value": "public"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json!({"server": {"name": "bobs", "imageRef": image, "flavorRef": flavor}});
    let r = call(c, "POST", "/compute/v2.1/servers", &[b], &body.to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");
    let act = |who: (&'static str, &str), action: &str| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[who],
            &json!({ action: null }).to_string(),
        )
        .status
    };

    assert_eq!(act(b, "lock"), 202);
    assert_eq!(act(b, "os-stop"), 409);
    let metadata = json!({"metadata": {"k": "v"}}).to_string();
    let path = format!("/compute/v2.1/servers/{id}/metadata");
    assert_eq!(call(c, "POST", &path, &[b], &metadata).status, 409);
    let server = format!("/compute/v2.1/servers/{id}");
    assert_eq!(call(c, "DELETE", &server, &[b], "").status, 409);
    assert_eq!(act(b, "os-getConsoleOutput"), 200, "reads stay allowed");
    // Admins act on locked servers.
    assert_eq!(act(cloud.auth(), "os-stop"), 202);
    cloud.wait(&id, "SHUTOFF");
    assert_eq!(act(b, "unlock"), 202);
    assert_eq!(act(b, "os-start"), 202);
    cloud.wait(&id, "ACTIVE");
    assert_eq!(call(c, "POST", &path, &[b], &metadata).status, 200);
    let missing = "/compute/v2.1/servers/00000000-0000-4000-8000-000000000000/action";
    let r = call(c, "POST", missing, &[b], r#"{"forceDelete": null}"#);
    assert_eq!(r.status, 404, "a missing server before an unknown action");
}
