//! The API benchmark: what the control plane costs, and how fast it answers.
//!
//! - **Boot** (in the testbed, or natively on hardware KVM): the same guest
//!   started by `vmm` directly and through the controller's Nova API, with the
//!   controller on this machine and hostd in the testbed, as `cargo xtask up`
//!   runs them. The API path is timed from `POST /servers` to ACTIVE and to the
//!   guest's marker line read through `os-getConsoleOutput`; its difference to
//!   the direct boot is the control plane's overhead (authentication,
//!   scheduling, the call to hostd, hostd's supervision). Direct runs go before
//!   and after the API runs, so drift in the testbed shows on both sides.
//! - **Latency** (natively): p50/p99 of `GET /servers/detail`, `GET /servers`
//!   and `GET /servers/{id}` with 1,000 servers in the database, on SQLite and
//!   on PostgreSQL, against `GET /compute/v2.1/` (no database: the HTTP floor)
//!   in the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::body::Bytes;
use serde_json::{json, Value as Json};
use virga_guest_images::initramfs::BOOT_MARKER;
use virga_pgserver::PgServer;
use virga_test_support::ports::HeldPort;
use virga_testbed::{Scenario, Testbed};

use crate::hostd::{collect_samples, emit};
use crate::http::{Client, Reply};
use crate::measure::SAMPLE_PREFIX;
use crate::report::{Report, Samples};
use crate::{host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE};

pub(crate) const ADMIN_PASSWORD: &str = "bench-admin-secret";
const HOSTD_SECRET: &str = "bench-hostd-secret-0123456789";
/// The one host the boot part registers.
pub(crate) const HOST_ID: &str = "bench";

pub(crate) fn host_token() -> String {
    hostd_proto::token::for_host(HOSTD_SECRET, HOST_ID)
}
const GUEST_MIB: u64 = 128;
const PEER: &str = "vmm";
/// Requests per endpoint in the latency part.
const LIST_REQUESTS: usize = 200;
const SHOW_REQUESTS: usize = 500;

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    All,
    Boot,
    Latency,
}

fn controller_bin() -> PathBuf {
    vmm_bin().with_file_name("controller")
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(virga_test_support::ports::free_port())
}

/// A controller process with its own state directory; killed when dropped.
pub(crate) struct Controller {
    child: Child,
    pub(crate) port: u16,
    /// Held here and handed to the controller (see `HeldPort`): no other
    /// process can take the port while the controller starts.
    _held: HeldPort,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// `extra` is TOML placed after the top-level keys (tables allowed).
    pub(crate) fn start(database_url: Option<&str>, extra: &str) -> Result<Controller> {
        let dir = tempfile::tempdir()?;
        let held = HeldPort::new();
        let port = held.port;
        let db = database_url.map_or(String::new(), |u| format!("database_url = \"{u}\"\n"));
        let cfg = dir.path().join("controller.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{db}hostd_secret = \"{HOSTD_SECRET}\"\n{extra}\n[bootstrap]\nadmin_password = \"{ADMIN_PASSWORD}\"\n",
                dir.path().join("state").display()
            ),
        )?;
        let bin = controller_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&cfg)
            // Servers without a host are expected here: no warnings about them.
            .env("RUST_LOG", "error");
        held.hand_to(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} (cargo xtask bench builds it)", bin.display()))?;
        let mut ctl = Controller {
            child,
            port,
            _held: held,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = ctl.child.try_wait()? {
                bail!("the controller exited: {status}");
            }
            let probe = virga_test_support::http::send_within(
                port,
                Duration::from_secs(1),
                "GET",
                "/",
                &[],
                b"",
            );
            if probe.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not answer on {} within 30 s",
                    ctl.addr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ctl)
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn rss_kib(&self) -> f64 {
        crate::hostd::rss_kib(self.child.id())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn expect(reply: Reply, status: u16, what: &str) -> Result<Reply> {
    if reply.status != status {
        bail!(
            "{what}: answered {} (wanted {status}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(reply)
}

/// A client holding an admin token scoped to the admin project, and that
/// project's id.
pub(crate) fn admin(ctl: &Controller) -> Result<(Client, String)> {
    let mut c = Client::new(&ctl.addr())?;
    let auth = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": ADMIN_PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
    let reply = expect(
        c.call("POST", "/identity/v3/auth/tokens", Some(&auth))?,
        201,
        "password authentication",
    )?;
    let token = reply
        .header("x-subject-token")
        .context("no X-Subject-Token")?
        .to_owned();
    let project = reply.json()["token"]["project"]["id"]
        .as_str()
        .context("no project in the token")?
        .to_owned();
    c.auth = Some(("x-auth-token", token));
    Ok((c, project))
}

pub(crate) fn create_flavor(
    c: &mut Client,
    vcpus: u32,
    ram_mib: u64,
    disk_gb: u64,
) -> Result<String> {
    let body =
        json!({"flavor": {"name": "bench", "vcpus": vcpus, "ram": ram_mib, "disk": disk_gb}});
    let reply = expect(
        c.call("POST", "/compute/v2.1/flavors", Some(&body))?,
        200,
        "flavor create",
    )?;
    reply.json()["flavor"]["id"]
        .as_str()
        .map(str::to_owned)
        .context("no flavor id")
}

/// Creates an image with `properties` and uploads `data` to it.
pub(crate) fn create_image(
    c: &mut Client,
    name: &str,
    format: &str,
    properties: Json,
    data: Vec<u8>,
) -> Result<String> {
    let container = if matches!(format, "aki" | "ari" | "ami") {
        format
    } else {
        "bare"
    };
    let mut body = json!({"name": name, "disk_format": format, "container_format": container});
    if let (Some(b), Json::Object(p)) = (body.as_object_mut(), properties) {
        b.extend(p);
    }
    let reply = expect(
        c.call("POST", "/image/v2/images", Some(&body))?,
        201,
        "image create",
    )?;
    let id = reply.json()["id"]
        .as_str()
        .map(str::to_owned)
        .context("no image id")?;
    expect(
        c.send(
            "PUT",
            &format!("/image/v2/images/{id}/file"),
            "application/octet-stream",
            Bytes::from(data),
        )?,
        204,
        "image upload",
    )?;
    Ok(id)
}

fn create_server(
    c: &mut Client,
    name: &str,
    image: &str,
    flavor: &str,
) -> Result<(String, Duration)> {
    let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor,
                                 "metadata": {"purpose": "bench"}}});
    let reply = expect(
        c.call("POST", "/compute/v2.1/servers", Some(&body))?,
        202,
        "server create",
    )?;
    let id = reply.json()["server"]["id"]
        .as_str()
        .map(str::to_owned)
        .context("no server id")?;
    Ok((id, reply.elapsed))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value below which `q` of the sorted `values` fall (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn run(runs: u32, servers: usize, part: Part) -> Result<()> {
    let mut samples = Samples::default();
    let mut mode = "native".to_owned();
    let mut systems: Vec<&str> = Vec::new();
    if part != Part::Boot {
        eprintln!("bench api: latency with {servers} servers, SQLite");
        latency("sqlite", None, servers, &mut samples)?;
        systems.push("sqlite");
        match PgServer::start() {
            Ok(pg) => {
                eprintln!("bench api: latency with {servers} servers, PostgreSQL");
                latency("postgresql", Some(&pg.url()), servers, &mut samples)?;
                systems.push("postgresql");
            }
            Err(e) => eprintln!("bench api: no PostgreSQL row ({e}; cargo xtask install adds it)"),
        }
    }
    if part != Part::Latency {
        mode = boot(runs, &mut samples)?;
        systems.splice(0..0, [PEER, "api", "api-cold"]);
    }
    let report = Report {
        bench: "api".into(),
        host: format!("{} ({mode})", host_cpu()),
        rows: samples.rows(&systems),
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    if let (Some(direct), Some(api)) = (report.row(PEER, "boot_ms"), report.row("api", "boot_ms")) {
        let overhead = api.median - direct.median;
        println!(
            "control-plane overhead: {overhead:.0} ms = {:.1}% of the VMM's boot time (target: under 10%)",
            100.0 * overhead / direct.median
        );
    }
    for engine in ["sqlite", "postgresql"] {
        if let Some(p99) = report.row(engine, "servers_detail_p99_ms") {
            println!(
                "{engine}: GET /servers/detail p99 {:.1} ms with {servers} servers (target: under 20 ms)",
                p99.median
            );
        }
    }
    println!("(boot_ms: process start, or POST /servers, to the guest's marker line; api-cold: the first server, its images not yet in hostd's cache)");
    println!("written to {}", path.display());
    Ok(())
}

/// Seeds `servers` servers (no host is registered, so each ends in ERROR
/// with its fault, a full record) and times the read paths.
fn latency(
    engine: &str,
    database_url: Option<&str>,
    servers: usize,
    samples: &mut Samples,
) -> Result<()> {
    let ctl = Controller::start(database_url, "")?;
    let (mut c, project) = admin(&ctl)?;
    let unlimited = json!({"quota_set": {"instances": -1, "cores": -1, "ram": -1}});
    expect(
        c.call(
            "PUT",
            &format!("/compute/v2.1/os-quota-sets/{project}"),
            Some(&unlimited),
        )?,
        200,
        "quota update",
    )?;
    let flavor = create_flavor(&mut c, 1, GUEST_MIB, 0)?;
    let kernel = create_image(
        &mut c,
        "bench-kernel",
        "aki",
        json!({}),
        b"\x7fELF bench".to_vec(),
    )?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(servers);
    for i in 0..servers {
        let (id, _) = create_server(&mut c, &format!("bench-{i:04}"), &kernel, &flavor)?;
        ids.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = expect(
            c.call("GET", "/compute/v2.1/servers?status=BUILD", None)?,
            200,
            "servers in BUILD",
        )?;
        if reply.json()["servers"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("servers still building after 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "  {servers} servers created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let detail = expect(
        c.call("GET", "/compute/v2.1/servers/detail", None)?,
        200,
        "servers detail",
    )?;
    let listed = detail.json()["servers"].as_array().map_or(0, Vec::len);
    if listed != servers {
        bail!("GET /servers/detail listed {listed} servers, wanted {servers}");
    }
    samples.add(
        engine,
        "servers_detail_kib",
        "KiB",
        detail.body.len() as f64 / 1024.0,
    );

    let mut time =
        |c: &mut Client, metric: &str, n: usize, path: &dyn Fn(usize) -> String| -> Result<()> {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                let reply = expect(c.call("GET", &path(i), None)?, 200, metric)?;
                values.push(ms(reply.elapsed));
            }
            samples.add(
                engine,
                &format!("{metric}_p50_ms"),
                "ms",
                percentile(&values, 0.50),
            );
            samples.add(
                engine,
                &format!("{metric}_p99_ms"),
                "ms",
                percentile(&values, 0.99),
            );
            Ok(())
        };
    // Warm up the connection, the token cache and the database's pages.
    for _ in 0..10 {
        c.call("GET", "/compute/v2.1/servers/detail", None)?;
    }
    time(&mut c, "version_doc", SHOW_REQUESTS, &|_| {
        "/compute/v2.1/".into()
    })?;
    time(&mut c, "servers_detail", LIST_REQUESTS, &|_| {
        "/compute/v2.1/servers/detail".into()
    })?;
    time(&mut c, "servers_list", LIST_REQUESTS, &|_| {
        "/compute/v2.1/servers".into()
    })?;
    time(&mut c, "server_show", SHOW_REQUESTS, &|i| {
        format!("/compute/v2.1/servers/{}", ids[(i * 7919) % ids.len()])
    })?;
    samples.add(engine, "controller_rss_kib", "KiB", ctl.rss_kib());
    Ok(())
}

/// What the in-testbed part needs to boot servers through the API.
struct BootSetup {
    ctl_port: u16,
    hostd_port: u16,
    token: String,
    image: String,
    flavor: String,
}

fn script(runs: u32, b: &BootSetup) -> String {
    let direct = format!(
        r#"for round in $(seq {runs}); do
  $BIN/virga-bench measure --system {PEER} --marker {BOOT_MARKER} --guest-mib {GUEST_MIB} -- \
    $BIN/vmm --kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --vcpus 1 \
    --memory-mib {GUEST_MIB} --cmdline "{GUEST_CMDLINE}" > $WORK/direct.out || failed=1
  grep '{SAMPLE_PREFIX}' $WORK/direct.out
done"#
    );
    let BootSetup {
        ctl_port,
        hostd_port,
        token,
        image,
        flavor,
    } = b;
    format!(
        r#"mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
failed=0
{direct}
{start_hostd}
$BIN/virga-bench api-probe --controller $HOST_ADDR:{ctl_port} --token {token} --image {image} \
  --flavor {flavor} --state-dir $WORK/state --runs {runs} || {{ failed=1; tail -n 20 $WORK/hostd.log; }}
kill $HOSTD; wait $HOSTD
{direct}
exit $failed
"#,
        start_hostd = start_hostd(*ctl_port, *hostd_port),
    )
}

/// Script lines that start the bench host's hostd in the testbed (state in
/// `$WORK/state`, its log in `$WORK/hostd.log`, its pid in `$HOSTD`),
/// registered with the controller on this machine.
pub(crate) fn start_hostd(ctl_port: u16, hostd_port: u16) -> String {
    format!(
        r#"cat > $WORK/hostd.toml <<EOF
token = "{hostd_token}"
listen = "0.0.0.0:{hostd_port}"
state_dir = "$WORK/state"
vmm_binary = "$BIN/vmm"
host_id = "{HOST_ID}"
controller_url = "http://$HOST_ADDR:{ctl_port}"
controller_token = "{hostd_token}"
advertise_url = "http://127.0.0.1:{hostd_port}"
heartbeat_secs = 1
EOF
$BIN/hostd --config $WORK/hostd.toml 2> $WORK/hostd.log &
HOSTD=$!"#,
        hostd_token = host_token(),
    )
}

/// The boot part; returns where it ran (`testbed` or `native`). The API
/// runs are driven from inside the testbed (`api-probe`), which sees the
/// guest's console file as hostd writes it: one clock for the request and
/// the marker, and no console polling over the network stealing the
/// testbed's one CPU from the booting guest.
fn boot(runs: u32, samples: &mut Samples) -> Result<String> {
    let testbed = Testbed::new(&images_dir())?;
    let mode = testbed.mode().as_str().to_owned();
    // The testbed has one CPU: let RAM decide what fits.
    let ctl = Controller::start(None, "[scheduler]\ncpu_allocation_ratio = 16.0")?;
    let (mut c, _) = admin(&ctl)?;
    let images = images_dir();
    let read = |f: &str| -> Result<Vec<u8>> {
        let p: &Path = &images.join(f);
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let ramdisk = create_image(
        &mut c,
        "bench-ramdisk",
        "ari",
        json!({}),
        read("boot-initramfs.cpio")?,
    )?;
    let setup = BootSetup {
        ctl_port: ctl.port,
        hostd_port: free_port()?,
        token: c.auth.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
        image: create_image(
            &mut c,
            "bench-guest",
            "aki",
            json!({"ramdisk_id": ramdisk, "os_command_line": GUEST_CMDLINE}),
            read("vmlinux")?,
        )?,
        flavor: create_flavor(&mut c, 1, GUEST_MIB, 0)?,
    };
    let vmm = vmm_bin();
    let scenario = Scenario::new("bench-api", &script(runs, &setup))
        .binary(&vmm)
        .binary(vmm.with_file_name("hostd"))
        .binary(std::env::current_exe()?)
        .forward_port(setup.hostd_port)
        .timeout(Duration::from_secs(600 + 40 * u64::from(runs)));
    eprintln!("bench api: {runs} direct boots, 1 + {runs} through the API, {runs} direct ({mode})");
    let outcome = testbed.run(&scenario)?;
    collect_samples(&outcome.output, samples);
    if !outcome.success() {
        bail!(
            "the boot part failed (status {}):\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    Ok(mode)
}

/// Arguments of `virga-bench api-probe`.
#[derive(clap::Args)]
pub struct Probe {
    /// The controller's host:port.
    #[arg(long)]
    pub controller: String,
    #[arg(long)]
    pub token: String,
    #[arg(long)]
    pub image: String,
    #[arg(long)]
    pub flavor: String,
    /// hostd's state directory (where the console files are).
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub runs: u32,
    /// The console line that ends a boot.
    #[arg(long, default_value = BOOT_MARKER)]
    pub marker: String,
    /// The system the samples are reported as (its first run as `-cold`).
    #[arg(long, default_value = "api")]
    pub system: String,
    /// How long one boot may take to its marker.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
    /// Only `runs` warm rounds: no first round reported as `-cold`.
    #[arg(long)]
    pub no_cold: bool,
    /// Print each server's console once it reached its marker.
    #[arg(long)]
    pub show_console: bool,
}

/// "...THH:MM:SS.ffffff" as microseconds into its day.
fn micros_of_day(t: &str) -> Option<i64> {
    let (_, clock) = t.split_once('T')?;
    let clock = clock.trim_end_matches('Z');
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let frac: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + frac)
}

/// A console file read as it grows: each look reads only the bytes appended
/// since the last. The probe looks every 10 ms for minutes in the testbed's
/// single CPU, where re-reading and searching the whole file (tens of KiB
/// by the end of a Debian boot) took CPU from the very guest being timed.
#[derive(Default)]
struct ConsoleTail {
    file: Option<std::fs::File>,
    /// Bytes read so far.
    read: u64,
    /// The last bytes read, shorter than a marker: one may straddle reads.
    carry: Vec<u8>,
}

impl ConsoleTail {
    /// The file offset of `marker`'s first byte once it has been written.
    fn find(&mut self, path: &Path, marker: &[u8]) -> Option<u64> {
        use std::io::Read;
        if self.file.is_none() {
            self.file = std::fs::File::open(path).ok();
        }
        let mut new = Vec::new();
        self.file.as_mut()?.read_to_end(&mut new).ok()?;
        if new.is_empty() {
            return None;
        }
        let start = self.read - self.carry.len() as u64;
        self.carry.extend_from_slice(&new);
        self.read += new.len() as u64;
        let found = self
            .carry
            .windows(marker.len())
            .position(|w| w == marker)
            .map(|at| start + at as u64);
        let keep = self.carry.len().min(marker.len().saturating_sub(1));
        self.carry.drain(..self.carry.len() - keep);
        found
    }
}

/// Inside the testbed: waits for hostd to register, then boots the image
/// `runs` + 1 times through the API (the first with hostd's image cache
/// cold), timing each from `POST /servers` to its marker in the console
/// file hostd writes. Create-to-ACTIVE comes from the controller's own
/// record of the create (its instance action, in microseconds).
pub fn probe(p: &Probe) -> Result<()> {
    let mut internal = Client::new(&p.controller)?;
    internal.auth = Some(("authorization", format!("Bearer {}", host_token())));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = internal.call("GET", "/internal/v1/hosts", None)?;
        if reply.json()["hosts"][0]["host_id"] == HOST_ID {
            break;
        }
        if Instant::now() > deadline {
            bail!("hostd never registered with the controller");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut c = Client::new(&p.controller)?;
    c.auth = Some(("x-auth-token", p.token.clone()));
    let first = if p.no_cold { 1 } else { 0 };
    for round in first..=p.runs {
        let cold = format!("{}-cold", p.system);
        let system = if round == 0 { &cold } else { &p.system };
        let t0 = Instant::now();
        let body = json!({"server": {"name": format!("boot-{round}"), "imageRef": p.image,
                                     "flavorRef": p.flavor}});
        let reply = expect(
            c.call("POST", "/compute/v2.1/servers", Some(&body))?,
            202,
            "server create",
        )?;
        let accepted = t0.elapsed();
        let request_id = reply
            .header("x-openstack-request-id")
            .context("no request id")?
            .to_owned();
        let id = reply.json()["server"]["id"]
            .as_str()
            .map(str::to_owned)
            .context("no server id")?;
        let console = p.state_dir.join("instances").join(&id).join("console.log");
        let mut checked = Instant::now();
        let mut tail = ConsoleTail::default();
        let booted = loop {
            if let Some(at) = tail.find(&console, p.marker.as_bytes()) {
                let elapsed = t0.elapsed();
                // The rest of the marker's line may not be written yet.
                std::thread::sleep(Duration::from_millis(200));
                let text = std::fs::read(&console).unwrap_or_default();
                let line = usize::try_from(at)
                    .ok()
                    .and_then(|at| text.get(at..))
                    .and_then(|t| t.split(|b| *b == b'\n').next())
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                if let Some(up) = crate::measure::cloud_init_uptime(&line) {
                    emit(system, "guest_uptime_s", "s", up);
                }
                if p.show_console {
                    eprintln!("--- console of {system} server {id} ---");
                    eprintln!("{}", String::from_utf8_lossy(&text));
                }
                break elapsed;
            }
            // Rarely: a failed build shows in the API, not in the file.
            if checked.elapsed() > Duration::from_secs(5) {
                checked = Instant::now();
                let s = c
                    .call("GET", &format!("/compute/v2.1/servers/{id}"), None)?
                    .json();
                if s["server"]["status"] == "ERROR" {
                    bail!("server {id} went to ERROR: {}", s["server"]["fault"]);
                }
            }
            if t0.elapsed() > Duration::from_secs(p.timeout_secs) {
                let text = std::fs::read(&console).unwrap_or_default();
                let tail = &text[text.len().saturating_sub(6000)..];
                bail!(
                    "no marker in {} within {} s; its end:\n{}",
                    console.display(),
                    p.timeout_secs,
                    String::from_utf8_lossy(tail)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let action_path = format!("/compute/v2.1/servers/{id}/os-instance-actions/{request_id}");
        let active_us = (0..50).find_map(|_| {
            let a = c.call("GET", &action_path, None).ok()?.json();
            let e = &a["instanceAction"]["events"][0];
            let span = micros_of_day(e["finish_time"].as_str()?)?
                - micros_of_day(e["start_time"].as_str()?)?;
            if e["result"] != "Success" {
                return None;
            }
            Some(span.rem_euclid(86_400_000_000))
        });
        let Some(active_us) = active_us else {
            bail!("server {id}'s create was not recorded as finished");
        };
        emit(system, "create_202_ms", "ms", ms(accepted));
        emit(
            system,
            "create_to_active_ms",
            "ms",
            active_us as f64 / 1000.0,
        );
        emit(system, "boot_ms", "ms", ms(booted));
        eprintln!(
            "  {system}: 202 in {:.0} ms, ACTIVE at {:.0} ms, marker at {:.0} ms",
            ms(accepted),
            active_us as f64 / 1000.0,
            ms(booted)
        );
        expect(
            c.call("DELETE", &format!("/compute/v2.1/servers/{id}"), None)?,
            204,
            "server delete",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn action_times_in_microseconds() {
        assert_eq!(micros_of_day("2026-11-23T00:00:01.5"), Some(1_500_000));
        assert_eq!(
            micros_of_day("2026-11-23T01:02:03.000042"),
            Some(3_723_000_042)
        );
        assert_eq!(micros_of_day("2026-11-23T01:02:03"), Some(3_723_000_000));
        assert_eq!(micros_of_day("garbage"), None);
    }

    #[test]
    fn script_boots_directly_around_the_api_phase() {
        let s = script(
            2,
            &BootSetup {
                ctl_port: 8774,
                hostd_port: 8790,
                token: "tok".into(),
                image: "img".into(),
                flavor: "fl".into(),
            },
        );
        assert_eq!(s.matches("measure --system vmm").count(), 2);
        assert!(s.contains("controller_url = \"http://$HOST_ADDR:8774\""));
        assert!(s.contains("listen = \"0.0.0.0:8790\""));
        assert!(s.contains("api-probe --controller $HOST_ADDR:8774 --token tok --image img"));
        let hostd = s.find("$BIN/hostd").unwrap_or(0);
        assert!(s[..hostd].contains("measure") && s[hostd..].contains("measure"));
    }

    #[test]
    fn a_console_tail_finds_the_marker_across_appends() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut tail = ConsoleTail::default();
        assert_eq!(tail.find(&path, b"finished at"), None, "no file yet");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"booting\ncloud-init fini").expect("write");
        assert_eq!(tail.find(&path, b"finished at"), None);
        assert_eq!(tail.find(&path, b"finished at"), None, "nothing new");
        f.write_all(b"shed at 12:00\n").expect("write");
        assert_eq!(tail.find(&path, b"finished at"), Some(19));
        // Only what was appended is kept: a bounded carry, not the file.
        assert!(tail.carry.len() < b"finished at".len());
    }
}
