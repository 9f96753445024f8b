//! storaged: the volumes of one storage host.
//!
//! - [`config`]: the TOML file, checked before anything starts
//! - [`volumes`]: the local-file backend (one sparse file per volume)
//! - [`api`]: the HTTP API the controller drives it with
//! - [`heartbeat`]: registering with the controller and staying registered
//! - [`images`]: the Glance images it holds, and fetching one a volume is
//!   made from
//! - [`controller`]: the calls to the controller's internal API
//! - [`exports`], [`nbd`]: volumes served over NBD to other hosts
//! - [`objects`], [`s3`], [`swift`]: the object store, its S3 and Swift APIs

pub mod api;
pub mod config;
pub mod controller;
pub mod exports;
pub mod heartbeat;
pub mod images;
pub mod nbd;
pub mod objects;
pub mod s3;
pub mod swift;
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
    let exports = exports::ExportTable::open(&config.data_dir)
        .with_context(|| format!("opening {}", config.data_dir.display()))?;
    let nbd_listener = tokio::net::TcpListener::bind(config.nbd_listen)
        .await
        .with_context(|| format!("listening for NBD on {}", config.nbd_listen))?;
    let nbd_bound = nbd_listener.local_addr()?;
    let nbd_address = config.nbd_advertise.clone().unwrap_or_else(|| {
        // The advertised URL's host (what other hosts reach us at).
        let host = config
            .advertise_url
            .as_deref()
            .and_then(config::split_url)
            .and_then(|(authority, _)| authority.rsplit_once(':'))
            .map(|(host, _)| host.to_owned())
            .unwrap_or_else(|| bound.ip().to_string());
        format!("{host}:{}", nbd_bound.port())
    });
    tracing::info!(addr = %nbd_bound, advertised = nbd_address, "NBD listener ready");
    let images = images::ImageStore::open(&config.data_dir)
        .with_context(|| format!("opening the images in {}", config.data_dir.display()))?;
    let state = Arc::new(api::State {
        host_id: config.host_id.clone(),
        token: config.token.clone(),
        volumes,
        images,
        config: config.clone(),
        fills: Default::default(),
        exports,
        nbd_address,
        served: Default::default(),
    });
    // The object store, when an API to it is served.
    let objects = match config.s3_listen.is_some() || config.swift_listen.is_some() {
        true => Some(Arc::new(
            objects::ObjectStore::open(&config.data_dir)
                .await
                .with_context(|| {
                    format!("opening the object store in {}", config.data_dir.display())
                })?,
        )),
        false => None,
    };
    let mut apis = Vec::new();
    if let (Some(addr), Some(store)) = (config.s3_listen, &objects) {
        apis.push(tokio::spawn(
            s3_server(&config, addr, store.clone())
                .await
                .context("starting the S3 API")?,
        ));
    }
    if let (Some(addr), Some(store)) = (config.swift_listen, &objects) {
        apis.push(tokio::spawn(
            swift_server(&config, addr, store.clone())
                .await
                .context("starting the Swift API")?,
        ));
    }
    let nbd_server = nbd::Server::new(api::NbdExports(state.clone()), state.served.clone());
    let nbd = tokio::spawn(nbd_server.serve(nbd_listener));
    let beats = tokio::spawn(heartbeat::run(config, url, state.clone()));
    let serve = api::serve(listener, state);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    beats.abort();
    nbd.abort();
    for api in apis {
        api.abort();
    }
    tracing::info!("storaged stopping");
    Ok(())
}

/// Binds the S3 API; the future serves it.
async fn s3_server(
    config: &config::Config,
    addr: std::net::SocketAddr,
    store: Arc<objects::ObjectStore>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let signers = Arc::new(s3::auth::Signers::new(config.clone()));
    let mut builder = s3s::service::S3ServiceBuilder::new(s3::S3Api {
        store: store.clone(),
        signers: signers.clone(),
    });
    builder.set_auth(s3::auth::Auth(signers));
    builder.set_access(s3::Access { store });
    if let Some(domain) = &config.s3_domain {
        builder.set_host(s3::VirtualHosts::new(domain));
    }
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for S3 on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "S3 API ready");
    Ok(async move {
        loop {
            let (socket, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("s3: accepting: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Replies go out as written: a small GET's headers and body
            // must not wait on the client's delayed ACK.
            let _ = socket.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(socket);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!("s3: connection: {e}");
                }
            });
        }
    })
}

/// Binds the Swift API; the future serves it.
async fn swift_server(
    config: &config::Config,
    addr: std::net::SocketAddr,
    store: Arc<objects::ObjectStore>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let api = Arc::new(swift::SwiftApi {
        store,
        tokens: swift::auth::Tokens::new(config.clone()),
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for Swift on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "Swift API ready");
    Ok(async move {
        loop {
            let (socket, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("swift: accepting: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let api = api.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(socket);
                let service = hyper::service::service_fn(move |req| api.clone().handle(req));
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!("swift: connection: {e}");
                }
            });
        }
    })
}
