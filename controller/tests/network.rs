//! Neutron v2.0 over HTTP against a real controller (SQLite, and PostgreSQL
//! where installed): networks, subnets, ports, security groups, tags,
//! quotas, project isolation, Neutron's errors, concurrent allocation.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{json, Value};

use common::{admin_token, call, second_project, start, token, Controller, Postgres};

struct Api<'a> {
    c: &'a Controller,
    token: String,
}

impl Api<'_> {
    fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = call(
            self.c,
            method,
            &format!("/network/v2.0{path}"),
            &[("X-Auth-Token", &self.token)],
            &body,
        );
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v)
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// The Neutron error type of a failing call, with its status.
    fn fails(&self, method: &str, path: &str, body: Value) -> (u16, String) {
        let (status, v) = self.call(method, path, body);
        assert!(status >= 400, "{method} {path} succeeded: {v}");
        let kind = v["NeutronError"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            !v["NeutronError"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{v}"
        );
        (status, kind)
    }
}

fn id(v: &Value, key: &str) -> String {
    v[key]["id"].as_str().unwrap().to_owned()
}

#[test]
fn networks_subnets_ports_and_groups_on_sqlite() {
    let c = start(None);
    exercise(&c);
}

#[test]
fn networks_subnets_ports_and_groups_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let c = start(Some(pg.url()));
    exercise(&c);
}

fn exercise(c: &Controller) {
    let a = Api {
        c,
        token: admin_token(c),
    };
    // Discovery needs no token; everything else does.
    assert_eq!(call(c, "GET", "/network", &[], "").status, 200);
    let r = call(c, "GET", "/network/v2.0", &[], "");
    assert!(r.body.contains("security-group-rules"), "{}", r.body);
    assert_eq!(
        call(c, "GET", "/network/v2.0/networks", &[], "").status,
        401
    );
    let ext = a.ok("GET", "/extensions", Value::Null);
    let aliases: Vec<&str> = ext["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["alias"].as_str().unwrap())
        .collect();
    assert!(aliases.contains(&"security-group") && aliases.contains(&"quotas"));
    // Only what exists is named (OSC probes this one to choose its calls).
    assert!(
        !aliases.contains(&"external-gateway-multihoming"),
        "{aliases:?}"
    );
    assert_eq!(a.call("GET", "/extensions/router", Value::Null).0, 200);
    assert_eq!(a.call("GET", "/extensions/dvr", Value::Null).0, 404);

    // A network, as `openstack network create net1` sends it.
    let net = a.ok(
        "POST",
        "/networks",
        json!({"network": {"name": "net1", "admin_state_up": true}}),
    );
    let net_id = id(&net, "network");
    assert_eq!(net["network"]["mtu"], 1450);
    assert_eq!(net["network"]["status"], "ACTIVE");
    assert_eq!(net["network"]["router:external"], false);
    assert_eq!(net["network"]["provider:network_type"], "vxlan");
    let vni = net["network"]["provider:segmentation_id"].as_i64().unwrap();
    let net2 = a.ok(
        "POST",
        "/networks",
        json!({"network": {"name": "net2", "mtu": "1400"}}),
    );
    assert_eq!(net2["network"]["mtu"], 1400);
    assert_ne!(
        net2["network"]["provider:segmentation_id"]
            .as_i64()
            .unwrap(),
        vni
    );
    assert_eq!(
        a.fails("POST", "/networks", json!({"network": {"mtu": 9000}}))
            .0,
        400
    );
    assert_eq!(
        a.fails(
            "POST",
            "/networks",
            json!({"network": {"name": "x", "colour": "red"}})
        ),
        (400, "HTTPBadRequest".into())
    );
    assert_eq!(a.fails("POST", "/networks", json!({"nothing": {}})).0, 400);
    let r = call(
        c,
        "POST",
        "/network/v2.0/networks",
        &[("X-Auth-Token", &a.token)],
        "{not json",
    );
    assert_eq!(r.status, 400);

    // Subnets: Neutron's defaults and checks.
    let sub = a.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"name": "sub1", "network_id": net_id, "cidr": "10.0.0.0/29", "ip_version": 4,
                          "dns_nameservers": ["192.0.2.53"]}}),
    );
    let sub_id = id(&sub, "subnet");
    assert_eq!(sub["subnet"]["gateway_ip"], "10.0.0.1");
    assert_eq!(
        sub["subnet"]["allocation_pools"],
        json!([{"start": "10.0.0.2", "end": "10.0.0.6"}])
    );
    assert_eq!(sub["subnet"]["enable_dhcp"], true);
    let shown = a.ok("GET", &format!("/networks/{net_id}"), Value::Null);
    assert_eq!(shown["network"]["subnets"], json!([sub_id]));
    let bad = |body: Value| a.fails("POST", "/subnets", json!({"subnet": body}));
    let base = |extra: Value| {
        let mut b = json!({"network_id": net_id, "ip_version": 4});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    assert_eq!(bad(base(json!({"cidr": "10.0.0.5/24"}))).0, 400);
    assert_eq!(
        bad(base(json!({"cidr": "10.0.0.0/28"}))).0,
        400,
        "overlaps sub1"
    );
    assert_eq!(bad(base(json!({"cidr": "banana"}))).0, 400);
    assert_eq!(
        bad(base(
            json!({"cidr": "10.1.0.0/24", "gateway_ip": "10.2.0.1"})
        ))
        .0,
        400
    );
    assert_eq!(
        bad(base(
            json!({"cidr": "10.1.0.0/24", "allocation_pools": [{"start": "10.1.0.1", "end": "10.1.0.9"}]})
        )),
        (409, "GatewayConflictWithAllocationPools".into())
    );
    assert_eq!(
        bad(json!({"network_id": net_id, "ip_version": 6, "cidr": "fd00::/64"})).0,
        400
    );
    assert_eq!(
        bad(json!({"network_id": "nope", "ip_version": 4, "cidr": "10.9.0.0/24"})),
        (404, "NetworkNotFound".into())
    );

    // Ports: addresses in order, Neutron's MAC prefix, the default group.
    let port = |body: Value| a.call("POST", "/ports", json!({"port": body}));
    let (s, p1) = port(json!({"network_id": net_id, "name": "p1"}));
    assert_eq!(s, 201, "{p1}");
    let p1_id = id(&p1, "port");
    assert_eq!(
        p1["port"]["fixed_ips"],
        json!([{"subnet_id": sub_id, "ip_address": "10.0.0.2"}])
    );
    assert!(p1["port"]["mac_address"]
        .as_str()
        .unwrap()
        .starts_with("fa:16:3e:"));
    assert_eq!(p1["port"]["status"], "DOWN");
    let groups = a.ok("GET", "/security-groups?name=default", Value::Null);
    let default = groups["security_groups"][0].clone();
    assert_eq!(
        groups["security_groups"].as_array().unwrap().len(),
        1,
        "{groups}"
    );
    assert_eq!(p1["port"]["security_groups"], json!([default["id"]]));
    let rules = default["security_group_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "Neutron's four default rules: {default}");
    assert_eq!(
        rules
            .iter()
            .filter(|r| r["remote_group_id"] == default["id"])
            .count(),
        2
    );
    let (s, p2) = port(json!({"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.5"}]}));
    assert_eq!(s, 201, "{p2}");
    assert_eq!(
        port(json!({"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.5"}]})).0,
        409
    );
    assert_eq!(
        a.fails(
            "POST",
            "/ports",
            json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.5"}]}})
        )
        .1,
        "IpAddressAlreadyAllocated"
    );
    assert_eq!(
        a.fails(
            "POST",
            "/ports",
            json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.7"}]}})
        )
        .0,
        400,
        "the broadcast address"
    );
    let mac = p1["port"]["mac_address"].as_str().unwrap();
    assert_eq!(
        a.fails(
            "POST",
            "/ports",
            json!({"port": {"network_id": net_id, "mac_address": mac}})
        ),
        (409, "MacAddressInUse".into())
    );
    // The pool (.2-.6) holds .2 and .5; three more fit, then none.
    for want in ["10.0.0.3", "10.0.0.4", "10.0.0.6"] {
        let (s, p) = port(json!({"network_id": net_id}));
        assert_eq!(s, 201, "{p}");
        assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], want);
    }
    assert_eq!(
        a.fails("POST", "/ports", json!({"port": {"network_id": net_id}})),
        (409, "IpAddressGenerationFailure".into())
    );
    // Filters the clients use.
    let listed = a.ok("GET", "/ports?fixed_ips=ip_address%3D10.0.0.5", Value::Null);
    assert_eq!(listed["ports"].as_array().unwrap().len(), 1);
    let listed = a.ok(
        "GET",
        &format!("/ports?network_id={net_id}&limit=2"),
        Value::Null,
    );
    assert_eq!(listed["ports"].as_array().unwrap().len(), 2);
    assert!(listed["ports_links"][0]["href"]
        .as_str()
        .unwrap()
        .contains("marker="));
    // Updates: a new address, port security off only without groups.
    let up = a.ok(
        "PUT",
        &format!("/ports/{p1_id}"),
        json!({"port": {"name": "renamed", "device_id": "vm-1"}}),
    );
    assert_eq!(up["port"]["name"], "renamed");
    assert_eq!(up["port"]["revision_number"], 1);
    assert_eq!(
        a.fails(
            "PUT",
            &format!("/ports/{p1_id}"),
            json!({"port": {"port_security_enabled": false}})
        )
        .0,
        409
    );
    let up = a.ok(
        "PUT",
        &format!("/ports/{p1_id}"),
        json!({"port": {"security_groups": [], "port_security_enabled": false}}),
    );
    assert_eq!(up["port"]["port_security_enabled"], false);
    let by_device = a.ok("GET", "/ports?device_id=vm-1", Value::Null);
    assert_eq!(by_device["ports"].as_array().unwrap().len(), 1);

    // In use: a network with ports, a subnet with addresses, a group on a port.
    assert_eq!(
        a.fails("DELETE", &format!("/networks/{net_id}"), Value::Null),
        (409, "NetworkInUse".into())
    );
    assert_eq!(
        a.fails("DELETE", &format!("/subnets/{sub_id}"), Value::Null),
        (409, "SubnetInUse".into())
    );

    // Security groups and rules.
    let web = a.ok(
        "POST",
        "/security-groups",
        json!({"security_group": {"name": "web"}}),
    );
    let web_id = id(&web, "security_group");
    assert_eq!(
        web["security_group"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let ssh = json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress",
        "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
        "remote_ip_prefix": "0.0.0.0/0"}});
    let rule = a.ok("POST", "/security-group-rules", ssh.clone());
    let rule_id = id(&rule, "security_group_rule");
    let (status, v) = a.call("POST", "/security-group-rules", ssh);
    assert_eq!(status, 409);
    assert_eq!(v["NeutronError"]["type"], "SecurityGroupRuleExists");
    assert!(v["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains(&rule_id));
    assert_eq!(
        a.fails(
            "POST",
            "/security-group-rules",
            json!({"security_group_rule": {"security_group_id": web_id,
            "direction": "ingress", "protocol": "tcp", "port_range_min": 80, "port_range_max": 70}})
        )
        .0,
        400
    );
    let (s, p) = port(json!({"network_id": net2["network"]["id"], "security_groups": [web_id]}));
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["port"]["fixed_ips"], json!([]), "net2 has no subnet");
    let p_id = id(&p, "port");
    assert_eq!(
        a.fails("DELETE", &format!("/security-groups/{web_id}"), Value::Null),
        (409, "SecurityGroupInUse".into())
    );
    a.ok("DELETE", &format!("/ports/{p_id}"), Value::Null);
    a.ok(
        "DELETE",
        &format!("/security-group-rules/{rule_id}"),
        Value::Null,
    );
    assert_eq!(
        a.call(
            "GET",
            &format!("/security-group-rules/{rule_id}"),
            Value::Null
        )
        .0,
        404
    );
    a.ok("DELETE", &format!("/security-groups/{web_id}"), Value::Null);
    assert_eq!(
        a.fails(
            "PUT",
            &format!("/security-groups/{}", default["id"].as_str().unwrap()),
            json!({"security_group": {"name": "renamed"}})
        ),
        (409, "SecurityGroupCannotUpdateDefault".into())
    );

    // Tags, as `--tag` sets them.
    let tags = a.ok(
        "PUT",
        &format!("/networks/{net_id}/tags"),
        json!({"tags": ["blue", "red"]}),
    );
    assert_eq!(tags["tags"], json!(["blue", "red"]));
    assert_eq!(
        a.call(
            "PUT",
            &format!("/networks/{net_id}/tags/green"),
            Value::Null
        )
        .0,
        201
    );
    assert_eq!(
        a.call(
            "DELETE",
            &format!("/networks/{net_id}/tags/red"),
            Value::Null
        )
        .0,
        204
    );
    assert_eq!(
        a.call(
            "DELETE",
            &format!("/networks/{net_id}/tags/red"),
            Value::Null
        )
        .0,
        404
    );
    let tagged = a.ok("GET", "/networks?tags=green", Value::Null);
    assert_eq!(tagged["networks"].as_array().unwrap().len(), 1);
    assert_eq!(tagged["networks"][0]["tags"], json!(["blue", "green"]));

    // Quotas.
    let project = a.ok("GET", "/quotas/tenant", Value::Null)["tenant"]["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = a.ok("GET", &format!("/quotas/{project}"), Value::Null);
    assert_eq!(q["quota"]["network"], 100);
    let d = a.ok(
        "GET",
        &format!("/quotas/{project}/details.json"),
        Value::Null,
    );
    assert_eq!(d["quota"]["network"]["used"], 2);
    a.ok(
        "PUT",
        &format!("/quotas/{project}"),
        json!({"quota": {"network": 2}}),
    );
    assert_eq!(
        a.fails("POST", "/networks", json!({"network": {"name": "net3"}})),
        (409, "OverQuota".into())
    );
    a.ok("DELETE", &format!("/quotas/{project}"), Value::Null);
    a.ok("POST", "/networks", json!({"network": {"name": "net3"}}));

    // Cleaning up frees everything, in Neutron's order.
    for p in a.ok("GET", &format!("/ports?network_id={net_id}"), Value::Null)["ports"]
        .as_array()
        .unwrap()
    {
        a.ok(
            "DELETE",
            &format!("/ports/{}", p["id"].as_str().unwrap()),
            Value::Null,
        );
    }
    a.ok("DELETE", &format!("/subnets/{sub_id}"), Value::Null);
    a.ok("DELETE", &format!("/networks/{net_id}"), Value::Null);
    assert_eq!(
        a.fails("GET", &format!("/networks/{net_id}"), Value::Null),
        (404, "NetworkNotFound".into())
    );
}

#[test]
fn projects_see_their_own_and_shared_networks_only() {
    let c = start(None);
    second_project(&c);
    let a = Api {
        c: &c,
        token: admin_token(&c),
    };
    let b = Api {
        c: &c,
        token: token(&c, "bob", "bob-password", "other"),
    };
    let private = a.ok("POST", "/networks", json!({"network": {"name": "private"}}));
    let private_id = id(&private, "network");
    a.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": private_id, "cidr": "10.0.0.0/24", "ip_version": 4}}),
    );
    let shared = a.ok(
        "POST",
        "/networks",
        json!({"network": {"name": "shared", "shared": true}}),
    );
    let public = a.ok(
        "POST",
        "/networks",
        json!({"network": {"name": "public", "router:external": true}}),
    );

    // Bob sees the shared and the external network, not the private one.
    let seen = b.ok("GET", "/networks", Value::Null);
    let names: Vec<&str> = seen["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"shared") && names.contains(&"public"));
    assert!(seen["networks"][0]
        .get("provider:segmentation_id")
        .is_none());
    assert_eq!(
        b.fails("GET", &format!("/networks/{private_id}"), Value::Null),
        (404, "NetworkNotFound".into())
    );
    assert_eq!(b.ok("GET", "/subnets", Value::Null)["subnets"], json!([]));
    assert_eq!(
        b.fails(
            "POST",
            "/ports",
            json!({"port": {"network_id": private_id}})
        )
        .0,
        404
    );
    assert_eq!(
        b.fails(
            "DELETE",
            &format!("/networks/{}", id(&shared, "network")),
            Value::Null
        )
        .0,
        403
    );
    assert_eq!(
        b.fails(
            "POST",
            "/ports",
            json!({"port": {"network_id": id(&public, "network")}})
        )
        .0,
        403,
        "ports on an external network are the cloud's"
    );
    // A member may not make shared or external networks.
    assert_eq!(
        b.fails(
            "POST",
            "/networks",
            json!({"network": {"name": "x", "shared": true}})
        )
        .0,
        403
    );
    // A port on the shared network is bob's, with bob's default group.
    let p = b.ok(
        "POST",
        "/ports",
        json!({"port": {"network_id": id(&shared, "network")}}),
    );
    let bobs_groups = b.ok("GET", "/security-groups", Value::Null);
    assert_eq!(bobs_groups["security_groups"].as_array().unwrap().len(), 1);
    assert_eq!(
        p["port"]["security_groups"][0],
        bobs_groups["security_groups"][0]["id"]
    );
    assert!(p["port"].get("binding:host_id").is_none());
    // Admin's groups are not bob's to use.
    let admin_project = a.ok("GET", "/quotas/tenant", Value::Null)["tenant"]["tenant_id"].clone();
    let admins_default = a.ok(
        "GET",
        &format!(
            "/security-groups?name=default&project_id={}",
            admin_project.as_str().unwrap()
        ),
        Value::Null,
    )["security_groups"][0]["id"]
        .clone();
    assert_eq!(
        b.fails("POST", "/ports", json!({"port": {"network_id": id(&shared, "network"), "security_groups": [admins_default]}})),
        (404, "SecurityGroupNotFound".into())
    );
    assert_eq!(b.fails("GET", "/quotas/someone-else", Value::Null).0, 403);
    assert_eq!(
        b.fails("PUT", "/quotas/other", json!({"quota": {"network": 1}}))
            .0,
        403
    );
}

#[test]
fn concurrent_ports_get_distinct_addresses_until_the_pool_runs_out() {
    let c = start(None);
    let a = Api {
        c: &c,
        token: admin_token(&c),
    };
    let net = a.ok("POST", "/networks", json!({"network": {"name": "busy"}}));
    let net_id = id(&net, "network");
    // .2 to .14: thirteen addresses for sixteen creates.
    a.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.0.0.0/28", "ip_version": 4}}),
    );
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let a = &a;
                let net_id = &net_id;
                s.spawn(move || a.call("POST", "/ports", json!({"port": {"network_id": net_id}})))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, p)| {
            p["port"]["fixed_ips"][0]["ip_address"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s != 201)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(addresses.len(), 13, "refused: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|v| v["NeutronError"]["type"] == "IpAddressGenerationFailure"),
        "{refused:?}"
    );
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 13, "every address once");
}

#[test]
fn routers_and_floating_ips_on_sqlite() {
    let c = start(None);
    routers_and_floating_ips(&c);
}

#[test]
fn routers_and_floating_ips_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let c = start(Some(pg.url()));
    routers_and_floating_ips(&c);
}

/// Routers (gateway, interfaces), floating IPs and Neutron's errors, as an
/// admin sets up the external network and a project member uses it.
fn routers_and_floating_ips(c: &Controller) {
    second_project(c);
    let a = Api {
        c,
        token: admin_token(c),
    };
    let b = Api {
        c,
        token: token(c, "bob", "bob-password", "other"),
    };
    let ext = a.ok("GET", "/extensions", Value::Null).to_string();
    for alias in ["\"router\"", "\"ext-gw-mode\"", "\"fip-port-details\""] {
        assert!(ext.contains(alias), "{alias} missing: {ext}");
    }
    let public = a.ok(
        "POST",
        "/networks",
        json!({"network": {"name": "public", "router:external": true}}),
    );
    let public_id = id(&public, "network");
    let ext_subnet = a.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": public_id, "cidr": "172.24.4.0/24", "ip_version": 4,
                          "allocation_pools": [{"start": "172.24.4.10", "end": "172.24.4.12"}]}}),
    );
    let ext_subnet_id = id(&ext_subnet, "subnet");
    // Bob's network and subnet.
    let net = b.ok("POST", "/networks", json!({"network": {"name": "net1"}}));
    let net_id = id(&net, "network");
    let sub = b.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.0.0.0/24", "ip_version": 4}}),
    );
    let sub_id = id(&sub, "subnet");
    let vm_port = b.ok(
        "POST",
        "/ports",
        json!({"port": {"network_id": net_id, "device_id": "server-1", "device_owner": "compute:nova"}}),
    );
    let vm_port_id = id(&vm_port, "port");

    // A router as `router create` makes it.
    let r = b.ok(
        "POST",
        "/routers",
        json!({"router": {"name": "r1", "admin_state_up": true}}),
    );
    let router_id = id(&r, "router");
    assert_eq!(r["router"]["external_gateway_info"], Value::Null);
    assert_eq!(r["router"]["status"], "ACTIVE");
    assert_eq!(r["router"]["routes"], json!([]));
    assert_eq!(r["router"]["project_id"], b_project(&b));

    // Only admins choose SNAT; a network that is not external is refused.
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}"),
            json!({"router": {"external_gateway_info": {"network_id": public_id, "enable_snat": false}}})
        ),
        (403, "PolicyNotAuthorized".into())
    );
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}"),
            json!({"router": {"external_gateway_info": {"network_id": net_id}}})
        ),
        (400, "BadRequest".into())
    );
    // `router set --external-gateway public r1`.
    let r = b.ok(
        "PUT",
        &format!("/routers/{router_id}"),
        json!({"router": {"external_gateway_info": {"network_id": public_id}}}),
    );
    let gw = &r["router"]["external_gateway_info"];
    assert_eq!(gw["network_id"], public_id.as_str());
    assert_eq!(gw["enable_snat"], true);
    assert_eq!(
        gw["external_fixed_ips"],
        json!([{"subnet_id": ext_subnet_id, "ip_address": "172.24.4.10"}])
    );
    // Its gateway port is the router's, not the user's to delete.
    let ports = a.ok("GET", &format!("/ports?device_id={router_id}"), Value::Null);
    let gw_port = &ports["ports"][0];
    assert_eq!(gw_port["device_owner"], "network:router_gateway");
    let gw_port_id = gw_port["id"].as_str().unwrap();
    assert_eq!(
        a.fails("DELETE", &format!("/ports/{gw_port_id}"), Value::Null),
        (409, "ServicePortInUse".into())
    );

    // `router add subnet r1 sub1`: a port holding the subnet's gateway.
    let added = b.ok(
        "PUT",
        &format!("/routers/{router_id}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(added["id"], router_id.as_str());
    assert_eq!(added["subnet_id"], sub_id.as_str());
    assert_eq!(added["subnet_ids"], json!([sub_id]));
    assert_eq!(added["network_id"], net_id.as_str());
    let if_port_id = added["port_id"].as_str().unwrap().to_owned();
    let if_port = b.ok("GET", &format!("/ports/{if_port_id}"), Value::Null);
    assert_eq!(if_port["port"]["device_owner"], "network:router_interface");
    assert_eq!(if_port["port"]["device_id"], router_id.as_str());
    assert_eq!(
        if_port["port"]["fixed_ips"],
        json!([{"subnet_id": sub_id, "ip_address": "10.0.0.1"}])
    );
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}/add_router_interface"),
            json!({"subnet_id": sub_id})
        ),
        (400, "BadRequest".into())
    );
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}/add_router_interface"),
            json!({})
        ),
        (400, "BadRequest".into())
    );
    // An overlapping subnet of another network is refused.
    let net2 = b.ok("POST", "/networks", json!({"network": {"name": "net2"}}));
    let sub2 = b.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": id(&net2, "network"), "cidr": "10.0.0.0/16", "ip_version": 4}}),
    );
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}/add_router_interface"),
            json!({"subnet_id": id(&sub2, "subnet")})
        ),
        (400, "BadRequest".into())
    );
    // The network and the router are in use now.
    assert_eq!(
        b.fails("DELETE", &format!("/networks/{net_id}"), Value::Null)
            .0,
        409
    );
    assert_eq!(
        b.fails("DELETE", &format!("/routers/{router_id}"), Value::Null),
        (409, "RouterInUse".into())
    );
    assert_eq!(
        b.fails("DELETE", &format!("/ports/{if_port_id}"), Value::Null),
        (409, "ServicePortInUse".into())
    );

    // `floating ip create public`, then `server add floating ip`.
    let f = b.ok(
        "POST",
        "/floatingips",
        json!({"floatingip": {"floating_network_id": public_id}}),
    );
    let fip_id = id(&f, "floatingip");
    assert_eq!(f["floatingip"]["floating_ip_address"], "172.24.4.11");
    assert_eq!(f["floatingip"]["status"], "DOWN");
    assert_eq!(f["floatingip"]["port_id"], Value::Null);
    assert_eq!(f["floatingip"]["router_id"], Value::Null);
    assert_eq!(
        b.fails(
            "POST",
            "/floatingips",
            json!({"floatingip": {"floating_network_id": net_id}})
        ),
        (400, "BadRequest".into())
    );
    assert_eq!(
        b.fails(
            "POST",
            "/floatingips",
            json!({"floatingip": {"floating_network_id": public_id, "floating_ip_address": "172.24.4.12"}})
        ),
        (403, "PolicyNotAuthorized".into())
    );
    let f = b.ok(
        "PUT",
        &format!("/floatingips/{fip_id}"),
        json!({"floatingip": {"port_id": vm_port_id}}),
    );
    assert_eq!(f["floatingip"]["port_id"], vm_port_id.as_str());
    assert_eq!(f["floatingip"]["fixed_ip_address"], "10.0.0.2");
    assert_eq!(f["floatingip"]["router_id"], router_id.as_str());
    assert_eq!(f["floatingip"]["port_details"]["device_id"], "server-1");
    // One floating IP per fixed address; the last address of the pool is
    // the last floating IP.
    let f2 = b.ok(
        "POST",
        "/floatingips",
        json!({"floatingip": {"floating_network_id": public_id}}),
    );
    let fip2 = id(&f2, "floatingip");
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/floatingips/{fip2}"),
            json!({"floatingip": {"port_id": vm_port_id}})
        ),
        (409, "FloatingIPPortAlreadyAssociated".into())
    );
    assert_eq!(
        b.fails(
            "POST",
            "/floatingips",
            json!({"floatingip": {"floating_network_id": public_id}})
        ),
        (409, "IpAddressGenerationFailure".into())
    );
    // A port whose subnet no router joins to the external network.
    let lone_net = b.ok("POST", "/networks", json!({"network": {"name": "lone"}}));
    b.ok(
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": id(&lone_net, "network"), "cidr": "10.9.0.0/24", "ip_version": 4}}),
    );
    let lone_port = b.ok(
        "POST",
        "/ports",
        json!({"port": {"network_id": id(&lone_net, "network")}}),
    );
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/floatingips/{fip2}"),
            json!({"floatingip": {"port_id": id(&lone_port, "port")}})
        ),
        (404, "ExternalGatewayForFloatingIPNotFound".into())
    );
    // The floating IP holds the interface and the gateway.
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}/remove_router_interface"),
            json!({"subnet_id": sub_id})
        ),
        (409, "RouterInterfaceInUseByFloatingIP".into())
    );
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}"),
            json!({"router": {"external_gateway_info": {}}})
        ),
        (409, "RouterExternalGatewayInUseByFloatingIp".into())
    );
    // An admin sees them; a project without them does not.
    assert_eq!(
        a.ok("GET", "/floatingips", Value::Null)["floatingips"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Deleting the port lets its floating IP go free.
    b.ok("DELETE", &format!("/ports/{vm_port_id}"), Value::Null);
    let f = b.ok("GET", &format!("/floatingips/{fip_id}"), Value::Null);
    assert_eq!(f["floatingip"]["port_id"], Value::Null);
    assert_eq!(f["floatingip"]["router_id"], Value::Null);
    assert_eq!(f["floatingip"]["status"], "DOWN");

    // Tags, and filters by them.
    b.ok(
        "PUT",
        &format!("/routers/{router_id}/tags/blue"),
        Value::Null,
    );
    let tagged = b.ok("GET", "/routers?tags=blue", Value::Null);
    assert_eq!(tagged["routers"][0]["id"], router_id.as_str());

    // Taken apart in the order the errors ask for.
    for f in [&fip_id, &fip2] {
        b.ok("DELETE", &format!("/floatingips/{f}"), Value::Null);
    }
    assert_eq!(
        b.fails(
            "PUT",
            &format!("/routers/{router_id}/remove_router_interface"),
            json!({"port_id": vm_port_id})
        ),
        (404, "RouterInterfaceNotFound".into())
    );
    let removed = b.ok(
        "PUT",
        &format!("/routers/{router_id}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(removed["port_id"], if_port_id.as_str());
    assert_eq!(
        b.fails("GET", &format!("/ports/{if_port_id}"), Value::Null)
            .0,
        404
    );
    b.ok("DELETE", &format!("/routers/{router_id}"), Value::Null);
    // The gateway port went with the router: the external network is free.
    assert_eq!(
        a.ok("GET", &format!("/ports?device_id={router_id}"), Value::Null)["ports"],
        json!([])
    );
    b.ok("DELETE", &format!("/networks/{net_id}"), Value::Null);
    a.ok("DELETE", &format!("/networks/{public_id}"), Value::Null);
}

/// The project a token's user works in, as resources show it.
fn b_project(b: &Api) -> Value {
    let n = b.ok("GET", "/networks?name=net1", Value::Null);
    n["networks"][0]["project_id"].clone()
}
