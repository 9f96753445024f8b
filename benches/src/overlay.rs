//! The overlay benchmark: what netd's datapath costs. Two guests on two
//! hosts (network namespaces on this machine, joined by a veth underlay)
//! exchange TCP (iperf3, one and four streams) and pings through netd's
//! datapath (a bridge and a VXLAN device per network, the security groups'
//! nftables with conntrack); through the kernel's VXLAN alone (the same
//! bridge and VXLAN device, made by hand, no firewall), which splits the
//! cost between encapsulation and security groups; and, as the peer,
//! through plain bridges across the same kind of underlay (no
//! encapsulation, no firewall). The three are interleaved round by round.
//! Out of the network too: the server guest's TCP to the outside through
//! its router's SNAT, and from the outside to it through a floating IP,
//! against the same paths through a plain Linux router (masquerade and a
//! DNAT on the plain bridges' first host). No guest boots: the datapath is
//! the kernel's either way, so this runs natively, not in the testbed.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use virga_test_support::netlab::{wait_ping, Lab, LabBins};
use virga_test_support::netns::{self, NetNs};

use crate::report::{Report, Samples};
use crate::{host_cpu, release_bin, workspace};

const PEER: &str = "bridge";
const SYSTEMS: &[&str] = &["virga", "vxlan", PEER];
/// Seconds per iperf3 run.
const SECONDS: u32 = 5;
const SERVER_IP: &str = "10.0.0.11";
const CLIENT_IP: &str = "10.0.0.10";
/// The outside world's address, on the external network (172.24.4.0/24).
const OUTSIDE_IP: &str = "172.24.4.1";
/// The plain router's address for the server guest (its "floating IP").
const PLAIN_FIP: &str = "172.24.4.50";

/// Two hosts joined by a veth (the underlay), a bridge on each with a guest
/// on it, the guests' MTU as on the overlay. Plain: the underlay veth is a
/// port of the bridges. VXLAN: the hosts are 172.18.0.1 and .2 on the
/// underlay and each bridge has a VXLAN device flooding to the other host,
/// as netd makes them, without netd's firewall.
struct Bridged {
    hosts: [NetNs; 2],
    guests: [NetNs; 2],
}

/// The outside of the plain bridges: a namespace joined to their first host,
/// which routes the guests' network to it (10.0.0.1 on its bridge) with a
/// masquerade, and forwards PLAIN_FIP to the server guest: a Linux router
/// with no overlay and no security groups. (Its NAT needs conntrack in its
/// namespace; bridged frames stay out of the IP hooks there, as on any
/// plain bridge.)
fn plain_router(tag: &str, bridged: &Bridged) -> NetNs {
    let outside = NetNs::new(&format!("{tag}-pout"));
    let router = &bridged.hosts[0];
    router.sh(&format!(
        "ip link add ext type veth peer name eth0 netns {} && \
         ip addr add 172.24.4.2/24 dev ext && ip addr add {PLAIN_FIP}/32 dev ext && ip link set ext up && \
         ip addr add 10.0.0.1/24 dev br0 && sysctl -qw net.ipv4.ip_forward=1 && \
         {{ sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true; }}",
        outside.name
    ));
    router.sh(&format!(
        "nft -f - <<'EOF'\ntable ip plain {{\n\
         \tchain pre {{ type nat hook prerouting priority -100; ip daddr {PLAIN_FIP} dnat to {SERVER_IP}; }}\n\
         \tchain post {{ type nat hook postrouting priority 100; ip saddr 10.0.0.0/24 oifname \"ext\" masquerade; }}\n}}\nEOF"
    ));
    outside.sh(&format!(
        "ip addr add {OUTSIDE_IP}/24 dev eth0 && ip link set eth0 up"
    ));
    for guest in &bridged.guests {
        guest.sh("ip route add default via 10.0.0.1");
    }
    outside
}

impl Bridged {
    fn new(tag: &str, vxlan: bool) -> Bridged {
        let kind = if vxlan { "x" } else { "p" };
        let hosts = [
            NetNs::new(&format!("{tag}-{kind}h1")),
            NetNs::new(&format!("{tag}-{kind}h2")),
        ];
        let guests = [
            NetNs::new(&format!("{tag}-{kind}g1")),
            NetNs::new(&format!("{tag}-{kind}g2")),
        ];
        hosts[0].sh(&format!(
            "ip link add eth0 type veth peer name eth0 netns {}",
            hosts[1].name
        ));
        for (i, (host, guest)) in hosts.iter().zip(&guests).enumerate() {
            let ip = [CLIENT_IP, SERVER_IP][i];
            let uplink = if vxlan {
                let (me, other) = if i == 0 { (1, 2) } else { (2, 1) };
                format!(
                    "ip addr add 172.18.0.{me}/24 dev eth0 && ip link set eth0 up && \
                     ip link add vxlan0 type vxlan id 42 local 172.18.0.{me} dev eth0 dstport 4789 nolearning && \
                     bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 172.18.0.{other} && \
                     ip link set vxlan0 mtu 1450 master br0 up"
                )
            } else {
                "ip link set eth0 master br0 up".to_owned()
            };
            host.sh(&format!(
                "ip link add br0 type bridge && {uplink} && \
                 ip link add tap0 type veth peer name eth0 netns {} && \
                 ip link set tap0 mtu 1450 master br0 up && ip link set br0 up",
                guest.name
            ));
            guest.sh(&format!(
                "ip link set eth0 mtu 1450 up && ip addr add {ip}/24 dev eth0 && ip link set lo up"
            ));
        }
        Bridged { hosts, guests }
    }
}

/// iperf3's received throughput in Gbit/s, from its JSON.
fn gbits(json: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(json).ok()?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
}

/// The average round trip in microseconds, from ping's summary line.
fn rtt_us(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    let avg: f64 = values.split('/').nth(1)?.trim().parse().ok()?;
    Some(avg * 1000.0)
}

/// One stream of `SECONDS` from `client` to `server`, into `metric`.
fn tcp(
    samples: &mut Samples,
    system: &str,
    metric: &str,
    client: &NetNs,
    server: &str,
    streams: u32,
) -> Result<()> {
    let out = client.sh(&format!("iperf3 -c {server} -t {SECONDS} -P {streams} -J"));
    let g = gbits(&out).with_context(|| format!("{system}: iperf3 said {out}"))?;
    samples.add(system, metric, "Gbit/s", g);
    Ok(())
}

/// The paths out of the network: the server guest to the outside (SNAT),
/// the outside to the server guest at `fip`.
fn measure_external(
    samples: &mut Samples,
    system: &str,
    guest: &NetNs,
    outside: &NetNs,
    fip: &str,
) -> Result<()> {
    tcp(samples, system, "snat_tcp_1_stream", guest, OUTSIDE_IP, 1)?;
    tcp(samples, system, "fip_tcp_1_stream", outside, fip, 1)
}

fn measure(samples: &mut Samples, system: &str, client: &NetNs) -> Result<()> {
    for (metric, streams) in [("tcp_1_stream", 1), ("tcp_4_streams", 4)] {
        tcp(samples, system, metric, client, SERVER_IP, streams)?;
    }
    let out = client.sh(&format!("ping -c 200 -i 0.01 -q {SERVER_IP}"));
    let rtt = rtt_us(&out).with_context(|| format!("{system}: ping said {out}"))?;
    samples.add(system, "ping_rtt", "us", rtt);
    Ok(())
}

pub fn run(runs: u32) -> Result<()> {
    netns::available().map_err(|why| anyhow::anyhow!("network namespaces: {why}"))?;
    for tool in ["iperf3", "ping", "nft"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing (cargo xtask install adds it)");
        }
    }
    let bins = LabBins {
        controller: release_bin("controller")?,
        netd: release_bin("netd")?,
    };
    let tag = format!("bo{}", std::process::id());
    let mut lab = Lab::new(&tag, &bins);
    let (net, subnet) = lab.network_with("bench", "10.0.0.0/24");
    let ports = [
        lab.port(&net, "hv1", CLIENT_IP),
        lab.port(&net, "hv2", SERVER_IP),
    ];
    // The way out: a router on the gateway host (hv1, whose own namespace
    // is the outside world at OUTSIDE_IP), and a floating IP for the server
    // guest, which lets anyone in.
    let public = lab.create(
        "network",
        serde_json::json!({"name": "public", "router:external": true}),
    );
    lab.create(
        "subnet",
        serde_json::json!({"network_id": public["id"], "cidr": "172.24.4.0/24",
                           "ip_version": 4, "enable_dhcp": false}),
    );
    let router = lab.create(
        "router",
        serde_json::json!({"name": "r1", "external_gateway_info": {"network_id": public["id"]}}),
    );
    let rid = router["id"].as_str().context("router id")?;
    let (code, v) = lab.call(
        "PUT",
        &format!("/routers/{rid}/add_router_interface"),
        serde_json::json!({"subnet_id": subnet["id"]}),
    );
    if code != 200 {
        bail!("router interface: {code} {v}");
    }
    let (_, groups) = lab.call("GET", "/security-groups?name=default", Value::Null);
    for protocol in ["tcp", "icmp"] {
        lab.create(
            "security_group_rule",
            serde_json::json!({"security_group_id": groups["security_groups"][0]["id"],
                               "direction": "ingress", "protocol": protocol}),
        );
    }
    let fip = lab.create(
        "floatingip",
        serde_json::json!({"floating_network_id": public["id"], "port_id": ports[1]["id"]}),
    );
    let fip = fip["floating_ip_address"]
        .as_str()
        .context("floating IP address")?
        .to_owned();
    let guests = [
        lab.hosts[0].guest(&format!("{tag}-g1"), &ports[0]),
        lab.hosts[1].guest(&format!("{tag}-g2"), &ports[1]),
    ];
    for host in &mut lab.hosts {
        host.start_netd();
    }
    for p in &ports {
        lab.wait_status(p, "ACTIVE");
    }
    wait_ping(&guests[0], SERVER_IP);
    let outside = &lab.hosts[0].ns;
    // The outside learns the floating IP from the router's announcement.
    outside.sh("sysctl -qw net.ipv4.conf.all.arp_accept=1");
    wait_ping(&guests[1], OUTSIDE_IP);
    wait_ping(outside, &fip);
    let bridged = Bridged::new(&tag, false);
    let plain_outside = plain_router(&tag, &bridged);
    wait_ping(&bridged.guests[1], OUTSIDE_IP);
    wait_ping(&plain_outside, PLAIN_FIP);
    let vxlan = Bridged::new(&tag, true);
    for b in [&bridged, &vxlan] {
        wait_ping(&b.guests[0], SERVER_IP);
    }
    let servers = [
        &guests[1],
        &vxlan.guests[1],
        &bridged.guests[1],
        outside,
        &plain_outside,
    ];
    for server in servers {
        server.sh("iperf3 -s -D");
    }
    eprintln!(
        "overlay: {runs} rounds of iperf3 ({SECONDS} s, 1 and 4 streams) and 200 pings; netd's overlay, bare VXLAN and a plain bridge interleaved"
    );
    let mut samples = Samples::default();
    for round in 1..=runs {
        measure(&mut samples, "virga", &guests[0])?;
        measure(&mut samples, "vxlan", &vxlan.guests[0])?;
        measure(&mut samples, PEER, &bridged.guests[0])?;
        measure_external(&mut samples, "virga", &guests[1], outside, &fip)?;
        measure_external(
            &mut samples,
            PEER,
            &bridged.guests[1],
            &plain_outside,
            PLAIN_FIP,
        )?;
        eprintln!("overlay: round {round} of {runs} done");
    }
    for server in servers {
        server.try_sh("pkill -x iperf3");
    }
    drop((plain_outside, bridged.hosts, vxlan.hosts));
    let report = Report {
        bench: "overlay".into(),
        host: format!("{} (native, namespaces)", host_cpu()),
        rows: samples.rows(SYSTEMS),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!(
        "(guest to guest across two hosts: netd's overlay (VXLAN and security groups), the kernel's VXLAN alone, and a plain bridge over the same underlay; snat/fip: the server guest to the outside through its router's SNAT and back in through a floating IP, against a plain Linux router on the plain bridges; throughput higher is better, round trip lower)"
    );
    println!("written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_and_ping_outputs_are_read() {
        let json = r#"{"end": {"sum_received": {"bits_per_second": 9.5e9}}}"#;
        assert_eq!(gbits(json), Some(9.5));
        assert_eq!(gbits("iperf3: error"), None);
        let ping = "--- 10.0.0.11 ping statistics ---\n200 packets transmitted, 200 received, 0% packet loss, time 2010ms\nrtt min/avg/max/mdev = 0.021/0.045/0.120/0.010 ms\n";
        assert_eq!(rtt_us(ping), Some(45.0));
        assert_eq!(rtt_us("nothing"), None);
    }
}
