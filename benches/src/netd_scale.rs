//! netd at scale: one host with many ports (namespaces on this machine, the
//! ports' taps as veths), against the same host with a few, in one run.
//! Measured: how long netd takes from its start to every port ACTIVE, how
//! long a change takes to show once converged (a port set down goes DOWN, a
//! port set up goes ACTIVE again: a pass and a report), and how many rules
//! the host's nftables ruleset holds.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use virga_test_support::netlab::{Lab, LabBins};
use virga_test_support::netns;

use crate::report::{Report, Samples};
use crate::{host_cpu, release_bin, workspace};

/// The peer: the same host with a handful of ports.
const FEW: usize = 10;

/// The ports of `network` that are ACTIVE.
fn active(lab: &Lab, network: &str) -> usize {
    let (_, v) = lab.call(
        "GET",
        &format!("/ports?network_id={network}&fields=status"),
        Value::Null,
    );
    v["ports"].as_array().map_or(0, |ps| {
        ps.iter().filter(|p| p["status"] == "ACTIVE").count()
    })
}

/// Waits until `done` holds, polling every 100 ms; the time it took.
fn time_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<f64> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One host with `ports` ports: netd started on it, converged, then one
/// port toggled `toggles` times.
fn measure(samples: &mut Samples, bins: &LabBins, ports: usize, toggles: u32) -> Result<()> {
    let system = format!("ports-{ports}");
    let tag = format!("ns{}-{ports}", std::process::id());
    let mut lab = Lab::new(&tag, bins);
    let (net, _) = lab.network_with("scale", "10.0.0.0/20");
    let net_id = net["id"].as_str().unwrap_or_default().to_owned();
    // Neutron's default allows 500 ports a project.
    let project = net["project_id"].as_str().unwrap_or_default();
    let (code, v) = lab.call(
        "PUT",
        &format!("/quotas/{project}"),
        json!({"quota": {"port": -1}}),
    );
    if code != 200 {
        bail!("raising the port quota: {code} {v}");
    }
    let started = Instant::now();
    let mut made = Vec::with_capacity(ports);
    for i in 0..ports {
        let ip = format!("10.0.{}.{}", 1 + i / 250, 1 + i % 250);
        made.push(lab.port(&net, "hv1", &ip));
    }
    samples.add(
        &system,
        "port_create",
        "ms",
        started.elapsed().as_secs_f64() * 1000.0 / ports as f64,
    );
    // Each port's tap, as hostd would make it: one batch for `ip`.
    let batch: String = made
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = p["id"].as_str().unwrap_or_default();
            format!(
                "link add tap{} type veth peer name g{i}\nlink set g{i} up\n",
                id.get(..11).unwrap_or(id)
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("{tag}.ip"));
    std::fs::write(&file, batch)?;
    lab.hosts[0].ns.sh(&format!("ip -batch {}", file.display()));
    let _ = std::fs::remove_file(&file);

    lab.hosts[0].start_netd();
    let all = time_until("every port ACTIVE", Duration::from_secs(600), || {
        active(&lab, &net_id) == ports
    })?;
    samples.add(&system, "all_ports_active", "s", all);
    let rules = lab.hosts[0]
        .ns
        .sh("nft -a list ruleset | grep -c handle || true");
    samples.add(
        &system,
        "nft_rules",
        "rules",
        rules.trim().parse().unwrap_or(f64::NAN),
    );
    let first = made[0]["id"].as_str().unwrap_or_default().to_owned();
    let status = |lab: &Lab| {
        let (_, v) = lab.call("GET", &format!("/ports/{first}"), Value::Null);
        v["port"]["status"].as_str().unwrap_or_default().to_owned()
    };
    for _ in 0..toggles {
        for (up, want) in [(false, "DOWN"), (true, "ACTIVE")] {
            lab.call(
                "PUT",
                &format!("/ports/{first}"),
                json!({"port": {"admin_state_up": up}}),
            );
            let took = time_until("a port change", Duration::from_secs(60), || {
                status(&lab) == want
            })?;
            samples.add(&system, "change_shown", "ms", took * 1000.0);
        }
    }
    lab.hosts[0].kill_netd();
    Ok(())
}

pub fn run(ports: usize, toggles: u32) -> Result<()> {
    netns::available().map_err(|why| anyhow::anyhow!("network namespaces: {why}"))?;
    if Command::new("nft").arg("--version").output().is_err() {
        bail!("nft is missing (cargo xtask install adds it)");
    }
    if !(FEW + 1..=3000).contains(&ports) {
        bail!("--ports: {} to 3000", FEW + 1);
    }
    let bins = LabBins {
        controller: release_bin("controller")?,
        netd: release_bin("netd")?,
    };
    let mut samples = Samples::default();
    eprintln!("netd-scale: {FEW} ports, then {ports}; {toggles} toggles each");
    measure(&mut samples, &bins, FEW, toggles)?;
    measure(&mut samples, &bins, ports, toggles)?;
    let few = format!("ports-{FEW}");
    let many = format!("ports-{ports}");
    let report = Report {
        bench: "netd-scale".into(),
        host: format!("{} (native, namespaces)", host_cpu()),
        rows: samples.rows(&[many.as_str(), few.as_str()]),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(&few));
    println!(
        "(one host; netd passes every 200 ms here; change_shown: from an API change to the port's status once netd applied it)"
    );
    println!("written to {}", path.display());
    Ok(())
}
