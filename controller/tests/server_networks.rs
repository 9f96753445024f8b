//! Servers on networks against the stand-in hostd: the ports a build makes
//! or binds on the server's host, the server's `addresses`, the config
//! drive's `network_data.json`, Nova's default network, bad requests, a
//! build that finds no address, and ports released with the server.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{json, Value};

use common::cloud::Cloud;
use common::hostd::{bootable, Delays, HOST_ID};
use common::{call, wait_for_status};

fn net(cloud: &Cloud, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let r = call(
        &cloud.c,
        method,
        &format!("/network/v2.0{path}"),
        &[cloud.auth()],
        &body,
    );
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

/// A network with a subnet of `cidr`; returns (network id, subnet id).
fn network(cloud: &Cloud, name: &str, cidr: &str) -> (String, String) {
    network_with(cloud, name, cidr, true)
}

fn network_with(cloud: &Cloud, name: &str, cidr: &str, dhcp: bool) -> (String, String) {
    let (s, n) = net(
        cloud,
        "POST",
        "/networks",
        json!({"network": {"name": name}}),
    );
    assert_eq!(s, 201, "{n}");
    let id = n["network"]["id"].as_str().unwrap().to_owned();
    let (s, sub) = net(
        cloud,
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": id, "cidr": cidr, "ip_version": 4,
                          "enable_dhcp": dhcp, "dns_nameservers": ["192.0.2.53"]}}),
    );
    assert_eq!(s, 201, "{sub}");
    (id, sub["subnet"]["id"].as_str().unwrap().to_owned())
}

fn create(cloud: &Cloud, flavor: &str, image: &str, networks: Option<Value>) -> common::Reply {
    // With a config drive: the tests read what it tells the guest.
    let mut server =
        json!({"name": "vm", "imageRef": image, "flavorRef": flavor, "config_drive": true});
    if let Some(n) = networks {
        server["networks"] = n;
    }
    call(
        &cloud.c,
        "POST",
        "/compute/v2.1/servers",
        &[cloud.auth()],
        &json!({ "server": server }).to_string(),
    )
}

fn ports_of(cloud: &Cloud, server: &str) -> Vec<Value> {
    net(
        cloud,
        "GET",
        &format!("/ports?device_id={server}"),
        Value::Null,
    )
    .1["ports"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_server_gets_a_port_per_network_bound_to_its_host_and_released_with_it() {
    let cloud = Cloud::start(Delays::NONE);
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    // net1 without DHCP (its guests are told their addresses), net2 with.
    let (net1, sub1) = network_with(&cloud, "net1", "10.0.0.0/24", false);
    let (net2, _) = network(&cloud, "net2", "10.1.0.0/24");
    // A port the user made, to give to the server.
    let (s, mine) = net(
        &cloud,
        "POST",
        "/ports",
        json!({"port": {"network_id": net2, "name": "mine"}}),
    );
    assert_eq!(s, 201, "{mine}");
    let mine_id = mine["port"]["id"].as_str().unwrap().to_owned();

    let r = create(
        &cloud,
        &flavor,
        &image,
        Some(json!([{"uuid": net1, "fixed_ip": "10.0.0.42"}, {"port": mine_id}])),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let shown = cloud.wait(&id, "ACTIVE");
    assert_eq!(
        shown["addresses"]["net1"][0]["addr"], "10.0.0.42",
        "{shown}"
    );
    assert_eq!(shown["addresses"]["net1"][0]["version"], 4);
    assert_eq!(shown["addresses"]["net2"][0]["addr"], "10.1.0.2", "{shown}");
    let listed = call(
        &cloud.c,
        "GET",
        "/compute/v2.1/servers/detail",
        &[cloud.auth()],
        "",
    )
    .json();
    assert_eq!(listed["servers"][0]["addresses"], shown["addresses"]);

    let ports = ports_of(&cloud, &id);
    assert_eq!(ports.len(), 2, "{ports:?}");
    for p in &ports {
        assert_eq!(p["device_owner"], "compute:nova");
        assert_eq!(
            p["binding:host_id"], HOST_ID,
            "bound to the server's host: {p}"
        );
    }
    let made = ports.iter().find(|p| p["id"] != mine_id.as_str()).unwrap();
    assert_eq!(made["fixed_ips"][0]["subnet_id"], sub1.as_str());

    // The guest is told its NICs statically: link by MAC, address, gateway, DNS.
    let sent = cloud.hostd.create_bodies();
    let nd = &sent[0]["config_drive"]["network_data"];
    assert_eq!(nd["links"].as_array().unwrap().len(), 2, "{nd}");
    assert_eq!(nd["links"][0]["ethernet_mac_address"], made["mac_address"]);
    assert_eq!(nd["links"][0]["mtu"], 1450);
    assert_eq!(nd["networks"][0]["ip_address"], "10.0.0.42");
    assert_eq!(nd["networks"][0]["netmask"], "255.255.255.0");
    assert_eq!(nd["networks"][0]["routes"][0]["gateway"], "10.0.0.1");
    // Where DHCP answers, the guest asks it, as Nova has it.
    assert_eq!(
        nd["networks"][1],
        json!({"id": "network1", "type": "ipv4_dhcp", "link": nd["links"][1]["id"],
               "network_id": net2})
    );
    assert_eq!(nd["services"][0]["address"], "192.0.2.53");
    // And hostd a NIC per port: its tap, named as Neutron's agents do, MAC,
    // and the network's MTU (virtio-net tells the guest).
    let tap = format!("tap{}", &made["id"].as_str().unwrap()[..11]);
    assert_eq!(
        sent[0]["nics"][0],
        json!({"tap": tap, "mac": made["mac_address"], "mtu": 1450})
    );
    assert_eq!(nd["links"][0]["id"], tap.as_str());
    assert_eq!(sent[0]["nics"][1]["mac"], mine["port"]["mac_address"]);

    // Deleted: the port made for it goes, the user's stays, free again.
    let r = call(
        &cloud.c,
        "DELETE",
        &format!("/compute/v2.1/servers/{id}"),
        &[cloud.auth()],
        "",
    );
    assert_eq!(r.status, 204);
    wait_for_status(
        &cloud.c,
        &format!("/compute/v2.1/servers/{id}"),
        &cloud.admin,
        404,
    );
    assert_eq!(ports_of(&cloud, &id), Vec::<Value>::new());
    let (s, kept) = net(&cloud, "GET", &format!("/ports/{mine_id}"), Value::Null);
    assert_eq!(s, 200);
    assert_eq!(kept["port"]["device_id"], "");
    assert_eq!(kept["port"]["binding:host_id"], "");
    // Its address is free for the next one.
    let (s, again) = net(
        &cloud,
        "POST",
        "/ports",
        json!({"port": {"network_id": net1, "fixed_ips": [{"ip_address": "10.0.0.42"}]}}),
    );
    assert_eq!(s, 201, "{again}");
}

#[test]
fn networks_are_checked_at_create_and_nova_picks_the_only_one() {
    let cloud = Cloud::start(Delays::NONE);
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    // No network at all: a server without NICs, as before networks existed.
    let r = create(&cloud, &flavor, &image, None);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    assert_eq!(cloud.wait(&id, "ACTIVE")["addresses"], json!({}));

    let (net1, _) = network(&cloud, "net1", "10.0.0.0/24");
    let r = create(&cloud, &flavor, &image, None);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        cloud.wait(&id, "ACTIVE")["addresses"]["net1"][0]["addr"],
        "10.0.0.2"
    );
    let r = create(&cloud, &flavor, &image, Some(json!("none")));
    assert_eq!(r.status, 202, "{}", r.body);

    network(&cloud, "net2", "10.1.0.0/24");
    let r = create(&cloud, &flavor, &image, None);
    assert_eq!(r.status, 409, "two networks: ambiguous: {}", r.body);
    assert!(r.body.contains("Multiple possible networks"), "{}", r.body);
    let r = create(
        &cloud,
        &flavor,
        &image,
        Some(json!([{"uuid": "no-such-network"}])),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("no-such-network could not be found"),
        "{}",
        r.body
    );
    let r = create(
        &cloud,
        &flavor,
        &image,
        Some(json!([{"uuid": net1, "fixed_ip": "10.9.9.9"}])),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = create(
        &cloud,
        &flavor,
        &image,
        Some(json!([{"uuid": net1, "fixed_ip": "banana"}])),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = create(
        &cloud,
        &flavor,
        &image,
        Some(json!([{"port": "no-such-port"}])),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = create(&cloud, &flavor, &image, Some(json!([{}])));
    assert_eq!(r.status, 400, "{}", r.body);
    // A port another server has.
    let bound = ports_of(&cloud, &id)[0]["id"].as_str().unwrap().to_owned();
    let r = create(&cloud, &flavor, &image, Some(json!([{"port": bound}])));
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn a_build_that_finds_no_address_ends_in_error_and_leaves_no_port() {
    let cloud = Cloud::start(Delays::NONE);
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    // A /30: one address (.2) for ports.
    let (net1, _) = network(&cloud, "tiny", "10.0.0.0/30");
    let r = create(&cloud, &flavor, &image, Some(json!([{"uuid": net1}])));
    let first = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&first, "ACTIVE");
    let r = create(
        &cloud,
        &flavor,
        &image,
        Some(json!([{"uuid": net1}, {"uuid": net1}])),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let shown = cloud.wait(&id, "ERROR");
    assert!(
        shown["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("No more IP addresses"),
        "{shown}"
    );
    assert_eq!(ports_of(&cloud, &id), Vec::<Value>::new(), "unwound");
    assert_eq!(
        cloud.hostd.create_bodies().len(),
        1,
        "never reached the host"
    );
}

/// A netd's report, sent as host `host` (with `token`); status and answer.
fn report(cloud: &Cloud, host: &str, token: &str, body: &str) -> (u16, Value) {
    let r = call(
        &cloud.c,
        "PUT",
        &format!("/internal/v1/hosts/{host}/network"),
        &[("Authorization", &format!("Bearer {token}"))],
        body,
    );
    (r.status, r.json())
}

#[test]
fn a_netd_report_sets_its_ports_status_and_answers_with_its_hosts_networks() {
    let cloud = Cloud::start(Delays::NONE);
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    let (net1, _) = network(&cloud, "net1", "10.0.0.0/24");
    let r = create(&cloud, &flavor, &image, Some(json!([{"uuid": net1}])));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");
    let port = ports_of(&cloud, &id).remove(0);
    let port_id = port["id"].as_str().unwrap();
    assert_eq!(port["status"], "DOWN", "nothing plugged it yet");

    let token = common::hostd::host_token(HOST_ID);
    let body = json!({"vtep": "172.16.0.1", "plugged": [port_id]}).to_string();
    let (s, answer) = report(&cloud, HOST_ID, &token, &body);
    assert_eq!(s, 200, "{answer}");
    let (_, shown) = net(&cloud, "GET", &format!("/networks/{net1}"), Value::Null);
    assert_eq!(
        answer,
        json!({"networks": [{
            "id": net1,
            "vni": shown["network"]["provider:segmentation_id"],
            "mtu": 1450,
            "external": false,
            "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "dhcp": true,
                         "dns": ["192.0.2.53"], "routes": []}],
            "ports": [{
                "id": port_id,
                "tap": format!("tap{}", &port_id[..11]),
                "mac": port["mac_address"],
                "ips": ["10.0.0.2"],
                "admin_state_up": true,
                "port_security": true,
                "allowed_pairs": [],
                // The default group's IPv4 rules: in from its members (so
                // far, this port alone), out to anywhere.
                "rules": [
                    {"direction": "ingress", "protocol": null, "port_min": null,
                     "port_max": null, "remote": {"group": port["security_groups"][0]}},
                    {"direction": "egress", "protocol": null, "port_min": null,
                     "port_max": null, "remote": "any"},
                ],
            }],
            "remote": [],
        }], "routers": [],
        // Each remote group's members, once per answer.
        "groups": {port["security_groups"][0].as_str().unwrap(): ["10.0.0.2"]}})
    );
    let (_, now) = net(&cloud, "GET", &format!("/ports/{port_id}"), Value::Null);
    assert_eq!(now["port"]["status"], "ACTIVE");

    // Another host carries nothing of it, and sees the port once it has one
    // on the network itself (bound by an admin here).
    let other = common::hostd::host_token("other");
    let body2 = json!({"vtep": "172.16.0.2", "plugged": []}).to_string();
    let (s, answer) = report(&cloud, "other", &other, &body2);
    assert_eq!(
        (s, answer),
        (200, json!({"networks": [], "routers": [], "groups": {}}))
    );
    let (s, p2) = net(
        &cloud,
        "POST",
        "/ports",
        json!({"port": {"network_id": net1, "binding:host_id": "other"}}),
    );
    assert_eq!(s, 201, "{p2}");
    let (_, answer) = report(&cloud, "other", &other, &body2);
    assert_eq!(
        answer["networks"][0]["remote"],
        json!([{"id": port_id, "mac": port["mac_address"], "ips": ["10.0.0.2"], "vtep": "172.16.0.1"}])
    );
    let (_, answer) = report(&cloud, HOST_ID, &token, &body);
    assert_eq!(answer["networks"][0]["remote"][0]["vtep"], "172.16.0.2");
    // The new port is in the default group too: a member to let in.
    assert_eq!(
        answer["groups"][port["security_groups"][0].as_str().unwrap()],
        json!(["10.0.0.2", "10.0.0.3"])
    );

    // A report that no longer names the port takes it DOWN.
    let (s, _) = report(
        &cloud,
        HOST_ID,
        &token,
        r#"{"vtep": "172.16.0.1", "plugged": []}"#,
    );
    assert_eq!(s, 200);
    let (_, now) = net(&cloud, "GET", &format!("/ports/{port_id}"), Value::Null);
    assert_eq!(now["port"]["status"], "DOWN");

    // The metadata service on the port's host gets what the guest is told
    // (its config drive's contents); no other host does.
    let meta = |host: &str, token: &str, port: &str| {
        let r = call(
            &cloud.c,
            "GET",
            &format!("/internal/v1/hosts/{host}/ports/{port}/metadata"),
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        );
        (r.status, r.json())
    };
    let (s, m) = meta(HOST_ID, &token, port_id);
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["meta_data"]["uuid"], id.as_str());
    assert_eq!(m["meta_data"]["hostname"], "vm");
    assert_eq!(
        m["network_data"]["links"][0]["ethernet_mac_address"],
        port["mac_address"]
    );
    assert_eq!(meta(HOST_ID, &other, port_id).0, 403);
    assert_eq!(meta("other", &other, port_id).0, 404);
    // A port with no server behind it, and no port at all.
    assert_eq!(
        meta("other", &other, p2["port"]["id"].as_str().unwrap()).0,
        404
    );
    assert_eq!(meta(HOST_ID, &token, "no-such-port").0, 404);

    // A host reports only for itself, with a valid token and body.
    assert_eq!(report(&cloud, HOST_ID, &other, &body).0, 403);
    assert_eq!(report(&cloud, HOST_ID, "vh1.stand-in.00", &body).0, 401);
    assert_eq!(report(&cloud, HOST_ID, &cloud.admin, &body).0, 401);
    for bad in [
        "",
        "{",
        r#"{"vtep": "not an address", "plugged": []}"#,
        r#"{"vtep": "172.16.0.1"}"#,
        r#"{"vtep": "172.16.0.1", "plugged": [1]}"#,
    ] {
        let (s, v) = report(&cloud, HOST_ID, &token, bad);
        assert_eq!(s, 400, "{bad}: {v}");
    }
}

#[test]
fn a_gateway_host_takes_routers_and_applies_their_floating_ips() {
    let cloud = Cloud::start(Delays::NONE);
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    let (net1, sub1) = network(&cloud, "net1", "10.0.0.0/24");
    let (s, public) = net(
        &cloud,
        "POST",
        "/networks",
        json!({"network": {"name": "public", "router:external": true}}),
    );
    assert_eq!(s, 201, "{public}");
    let public = public["network"]["id"].as_str().unwrap().to_owned();
    let (s, _) = net(
        &cloud,
        "POST",
        "/subnets",
        json!({"subnet": {"network_id": public, "cidr": "172.24.4.0/24", "ip_version": 4}}),
    );
    assert_eq!(s, 201);
    let r = create(&cloud, &flavor, &image, Some(json!([{"uuid": net1}])));
    assert_eq!(r.status, 202, "{}", r.body);
    let server = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&server, "ACTIVE");
    let port = ports_of(&cloud, &server).remove(0);
    let port_id = port["id"].as_str().unwrap().to_owned();

    let (s, router) = net(
        &cloud,
        "POST",
        "/routers",
        json!({"router": {"name": "r1", "external_gateway_info": {"network_id": public}}}),
    );
    assert_eq!(s, 201, "{router}");
    let router = router["router"]["id"].as_str().unwrap().to_owned();
    let (s, iface) = net(
        &cloud,
        "PUT",
        &format!("/routers/{router}/add_router_interface"),
        json!({"subnet_id": sub1}),
    );
    assert_eq!(s, 200, "{iface}");
    let (s, fip) = net(
        &cloud,
        "POST",
        "/floatingips",
        json!({"floatingip": {"floating_network_id": public, "port_id": port_id}}),
    );
    assert_eq!(s, 201, "{fip}");
    let fip_id = fip["floatingip"]["id"].as_str().unwrap().to_owned();

    // A host that is no gateway gets no router; the gateway host takes it
    // and its ports are bound there.
    let token = common::hostd::host_token(HOST_ID);
    let (_, answer) = report(
        &cloud,
        HOST_ID,
        &token,
        r#"{"vtep": "172.16.0.1", "plugged": []}"#,
    );
    assert_eq!(answer["routers"], json!([]));
    let gw = common::hostd::host_token("gw");
    let (s, answer) = report(
        &cloud,
        "gw",
        &gw,
        r#"{"vtep": "172.16.0.9", "plugged": [], "gateway": true}"#,
    );
    assert_eq!(s, 200, "{answer}");
    let routers = answer["routers"].as_array().unwrap();
    assert_eq!(routers.len(), 1, "{answer}");
    let r = &routers[0];
    assert_eq!(r["id"], router.as_str());
    assert_eq!(r["gateway"]["port"]["ip"], "172.24.4.2");
    assert_eq!(r["gateway"]["port"]["prefix_len"], 24);
    assert_eq!(r["gateway"]["nexthop"], "172.24.4.1");
    assert_eq!(r["gateway"]["snat"], true);
    assert_eq!(r["interfaces"][0]["ip"], "10.0.0.1");
    assert_eq!(r["interfaces"][0]["network_id"], net1.as_str());
    assert_eq!(
        r["floating"],
        json!([{"id": fip_id, "floating": "172.24.4.3", "fixed": "10.0.0.2"}])
    );
    // Both networks are carried there, the router's ports unfiltered, and
    // the server's port is the remote one.
    let nets = answer["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 2, "{answer}");
    let external: Vec<bool> = nets.iter().map(|n| n["external"] == true).collect();
    assert!(external.contains(&true) && external.contains(&false));
    for n in nets {
        assert_eq!(n["ports"][0]["port_security"], false);
    }
    let tenant = nets.iter().find(|n| n["id"] == net1.as_str()).unwrap();
    assert_eq!(tenant["remote"][0]["id"], port_id.as_str());
    // ... and the server's host sees the router's interface as remote.
    let (_, answer) = report(
        &cloud,
        HOST_ID,
        &token,
        r#"{"vtep": "172.16.0.1", "plugged": []}"#,
    );
    assert_eq!(
        answer["networks"][0]["remote"][0]["ips"],
        json!(["10.0.0.1"])
    );

    // Applied: ACTIVE; no longer reported: DOWN.
    let fip_status = || {
        net(
            &cloud,
            "GET",
            &format!("/floatingips/{fip_id}"),
            Value::Null,
        )
        .1["floatingip"]["status"]
            .clone()
    };
    assert_eq!(fip_status(), "DOWN");
    let applied =
        json!({"vtep": "172.16.0.9", "plugged": [], "gateway": true, "floating": [fip_id]});
    report(&cloud, "gw", &gw, &applied.to_string());
    assert_eq!(fip_status(), "ACTIVE");
    // Nova lists the floating address after the fixed one.
    let r = call(
        &cloud.c,
        "GET",
        &format!("/compute/v2.1/servers/{server}"),
        &[cloud.auth()],
        "",
    );
    assert_eq!(
        r.json()["server"]["addresses"]["net1"],
        json!([
            {"version": 4, "addr": "10.0.0.2", "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]},
            {"version": 4, "addr": "172.24.4.3", "OS-EXT-IPS:type": "floating", "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]},
        ])
    );
    // A router set down is taken off its host, and its floating IPs go DOWN.
    let (s, _) = net(
        &cloud,
        "PUT",
        &format!("/routers/{router}"),
        json!({"router": {"admin_state_up": false}}),
    );
    assert_eq!(s, 200);
    let (_, answer) = report(&cloud, "gw", &gw, &applied.to_string());
    assert_eq!(answer["routers"], json!([]));
    assert_eq!(fip_status(), "DOWN");

    // Deleting the server frees its floating IP.
    let r = call(
        &cloud.c,
        "DELETE",
        &format!("/compute/v2.1/servers/{server}"),
        &[cloud.auth()],
        "",
    );
    assert_eq!(r.status, 204);
    wait_for_status(
        &cloud.c,
        &format!("/compute/v2.1/servers/{server}"),
        &cloud.admin,
        404,
    );
    let (_, f) = net(
        &cloud,
        "GET",
        &format!("/floatingips/{fip_id}"),
        Value::Null,
    );
    assert_eq!(f["floatingip"]["port_id"], Value::Null);
}

fn interfaces(cloud: &Cloud, method: &str, server: &str, rest: &str, body: Value) -> (u16, Value) {
    let r = call(
        &cloud.c,
        method,
        &format!("/compute/v2.1/servers/{server}/os-interface{rest}"),
        &[cloud.auth()],
        &if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
    );
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

/// `server add/remove network|port` (Nova's os-interface): a NIC attached
/// to a running server gets a port bound to its host and plugged by hostd,
/// shows in its addresses and interface list, and goes when detached (the
/// port made for it deleted, the user's unbound); bad requests get Nova's
/// errors, and a host that cannot plug it leaves no port behind.
#[test]
fn interfaces_attach_to_and_detach_from_a_running_server() {
    let cloud = Cloud::start(Delays::NONE);
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    let (net1, _) = network(&cloud, "net1", "10.0.0.0/24");
    let (net2, sub2) = network(&cloud, "net2", "10.1.0.0/24");
    let r = create(&cloud, &flavor, &image, Some(json!([{"uuid": net1}])));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");

    let (s, added) = interfaces(
        &cloud,
        "POST",
        &id,
        "",
        json!({"interfaceAttachment": {"net_id": net2}}),
    );
    assert_eq!(s, 200, "{added}");
    let a = &added["interfaceAttachment"];
    assert_eq!(a["net_id"], net2.as_str());
    assert_eq!(a["fixed_ips"][0]["subnet_id"], sub2.as_str());
    assert_eq!(a["fixed_ips"][0]["ip_address"], "10.1.0.2");
    let made = a["port_id"].as_str().unwrap().to_owned();
    let (_, port) = net(&cloud, "GET", &format!("/ports/{made}"), Value::Null);
    assert_eq!(port["port"]["device_id"], id.as_str());
    assert_eq!(port["port"]["binding:host_id"], HOST_ID);
    assert_eq!(port["port"]["mac_address"], a["mac_addr"]);
    assert_eq!(cloud.show(&id)["addresses"]["net2"][0]["addr"], "10.1.0.2");

    // A port of the user's.
    let (_, mine) = net(
        &cloud,
        "POST",
        "/ports",
        json!({"port": {"network_id": net2}}),
    );
    let mine = mine["port"]["id"].as_str().unwrap().to_owned();
    let (s, added) = interfaces(
        &cloud,
        "POST",
        &id,
        "",
        json!({"interfaceAttachment": {"port_id": mine}}),
    );
    assert_eq!(s, 200, "{added}");
    let (s, listed) = interfaces(&cloud, "GET", &id, "", Value::Null);
    assert_eq!(s, 200);
    let listed: Vec<&str> = listed["interfaceAttachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["port_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(
        &listed[1..],
        [made.as_str(), mine.as_str()],
        "made ones by slot, then the user's"
    );
    assert_eq!(
        interfaces(&cloud, "GET", &id, &format!("/{mine}"), Value::Null).0,
        200
    );

    // Bad requests.
    for (body, want) in [
        (json!({"interfaceAttachment": {"port_id": mine}}), 409), // in use
        (
            json!({"interfaceAttachment": {"port_id": mine, "net_id": net2}}),
            400,
        ),
        (
            json!({"interfaceAttachment": {"net_id": "no-such-net"}}),
            404,
        ),
        (
            json!({"interfaceAttachment": {"port_id": "no-such-port"}}),
            404,
        ),
        (
            json!({"interfaceAttachment": {"net_id": net2, "fixed_ips": [{"ip_address": "10.9.9.9"}]}}),
            400,
        ),
        (json!({"interfaceAttachment": "x"}), 400),
    ] {
        let (s, e) = interfaces(&cloud, "POST", &id, "", body.clone());
        assert_eq!(s, want, "{body}: {e}");
    }
    assert_eq!(
        interfaces(&cloud, "POST", "no-such-server", "", json!({})).0,
        404
    );
    assert_eq!(
        interfaces(&cloud, "DELETE", &id, "/no-such-port", Value::Null).0,
        404
    );
    assert_eq!(
        ports_of(&cloud, &id).len(),
        3,
        "nothing made by the bad requests"
    );

    // Detached: answered at once; the made port goes, the user's is free.
    assert_eq!(
        interfaces(&cloud, "DELETE", &id, &format!("/{made}"), Value::Null).0,
        202
    );
    assert_eq!(
        interfaces(&cloud, "DELETE", &id, &format!("/{mine}"), Value::Null).0 / 100,
        2
    );
    virga_test_support::wait::until("the NICs to go", std::time::Duration::from_secs(10), || {
        (ports_of(&cloud, &id).len() == 1).then_some(())
    });
    assert_eq!(
        net(&cloud, "GET", &format!("/ports/{made}"), Value::Null).0,
        404
    );
    let (_, kept) = net(&cloud, "GET", &format!("/ports/{mine}"), Value::Null);
    assert_eq!(kept["port"]["device_id"], "");
    assert!(cloud.show(&id)["addresses"].get("net2").is_none());

    // A host that cannot plug it: 500, and the port made for it goes again.
    cloud.hostd.fail_creates();
    let (s, e) = interfaces(
        &cloud,
        "POST",
        &id,
        "",
        json!({"interfaceAttachment": {"net_id": net2}}),
    );
    assert_eq!(s, 500, "{e}");
    assert!(
        e.to_string()
            .contains("Failed to attach network adapter device"),
        "{e}"
    );
    assert_eq!(ports_of(&cloud, &id).len(), 1);
    let (_, actions) = (
        0,
        call(
            &cloud.c,
            "GET",
            &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
            &[cloud.auth()],
            "",
        )
        .json(),
    );
    let names: Vec<&str> = actions["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"attach_interface") && names.contains(&"detach_interface"),
        "{names:?}"
    );
}
