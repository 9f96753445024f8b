//! The overlay benchmark: what netd's datapath costs. Two guests on two
//! hosts (network namespaces on this machine, joined by a veth underlay)
//! exchange TCP (iperf3, one and four streams) and pings through netd's
//! datapath (a bridge and a VXLAN device per network, the security groups'
//! nftables with conntrack); through the kernel's VXLAN alone (the same
//! bridge and VXLAN device, made by hand, no firewall), which splits the
//! cost between encapsulation and security groups; and, as the peer,
//! through plain bridges across the same kind of underlay (no
//! encapsulation, no firewall). The three are interleaved round by round. No guest boots: the datapath is the kernel's either way,
//! so this runs natively, not in the testbed.

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

/// Two hosts joined by a veth (the underlay), a bridge on each with a guest
/// on it, the guests' MTU as on the overlay. Plain: the underlay veth is a
/// port of the bridges. VXLAN: the hosts are 172.18.0.1 and .2 on the
/// underlay and each bridge has a VXLAN device flooding to the other host,
/// as netd makes them, without netd's firewall.
struct Bridged {
    hosts: [NetNs; 2],
    guests: [NetNs; 2],
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

fn measure(samples: &mut Samples, system: &str, client: &NetNs) -> Result<()> {
    for (metric, streams) in [("tcp_1_stream", 1), ("tcp_4_streams", 4)] {
        let out = client.sh(&format!(
            "iperf3 -c {SERVER_IP} -t {SECONDS} -P {streams} -J"
        ));
        let g = gbits(&out).with_context(|| format!("{system}: iperf3 said {out}"))?;
        samples.add(system, metric, "Gbit/s", g);
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
    let net = lab.network("bench");
    let ports = [
        lab.port(&net, "hv1", CLIENT_IP),
        lab.port(&net, "hv2", SERVER_IP),
    ];
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
    let bridged = Bridged::new(&tag, false);
    let vxlan = Bridged::new(&tag, true);
    for b in [&bridged, &vxlan] {
        wait_ping(&b.guests[0], SERVER_IP);
    }
    let servers = [&guests[1], &vxlan.guests[1], &bridged.guests[1]];
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
        eprintln!("overlay: round {round} of {runs} done");
    }
    for server in servers {
        server.try_sh("pkill -x iperf3");
    }
    drop((bridged.hosts, vxlan.hosts));
    let report = Report {
        bench: "overlay".into(),
        host: format!("{} (native, namespaces)", host_cpu()),
        rows: samples.rows(SYSTEMS),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!(
        "(guest to guest across two hosts: netd's overlay (VXLAN and security groups), the kernel's VXLAN alone, and a plain bridge over the same underlay; throughput higher is better, round trip lower)"
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
