//! Hosts and guests on one machine, as network namespaces (the kernel's
//! own VXLAN selftest layout): a controller in `<tag>-ctl` on an underlay
//! bridge, hosts `hv1` and `hv2` on it, each with its netd, and a "guest"
//! namespace per port, joined to its host by a veth whose host end carries
//! the port's tap name (hostd makes real taps; to the datapath both are
//! links to put on a bridge). For netd's tests and the overlay benchmark.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::netns::NetNs;
use crate::{http, identity, wait};

pub const CONTROLLER: &str = "172.16.0.254:8774";
const ADMIN_PASSWORD: &str = "admin-secret";

/// The programs a lab runs.
pub struct LabBins {
    pub controller: PathBuf,
    pub netd: PathBuf,
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host: its namespace, its netd, and what the netd is started with.
pub struct Host {
    pub ns: NetNs,
    pub id: String,
    config: PathBuf,
    netd_bin: PathBuf,
    netd: Option<Killed>,
}

impl Host {
    pub fn start_netd(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = self
            .ns
            .command(&self.netd_bin)
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("NETD_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.netd = Some(Killed(child));
    }

    pub fn kill_netd(&mut self) {
        self.netd = None;
    }

    /// A guest namespace on port `port` of this host: a veth whose host end
    /// is the port's tap, the guest end with the port's MAC and address,
    /// and a default route through its subnet's first address.
    pub fn guest(&self, name: &str, port: &Value) -> NetNs {
        let guest = NetNs::new(name);
        let tap = format!("tap{}", &port["id"].as_str().unwrap()[..11]);
        let mac = port["mac_address"].as_str().unwrap();
        let ip = port["fixed_ips"][0]["ip_address"].as_str().unwrap();
        self.ns.sh(&format!(
            "ip link add {tap} type veth peer name eth0 netns {}",
            guest.name
        ));
        let gateway = format!("{}.1", ip.rsplit_once('.').unwrap().0);
        guest.sh(&format!(
            "ip link set eth0 address {mac} mtu 1450 && ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {gateway}"
        ));
        guest
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }
}

pub struct Lab {
    pub ctl: NetNs,
    pub hosts: Vec<Host>,
    _controller: Killed,
    token: String,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A controller (`bins.controller`) in `<tag>-ctl` and hosts `hv1` and
    /// `hv2` (netd `bins.netd`, not started yet); hv1 is the gateway host
    /// and the external subnets' gateway.
    pub fn new(tag: &str, bins: &LabBins) -> Lab {
        Lab::with_sync_ms(tag, bins, 200)
    }

    /// As [`Lab::new`], the netds converging every `sync_ms` (tests want
    /// them quick; a benchmark wants the product's default).
    pub fn with_sync_ms(tag: &str, bins: &LabBins, sync_ms: u64) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let ctl = NetNs::new(&format!("{tag}-ctl"));
        ctl.sh(
            "ip link add ul type bridge && ip addr add 172.16.0.254/24 dev ul && ip link set ul up",
        );
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"0.0.0.0:8774\"\nstate_dir = \"{}\"\nhostd_secret = \"lab-secret-0123456789abcdef\"\n[bootstrap]\nadmin_password = \"{ADMIN_PASSWORD}\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let controller = Killed(
            ctl.command(&bins.controller)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .spawn()
                .unwrap(),
        );
        let mut hosts = Vec::new();
        for n in 1..=2 {
            let id = format!("hv{n}");
            let ns = NetNs::new(&format!("{tag}-{id}"));
            ctl.sh(&format!(
                "ip link add u{n} type veth peer name eth0 netns {} && ip link set u{n} master ul up",
                ns.name
            ));
            ns.sh(&format!(
                "ip addr add 172.16.0.{n}/24 dev eth0 && ip link set eth0 up"
            ));
            let out = Command::new(&bins.controller)
                .arg("--config")
                .arg(&config)
                .args(["host-token", &id])
                .output()
                .unwrap();
            assert!(out.status.success(), "host-token: {out:?}");
            let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let netd_config = dir.path().join(format!("netd-{id}.toml"));
            // hv1 is the gateway host, and the external subnets' gateway.
            let gateway = if n == 1 {
                "gateway = true\nexternal_gateway_on_host = true\n"
            } else {
                ""
            };
            std::fs::write(
                &netd_config,
                format!(
                    "host_id = \"{id}\"\ncontroller_url = \"http://{CONTROLLER}\"\ntoken = \"{token}\"\nvtep = \"172.16.0.{n}\"\nunderlay_dev = \"eth0\"\nsync_ms = {sync_ms}\n{gateway}"
                ),
            )
            .unwrap();
            hosts.push(Host {
                ns,
                id,
                config: netd_config,
                netd_bin: bins.netd.clone(),
                netd: None,
            });
        }
        let token = ctl.run(|| {
            wait::until("the controller to answer", Duration::from_secs(30), || {
                identity::request_token(CONTROLLER, "admin", ADMIN_PASSWORD, "admin").ok()
            })
        });
        Lab {
            ctl,
            hosts,
            _controller: controller,
            token,
            dir,
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (method, path, token) = (method.to_owned(), path.to_owned(), self.token.clone());
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.ctl.run(move || {
            let r = http::send(
                CONTROLLER,
                &method,
                &format!("/network/v2.0{path}"),
                &[("X-Auth-Token", &token)],
                &body,
            )
            .unwrap();
            (r.status, r.json())
        })
    }

    pub fn create(&self, kind: &str, body: Value) -> Value {
        let path = format!("/{}s", kind.replace('_', "-"));
        let (status, v) = self.call("POST", &path, json!({ kind: body }));
        assert_eq!(status, 201, "creating a {kind}: {v}");
        v[kind].clone()
    }

    /// A network with a /24 subnet.
    pub fn network(&self, name: &str) -> Value {
        self.network_with(name, "10.0.0.0/24").0
    }

    /// A network with a subnet of `cidr`: the network and the subnet.
    pub fn network_with(&self, name: &str, cidr: &str) -> (Value, Value) {
        let net = self.create("network", json!({"name": name}));
        let subnet = self.create(
            "subnet",
            json!({"network_id": net["id"], "cidr": cidr, "ip_version": 4}),
        );
        (net, subnet)
    }

    /// A server's port on `net`, bound to host `host`, with address `ip`.
    pub fn port(&self, net: &Value, host: &str, ip: &str) -> Value {
        self.create(
            "port",
            json!({
                "network_id": net["id"],
                "binding:host_id": host,
                "device_owner": "compute:nova",
                "device_id": format!("server-{ip}"),
                "fixed_ips": [{"ip_address": ip}],
            }),
        )
    }

    pub fn status(&self, port: &Value) -> String {
        let (code, v) = self.call(
            "GET",
            &format!("/ports/{}", port["id"].as_str().unwrap()),
            Value::Null,
        );
        assert_eq!(code, 200, "{v}");
        v["port"]["status"].as_str().unwrap_or_default().to_owned()
    }

    pub fn wait_status(&self, port: &Value, want: &str) {
        wait::until(
            &format!("port {} {want}", port["fixed_ips"][0]["ip_address"]),
            Duration::from_secs(30),
            || (self.status(port) == want).then_some(()),
        );
    }
}

impl Drop for Lab {
    /// A failed test shows what each netd said.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in &self.hosts {
                eprintln!("--- netd on {} ---\n{}", host.id, host.log());
            }
        }
    }
}

/// Whether `from` pings `ip` (one echo, one second).
pub fn pings(from: &NetNs, ip: &str) -> bool {
    from.try_sh(&format!("ping -c 1 -W 1 {ip}"))
}

pub fn wait_ping(from: &NetNs, ip: &str) {
    wait::until(
        &format!("{} to reach {ip}", from.name),
        Duration::from_secs(20),
        || pings(from, ip).then_some(()),
    );
}
