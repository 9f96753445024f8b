//! Nova servers at microversion 2.1: create (answered at once with BUILD; a
//! background task schedules it and asks the chosen host's hostd to run it),
//! list, detail, show, delete, actions, console output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha224};

use super::compute::{nova_error, store_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::actions::{now_us, Action};
use crate::compute::scheduler::{Demand, PlaceError};
use crate::compute::servers::{Admission, ListQuery, Server};
use crate::hostd_client::{self, HostdError};
use crate::identity::{now, Auth};

/// How long hostd may take to create (and boot to running) an instance.
const HOSTD_CREATE_TIMEOUT: Duration = Duration::from_secs(120);
const HOSTD_TIMEOUT: Duration = Duration::from_secs(60);
/// Hosts tried for one server before it goes to ERROR.
const MAX_ATTEMPTS: usize = 3;
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

fn iso(t: i64) -> String {
    super::http::iso_micros(t).replace(".000000Z", "Z")
}

/// Nova's self and bookmark links for a resource.
#[derive(Serialize)]
struct Link {
    rel: &'static str,
    href: String,
}

fn links(app: &App, kind: &str, id: &str) -> [Link; 2] {
    let base = &app.config.public_url;
    [
        Link {
            rel: "self",
            href: format!("{base}/compute/v2.1/{kind}/{id}"),
        },
        Link {
            rel: "bookmark",
            href: format!("{base}/compute/{kind}/{id}"),
        },
    ]
}

#[derive(Serialize)]
struct Ref<'a> {
    id: &'a str,
    links: [Link; 2],
}

#[derive(Serialize)]
struct Named {
    name: &'static str,
}

#[derive(Serialize)]
struct Fault<'a> {
    code: u16,
    message: &'a str,
    created: String,
}

/// An empty JSON object (`addresses` until servers have networks).
#[derive(Serialize)]
struct Empty {}

/// The 2.1 server representation: exactly the keys tempest's schema allows.
/// Serialized straight from the record (a list of 1,000 is 1.6 MB of JSON).
#[derive(Serialize)]
pub struct ServerView<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    image: Ref<'a>,
    flavor: Ref<'a>,
    user_id: &'a str,
    tenant_id: &'a str,
    created: String,
    updated: String,
    metadata: &'a BTreeMap<String, String>,
    links: [Link; 2],
    addresses: Empty,
    #[serde(rename = "hostId")]
    host_id: String,
    #[serde(rename = "accessIPv4")]
    access_ipv4: &'static str,
    #[serde(rename = "accessIPv6")]
    access_ipv6: &'static str,
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: &'static str,
    #[serde(rename = "OS-EXT-AZ:availability_zone")]
    availability_zone: &'a str,
    #[serde(rename = "OS-EXT-STS:vm_state")]
    vm_state: &'a str,
    #[serde(rename = "OS-EXT-STS:task_state")]
    task_state: Option<&'a str>,
    #[serde(rename = "OS-EXT-STS:power_state")]
    power_state: i64,
    #[serde(rename = "OS-SRV-USG:launched_at")]
    launched_at: Option<String>,
    #[serde(rename = "OS-SRV-USG:terminated_at")]
    terminated_at: Option<()>,
    config_drive: &'static str,
    key_name: Option<&'a str>,
    progress: u8,
    security_groups: [Named; 1],
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    volumes_attached: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<Fault<'a>>,
    // Admin-only attributes (absent for others).
    #[serde(
        rename = "OS-EXT-SRV-ATTR:host",
        skip_serializing_if = "Option::is_none"
    )]
    host: Option<Option<&'a str>>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:hypervisor_hostname",
        skip_serializing_if = "Option::is_none"
    )]
    hypervisor_hostname: Option<Option<&'a str>>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:instance_name",
        skip_serializing_if = "Option::is_none"
    )]
    instance_name: Option<String>,
}

impl<'a> ServerView<'a> {
    pub fn new(app: &App, s: &'a Server, admin: bool) -> Self {
        // Nova's hostId: the host, hashed with the project so that projects
        // cannot compare placements.
        let host_id = match &s.host_id {
            Some(h) => Sha224::digest(format!("{}{h}", s.project_id).as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            None => String::new(),
        };
        ServerView {
            id: &s.id,
            name: &s.name,
            status: s.status(),
            image: Ref {
                id: &s.image_id,
                links: links(app, "images", &s.image_id),
            },
            flavor: Ref {
                id: &s.flavor_id,
                links: links(app, "flavors", &s.flavor_id),
            },
            user_id: &s.user_id,
            tenant_id: &s.project_id,
            created: iso(s.created_at),
            updated: iso(s.updated_at),
            metadata: &s.metadata,
            links: links(app, "servers", &s.id),
            addresses: Empty {},
            host_id,
            access_ipv4: "",
            access_ipv6: "",
            disk_config: "MANUAL",
            availability_zone: &s.availability_zone,
            vm_state: &s.vm_state,
            task_state: s.task_state.as_deref(),
            power_state: s.power_state,
            launched_at: s
                .launched_at
                .map(|t| super::http::iso_micros(t).replace('Z', "")),
            terminated_at: None,
            config_drive: "",
            key_name: s.key_name.as_deref(),
            progress: 0,
            security_groups: [Named { name: "default" }],
            volumes_attached: [],
            fault: s.fault.as_deref().map(|message| Fault {
                code: 500,
                message,
                created: iso(s.updated_at),
            }),
            host: admin.then_some(s.host_id.as_deref()),
            hypervisor_hostname: admin.then_some(s.host_id.as_deref()),
            instance_name: admin.then(|| format!("instance-{}", s.id)),
        }
    }
}

#[derive(Serialize)]
struct ServerOne<'a> {
    server: ServerView<'a>,
}

/// A list answer, straight to JSON (no intermediate tree).
#[derive(Serialize)]
struct ServerList<T> {
    servers: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers_links: Option<Json>,
}

/// The brief form `GET /servers` lists.
#[derive(Serialize)]
struct ServerBrief<'a> {
    id: &'a str,
    name: &'a str,
    links: [Link; 2],
}

/// Handles `/servers...`; None for other paths.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    Some(match (req.method().clone(), rest) {
        (Method::GET, ["servers"]) => list(app, auth, &req, false).await,
        (Method::GET, ["servers", "detail"]) => list(app, auth, &req, true).await,
        (Method::POST, ["servers"]) => create(app, auth, req).await,
        (Method::GET, ["servers", id]) => match visible(app, auth, id).await {
            Ok(s) => json(
                StatusCode::OK,
                &ServerOne {
                    server: ServerView::new(app, &s, auth.is_admin()),
                },
            ),
            Err(r) => r,
        },
        (Method::DELETE, ["servers", id]) => delete(app, auth, id).await,
        (Method::GET, ["servers", id, "os-instance-actions"]) => {
            instance_actions(app, auth, id, None).await
        }
        (Method::GET, ["servers", id, "os-instance-actions", request_id]) => {
            instance_actions(app, auth, id, Some(request_id)).await
        }
        (Method::POST, ["servers", id, "action"]) => {
            let id = id.to_string();
            action(app, auth, &id, req).await
        }
        _ => return None,
    })
}

async fn visible(app: &App, auth: &Auth, id: &str) -> Result<Server, Response<Body>> {
    match app.servers.get(id).await {
        Ok(Some(s)) if auth.is_admin() || Some(s.project_id.as_str()) == auth.project_id() => Ok(s),
        Ok(_) => Err(nova_error(
            StatusCode::NOT_FOUND,
            &format!("Instance {id} could not be found."),
        )),
        Err(e) => Err(store_error(e)),
    }
}

/// The most servers one list answers (Nova's `max_limit`); more come in
/// pages linked by `servers_links`.
const MAX_LIMIT: i64 = 1000;

/// The vm_states a Nova status filter selects; None for statuses no server
/// can have (an empty list, as Nova answers at 2.1).
fn vm_states_for(status: &str) -> Option<&'static str> {
    Some(match status.to_ascii_uppercase().as_str() {
        "BUILD" => "building",
        "ACTIVE" | "REBOOT" | "HARD_REBOOT" => "active",
        "SHUTOFF" => "stopped",
        "PAUSED" => "paused",
        "SUSPENDED" => "suspended",
        "ERROR" => "error",
        _ => return None,
    })
}

/// `changes-since` and the like: RFC 3339, or a bare `YYYY-MM-DDTHH:MM:SS` in UTC.
fn parse_time(v: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(v, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let naive = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(v.trim_end_matches('Z'), &naive)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// `GET /servers[/detail]`: Nova's filters (name, status, image, flavor,
/// changes-since; all_tenants, project_id and host for admins) and paging
/// (limit, marker, and a `next` link when the page is full).
async fn list(app: &App, auth: &Auth, req: &Request<Incoming>, detail: bool) -> Response<Body> {
    let q = super::http::query_params(req);
    let bad = |m: &str| nova_error(StatusCode::BAD_REQUEST, m);
    let admin = auth.is_admin();
    let all = admin
        && matches!(
            q.get("all_tenants").map(String::as_str),
            Some("1" | "true" | "True" | "")
        );
    let project = match (all, q.get("project_id").or(q.get("tenant_id"))) {
        (true, Some(p)) => Some(p.clone()),
        (true, None) => None,
        (false, _) => Some(auth.project_id().unwrap_or_default().to_owned()),
    };
    let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => MAX_LIMIT,
        Some(Ok(l)) if l >= 0 => l.min(MAX_LIMIT),
        Some(Ok(_)) => return bad("limit param must be positive"),
        Some(Err(_)) => return bad("limit param must be an integer"),
    };
    let mut query = ListQuery {
        project,
        // Nova matches names as a regular expression; a case-insensitive
        // substring covers what clients send (anchors are dropped).
        name: q
            .get("name")
            .map(|n| n.trim_start_matches('^').trim_end_matches('$').to_owned()),
        image: q.get("image").cloned(),
        flavor: q.get("flavor").cloned(),
        host: q.get("host").filter(|_| admin).cloned(),
        limit: Some(limit),
        ..ListQuery::default()
    };
    let status = q.get("status").map(|s| s.to_ascii_uppercase());
    if let Some(st) = &status {
        query.vm_states = Some(vm_states_for(st).into_iter().collect());
    }
    if matches!(
        q.get("deleted").map(String::as_str),
        Some("true" | "True" | "1")
    ) {
        // Deleted servers are not kept.
        query.vm_states = Some(Vec::new());
    }
    if let Some(since) = q.get("changes-since").or(q.get("changes_since")) {
        match parse_time(since) {
            Some(t) => query.changes_since = Some(t),
            None => return bad(&format!("Invalid changes-since value: {since}")),
        }
    }
    if let Some(marker) = q.get("marker") {
        match app.servers.get(marker).await {
            Ok(Some(m))
                if query.project.is_none() || query.project.as_deref() == Some(&m.project_id) =>
            {
                query.marker = Some((m.created_at, m.id));
            }
            Ok(_) => return bad(&format!("marker [{marker}] not found")),
            Err(e) => return store_error(e),
        }
    }
    let servers = match app.servers.page(&query).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    // A full page has a next link, from its last server.
    let next = (limit > 0 && servers.len() as i64 == limit)
        .then(|| servers.last().map(|s| s.id.clone()))
        .flatten()
        .map(|last| {
            let mut params = form_urlencoded::Serializer::new(String::new());
            for (k, v) in q.iter().filter(|(k, _)| *k != "marker" && *k != "limit") {
                params.append_pair(k, v);
            }
            params.append_pair("limit", &limit.to_string());
            params.append_pair("marker", &last);
            let kind = if detail { "servers/detail" } else { "servers" };
            json!([{"rel": "next", "href": format!("{}/compute/v2.1/{kind}?{}", app.config.public_url, params.finish())}])
        });
    // REBOOT and ACTIVE share a vm_state: the exact status decides.
    let shown = servers
        .iter()
        .filter(|s| status.as_deref().is_none_or(|st| s.status() == st));
    if detail {
        let servers = shown.map(|s| ServerView::new(app, s, admin)).collect();
        json(
            StatusCode::OK,
            &ServerList {
                servers,
                servers_links: next,
            },
        )
    } else {
        let items: Vec<ServerBrief> = shown
            .map(|s| ServerBrief {
                id: &s.id,
                name: &s.name,
                links: links(app, "servers", &s.id),
            })
            .collect();
        json(
            StatusCode::OK,
            &ServerList {
                servers: items,
                servers_links: next,
            },
        )
    }
}

fn request_id_of(req: &Request<Incoming>) -> String {
    req.extensions()
        .get::<super::RequestId>()
        .map_or_else(super::http::new_request_id, |r| r.0.clone())
}

async fn create(app: &App, auth: &Auth, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id_of(&req);
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(s) = body.get("server") else {
        return nova_error(StatusCode::BAD_REQUEST, "'server' is a required property");
    };
    let bad = |m: &str| nova_error(StatusCode::BAD_REQUEST, m);
    let Some(name) = s
        .get("name")
        .and_then(Json::as_str)
        .filter(|n| (1..=255).contains(&n.trim().len()))
    else {
        return bad(
            "Invalid input for field/attribute name: a string of 1 to 255 characters is required",
        );
    };
    let Some(flavor_ref) = s.get("flavorRef").and_then(|v| {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_i64().map(|n| n.to_string()))
    }) else {
        return bad("'flavorRef' is a required property");
    };
    // imageRef, or the image of a boot_index 0 image BDM.
    let image_ref = s
        .get("imageRef")
        .and_then(Json::as_str)
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            s.get("block_device_mapping_v2")?
                .as_array()?
                .iter()
                .find_map(|b| {
                    (b.get("source_type")?.as_str()? == "image")
                        .then(|| b.get("uuid")?.as_str().map(str::to_owned))?
                })
        });
    let Some(image_ref) = image_ref else {
        return bad("an image is required (imageRef): booting from volumes is not supported yet");
    };
    let project = auth.project_id().unwrap_or_default().to_owned();
    let flavor = match app.flavors.get(&flavor_ref).await {
        Ok(Some(f)) if f.is_public || auth.is_admin() => f,
        Ok(_) => return bad(&format!("Flavor {flavor_ref} could not be found.")),
        Err(e) => return store_error(e),
    };
    let image = match app.images.get(&image_ref).await {
        Ok(Some(i)) if i.visible_to(&project, auth.is_admin()) && i.status == "active" => i,
        Ok(Some(i)) if i.visible_to(&project, auth.is_admin()) => {
            return bad(&format!("Image {image_ref} is not active."))
        }
        Ok(_) => return bad(&format!("Image {image_ref} could not be found.")),
        Err(e) => return store_error(e),
    };
    let key_name = s.get("key_name").and_then(Json::as_str).map(str::to_owned);
    if let Some(k) = &key_name {
        match app.keypairs.get(&auth.user.id, k).await {
            Ok(Some(_)) => {}
            Ok(None) => return bad(&format!("Invalid key_name provided: {k}")),
            Err(e) => return store_error(e),
        }
    }
    let metadata: BTreeMap<String, String> = match s.get("metadata") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(Json::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return bad(
                        "Invalid input for field/attribute metadata: values must be strings",
                    );
                };
                out.insert(k.clone(), v.to_owned());
            }
            out
        }
        Some(_) => return bad("Invalid input for field/attribute metadata: must be an object"),
    };
    let user_data = s.get("user_data").and_then(Json::as_str).map(str::to_owned);
    let quota = match app.quotas.get(&project).await {
        Ok(q) => q,
        Err(e) => return store_error(e),
    };
    let t = now();
    let server = Server {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project,
        user_id: auth.user.id.clone(),
        name: name.trim().to_owned(),
        flavor_id: flavor.id.clone(),
        image_id: image.id.clone(),
        vcpus: flavor.vcpus,
        ram_mib: flavor.ram_mib,
        disk_gib: flavor.disk_gib,
        host_id: None,
        vm_state: "building".into(),
        task_state: Some("scheduling".into()),
        power_state: 0,
        fault: None,
        key_name,
        user_data,
        metadata,
        availability_zone: s
            .get("availability_zone")
            .and_then(Json::as_str)
            .unwrap_or("nova")
            .to_owned(),
        created_at: t,
        updated_at: t,
        launched_at: None,
        generation: 0,
    };
    match app.servers.insert_within(&server, &quota).await {
        Ok(Admission::Admitted) => {}
        Ok(Admission::OverQuota(o)) => {
            return nova_error(
                StatusCode::FORBIDDEN,
                &format!(
                    "Quota exceeded for {}: Requested {}, but already used {} of {} {}",
                    o.resource, o.requested, o.used, o.limit, o.resource
                ),
            )
        }
        Err(e) => return store_error(e),
    }
    let record = Action {
        request_id: request_id.clone(),
        server_id: server.id.clone(),
        project_id: server.project_id.clone(),
        user_id: server.user_id.clone(),
        action: "create".into(),
        start_us: now_us(),
        finish_us: None,
        result: None,
        message: None,
    };
    if let Err(e) = app.actions.start(&record).await {
        tracing::warn!(server = %server.id, "recording its create: {e}");
    }
    if let Some(app) = app.me.upgrade() {
        let id = server.id.clone();
        tokio::spawn(async move {
            build(app.clone(), id.clone()).await;
            let failure = match app.servers.get(&id).await {
                Ok(Some(s)) if s.vm_state == "error" => Some(s.fault.unwrap_or_default()),
                _ => None,
            };
            let _ = app.actions.finish(&request_id, failure.as_deref()).await;
        });
    }
    let mut r = json(
        StatusCode::ACCEPTED,
        &json!({"server": {"id": server.id, "links": links(app, "servers", &server.id),
                           "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}]}}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}/compute/v2.1/servers/{}",
        app.config.public_url, server.id
    )) {
        r.headers_mut().insert("location", v);
    }
    r
}

/// What hostd is asked to run for a server: the image's kernel (its
/// `kernel_id`, or the image itself when it is a kernel), ramdisk and command
/// line (`os_command_line`), and the image as a read-only root disk. Images go
/// by id: hostd fetches them from this controller into its cache.
async fn instance_spec(app: &App, s: &Server) -> Result<Json, String> {
    let image = app
        .images
        .get(&s.image_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the image is gone")?;
    let active = |i: Option<crate::image::Image>, what: &str| match i {
        Some(i) if i.status == "active" => Ok(i.id),
        _ => Err(format!("the {what} image is missing or not active")),
    };
    let kernel = if image.disk_format.as_deref() == Some("aki") {
        image.id.clone()
    } else {
        let kid = image.properties.get("kernel_id").ok_or(
            "the image has no kernel_id property: Virga boots a kernel directly (no firmware)",
        )?;
        active(
            app.images.get(kid).await.map_err(|e| e.to_string())?,
            "kernel",
        )?
    };
    let initramfs = match image.properties.get("ramdisk_id") {
        Some(rid) => Some(active(
            app.images.get(rid).await.map_err(|e| e.to_string())?,
            "ramdisk",
        )?),
        None => None,
    };
    let mut cmdline = image
        .properties
        .get("os_command_line")
        .cloned()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
    let mut disks = Vec::new();
    if matches!(image.disk_format.as_deref(), Some("raw" | "qcow2" | "ami"))
        && image.size.unwrap_or(0) > 0
    {
        disks.push(image.id.clone());
        if !cmdline.contains("root=") {
            cmdline.push_str(" root=/dev/vda ro");
        }
    }
    Ok(json!({
        "id": s.id, "vcpus": s.vcpus, "memory_mib": s.ram_mib, "kernel_image": kernel,
        "initramfs_image": initramfs, "cmdline": cmdline, "disk_images": disks,
        "metadata": {"name": s.name, "project_id": s.project_id},
    }))
}

/// Schedules a server and starts it on a host, trying others on failure.
async fn build(app: Arc<App>, id: String) {
    let Ok(Some(server)) = app.servers.get(&id).await else {
        return;
    };
    let demand = Demand {
        vcpus: server.vcpus,
        ram_mib: server.ram_mib,
        disk_gib: server.disk_gib,
        availability_zone: (server.availability_zone != "nova")
            .then(|| server.availability_zone.clone()),
    };
    let spec = match instance_spec(&app, &server).await {
        Ok(s) => s,
        Err(why) => {
            fail(&app, &id, &format!("Build of instance {id} aborted: {why}")).await;
            return;
        }
    };
    let mut tried: Vec<String> = Vec::new();
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        let host = match app.scheduler.place(&id, &demand, &tried).await {
            Ok(h) => h,
            Err(PlaceError::NoValidHost(why)) => {
                let msg = if last.is_empty() {
                    format!("No valid host was found. {why}")
                } else {
                    format!("{last}; then no other host: {why}")
                };
                fail(&app, &id, &msg).await;
                return;
            }
            Err(PlaceError::Store(e)) => {
                fail(&app, &id, &format!("scheduling failed: {e}")).await;
                return;
            }
        };
        // The claim recorded the host on the server.
        let host_id = host.report.host_id.clone();
        let token = app.hostd_token(&host_id);
        let _ = app
            .servers
            .set_state(&id, "building", Some("spawning"), 0, None)
            .await;
        match hostd_client::call(
            &host.report.url,
            &token,
            Method::POST,
            "/instances",
            Some(&spec),
            HOSTD_CREATE_TIMEOUT,
        )
        .await
        {
            Ok(_) => {
                // Deleted (or being deleted) while building: its delete may
                // have reached the host before this create did, so undo on
                // the host. The delete gives the claim back.
                let deleted = match app.servers.get(&id).await {
                    Ok(None) => true,
                    Ok(Some(s)) => s.task_state.as_deref() == Some(DELETING),
                    Err(_) => false,
                };
                if deleted {
                    let _ = hostd_client::call(
                        &host.report.url,
                        &token,
                        Method::DELETE,
                        &format!("/instances/{id}"),
                        None,
                        HOSTD_TIMEOUT,
                    )
                    .await;
                    return;
                }
                let _ = app.servers.set_state(&id, "active", None, 1, None).await;
                tracing::info!(server = %id, host = %host_id, "server active");
                return;
            }
            Err(e) => {
                tracing::warn!(server = %id, host = %host_id, "hostd refused the instance: {e}");
                let _ = app.scheduler.release(&id, &host_id).await;
                last = format!("host {host_id}: {e}");
                tried.push(host_id);
            }
        }
    }
    fail(
        &app,
        &id,
        &format!("Exceeded maximum number of retries. {last}"),
    )
    .await;
}

async fn fail(app: &App, id: &str, fault: &str) {
    tracing::warn!(server = %id, "build failed: {fault}");
    let _ = app
        .servers
        .set_state(id, "error", None, 0, Some(fault))
        .await;
}

/// Where a server's hostd listens and the token to call it with.
struct HostdTarget {
    url: String,
    token: String,
}

/// The hostd of the host a server is placed on, if that host is known.
async fn server_host(app: &App, s: &Server) -> Option<HostdTarget> {
    let host = s.host_id.as_ref()?;
    let url = app
        .hosts
        .list()
        .await
        .ok()?
        .into_iter()
        .find(|h| &h.report.host_id == host)?
        .report
        .url;
    Some(HostdTarget {
        url,
        token: app.hostd_token(host),
    })
}

async fn delete(app: &App, auth: &Auth, id: &str) -> Response<Body> {
    let server = match visible(app, auth, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Recorded first: a controller that stops midway finishes it on start.
    if let Err(e) = app.servers.mark_deleting(id).await {
        return store_error(e);
    }
    match finish_delete(app, &server).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(DeleteError::Host(e)) => {
            let _ = app.servers.unmark_deleting(id).await;
            nova_error(
                StatusCode::CONFLICT,
                &format!("Cannot delete instance {id} now: {e}"),
            )
        }
        Err(DeleteError::Store(e)) => store_error(e),
    }
}

/// The server whose delete is recorded.
const DELETING: &str = "deleting";

enum DeleteError {
    Host(HostdError),
    Store(crate::store::StoreError),
}

/// Undoes a server marked deleting: its instance on the host (gone already is
/// fine), then its row, claim and actions, and a tombstone, in one
/// transaction. Safe to repeat.
async fn finish_delete(app: &App, server: &Server) -> Result<(), DeleteError> {
    let id = &server.id;
    if let Some(hostd) = server_host(app, server).await {
        match hostd_client::call(
            &hostd.url,
            &hostd.token,
            Method::DELETE,
            &format!("/instances/{id}"),
            None,
            HOSTD_TIMEOUT,
        )
        .await
        {
            Ok(_) | Err(HostdError::Refused { status: 404, .. }) => {}
            Err(e) => return Err(DeleteError::Host(e)),
        }
    }
    if let Err(e) = app.actions.delete_for(id).await {
        tracing::warn!(server = %id, "forgetting its actions: {e}");
    }
    app.servers.delete(id).await.map_err(DeleteError::Store)?;
    Ok(())
}

/// Finishes the deletes recorded before `before` and left unfinished by a
/// controller that stopped (at start, all of them; on every round of the state
/// sync, those older than a request takes).
pub async fn resume_deletes(app: &App, before: i64) {
    let Ok(pending) = app.servers.deleting(before).await else {
        return;
    };
    for server in pending {
        match finish_delete(app, &server).await {
            Ok(()) => tracing::info!(server = %server.id, "finished a recorded delete"),
            Err(DeleteError::Host(e)) => {
                tracing::warn!(server = %server.id, "finishing its delete: {e}; will retry")
            }
            Err(DeleteError::Store(e)) => {
                tracing::warn!(server = %server.id, "finishing its delete: {e}; will retry")
            }
        }
    }
}

/// Removes instances a host runs for servers that are gone (deleted while
/// their create was still on its way, or before a stopped controller could
/// undo it) or placed elsewhere (a create that timed out and was retried on
/// another host); an instance of a server this controller never had is
/// reported, not touched. `listed` is the host's instance list.
async fn reap_orphans(app: &App, host: &crate::compute::hosts::Host, listed: &[&str]) {
    let host_id = &host.report.host_id;
    for &id in listed {
        // Read now, after the listing: a build records its host before it
        // asks the host for the instance.
        let server = match app.servers.get(id).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let leftover = match &server {
            Some(s) => s.host_id.as_deref() != Some(host_id.as_str()),
            None => match app.servers.was_deleted(id).await {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        if !leftover {
            if server.is_none() {
                tracing::warn!(host = %host_id, instance = id, "the host runs an instance of no server this controller knows");
            }
            continue;
        }
        match hostd_client::call(
            &host.report.url,
            &app.hostd_token(host_id),
            Method::DELETE,
            &format!("/instances/{id}"),
            None,
            HOSTD_TIMEOUT,
        )
        .await
        {
            Ok(_) | Err(HostdError::Refused { status: 404, .. }) => {
                tracing::info!(host = %host_id, instance = id, "removed a leftover instance")
            }
            Err(e) => {
                tracing::warn!(host = %host_id, instance = id, "removing a leftover instance: {e}")
            }
        }
    }
}

/// hostd's instance state as (vm_state, power_state).
fn from_hostd(state: &str) -> (&'static str, i64) {
    match state {
        "running" | "building" => ("active", 1),
        "paused" => ("paused", 3),
        "shutoff" | "stopping" => ("stopped", 4),
        _ => ("error", 0),
    }
}

/// Nova's power_state for a suspended server.
const POWER_SUSPENDED: i64 = 7;

/// A server action that goes to its host: what hostd is asked, from which
/// vm_states it is allowed, the task_state while it runs, and Nova's name
/// for it in the instance actions.
struct HostAction {
    hostd: &'static str,
    body: Json,
    from: &'static [&'static str],
    task: &'static str,
    name: &'static str,
}

fn host_action(name: &str, args: &Json) -> Option<HostAction> {
    let a = |hostd, from, task, name| HostAction {
        hostd,
        body: json!({}),
        from,
        task,
        name,
    };
    Some(match name {
        "os-stop" => a(
            "stop",
            &["active", "paused", "suspended"],
            "powering-off",
            "stop",
        ),
        "os-start" => a("start", &["stopped"], "powering-on", "start"),
        "pause" => a("pause", &["active"], "pausing", "pause"),
        "unpause" => a("resume", &["paused"], "unpausing", "unpause"),
        // The guest is frozen in memory, as with pause; the server shows
        // SUSPENDED until it is resumed. (No save to disk yet: its RAM stays
        // allocated on the host.)
        "suspend" => a("pause", &["active"], "suspending", "suspend"),
        "resume" => a("resume", &["suspended"], "resuming", "resume"),
        "reboot" => {
            let hard = args
                .get("type")
                .and_then(Json::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("HARD"));
            HostAction {
                hostd: "reboot",
                body: json!({ "hard": hard }),
                // A hard reboot is how a stuck or stopped server is recovered.
                from: if hard {
                    &["active", "stopped", "paused", "suspended", "error"]
                } else {
                    &["active"]
                },
                task: if hard { "rebooting_hard" } else { "rebooting" },
                name: "reboot",
            }
        }
        _ => return None,
    })
}

async fn action(app: &App, auth: &Auth, id: &str, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id_of(&req);
    let server = match visible(app, auth, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match read_json(req, nova_error).await {
        Ok(Json::Object(m)) if m.len() == 1 => m,
        Ok(_) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "an action body has exactly one key",
            )
        }
        Err(r) => return r,
    };
    let Some((name, args)) = body.iter().next() else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "an action body has exactly one key",
        );
    };
    if name == "os-getConsoleOutput" {
        return console_output(app, &server, args).await;
    }
    let Some(act) = host_action(name, args) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            &format!("Unsupported action {name:?}"),
        );
    };
    let conflict = |s: &Server| {
        let why = match &s.task_state {
            Some(t) => format!("task_state {t}"),
            None => format!("vm_state {}", s.vm_state),
        };
        nova_error(
            StatusCode::CONFLICT,
            &format!("Cannot '{name}' instance {id} while it is in {why}"),
        )
    };
    let Some(hostd) = server_host(app, &server).await else {
        return conflict(&server);
    };
    match app.servers.begin_task(id, act.task, act.from).await {
        Ok(true) => {}
        Ok(false) => {
            // Re-read: the state that refused it may be newer than ours.
            return match app.servers.get(id).await {
                Ok(Some(now)) => conflict(&now),
                Ok(None) => nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Instance {id} could not be found."),
                ),
                Err(e) => store_error(e),
            };
        }
        Err(e) => return store_error(e),
    }
    let record = Action {
        request_id: request_id.clone(),
        server_id: id.to_owned(),
        project_id: server.project_id.clone(),
        user_id: auth.user.id.clone(),
        action: act.name.to_owned(),
        start_us: now_us(),
        finish_us: None,
        result: None,
        message: None,
    };
    if let Err(e) = app.actions.start(&record).await {
        tracing::warn!(server = %id, "recording action {}: {e}", act.name);
    }
    let Some(app) = app.me.upgrade() else {
        return nova_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is stopping",
        );
    };
    let id = id.to_owned();
    // Answered at once (202), as Nova does; clients poll status and task_state.
    tokio::spawn(async move { run_host_action(&app, &id, &hostd, act, &request_id).await });
    empty(StatusCode::ACCEPTED)
}

/// Carries out an accepted action on the server's host and records the
/// outcome: the new state, or the old one with the action marked failed.
async fn run_host_action(
    app: &App,
    id: &str,
    hostd: &HostdTarget,
    act: HostAction,
    request_id: &str,
) {
    let result = hostd_client::call(
        &hostd.url,
        &hostd.token,
        Method::POST,
        &format!("/instances/{id}/actions/{}", act.hostd),
        Some(&act.body),
        HOSTD_CREATE_TIMEOUT,
    )
    .await;
    let failure = match result {
        Ok(instance) => {
            let (vm, power) = match (act.name, instance["state"].as_str().unwrap_or("")) {
                ("suspend", "paused") => ("suspended", POWER_SUSPENDED),
                (_, state) => from_hostd(state),
            };
            let _ = app.servers.set_state(id, vm, None, power, None).await;
            tracing::info!(server = %id, action = act.name, "done");
            None
        }
        Err(e) => {
            tracing::warn!(server = %id, action = act.name, "failed: {e}");
            let _ = app.servers.clear_task(id).await;
            Some(e.to_string())
        }
    };
    if let Err(e) = app.actions.finish(request_id, failure.as_deref()).await {
        tracing::warn!(server = %id, "recording the end of {}: {e}", act.name);
    }
}

async fn console_output(app: &App, server: &Server, args: &Json) -> Response<Body> {
    let Some(hostd) = server_host(app, server).await else {
        return nova_error(
            StatusCode::CONFLICT,
            &format!(
                "Cannot get the console of instance {} while it is in vm_state {}",
                server.id, server.vm_state
            ),
        );
    };
    let length = args
        .get("length")
        .and_then(|l| l.as_i64().or_else(|| l.as_str()?.parse().ok()))
        .unwrap_or(1000)
        .clamp(1, 10_000);
    match hostd_client::call_raw(
        &hostd.url,
        &hostd.token,
        Method::GET,
        &format!("/instances/{}/console?tail={length}", server.id),
        None,
        HOSTD_TIMEOUT,
    )
    .await
    {
        Ok(text) => json(
            StatusCode::OK,
            &json!({"output": String::from_utf8_lossy(&text)}),
        ),
        Err(e) => nova_error(StatusCode::CONFLICT, &format!("console unavailable: {e}")),
    }
}

/// `GET /servers/{id}/os-instance-actions[/{request_id}]`.
async fn instance_actions(
    app: &App,
    auth: &Auth,
    id: &str,
    request_id: Option<&str>,
) -> Response<Body> {
    if let Err(r) = visible(app, auth, id).await {
        return r;
    }
    let view = |a: &Action, events: bool| {
        let t = |us: i64| {
            super::http::iso_micros(us.div_euclid(1_000_000))
                .replace(".000000Z", &format!(".{:06}", us.rem_euclid(1_000_000)))
        };
        let mut v = json!({
            "action": a.action, "instance_uuid": a.server_id, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id, "start_time": t(a.start_us),
            "message": a.result.as_deref().filter(|r| *r == "Error").map(|_| "Error"),
        });
        // Events (with the failure's message) are for admins at 2.1.
        if events {
            v["events"] = json!([{
                "event": a.event(), "start_time": t(a.start_us),
                "finish_time": a.finish_us.map(t), "result": a.result,
                "traceback": a.message,
            }]);
        }
        v
    };
    match request_id {
        None => match app.actions.list(id).await {
            Ok(list) => json(
                StatusCode::OK,
                &json!({"instanceActions": list.iter().map(|a| view(a, false)).collect::<Vec<_>>()}),
            ),
            Err(e) => store_error(e),
        },
        Some(r) => match app.actions.get(id, r).await {
            Ok(Some(a)) => json(
                StatusCode::OK,
                &json!({"instanceAction": view(&a, auth.is_admin())}),
            ),
            Ok(None) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Action for request_id {r} on instance {id} not found"),
            ),
            Err(e) => store_error(e),
        },
    }
}

/// Builds and tasks not updated for this long belong to a controller that
/// stopped (the longest hostd call is HOSTD_CREATE_TIMEOUT per attempt).
const STALE_AFTER_SECS: i64 = 15 * 60;
/// How long a deleted server's id is remembered (to tell its leftovers from
/// instances nobody recorded).
const TOMBSTONE_SECS: i64 = 24 * 3600;

/// Fails builds and drops tasks last updated before `before` (see
/// [`Servers::expire_stale`]), and closes their open actions.
pub async fn expire_stale(app: &App, before: i64) {
    match app.servers.expire_stale(before).await {
        Ok((0, 0)) => {}
        Ok((builds, tasks)) => tracing::warn!(
            builds,
            tasks,
            "abandoned builds failed and tasks dropped (their controller stopped)"
        ),
        Err(e) => tracing::error!("expiring abandoned builds: {e}"),
    }
    if let Err(e) = app.actions.abandon_unfinished(before).await {
        tracing::error!("closing abandoned instance actions: {e}");
    }
}

/// Keeps server states in step with their hosts (a guest that powers itself
/// off, a VMM that dies): every few seconds, each host's instances. Servers
/// with a task in flight are left to it. Each round also finishes recorded
/// deletes and removes leftover instances ([`reap_orphans`]); once a minute,
/// abandoned builds and tasks are expired.
pub async fn sync_loop(app: Arc<App>) {
    let mut rounds: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        rounds += 1;
        if rounds.is_multiple_of(20) {
            expire_stale(&app, now() - STALE_AFTER_SECS).await;
            if let Err(e) = app.servers.purge_tombstones(now() - TOMBSTONE_SECS).await {
                tracing::warn!("purging server tombstones: {e}");
            }
        }
        resume_deletes(&app, now() - HOSTD_TIMEOUT.as_secs() as i64 - 1).await;
        let (Ok(hosts), Ok(servers)) = (app.hosts.list().await, app.servers.placed().await) else {
            continue;
        };
        for host in hosts {
            let mine: Vec<&Server> = servers
                .iter()
                .filter(|s| {
                    s.host_id.as_deref() == Some(host.report.host_id.as_str())
                        && s.task_state.is_none()
                })
                .collect();
            let Ok(list) = hostd_client::call(
                &host.report.url,
                &app.hostd_token(&host.report.host_id),
                Method::GET,
                "/instances",
                None,
                HOSTD_TIMEOUT,
            )
            .await
            else {
                continue;
            };
            let states: BTreeMap<&str, &str> = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| Some((i["id"].as_str()?, i["state"].as_str()?)))
                        .collect()
                })
                .unwrap_or_default();
            let strangers: Vec<&str> = states
                .keys()
                .copied()
                .filter(|id| {
                    !servers.iter().any(|s| {
                        s.id == *id && s.host_id.as_deref() == Some(host.report.host_id.as_str())
                    })
                })
                .collect();
            reap_orphans(&app, &host, &strangers).await;
            for s in mine {
                let (vm, power, fault) = match states.get(s.id.as_str()) {
                    // A suspended server is a paused VMM.
                    Some(&"paused") if s.vm_state == "suspended" => continue,
                    Some(st) => {
                        let (vm, power) = from_hostd(st);
                        (vm, power, None)
                    }
                    None => ("error", 0, Some("the instance is gone from its host")),
                };
                if vm != s.vm_state || power != s.power_state {
                    // Only if nothing wrote it since it was read.
                    let _ = app
                        .servers
                        .sync_state(&s.id, s.generation, vm, power, fault)
                        .await;
                }
            }
        }
    }
}
