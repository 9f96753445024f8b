//! Two hosts and their guests on one machine, as network namespaces
//! (`virga_test_support::netlab`): a controller, hosts `hv1` and `hv2` each
//! running netd, and a "guest" namespace per port. Everything netd does is
//! real: the controller's
//! API and intended state, the kernel's bridges, VXLAN and forwarding
//! entries, the nftables ruleset and conntrack, pings between guests.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use virga_test_support::netlab::{pings, wait_ping, Lab, LabBins};
use virga_test_support::netns::{self, NetNs};
use virga_test_support::{http, tools, wait};

/// The controller binary the workspace built beside this test.
fn controller_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VIRGA_CONTROLLER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("controller"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build -p controller`)",
        bin.display()
    );
    bin
}

fn lab(tag: &str) -> Lab {
    Lab::new(
        tag,
        &LabBins {
            controller: controller_bin(),
            netd: env!("CARGO_BIN_EXE_netd").into(),
        },
    )
}

/// The tunnel entries of a VXLAN device, as `bridge fdb` prints them.
fn tunnel_entries(host: &NetNs, vni: u64) -> Vec<String> {
    let mut lines: Vec<String> = host
        .sh(&format!("bridge fdb show dev vxlan-{vni}"))
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

#[test]
fn guests_on_one_network_talk_across_hosts_and_nobody_else_reaches_them() {
    if let Err(why) = netns::available() {
        tools::missing(&format!("network namespaces ({why})"));
        return;
    }
    for (tool, package) in [
        ("ping", "iputils-ping"),
        ("nft", "nftables"),
        ("udhcpc", "udhcpc"),
    ] {
        if Command::new(tool).arg("--help").output().is_err() {
            tools::missing(&format!("{tool} ({package})"));
            return;
        }
    }
    let mut lab = lab(&format!("vo{}", std::process::id()));
    let a = lab.network("a");
    let b = lab.network("b");
    let vni_a = a["provider:segmentation_id"].as_u64().unwrap();
    // Project networks may share address ranges: the same addresses on both.
    let a1 = lab.port(&a, "hv1", "10.0.0.10");
    let a2 = lab.port(&a, "hv2", "10.0.0.11");
    let b1 = lab.port(&b, "hv1", "10.0.0.20");
    let b2 = lab.port(&b, "hv2", "10.0.0.21");
    let g_a1 = lab.hosts[0].guest(&format!("{}-ga1", lab.ctl.name), &a1);
    let g_a2 = lab.hosts[1].guest(&format!("{}-ga2", lab.ctl.name), &a2);
    let g_b1 = lab.hosts[0].guest(&format!("{}-gb1", lab.ctl.name), &b1);
    let g_b2 = lab.hosts[1].guest(&format!("{}-gb2", lab.ctl.name), &b2);
    assert_eq!(lab.status(&a1), "DOWN", "no netd yet, nothing plugged");

    for host in &mut lab.hosts {
        host.start_netd();
    }
    for port in [&a1, &a2, &b1, &b2] {
        lab.wait_status(port, "ACTIVE");
    }
    wait_ping(&g_a1, "10.0.0.11");
    wait_ping(&g_b1, "10.0.0.21");
    // Another network's guests are out of reach, though on the same hosts
    // and in the same address range.
    assert!(!pings(&g_a1, "10.0.0.21"), "network a reached network b");
    assert!(!pings(&g_b2, "10.0.0.10"), "network b reached network a");

    // DHCP: a guest asks (a real client) and is told its port's address
    // and the subnet around it by its own host, through its security
    // groups; the answer comes from 169.254.169.254, on-link.
    let script = lab.dir().join("udhcpc.sh");
    let told = lab.dir().join("udhcpc.out");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip subnet=$subnet router=$router mtu=$mtu serverid=$serverid staticroutes=$staticroutes\" > {}\n",
            told.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (guest, ip) in [(&g_a1, "10.0.0.10"), (&g_b2, "10.0.0.21")] {
        let _ = std::fs::remove_file(&told);
        wait::until(
            &format!("a DHCP lease for {ip}"),
            Duration::from_secs(30),
            || {
                guest
                    .try_sh(&format!(
                        "udhcpc -i eth0 -f -q -n -t 2 -T 1 -s {}",
                        script.display()
                    ))
                    .then_some(())
            },
        );
        assert_eq!(
            std::fs::read_to_string(&told).unwrap().trim(),
            format!("ip={ip} subnet=255.255.255.0 router=10.0.0.1 mtu=1450 serverid=169.254.169.254 staticroutes=169.254.169.254/32 0.0.0.0 0.0.0.0/0 10.0.0.1")
        );
    }

    // The metadata service answers at 169.254.169.254 for the guest it
    // knows by its address: this port has no server behind it, so the
    // controller has nothing to tell (503); the route is DHCP's.
    g_a1.sh("ip route replace 169.254.169.254/32 dev eth0");
    // The DHCP and metadata address answers ping, as Neutron's DHCP port.
    wait_ping(&g_a1, "169.254.169.254");
    let meta = g_a1.run(|| {
        http::send(
            "169.254.169.254:80",
            "GET",
            "/openstack/latest/meta_data.json",
            &[],
            b"",
        )
    });
    let meta = meta.expect("the metadata service answers");
    assert_eq!(
        (
            meta.status,
            String::from_utf8_lossy(&meta.bytes).into_owned()
        ),
        (503, "metadata unavailable".to_owned())
    );

    // A guest sending from an address that is not its port's gets nowhere,
    // though a2's group lets that address in (b1's, a member).
    g_a1.sh("ip addr add 10.0.0.20/24 dev eth0");
    // The answer would need no ARP (which is filtered too).
    g_a2.sh(&format!(
        "ip neigh replace 10.0.0.20 lladdr {} dev eth0",
        a1["mac_address"].as_str().unwrap()
    ));
    assert!(
        !g_a1.try_sh("ping -c 1 -W 1 -I 10.0.0.20 10.0.0.11"),
        "a spoofed source address got through"
    );
    g_a1.sh("ip addr del 10.0.0.20/24 dev eth0");
    assert!(pings(&g_a1, "10.0.0.11"));

    // Security groups: a2 moves to a group that lets nothing in, then one
    // rule lets ICMP in from the subnet. (The default group lets in only its
    // members, so a1 no longer hears from a2 either.)
    let closed = lab.create("security_group", json!({"name": "closed"}));
    let a2_path = format!("/ports/{}", a2["id"].as_str().unwrap());
    let (code, v) = lab.call(
        "PUT",
        &a2_path,
        json!({"port": {"security_groups": [closed["id"]]}}),
    );
    assert_eq!(code, 200, "{v}");
    wait::until(
        "a2's new group to close it",
        Duration::from_secs(20),
        || (!pings(&g_a1, "10.0.0.11")).then_some(()),
    );
    assert!(!pings(&g_a2, "10.0.0.10"), "a1 let in a non-member");
    lab.create(
        "security_group_rule",
        json!({"security_group_id": closed["id"], "direction": "ingress",
               "protocol": "icmp", "remote_ip_prefix": "10.0.0.0/24"}),
    );
    wait_ping(&g_a1, "10.0.0.11");
    assert!(!pings(&g_a2, "10.0.0.10"));

    // Each host floods to the other once per network and points each remote
    // MAC at it.
    let mac = |p: &Value| p["mac_address"].as_str().unwrap().to_owned();
    let entries = tunnel_entries(&lab.hosts[0].ns, vni_a);
    let mut expect = vec![
        "00:00:00:00:00:00 dst 172.16.0.2".to_owned(),
        format!("{} dst 172.16.0.2", mac(&a2)),
    ];
    expect.sort();
    assert_eq!(entries, expect);

    // netd killed: the datapath stays and carries traffic; restarted, it
    // converges without adding a second copy of anything.
    lab.hosts[0].kill_netd();
    assert!(pings(&g_a1, "10.0.0.11"), "the datapath went with netd");
    lab.hosts[0].start_netd();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tunnel_entries(&lab.hosts[0].ns, vni_a), entries);
    assert!(pings(&g_a1, "10.0.0.11"));

    // A port deleted: its host takes its tap off the network, the other
    // host forgets it, and a network with no port left on a host leaves it.
    let (code, v) = lab.call(
        "DELETE",
        &format!("/ports/{}", a2["id"].as_str().unwrap()),
        Value::Null,
    );
    assert_eq!(code, 204, "{v}");
    let hv2 = &lab.hosts[1].ns;
    let bridge_a = format!("brq{}", &a["id"].as_str().unwrap()[..11]);
    wait::until("hv2 to remove network a", Duration::from_secs(20), || {
        (!hv2.try_sh(&format!("ip link show {bridge_a}"))).then_some(())
    });
    wait::until(
        "hv1 to forget hv2 on network a",
        Duration::from_secs(20),
        || {
            tunnel_entries(&lab.hosts[0].ns, vni_a)
                .is_empty()
                .then_some(())
        },
    );
    assert!(!pings(&g_a1, "10.0.0.11"), "a deleted port still reachable");
    // Network b is untouched.
    assert!(pings(&g_b1, "10.0.0.21"));

    // A port set down goes DOWN and off its bridge.
    let (code, v) = lab.call(
        "PUT",
        &format!("/ports/{}", b2["id"].as_str().unwrap()),
        json!({"port": {"admin_state_up": false}}),
    );
    assert_eq!(code, 200, "{v}");
    lab.wait_status(&b2, "DOWN");
    assert!(
        !pings(&g_b1, "10.0.0.21"),
        "a port that is down still carries traffic"
    );
    for host in &lab.hosts {
        let log = host.log();
        assert!(
            !log.contains("ERROR") && !log.contains("panicked"),
            "{}: {log}",
            host.id
        );
    }
    drop((g_a1, g_a2, g_b1, g_b2));
}

/// Waits until a ping to floating IP `address` is answered by the guest
/// behind it, one hop away (the router itself would answer at TTL 64).
fn wait_behind(from: &NetNs, address: &str) {
    wait::until(
        &format!("the guest behind {address} to answer"),
        Duration::from_secs(20),
        || {
            from.try_sh(&format!("ping -c 1 -W 1 {address} | grep -q ttl=63"))
                .then_some(())
        },
    );
}

/// The tools the namespace tests need, or why they skip.
fn lab_tools() -> bool {
    if let Err(why) = netns::available() {
        tools::missing(&format!("network namespaces ({why})"));
        return false;
    }
    for (tool, package) in [("ping", "iputils-ping"), ("nft", "nftables")] {
        if Command::new(tool).arg("--help").output().is_err() {
            tools::missing(&format!("{tool} ({package})"));
            return false;
        }
    }
    true
}

#[test]
fn a_router_joins_networks_across_hosts_and_floating_ips_reach_guests_from_outside() {
    if !lab_tools() {
        return;
    }
    let mut lab = lab(&format!("vr{}", std::process::id()));
    // The external network; hv1 (the gateway host) is its subnet's gateway,
    // 172.24.4.1, and plays the outside world.
    let public = lab.create(
        "network",
        json!({"name": "public", "router:external": true}),
    );
    lab.create(
        "subnet",
        json!({"network_id": public["id"], "cidr": "172.24.4.0/24", "ip_version": 4,
               "enable_dhcp": false}),
    );
    let (n1, s1) = lab.network_with("n1", "10.0.0.0/24");
    let (n2, s2) = lab.network_with("n2", "10.1.0.0/24");
    // A guest on each network, on different hosts.
    let p1 = lab.port(&n1, "hv2", "10.0.0.5");
    let p2 = lab.port(&n2, "hv1", "10.1.0.5");
    let g1 = lab.hosts[1].guest(&format!("{}-g1", lab.ctl.name), &p1);
    let g2 = lab.hosts[0].guest(&format!("{}-g2", lab.ctl.name), &p2);
    // The outside may ping the guests.
    let (code, groups) = lab.call("GET", "/security-groups?name=default", Value::Null);
    assert_eq!(code, 200, "{groups}");
    lab.create(
        "security_group_rule",
        json!({"security_group_id": groups["security_groups"][0]["id"],
               "direction": "ingress", "protocol": "icmp"}),
    );
    let router = lab.create(
        "router",
        json!({"name": "r1", "external_gateway_info": {"network_id": public["id"]}}),
    );
    let rid = router["id"].as_str().unwrap().to_owned();
    for s in [&s1, &s2] {
        let (code, v) = lab.call(
            "PUT",
            &format!("/routers/{rid}/add_router_interface"),
            json!({"subnet_id": s["id"]}),
        );
        assert_eq!(code, 200, "{v}");
    }
    for host in &mut lab.hosts {
        host.start_netd();
    }
    lab.wait_status(&p1, "ACTIVE");
    lab.wait_status(&p2, "ACTIVE");
    let (_, router_ports) = lab.call("GET", &format!("/ports?device_id={rid}"), Value::Null);
    let router_ports = router_ports["ports"].as_array().unwrap().clone();
    assert_eq!(router_ports.len(), 3, "{router_ports:?}");
    for p in &router_ports {
        lab.wait_status(p, "ACTIVE");
    }

    // Routed between the networks, across hosts (g1 on hv2, the router and
    // g2 on hv1).
    wait_ping(&g1, "10.1.0.5");
    wait_ping(&g2, "10.0.0.5");
    // Out through the gateway: the outside sees the router's address.
    wait_ping(&g1, "172.24.4.1");
    let outside = &lab.hosts[0].ns;
    assert!(
        !outside.try_sh("ping -c 1 -W 1 10.0.0.5"),
        "the outside reached a fixed address"
    );

    // A floating IP reaches g1 from outside once ACTIVE; the router
    // announces it (the outside learns it from that alone, as it takes
    // gratuitous ARP here).
    outside.sh("sysctl -qw net.ipv4.conf.all.arp_accept=1");
    let fip = lab.create(
        "floatingip",
        json!({"floating_network_id": public["id"], "port_id": p1["id"]}),
    );
    let fip_id = fip["id"].as_str().unwrap().to_owned();
    let address = fip["floating_ip_address"].as_str().unwrap().to_owned();
    let fip_status = |lab: &Lab| {
        let (_, v) = lab.call("GET", &format!("/floatingips/{fip_id}"), Value::Null);
        v["floatingip"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait::until(
        "the floating IP to be ACTIVE",
        Duration::from_secs(20),
        || (fip_status(&lab) == "ACTIVE").then_some(()),
    );
    wait::until(
        "the floating IP's announcement",
        Duration::from_secs(10),
        || {
            outside
                .sh(&format!("ip neigh show {address}"))
                .contains("lladdr")
                .then_some(())
        },
    );
    wait_behind(outside, &address);
    // g1 leaves as its floating IP: the outside sees it so.
    outside.sh(&format!("nft add table ip seen && nft 'add chain ip seen in {{ type filter hook input priority 0; }}' && nft add rule ip seen in ip saddr {address} ip protocol icmp counter"));
    assert!(pings(&g1, "172.24.4.1"));
    let seen = outside.sh("nft list table ip seen");
    assert!(seen.contains("packets 1"), "{seen}");
    outside.sh("nft delete table ip seen");

    // netd killed on the gateway host and restarted: the router is rebuilt
    // and the floating IP reaches g1 again.
    lab.hosts[0].kill_netd();
    lab.hosts[0].start_netd();
    let outside = &lab.hosts[0].ns;
    wait_behind(outside, &address);
    wait_ping(&g1, "10.1.0.5");

    // Disassociated: DOWN, and out of reach.
    let (code, v) = lab.call(
        "PUT",
        &format!("/floatingips/{fip_id}"),
        json!({"floatingip": {"port_id": null}}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["floatingip"]["status"], "DOWN");
    wait::until("the floating IP to go", Duration::from_secs(20), || {
        (!pings(outside, &address)).then_some(())
    });
    assert_eq!(fip_status(&lab), "DOWN");

    // The gateway moved to another address in one update (an admin's): a
    // new gateway port and link, the same nexthop; the router announces its
    // new address, and its default route comes back with the new link (an
    // address beyond the external subnet needs it).
    outside.sh("ip addr add 198.51.100.1/32 dev lo");
    let (code, v) = lab.call(
        "PUT",
        &format!("/routers/{rid}"),
        json!({"router": {"external_gateway_info": {"network_id": public["id"],
               "external_fixed_ips": [{"ip_address": "172.24.4.20"}]}}}),
    );
    assert_eq!(code, 200, "{v}");
    wait::until(
        "the new gateway address's announcement",
        Duration::from_secs(10),
        || {
            outside
                .sh("ip neigh show 172.24.4.20")
                .contains("lladdr")
                .then_some(())
        },
    );
    wait_ping(&g1, "198.51.100.1");

    // An interface removed: its network is cut off, the other keeps its
    // way out; the router deleted: its ports leave the host.
    let (code, v) = lab.call(
        "PUT",
        &format!("/routers/{rid}/remove_router_interface"),
        json!({"subnet_id": s2["id"]}),
    );
    assert_eq!(code, 200, "{v}");
    wait::until("n2 to be cut off", Duration::from_secs(20), || {
        (!pings(&g1, "10.1.0.5")).then_some(())
    });
    assert!(pings(&g1, "172.24.4.1"));
    let (code, v) = lab.call(
        "PUT",
        &format!("/routers/{rid}/remove_router_interface"),
        json!({"subnet_id": s1["id"]}),
    );
    assert_eq!(code, 200, "{v}");
    lab.call("DELETE", &format!("/floatingips/{fip_id}"), Value::Null);
    let (code, v) = lab.call("DELETE", &format!("/routers/{rid}"), Value::Null);
    assert_eq!(code, 204, "{v}");
    let taps: Vec<String> = router_ports
        .iter()
        .map(|p| format!("tap{}", &p["id"].as_str().unwrap()[..11]))
        .collect();
    wait::until("the router's taps to go", Duration::from_secs(20), || {
        taps.iter()
            .all(|t| !outside.try_sh(&format!("ip link show {t}")))
            .then_some(())
    });
    for host in &lab.hosts {
        let log = host.log();
        assert!(
            !log.contains("ERROR") && !log.contains("panicked"),
            "{}: {log}",
            host.id
        );
    }
    drop((g1, g2));
}
