//! A stand-in VMM for hostd's tests: the real VMM's control API server
//! (`vmm::api`, the same routes, bodies and errors) in front of a control loop
//! with no KVM and no guest, so hostd's instance lifecycle is tested on any
//! machine. Not for production use.
//!
//! Behaviour is chosen per instance by words on the kernel command line:
//! - `fake.silent`: never serves the control socket (a VMM that hangs while
//!   starting);
//! - `fake.ignore_shutdown`: accepts a shutdown request and goes on running
//!   (a guest that ignores ACPI power button presses);
//! - `fake.crash_after_ms=N`: fails N ms after starting, with status 3 and
//!   an exit line, as a VMM whose guest triple-faulted does;
//! - `fake.reboot_once_after_ms=N`: the first VMM of an instance exits N ms
//!   after starting as the real one does when its guest reboots under
//!   `on_reboot: exit` (a marker in its run directory tells the first).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm::api::{ApiReply, ApiRequest, MetricsReport, VmInfo, VmState};
use vmm::config::{ConfigFile, VmConfig};
use vmm::vmm::VmmEvent;

/// Exits the way the real VMM does: its last line says why.
fn exit_with(code: i32, why: &str) -> ! {
    println!("vmm: exit {code}: {why}");
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Fails before any VM runs, as the real VMM does: a last line without the
/// exit-line prefix.
fn fail(why: String) -> ! {
    println!("vmm: {why}");
    std::process::exit(2);
}

fn echo_console(input: &std::path::Path, output: &std::path::Path) {
    use std::io::Read;
    let (Ok(mut input), Ok(mut output)) = (
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(input),
        std::fs::OpenOptions::new().append(true).open(output),
    ) else {
        return;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n) = input.read(&mut buf) {
        if n == 0 || output.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--version") {
        println!("vmm 0.0.0-fake");
        return;
    }
    let Some(config_path) = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
    else {
        fail("usage: virga-fake-vmm --config FILE".into());
    };
    let file: ConfigFile = std::fs::read(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| fail(format!("invalid configuration: {e}")));
    let host_mib = vmm::config::host_memory_mib().unwrap_or(u64::MAX);
    let mut config = VmConfig::validate(file.clone(), host_mib)
        .unwrap_or_else(|e| fail(format!("invalid configuration: {e}")));
    let rebooted_before = config_path.with_file_name("fake-rebooted").exists();
    let watched = config_path.clone();
    // Gone with the test that made it: its run directory is removed when the
    // test ends, however it ends.
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if !watched.exists() {
            std::process::exit(0);
        }
    });
    let cmdline = file.cmdline.clone().unwrap_or_default();
    let has = |word: &str| cmdline.split_whitespace().any(|w| w == word);
    if let Some(path) = file.serial.as_ref().and_then(|s| s.path.as_ref()) {
        let _ = std::fs::write(path, "fake guest: booted\n");
        // What is typed on the console, the guest echoes, as a tty does.
        if let Some(input) = file.serial.as_ref().and_then(|s| s.input.clone()) {
            let output = path.clone();
            std::thread::spawn(move || echo_console(&input, &output));
        }
    }
    if has("fake.silent") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if let Some(ms) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fake.crash_after_ms="))
        .and_then(|n| n.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            exit_with(3, "guest triple fault (fake)");
        });
    }
    if let Some(ms) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fake.reboot_once_after_ms="))
        .and_then(|n| n.parse::<u64>().ok())
    {
        let marker = config_path.with_file_name("fake-rebooted");
        if std::fs::write(&marker, b"").is_ok() && !rebooted_before {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                exit_with(0, "guest rebooted; exiting (on_reboot: exit)");
            });
        }
    }
    let Some(socket) = file.api_socket.clone() else {
        fail("invalid configuration: no api_socket".into());
    };
    let (to_vmm, events) = std::sync::mpsc::channel();
    let _server = vmm::api::bind(&socket)
        .and_then(|l| l.serve(to_vmm))
        .unwrap_or_else(|e| fail(e.to_string()));
    let started = Instant::now();
    let ignore_shutdown = has("fake.ignore_shutdown");
    let mut state = VmState::Running;
    for event in events {
        let VmmEvent::Api((request, reply)) = event else {
            continue;
        };
        let answer = match request {
            ApiRequest::Describe => ApiReply::Info(Box::new(VmInfo {
                state,
                uptime_ms: started.elapsed().as_millis() as u64,
                boots: 1,
                config: config.clone(),
                rate_limits: Default::default(),
            })),
            ApiRequest::SetState(s) => {
                state = s;
                ApiReply::NoContent
            }
            ApiRequest::Shutdown { .. } => {
                if !ignore_shutdown {
                    // After the answer has gone out.
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(50));
                        exit_with(0, "guest powered off");
                    });
                }
                ApiReply::Accepted
            }
            ApiRequest::Metrics => ApiReply::Metrics(Box::new(MetricsReport {
                uptime_ms: started.elapsed().as_millis() as u64,
                boot_started_monotonic_us: 0,
                vcpu_exits: Default::default(),
                per_vcpu_exits: vec![Default::default(); usize::from(config.vcpus)],
                memory: vmm::metrics::process_memory(),
                guest_memory_kib: u64::from(config.memory_mib) << 10,
            })),
            ApiRequest::SetRateLimit { .. } => ApiReply::NoContent,
            // A guest that lets go of an unplugged NIC at once, or (with
            // fake.ignore_unplug) never.
            ApiRequest::AddNet { mut net, fds } => {
                let id = net
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("net{}", config.nets.len()));
                if config.nets.iter().any(|n| n.id.as_deref() == Some(&id)) {
                    ApiReply::Error(
                        hyper::StatusCode::CONFLICT,
                        format!("a device named {id} exists"),
                    )
                } else if fds.is_empty() {
                    ApiReply::Error(hyper::StatusCode::BAD_REQUEST, "no tap descriptors".into())
                } else {
                    net.id = Some(id.clone());
                    net.fds = vec![0; fds.len()];
                    config.nets.push(net);
                    ApiReply::Device(vmm::api::DeviceInfo {
                        id,
                        pci_slot: Some(9),
                    })
                }
            }
            // As the real VMM: a disk plugged by the API comes as descriptors.
            ApiRequest::AddDisk { disk, fds }
                if fds.is_empty() && disk.path.as_os_str().is_empty() =>
            {
                ApiReply::Error(
                    hyper::StatusCode::BAD_REQUEST,
                    "a disk without a file".into(),
                )
            }
            // Descriptors by position: each sent one used.
            ApiRequest::AddDisk { disk, fds }
                if !disk.fds.is_empty() && disk.fds.len() + disk.backing_fds.len() != fds.len() =>
            {
                ApiReply::Error(
                    hyper::StatusCode::BAD_REQUEST,
                    format!(
                        "{} descriptors sent for fds {:?} and backing_fds {:?}",
                        fds.len(),
                        disk.fds,
                        disk.backing_fds
                    ),
                )
            }
            ApiRequest::AddDisk { mut disk, .. } => {
                let id = disk
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("disk{}", config.disks.len()));
                if config.disks.iter().any(|d| d.id.as_deref() == Some(&id)) {
                    ApiReply::Error(
                        hyper::StatusCode::CONFLICT,
                        format!("a device named {id} exists"),
                    )
                } else {
                    disk.id = Some(id.clone());
                    config.disks.push(*disk);
                    ApiReply::Device(vmm::api::DeviceInfo {
                        id,
                        pci_slot: Some(10),
                    })
                }
            }
            // Grown disks and moves are noted beside the config, one line
            // each ("id bytes", "id descriptors"), for tests to read.
            ApiRequest::ResizeDisk { device, bytes } => {
                note_disk_change(&config, &config_path, "fake-grown", &device, bytes)
            }
            ApiRequest::ReplaceDiskFiles { fds, .. } if fds.is_empty() => {
                ApiReply::Error(hyper::StatusCode::BAD_REQUEST, "no descriptors".into())
            }
            ApiRequest::ReplaceDiskFiles { device, fds, .. } => {
                note_disk_change(&config, &config_path, "fake-moved", &device, fds.len())
            }
            ApiRequest::RemoveDevice(id) => {
                let before = config.nets.len() + config.disks.len();
                if has("fake.ignore_unplug") {
                    ApiReply::Accepted
                } else {
                    config.nets.retain(|n| n.id.as_deref() != Some(&id));
                    config.disks.retain(|d| d.id.as_deref() != Some(&id));
                    if config.nets.len() + config.disks.len() < before {
                        ApiReply::Accepted
                    } else {
                        ApiReply::Error(
                            hyper::StatusCode::NOT_FOUND,
                            format!("no device named {id}"),
                        )
                    }
                }
            }
        };
        let _ = reply.send(answer);
    }
}

/// Notes "`device` `what`" in the file `name` beside the config, for
/// tests to read; a disk the guest does not have is 404, as in the VMM.
fn note_disk_change(
    config: &vmm::config::VmConfig,
    config_path: &std::path::Path,
    name: &str,
    device: &str,
    what: impl std::fmt::Display,
) -> ApiReply {
    if !config.disks.iter().any(|d| d.id.as_deref() == Some(device)) {
        return ApiReply::Error(
            hyper::StatusCode::NOT_FOUND,
            format!("no disk named {device}"),
        );
    }
    use std::io::Write;
    let noted = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config_path.with_file_name(name))
        .and_then(|mut f| writeln!(f, "{device} {what}"));
    match noted {
        Ok(()) => ApiReply::NoContent,
        Err(e) => ApiReply::Error(hyper::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
