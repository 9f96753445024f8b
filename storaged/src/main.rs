//! Virga storage daemon: keeps this host's block volumes and serves them to
//! the controller's volume service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, default_value = "/etc/virga/storaged.toml")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // s3s logs every refused request (a bad signature, an
                // absent key) as an ERROR; storaged logs its own failures.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = storaged::config::Config::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(storaged::run(config))
}
