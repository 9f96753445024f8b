//! The image service: what Glance's API means, between its HTTP handlers
//! (`api::image`, which parse and render) and the store ([`super::Images`]).
//! Every entry point takes the caller and returns an [`ImageError`], which the
//! handlers render in Glance's error shape.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use serde_json::Value as Json;
use virga_imagefile::Encoding;

use super::data::{self, Opened};
use super::{Field, Image, CONTAINER_FORMATS, DISK_FORMATS, VISIBILITIES};
use crate::app::App;
use crate::identity::{now, Auth};
use crate::store::StoreError;

/// Why an image request failed, in Glance's words.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The image's bytes cannot be read.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_found(id: &str) -> ImageError {
    ImageError::NotFound(format!("No image found with ID {id}"))
}

/// Fields a create or patch may set; everything else is a free-form property.
const SETTABLE: &[&str] = &[
    "name",
    "visibility",
    "protected",
    "min_disk",
    "min_ram",
    "tags",
    "disk_format",
    "container_format",
];
const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "owner",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "os_hidden",
];

/// The image if the caller may see it; NotFound otherwise (never Forbidden:
/// a private image's existence is not disclosed).
pub async fn visible(app: &App, auth: &Auth, id: &str) -> Result<Image, ImageError> {
    let project = auth.project_id().unwrap_or_default();
    match app.images.get(id).await? {
        Some(i) if app.images.visible_to(&i, project, auth.is_admin()).await? => Ok(i),
        _ => Err(not_found(id)),
    }
}

/// The caller must own the image (or be an admin) to change it.
pub async fn owned(app: &App, auth: &Auth, id: &str) -> Result<Image, ImageError> {
    let image = visible(app, auth, id).await?;
    if image.owner != auth.project_id().unwrap_or_default() && !auth.is_admin() {
        return Err(ImageError::Forbidden(
            "You are not permitted to modify this image.".into(),
        ));
    }
    Ok(image)
}

/// A page of images, and the marker of the next page if there is one.
pub struct Page {
    pub images: Vec<Image>,
    pub next: Option<(String, usize)>,
}

/// The images the caller may see, filtered by Glance's query parameters
/// (`id=in:`, `name`, `visibility`, `status`, `owner`, the formats, `tag`)
/// and paged by `marker` and `limit`.
pub async fn list(
    app: &App,
    auth: &Auth,
    q: &BTreeMap<String, String>,
) -> Result<Page, ImageError> {
    let project = auth.project_id().unwrap_or_default();
    let all = app.images.list().await?;
    // Images shared with the caller's project: listed once accepted, or
    // as `member_status` asks (Glance's rule).
    let shared = app.images.memberships(project).await?;
    let member_status = q.get("member_status").map_or("accepted", String::as_str);
    let member_of = |i: &Image| {
        i.visibility == "shared"
            && shared
                .get(&i.id)
                .is_some_and(|s| member_status == "all" || s == member_status)
    };
    let ids: Option<Vec<&str>> = q
        .get("id")
        .and_then(|v| v.strip_prefix("in:"))
        .map(|v| v.split(',').collect());
    let names: Option<Vec<&str>> = q
        .get("name")
        .map(|v| v.strip_prefix("in:").unwrap_or(v).split(',').collect());
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let mut images: Vec<Image> = all
        .into_iter()
        .filter(|i| i.visible_to(project, auth.is_admin()) || member_of(i))
        // Admins list their own and public images unless they ask for all.
        .filter(|i| match q.get("visibility").map(String::as_str) {
            Some("all") | None if !auth.is_admin() => true,
            Some("all") => true,
            None => i.owner == project || i.visibility == "public" || member_of(i),
            Some(v) => i.visibility == v,
        })
        .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(&i.id.as_str())))
        .filter(|i| names.as_ref().is_none_or(|n| n.contains(&i.name.as_str())))
        .filter(|i| q.get("tag").is_none_or(|t| i.tags.contains(t)))
        .filter(|i| size_within(i, q))
        // status, owner, disk_format, properties...
        .filter(|i| fields_match(i, q))
        .collect();
    let order = sort_order(q)?;
    images.sort_by(|a, b| {
        order
            .iter()
            .map(|(key, descending)| {
                let o = a.field(key).cmp(&b.field(key));
                if *descending {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some(marker) = q.get("marker") {
        match images.iter().position(|i| &i.id == marker) {
            Some(p) => images.drain(..=p).for_each(drop),
            None => return Err(ImageError::BadRequest(format!("marker {marker} not found"))),
        }
    }
    let more = images.len() > limit;
    images.truncate(limit);
    let next = more
        .then(|| images.last().map(|last| (last.id.clone(), limit)))
        .flatten();
    Ok(Page { images, next })
}

/// Query parameters of an image list that are not field filters: paging,
/// sorting, and the filters with a syntax of their own.
const LIST_CONTROLS: &[&str] = &[
    "limit",
    "marker",
    "sort",
    "sort_key",
    "sort_dir",
    "member_status",
    "visibility",
    "id",
    "name",
    "tag",
    "size_min",
    "size_max",
    "created_at",
    "updated_at",
];

/// Any other parameter filters on the image's field or property of that
/// name, as Glance does (`?image_type=backup&instance_uuid=...`: properties
/// are flattened into the image): the value must be equal.
fn fields_match(image: &Image, q: &BTreeMap<String, String>) -> bool {
    q.iter()
        .filter(|(k, _)| !LIST_CONTROLS.contains(&k.as_str()))
        .all(|(k, want)| match image.field(k) {
            Field::Text(v) => v == want,
            Field::Bool(b) => want.as_str() == if b { "true" } else { "false" },
            Field::Int(n) => want.parse() == Ok(n),
            Field::Unset => false,
        })
}

fn size_within(image: &Image, q: &BTreeMap<String, String>) -> bool {
    let bound = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    match (bound("size_min"), bound("size_max")) {
        (None, None) => true,
        (min, max) => image
            .size
            .is_some_and(|s| min.is_none_or(|m| s >= m) && max.is_none_or(|m| s <= m)),
    }
}

/// The keys an image list sorts by.
const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "virtual_size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "min_disk",
    "min_ram",
];

/// `sort=name:asc,created_at` or `sort_key=...&sort_dir=...` -> (key,
/// descending) pairs, Glance's default (`created_at` descending) without
/// them; `id` breaks ties in the last direction.
fn sort_order(q: &BTreeMap<String, String>) -> Result<Vec<(String, bool)>, ImageError> {
    let direction = |d: &str| match d {
        "asc" => Ok(false),
        "desc" => Ok(true),
        other => Err(ImageError::BadRequest(format!(
            "Invalid sort direction: {other}"
        ))),
    };
    let mut order = Vec::new();
    if let Some(sort) = q.get("sort") {
        if q.contains_key("sort_key") || q.contains_key("sort_dir") {
            return Err(ImageError::BadRequest(
                "The sort and sort_key/sort_dir parameters cannot be used together".into(),
            ));
        }
        for part in sort.split(',') {
            let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
            order.push((key.trim().to_owned(), direction(dir.trim())?));
        }
    } else {
        let descending = direction(q.get("sort_dir").map_or("desc", String::as_str))?;
        let key = q.get("sort_key").map_or("created_at", String::as_str);
        order.push((key.to_owned(), descending));
    }
    if let Some((bad, _)) = order.iter().find(|(k, _)| !SORT_KEYS.contains(&k.as_str())) {
        return Err(ImageError::BadRequest(format!("Invalid sort key: {bad}")));
    }
    let last = order.last().is_some_and(|(_, d)| *d);
    order.push(("id".into(), last));
    Ok(order)
}

fn int_of(v: &Json, key: &str) -> Result<i64, String> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{key}: not a non-negative integer")),
        Json::String(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{key}: not a non-negative integer")),
        _ => Err(format!("{key}: not a non-negative integer")),
    }
}

/// Applies one settable field or property to `image`.
fn set_field(image: &mut Image, key: &str, v: &Json, admin: bool) -> Result<(), ImageError> {
    let bad = ImageError::BadRequest;
    match key {
        "name" => {
            image.name = v
                .as_str()
                .ok_or_else(|| bad("name: must be a string".into()))?
                .chars()
                .take(255)
                .collect()
        }
        "visibility" => {
            let vis = v
                .as_str()
                .filter(|s| VISIBILITIES.contains(s))
                .ok_or_else(|| bad(format!("visibility: one of {VISIBILITIES:?}")))?;
            if vis == "public" && !admin {
                return Err(ImageError::Forbidden(
                    "Only administrators may publicize images.".into(),
                ));
            }
            image.visibility = vis.to_owned();
        }
        "protected" => {
            image.protected = v
                .as_bool()
                .ok_or_else(|| bad("protected: must be a boolean".into()))?
        }
        "min_disk" => image.min_disk = int_of(v, key).map_err(bad)?,
        "min_ram" => image.min_ram = int_of(v, key).map_err(bad)?,
        "tags" => {
            image.tags = v
                .as_array()
                .ok_or_else(|| bad("tags: must be a list of strings".into()))?
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("tags: must be a list of strings".into()))
                })
                .collect::<Result<_, _>>()?
        }
        "disk_format" | "container_format" => {
            let allowed = if key == "disk_format" {
                DISK_FORMATS
            } else {
                CONTAINER_FORMATS
            };
            let f = v
                .as_str()
                .filter(|s| allowed.contains(s))
                .ok_or_else(|| bad(format!("{key}: one of {allowed:?}")))?;
            if image.status != "queued" {
                return Err(ImageError::Forbidden(format!(
                    "{key} cannot change once data is uploaded"
                )));
            }
            if key == "disk_format" {
                image.disk_format = Some(f.to_owned());
            } else {
                image.container_format = Some(f.to_owned());
            }
        }
        k if READ_ONLY.contains(&k) => {
            return Err(ImageError::Forbidden(format!(
                "Attribute '{k}' is read-only."
            )))
        }
        k => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(format!("property {k}: values must be strings")))?;
            if k.is_empty() || k.len() > 255 || s.len() > 65_535 {
                return Err(bad(format!(
                    "property {k:?}: key 1-255 bytes, value at most 65535"
                )));
            }
            image.properties.insert(k.to_owned(), s.to_owned());
        }
    }
    Ok(())
}

/// Creates an image record (queued, no data) from a create body's fields.
pub async fn create(
    app: &App,
    auth: &Auth,
    body: serde_json::Map<String, Json>,
) -> Result<Image, ImageError> {
    let t = now();
    let id = match body.get("id") {
        None | Some(Json::Null) => uuid::Uuid::new_v4().to_string(),
        // Kept as given when hyphenated (36 characters); braced, URN or
        // plain forms become hyphenated (the id names files on hosts).
        Some(Json::String(s)) => match uuid::Uuid::parse_str(s) {
            Ok(_) if s.len() == 36 => s.clone(),
            Ok(u) => u.to_string(),
            Err(_) => return Err(ImageError::BadRequest("id: must be a UUID".into())),
        },
        Some(_) => return Err(ImageError::BadRequest("id: must be a UUID".into())),
    };
    let mut image = Image {
        id,
        name: String::new(),
        owner: auth.project_id().unwrap_or_default().to_owned(),
        status: "queued".into(),
        visibility: "shared".into(),
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        protected: false,
        properties: BTreeMap::new(),
        tags: Vec::new(),
        created_at: t,
        updated_at: t,
        location: None,
    };
    for (k, v) in &body {
        if k != "id" {
            set_field(&mut image, k, v, auth.is_admin())?;
        }
    }
    app.images.insert(&image).await?;
    Ok(image)
}

/// An operation's kind and path: RFC 6902's `{"op": "replace", "path":
/// "/name"}`, or Glance's older form (`application/openstack-images-v2.0-json-patch`,
/// which tempest still sends): `{"replace": "/name"}`.
fn op_and_path(op: &Json) -> Option<(&str, &str)> {
    if let (Some(kind), Some(path)) = (
        op.get("op").and_then(Json::as_str),
        op.get("path").and_then(Json::as_str),
    ) {
        return Some((kind, path));
    }
    ["add", "replace", "remove"]
        .into_iter()
        .find_map(|kind| Some((kind, op.get(kind)?.as_str()?)))
}

/// Applies a JSON patch (add, replace, remove of top-level fields and
/// properties) to an image the caller owns.
pub async fn patch(app: &App, auth: &Auth, id: &str, ops: &[Json]) -> Result<Image, ImageError> {
    let mut image = owned(app, auth, id).await?;
    for op in ops {
        let Some((kind, path)) = op_and_path(op) else {
            return Err(ImageError::BadRequest(
                "each operation needs op and path".into(),
            ));
        };
        let Some(key) = path
            .strip_prefix('/')
            .filter(|k| !k.is_empty() && !k.contains('/'))
        else {
            return Err(ImageError::BadRequest(format!("unsupported path {path:?}")));
        };
        match kind {
            "add" | "replace" => match op.get("value") {
                Some(v) => set_field(&mut image, key, v, auth.is_admin())?,
                None => return Err(ImageError::BadRequest(format!("{kind} needs a value"))),
            },
            "remove" if SETTABLE.contains(&key) || READ_ONLY.contains(&key) => {
                return Err(ImageError::Forbidden(format!(
                    "Attribute '{key}' cannot be removed."
                )))
            }
            "remove" => {
                if image.properties.remove(key).is_none() {
                    return Err(ImageError::Conflict(format!(
                        "Property {key} does not exist."
                    )));
                }
            }
            other => return Err(ImageError::BadRequest(format!("unsupported op {other:?}"))),
        }
    }
    image.updated_at = now();
    app.images.save(&image).await?;
    Ok(image)
}

/// Glance's limits on tags.
const MAX_TAGS: usize = 128;
const MAX_TAG_LEN: usize = 255;

/// `PUT /v2/images/{id}/tags/{tag}`: adds a tag (again is no change).
pub async fn add_tag(app: &App, auth: &Auth, id: &str, tag: &str) -> Result<(), ImageError> {
    let tag = percent_decoded(tag);
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(ImageError::BadRequest(format!(
            "a tag is 1 to {MAX_TAG_LEN} characters"
        )));
    }
    let mut image = owned(app, auth, id).await?;
    if image.tags.contains(&tag) {
        return Ok(());
    }
    if image.tags.len() >= MAX_TAGS {
        return Err(ImageError::TooLarge(format!(
            "Maximum number of tags exceeded: an image has at most {MAX_TAGS}"
        )));
    }
    image.tags.push(tag);
    image.updated_at = now();
    app.images.save(&image).await?;
    Ok(())
}

/// `DELETE /v2/images/{id}/tags/{tag}`: removes a tag (404 when absent).
pub async fn remove_tag(app: &App, auth: &Auth, id: &str, tag: &str) -> Result<(), ImageError> {
    let tag = percent_decoded(tag);
    let mut image = owned(app, auth, id).await?;
    let before = image.tags.len();
    image.tags.retain(|t| *t != tag);
    if image.tags.len() == before {
        return Err(ImageError::NotFound(format!("Tag {tag} not found")));
    }
    image.updated_at = now();
    app.images.save(&image).await?;
    Ok(())
}

fn percent_decoded(s: &str) -> String {
    form_urlencoded::parse(format!("t={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub async fn delete(app: &App, auth: &Auth, id: &str) -> Result<(), ImageError> {
    let image = owned(app, auth, id).await?;
    if image.protected {
        return Err(ImageError::Forbidden(format!(
            "Image {id} is protected and cannot be deleted."
        )));
    }
    data::remove(app, &image).await;
    app.images.delete(id).await?;
    Ok(())
}

/// Stores an image's data (once: queued -> saving -> active), streamed to
/// disk with its checksums; a qcow2 image is also converted to raw. A failed
/// upload leaves the image queued, so it can be retried.
pub async fn upload(app: &App, auth: &Auth, id: &str, body: Incoming) -> Result<(), ImageError> {
    let image = owned(app, auth, id).await?;
    if image.disk_format.is_none() || image.container_format.is_none() {
        return Err(ImageError::BadRequest(
            "set disk_format and container_format before uploading".into(),
        ));
    }
    if !app.images.transition(id, "queued", "saving").await? {
        return Err(ImageError::Conflict(format!(
            "Image {id} is {}: data can only be uploaded once",
            image.status
        )));
    }
    match receive(app, &image, body, Encoding::Plain).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // Back to queued so the upload can be retried.
            let _ = app.images.transition(id, "saving", "queued").await;
            Err(e)
        }
    }
}

/// A server snapshot's data, sent by the host the server is on (see
/// `compute::service::snapshot`): taken only for an image in `saving` made
/// for a snapshot of a server placed on `host` and taking a snapshot now
/// (its `image_type` is no guide: Nova lets the caller name it). An upload
/// that fails leaves the image `killed`, as Glance's failed snapshots are.
pub async fn receive_snapshot(
    app: &App,
    host: &str,
    id: &str,
    body: Incoming,
    encoding: Encoding,
) -> Result<(), ImageError> {
    let image = app.images.get(id).await?.ok_or_else(|| not_found(id))?;
    let server = match image.properties.get("instance_uuid") {
        Some(s) => app
            .servers
            .get(s)
            .await?
            .filter(|s| s.host_id.as_deref() == Some(host)),
        None => None,
    };
    let Some(server) = server else {
        return Err(ImageError::Forbidden(format!(
            "image {id} is not a snapshot of a server on host {host}"
        )));
    };
    if image.status != "saving" {
        return Err(ImageError::Conflict(format!(
            "Image {id} is {}: not waiting for a snapshot",
            image.status
        )));
    }
    if !matches!(
        server.task_state.as_deref(),
        Some("image_snapshot" | "image_uploading")
    ) {
        return Err(ImageError::Forbidden(format!(
            "server {} is taking no snapshot",
            server.id
        )));
    }
    match receive(app, &image, body, encoding).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = app.images.transition(id, "saving", "killed").await;
            Err(e)
        }
    }
}

/// Stores an upload's bytes as `image`'s data (in `saving`) and makes it
/// active.
async fn receive(
    app: &App,
    image: &Image,
    body: Incoming,
    encoding: Encoding,
) -> Result<(), ImageError> {
    let id = image.id.as_str();
    let stored = data::store(app, image, body, encoding).await?;
    let Some(mut image) = app.images.get(id).await? else {
        return Err(not_found(id));
    };
    image.status = "active".into();
    image.size = Some(stored.size as i64);
    image.virtual_size = Some(stored.virtual_size as i64);
    image.checksum = Some(stored.md5);
    image.os_hash_algo = Some("sha512".into());
    image.os_hash_value = Some(stored.sha512);
    image.location = stored.location;
    image.updated_at = now();
    app.images.save(&image).await?;
    Ok(())
}

/// `POST /v2/images/{id}/actions/deactivate|reactivate` (the owner or an
/// admin): a deactivated image keeps its data, but only admins download it
/// and no new server boots it; doing either twice is no change.
pub async fn set_active(app: &App, auth: &Auth, id: &str, active: bool) -> Result<(), ImageError> {
    let image = owned(app, auth, id).await?;
    let (from, to) = match active {
        true => ("deactivated", "active"),
        false => ("active", "deactivated"),
    };
    if image.status == to || app.images.transition(id, from, to).await? {
        return Ok(());
    }
    let verb = if active { "reactivate" } else { "deactivate" };
    Err(ImageError::Forbidden(format!(
        "Not allowed to {verb} image in status '{}'",
        image.status
    )))
}

/// An image's data, opened, with its record; None while it has no data.
/// A deactivated image's data is for admins only.
pub async fn data(app: &App, auth: &Auth, id: &str) -> Result<Option<(Image, Opened)>, ImageError> {
    let image = visible(app, auth, id).await?;
    if image.status == "deactivated" && !auth.is_admin() {
        return Err(ImageError::Forbidden(
            "The requested image has been deactivated. Image data download is forbidden.".into(),
        ));
    }
    if !matches!(image.status.as_str(), "active" | "deactivated") {
        return Ok(None);
    }
    let opened = data::open(app, &image).await?;
    Ok(Some((image, opened)))
}
