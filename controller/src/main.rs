//! `controller --config FILE`: Virga's control API.
//! `controller --config FILE host-token HOST_ID`: prints the token a host's
//! hostd uses (its `token` and `controller_token`), derived from the
//! configured `hostd_secret`.
//!
//! Exit status: 0 after SIGTERM or SIGINT, 1 on a runtime failure (database
//! unreachable, port taken), 2 on an invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use controller::api::{self, App};
use controller::background::{Background, Run, Task};
use controller::compute::actions::Actions;
use controller::compute::console_tokens::ConsoleTokens;
use controller::compute::flavors::Flavors;
use controller::compute::hosts::Hosts;
use controller::compute::keypairs::Keypairs;
use controller::compute::quotas::Quotas;
use controller::compute::scheduler::Scheduler;
use controller::compute::servers::Servers;
use controller::compute::service;
use controller::config::Config;
use controller::identity::Identity;
use controller::image::Images;
use controller::store::Store;

#[derive(Parser)]
#[command(
    version,
    about = "Virga controller: the OpenStack-compatible control API."
)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the token of one host (for its hostd.toml) and exit.
    HostToken {
        /// The host's `host_id`.
        host_id: String,
    },
}

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
            eprintln!("controller: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::HostToken { host_id }) = args.command {
        return match config.hostd_secret.as_deref() {
            Some(secret) => {
                println!("{}", hostd_proto::token::for_host(secret, &host_id));
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("controller: no hostd_secret in {}", args.config.display());
                ExitCode::from(2)
            }
        };
    }
    // Before any thread exists: it edits the environment.
    let inherited = match inherited_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("controller: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, inherited: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store = Store::open(&config.database_url)
        .await
        .context("opening the database")?;
    let identity = Identity::new(store.clone(), config.token_ttl);
    identity
        .bootstrap(&config.bootstrap)
        .await
        .context("bootstrapping the admin identity")?;
    let images = Images::new(store.clone(), config.state_dir.join("images"))
        .with_context(|| format!("creating {}", config.state_dir.join("images").display()))?;
    let listener = match inherited {
        Some(l) => tokio::net::TcpListener::from_std(l).context("the inherited listener")?,
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?,
    };
    tracing::info!(addr = %listener.local_addr()?, public_url = %config.public_url, "controller ready");
    let policy = config.scheduler.clone();
    let app = Arc::new_cyclic(|me| App {
        config,
        identity,
        flavors: Flavors::new(store.clone()),
        hosts: Hosts::new(store.clone()),
        images,
        keypairs: Keypairs::new(store.clone()),
        server_groups: controller::compute::server_groups::ServerGroups::new(store.clone()),
        aggregates: controller::compute::aggregates::Aggregates::new(store.clone()),
        migrations: controller::compute::migrations::Migrations::new(store.clone()),
        nic_requests: controller::compute::nics::NicRequests::new(store.clone()),
        network: controller::network::service::NetworkService::new(store.clone()),
        volumes: controller::volume::service::VolumeService::new(store.clone()),
        console_tokens: ConsoleTokens::new(store.clone()),
        quotas: Quotas::new(store.clone()),
        servers: Servers::new(store.clone()),
        actions: Actions::new(store.clone()),
        store_engine: store.engine,
        scheduler: Scheduler::new(store.clone(), policy),
        background: Background::new(background_tasks()),
        me: me.clone(),
    });
    // A SQLite database has one controller: whatever was in flight died
    // with its last run. PostgreSQL may be shared, so there the periodic
    // sweep of the state sync decides by age.
    if app.owns_its_database() {
        service::create::resume(&app, i64::MAX).await;
        service::sync::expire_stale(&app, i64::MAX).await;
        match app.images.recover_interrupted_uploads().await {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(
                    ?ids,
                    "uploads interrupted by a stop: images back to queued, their bytes removed"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!("recovering interrupted uploads: {e}"),
        }
        let resumer = app.clone();
        tokio::spawn(async move { service::delete::resume(&resumer, i64::MAX).await });
    }
    app.background.start(&app);
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => api::serve_connection(app.clone(), stream),
                Err(e) => tracing::warn!("accept: {e}"),
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = accept => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("controller stopping");
    Ok(())
}

/// The listening socket handed over by whoever started the controller, as
/// systemd's socket activation does (`LISTEN_FDS=1`, the socket as descriptor
/// 3, `LISTEN_PID` naming this process when set); None when there is none.
/// Then the port is the starter's: clients may connect before the controller
/// is up (they wait in the backlog), and a restart never loses the port.
fn inherited_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    const FIRST_FD: i32 = 3;
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(None); // meant for another process
        }
    }
    // Not for the controller's own children.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    match count.trim().parse::<u32>() {
        Ok(1) => {}
        Ok(0) => return Ok(None),
        _ => anyhow::bail!("LISTEN_FDS={count}: the controller takes exactly one listening socket"),
    }
    // SAFETY: by the socket-activation protocol descriptor 3 is a socket
    // handed to this process and owned by nothing else in it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(FIRST_FD) };
    let addr = listener
        .local_addr()
        .context("LISTEN_FDS: descriptor 3 is not a TCP socket")?;
    listener
        .set_nonblocking(true)
        .context("LISTEN_FDS: descriptor 3")?;
    tracing::info!(%addr, "listening on the inherited socket");
    Ok(Some(listener))
}

/// Every reconciler: compute's, the volumes', and the purge of expired tokens.
fn background_tasks() -> Vec<Task> {
    let mut tasks = service::sync::tasks();
    tasks.extend(controller::volume::reconcile::tasks());
    tasks.push(Task {
        name: "token_purge",
        period: std::time::Duration::from_secs(3600),
        run: |app| -> Run {
            Box::pin(async move {
                match app.identity.purge_expired().await {
                    Ok(n) => format!("{n} tokens expired a day ago forgotten"),
                    Err(e) => format!("purging expired tokens: {e}"),
                }
            })
        },
    });
    tasks
}
