//! storaged's HTTP API, for the controller (its calls carry this host's
//! token): the volume and image calls `storaged_proto` lists. File work runs
//! on the blocking pool; JSON bodies are small, read up to [`MAX_BODY`];
//! image data streams both ways. An image's raw data is also given to
//! whoever holds the controller's ticket for it (hosts fetching an image).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use storaged_proto::{CreateSnapshot, CreateVolume, Export, ExtendVolume, Pending, VolumeSource};

use crate::images::{ImageError, ImageStore};
use crate::volumes::{FileBackend, Made, VolumeError};

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e| match e {}).boxed()
}

const MAX_BODY: usize = 64 << 10;

pub struct State {
    /// This storage host's name: volumes are exported to it as files.
    pub host_id: String,
    pub token: String,
    pub volumes: FileBackend,
    pub images: ImageStore,
    /// Where images are fetched from (the controller, with this token).
    pub config: crate::config::Config,
    /// Volumes being filled from an image, or whose fill failed (told to
    /// the next call, then forgotten).
    pub fills: Mutex<HashMap<String, Fill>>,
    /// Volumes served over NBD to other hosts.
    pub exports: crate::exports::ExportTable,
    /// `HOST:PORT` other hosts reach the NBD listener at.
    pub nbd_address: String,
    /// The volumes the NBD server has open: moved onto their new files
    /// after a snapshot or an extend.
    pub served: Arc<crate::nbd::OpenVolumes>,
}

/// What an NBD export name opens: its volume's files, while both exist.
pub struct NbdExports(pub Arc<State>);

impl crate::nbd::Exports for NbdExports {
    fn lookup(&self, name: &str) -> Option<(String, storaged_proto::Connection)> {
        let (volume, _host) = self.0.exports.lookup(name)?;
        let files = self.0.volumes.files(&volume).ok()?;
        Some((volume, files))
    }
}

#[derive(Clone, Debug)]
pub enum Fill {
    Running,
    Failed(String),
}

/// Serves connections from `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn made_status(made: Made) -> StatusCode {
    match made {
        Made::New => StatusCode::CREATED,
        Made::Existing => StatusCode::OK,
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    reply(
        status,
        &serde_json::json!({ "error": { "message": message } }),
    )
}

/// Whether the request carries `token` as its bearer token (compared in
/// constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("the body: {e}")))
}

fn volume_error(e: &VolumeError) -> Response<Body> {
    let status = match e {
        VolumeError::BadId(_)
        | VolumeError::BadSize(_)
        | VolumeError::SmallerThanSource { .. }
        | VolumeError::Unsupported(_) => StatusCode::BAD_REQUEST,
        VolumeError::NotFound(_) | VolumeError::SnapshotNotFound(_) => StatusCode::NOT_FOUND,
        VolumeError::Exists { .. }
        | VolumeError::SnapshotExists { .. }
        | VolumeError::Shrink { .. }
        | VolumeError::TooDeep(_) => StatusCode::CONFLICT,
        VolumeError::Io { .. } | VolumeError::Damaged { .. } | VolumeError::Export(_) => {
            tracing::error!("{e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, &e.to_string())
}

/// Runs `f` on the volumes, off the async threads.
async fn blocking<T: Send + 'static>(
    state: &Arc<State>,
    f: impl FnOnce(&FileBackend) -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, Response<Body>> {
    let state = state.clone();
    match tokio::task::spawn_blocking(move || f(&state.volumes)).await {
        Ok(r) => r.map_err(|e| volume_error(&e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

/// Moves volume `v`'s NBD clients, if it has any, onto its files as they
/// are now (a snapshot froze the old ones; an extend grew them). Before
/// the call is answered: a snapshot is not taken, nor an extend done,
/// until nothing writes the old files or serves the old size.
fn serve_as_now(state: &State, v: &str) -> Result<(), VolumeError> {
    let files = state.volumes.files(v)?;
    state
        .served
        .reopen(v, &files)
        .map_err(|source| VolumeError::Io {
            path: std::path::PathBuf::from(&files.path),
            source,
        })
}

/// A volume from an image: made (200), or its fill started or under way
/// (202), or the failure of the last one (409, once).
async fn fill_from_image(
    state: &Arc<State>,
    id: String,
    size_gib: u64,
    image: String,
) -> Result<Response<Body>, Response<Body>> {
    if !storaged_proto::is_volume_id(&image) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("{image:?} is not an image id"),
        ));
    }
    let look = id.clone();
    if let Some(info) = blocking(state, move |b| b.info(&look)).await? {
        return if info.size_gib == size_gib {
            Ok(reply(StatusCode::OK, &info))
        } else {
            Err(volume_error(&VolumeError::Exists {
                id,
                have: info.size_gib,
                want: size_gib,
            }))
        };
    }
    let pending = Pending {
        id: id.clone(),
        pending: format!("filling from image {image}"),
    };
    {
        let mut fills = state.fills.lock().unwrap_or_else(|e| e.into_inner());
        match fills.get(&id).cloned() {
            Some(Fill::Running) => return Ok(reply(StatusCode::ACCEPTED, &pending)),
            Some(Fill::Failed(why)) => {
                fills.remove(&id);
                return Err(error(StatusCode::CONFLICT, &why));
            }
            None => {
                fills.insert(id.clone(), Fill::Running);
            }
        }
    }
    let state = state.clone();
    tokio::spawn(async move {
        let outcome = fill(&state, &id, size_gib, &image).await;
        let mut fills = state.fills.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                fills.remove(&id);
                tracing::info!(volume = id, image, "volume filled from the image");
            }
            Err(why) => {
                tracing::warn!(volume = id, image, "{why}");
                fills.insert(id, Fill::Failed(why));
            }
        }
    });
    Ok(reply(StatusCode::ACCEPTED, &pending))
}

async fn fill(state: &Arc<State>, id: &str, size_gib: u64, image: &str) -> Result<(), String> {
    // An image this host holds: the volume starts as it, in constant time.
    if let Ok(held) = state.images.raw_path(image) {
        let (s, v) = (state.clone(), id.to_owned());
        let made =
            tokio::task::spawn_blocking(move || s.volumes.from_image_file(&v, &held, size_gib))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        if made.is_some() {
            return Ok(());
        }
    }
    let dest = state.volumes.fetch_path(id).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&dest);
    let max = size_gib.saturating_mul(1 << 30);
    if let Err(e) = crate::images::fetch::fetch(&state.config, image, &dest, max).await {
        let _ = std::fs::remove_file(&dest);
        return Err(e);
    }
    let (state, id) = (state.clone(), id.to_owned());
    tokio::task::spawn_blocking(move || state.volumes.adopt(&id, &dest, size_gib))
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn image_error(e: &ImageError) -> Response<Body> {
    use virga_imagefile::UploadError;
    let status = match e {
        ImageError::BadId(_) => StatusCode::BAD_REQUEST,
        ImageError::NotFound(_) => StatusCode::NOT_FOUND,
        ImageError::Receive(UploadError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        ImageError::Receive(UploadError::Body(_) | UploadError::Format(_)) => {
            StatusCode::BAD_REQUEST
        }
        ImageError::Receive(UploadError::Io(_)) | ImageError::Io(_) => {
            tracing::error!("{e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, &e.to_string())
}

/// The value of `key` in a request's query, decoded.
fn query_value(req: &Request<Incoming>, key: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Whether the request carries a valid ticket for image `id`'s raw data.
fn ticketed(req: &Request<Incoming>, token: &str, id: &str) -> bool {
    let (Some(expires), Some(ticket)) = (
        query_value(req, "expires").and_then(|e| e.parse::<u64>().ok()),
        query_value(req, "ticket"),
    ) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let subject = storaged_proto::image_ticket_subject(id);
    hostd_proto::token::ticket_valid(token, &subject, expires, now, &ticket)
}

/// Stores an image's data from the request body.
async fn put_image(state: &Arc<State>, id: &str, req: Request<Incoming>) -> Response<Body> {
    let Some(max_bytes) = query_value(&req, "max_bytes").and_then(|m| m.parse::<u64>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "max_bytes: required, a number");
    };
    let disk_format = query_value(&req, "disk_format").unwrap_or_default();
    let sparse = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(hostd_proto::sparse::is_media_type);
    let encoding = match sparse {
        true => virga_imagefile::Encoding::Sparse,
        false => virga_imagefile::Encoding::Plain,
    };
    let started = std::time::Instant::now();
    match state
        .images
        .receive(id, req.into_body(), &disk_format, encoding, max_bytes)
        .await
    {
        Ok(stored) => {
            tracing::info!(image = id, bytes = stored.size, took = ?started.elapsed(), "image stored");
            reply(StatusCode::CREATED, &stored)
        }
        Err(e) => image_error(&e),
    }
}

/// Sends an image's data: as uploaded, or its raw disk as a sparse stream.
async fn get_image(state: &Arc<State>, id: &str, raw: bool) -> Response<Body> {
    let opened = match raw {
        true => state.images.open_raw(id),
        false => state.images.open_data(id),
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) => return image_error(&e),
    };
    let (body, len, content_type) = if raw {
        match virga_imagefile::serve::sparse(file).await {
            Ok((body, len)) => (body, Some(len), hostd_proto::sparse::CONTENT_TYPE),
            Err(e) => return image_error(&ImageError::Io(e)),
        }
    } else {
        let (body, len) = virga_imagefile::serve::plain(tokio::fs::File::from_std(file)).await;
        (body, len, "application/octet-stream")
    };
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Some(len) = len {
        r.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            hyper::header::HeaderValue::from(len),
        );
    }
    r
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    if let (&Method::GET, ["v1", "images", image, "raw"]) = (&method, segments.as_slice()) {
        if !authorized(&req, &state.token) && !ticketed(&req, &state.token, image) {
            return Ok(error(
                StatusCode::FORBIDDEN,
                "missing, wrong or expired ticket",
            ));
        }
        return Ok(get_image(&state, image, true).await);
    }
    if !authorized(&req, &state.token) {
        return Ok(error(StatusCode::UNAUTHORIZED, "missing or wrong token"));
    }
    let id = |s: &str| s.to_owned();
    let answer = match (method, segments.as_slice()) {
        (Method::PUT, ["v1", "images", image]) => Ok(put_image(&state, image, req).await),
        (Method::GET, ["v1", "images", image, "file"]) => Ok(get_image(&state, image, false).await),
        (Method::DELETE, ["v1", "images", image]) => match state.images.delete(image).await {
            Ok(()) => Ok(no_content()),
            Err(e) => Err(image_error(&e)),
        },
        (Method::GET, ["v1", "volumes"]) => blocking(&state, |v| v.list())
            .await
            .map(|list| reply(StatusCode::OK, &list)),
        (Method::PUT, ["v1", "volumes", v]) => {
            let v = id(v);
            match body::<CreateVolume>(req).await {
                Err(r) => Err(r),
                Ok(CreateVolume {
                    size_gib,
                    source: Some(VolumeSource::Image(image)),
                }) => fill_from_image(&state, v, size_gib, image).await,
                Ok(c) => blocking(&state, move |b| b.create(&v, c.size_gib, c.source.as_ref()))
                    .await
                    .map(|(info, made)| reply(made_status(made), &info)),
            }
        }
        (Method::GET, ["v1", "volumes", v]) => {
            let v = id(v);
            let missing = error(StatusCode::NOT_FOUND, &format!("volume {v} does not exist"));
            blocking(&state, move |b| b.info(&v))
                .await
                .map(|info| match info {
                    Some(info) => reply(StatusCode::OK, &info),
                    None => missing,
                })
        }
        (Method::POST, ["v1", "volumes", v, "extend"]) => {
            let v = id(v);
            match body::<ExtendVolume>(req).await {
                Err(r) => Err(r),
                Ok(e) => {
                    let st = state.clone();
                    blocking(&state, move |b| {
                        let info = b.extend(&v, e.size_gib)?;
                        serve_as_now(&st, &v)?;
                        Ok(info)
                    })
                    .await
                    .map(|info| reply(StatusCode::OK, &info))
                }
            }
        }
        (Method::POST, ["v1", "volumes", v, "export"]) => {
            let v = id(v);
            match body::<Export>(req).await {
                Err(r) => Err(r),
                Ok(e) if e.host_id.is_empty() || e.host_id.len() > 255 => Err(error(
                    StatusCode::BAD_REQUEST,
                    "host_id: 1 to 255 characters",
                )),
                // This host: the files. Another: an NBD export of the volume.
                Ok(e) if e.host_id == state.host_id => blocking(&state, move |b| b.files(&v))
                    .await
                    .map(|c| reply(StatusCode::OK, &c)),
                Ok(e) => {
                    let st = state.clone();
                    let exported = blocking(&state, move |b| {
                        b.files(&v)?;
                        st.exports.export(&v, &e.host_id).map_err(VolumeError::from)
                    })
                    .await;
                    exported.map(|name| {
                        let c = storaged_proto::Connection {
                            nbd: Some(storaged_proto::NbdExport {
                                address: state.nbd_address.clone(),
                                export: name,
                            }),
                            ..Default::default()
                        };
                        reply(StatusCode::OK, &c)
                    })
                }
            }
        }
        (Method::DELETE, ["v1", "volumes", v, "exports", host]) => {
            let (v, host) = (id(v), host.to_string());
            let st = state.clone();
            blocking(&state, move |_| {
                st.exports
                    .unexport(&v, Some(&host))
                    .map_err(VolumeError::from)
            })
            .await
            .map(|()| no_content())
        }
        (Method::DELETE, ["v1", "volumes", v]) => {
            let v = id(v);
            let st = state.clone();
            blocking(&state, move |b| {
                b.delete(&v)?;
                st.exports.unexport(&v, None).map_err(VolumeError::from)
            })
            .await
            .map(|()| no_content())
        }
        (Method::PUT, ["v1", "snapshots", s]) => {
            let s = id(s);
            match body::<CreateSnapshot>(req).await {
                Err(r) => Err(r),
                Ok(c) => {
                    let st = state.clone();
                    blocking(&state, move |b| {
                        let taken = b.snapshot(&s, &c.volume_id, c.in_use)?;
                        serve_as_now(&st, &c.volume_id)?;
                        Ok(taken)
                    })
                    .await
                    .map(|(info, made)| reply(made_status(made), &info))
                }
            }
        }
        (Method::POST, ["v1", "snapshots", s, "settle"]) => {
            let s = id(s);
            blocking(&state, move |b| b.settle(&s))
                .await
                .map(|()| no_content())
        }
        (Method::GET, ["v1", "snapshots", s]) => {
            let s = id(s);
            let missing = error(
                StatusCode::NOT_FOUND,
                &format!("snapshot {s} does not exist"),
            );
            blocking(&state, move |b| b.snapshot_info(&s))
                .await
                .map(|info| match info {
                    Some(info) => reply(StatusCode::OK, &info),
                    None => missing,
                })
        }
        (Method::DELETE, ["v1", "snapshots", s]) => {
            let s = id(s);
            blocking(&state, move |b| b.delete_snapshot(&s))
                .await
                .map(|()| no_content())
        }
        _ => Err(error(StatusCode::NOT_FOUND, "no such resource")),
    };
    Ok(answer.unwrap_or_else(|r| r))
}
