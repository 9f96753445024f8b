//! storaged: the volumes of one storage host.
//!
//! - [`config`]: the TOML file, checked before anything starts
//! - [`volumes`]: the local-file backend (one sparse file per volume)
//! - [`api`]: the HTTP API the controller drives it with
//! - [`heartbeat`]: registering with the controller and staying registered
//! - [`images`]: fetching an image a volume is made from
//! - [`controller`]: the calls to the controller's internal API

pub mod api;
pub mod config;
pub mod controller;
pub mod heartbeat;
pub mod images;
pub mod volumes;

use std::sync::Arc;

use anyhow::Context;

/// Serves the API and heartbeats until SIGTERM or Ctrl-C.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let volumes = volumes::FileBackend::open(&config.data_dir)
        .with_context(|| format!("opening {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    tracing::info!(addr = %bound, url, data_dir = %config.data_dir.display(), "storaged ready");
    let state = Arc::new(api::State {
        host_id: config.host_id.clone(),
        token: config.token.clone(),
        volumes,
        config: config.clone(),
        fills: Default::default(),
    });
    let beats = tokio::spawn(heartbeat::run(config, url, state.clone()));
    let serve = api::serve(listener, state);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    beats.abort();
    tracing::info!("storaged stopping");
    Ok(())
}
