//! A stand-in hostd: a few lines of HTTP that answer hostd's instance API from
//! a map of instance states, with delays that widen the windows between a
//! controller's steps. The real hostd and guests are exercised by the testbed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virga_test_support::stub::{Request, Response, StubServer};

use super::{call, Controller};

pub const HOSTD_SECRET: &str = "stand-in-hostd-secret";
pub const HOST_ID: &str = "stand-in";

/// A stand-in's own token: the controller must call it with this one.
pub fn host_token(host_id: &str) -> String {
    hostd_proto::token::for_host(HOSTD_SECRET, host_id)
}

/// The controller configuration line that makes the stand-in's token valid.
pub fn controller_config() -> String {
    format!("hostd_secret = \"{HOSTD_SECRET}\"\n")
}

#[derive(Clone)]
pub struct StandInHostd {
    pub port: u16,
    pub host_id: String,
    states: Arc<Mutex<BTreeMap<String, String>>>,
    listings: Arc<Listings>,
    /// Creates make the instance and then fail (see `fail_creates`).
    failing: Arc<AtomicBool>,
    creates: Arc<Creates>,
    console: Arc<Console>,
    /// The controller it registered with: where snapshots go.
    controller: Arc<Mutex<Option<String>>>,
    /// Disk attaches and detaches: (method, instance, the body or the device).
    disk_calls: Arc<Mutex<Vec<(String, String, serde_json::Value)>>>,
    /// How many of the next disk calls answer 503, as hostd does while the
    /// instance's VMM restarts.
    disk_calls_unavailable: Arc<std::sync::atomic::AtomicU32>,
    /// Whether it keeps heartbeating, as hostd does; held while one is sent,
    /// so a host that goes silent sends nothing after its last heartbeat.
    beating: Arc<Mutex<bool>>,
}

/// How often a registered stand-in heartbeats: well within the controller's
/// default timeout (60 s), which a long test outlives.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A serial console: what was typed (`POST .../console`); a console stream
/// (`GET .../console?follow=true`) waits for something typed and answers
/// with it echoed, then ends, as the console of an instance that went away.
#[derive(Default)]
struct Console {
    typed: Mutex<Vec<u8>>,
    changed: Condvar,
}

/// The create bodies the stand-in was sent, and an answer that refuses the
/// next ones (see `refuse_creates`).
#[derive(Default)]
struct Creates {
    bodies: Mutex<Vec<serde_json::Value>>,
    refusal: Mutex<Option<(u16, String)>>,
}

/// Instance listings (`GET /instances`): a gate that holds them between taking
/// the list and answering, as a slow network would, so a test can change things while a listing is on its way.
#[derive(Default)]
struct Listings {
    gate: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Default)]
struct Gate {
    hold: bool,
    /// Listings taken so far: each takes the next number.
    taken: u64,
    /// Held listings numbered up to this one may answer.
    released: u64,
    /// The newest listing held now, if any.
    newest_held: Option<u64>,
}

/// How long the stand-in takes for each request kind.
#[derive(Clone, Copy)]
pub struct Delays {
    pub create: Duration,
    pub action: Duration,
    pub delete: Duration,
}

impl Delays {
    /// Every request answered at once.
    pub const NONE: Delays = Delays {
        create: Duration::ZERO,
        action: Duration::ZERO,
        delete: Duration::ZERO,
    };
}

impl StandInHostd {
    pub fn start(delays: Delays) -> StandInHostd {
        StandInHostd::start_as(HOST_ID, delays)
    }

    /// A stand-in for host `host_id`.
    pub fn start_as(host_id: &str, delays: Delays) -> StandInHostd {
        let token = host_token(host_id);
        let states: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let listings: Arc<Listings> = Arc::default();
        let failing: Arc<AtomicBool> = Arc::default();
        let creates: Arc<Creates> = Arc::default();
        let console: Arc<Console> = Arc::default();
        let controller: Arc<Mutex<Option<String>>> = Arc::default();
        let upload_to = controller.clone();
        let own_token = token.clone();
        let (shared, gate, fail) = (states.clone(), listings.clone(), failing.clone());
        let (sent, tty) = (creates.clone(), console.clone());
        let disk_calls: Arc<Mutex<Vec<(String, String, serde_json::Value)>>> = Arc::default();
        let disk_log = disk_calls.clone();
        let disk_calls_unavailable: Arc<std::sync::atomic::AtomicU32> = Arc::default();
        let restarting = disk_calls_unavailable.clone();
        let server = StubServer::start(move |request| {
            let bearer = format!("Bearer {token}");
            let authorized = request.header("authorization") == Some(bearer.as_str());
            if authorized && request.segments().get(2) == Some(&"disks") {
                // As hostd does: a disk added to (grown in, gone from) the
                // instance.
                let seg = request.segments();
                let what = match (seg.get(3), seg.get(4)) {
                    (Some(dev), Some(&"size")) => {
                        serde_json::json!({"dev": dev, "bytes": request.json()["bytes"]})
                    }
                    (Some(dev), Some(&"files")) => {
                        serde_json::json!({"dev": dev, "files": request.json()})
                    }
                    (Some(dev), _) => serde_json::json!(dev),
                    (None, _) => request.json(),
                };
                disk_log
                    .lock()
                    .unwrap()
                    .push((request.method.clone(), seg[1].to_owned(), what));
                if restarting
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let message = "the VMM is not answering (starting or restarting); try again";
                    return Response::json(
                        503,
                        &serde_json::json!({"error": {"message": message}}),
                    );
                }
                return match shared.lock().unwrap().get(seg[1]) {
                    Some(st) => {
                        Response::json(200, &serde_json::json!({"id": seg[1], "state": st}))
                    }
                    None => Response::json(
                        404,
                        &serde_json::json!({"error": {"message": "no instance"}}),
                    ),
                };
            }
            if authorized && request.segments().get(2) == Some(&"console") {
                return tty.answer(&request);
            }
            if authorized
                && request.method == "POST"
                && request.segments().get(2) == Some(&"snapshot")
            {
                // As hostd does: the copy taken, the upload follows.
                let instance = request.segments()[1].to_owned();
                let image = request.json()["image_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let (to, bearer) = (
                    upload_to.lock().unwrap().clone(),
                    format!("Bearer {own_token}"),
                );
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    let Some(to) = to else { return };
                    let _ = virga_test_support::http::send(
                        to.as_str(),
                        "PUT",
                        &format!("/internal/v1/images/{image}/file"),
                        &[
                            ("Authorization", &bearer),
                            ("Content-Type", hostd_proto::sparse::CONTENT_TYPE),
                        ],
                        &sparse_root_disk(&instance),
                    );
                });
                return Response::json(202, &serde_json::json!({}));
            }
            let failing = fail.load(Ordering::SeqCst);
            if authorized && request.method == "POST" && request.segments() == ["instances"] {
                sent.bodies.lock().unwrap().push(request.json());
                if let Some((status, message)) = sent.refusal.lock().unwrap().clone() {
                    let body = serde_json::json!({"error": {"message": message}});
                    return Response::json(status, &body);
                }
            }
            answer(&request, authorized, &shared, &gate, failing, delays)
        });
        StandInHostd {
            port: server.port,
            host_id: host_id.to_owned(),
            states,
            listings,
            failing,
            creates,
            console,
            controller,
            disk_calls,
            disk_calls_unavailable,
            beating: Arc::default(),
        }
    }

    /// The next `n` disk calls answer 503, as while the VMM restarts.
    pub fn disk_calls_unavailable(&self, n: u32) {
        self.disk_calls_unavailable.store(n, Ordering::SeqCst);
    }

    /// The disk attaches and detaches it was asked for, in order.
    pub fn disk_calls(&self) -> Vec<(String, String, serde_json::Value)> {
        self.disk_calls.lock().unwrap().clone()
    }

    /// Everything typed on the stand-in's consoles.
    pub fn typed(&self) -> Vec<u8> {
        self.console.typed.lock().unwrap().clone()
    }

    /// Every create body sent so far, in order.
    pub fn create_bodies(&self) -> Vec<serde_json::Value> {
        self.creates.bodies.lock().unwrap().clone()
    }

    /// From now on, creates are refused with `status` and `message`, as
    /// hostd refuses an image that cannot boot (422).
    pub fn refuse_creates(&self, status: u16, message: &str) {
        *self.creates.refusal.lock().unwrap() = Some((status, message.to_owned()));
    }

    /// From now on, every create makes the instance and then answers 500, as a
    /// host does whose create got far before it failed (or whose answer was
    /// lost); and every NIC plugged is refused.
    pub fn fail_creates(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    /// Instance ids and states, as hostd holds them.
    pub fn instances(&self) -> BTreeMap<String, String> {
        self.states.lock().unwrap().clone()
    }

    /// Forgets every instance.
    pub fn clear(&self) {
        self.states.lock().unwrap().clear();
    }

    /// Registers the stand-in as a host and keeps heartbeating, as hostd
    /// does, until [`StandInHostd::register_at`] or the last clone is dropped.
    pub fn register(&self, c: &Controller) {
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut beating = self.beating.lock().unwrap();
        self.heartbeat(c, &url);
        if !*beating {
            *beating = true;
            self.keep_beating(url);
        }
    }

    /// Sends one last heartbeat naming `url` as where hostd listens (one where
    /// nothing answers makes the host unreachable), then goes silent: a host
    /// that went down.
    pub fn register_at(&self, c: &Controller, url: &str) {
        let mut beating = self.beating.lock().unwrap();
        *beating = false;
        self.heartbeat(c, url);
    }

    fn heartbeat(&self, c: &Controller, url: &str) {
        *self.controller.lock().unwrap() = Some(c.addr.clone());
        let r = call(
            c,
            "PUT",
            &format!("/internal/v1/hosts/{}", self.host_id),
            &[("Authorization", &self.bearer())],
            &heartbeat_body(&self.host_id, url, self.instances().len()),
        );
        assert!(r.status < 300, "{} {}", r.status, r.body);
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", host_token(&self.host_id))
    }

    /// Heartbeats every [`HEARTBEAT_EVERY`] while `beating`, to the controller
    /// it registered with last; a controller that is gone is skipped.
    fn keep_beating(&self, url: String) {
        let (host_id, bearer) = (self.host_id.clone(), self.bearer());
        let (beating, controller) = (Arc::downgrade(&self.beating), self.controller.clone());
        let states = Arc::downgrade(&self.states);
        std::thread::spawn(move || loop {
            std::thread::sleep(HEARTBEAT_EVERY);
            let (Some(beating), Some(states)) = (beating.upgrade(), states.upgrade()) else {
                return;
            };
            let beating = beating.lock().unwrap();
            if !*beating {
                return;
            }
            let Some(to) = controller.lock().unwrap().clone() else {
                continue;
            };
            let instances = states.lock().unwrap().len();
            let _ = virga_test_support::http::send(
                to.as_str(),
                "PUT",
                &format!("/internal/v1/hosts/{host_id}"),
                &[("Authorization", &bearer)],
                heartbeat_body(&host_id, &url, instances).as_bytes(),
            );
        });
    }

    /// Sets an instance's state behind the controller's back (a guest that
    /// powered itself off) and, in the same step, holds every listing from
    /// now on after it took the list, until [`StandInHostd::release_listings`]:
    /// a listing shows the new state only if it is held.
    pub fn set_state_and_hold_listings(&self, id: &str, state: &str) {
        let mut g = self.listings.gate.lock().unwrap();
        self.states
            .lock()
            .unwrap()
            .insert(id.to_owned(), state.to_owned());
        g.hold = true;
    }

    /// Waits (at most 30 s) until a listing numbered above `after` is held;
    /// returns its number.
    pub fn wait_held(&self, after: u64) -> u64 {
        self.wait_gate("a held listing", |g| g.newest_held.filter(|&n| n > after))
    }

    /// Lets the listings held now answer, with what they took; later ones are
    /// held still. Returns the newest number released.
    pub fn release_held(&self) -> u64 {
        let mut g = self.listings.gate.lock().unwrap();
        g.released = g.taken;
        self.listings.changed.notify_all();
        g.released
    }

    /// Stops holding listings.
    pub fn release_listings(&self) {
        self.listings.gate.lock().unwrap().hold = false;
        self.listings.changed.notify_all();
    }

    fn wait_gate<T>(&self, what: &str, done: impl Fn(&Gate) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut g = self.listings.gate.lock().unwrap();
        loop {
            if let Some(t) = done(&g) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "stand-in hostd: no {what} within 30 s");
            g = self.listings.changed.wait_timeout(g, left).unwrap().0;
        }
    }
}

/// A flavor of `vcpus` and `ram_mib` and an active kernel image: what a server
/// create needs to reach the stand-in. Returns (flavor id, image id).
pub fn bootable(c: &Controller, token: &str, vcpus: i64, ram_mib: i64) -> (String, String) {
    let t = ("X-Auth-Token", token);
    let flavor = call(
        c,
        "POST",
        "/compute/v2.1/flavors",
        &[t],
        &serde_json::json!({"flavor": {"name": format!("f{vcpus}-{ram_mib}"), "ram": ram_mib,
            "vcpus": vcpus, "disk": 0}})
        .to_string(),
    )
    .json()["flavor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = call(
        c,
        "POST",
        "/image/v2/images",
        &[t],
        r#"{"name": "kernel", "disk_format": "aki", "container_format": "aki"}"#,
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/image/v2/images/{image}/file");
    assert_eq!(super::put_bytes(c, &path, token, b"\x7fELF stand-in"), 204);
    (flavor, image)
}

/// A stand-in root disk (`root disk of ID`, then a hole to
/// [`ROOT_DISK_BYTES`]) as hostd uploads one: a sparse stream.
fn sparse_root_disk(instance: &str) -> Vec<u8> {
    use std::io::Write;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(format!("root disk of {instance}").as_bytes())
        .unwrap();
    file.set_len(ROOT_DISK_BYTES).unwrap();
    hostd_proto::sparse::encode_all(file).unwrap()
}

/// The size of the stand-in's root disks.
pub const ROOT_DISK_BYTES: u64 = 1 << 20;

impl Console {
    fn answer(&self, request: &Request) -> Response {
        if request.method == "POST" {
            self.typed.lock().unwrap().extend_from_slice(&request.body);
            self.changed.notify_all();
            return Response::empty(204);
        }
        let typed = self.typed.lock().unwrap();
        let (typed, _) = self
            .changed
            .wait_timeout_while(typed, Duration::from_secs(10), |t| t.is_empty())
            .unwrap();
        let mut echo = b"echo: ".to_vec();
        echo.extend_from_slice(&typed);
        Response {
            status: 200,
            body: echo,
        }
    }
}

fn answer(
    request: &Request,
    authorized: bool,
    states: &Mutex<BTreeMap<String, String>>,
    listings: &Listings,
    failing: bool,
    delays: Delays,
) -> Response {
    let body = request.json();
    let segments = request.segments();
    let method = request.method.as_str();
    let instance = |id: &str, state: &str| serde_json::json!({"id": id, "state": state});
    let (status, reply) = match (authorized, method, segments.as_slice()) {
        (false, _, _) => (401, serde_json::json!({"error": {"message": "no token"}})),
        (_, "POST", ["instances"]) => {
            std::thread::sleep(delays.create);
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            let mut states = states.lock().unwrap();
            if states.contains_key(&id) {
                (409, serde_json::json!({"error": {"message": "exists"}}))
            } else if failing {
                states.insert(id.clone(), "error".into());
                (
                    500,
                    serde_json::json!({"error": {"message": "the VMM exited while starting"}}),
                )
            } else {
                // Created stopped when asked (a rebuild of a stopped server).
                let state = if request.query.contains("start=false") {
                    "shutoff"
                } else {
                    "running"
                };
                states.insert(id.clone(), state.into());
                (201, instance(&id, state))
            }
        }
        (_, "GET", ["instances"]) => {
            // The list is taken under the gate's lock: see
            // `set_state_and_hold_listings`.
            let mut g = listings.gate.lock().unwrap();
            let list: Vec<_> = states
                .lock()
                .unwrap()
                .iter()
                .map(|(id, st)| instance(id, st))
                .collect();
            g.taken += 1;
            let ticket = g.taken;
            if g.hold {
                g.newest_held = Some(ticket);
                listings.changed.notify_all();
                while g.hold && ticket > g.released {
                    g = listings.changed.wait(g).unwrap();
                }
                if g.newest_held == Some(ticket) {
                    g.newest_held = None;
                }
            }
            (200, serde_json::json!(list))
        }
        (_, "GET", ["instances", id]) => match states.lock().unwrap().get(*id) {
            Some(st) => (200, instance(id, st)),
            None => (
                404,
                serde_json::json!({"error": {"message": "no instance"}}),
            ),
        },
        // A VMM's metrics, as hostd passes them on (running instances only).
        (_, "GET", ["instances", id, "metrics"]) => match states.lock().unwrap().get(*id) {
            Some(st) if st == "running" => (
                200,
                serde_json::json!({"uptime_ms": 5_000, "guest_memory_kib": 131_072,
                    "memory": {"rss_kib": 4_096, "peak_rss_kib": 5_000},
                    "per_vcpu_exits": [{"io_in": 2, "io_out": 1}],
                    "vcpu_exits": {"io_in": 2, "io_out": 1}}),
            ),
            _ => (
                409,
                serde_json::json!({"error": {"message": "no running VMM"}}),
            ),
        },
        (_, "POST", ["instances", id, "actions", action]) => {
            std::thread::sleep(delays.action);
            let next = match *action {
                "stop" => Some("shutoff"),
                "start" | "resume" => Some("running"),
                "pause" => Some("paused"),
                "reboot" if body["hard"] == true => Some("running"),
                _ => None,
            };
            let mut states = states.lock().unwrap();
            match (next, states.contains_key(*id)) {
                (_, false) => (
                    404,
                    serde_json::json!({"error": {"message": "no instance"}}),
                ),
                (Some(st), true) => {
                    states.insert(id.to_string(), st.into());
                    (200, instance(id, st))
                }
                (None, true) => (
                    409,
                    serde_json::json!({"error": {"message": "the guest ignored the request"}}),
                ),
            }
        }
        // NICs: plugged (refused while failing) and unplugged.
        (_, "POST" | "DELETE", ["instances", id, "nics", ..]) => {
            match (states.lock().unwrap().get(*id), failing) {
                (None, _) => (
                    404,
                    serde_json::json!({"error": {"message": "no instance"}}),
                ),
                (Some(_), true) if method == "POST" => (
                    500,
                    serde_json::json!({"error": {"message": "VMM answered 400: no tap"}}),
                ),
                (Some(st), _) => (200, instance(id, st)),
            }
        }
        (_, "POST", ["instances", id, "resize", ..]) => match states.lock().unwrap().get(*id) {
            Some(st) => (200, instance(id, st)),
            None => (
                404,
                serde_json::json!({"error": {"message": "no instance"}}),
            ),
        },
        (_, "DELETE", ["instances", id]) => {
            std::thread::sleep(delays.delete);
            match states.lock().unwrap().remove(*id) {
                Some(_) => (204, serde_json::Value::Null),
                None => (
                    404,
                    serde_json::json!({"error": {"message": "no instance"}}),
                ),
            }
        }
        _ => (
            404,
            serde_json::json!({"error": {"message": "no such path"}}),
        ),
    };
    Response::json(status, &reply)
}

/// What hostd's heartbeat says about the stand-in's host.
fn heartbeat_body(host_id: &str, url: &str, instances: usize) -> String {
    serde_json::json!({
        "host_id": host_id, "url": url, "cpus": 8,
        "memory_mib": 16384, "memory_usable_mib": 16000, "disk_free_mib": 100000,
        "vcpus_used": 0, "memory_used_mib": 0, "instances": instances,
        "kvm_mode": "hardware", "version": "0.1.0",
    })
    .to_string()
}
