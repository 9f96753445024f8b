//! The overlay benchmark with real guests: two guests on two hosts (network
//! namespaces inside one testbed, each host with its netd, the controller in
//! a namespace of its own) exchange TCP (iperf3, one and four streams) and
//! pings, over netd's datapath (bridge, VXLAN, security groups with
//! conntrack); over the kernel's VXLAN alone (a bridge and a VXLAN device
//! made by hand, no firewall), which splits the cost between encapsulation
//! and security groups; and, as the peer, over plain bridges joined by a
//! veth. The last two each have a pair of host namespaces of their own that
//! no netd touches. Each guest has one NIC on each datapath: the same
//! guests, kernels and VMMs measure all three, round by round (the guest
//! alternates the order).
//!
//! `virga-bench overlay-guests` starts the testbed; inside it, this binary's
//! `overlay-guests-inner` builds the hosts and boots the guests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use virga_guest_images::rootfs::{PEERS_DONE, PEERS_READY, PEERS_RESULT};
use virga_test_support::netlab::{Lab, LabBins};
use virga_test_support::netns::NetNs;
use virga_testbed::{Scenario, Testbed};

use crate::report::{Report, Samples};
use crate::{host_cpu, images_dir, release_bin, vmm_bin, workspace, GUEST_CMDLINE};

const PEER: &str = "bridge";
/// By NIC index: eth0 is on netd's network, eth1 on the bare VXLAN, eth2
/// on the plain bridges.
const SYSTEMS: &[&str] = &["virga", "vxlan", PEER];
/// Each guest's address on each datapath, by NIC index.
const ADDRS: [[&str; 3]; 2] = [
    ["10.0.0.10", "10.8.0.10", "10.9.0.10"],
    ["10.0.0.11", "10.8.0.11", "10.9.0.11"],
];
const SECONDS: u32 = 5;
const GUEST_MIB: u64 = 256;

/// Arguments of `virga-bench overlay-guests-inner`.
#[derive(clap::Args)]
pub struct Inner {
    #[arg(long)]
    pub runs: u32,
    /// Directory holding vmm, controller and netd.
    #[arg(long)]
    pub bin: PathBuf,
    /// Directory holding the guest kernel and boot initramfs.
    #[arg(long)]
    pub guest: PathBuf,
    /// The guest root filesystem (shared read-only by both guests).
    #[arg(long)]
    pub rootfs: PathBuf,
}

pub fn run(runs: u32) -> Result<()> {
    let testbed = Testbed::new(&images_dir())?;
    let vmm = vmm_bin();
    let script = format!(
        // iproute2's ip, not busybox's, for namespaces: the testbed's sh
        // (busybox) would run its own applet whatever PATH says, dash not.
        "mkdir -p $WORK/path && ln -sf /usr/bin/dash $WORK/path/sh\n\
         export PATH=$WORK/path:/usr/sbin:/usr/bin:$PATH\n\
         $BIN/virga-bench overlay-guests-inner --runs {runs} --bin $BIN --guest $GUEST --rootfs $ROOTFS\n"
    );
    let mut scenario = Scenario::new("bench-overlay-guests", &script)
        .binary(&vmm)
        .binary(release_bin("controller")?)
        .binary(release_bin("netd")?)
        .binary(std::env::current_exe()?)
        .with_rootfs()
        .timeout(Duration::from_secs(600 + 120 * u64::from(runs)));
    for program in ["/usr/bin/ip", "/usr/bin/dash", "/usr/sbin/nft", "/sbin/nft"] {
        if Path::new(program).exists() {
            scenario = scenario.host_binary(program);
        }
    }
    eprintln!(
        "bench overlay-guests: {runs} rounds of iperf3 ({SECONDS} s, 1 and 4 streams) and 200 pings between two guests on two hosts, netd's overlay, bare VXLAN and a plain bridge interleaved ({})",
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;
    let rows = samples(&outcome.output).rows(SYSTEMS);
    // Every metric of every datapath, from every round.
    let expected = 3 * SYSTEMS.len();
    let complete = rows.iter().filter(|r| r.runs == runs as usize).count();
    if !outcome.success() || complete < expected {
        bail!(
            "the overlay benchmark failed (status {}, {complete} of {expected} metrics from every round); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 60)
        );
    }
    let report = Report {
        bench: "overlay-guests".into(),
        host: format!(
            "{} ({}, guests: 1 vCPU, {GUEST_MIB} MiB each)",
            host_cpu(),
            outcome.mode.as_str()
        ),
        rows,
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!(
        "(guest to guest across two hosts, the same two guests over netd's overlay (VXLAN and security groups), the kernel's VXLAN alone and a plain bridge; throughput higher is better, round trip lower)"
    );
    println!("written to {}", path.display());
    Ok(())
}

/// The client guest's result lines: `VIRGA-PEERS <nic> <metric> <summary>`.
fn samples(output: &str) -> Samples {
    let mut samples = Samples::default();
    for line in output.lines() {
        let Some(rest) = line
            .find(PEERS_RESULT)
            .map(|i| &line[i + PEERS_RESULT.len()..])
        else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(nic), Some(metric)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(system) = nic.parse::<usize>().ok().and_then(|i| SYSTEMS.get(i)) else {
            continue;
        };
        let summary = words.collect::<Vec<_>>().join(" ");
        match metric {
            "tcp_1" | "tcp_4" => {
                if let Some(mbits) = mbits(&summary) {
                    let name = if metric == "tcp_1" {
                        "tcp_1_stream"
                    } else {
                        "tcp_4_streams"
                    };
                    samples.add(system, name, "Mbit/s", mbits);
                }
            }
            "ping" => {
                if let Some(us) = rtt_us(&summary) {
                    samples.add(system, "ping_rtt", "us", us);
                }
            }
            _ => {}
        }
    }
    samples
}

/// Mbit/s from an iperf3 summary line (`... 345 Mbits/sec ... receiver`).
fn mbits(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

/// The average from busybox ping's `round-trip min/avg/max = a/b/c ms`, in
/// microseconds.
fn rtt_us(line: &str) -> Option<f64> {
    let values = line.split('=').nth(1)?.split_whitespace().next()?;
    let avg: f64 = values.split('/').nth(1)?.parse().ok()?;
    Some(avg * 1000.0)
}

/// A guest VMM, killed when dropped; its console goes to stdout, read here.
struct Guest {
    child: Child,
    console: std::sync::mpsc::Receiver<String>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    fn boot(
        inner: &Inner,
        host: &NetNs,
        role: &str,
        me: usize,
        nics: &[(String, String)],
    ) -> Result<Guest> {
        let peer = 1 - me;
        let cmdline = format!(
            "{GUEST_CMDLINE} virga.root=/dev/vda virga.mode=peers-iperf virga.role={role} \
             virga.addrs={} virga.peers={} virga.rounds={} virga.secs={SECONDS}",
            ADDRS[me].join(","),
            ADDRS[peer].join(","),
            inner.runs
        );
        let mut cmd = host.command(inner.bin.join("vmm"));
        cmd.arg("--kernel")
            .arg(inner.guest.join("vmlinux"))
            .arg("--initramfs")
            .arg(inner.guest.join("boot-initramfs.cpio"))
            .args(["--cmdline", &cmdline, "--vcpus", "1", "--memory-mib"])
            .arg(GUEST_MIB.to_string())
            .arg("--disk")
            .arg(format!("path={},readonly=on", inner.rootfs.display()))
            .args(["--serial", "stdout"]);
        for (tap, mac) in nics {
            cmd.arg("--net").arg(format!("tap={tap},mac={mac}"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the vmm")?;
        let stdout = child.stdout.take().context("the vmm's stdout")?;
        let (tx, console) = std::sync::mpsc::channel();
        let name = format!("{role}: ");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Passed on: the outer side reads the results from it.
                println!("{name}{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Guest { child, console })
    }

    /// Waits for a console line containing `want`.
    fn wait_for(&mut self, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.console.recv_timeout(left) {
                Ok(line) if line.contains(want) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("no `{want}` on the guest's console within {timeout:?}"),
            }
        }
    }
}

/// Two hosts no netd manages, joined by a veth: a bridge on each, with the
/// veth in it (plain) or a VXLAN device to the other host over it, as netd
/// makes them (VNI 42, UDP 4789, MTU 1450, learning off).
struct Unmanaged {
    hosts: [NetNs; 2],
}

impl Unmanaged {
    fn new(tag: &str, vxlan: bool) -> Unmanaged {
        let hosts = [
            NetNs::new(&format!("{tag}h1")),
            NetNs::new(&format!("{tag}h2")),
        ];
        hosts[0].sh(&format!(
            "ip link add ul type veth peer name ul netns {}",
            hosts[1].name
        ));
        for (i, host) in hosts.iter().enumerate() {
            let (me, other) = (i + 1, 2 - i);
            let uplink = if vxlan {
                format!(
                    "ip addr add 172.18.0.{me}/24 dev ul && ip link set ul up && \
                     ip link add vx type vxlan id 42 local 172.18.0.{me} remote 172.18.0.{other} \
                     dev ul dstport 4789 nolearning && ip link set vx mtu 1450 master br0 up"
                )
            } else {
                "ip link set ul master br0 up".to_owned()
            };
            host.sh(&format!(
                "ip link add br0 type bridge && {uplink} && ip link set br0 up"
            ));
        }
        Unmanaged { hosts }
    }
}

/// Waits until `ns` has link `name` (the VMM makes its taps).
fn wait_link(ns: &NetNs, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ns.try_sh(&format!("ip link show {name}")) {
        if Instant::now() > deadline {
            bail!("{name} never appeared in {}", ns.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Inside the testbed: the hosts, the plain bridges, the guests, the rounds.
pub fn inner(inner: &Inner) -> Result<()> {
    let bins = LabBins {
        controller: inner.bin.join("controller"),
        netd: inner.bin.join("netd"),
    };
    // netd as deployed: one pass a second.
    let mut lab = Lab::with_sync_ms("og", &bins, 1000);
    let net = lab.network("bench");
    let ports = [
        lab.port(&net, "hv1", ADDRS[0][0]),
        lab.port(&net, "hv2", ADDRS[1][0]),
    ];
    for host in &mut lab.hosts {
        host.start_netd();
    }
    let unmanaged = [Unmanaged::new("og-x", true), Unmanaged::new("og-p", false)];
    let field = |port: &serde_json::Value, key: &str| -> Result<String> {
        port[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("port without {key}: {port}"))
    };
    let mut guests = Vec::new();
    for (i, (role, port)) in ["client", "server"].iter().zip(&ports).enumerate() {
        let id = field(port, "id")?;
        let tap = format!("tap{}", id.get(..11).context("short port id")?);
        let mut nics = vec![(tap, field(port, "mac_address")?)];
        for (k, _) in unmanaged.iter().enumerate() {
            nics.push((
                format!("utap{k}"),
                format!("02:00:00:00:0{k}:{:02x}", 10 + i),
            ));
        }
        let host = &lab.hosts[i].ns;
        let guest = Guest::boot(inner, host, role, i, &nics)?;
        // The VMM made every tap on netd's host; the others move (open, as
        // they are) to their own hosts and bridges.
        for ((tap, _), other) in nics[1..].iter().zip(&unmanaged) {
            wait_link(host, tap)?;
            host.sh(&format!("ip link set {tap} netns {}", other.hosts[i].name));
            other.hosts[i].sh(&format!("ip link set {tap} mtu 1450 master br0 up"));
        }
        guests.push(guest);
    }
    for p in &ports {
        lab.wait_status(p, "ACTIVE");
    }
    let client = &mut guests[0];
    client.wait_for(PEERS_READY, Duration::from_secs(300))?;
    eprintln!("overlay-guests: both guests answer over both datapaths");
    client.wait_for(
        PEERS_DONE,
        Duration::from_secs(120 + 60 * u64::from(inner.runs)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_read_per_datapath() {
        let out = "client: VIRGA-PEERS 0 tcp_1 [  5]   0.00-5.00   sec   300 MBytes   503 Mbits/sec                  receiver\n\
                   client: VIRGA-PEERS 2 tcp_4 [SUM]   0.00-5.00   sec   400 MBytes   671.5 Mbits/sec                  receiver\n\
                   client: VIRGA-PEERS 2 ping round-trip min/avg/max = 0.101/0.250/0.900 ms\n\
                   client: VIRGA-PEERS 0 tcp_1 \n\
                   client: VIRGA-PEERS 7 tcp_1 [  5] 1 Mbits/sec receiver\n";
        let rows = samples(out).rows(SYSTEMS);
        let find = |system: &str, metric: &str| {
            rows.iter()
                .find(|r| r.system == system && r.metric == metric)
                .map(|r| r.median)
        };
        assert_eq!(find("virga", "tcp_1_stream"), Some(503.0));
        assert_eq!(find(PEER, "tcp_4_streams"), Some(671.5));
        assert_eq!(find(PEER, "ping_rtt"), Some(250.0));
        assert_eq!(
            rows.len(),
            3,
            "an empty summary or unknown NIC adds nothing"
        );
    }
}
