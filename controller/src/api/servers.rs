//! Nova servers at microversion 2.1: create (answered at once with BUILD; a
//! background task schedules it and asks the chosen host's hostd to run it),
//! list, detail, show, delete, actions, console output.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha224};

use super::compute::version_of;
use super::compute::{compute_error, nova_error, store_error};
use super::http::{empty, json, parse_boolean, read_json, Body, Microversion};
use super::App;
use crate::compute::actions::Action;
use crate::compute::servers::{ListQuery, Server};
use crate::compute::service::{
    self,
    create::{BootVolume, CreateServer},
    state::ServerAction,
};
use crate::context::RequestContext;
use crate::identity::Auth;
use crate::network::nova::{NicRequest, Requested};

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
    name: String,
}

#[derive(Serialize)]
struct Fault<'a> {
    code: u16,
    message: &'a str,
    created: String,
}

/// The 2.1 server representation: exactly the keys tempest's schema allows.
/// Serialized straight from the record (a list of 1,000 is 1.6 MB of JSON).
#[derive(Serialize)]
pub struct ServerView<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    /// `""` for a server booted from a volume, as Nova shows it.
    image: Json,
    /// A link to the flavor; the flavor itself from 2.47.
    flavor: Json,
    user_id: &'a str,
    tenant_id: &'a str,
    created: String,
    updated: String,
    metadata: &'a BTreeMap<String, String>,
    links: [Link; 2],
    addresses: Json,
    #[serde(rename = "hostId")]
    host_id: String,
    #[serde(rename = "accessIPv4")]
    access_ipv4: &'a str,
    #[serde(rename = "accessIPv6")]
    access_ipv6: &'a str,
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: &'a str,
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
    /// Shown in the states Nova reports progress in.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<u8>,
    /// The groups on its ports (absent without ports, as in Nova).
    #[serde(skip_serializing_if = "Option::is_none")]
    security_groups: Option<Vec<Named>>,
    /// `{"id"}` of each volume attached (the root volume first).
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    volumes_attached: Vec<Json>,
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
    // Attributes of later microversions, absent before.
    #[serde(skip_serializing_if = "Option::is_none")]
    locked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_status: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extended: Option<Extended<'a>>,
}

/// The admin's extended server attributes of microversion 2.3.
#[derive(Serialize)]
struct Extended<'a> {
    #[serde(rename = "OS-EXT-SRV-ATTR:reservation_id")]
    reservation_id: &'a str,
    #[serde(rename = "OS-EXT-SRV-ATTR:launch_index")]
    launch_index: i64,
    #[serde(rename = "OS-EXT-SRV-ATTR:kernel_id")]
    kernel_id: &'static str,
    #[serde(rename = "OS-EXT-SRV-ATTR:ramdisk_id")]
    ramdisk_id: &'static str,
    #[serde(rename = "OS-EXT-SRV-ATTR:hostname")]
    hostname: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:root_device_name")]
    root_device_name: &'static str,
    #[serde(rename = "OS-EXT-SRV-ATTR:user_data")]
    user_data: Option<&'a str>,
}

/// What a request's server views depend on besides the server: the
/// microversion, whether the caller is an admin, the flavors' names (2.47
/// embeds the flavor) and the hosts' states (2.16's host_status).
pub struct Shown {
    pub version: Microversion,
    pub admin: bool,
    flavor_names: BTreeMap<String, String>,
    host_up: BTreeMap<String, (bool, bool)>,
}

impl Shown {
    pub async fn load(app: &App, version: Microversion, admin: bool) -> Shown {
        let mut flavor_names = BTreeMap::new();
        if version >= (2, 47) {
            match app
                .flavors
                .list(crate::compute::flavors::Listing::All)
                .await
            {
                Ok(list) => flavor_names.extend(list.into_iter().map(|f| (f.id, f.name))),
                Err(e) => tracing::error!("the flavors' names: {e}"),
            }
        }
        let mut host_up = BTreeMap::new();
        if admin && version >= (2, 16) {
            match app.hosts.list().await {
                Ok(hosts) => host_up.extend(hosts.into_iter().map(|h| {
                    let alive = crate::identity::now() - h.last_seen
                        <= app.config.scheduler.heartbeat_timeout_secs;
                    (h.report.host_id.clone(), (alive, h.enabled))
                })),
                Err(e) => tracing::error!("the hosts' states: {e}"),
            }
        }
        Shown {
            version,
            admin,
            flavor_names,
            host_up,
        }
    }

    fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= (major, minor)
    }
}

impl<'a> ServerView<'a> {
    /// With the security groups of its ports.
    fn with_groups(mut self, names: Option<Vec<String>>) -> Self {
        self.security_groups =
            names.map(|list| list.into_iter().map(|name| Named { name }).collect());
        self
    }

    /// With the volumes attached to it.
    fn with_volumes(mut self, ids: &[String]) -> Self {
        self.volumes_attached = ids.iter().map(|id| json!({ "id": id })).collect();
        self
    }

    /// `addresses`: the server's, as [`addresses`] finds them.
    pub fn new(app: &App, s: &'a Server, shown: &Shown, addresses: Json) -> Self {
        let admin = shown.admin;
        let flavor = if shown.at_least(2, 47) {
            json!({
                "vcpus": s.vcpus, "ram": s.ram_mib, "disk": s.disk_gib,
                "ephemeral": s.ephemeral_gib, "swap": s.swap_mib,
                // A deleted flavor's name is gone: its id stands in.
                "original_name": shown.flavor_names.get(&s.flavor_id).unwrap_or(&s.flavor_id),
                "extra_specs": {},
            })
        } else {
            serde_json::to_value(Ref {
                id: &s.flavor_id,
                links: links(app, "flavors", &s.flavor_id),
            })
            .unwrap_or(Json::Null)
        };
        let host_status = (admin && shown.at_least(2, 16)).then(|| match &s.host_id {
            None => "",
            Some(h) => match shown.host_up.get(h) {
                Some((true, true)) => "UP",
                Some((true, false)) => "MAINTENANCE",
                Some((false, _)) => "DOWN",
                None => "UNKNOWN",
            },
        });
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
            image: if s.image_id.is_empty() {
                json!("")
            } else {
                serde_json::to_value(Ref {
                    id: &s.image_id,
                    links: links(app, "images", &s.image_id),
                })
                .unwrap_or(Json::Null)
            },
            flavor,
            user_id: &s.user_id,
            tenant_id: &s.project_id,
            created: iso(s.created_at),
            updated: iso(s.updated_at),
            metadata: &s.metadata,
            links: links(app, "servers", &s.id),
            addresses,
            host_id,
            access_ipv4: &s.access_ipv4,
            access_ipv6: &s.access_ipv6,
            disk_config: &s.disk_config,
            availability_zone: &s.availability_zone,
            vm_state: &s.vm_state,
            task_state: s.task_state.as_deref(),
            power_state: s.power_state,
            launched_at: s
                .launched_at
                .map(|t| super::http::iso_micros(t).replace('Z', "")),
            terminated_at: None,
            config_drive: if s.config_drive { "True" } else { "" },
            key_name: s.key_name.as_deref(),
            progress: matches!(
                s.status(),
                "ACTIVE" | "BUILD" | "REBUILD" | "RESIZE" | "VERIFY_RESIZE"
            )
            .then_some(0),
            security_groups: None,
            volumes_attached: Vec::new(),
            fault: s.fault.as_deref().map(|message| Fault {
                code: 500,
                message,
                created: iso(s.updated_at),
            }),
            host: admin.then_some(s.host_id.as_deref()),
            hypervisor_hostname: admin.then_some(s.host_id.as_deref()),
            instance_name: admin.then(|| format!("instance-{}", s.id)),
            locked: shown.at_least(2, 9).then_some(s.locked),
            description: shown.at_least(2, 19).then_some(s.description.as_deref()),
            tags: shown.at_least(2, 26).then_some(s.tags.as_slice()),
            host_status,
            extended: (admin && shown.at_least(2, 3)).then(|| Extended {
                reservation_id: &s.reservation_id,
                launch_index: s.launch_index,
                kernel_id: "",
                ramdisk_id: "",
                hostname: crate::compute::service::metadata::hostname(&s.name),
                root_device_name: "/dev/vda",
                user_data: s.user_data.as_deref(),
            }),
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
    let ctx = RequestContext {
        request_id: request_id_of(&req),
        auth: auth.clone(),
    };
    let ctx = &ctx;
    Some(match (req.method().clone(), rest) {
        (Method::GET, ["servers"]) => list(app, auth, &req, false).await,
        (Method::GET, ["servers", "detail"]) => list(app, auth, &req, true).await,
        (Method::POST, ["servers"]) => create(app, ctx, req).await,
        (Method::GET, ["servers", id]) => match service::visible(app, ctx, id).await {
            Ok(s) => {
                let shown = Shown::load(app, version_of(&req), auth.is_admin()).await;
                one(app, &shown, &s).await
            }
            Err(e) => compute_error(e),
        },
        (Method::DELETE, ["servers", id]) => delete(app, ctx, id).await,
        (Method::GET, ["servers", id, "ips"]) => match service::visible(app, ctx, id).await {
            Ok(s) => json(
                StatusCode::OK,
                &json!({"addresses": addresses(app, &s.id).await}),
            ),
            Err(e) => compute_error(e),
        },
        (Method::GET, ["servers", id, "ips", network]) => {
            match service::visible(app, ctx, id).await {
                Ok(s) => match addresses(app, &s.id).await.get(*network) {
                    Some(list) => json(StatusCode::OK, &json!({ *network: list })),
                    None => nova_error(
                        StatusCode::NOT_FOUND,
                        "Instance is not a member of specified network",
                    ),
                },
                Err(e) => compute_error(e),
            }
        }
        (Method::PUT, ["servers", id]) => {
            let id = id.to_string();
            update(app, ctx, &id, req).await
        }
        (Method::POST, ["servers", id, "remote-consoles"]) if version_of(&req) >= (2, 6) => {
            let id = id.to_string();
            remote_console(app, ctx, &id, req).await
        }
        (_, ["servers", _, "os-security-groups"]) if version_of(&req) < (2, 36) => {
            return super::nova_network::route(app, ctx, req, rest).await;
        }
        // No password is ever set in a guest (no adminPass is returned).
        (Method::GET, ["servers", id, "os-server-password"]) => {
            match service::visible(app, ctx, id).await {
                Ok(_) => json(StatusCode::OK, &json!({"password": ""})),
                Err(e) => compute_error(e),
            }
        }
        (Method::DELETE, ["servers", id, "os-server-password"]) => {
            match service::visible(app, ctx, id).await {
                Ok(_) => empty(StatusCode::NO_CONTENT),
                Err(e) => compute_error(e),
            }
        }
        (_, ["servers", id, "tags", rest @ ..])
            if version_of(&req) >= (2, 26) && rest.len() <= 1 =>
        {
            let id = id.to_string();
            // Tags travel percent-encoded in the path.
            let tag = rest.first().map(|t| {
                percent_encoding::percent_decode_str(t)
                    .decode_utf8_lossy()
                    .into_owned()
            });
            super::server_tags::route(app, ctx, req, &id, tag.as_deref()).await
        }
        (_, ["servers", id, "metadata", rest @ ..]) => {
            let id = id.to_string();
            let key = rest.first().map(|k| k.to_string());
            if rest.len() > 1 {
                return None;
            }
            super::server_metadata::route(app, ctx, req, &id, key.as_deref()).await
        }
        (Method::GET, ["servers", id, "diagnostics"]) => {
            match service::action::diagnostics(app, ctx, id).await {
                Ok(d) => json(StatusCode::OK, &d),
                Err(e) => compute_error(e),
            }
        }
        (Method::GET, ["servers", id, "os-instance-actions"]) => {
            instance_actions(app, ctx, id, None, version_of(&req)).await
        }
        (Method::GET, ["servers", id, "os-instance-actions", request_id]) => {
            instance_actions(app, ctx, id, Some(request_id), version_of(&req)).await
        }
        (Method::POST, ["servers", id, "action"]) => {
            let id = id.to_string();
            action(app, ctx, &id, req).await
        }
        (_, ["servers", id, "os-interface", rest @ ..]) => {
            let id = id.to_string();
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            return super::interfaces::route(app, ctx, req, &id, &rest).await;
        }
        (_, ["servers", id, "os-volume_attachments", rest @ ..]) => {
            let id = id.to_string();
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            return super::volume_attachments::route(app, ctx, req, &id, &rest).await;
        }
        _ => return None,
    })
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

/// Whether a `name` filter is a regular expression rather than a plain name.
fn has_regex_syntax(name: &str) -> bool {
    name.contains([
        '^', '$', '*', '+', '?', '.', '[', ']', '(', ')', '{', '}', '|', '\\',
    ])
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
        // Nova matches names as regular expressions: a plain name is a
        // case-insensitive substring, found by the database; others are
        // matched below.
        name: q.get("name").filter(|n| !has_regex_syntax(n)).cloned(),
        image: q.get("image").cloned(),
        flavor: q.get("flavor").cloned(),
        host: q.get("host").filter(|_| admin).cloned(),
        reservation_id: q.get("reservation_id").cloned(),
        limit: Some(limit),
        ..ListQuery::default()
    };
    let version = version_of(req);
    let status = q.get("status").map(|s| s.to_ascii_uppercase());
    if let Some(st) = &status {
        let states = vm_states_for(st);
        if states.is_none() && version >= (2, 38) {
            return bad(&format!("Invalid status value {st}"));
        }
        query.vm_states = Some(states.into_iter().collect());
    }
    if version >= (2, 26) {
        let list = |key: &str| -> Vec<String> {
            q.get(key)
                .map(|v| {
                    v.split(',')
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        query.tags = list("tags");
        query.tags_any = list("tags-any");
        query.not_tags = list("not-tags");
        query.not_tags_any = list("not-tags-any");
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
    // `name` with regex syntax and `ip` (a regex on the addresses) are
    // matched here, on the project's servers after the marker; the limit
    // applies to what matches.
    let regex = |key: &str| -> Result<Option<regex::Regex>, String> {
        q.get(key)
            .filter(|v| key != "name" || has_regex_syntax(v))
            .map(|v| {
                regex::RegexBuilder::new(v)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("Invalid {key} filter {v:?}: {e}"))
            })
            .transpose()
    };
    let (name_re, ip_re) = match (regex("name"), regex("ip")) {
        (Ok(n), Ok(i)) => (n, i),
        (Err(e), _) | (_, Err(e)) => return bad(&e),
    };
    if name_re.is_some() || ip_re.is_some() {
        query.limit = None;
    }
    let mut servers = match app.servers.page(&query).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    if let Some(re) = &name_re {
        servers.retain(|s| re.is_match(&s.name));
    }
    if let Some(re) = &ip_re {
        let by_server = app.network.addresses_of_servers().await.unwrap_or_default();
        servers.retain(|s| {
            by_server.get(&s.id).is_some_and(|nets| {
                nets.as_object()
                    .into_iter()
                    .flat_map(|n| n.values())
                    .any(|list| {
                        list.as_array()
                            .into_iter()
                            .flatten()
                            .any(|a| a["addr"].as_str().is_some_and(|addr| re.is_match(addr)))
                    })
            })
        });
    }
    if limit >= 0 {
        servers.truncate(limit as usize);
    }
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
    let listed = servers
        .iter()
        .filter(|s| status.as_deref().is_none_or(|st| s.status() == st));
    if detail {
        let shown = Shown::load(app, version_of(req), admin).await;
        let mut by_server = match app.network.addresses_of_servers().await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("listing servers' addresses: {e}");
                Default::default()
            }
        };
        let mut volumes = app
            .volumes
            .store
            .attached_by_server()
            .await
            .unwrap_or_else(|e| {
                tracing::error!("listing servers' volumes: {e}");
                Default::default()
            });
        let mut groups = app
            .network
            .group_names_of_servers()
            .await
            .unwrap_or_else(|e| {
                tracing::error!("listing servers' security groups: {e}");
                Default::default()
            });
        let servers = listed
            .map(|s| {
                let a = by_server.remove(&s.id).unwrap_or_else(|| json!({}));
                let v = volumes.remove(&s.id).unwrap_or_default();
                ServerView::new(app, s, &shown, a)
                    .with_volumes(&v)
                    .with_groups(groups.remove(&s.id))
            })
            .collect();
        json(
            StatusCode::OK,
            &ServerList {
                servers,
                servers_links: next,
            },
        )
    } else {
        let items: Vec<ServerBrief> = listed
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

pub fn request_id_of(req: &Request<Incoming>) -> String {
    req.extensions()
        .get::<super::RequestId>()
        .map_or_else(super::http::new_request_id, |r| r.0.clone())
}

/// `POST /servers`: Nova's body parsed into a create; answered at once
/// (202, BUILD) while the service builds it.
async fn create(app: &App, ctx: &RequestContext, req: Request<Incoming>) -> Response<Body> {
    let version = version_of(&req);
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = parse_create(&body, version).and_then(|c| Ok((c, parse_count(&body)?)));
    let (mut create, count) = match parsed {
        Ok(c) => c,
        Err(m) => return nova_error(StatusCode::BAD_REQUEST, &m),
    };
    create.reservation_id = format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Up to max_count servers, named name-1, name-2, ... when more than one
    // may be made; fewer than min_count is a failure and undoes the rest.
    let mut made: Vec<Server> = Vec::new();
    for i in 1..=count.max {
        let mut one = create.clone();
        one.launch_index = i as i64 - 1;
        if count.max > 1 {
            one.name = format!("{}-{i}", create.name);
        }
        match service::create::create(app, ctx, one).await {
            Ok(s) => made.push(s),
            Err(service::ComputeError::OverQuota(_)) if made.len() >= count.min => break,
            Err(e) => {
                for s in &made {
                    if let Err(undo) = service::delete::delete(app, ctx, &s.id).await {
                        tracing::error!(server = %s.id, "undoing a multiple create: {undo}");
                    }
                }
                return compute_error(e);
            }
        }
    }
    let Some(server) = made.first() else {
        return nova_error(StatusCode::BAD_REQUEST, "max_count must be at least 1");
    };
    if count.return_reservation_id {
        return json(
            StatusCode::ACCEPTED,
            &json!({ "reservation_id": create.reservation_id }),
        );
    }
    // The groups asked for, as Nova echoes them.
    let groups: Vec<Json> = if create.security_groups.is_empty() {
        vec![json!({"name": "default"})]
    } else {
        create
            .security_groups
            .iter()
            .map(|g| json!({ "name": g }))
            .collect()
    };
    let mut r = json(
        StatusCode::ACCEPTED,
        &json!({"server": {"id": server.id, "links": links(app, "servers", &server.id),
                           "OS-DCF:diskConfig": server.disk_config, "security_groups": groups}}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}/compute/v2.1/servers/{}",
        app.config.public_url, server.id
    )) {
        r.headers_mut().insert("location", v);
    }
    r
}

/// The fields of a create body we use, checked as Nova's schema does.
fn parse_create(body: &Json, version: Microversion) -> Result<CreateServer, String> {
    let s = body
        .get("server")
        .ok_or("'server' is a required property")?;
    // From 2.37 a create says which networks, or "auto", or "none".
    if version >= (2, 37) && s.get("networks").is_none() {
        return Err(
            "Invalid input for field/attribute server. 'networks' is a required property".into(),
        );
    }
    let name = s
        .get("name")
        .and_then(Json::as_str)
        .filter(|n| (1..=255).contains(&n.trim().len()))
        .ok_or(
            "Invalid input for field/attribute name: a string of 1 to 255 characters is required",
        )?;
    let flavor_ref = s
        .get("flavorRef")
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .ok_or("'flavorRef' is a required property")?;
    // imageRef; or the boot_index 0 block device: an image (booted as
    // imageRef), a volume, or an image made into a volume.
    let boot_volume = parse_boot_volume(s.get("block_device_mapping_v2"))?;
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
                    (b.get("source_type")?.as_str()? == "image"
                        && b.get("destination_type").and_then(Json::as_str) != Some("volume"))
                    .then(|| b.get("uuid")?.as_str().map(str::to_owned))?
                })
        });
    let image_ref = match (image_ref, &boot_volume) {
        (Some(_), Some(BootVolume::Volume { .. })) => {
            return Err("Block Device Mapping is Invalid: a server boots from an image or from a volume, not both".into())
        }
        (Some(i), _) => i,
        (None, Some(_)) => String::new(),
        (None, None) => return Err("an image (imageRef) or a volume to boot from (block_device_mapping_v2 with boot_index 0) is required".into()),
    };
    let metadata = match s.get("metadata") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(m) => super::server_metadata::parse("metadata", m)?,
    };
    let text = |key: &str| s.get(key).and_then(Json::as_str).map(str::to_owned);
    let user_data = match s.get("user_data") {
        None | Some(Json::Null) => None,
        Some(Json::String(d)) => Some(checked_user_data(d)?),
        Some(_) => {
            return Err("Invalid input for field/attribute user_data: must be a string".into())
        }
    };
    let networks = parse_networks(s.get("networks"))?;
    let config_drive = match s.get("config_drive") {
        None | Some(Json::Null) => false,
        Some(v) => parse_boolean(v)
            .ok_or("Invalid input for field/attribute config_drive: must be a boolean")?,
    };
    let access = parse_access(s)?;
    let description = parse_description(s, version)?.flatten();
    // `[{"name": group}]`: names (or ids) of the project's groups.
    let security_groups = match s.get("security_groups") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(list)) => list
            .iter()
            .map(|g| g.get("name").and_then(Json::as_str).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(
                "Invalid input for field/attribute security_groups: a list of {\"name\": ...}",
            )?,
        Some(_) => {
            return Err(
                "Invalid input for field/attribute security_groups: a list of {\"name\": ...}"
                    .into(),
            )
        }
    };
    Ok(CreateServer {
        access_ipv4: access.ipv4.unwrap_or_default(),
        access_ipv6: access.ipv6.unwrap_or_default(),
        disk_config: access.disk_config,
        description,
        security_groups,
        // `{"os:scheduler_hints": {"group": id}}`, beside `server`.
        group: ["os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"]
            .iter()
            .find_map(|k| body.get(*k)?.get("group")?.as_str().map(str::to_owned)),
        reservation_id: String::new(),
        launch_index: 0,
        boot_volume,
        config_drive,
        networks,
        name: name.trim().to_owned(),
        flavor_ref,
        image_ref,
        key_name: text("key_name"),
        metadata,
        user_data,
        availability_zone: text("availability_zone"),
    })
}

/// A `description` (2.19 on): absent (None), null (Some(None)) or at most
/// 255 characters; before 2.19 it is an unknown key.
fn parse_description(s: &Json, version: Microversion) -> Result<Option<Option<String>>, String> {
    match s.get("description") {
        None => Ok(None),
        Some(_) if version < (2, 19) => Err(
            "Invalid input for field/attribute server. Additional properties are not allowed ('description' was unexpected)".into(),
        ),
        Some(Json::Null) => Ok(Some(None)),
        Some(Json::String(d)) if d.chars().count() <= 255 => Ok(Some(Some(d.clone()))),
        Some(_) => Err(
            "Invalid input for field/attribute description: a string of at most 255 characters or null".into(),
        ),
    }
}

/// How many servers a create asks for.
#[derive(Debug, PartialEq)]
struct Count {
    min: usize,
    max: usize,
    /// Answer with the reservation id instead of the first server.
    return_reservation_id: bool,
}

/// `min_count`, `max_count` (integers of at least 1, as numbers or strings;
/// max defaults to min) and `return_reservation_id`.
fn parse_count(body: &Json) -> Result<Count, String> {
    let s = &body["server"];
    let int = |key: &str| -> Result<Option<usize>, String> {
        let n = match s.get(key) {
            None => return Ok(None),
            Some(Json::Number(n)) => n.as_u64(),
            Some(Json::String(t)) => t.trim().parse::<u64>().ok(),
            Some(_) => None,
        };
        match n {
            // More than any quota allows; bounded so a loop cannot run away.
            Some(n @ 1..=1000) => Ok(Some(n as usize)),
            _ => Err(format!(
                "Invalid input for field/attribute {key}. Value: {}. must be an integer from 1 to 1000",
                s[key]
            )),
        }
    };
    let min = int("min_count")?.unwrap_or(1);
    let max = int("max_count")?.unwrap_or(min);
    if max < min {
        return Err("min_count must be <= max_count".into());
    }
    let return_reservation_id = match s.get("return_reservation_id") {
        None | Some(Json::Null) => false,
        Some(v) => parse_boolean(v)
            .ok_or("Invalid input for field/attribute return_reservation_id: must be a boolean")?,
    };
    Ok(Count {
        min,
        max,
        return_reservation_id,
    })
}

/// What create, update and rebuild bodies may set besides the name:
/// `accessIPv4`, `accessIPv6` (addresses, or empty) and `OS-DCF:diskConfig`.
#[derive(Debug, Default, PartialEq)]
struct Access {
    ipv4: Option<String>,
    ipv6: Option<String>,
    disk_config: Option<String>,
}

impl Access {
    fn apply(&self, s: &mut Server) {
        if let Some(a) = &self.ipv4 {
            s.access_ipv4.clone_from(a);
        }
        if let Some(a) = &self.ipv6 {
            s.access_ipv6.clone_from(a);
        }
        if let Some(d) = &self.disk_config {
            s.disk_config.clone_from(d);
        }
    }
}

fn parse_access(s: &Json) -> Result<Access, String> {
    let address = |key: &str, v6: bool| -> Result<Option<String>, String> {
        match s.get(key) {
            None => Ok(None),
            Some(Json::String(a)) if a.is_empty() => Ok(Some(String::new())),
            Some(Json::String(a)) => match a.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_ipv6() == v6 => Ok(Some(ip.to_string())),
                _ => Err(format!(
                    "Invalid input for field/attribute {key}. Value: {a}. '{a}' is not a '{}'",
                    if v6 { "ipv6" } else { "ipv4" }
                )),
            },
            Some(other) => Err(format!(
                "Invalid input for field/attribute {key}. Value: {other}. not a string"
            )),
        }
    };
    let disk_config = match s.get("OS-DCF:diskConfig") {
        None => None,
        Some(Json::String(d)) if d == "AUTO" || d == "MANUAL" => Some(d.clone()),
        Some(other) => {
            return Err(format!(
                "Invalid input for field/attribute OS-DCF:diskConfig. Value: {other}. not one of AUTO, MANUAL"
            ))
        }
    };
    Ok(Access {
        ipv4: address("accessIPv4", false)?,
        ipv6: address("accessIPv6", true)?,
        disk_config,
    })
}

/// `PUT /servers/{id}`: a new name, access addresses or disk config label.
async fn update(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    // The owner's view without the admin's attributes, as Nova answers.
    let shown = Shown::load(app, version_of(&req), false).await;
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |m: &str| nova_error(StatusCode::BAD_REQUEST, m);
    let Some(fields) = body.get("server").and_then(Json::as_object) else {
        return bad("Invalid input for field/attribute server: 'server' is a required object");
    };
    if let Some(key) = fields.keys().find(|k| {
        !matches!(
            k.as_str(),
            "name" | "accessIPv4" | "accessIPv6" | "OS-DCF:diskConfig" | "description"
        )
    }) {
        return bad(&format!(
            "Invalid input for field/attribute server. Additional properties are not allowed ('{key}' was unexpected)"
        ));
    }
    let name = match fields.get("name") {
        None => None,
        Some(Json::String(n)) if (1..=255).contains(&n.trim().len()) => Some(n.trim().to_owned()),
        Some(_) => return bad(
            "Invalid input for field/attribute name: a string of 1 to 255 characters is required",
        ),
    };
    let access = match parse_access(&body["server"]) {
        Ok(a) => a,
        Err(m) => return bad(&m),
    };
    let description = match parse_description(&body["server"], shown.version) {
        Ok(d) => d,
        Err(m) => return bad(&m),
    };
    let updated = service::update::update(app, ctx, id, |s| {
        if let Some(n) = &name {
            s.name.clone_from(n);
        }
        if let Some(d) = &description {
            s.description.clone_from(d);
        }
        access.apply(s);
        Ok(())
    })
    .await;
    match updated {
        Ok(s) => json(
            StatusCode::OK,
            &json!({"server": basic_view(app, &s, &shown, addresses(app, &s.id).await)}),
        ),
        Err(e) => compute_error(e),
    }
}

/// A server as Nova answers an update or a rebuild: the core attributes
/// only, none of the extensions' (`OS-EXT-*`, `OS-SRV-USG:*`, key name,
/// security groups, config drive, volumes, address types and MACs).
fn basic_view(app: &App, s: &Server, shown: &Shown, addresses: Json) -> Json {
    let mut view = serde_json::to_value(ServerView::new(app, s, shown, addresses))
        .unwrap_or_else(|_| json!({}));
    if let Some(fields) = view.as_object_mut() {
        fields.retain(|k, _| {
            !(k.starts_with("OS-EXT-")
                || k.starts_with("OS-SRV-USG:")
                || k.starts_with("os-extended-volumes:")
                || matches!(k.as_str(), "key_name" | "security_groups" | "config_drive"))
        });
        if let Some(Json::Object(nets)) = fields.get_mut("addresses") {
            for entry in nets.values_mut().filter_map(Json::as_array_mut).flatten() {
                if let Some(e) = entry.as_object_mut() {
                    e.retain(|k, _| k == "addr" || k == "version");
                }
            }
        }
    }
    view
}

/// One server as `GET /servers/{id}` shows it, with its addresses and volumes.
async fn one(app: &App, shown: &Shown, s: &Server) -> Response<Body> {
    let volumes: Vec<String> = match app.volumes.store.of_server(&s.id).await {
        Ok(v) => v.into_iter().map(|v| v.id).collect(),
        Err(e) => {
            tracing::error!(server = %s.id, "its volumes: {e}");
            Vec::new()
        }
    };
    json(
        StatusCode::OK,
        &ServerOne {
            server: ServerView::new(app, s, shown, addresses(app, &s.id).await)
                .with_volumes(&volumes)
                .with_groups(group_names(app, &s.id).await),
        },
    )
}

/// The names of the security groups on a server's ports; None without any.
async fn group_names(app: &App, server_id: &str) -> Option<Vec<String>> {
    app.network
        .group_names_of_server(server_id)
        .await
        .unwrap_or_else(|e| {
            tracing::error!(server = server_id, "its security groups: {e}");
            None
        })
}

/// The volume a create boots from: the `block_device_mapping_v2` entry
/// with boot_index 0 whose destination is a volume (an existing volume, or
/// one made from an image). Other entries are refused: attach volumes
/// after the server is up.
fn parse_boot_volume(v: Option<&Json>) -> Result<Option<BootVolume>, String> {
    let bad = |why: &str| Err(format!("Block Device Mapping is Invalid: {why}"));
    let list = match v {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::Array(list)) => list,
        Some(_) => return bad("block_device_mapping_v2 must be a list"),
    };
    let mut found = None;
    for bdm in list {
        let Some(m) = bdm.as_object() else {
            return bad("each block device must be an object");
        };
        let text = |k: &str| m.get(k).and_then(Json::as_str);
        let boot_index = match m.get("boot_index") {
            None | Some(Json::Null) => None,
            Some(Json::Number(n)) => n.as_i64(),
            Some(Json::String(s)) => s.parse().ok(),
            Some(_) => return bad("boot_index must be an integer"),
        };
        let destination = text("destination_type").unwrap_or("local");
        match (text("source_type"), destination, boot_index) {
            // The image a server boots from as imageRef.
            (Some("image"), "local", Some(0)) => continue,
            (Some(source @ ("volume" | "image")), "volume", Some(0)) => {
                let Some(uuid) = text("uuid").filter(|u| !u.is_empty()) else {
                    return bad("a boot volume needs a uuid");
                };
                let delete_on_termination = match m.get("delete_on_termination") {
                    None | Some(Json::Null) => false,
                    Some(v) => parse_boolean(v)
                        .ok_or("Block Device Mapping is Invalid: delete_on_termination must be a boolean")?,
                };
                found = Some(if source == "volume" {
                    BootVolume::Volume {
                        id: uuid.to_owned(),
                        delete_on_termination,
                    }
                } else {
                    let size = match m.get("volume_size") {
                        Some(Json::Number(n)) => n.as_i64(),
                        Some(Json::String(s)) => s.parse().ok(),
                        _ => None,
                    };
                    let Some(size_gib) = size.filter(|n| *n > 0) else {
                        return bad("volume_size must be a positive integer for an image made into a volume");
                    };
                    BootVolume::Image {
                        image_id: uuid.to_owned(),
                        size_gib,
                        delete_on_termination,
                    }
                });
            }
            _ => {
                return bad(
                    "only the boot_index 0 image or volume is taken at create: attach other volumes once the server is up",
                )
            }
        }
    }
    Ok(found)
}

/// A server's `addresses` (an empty object when the network service cannot
/// say: the server is still shown).
async fn addresses(app: &App, server_id: &str) -> Json {
    let found = match app.network.server_ports(server_id).await {
        Ok(ports) => app.network.addresses(&ports).await,
        Err(e) => Err(e),
    };
    found.unwrap_or_else(|e| {
        tracing::error!(server = server_id, "its addresses: {e}");
        json!({})
    })
}

/// A create's `networks`: a list of `{"uuid", "fixed_ip"}` or `{"port"}`,
/// or (as microversion 2.37 has it) `"auto"` or `"none"`.
fn parse_networks(v: Option<&Json>) -> Result<Requested, String> {
    let bad = |why: &str| Err(format!("Invalid input for field/attribute networks: {why}"));
    let list = match v {
        None | Some(Json::Null) => return Ok(Requested::Default),
        Some(Json::String(s)) if s == "auto" => return Ok(Requested::Default),
        Some(Json::String(s)) if s == "none" => return Ok(Requested::Nothing),
        Some(Json::Array(list)) => list,
        Some(_) => return bad("a list of networks, 'auto' or 'none' is required"),
    };
    let mut nics = Vec::new();
    for item in list {
        let Some(item) = item.as_object() else {
            return bad("each network must be an object");
        };
        let text = |k: &str| item.get(k).and_then(Json::as_str).map(str::to_owned);
        let fixed_ip = match text("fixed_ip") {
            None => None,
            Some(ip) => match ip.parse() {
                Ok(a) => Some(a),
                Err(_) => return Err(format!("Invalid fixed IP address ({ip})")),
            },
        };
        let nic = NicRequest {
            network_id: text("uuid"),
            port_id: text("port"),
            fixed_ip,
            ..NicRequest::default()
        };
        if nic.network_id.is_none() && nic.port_id.is_none() {
            return bad("each network needs a 'uuid' or a 'port'");
        }
        nics.push(nic);
    }
    Ok(Requested::These(nics))
}

/// Nova's rule for `user_data`: base64, at most 65535 characters of it.
fn checked_user_data(data: &str) -> Result<String, String> {
    use base64::Engine;
    const MAX: usize = 65535;
    if data.len() > MAX {
        return Err(format!(
            "Invalid input for field/attribute user_data: at most {MAX} characters of base64 \
             ({} given)",
            data.len()
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| "Invalid input for field/attribute user_data: not a base64 string")?;
    Ok(data.to_owned())
}

/// `DELETE /servers/{id}`: recorded and answered at once (204, as Nova
/// does); the server shows task_state deleting until it is gone.
async fn delete(app: &App, ctx: &RequestContext, id: &str) -> Response<Body> {
    match service::delete::delete(app, ctx, id).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(e) => compute_error(e),
    }
}

/// `POST /servers/{id}/action`: one key naming the action.
async fn action(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let version = version_of(&req);
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
    // Actions later microversions removed are not found there, as in Nova.
    let removed = match name.as_str() {
        "os-getSerialConsole" => version >= (2, 6),
        "addFloatingIp" | "removeFloatingIp" => version >= (2, 44),
        _ => false,
    };
    if removed {
        return nova_error(
            StatusCode::NOT_FOUND,
            &format!(
                "There is no such action {name} at microversion {}.{}",
                version.0, version.1
            ),
        );
    }
    // Found (or 404) and not locked against the caller (409), before the
    // action itself is looked at.
    if let Err(e) = service::changeable(app, ctx, id, name).await {
        return compute_error(e);
    }
    if name == "lock" || name == "unlock" {
        let lock = name == "lock";
        return match service::update::update(app, ctx, id, |s| {
            s.locked = lock;
            Ok(())
        })
        .await
        {
            Ok(_) => empty(StatusCode::ACCEPTED),
            Err(e) => compute_error(e),
        };
    }
    if name == "os-getConsoleOutput" {
        let lines = args
            .get("length")
            .and_then(|l| l.as_i64().or_else(|| l.as_str()?.parse().ok()))
            .unwrap_or(1000);
        return match service::action::console_output(app, ctx, id, lines).await {
            Ok(output) => json(StatusCode::OK, &json!({ "output": output })),
            Err(e) => compute_error(e),
        };
    }
    let resize = match name.as_str() {
        "resize" => {
            let Some(flavor_ref) = args.get("flavorRef").and_then(|f| {
                f.as_str()
                    .map(str::to_owned)
                    .or_else(|| f.as_i64().map(|n| n.to_string()))
            }) else {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid input for field/attribute resize. 'flavorRef' is a required property",
                );
            };
            let access = match parse_access(args) {
                Ok(a) => a,
                Err(m) => return nova_error(StatusCode::BAD_REQUEST, &m),
            };
            let mut resized = service::resize::resize(app, ctx, id, &flavor_ref).await;
            if resized.is_ok() && access.disk_config.is_some() {
                resized = service::update::update(app, ctx, id, |s| {
                    access.apply(s);
                    Ok(())
                })
                .await
                .map(drop);
            }
            Some(resized.map(|()| StatusCode::ACCEPTED))
        }
        "confirmResize" => Some(
            service::resize::confirm(app, ctx, id)
                .await
                .map(|()| StatusCode::NO_CONTENT),
        ),
        "revertResize" => Some(
            service::resize::revert(app, ctx, id)
                .await
                .map(|()| StatusCode::ACCEPTED),
        ),
        _ => None,
    };
    if let Some(result) = resize {
        return match result {
            Ok(status) => empty(status),
            Err(e) => compute_error(e),
        };
    }
    if name == "rebuild" {
        // Nova 2.1's schema: anything else is refused; what Virga does not
        // carry out yet says so rather than being dropped.
        if let Some(key) = args.as_object().and_then(|o| {
            o.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "imageRef"
                        | "name"
                        | "adminPass"
                        | "preserve_ephemeral"
                        | "OS-DCF:diskConfig"
                        | "accessIPv4"
                        | "accessIPv6"
                        | "metadata"
                        | "description"
                )
            })
        }) {
            let why = match key.as_str() {
                "personality" => {
                    format!("Rebuilding with {key} is not supported.")
                }
                _ => format!(
                    "Invalid input for field/attribute rebuild. Additional properties are not allowed ('{key}' was unexpected)"
                ),
            };
            return nova_error(StatusCode::BAD_REQUEST, &why);
        }
        let Some(image_ref) = args.get("imageRef").and_then(Json::as_str) else {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "Invalid input for field/attribute rebuild. 'imageRef' is a required property",
            );
        };
        // A rebuild makes the instance anew, its ephemeral disk with it (as
        // Nova's libvirt driver, which refuses to keep one).
        match args.get("preserve_ephemeral") {
            None | Some(Json::Bool(false)) => {}
            Some(Json::Bool(true)) => {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "preserve_ephemeral is not supported: a rebuild gives the server a fresh ephemeral disk",
                )
            }
            Some(_) => {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid input for field/attribute preserve_ephemeral. Value is not a valid boolean",
                )
            }
        }
        let name = match args.get("name") {
            None | Some(Json::Null) => None,
            Some(Json::String(n)) if !n.trim().is_empty() && n.len() <= 255 => Some(n.clone()),
            Some(_) => {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid input for field/attribute name: 1 to 255 characters",
                )
            }
        };
        let metadata = match args.get("metadata") {
            None => None,
            Some(m) => match super::server_metadata::parse("metadata", m) {
                Ok(m) => Some(m),
                Err(e) => return nova_error(StatusCode::BAD_REQUEST, &e),
            },
        };
        let access = match parse_access(args) {
            Ok(a) => a,
            Err(m) => return nova_error(StatusCode::BAD_REQUEST, &m),
        };
        let description = match parse_description(args, version) {
            Ok(d) => d,
            Err(m) => return nova_error(StatusCode::BAD_REQUEST, &m),
        };
        let req = service::rebuild::Rebuild {
            image_ref: image_ref.to_owned(),
            name,
        };
        // The rebuild starts, then what the owner set with it is recorded.
        let rebuilt = match service::rebuild::rebuild(app, ctx, id, req).await {
            Ok(s) => s,
            Err(e) => return compute_error(e),
        };
        let shown = if metadata.is_none() && access == Access::default() && description.is_none() {
            Ok(rebuilt)
        } else {
            service::update::update(app, ctx, id, |s| {
                if let Some(m) = &metadata {
                    s.metadata.clone_from(m);
                }
                if let Some(d) = &description {
                    s.description.clone_from(d);
                }
                access.apply(s);
                Ok(())
            })
            .await
        };
        return match shown {
            Ok(s) => json(
                StatusCode::ACCEPTED,
                &json!({"server": basic_view(
                    app,
                    &s,
                    &Shown::load(app, version, false).await,
                    addresses(app, &s.id).await
                )}),
            ),
            Err(e) => compute_error(e),
        };
    }
    if name == "createImage" || name == "createBackup" {
        let Some(image_name) = args
            .get("name")
            .and_then(Json::as_str)
            .filter(|n| !n.trim().is_empty() && n.len() <= 255)
        else {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid input for field/attribute {name}. 'name' is a required property of 1 to 255 characters"),
            );
        };
        let purpose = if name == "createBackup" {
            match backup_args(args) {
                Ok(p) => p,
                Err(e) => return nova_error(StatusCode::BAD_REQUEST, &e),
            }
        } else {
            service::snapshot::Purpose::Snapshot
        };
        // A backup kept by no rotation is made and rotated out at once:
        // nothing to point at.
        let kept = !matches!(
            purpose,
            service::snapshot::Purpose::Backup { rotation: 0, .. }
        );
        let metadata = match args.get("metadata") {
            None => BTreeMap::new(),
            Some(m) => match super::server_metadata::parse("metadata", m) {
                Ok(m) => m,
                Err(e) => return nova_error(StatusCode::BAD_REQUEST, &e),
            },
        };
        return match service::snapshot::create_image(app, ctx, id, image_name, metadata, purpose)
            .await
        {
            Ok(_) if !kept => empty(StatusCode::ACCEPTED),
            // From 2.45 the image's id is in the body, no longer a Location.
            Ok(image_id) if version >= (2, 45) => {
                json(StatusCode::ACCEPTED, &json!({ "image_id": image_id }))
            }
            Ok(image_id) => {
                let mut r = empty(StatusCode::ACCEPTED);
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "{}/image/v2/images/{image_id}",
                    app.config.public_url
                )) {
                    r.headers_mut().insert("location", v);
                }
                r
            }
            Err(e) => compute_error(e),
        };
    }
    if name == "os-getSerialConsole" {
        let console_type = args.get("type").and_then(Json::as_str).unwrap_or("");
        return match service::console::serial_console_url(app, ctx, id, console_type).await {
            Ok(url) => json(
                StatusCode::OK,
                &json!({"console": {"type": "serial", "url": url}}),
            ),
            Err(e) => compute_error(e),
        };
    }
    let hard = args
        .get("type")
        .and_then(Json::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("HARD"));
    if name == "restore" || name == "forceDelete" {
        return match service::action::on_soft_deleted(app, ctx, id, name).await {
            Ok(()) => empty(StatusCode::ACCEPTED),
            Err(e) => compute_error(e),
        };
    }
    if name == "injectNetworkInfo" {
        return match service::action::inject_network_info(app, ctx, id).await {
            Ok(()) => empty(StatusCode::ACCEPTED),
            Err(e) => compute_error(e),
        };
    }
    if name == "os-resetState" {
        let state = args.get("state").and_then(Json::as_str).unwrap_or("");
        return match service::action::reset_state(app, ctx, id, state).await {
            Ok(()) => empty(StatusCode::ACCEPTED),
            Err(e) => compute_error(e),
        };
    }
    if let Some(r) = super::nova_network::action(app, ctx, id, name, args).await {
        return r;
    }
    let Some(act) = ServerAction::from_nova(name, hard) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            &format!("Unsupported action {name:?}"),
        );
    };
    match service::action::act(app, ctx, id, act).await {
        Ok(()) => empty(StatusCode::ACCEPTED),
        Err(e) => compute_error(e),
    }
}

/// `POST /servers/{id}/remote-consoles` (2.6 on): the serial console is
/// the one protocol a Virga guest has.
async fn remote_console(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let asked = &body["remote_console"];
    let (protocol, kind) = (
        asked.get("protocol").and_then(Json::as_str),
        asked.get("type").and_then(Json::as_str),
    );
    match (protocol, kind) {
        (Some("serial"), Some("serial")) => {}
        (Some(p), Some(t)) if ["vnc", "spice", "rdp", "mks"].contains(&p) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Unavailable console type {t}: Virga guests have a serial console only"),
            )
        }
        _ => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "Invalid input for field/attribute remote_console: protocol and type are required (serial)",
            )
        }
    }
    match service::console::serial_console_url(app, ctx, id, "serial").await {
        Ok(url) => json(
            StatusCode::OK,
            &json!({"remote_console": {"protocol": "serial", "type": "serial", "url": url}}),
        ),
        Err(e) => compute_error(e),
    }
}

/// `GET /servers/{id}/os-instance-actions[/{request_id}]`.
async fn instance_actions(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    request_id: Option<&str>,
    version: Microversion,
) -> Response<Body> {
    if let Err(e) = service::visible(app, ctx, id).await {
        // From 2.21 a deleted server's actions are still listed (to its
        // project), until its tombstone goes.
        let deleted = version >= (2, 21)
            && matches!(app.servers.was_deleted(id).await, Ok(true))
            && app.actions.list(id).await.is_ok_and(|list| {
                list.first()
                    .is_some_and(|a| ctx.is_admin() || a.project_id == ctx.project_id())
            });
        if !deleted {
            return compute_error(e);
        }
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
                &json!({"instanceAction": view(&a, ctx.is_admin())}),
            ),
            Ok(None) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Action for request_id {r} on instance {id} not found"),
            ),
            Err(e) => store_error(e),
        },
    }
}

/// `createBackup`'s own arguments: `backup_type` (a string) and `rotation`
/// (a non-negative integer, or its digits as a string, as Nova's schema
/// takes it).
fn backup_args(args: &Json) -> Result<service::snapshot::Purpose, String> {
    let invalid = |what: &str| format!("Invalid input for field/attribute {what}.");
    let backup_type = args
        .get("backup_type")
        .and_then(Json::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| invalid("backup_type: a required string"))?;
    let rotation = match args.get("rotation") {
        Some(Json::Number(n)) => n.as_u64(),
        Some(Json::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
    .and_then(|r| u32::try_from(r).ok())
    .ok_or_else(|| invalid("rotation: a required non-negative integer"))?;
    Ok(service::snapshot::Purpose::Backup {
        backup_type: backup_type.to_owned(),
        rotation,
    })
}
