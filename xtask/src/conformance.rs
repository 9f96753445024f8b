//! `cargo xtask conformance`: OpenStack's own API tests (tempest, pinned in
//! tests/conformance/requirements.txt) against the running all-in-one
//! (`cargo xtask up`), as a new user would run them: pre-provisioned
//! accounts (four projects, a member, a reader, a manager and an admin in
//! each), no dynamic
//! credentials, a `tempest.conf` written from what the cloud offers, the
//! non-admin API tests of the services asked for. Prints passed, failed and
//! skipped per service with every failure and skip reason, and keeps the
//! subunit stream and a JSON summary under target/conformance.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::up::{ADMIN_PASSWORD, CONTROLLER_PORT};

/// What the tempest accounts are called, and their password (set again on
/// every run: these are test accounts of a test cloud).
/// Four projects: tempest takes each test's primary and alternate user
/// (another project's) from the members, two per worker at
/// `--concurrency 2`; the readers and managers come after them in
/// accounts.yaml so that none is taken as an alternate user.
const PROJECTS: [&str; 4] = [
    "conformance-1",
    "conformance-2",
    "conformance-3",
    "conformance-4",
];
const PASSWORD: &str = "conformance-secret-0";

/// A service as `--service` names it, and its tempest package.
const SERVICES: &[(&str, &str)] = &[
    ("identity", "identity"),
    ("image", "image"),
    ("compute", "compute"),
    ("network", "network"),
    ("volume", "volume"),
    ("object", "object_storage"),
];

pub struct Options {
    pub services: Vec<String>,
    /// Also the admin API tests.
    pub admin: bool,
    /// Tests run at once.
    pub concurrency: u32,
}

pub fn run(root: &Path, openstack: &Path, options: &Options) -> Result<()> {
    let started = std::time::Instant::now();
    let packages: Vec<&str> = options
        .services
        .iter()
        .map(|s| {
            SERVICES
                .iter()
                .find(|(name, _)| name == s)
                .map(|(_, package)| *package)
                .with_context(|| {
                    let names: Vec<&str> = SERVICES.iter().map(|(n, _)| *n).collect();
                    format!("--service {s}: one of {}", names.join(", "))
                })
        })
        .collect::<Result<_>>()?;
    let clouds = root.join("target/virga/clouds.yaml");
    if !clouds.exists() || !super::up::port_open(CONTROLLER_PORT) {
        bail!("no all-in-one cloud is running: start `cargo xtask up` in another terminal first");
    }
    let venv = super::install::venv(
        &root.join("tests/conformance/requirements.txt"),
        &root.join("target/tempest-venv"),
        "tempest",
    )?;
    let work = root.join("target/conformance");
    let os = Cli {
        openstack: openstack.to_owned(),
        clouds,
    };
    provision(&os)?;
    let found = Discovered::from(&os)?;
    if !work.join(".stestr.conf").exists() {
        // tempest makes its workspace in a directory of its own.
        let _ = std::fs::remove_dir_all(&work);
        let status = Command::new(venv.join("bin/tempest"))
            .arg("init")
            .arg(&work)
            .status()
            .context("running tempest init")?;
        if !status.success() {
            bail!("tempest init failed");
        }
    }
    std::fs::create_dir_all(work.join("etc"))?;
    std::fs::write(work.join("etc/accounts.yaml"), accounts_yaml())?;
    std::fs::write(work.join("etc/tempest.conf"), tempest_conf(&work, &found))?;
    let regex = format!(r"^tempest\.api\.({})\.", packages.join("|"));
    let stream = work.join("last.subunit");
    let out = std::fs::File::create(&stream)?;
    eprintln!(
        "conformance: tempest run --regex '{regex}' (non-admin: {})",
        !options.admin
    );
    let mut run = Command::new(venv.join("bin/tempest"));
    run.current_dir(&work)
        .args(["run", "--subunit", "--regex", &regex])
        .args(["--concurrency", &options.concurrency.to_string()])
        .arg("--config-file")
        .arg(work.join("etc/tempest.conf"))
        .stdout(out);
    if !options.admin {
        run.args(["--exclude-regex", r"\.admin\."]);
    }
    // tempest exits non-zero when a test fails: the summary says which.
    run.status().context("running tempest")?;
    let summary = Command::new(venv.join("bin/python"))
        .arg(root.join("tests/conformance/summary.py"))
        .arg(&stream)
        .arg(work.join("summary.json"))
        .status()
        .context("summarising the run")?;
    if !summary.success() {
        bail!("summary.py failed on {}", stream.display());
    }
    println!(
        "\nconformance: {} in {:.0?}; the subunit stream is {}, tempest's log {}",
        options.services.join(", "),
        started.elapsed(),
        stream.display(),
        work.join("logs/tempest.log").display()
    );
    Ok(())
}

/// The openstack CLI as the all-in-one's admin.
struct Cli {
    openstack: PathBuf,
    clouds: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.openstack)
            .args(["--os-cloud", "virga"])
            .args(args)
            .env("OS_CLIENT_CONFIG_FILE", &self.clouds)
            .output()
            .context("running openstack")?;
        if !out.status.success() {
            bail!(
                "openstack {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The id of the named resource, if there is one.
    fn id_of(&self, kind: &str, name: &str) -> Option<String> {
        self.run(&[kind, "show", name, "-f", "value", "-c", "id"])
            .ok()
    }
}

/// The accounts: a member, a reader, a manager (tests of project
/// administration ask for one) and an admin in each project (made
/// once; their passwords set again each run). Admins in each project, not
/// only the cloud's one: tempest gives each test class running at once an
/// account of its own, and admin test classes otherwise wait for one
/// another and fail ("Insufficient number of users provided").
fn provision(os: &Cli) -> Result<()> {
    for project in PROJECTS {
        if os.id_of("project", project).is_none() {
            os.run(&["project", "create", project])?;
        }
        for role in ["member", "reader", "manager", "admin"] {
            let user = user_name(project, role);
            if os.id_of("user", &user).is_none() {
                os.run(&["user", "create", "--password", PASSWORD, &user])?;
            } else {
                os.run(&["user", "set", "--password", PASSWORD, &user])?;
            }
            os.run(&["role", "add", "--project", project, "--user", &user, role])?;
        }
        // Each project's own network: servers of its accounts get an
        // address there (tempest is told of it in accounts.yaml).
        let network = network_name(project);
        if os.id_of("network", &network).is_none() {
            os.run(&["network", "create", "--project", project, &network])?;
        }
        let subnet = format!("{network}-subnet");
        if os.id_of("subnet", &subnet).is_none() {
            let n = PROJECTS.iter().position(|p| *p == project).unwrap_or(0);
            let range = format!("10.{}.0.0/24", 200 + n);
            os.run(&[
                "subnet",
                "create",
                "--project",
                project,
                "--network",
                &network,
                "--subnet-range",
                &range,
                &subnet,
            ])?;
        }
        // A router to the public network, for floating IPs.
        let router = format!("{project}-router");
        if os.id_of("network", "public").is_some() && os.id_of("router", &router).is_none() {
            os.run(&["router", "create", "--project", project, &router])?;
            os.run(&["router", "set", "--external-gateway", "public", &router])?;
            os.run(&["router", "add", "subnet", &router, &subnet])?;
        }
        // Servers a failed run left behind go (they count in the quota).
        let leftovers = os.run(&[
            "server",
            "list",
            "--all-projects",
            "--project",
            project,
            "-f",
            "value",
            "-c",
            "ID",
        ])?;
        let leftovers: Vec<&str> = leftovers.lines().filter(|l| !l.is_empty()).collect();
        if !leftovers.is_empty() {
            eprintln!(
                "conformance: deleting {} servers an earlier run left in {project}",
                leftovers.len()
            );
            let mut args = vec!["server", "delete", "--wait"];
            args.extend(leftovers);
            os.run(&args)?;
        }
    }
    Ok(())
}

fn network_name(project: &str) -> String {
    format!("{project}-net")
}

fn user_name(project: &str, role: &str) -> String {
    format!("{project}-{role}")
}

/// tempest's pre-provisioned accounts file.
fn accounts_yaml() -> String {
    let mut yaml = String::new();
    for role in ["member", "reader", "manager"] {
        for project in PROJECTS {
            yaml.push_str(&format!(
                "- username: '{}'\n  project_name: '{project}'\n  password: '{PASSWORD}'\n  roles: ['{role}']\n  resources:\n    network: '{}'\n",
                user_name(project, role),
                network_name(project)
            ));
        }
    }
    for project in PROJECTS {
        yaml.push_str(&format!(
            "- username: '{}'\n  project_name: '{project}'\n  password: '{PASSWORD}'\n  types: ['admin']\n  resources:\n    network: '{}'\n",
            user_name(project, "admin"),
            network_name(project)
        ));
    }
    yaml.push_str(&format!(
        "- username: 'admin'\n  project_name: 'admin'\n  password: '{ADMIN_PASSWORD}'\n  types: ['admin']\n"
    ));
    yaml
}

/// What the running cloud offers, as tempest.conf needs it.
struct Discovered {
    image: String,
    flavor: String,
    flavor_alt: String,
    public_network: Option<String>,
    /// The catalog's service types.
    services: Vec<String>,
    compute_max: String,
    volume_max: Option<String>,
    network_extensions: Vec<String>,
}

impl Discovered {
    fn from(os: &Cli) -> Result<Self> {
        // The bootable disk, not the kernel image: tempest snapshots and
        // backs up its servers, and makes volumes from the image.
        let image = os
            .id_of("image", "virga-test-disk")
            .context("the all-in-one's image virga-test-disk is missing")?;
        let flavor = os.id_of("flavor", "m1.tiny").context("flavor m1.tiny")?;
        let flavor_alt = os.id_of("flavor", "m1.small").context("flavor m1.small")?;
        let public_network = os.id_of("network", "public");
        let services: Vec<String> = os
            .run(&["catalog", "list", "-f", "value", "-c", "Type"])?
            .lines()
            .map(str::to_owned)
            .collect();
        let version = |path: &str| -> Option<String> {
            let text = Command::new("curl")
                .args(["-s", &format!("http://127.0.0.1:{CONTROLLER_PORT}{path}")])
                .output()
                .ok()?;
            let doc: serde_json::Value = serde_json::from_slice(&text.stdout).ok()?;
            let version = doc["version"]["version"].as_str()?;
            (!version.is_empty()).then(|| version.to_owned())
        };
        let compute_max = version("/compute/v2.1/").unwrap_or_else(|| "2.1".into());
        let volume_max = services
            .iter()
            .any(|s| s == "block-storage" || s == "volumev3")
            .then(|| version("/volume/v3/"))
            .flatten();
        let network_extensions = os
            .run(&[
                "extension",
                "list",
                "--network",
                "-f",
                "value",
                "-c",
                "Alias",
            ])
            .map(|out| out.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Discovered {
            image,
            flavor,
            flavor_alt,
            public_network,
            services,
            compute_max,
            volume_max,
            network_extensions,
        })
    }

    fn has(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// tempest.conf. Feature flags say what exists: a flag is on only for what
/// Virga implements, so that a skip always means a missing feature, never
/// a disabled test.
fn tempest_conf(work: &Path, d: &Discovered) -> String {
    let on = |b: bool| if b { "true" } else { "false" };
    let public = d
        .public_network
        .as_deref()
        .map(|id| format!("public_network_id = {id}\nfloating_network_name = public\n"))
        .unwrap_or_default();
    let volume_max = d
        .volume_max
        .as_deref()
        .map(|v| format!("max_microversion = {v}\n"))
        .unwrap_or_default();
    format!(
        r#"[DEFAULT]
log_dir = {logs}
log_file = tempest.log

[auth]
use_dynamic_credentials = false
test_accounts_file = {accounts}
default_credentials_domain_name = Default
create_isolated_networks = false
admin_username = admin
admin_password = {ADMIN_PASSWORD}
admin_project_name = admin
admin_domain_name = Default

[identity]
uri_v3 = http://127.0.0.1:{CONTROLLER_PORT}/identity/v3
auth_version = v3
region = RegionOne

[identity-feature-enabled]
api_v2 = false
api_v3 = true
# Built: application credentials (without access rules). Not built:
# trusts, access rules, password rules (security compliance), project
# tags, external identity providers.
trust = false
application_credentials = true
access_rules = false
security_compliance = false
project_tags = false

[compute]
image_ref = {image}
image_ref_alt = {image}
flavor_ref = {flavor}
flavor_ref_alt = {flavor_alt}
fixed_network_name = private
min_microversion = 2.1
max_microversion = {compute_max}
build_timeout = 300

[compute-feature-enabled]
# Built: resize, snapshots, console output, pause, suspend, stop/start,
# reboot, rebuild, config drives, the serial console, interfaces.
resize = true
snapshot = true
console_output = true
pause = true
suspend = true
config_drive = true
serial_console = true
interface_attach = true
metadata_service = true
# Not built: rescue, shelve, migrations, admin passwords (none is set in
# the guest, so none is returned), password changes, file injection,
# graphical consoles, multiattach, host/server groups' extras.
rescue = false
shelve = false
shelve_migrate = false
live_migration = false
cold_migration = false
block_migration_for_live_migration = false
change_password = false
enable_instance_password = false
personality = false
vnc_console = false
spice_console = false
rdp_console = false
volume_multiattach = false
attach_encrypted_volume = false
cinder_volume_attach = {cinder}
hostname_fqdn_sanitization = false

[image]
container_formats = bare,aki,ari,ami
disk_formats = raw,qcow2,aki,ari,ami

[image-feature-enabled]
api_v2 = true
# Not built: the interoperable import (glance-direct, web-download), image
# locations, multiple stores, caching.
import_image = false
os_glance_reserved = false
manage_locations = false

[network]
{public}project_networks_reachable = false
shared_physical_network = false

[network-feature-enabled]
ipv6 = false
api_extensions = {extensions}

[volume]
{volume_max}
[volume-feature-enabled]
backup = false
extend_attached_volume = false
manage_snapshot = false
manage_volume = false

[service_available]
nova = {nova}
glance = {glance}
neutron = {neutron}
cinder = {cinder}
swift = {swift}

[validation]
run_validation = false
"#,
        logs = work.join("logs").display(),
        accounts = work.join("etc/accounts.yaml").display(),
        image = d.image,
        flavor = d.flavor,
        flavor_alt = d.flavor_alt,
        compute_max = d.compute_max,
        extensions = if d.network_extensions.is_empty() {
            "None".to_owned()
        } else {
            d.network_extensions.join(",")
        },
        nova = on(d.has("compute")),
        glance = on(d.has("image")),
        neutron = on(d.has("network")),
        cinder = on(d.has("block-storage") || d.has("volumev3")),
        swift = on(d.has("object-store")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_a_member_a_reader_a_manager_and_an_admin_per_project_and_the_admin() {
        let yaml = accounts_yaml();
        assert_eq!(yaml.matches("- username:").count(), 17);
        assert_eq!(yaml.matches("types: ['admin']").count(), 5);
        assert_eq!(yaml.matches("roles: ['manager']").count(), 4);
        assert!(
            yaml.rfind("roles: ['member']") < yaml.find("roles: ['reader']")
                && yaml.rfind("roles: ['member']") < yaml.find("roles: ['manager']"),
            "members first"
        );
        assert!(yaml.contains("roles: ['reader']") && yaml.contains("types: ['admin']"));
    }

    #[test]
    fn the_configuration_says_what_the_cloud_offers() {
        let d = Discovered {
            image: "img".into(),
            flavor: "f1".into(),
            flavor_alt: "f2".into(),
            public_network: None,
            services: vec!["compute".into(), "image".into(), "identity".into()],
            compute_max: "2.1".into(),
            volume_max: None,
            network_extensions: Vec::new(),
        };
        let conf = tempest_conf(Path::new("/w"), &d);
        assert!(conf.contains("nova = true") && conf.contains("cinder = false"));
        assert!(conf.contains("max_microversion = 2.1"));
        assert!(conf.contains("test_accounts_file = /w/etc/accounts.yaml"));
        assert!(conf.contains("api_extensions = None"));
    }
}
