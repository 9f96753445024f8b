//! `hostd --config FILE`: the host daemon.
//!
//! Exit status: 0 after SIGTERM or SIGINT (running guests are left running and
//! re-adopted by the next hostd), 1 on a runtime failure, 2 on an invalid
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hostd::api::{self, Api};
use hostd::config::Config;
use hostd::supervisor::Supervisor;

#[derive(Parser)]
#[command(
    version,
    about = "Virga host daemon: runs, supervises and re-adopts VMM processes."
)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: PathBuf,
}

const EXIT_INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostd: invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let vmm_version = hostd::host::vmm_version(&config.vmm_binary);
    let tcp = match config.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        ),
        None => None,
    };
    let unix = match &config.socket {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            }
            let _ = std::fs::remove_file(path);
            Some(
                tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("listening on {}", path.display()))?,
            )
        }
        None => None,
    };
    let sup = Supervisor::start(config.clone())
        .await
        .context("loading instances")?;
    let api = Api::new(sup.clone(), vmm_version);
    if let Some(l) = tcp {
        tracing::info!(addr = %l.local_addr()?, "API on TCP");
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((stream, _)) => api::serve_connection(api.clone(), stream),
                    Err(e) => tracing::warn!("accept: {e}"),
                }
            }
        });
    }
    if let Some(l) = unix {
        tracing::info!(socket = ?config.socket, "API on a Unix socket");
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((stream, _)) => api::serve_connection(api.clone(), stream),
                    Err(e) => tracing::warn!("accept: {e}"),
                }
            }
        });
    }
    if let Some(controller) = config.controller.clone() {
        tokio::spawn(hostd::registration::run(sup.clone(), controller));
    }
    tracing::info!(
        instances = sup.list().len(),
        state_dir = %config.state_dir.display(),
        "hostd ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Guests keep running: their VMMs live in their own sessions and cgroups,
    // and the state file already holds everything the next hostd needs.
    tracing::info!("hostd stopping; instances keep running");
    if let Some(path) = &config.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
