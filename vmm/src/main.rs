//! `vmm`: boots one guest from a kernel, an optional initramfs and a command line.
//!
//! Exit status: 0 when the guest powers off, reboots (with `on_reboot: exit`) or is
//! shut down through the API; 1 on a guest triple fault or a KVM/VMM error; 2 on an
//! invalid configuration, before any VM is created; 159 when a thread made a
//! system call its seccomp filter forbids. Once a VM ran, the last line on
//! stderr is `vmm: exit CODE: WHAT HAPPENED`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::config::{ConfigFile, RebootPolicy, SerialConfig, SerialMode, VmConfig};
use vmm::console::Console;
use vmm::vmm::{Vmm, VmmEvent};

#[derive(Parser)]
#[command(
    version,
    about = "Virga's virtual machine monitor: boots one KVM guest."
)]
struct Args {
    /// JSON configuration file; flags override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel: an ELF vmlinux (PVH entry when present) or a bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) loaded for the kernel.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long, visible_alias = "memory")]
    memory_mib: Option<u32>,
    /// Serial console: stdout, off, pty, or file:PATH.
    #[arg(long, value_parser = parse_serial)]
    serial: Option<SerialConfig>,
    /// Serve the control API on this Unix socket.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// What a guest reboot does: exit or restart.
    #[arg(long, value_parser = parse_reboot)]
    on_reboot: Option<RebootPolicy>,
    /// Leave out the virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// A virtio-blk disk: path=FILE[,readonly=on][,serial=S][,direct=off][,queues=N].
    /// Repeat for more disks; replaces the config file's disks.
    #[arg(long = "disk")]
    disks: Vec<vmm::config::DiskConfig>,
    /// A virtio-net NIC: tap=NAME or fd=N, then [,mac=MAC][,vhost=auto|on|off]. Repeat for more;
    /// replaces the config file's NICs.
    #[arg(long = "net")]
    nets: Vec<vmm::config::NetConfig>,
    /// seccomp filters per thread: enforce (a forbidden system call ends the
    /// VMM with status 159), log (the kernel logs it; for diagnosis) or off.
    #[arg(long, env = "VIRGA_VMM_SECCOMP")]
    seccomp: Option<vmm::seccomp::SeccompMode>,
    /// Run jailed as UID:GID (own mount namespace holding only this VM's files
    /// and devices; see the jail module): UID:GID[,root=DIR]. Needs root to start.
    #[arg(long, env = "VIRGA_VMM_JAIL")]
    jail: Option<vmm::jail::JailConfig>,
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    let mode = |mode| SerialConfig {
        mode,
        path: None,
        input: None,
    };
    match s {
        "stdout" => Ok(mode(SerialMode::Stdout)),
        "off" => Ok(mode(SerialMode::Off)),
        "pty" => Ok(mode(SerialMode::Pty)),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialConfig {
                mode: SerialMode::File,
                path: Some(path.into()),
                input: None,
            }),
            _ => Err("expected stdout, off, pty or file:PATH".into()),
        },
    }
}

fn parse_reboot(s: &str) -> Result<RebootPolicy, String> {
    match s {
        "exit" => Ok(RebootPolicy::Exit),
        "restart" => Ok(RebootPolicy::Restart),
        _ => Err("expected exit or restart".into()),
    }
}

impl Args {
    fn into_config_file(self) -> (Option<PathBuf>, ConfigFile) {
        (
            self.config,
            ConfigFile {
                kernel: self.kernel,
                initramfs: self.initramfs,
                cmdline: self.cmdline,
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
                serial: self.serial,
                api_socket: self.api_socket,
                on_reboot: self.on_reboot,
                rng: self.no_rng.then_some(false),
                disks: (!self.disks.is_empty()).then_some(self.disks),
                nets: (!self.nets.is_empty()).then_some(self.nets),
                seccomp: self.seccomp,
                jail: self.jail,
                smbios: None,
            },
        )
    }
}

const EXIT_INVALID_CONFIG: u8 = 2;
use vmm::EXIT_LINE;

fn load_config(args: Args) -> Result<VmConfig, String> {
    let (path, flags) = args.into_config_file();
    let file = match path {
        Some(p) => ConfigFile::from_path(&p).map_err(|e| e.to_string())?,
        None => ConfigFile::default(),
    };
    let host_mib =
        vmm::config::host_memory_mib().map_err(|e| format!("reading host memory: {e}"))?;
    VmConfig::validate(file.overlay(flags), host_mib).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Where a boot's setup time goes, at debug level (RUST_LOG=vmm=debug).
    let started = std::time::Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let config = match load_config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "configuration loaded");
    vmm::seccomp::set_mode(config.seccomp);
    if let Err(e) = vmm::seccomp::install_sigsys_handler() {
        eprintln!("vmm: {e}");
        return ExitCode::FAILURE;
    }
    let mut config = config;
    // What is opened once is opened before the jail: the console and the API
    // socket live where the jail does not reach.
    let console = match Console::open(&config.serial) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm: invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let api = match &config.api_socket {
        Some(path) => match vmm::api::bind(path) {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("vmm: invalid configuration: {e}");
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
        },
        None => None,
    };
    let mut _taps = Vec::new();
    if let Some(jail) = config.jail.clone() {
        let entered = vmm::jail::open_taps(&mut config).and_then(|taps| {
            _taps = taps;
            let contents = vmm::jail::Contents::of(&mut config)?;
            vmm::jail::enter(&jail, &contents)
        });
        if let Err(e) = entered {
            eprintln!("vmm: invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    }

    // Threads start only now: each installs its own seccomp filter.
    console.start();
    if let Some(pty) = console.pty_path() {
        eprintln!("vmm: serial console on {pty}");
    }
    if let Err(e) = vmm::vcpu::register_kick_signal() {
        eprintln!("vmm: installing the vCPU kick signal handler: {e}");
        return ExitCode::FAILURE;
    }

    let (sender, events) = std::sync::mpsc::channel::<VmmEvent>();
    let _api = match api.map(|listener| listener.serve(sender.clone())) {
        Some(Ok(server)) => Some(server),
        Some(Err(e)) => {
            eprintln!("vmm: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };

    tracing::debug!(elapsed = ?started.elapsed(), "console and control API started");
    // From here on the control loop runs under its filter (the threads
    // started above installed their own).
    if let Err(e) = vmm::seccomp::apply(vmm::seccomp::ThreadKind::Control) {
        eprintln!("{EXIT_LINE}1: {e}");
        return ExitCode::FAILURE;
    }
    tracing::debug!(elapsed = ?started.elapsed(), "control thread's seccomp filter applied");
    // One last line, always: a supervisor that re-adopted this process (and so
    // cannot wait for its status) reads it to tell an exit from a crash.
    match Vmm::new(config, console, events, sender).run() {
        Ok(outcome) => {
            let code = outcome.exit_code();
            eprintln!("{EXIT_LINE}{code}: {}", outcome.describe());
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("{EXIT_LINE}1: {e}");
            ExitCode::FAILURE
        }
    }
}
