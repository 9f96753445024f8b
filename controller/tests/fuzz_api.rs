//! Every API's JSON bodies and query strings, fuzzed against a real controller
//! (proptest, stable toolchain). Invariants, whatever a client sends:
//! - the answer is a whole HTTP response within [`HANG`], never a 5xx or a
//!   dropped connection, and an error answer carries a JSON body;
//! - the controller keeps serving (a known-good request after every case);
//! - a refused create leaves nothing behind: the servers, images, flavors,
//!   keypairs, projects and users listed at the end are exactly the ones whose
//!   creation was answered with success.
//!
//! Budget as the VMM's targets: `VIRGA_FUZZ_CASES` (default 48) or
//! `VIRGA_FUZZ_SECONDS`; `cargo xtask fuzz --target api` runs it long.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

const HANG: Duration = Duration::from_secs(10);
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC86NGpKyGx2fgQ67Jl3UY3Fr5oBQqhOJiPpFm8xYWb4 fuzz";
const ADMIN_AUTH: &str = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"admin-secret"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}"#;

/// A request the fuzzer starts from: a valid body it then breaks.
struct Endpoint {
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Value,
    /// What a success creates, for the leftovers check.
    creates: Option<Kind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Server,
    Image,
    Flavor,
    Keypair,
    Project,
    User,
    Network,
    Subnet,
    Port,
    SecurityGroup,
    Volume,
    Snapshot,
}

const KINDS: [Kind; 12] = [
    Kind::Server,
    Kind::Image,
    Kind::Flavor,
    Kind::Keypair,
    Kind::Project,
    Kind::User,
    Kind::Network,
    Kind::Subnet,
    Kind::Port,
    Kind::SecurityGroup,
    Kind::Volume,
    Kind::Snapshot,
];

impl Kind {
    /// Where the kind is listed, the list's key, and whether it pages (takes
    /// `limit` and `marker`).
    fn list(self) -> (&'static str, &'static str, bool) {
        match self {
            Kind::Server => ("/compute/v2.1/servers?all_tenants=1", "servers", true),
            Kind::Image => ("/image/v2/images?visibility=all", "images", true),
            Kind::Flavor => ("/compute/v2.1/flavors?is_public=None", "flavors", true),
            Kind::Keypair => ("/compute/v2.1/os-keypairs", "keypairs", false),
            Kind::Project => ("/identity/v3/projects", "projects", false),
            Kind::User => ("/identity/v3/users", "users", false),
            Kind::Network => ("/network/v2.0/networks?fields=id", "networks", true),
            Kind::Subnet => ("/network/v2.0/subnets?fields=id", "subnets", true),
            Kind::Port => ("/network/v2.0/ports?fields=id", "ports", true),
            Kind::SecurityGroup => (
                "/network/v2.0/security-groups?fields=id",
                "security_groups",
                true,
            ),
            Kind::Volume => ("/volume/v3/volumes?all_tenants=1", "volumes", true),
            Kind::Snapshot => ("/volume/v3/snapshots?all_tenants=1", "snapshots", true),
        }
    }
}

const JSON: &str = "application/json";

fn endpoints() -> Vec<Endpoint> {
    let e = |method, path, body: Value, creates| Endpoint {
        method,
        path,
        content_type: JSON,
        body,
        creates,
    };
    vec![
        e(
            "POST",
            "/volume/v3/volumes",
            json!({"volume": {"size": 1, "name": "v", "description": "d", "metadata": {"k": "v"},
                "volume_type": "__DEFAULT__", "availability_zone": "nova"}}),
            Some(Kind::Volume),
        ),
        e(
            "PUT",
            "/volume/v3/volumes/@VOLUME@",
            json!({"volume": {"name": "x", "description": "y", "metadata": {"a": "b"}}}),
            None,
        ),
        e(
            "POST",
            "/volume/v3/volumes/@VOLUME@/action",
            json!({"os-extend": {"new_size": 2}}),
            None,
        ),
        e(
            "POST",
            "/volume/v3/attachments",
            json!({"attachment": {"volume_uuid": "@VOLUME@", "instance_uuid": "@SERVER@",
                "mode": "rw", "connector": {"host": "h1", "platform": "x86_64"}}}),
            None,
        ),
        e(
            "POST",
            "/volume/v3/volumes/@VOLUME@/action",
            json!({"os-attach": {"instance_uuid": "@SERVER@", "mountpoint": "/dev/vdb",
                "host_name": "h1", "mode": "ro"}}),
            None,
        ),
        e(
            "POST",
            "/volume/v3/volumes/@VOLUME@/action",
            json!({"os-initialize_connection": {"connector": {"host": "h1"}}}),
            None,
        ),
        e(
            "POST",
            "/volume/v3/snapshots",
            json!({"snapshot": {"volume_id": "@VOLUME@", "name": "s", "description": "d",
                "force": false, "metadata": {"k": "v"}}}),
            Some(Kind::Snapshot),
        ),
        e(
            "POST",
            "/volume/v3/volumes",
            json!({"volume": {"size": 2, "source_volid": "@VOLUME@", "name": "c"}}),
            Some(Kind::Volume),
        ),
        e(
            "POST",
            "/identity/v3/auth/tokens",
            serde_json::from_str(ADMIN_AUTH).unwrap(),
            None,
        ),
        e(
            "POST",
            "/identity/v3/projects",
            json!({"project": {"name": "p", "domain_id": "default", "enabled": true, "description": "d"}}),
            Some(Kind::Project),
        ),
        e(
            "POST",
            "/identity/v3/users/@USER@/credentials/OS-EC2",
            json!({"tenant_id": "@QUOTA_PROJECT@"}),
            None,
        ),
        e(
            "POST",
            "/identity/v3/users",
            json!({"user": {"name": "u", "password": "secret-password", "domain_id": "default", "enabled": true}}),
            Some(Kind::User),
        ),
        e(
            "POST",
            "/compute/v2.1/flavors",
            json!({"flavor": {"name": "f", "ram": 256, "vcpus": 1, "disk": 0, "id": "fz", "os-flavor-access:is_public": true}}),
            Some(Kind::Flavor),
        ),
        e(
            "POST",
            "/compute/v2.1/os-keypairs",
            json!({"keypair": {"name": "k", "type": "ssh", "public_key": PUBLIC_KEY}}),
            Some(Kind::Keypair),
        ),
        e(
            "POST",
            "/compute/v2.1/servers",
            json!({"server": {"name": "s", "imageRef": "@IMAGE@", "flavorRef": "@FLAVOR@",
                "min_count": 1, "max_count": 1, "metadata": {"k": "v"}, "key_name": "seed",
                "user_data": "IyEvYmluL3NoCg=="}}),
            Some(Kind::Server),
        ),
        e(
            "POST",
            "/compute/v2.1/servers/@SERVER@/action",
            json!({"os-stop": null}),
            None,
        ),
        e(
            "POST",
            "/compute/v2.1/servers/@SERVER@/action",
            json!({"reboot": {"type": "HARD"}}),
            None,
        ),
        e(
            "PUT",
            "/compute/v2.1/servers/@SERVER@",
            json!({"server": {"name": "renamed"}}),
            None,
        ),
        e(
            "POST",
            "/compute/v2.1/servers/@SERVER@/metadata",
            json!({"metadata": {"a": "1", "b": "2"}}),
            None,
        ),
        e(
            "PUT",
            "/compute/v2.1/servers/@SERVER@/metadata/a",
            json!({"meta": {"a": "3"}}),
            None,
        ),
        e(
            "POST",
            "/compute/v2.1/os-server-groups",
            json!({"server_group": {"name": "g", "policies": ["anti-affinity"]}}),
            None,
        ),
        e(
            "POST",
            "/compute/v2.1/os-security-groups",
            json!({"security_group": {"name": "web", "description": "d"}}),
            Some(Kind::SecurityGroup),
        ),
        e(
            "POST",
            "/compute/v2.1/os-security-group-rules",
            json!({"security_group_rule": {"parent_group_id": "@SG@",
                "ip_protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}}),
            None,
        ),
        e(
            "POST",
            "/compute/v2.1/os-volumes",
            json!({"volume": {"size": 1, "display_name": "v", "metadata": {"k": "v"}}}),
            Some(Kind::Volume),
        ),
        e(
            "PUT",
            "/compute/v2.1/os-quota-sets/@QUOTA_PROJECT@",
            json!({"quota_set": {"cores": 100, "ram": 102400, "instances": 50}}),
            None,
        ),
        e(
            "POST",
            "/image/v2/images",
            json!({"name": "i", "disk_format": "raw", "container_format": "bare",
                "visibility": "private", "min_ram": 0, "tags": ["t"]}),
            Some(Kind::Image),
        ),
        e(
            "POST",
            "/compute/v2.1/servers",
            json!({"server": {"name": "s", "imageRef": "@IMAGE@", "flavorRef": "@FLAVOR@",
                "networks": [{"uuid": "@NETWORK@", "fixed_ip": "10.0.3.3"}, {"port": "@PORT@"}]}}),
            Some(Kind::Server),
        ),
        e(
            "POST",
            "/network/v2.0/networks",
            json!({"network": {"name": "n", "admin_state_up": true, "mtu": 1400,
                "port_security_enabled": true, "description": "d", "shared": false}}),
            Some(Kind::Network),
        ),
        e(
            "POST",
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": "@NETWORK@", "cidr": "10.1.0.0/24", "ip_version": 4,
                "gateway_ip": "10.1.0.1", "enable_dhcp": true,
                "allocation_pools": [{"start": "10.1.0.10", "end": "10.1.0.20"}],
                "dns_nameservers": ["192.0.2.1"],
                "host_routes": [{"destination": "10.2.0.0/16", "nexthop": "10.1.0.254"}]}}),
            Some(Kind::Subnet),
        ),
        e(
            "POST",
            "/network/v2.0/ports",
            json!({"port": {"network_id": "@NETWORK@", "name": "p",
                "fixed_ips": [{"subnet_id": "@SUBNET@"}], "security_groups": ["@SG@"],
                "allowed_address_pairs": [{"ip_address": "10.0.0.0/24"}],
                "port_security_enabled": true, "mac_address": "fa:16:3e:00:00:01"}}),
            Some(Kind::Port),
        ),
        e(
            "PUT",
            "/network/v2.0/ports/@PORT@",
            json!({"port": {"name": "x", "fixed_ips": [{"subnet_id": "@SUBNET@", "ip_address": "10.0.0.9"}],
                "security_groups": [], "port_security_enabled": false}}),
            None,
        ),
        e(
            "POST",
            "/network/v2.0/security-groups",
            json!({"security_group": {"name": "g", "description": "d", "stateful": true}}),
            Some(Kind::SecurityGroup),
        ),
        e(
            "POST",
            "/network/v2.0/security-group-rules",
            json!({"security_group_rule": {"security_group_id": "@SG@", "direction": "ingress",
                "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                "remote_ip_prefix": "0.0.0.0/0"}}),
            None,
        ),
        e(
            "PUT",
            "/network/v2.0/networks/@NETWORK@/tags",
            json!({"tags": ["a", "b"]}),
            None,
        ),
        e(
            "PUT",
            "/network/v2.0/quotas/@QUOTA_PROJECT@",
            json!({"quota": {"network": 10, "port": 50, "security_group_rule": -1}}),
            None,
        ),
        Endpoint {
            method: "PATCH",
            path: "/image/v2/images/@IMAGE@",
            content_type: "application/openstack-images-v2.1-json-patch",
            body: json!([{"op": "replace", "path": "/name", "value": "x"},
                {"op": "add", "path": "/owner_specified.k", "value": "v"}]),
            creates: None,
        },
    ]
}

/// List endpoints and the query parameters they take.
const QUERIES: &[(&str, &[&str])] = &[
    (
        "/volume/v3/snapshots/detail",
        &[
            "limit",
            "marker",
            "name",
            "status",
            "all_tenants",
            "volume_id",
        ],
    ),
    (
        "/volume/v3/volumes/detail",
        &[
            "limit",
            "marker",
            "name",
            "status",
            "all_tenants",
            "project_id",
        ],
    ),
    (
        "/compute/v2.1/servers/detail",
        &[
            "limit",
            "marker",
            "sort_key",
            "sort_dir",
            "changes-since",
            "status",
            "name",
            "all_tenants",
            "deleted",
        ],
    ),
    (
        "/compute/v2.1/servers",
        &["limit", "marker", "name", "image", "flavor"],
    ),
    (
        "/compute/v2.1/flavors/detail",
        &[
            "minRam",
            "minDisk",
            "is_public",
            "limit",
            "marker",
            "sort_key",
            "sort_dir",
        ],
    ),
    ("/compute/v2.1/os-keypairs", &["limit", "marker", "user_id"]),
    (
        "/compute/v2.1/os-simple-tenant-usage",
        &["start", "end", "detailed"],
    ),
    ("/compute/v2.1/os-hypervisors/detail", &["limit", "marker"]),
    (
        "/image/v2/images",
        &[
            "limit",
            "marker",
            "sort",
            "sort_key",
            "sort_dir",
            "name",
            "visibility",
            "status",
            "id",
            "member_status",
            "tag",
            "owner",
            "size_min",
            "size_max",
        ],
    ),
    (
        "/identity/v3/projects",
        &["name", "domain_id", "enabled", "parent_id"],
    ),
    ("/identity/v3/users", &["name", "domain_id", "enabled"]),
    (
        "/network/v2.0/ports",
        &[
            "limit",
            "marker",
            "sort_key",
            "sort_dir",
            "fields",
            "network_id",
            "device_id",
            "fixed_ips",
            "tags",
            "not-tags-any",
            "admin_state_up",
        ],
    ),
    (
        "/network/v2.0/networks",
        &[
            "limit", "marker", "name", "shared", "mtu", "tags-any", "fields",
        ],
    ),
];

/// A JSON value of any shape, with the awkward ones overrepresented.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(i64::from(i32::MAX) + 1),
            Just(i64::MIN)
        ]
        .prop_map(Value::from),
        awkward_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(awkward_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn awkward_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\0".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("'; DROP TABLE servers; --".to_owned()),
        Just("%s%n%x".to_owned()),
        Just("ünïcødé ☃ 𝄞".to_owned()),
        Just("a".repeat(70_000)),
        Just("-1".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("00000000-0000-0000-0000-000000000000".to_owned()),
        "[a-zA-Z0-9_.:/-]{0,40}",
        any::<String>(),
    ]
}

/// What a case sends.
#[derive(Debug, Clone)]
enum Input {
    /// A template's body with one place changed.
    Mutated { endpoint: Index, mutation: Mutation },
    /// A list with random query parameters.
    Query {
        list: Index,
        params: Vec<(Index, Option<String>, String)>,
    },
    /// Bytes that are not JSON, or JSON cut short.
    Raw { endpoint: Index, bytes: RawBody },
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, Value),
    Remove(Index),
    AddField(Index, String, Value),
    WholeBody(Value),
    /// Arrays nested this deep.
    Deep(usize),
}

#[derive(Debug, Clone)]
enum RawBody {
    Truncated(Index),
    Bytes(Vec<u8>),
    Text(String),
}

fn input() -> impl Strategy<Value = Input> {
    let mutation = prop_oneof![
        4 => (any::<Index>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        2 => (any::<Index>(), awkward_string(), any_json())
            .prop_map(|(i, k, v)| Mutation::AddField(i, k, v)),
        1 => any_json().prop_map(Mutation::WholeBody),
        1 => (1usize..5000).prop_map(Mutation::Deep),
    ];
    let raw = prop_oneof![
        any::<Index>().prop_map(RawBody::Truncated),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(RawBody::Bytes),
        any::<String>().prop_map(RawBody::Text),
    ];
    prop_oneof![
        6 => (any::<Index>(), mutation).prop_map(|(endpoint, mutation)| Input::Mutated { endpoint, mutation }),
        3 => (
            any::<Index>(),
            prop::collection::vec((any::<Index>(), prop::option::of(awkward_string()), awkward_string()), 0..5)
        )
            .prop_map(|(list, params)| Input::Query { list, params }),
        2 => (any::<Index>(), raw).prop_map(|(endpoint, bytes)| Input::Raw { endpoint, bytes }),
    ]
}

/// Every place in a JSON document, as paths of keys and indices.
fn places(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(k.clone());
                places(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(i.to_string());
                places(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn place_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k),
        Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
        _ => None,
    })
}

fn mutate(mut body: Value, m: &Mutation) -> Vec<u8> {
    let mut all = Vec::new();
    places(&body, &mut Vec::new(), &mut all);
    match m {
        Mutation::Replace(i, v) => {
            if let Some(p) = place_mut(&mut body, i.get::<Vec<String>>(&all)) {
                *p = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let path: &Vec<String> = i.get(&all);
            if let Some((last, parent)) = path.split_last() {
                match place_mut(&mut body, parent) {
                    Some(Value::Object(m)) => {
                        m.remove(last);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(n) = last.parse::<usize>() {
                            if n < a.len() {
                                a.remove(n);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Mutation::AddField(i, k, v) => {
            if let Some(Value::Object(m)) = place_mut(&mut body, i.get::<Vec<String>>(&all)) {
                m.insert(k.clone(), v.clone());
            }
        }
        Mutation::WholeBody(v) => body = v.clone(),
        Mutation::Deep(n) => return format!("{}{}", "[".repeat(*n), "]".repeat(*n)).into_bytes(),
    }
    serde_json::to_vec(&body).unwrap()
}

/// The controller, a token, and the ids the templates refer to.
struct World {
    c: common::Controller,
    token: String,
    ids: Vec<(&'static str, String)>,
    /// How many of each kind a success created.
    created: Mutex<Vec<(Kind, usize)>>,
    /// How many there were before fuzzing.
    before: Vec<(Kind, usize)>,
    /// Answers by status class (2xx, 3xx, 4xx), to show the cases reach past
    /// the parsers.
    classes: Mutex<[u64; 3]>,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// One request on its own connection, with deadlines on every step.
fn send(
    c: &common::Controller,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Answer, String> {
    let started = Instant::now();
    // The volume API at its newest (the attachments API is 3.27's); the
    // other services ignore it.
    let headers = [
        ("X-Auth-Token", token),
        ("Content-Type", content_type),
        ("OpenStack-API-Version", "volume 3.44"),
    ];
    let reply = virga_test_support::http::send_within(&c.addr, HANG, method, path, &headers, body)?;
    if started.elapsed() > HANG {
        return Err(format!("answered after {:?}", started.elapsed()));
    }
    Ok(Answer {
        status: reply.status,
        content_type: reply.header("content-type").unwrap_or_default().to_owned(),
        body: reply.bytes,
    })
}

impl World {
    fn start() -> World {
        // The world's token must outlive a long run (`cargo xtask fuzz`
        // runs an hour or more): the default hour once ended a run with
        // 401s that looked like a controller that stopped serving.
        let c = common::start_with(None, "token_ttl_secs = 604800\n");
        let t = common::call(&c, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
        let token = t.header("x-subject-token").unwrap().to_owned();
        let post = |path: &str, body: Value| -> Value {
            let a = send(&c, "POST", path, &token, JSON, body.to_string().as_bytes()).unwrap();
            assert!(
                a.status < 300,
                "{path}: {}",
                String::from_utf8_lossy(&a.body)
            );
            serde_json::from_slice(&a.body).unwrap()
        };
        // Quotas are fuzzed on a project of their own: a case that sets the
        // admin project's instances to 0 would refuse every later create.
        let quota_project = post(
            "/identity/v3/projects",
            json!({"project": {"name": "fuzz-quota", "domain_id": "default"}}),
        )["project"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let image = post(
            "/image/v2/images",
            json!({"name": "seed", "disk_format": "raw", "container_format": "bare"}),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let uploaded = common::put_bytes(
            &c,
            &format!("/image/v2/images/{image}/file"),
            &token,
            &[0u8; 4096],
        );
        assert_eq!(uploaded, 204, "seed image upload");
        let flavor = post(
            "/compute/v2.1/flavors",
            json!({"flavor": {"name": "seed", "ram": 128, "vcpus": 1, "disk": 0}}),
        )["flavor"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        post(
            "/compute/v2.1/os-keypairs",
            json!({"keypair": {"name": "seed", "public_key": PUBLIC_KEY}}),
        );
        let server = post(
            "/compute/v2.1/servers",
            json!({"server": {"name": "seed", "imageRef": image, "flavorRef": flavor}}),
        )["server"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // After the seed server: it asked for no network (there was none).
        let network = post(
            "/network/v2.0/networks",
            json!({"network": {"name": "seed"}}),
        )["network"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let subnet = post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": network, "cidr": "10.0.0.0/16", "ip_version": 4}}),
        )["subnet"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let sg = post(
            "/network/v2.0/security-groups",
            json!({"security_group": {"name": "seed"}}),
        )["security_group"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let port = post(
            "/network/v2.0/ports",
            json!({"port": {"network_id": network, "name": "seed"}}),
        )["port"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let volume = post(
            "/volume/v3/volumes",
            json!({"volume": {"size": 1, "name": "seed"}}),
        )["volume"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let me = common::call(
            &c,
            "GET",
            "/identity/v3/auth/tokens",
            &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
            "",
        );
        let user = me.json()["token"]["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut w = World {
            c,
            token,
            ids: vec![
                ("@USER@", user),
                ("@VOLUME@", volume),
                ("@QUOTA_PROJECT@", quota_project),
                ("@IMAGE@", image),
                ("@FLAVOR@", flavor),
                ("@SERVER@", server),
                ("@NETWORK@", network),
                ("@SUBNET@", subnet),
                ("@SG@", sg),
                ("@PORT@", port),
            ],
            created: Mutex::new(KINDS.iter().map(|&k| (k, 0)).collect()),
            before: Vec::new(),
            classes: Mutex::new([0; 3]),
        };
        w.before = KINDS.iter().map(|&k| (k, w.count(k))).collect();
        w
    }

    fn fill(&self, s: &str) -> String {
        self.ids
            .iter()
            .fold(s.to_owned(), |s, (k, v)| s.replace(k, v))
    }

    /// How many of a kind exist, following pages to the end.
    fn count(&self, kind: Kind) -> usize {
        let (path, key, pages) = kind.list();
        let (mut n, mut marker) = (0, None::<String>);
        loop {
            let url = match (&marker, pages) {
                (_, false) => path.to_owned(),
                (None, true) => format!("{path}&limit=500"),
                (Some(m), true) => format!("{path}&limit=500&marker={m}"),
            };
            let a = send(&self.c, "GET", &url, &self.token, JSON, b"").unwrap();
            let v: Value = serde_json::from_slice(&a.body).unwrap();
            let page = v[key].as_array().cloned().unwrap_or_default();
            n += page.len();
            let last = page
                .last()
                .and_then(|i| i["id"].as_str().or(i["keypair"]["name"].as_str()));
            match last {
                Some(id) if pages && page.len() == 500 => marker = Some(id.to_owned()),
                _ => return n,
            }
        }
    }

    fn case(&self, input: &Input, endpoints: &[Endpoint]) -> Result<(), TestCaseError> {
        let (method, path, content_type, body, creates) = match input {
            Input::Mutated { endpoint, mutation } => {
                let e = endpoint.get(endpoints);
                let template: Value =
                    serde_json::from_str(&self.fill(&e.body.to_string())).unwrap();
                (
                    e.method,
                    self.fill(e.path),
                    e.content_type,
                    mutate(template, mutation),
                    e.creates,
                )
            }
            Input::Raw { endpoint, bytes } => {
                let e = endpoint.get(endpoints);
                let body = match bytes {
                    RawBody::Truncated(at) => {
                        let full = self.fill(&e.body.to_string()).into_bytes();
                        full[..at.index(full.len())].to_vec()
                    }
                    RawBody::Bytes(b) => b.clone(),
                    RawBody::Text(t) => t.clone().into_bytes(),
                };
                (e.method, self.fill(e.path), e.content_type, body, e.creates)
            }
            Input::Query { list, params } => {
                let (path, keys) = list.get(QUERIES);
                let query: Vec<String> = params
                    .iter()
                    .map(|(k, own, v)| {
                        let key = match own {
                            Some(own) => own.clone(),
                            None => k.get(keys).to_string(),
                        };
                        format!("{}={}", encode(&key), encode(v))
                    })
                    .collect();
                (
                    "GET",
                    format!("{path}?{}", query.join("&")),
                    JSON,
                    Vec::new(),
                    None,
                )
            }
        };
        let shown_path: String = path.chars().take(200).collect();
        let answer = send(&self.c, method, &path, &self.token, content_type, &body)
            .map_err(|e| TestCaseError::fail(format!("{method} {shown_path}: {e}")))?;
        let text = String::from_utf8_lossy(&answer.body);
        let shown: String = text.chars().take(300).collect();
        prop_assert!(
            answer.status < 500,
            "{method} {shown_path} answered {}: {shown}",
            answer.status
        );
        // hyper itself refuses a URI or header section too long (414, 431),
        // before any handler, with no body; every other error is ours.
        if answer.status >= 400 && !matches!(answer.status, 414 | 431) {
            prop_assert!(
                answer.content_type.starts_with("application/json")
                    && serde_json::from_slice::<Value>(&answer.body).is_ok(),
                "{method} {shown_path}: an error ({}) without a JSON body ({}): {shown}",
                answer.status,
                answer.content_type
            );
        }
        if let Some(n) = self
            .classes
            .lock()
            .unwrap()
            .get_mut(usize::from(answer.status / 100).saturating_sub(2))
        {
            *n += 1;
        }
        if let (Some(kind), 200..=299) = (creates, answer.status) {
            let mut created = self.created.lock().unwrap();
            if let Some((_, n)) = created.iter_mut().find(|(k, _)| *k == kind) {
                *n += 1;
            }
        }
        // Still serving.
        let alive = send(
            &self.c,
            "GET",
            "/compute/v2.1/flavors",
            &self.token,
            JSON,
            b"",
        )
        .map_err(|e| TestCaseError::fail(format!("after {method} {shown_path}: {e}")))?;
        prop_assert_eq!(
            alive.status,
            200,
            "the controller stopped serving after {} {}",
            method,
            shown_path
        );
        Ok(())
    }
}

/// Percent-encoding for a query string, leaving some characters raw on
/// purpose (a server must cope with both).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn budget() -> (u32, Option<Duration>) {
    let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if let Some(s) = env("VIRGA_FUZZ_SECONDS") {
        return (u32::MAX, Some(Duration::from_secs_f64(s.parse().unwrap())));
    }
    (
        env("VIRGA_FUZZ_CASES").map_or(48, |n| n.parse().unwrap()),
        None,
    )
}

#[test]
fn api() {
    let world = World::start();
    let endpoints = endpoints();
    let (cases, limit) = budget();
    let start = Instant::now();
    let mut done = 0u64;
    let config = Config {
        cases: 1,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    // One case per run, so a time budget is kept and the count is exact.
    while u64::from(cases) > done && limit.is_none_or(|l| start.elapsed() < l) {
        let mut one = TestRunner::new_with_rng(config.clone(), runner.new_rng());
        if let Err(e) = one.run(&input(), |i| world.case(&i, &endpoints)) {
            panic!("fuzz api: {e}");
        }
        done += 1;
    }
    let [ok, moved, refused] = *world.classes.lock().unwrap();
    println!(
        "fuzz api: {done} cases in {:.1} s ({ok} answered 2xx, {moved} 3xx, {refused} 4xx)",
        start.elapsed().as_secs_f64()
    );
    // Cases that reach past authentication and the parsers, and cases that
    // are refused: a run where everything is refused tests nothing.
    if done >= 48 {
        assert!(ok > 0 && refused > 0, "{ok} accepted, {refused} refused");
    }
    // Nothing half-created: what exists is what was answered as created.
    let created = world.created.lock().unwrap().clone();
    for (kind, before) in &world.before {
        let made = created
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n);
        assert_eq!(
            world.count(*kind),
            before + made,
            "{kind:?}: {before} before, {made} created"
        );
    }
}
