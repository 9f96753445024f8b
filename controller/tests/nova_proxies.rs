//! Nova's proxies to the network and image services (microversions up to
//! 2.35): security groups and rules, floating IPs, tenant networks, images
//! and their metadata, over HTTP against a real controller with a stand-in
//! hostd. What they change is checked through the Neutron and Glance APIs.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::call;
use common::cloud::Cloud;
use common::hostd::Delays;
use serde_json::{json, Value};

fn cloud() -> Cloud {
    Cloud::start(Delays {
        create: Duration::ZERO,
        action: Duration::ZERO,
        delete: Duration::ZERO,
    })
}

/// `(status, body)` of a call with the cloud's admin token.
fn send(cloud: &Cloud, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let r = call(&cloud.c, method, path, &[cloud.auth()], &body);
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

#[test]
fn security_groups_and_rules_through_nova() {
    let cloud = cloud();
    let nova = |m: &str, p: &str, b: Value| send(&cloud, m, &format!("/compute/v2.1{p}"), b);

    let (status, body) = nova(
        "POST",
        "/os-security-groups",
        json!({"security_group": {"name": "web", "description": "the web tier"}}),
    );
    assert_eq!(status, 200, "{body}");
    let web = body["security_group"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        body["security_group"]["rules"],
        json!([]),
        "egress rules are not shown"
    );
    let (_, list) = nova("GET", "/os-security-groups", Value::Null);
    let names: Vec<&str> = list["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"default") && names.contains(&"web"),
        "{names:?}"
    );

    let rule = |body: Value| {
        nova(
            "POST",
            "/os-security-group-rules",
            json!({ "security_group_rule": body }),
        )
    };
    let (status, body) = rule(json!({"parent_group_id": web, "ip_protocol": "tcp",
                                     "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}));
    assert_eq!(status, 200, "{body}");
    let r = &body["security_group_rule"];
    assert_eq!((&r["from_port"], &r["to_port"]), (&json!(22), &json!(22)));
    assert_eq!(r["ip_range"], json!({"cidr": "10.0.0.0/8"}));
    let rule_id = r["id"].as_str().unwrap().to_owned();
    // A CIDR with host bits set is shown as given (Neutron keeps it, and
    // matches its network: `normalized_cidr`).
    let (status, body) = rule(json!({"parent_group_id": web, "ip_protocol": "tcp",
                                     "from_port": 80, "to_port": 80, "cidr": "10.2.3.124/24"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["security_group_rule"]["ip_range"],
        json!({"cidr": "10.2.3.124/24"})
    );
    let sloppy = body["security_group_rule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, neutron) = send(
        &cloud,
        "GET",
        &format!("/network/v2.0/security-group-rules/{sloppy}"),
        Value::Null,
    );
    assert_eq!(
        neutron["security_group_rule"]["normalized_cidr"],
        "10.2.3.0/24"
    );
    assert_eq!(
        nova(
            "DELETE",
            &format!("/os-security-group-rules/{sloppy}"),
            Value::Null
        )
        .0,
        202
    );
    let (_, neutron) = send(
        &cloud,
        "GET",
        &format!("/network/v2.0/security-group-rules/{rule_id}"),
        Value::Null,
    );
    let n = &neutron["security_group_rule"];
    assert_eq!(
        (&n["direction"], &n["protocol"]),
        (&json!("ingress"), &json!("tcp"))
    );
    assert_eq!(
        rule(
            json!({"parent_group_id": web, "ip_protocol": "tcp", "from_port": 22,
                    "to_port": 22, "cidr": "10.0.0.0/8"})
        )
        .0,
        400,
        "a duplicate is a 400 in Nova"
    );
    let (status, body) = rule(json!({"parent_group_id": web, "ip_protocol": "icmp",
                                     "from_port": -1, "to_port": -1, "group_id": web}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["security_group_rule"]["group"]["name"], "web");
    assert_eq!(
        rule(
            json!({"parent_group_id": "00000000-0000-4000-8000-000000000000",
                    "ip_protocol": "tcp", "from_port": 1, "to_port": 2})
        )
        .0,
        404
    );
    for bad in [
        json!({"parent_group_id": web, "ip_protocol": "tcp", "from_port": 0, "to_port": 2}),
        json!({"parent_group_id": web, "ip_protocol": "tcp", "from_port": 5, "to_port": 2}),
        json!({"parent_group_id": web, "ip_protocol": "gre"}),
    ] {
        assert_eq!(rule(bad.clone()).0, 400, "{bad}");
    }
    let (_, shown) = nova("GET", &format!("/os-security-groups/{web}"), Value::Null);
    assert_eq!(
        shown["security_group"]["rules"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        nova(
            "DELETE",
            &format!("/os-security-group-rules/{rule_id}"),
            Value::Null
        )
        .0,
        202
    );
    let (status, body) = nova(
        "PUT",
        &format!("/os-security-groups/{web}"),
        json!({"security_group": {"name": "web2", "description": "renamed"}}),
    );
    assert_eq!(
        (status, &body["security_group"]["name"]),
        (200, &json!("web2"))
    );

    // The default group is not deleted (a 400 in Nova); others are.
    let default = list["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "default")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A member may not delete its project's default group (Neutron's 409,
    // a 400 in Nova); an admin may.
    common::second_project(&cloud.c);
    let bob = common::token(&cloud.c, "bob", "bob-password", "other");
    let as_bob = |method: &str, path: &str| {
        let r = call(
            &cloud.c,
            method,
            &format!("/compute/v2.1{path}"),
            &[("X-Auth-Token", bob.as_str())],
            "",
        );
        (
            r.status,
            if r.body.is_empty() {
                Value::Null
            } else {
                r.json()
            },
        )
    };
    let (_, bobs) = as_bob("GET", "/os-security-groups");
    let bobs_default = bobs["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bobs["security_groups"][0]["name"], "default");
    assert_eq!(
        as_bob("DELETE", &format!("/os-security-groups/{bobs_default}")).0,
        400
    );
    let (status, _) = nova(
        "DELETE",
        &format!("/os-security-groups/{default}"),
        Value::Null,
    );
    assert_eq!(status, 202, "an admin may");
    assert_eq!(
        nova("DELETE", &format!("/os-security-groups/{web}"), Value::Null).0,
        202
    );
    assert_eq!(
        nova("GET", &format!("/os-security-groups/{web}"), Value::Null).0,
        404
    );
    assert_eq!(
        nova(
            "POST",
            "/os-security-groups",
            json!({"security_group": {"name": "x"}})
        )
        .0,
        400,
        "a description is required"
    );
}

#[test]
fn floating_ips_and_tenant_networks_through_nova() {
    let cloud = cloud();
    let nova = |m: &str, p: &str, b: Value| send(&cloud, m, &format!("/compute/v2.1{p}"), b);
    let neutron = |m: &str, p: &str, b: Value| send(&cloud, m, &format!("/network/v2.0{p}"), b);
    let (_, public) = neutron(
        "POST",
        "/networks",
        json!({"network": {"name": "public", "router:external": true}}),
    );
    let public_id = public["network"]["id"].as_str().unwrap().to_owned();
    let (status, _) = neutron(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": public_id, "cidr": "172.24.4.0/24", "ip_version": 4}}),
    );
    assert_eq!(status, 201);
    let (_, private) = neutron("POST", "/networks", json!({"network": {"name": "private"}}));
    let private_id = private["network"]["id"].as_str().unwrap().to_owned();
    let (_, subnet) = neutron(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": private_id, "cidr": "10.0.0.0/24", "ip_version": 4}}),
    );
    // A router joins them: floating IPs need one.
    let (_, router) = neutron(
        "POST",
        "/routers",
        json!({"router": {"name": "r", "external_gateway_info": {"network_id": public_id}}}),
    );
    let router_id = router["router"]["id"].as_str().unwrap().to_owned();
    let (status, body) = neutron(
        "PUT",
        &format!("/routers/{router_id}/add_router_interface"),
        json!({"subnet_id": subnet["subnet"]["id"]}),
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = nova("POST", "/os-floating-ips", json!({"pool": "public"}));
    assert_eq!(status, 200, "{body}");
    let fip = body["floating_ip"].clone();
    assert_eq!(
        (&fip["pool"], &fip["instance_id"]),
        (&json!("public"), &Value::Null)
    );
    let fip_id = fip["id"].as_str().unwrap().to_owned();
    let address = fip["ip"].as_str().unwrap().to_owned();
    assert!(address.starts_with("172.24.4."), "{address}");
    assert_eq!(
        nova("POST", "/os-floating-ips", json!({"pool": "nowhere"})).0,
        404
    );
    let (_, list) = nova("GET", "/os-floating-ips", Value::Null);
    assert_eq!(list["floating_ips"].as_array().unwrap().len(), 1);

    // On a server with a port on private, and off it again.
    let (flavor, image) = common::hostd::bootable(&cloud.c, &cloud.admin, 1, 128);
    let (status, body) = nova(
        "POST",
        "/servers",
        json!({"server": {"name": "vm", "imageRef": image, "flavorRef": flavor,
                          "networks": [{"uuid": private_id}]}}),
    );
    assert_eq!(status, 202, "{body}");
    let server = body["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&server, "ACTIVE");
    let act = |b: Value| nova("POST", &format!("/servers/{server}/action"), b).0;
    assert_eq!(act(json!({"addFloatingIp": {"address": address}})), 202);
    let (_, shown) = nova("GET", &format!("/os-floating-ips/{fip_id}"), Value::Null);
    assert_eq!(shown["floating_ip"]["instance_id"], json!(server));
    assert!(shown["floating_ip"]["fixed_ip"]
        .as_str()
        .unwrap()
        .starts_with("10.0.0."));
    assert_eq!(
        act(json!({"addFloatingIp": {"address": "192.0.2.99"}})),
        404
    );
    // A second floating IP for the same fixed IP: Neutron's conflict is
    // Nova's 400.
    let (_, second) = nova("POST", "/os-floating-ips", json!({"pool": "public"}));
    let second_address = second["floating_ip"]["ip"].as_str().unwrap().to_owned();
    assert_eq!(
        act(json!({"addFloatingIp": {"address": second_address}})),
        400
    );
    let second_id = second["floating_ip"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        nova(
            "DELETE",
            &format!("/os-floating-ips/{second_id}"),
            Value::Null
        )
        .0,
        202
    );
    assert_eq!(act(json!({"removeFloatingIp": {"address": address}})), 202);
    assert_eq!(act(json!({"removeFloatingIp": {"address": address}})), 409);

    // Security groups on the server's ports.
    let (_, groups) = nova(
        "GET",
        &format!("/servers/{server}/os-security-groups"),
        Value::Null,
    );
    assert_eq!(groups["security_groups"][0]["name"], "default");
    nova(
        "POST",
        "/os-security-groups",
        json!({"security_group": {"name": "extra", "description": ""}}),
    );
    assert_eq!(act(json!({"addSecurityGroup": {"name": "extra"}})), 202);
    let (_, groups) = nova(
        "GET",
        &format!("/servers/{server}/os-security-groups"),
        Value::Null,
    );
    assert_eq!(groups["security_groups"].as_array().unwrap().len(), 2);
    assert_eq!(act(json!({"removeSecurityGroup": {"name": "extra"}})), 202);
    assert_eq!(act(json!({"removeSecurityGroup": {"name": "extra"}})), 400);
    assert_eq!(
        act(json!({"addSecurityGroup": {"name": "no-such-group"}})),
        404
    );

    let (_, shown) = nova("GET", &format!("/servers/{server}"), Value::Null);
    assert_eq!(
        shown["server"]["security_groups"],
        json!([{"name": "default"}])
    );

    // Groups asked for at create are on the ports made for the server; an
    // unknown one is refused; a server without ports shows none.
    let create = |extra: Value| {
        let mut server = json!({"name": "vm2", "imageRef": image, "flavorRef": flavor});
        server
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        nova("POST", "/servers", json!({ "server": server }))
    };
    let (status, body) = create(json!({"networks": [{"uuid": private_id}],
                                       "security_groups": [{"name": "extra"}]}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["server"]["security_groups"],
        json!([{"name": "extra"}])
    );
    let second = body["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&second, "ACTIVE");
    let (_, shown) = nova("GET", &format!("/servers/{second}"), Value::Null);
    assert_eq!(
        shown["server"]["security_groups"],
        json!([{"name": "extra"}])
    );
    let (_, ports) = neutron("GET", &format!("/ports?device_id={second}"), Value::Null);
    let (_, extra) = nova("GET", "/os-security-groups", Value::Null);
    let extra_id = extra["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "extra")
        .unwrap()["id"]
        .clone();
    assert_eq!(ports["ports"][0]["security_groups"], json!([extra_id]));
    assert_eq!(
        create(json!({"networks": [{"uuid": private_id}], "security_groups": [{"name": "nope"}]}))
            .0,
        400
    );
    let (status, body) = create(json!({"networks": "none"}));
    assert_eq!(status, 202, "{body}");
    let bare = body["server"]["id"].as_str().unwrap().to_owned();
    assert!(
        nova("GET", &format!("/servers/{bare}"), Value::Null).1["server"]
            .get("security_groups")
            .is_none()
    );

    let (_, nets) = nova("GET", "/os-tenant-networks", Value::Null);
    assert_eq!(
        nets["networks"].as_array().unwrap().len(),
        1,
        "not the external one: {nets}"
    );
    assert_eq!(nets["networks"][0]["cidr"], "10.0.0.0/24");
    assert_eq!(
        nova(
            "GET",
            &format!("/os-tenant-networks/{private_id}"),
            Value::Null
        )
        .0,
        200
    );
    // os-networks: every network seen, the external one too, by label.
    let (status, nets) = nova("GET", "/os-networks", Value::Null);
    assert_eq!(status, 200, "{nets}");
    let listed = nets["networks"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{nets}");
    let private = listed.iter().find(|n| n["id"] == private_id).unwrap();
    assert_eq!(
        (&private["cidr"], &private["netmask"]),
        (&json!("10.0.0.0/24"), &json!("255.255.255.0")),
        "{private}"
    );
    let (status, one) = nova("GET", &format!("/os-networks/{private_id}"), Value::Null);
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["network"]["label"], private["label"]);
    assert_eq!(
        nova(
            "GET",
            "/os-networks/00000000-0000-0000-0000-000000000000",
            Value::Null
        )
        .0,
        404
    );
    assert_eq!(
        nova("POST", "/os-networks", json!({"network": {"label": "x"}})).0,
        410,
        "nova-network's own management is gone"
    );
    assert_eq!(
        nova("DELETE", &format!("/os-floating-ips/{fip_id}"), Value::Null).0,
        202
    );
    assert_eq!(
        nova("GET", &format!("/os-floating-ips/{fip_id}"), Value::Null).0,
        404
    );
}

#[test]
fn images_and_their_metadata_through_nova() {
    let cloud = cloud();
    let nova = |m: &str, p: &str, b: Value| send(&cloud, m, &format!("/compute/v2.1{p}"), b);
    let (status, image) = send(
        &cloud,
        "POST",
        "/image/v2/images",
        json!({"name": "img", "disk_format": "raw", "container_format": "bare", "os_distro": "x"}),
    );
    assert_eq!(status, 201, "{image}");
    let id = image["id"].as_str().unwrap().to_owned();

    let (_, list) = nova("GET", "/images", Value::Null);
    assert!(list["images"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == json!(id)));
    let (_, shown) = nova("GET", &format!("/images/{id}"), Value::Null);
    assert_eq!(
        shown["image"]["status"], "SAVING",
        "queued, as Nova shows it"
    );
    assert_eq!(shown["image"]["metadata"], json!({"os_distro": "x"}));
    let (_, detail) = nova("GET", "/images/detail?status=SAVING&name=img", Value::Null);
    assert_eq!(detail["images"].as_array().unwrap().len(), 1);
    assert_eq!(
        nova("GET", "/images/detail?marker=nope", Value::Null).0,
        400
    );

    let at = |p: &str| format!("/images/{id}/metadata{p}");
    let (status, body) = nova("POST", &at(""), json!({"metadata": {"a": "1"}}));
    assert_eq!(
        (status, &body["metadata"]),
        (200, &json!({"a": "1", "os_distro": "x"}))
    );
    let (status, body) = nova("PUT", &at(""), json!({"metadata": {"b": "2"}}));
    assert_eq!((status, &body["metadata"]), (200, &json!({"b": "2"})));
    assert_eq!(nova("PUT", &at("/c"), json!({"meta": {"c": "3"}})).0, 200);
    assert_eq!(nova("PUT", &at("/c"), json!({"meta": {"d": "3"}})).0, 400);
    assert_eq!(
        nova("GET", &at("/c"), Value::Null).1,
        json!({"meta": {"c": "3"}})
    );
    assert_eq!(nova("DELETE", &at("/c"), Value::Null).0, 204);
    assert_eq!(nova("DELETE", &at("/c"), Value::Null).0, 404);
    let (_, glance) = send(
        &cloud,
        "GET",
        &format!("/image/v2/images/{id}"),
        Value::Null,
    );
    assert_eq!(
        (&glance["b"], &glance.get("os_distro")),
        (&json!("2"), &None)
    );
    let many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_eq!(nova("PUT", &at(""), json!({ "metadata": many })).0, 403);

    assert_eq!(nova("DELETE", &format!("/images/{id}"), Value::Null).0, 204);
    assert_eq!(nova("GET", &format!("/images/{id}"), Value::Null).0, 404);
}
