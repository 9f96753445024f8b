//! Server actions against a stand-in hostd (`common::hostd`: it answers like
//! hostd, slowly, and refuses soft reboots): the controller answers 202
//! at once, shows the task while it runs, refuses a second action meanwhile,
//! records every action and its outcome, and maps suspend and resume.
//! The real hostd and guests are exercised by the testbed's cloud test.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::cloud::Cloud;
use common::hostd::{bootable, controller_config, Delays, StandInHostd};
use common::{admin_token, call, start_with, wait_for_status};

/// How long the stand-in takes for each action.
const ACTION_DELAY: Duration = Duration::from_millis(600);

#[test]
fn actions_run_in_the_background_one_at_a_time_and_are_recorded() {
    let cloud = Cloud::start(Delays {
        create: Duration::ZERO,
        action: ACTION_DELAY,
        delete: Duration::ZERO,
    });
    let (c, admin) = (&cloud.c, cloud.admin.as_str());
    let t = cloud.auth();
    let (id, create_request) = cloud.active_server();
    let show = || cloud.show(&id);
    let wait = |want: &str| cloud.wait(&id, want);
    let act = |body: &str| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[t],
            body,
        )
    };

    // Answered at once; the task shows while the host works; a second
    // action meanwhile is refused with the task named.
    let started = Instant::now();
    let r = act(r#"{"os-stop": null}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        started.elapsed() < ACTION_DELAY,
        "the API does not wait for the host"
    );
    let stop_request = r.header("x-openstack-request-id").unwrap().to_owned();
    let during = show();
    assert_eq!(during["OS-EXT-STS:task_state"], "powering-off");
    assert_eq!(during["status"], "ACTIVE");
    let r = act(r#"{"pause": null}"#);
    assert_eq!(r.status, 409);
    assert!(r.body.contains("task_state powering-off"), "{}", r.body);
    let s = wait("SHUTOFF");
    assert_eq!(s["OS-EXT-STS:power_state"], 4);
    // Wrong state: refused without a task.
    assert_eq!(act(r#"{"pause": null}"#).status, 409);
    assert_eq!(act(r#"{"reboot": {"type": "SOFT"}}"#).status, 409);

    assert_eq!(act(r#"{"os-start": null}"#).status, 202);
    wait("ACTIVE");
    assert_eq!(act(r#"{"suspend": null}"#).status, 202);
    let s = wait("SUSPENDED");
    assert_eq!(s["OS-EXT-STS:power_state"], 7);
    // The state sync keeps it SUSPENDED though hostd says paused.
    let r = call(
        c,
        "POST",
        "/internal/v1/reconcilers/instance_sync/run",
        &[t],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["reconciler"]["last_outcome"]
            .as_str()
            .unwrap()
            .starts_with("1 hosts (0 unreachable)"),
        "{}",
        r.body
    );
    assert_eq!(show()["status"], "SUSPENDED");
    assert_eq!(
        act(r#"{"unpause": null}"#).status,
        409,
        "unpause is for paused"
    );
    assert_eq!(act(r#"{"resume": null}"#).status, 202);
    wait("ACTIVE");
    let r = act(r#"{"reboot": {"type": "HARD"}}"#);
    assert_eq!(r.status, 202);
    assert_eq!(show()["status"], "HARD_REBOOT");
    wait("ACTIVE");
    // The host refuses a soft reboot: the server stays ACTIVE, the action
    // records the error.
    let r = act(r#"{"reboot": {"type": "SOFT"}}"#);
    assert_eq!(r.status, 202);
    let soft_request = r.header("x-openstack-request-id").unwrap().to_owned();
    assert_eq!(show()["status"], "REBOOT");
    wait("ACTIVE");
    // Nothing is ever soft-deleted (deletes are immediate): nothing to
    // restore or force-delete.
    for action in ["restore", "forceDelete"] {
        let r = act(&format!(r#"{{"{action}": null}}"#));
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(
            r.body.contains("while it is in vm_state active"),
            "{}",
            r.body
        );
    }
    // Unknown actions and bodies.
    assert_eq!(act(r#"{"frobnicate": null}"#).status, 400);
    assert_eq!(act(r#"{"os-stop": null, "os-start": null}"#).status, 400);
    assert_eq!(act("not json").status, 400);

    // Every action, newest first, with its request id and outcome.
    let list = call(
        c,
        "GET",
        &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
        &[t],
        "",
    )
    .json();
    let names: Vec<&str> = list["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["reboot", "reboot", "resume", "suspend", "start", "stop", "create"]
    );
    let last = &list["instanceActions"][names.len() - 1];
    assert_eq!(last["request_id"], create_request.as_str());
    assert_eq!(last["instance_uuid"], id.as_str());
    let one = |request: &str| {
        call(
            c,
            "GET",
            &format!("/compute/v2.1/servers/{id}/os-instance-actions/{request}"),
            &[t],
            "",
        )
    };
    let stop = one(&stop_request).json();
    assert_eq!(stop["instanceAction"]["action"], "stop");
    assert_eq!(
        stop["instanceAction"]["events"][0]["event"],
        "compute_stop_instance"
    );
    assert_eq!(stop["instanceAction"]["events"][0]["result"], "Success");
    let soft = one(&soft_request).json();
    assert_eq!(soft["instanceAction"]["message"], "Error");
    assert_eq!(soft["instanceAction"]["events"][0]["result"], "Error");
    assert!(soft["instanceAction"]["events"][0]["traceback"]
        .as_str()
        .unwrap()
        .contains("the guest ignored the request"));
    assert_eq!(one("req-00000000-0000-0000-0000-000000000000").status, 404);

    assert_eq!(
        call(
            c,
            "DELETE",
            &format!("/compute/v2.1/servers/{id}"),
            &[t],
            ""
        )
        .status,
        204
    );
    wait_for_status(
        c,
        &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
        admin,
        404,
    );
}

/// A state sync whose host listing was taken before an action finished must
/// not undo the action. The guest powers itself off; a sync round reads the
/// server (ACTIVE) and takes the host's list (shut off), which is held on its
/// way back while a hard reboot brings the server back (ACTIVE). The stale
/// listing then arrives: the server stays ACTIVE.
#[test]
fn a_stale_host_listing_does_not_undo_an_action() {
    let cloud = Cloud::start(Delays::NONE);
    let (c, hostd, t) = (&cloud.c, &cloud.hostd, cloud.auth());
    let (id, _) = cloud.active_server();
    let show = || cloud.show(&id);
    let wait = |want: &str| {
        cloud.wait(&id, want);
    };

    hostd.set_state_and_hold_listings(&id, "shutoff");
    let stale = hostd.wait_held(0);
    assert_eq!(show()["status"], "ACTIVE");
    let r = call(
        c,
        "POST",
        &format!("/compute/v2.1/servers/{id}/action"),
        &[t],
        r#"{"reboot": {"type": "HARD"}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait("ACTIVE");
    assert_eq!(hostd.instances()[&id], "running");
    // The stale listing arrives; its round is over when the next round's
    // listing is taken (and held, so that round writes nothing yet).
    hostd.release_held();
    hostd.wait_held(stale);
    let s = show();
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    hostd.release_listings();
}

/// Nova's reset-state: an admin marks a server ERROR (or ACTIVE again) with
/// nothing changed on the host, and the state sync keeps an ERROR as Nova's
/// power sync does (only the power state follows the host) until a hard
/// reboot or another reset ends it.
#[test]
fn an_admins_reset_state_holds_against_the_state_sync() {
    let cloud = Cloud::start(Delays::NONE);
    let (c, hostd, t) = (&cloud.c, &cloud.hostd, cloud.auth());
    let (id, _) = cloud.active_server();
    let act = |who: (&str, &str), body: &str| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[who],
            body,
        )
    };
    let sync = || {
        let r = call(
            c,
            "POST",
            "/internal/v1/reconcilers/instance_sync/run",
            &[t],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // bob, a member of the server's project: not an admin.
    common::second_project(c);
    let first_id = |path: &str, key: &str| {
        call(c, "GET", path, &[t], "").json()[key][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let project = first_id("/identity/v3/projects?name=admin", "projects");
    let user = first_id("/identity/v3/users?name=bob", "users");
    let member = first_id("/identity/v3/roles?name=member", "roles");
    let grant = format!("/identity/v3/projects/{project}/users/{user}/roles/{member}");
    assert_eq!(call(c, "PUT", &grant, &[t], "").status, 204);
    let bob = common::token(c, "bob", "bob-password", "admin");
    let r = act(
        ("X-Auth-Token", &bob),
        r#"{"os-resetState": {"state": "error"}}"#,
    );
    assert_eq!(r.status, 403, "admins only: {}", r.body);
    for bad in [
        r#"{"os-resetState": {"state": "stopped"}}"#,
        r#"{"os-resetState": {}}"#,
    ] {
        assert_eq!(act(t, bad).status, 400, "{bad}");
    }
    let r = call(
        c,
        "POST",
        "/compute/v2.1/servers/no-such-server/action",
        &[t],
        r#"{"os-resetState": {"state": "error"}}"#,
    );
    assert_eq!(r.status, 404);

    // Diagnostics: the VMM's own figures, for admins.
    let diagnostics = format!("/compute/v2.1/servers/{id}/diagnostics");
    let r = call(c, "GET", &diagnostics, &[t], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let d = r.json();
    assert_eq!(
        (d["memory"].as_u64(), d["uptime"].as_u64()),
        (Some(131_072), Some(5)),
        "{d}"
    );
    assert_eq!(
        (d["num_cpus"].as_u64(), d["cpu0_exits"].as_u64()),
        (Some(1), Some(3)),
        "{d}"
    );
    assert_eq!(
        call(c, "GET", &diagnostics, &[("X-Auth-Token", &bob)], "").status,
        403
    );
    // Nothing to push: netd converges the ports; guests ask DHCP and metadata.
    assert_eq!(act(t, r#"{"injectNetworkInfo": null}"#).status, 202);
    assert_eq!(
        act(("X-Auth-Token", &bob), r#"{"injectNetworkInfo": null}"#).status,
        403
    );
    assert_eq!(
        act(t, r#"{"os-resetState": {"state": "error"}}"#).status,
        202
    );
    assert_eq!(cloud.show(&id)["status"], "ERROR");
    assert_eq!(
        hostd.instances()[&id],
        "running",
        "nothing changed on the host"
    );
    sync();
    let s = cloud.show(&id);
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-STS:power_state"].as_i64()),
        (Some("ERROR"), Some(1)),
        "{s}"
    );
    // The guest powers off meanwhile: the power state follows, ERROR stays.
    hostd.set_state_and_hold_listings(&id, "shutoff");
    hostd.release_listings();
    sync();
    let s = cloud.show(&id);
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-STS:power_state"].as_i64()),
        (Some("ERROR"), Some(4)),
        "{s}"
    );

    assert_eq!(
        call(
            c,
            "GET",
            &format!("/compute/v2.1/servers/{id}/diagnostics"),
            &[t],
            ""
        )
        .status,
        409,
        "no diagnostics of a server in ERROR"
    );
    // A hard reboot recovers it.
    assert_eq!(act(t, r#"{"reboot": {"type": "HARD"}}"#).status, 202);
    cloud.wait(&id, "ACTIVE");
    // And a reset to active ends an ERROR too.
    assert_eq!(
        act(t, r#"{"os-resetState": {"state": "error"}}"#).status,
        202
    );
    assert_eq!(
        act(t, r#"{"os-resetState": {"state": "active"}}"#).status,
        202
    );
    sync();
    assert_eq!(cloud.show(&id)["status"], "ACTIVE");
}

/// The reconcilers on the internal API: listed with their periods and last
/// outcomes, run at once on request (the answer comes when the run is over),
/// for admins only.
#[test]
fn reconcilers_are_listed_and_run_on_request() {
    let c = start_with(None, &controller_config());
    let admin = admin_token(&c);
    let t = ("X-Auth-Token", admin.as_str());
    let list = call(&c, "GET", "/internal/v1/reconcilers", &[t], "");
    assert_eq!(list.status, 200, "{}", list.body);
    let names: Vec<String> = list.json()["reconcilers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["instance_sync", "stale_work", "volumes", "token_purge"]
    );
    for name in &names {
        let r = call(
            &c,
            "POST",
            &format!("/internal/v1/reconcilers/{name}/run"),
            &[t],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let status = &r.json()["reconciler"];
        assert!(status["runs"].as_u64().unwrap() >= 1, "{status}");
        assert_eq!(status["running"], false);
        assert!(status["last_outcome"].is_string(), "{status}");
    }
    let r = call(&c, "POST", "/internal/v1/reconcilers/nope/run", &[t], "");
    assert_eq!(r.status, 404);
    assert_eq!(
        call(&c, "GET", "/internal/v1/reconcilers", &[], "").status,
        401
    );
}

/// A delete is not held forever by a host that is down (no heartbeat within
/// the timeout, nothing answering): the server goes at once, and when the
/// host comes back its orphaned instance is removed by the reaper.
#[test]
fn a_delete_on_a_down_host_finishes_and_the_host_is_cleaned_when_it_returns() {
    let cloud = Cloud::start_with(Delays::NONE, "[scheduler]\nheartbeat_timeout_secs = 1\n");
    // Heartbeats every 200 ms while the server is made, as hostd sends them.
    let beating = std::sync::atomic::AtomicBool::new(true);
    let id = std::thread::scope(|s| {
        s.spawn(|| {
            while beating.load(std::sync::atomic::Ordering::SeqCst) {
                cloud.hostd.register(&cloud.c);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let (id, _) = cloud.active_server();
        beating.store(false, std::sync::atomic::Ordering::SeqCst);
        id
    });
    // The host stops answering and misses its heartbeats.
    cloud.hostd.register_at(&cloud.c, "http://127.0.0.1:1");
    std::thread::sleep(Duration::from_millis(2100));
    let r = call(
        &cloud.c,
        "DELETE",
        &format!("/compute/v2.1/servers/{id}"),
        &[cloud.auth()],
        "",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for_status(
        &cloud.c,
        &format!("/compute/v2.1/servers/{id}"),
        &cloud.admin,
        404,
    );
    assert!(
        cloud.hostd.instances().contains_key(&id),
        "the host was down"
    );
    // It returns: the next sync round removes what it still runs.
    cloud.hostd.register(&cloud.c);
    let r = call(
        &cloud.c,
        "POST",
        "/internal/v1/reconcilers/instance_sync/run",
        &[cloud.auth()],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(cloud.hostd.instances().is_empty(), "{}", r.body);
}

/// A build its host fails is unwound before the server shows ERROR: the
/// instance the host made is removed and the claim given back, at once
/// rather than by the reaper's next round.
#[test]
fn a_failed_build_is_unwound_before_it_ends_in_error() {
    let cloud = Cloud::start(Delays::NONE);
    cloud.hostd.fail_creates();
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    let r = call(
        &cloud.c,
        "POST",
        "/compute/v2.1/servers",
        &[cloud.auth()],
        &format!(
            r#"{{"server": {{"name": "vm", "imageRef": "{image}", "flavorRef": "{flavor}"}}}}"#
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    let server = cloud.wait(&id, "ERROR");
    // Read at once: the unwind ran before the ERROR was written.
    let left = cloud.hostd.instances();
    let fault = server["fault"]["message"].as_str().unwrap_or_default();
    assert!(
        fault.starts_with("host stand-in: ") && fault.contains("then No valid host was found"),
        "{fault}"
    );
    assert!(left.is_empty(), "left on the host: {left:?}");
    let hypervisors = call(
        &cloud.c,
        "GET",
        "/compute/v2.1/os-hypervisors/detail",
        &[cloud.auth()],
        "",
    )
    .json();
    assert_eq!(
        hypervisors["hypervisors"][0]["vcpus_used"], 0,
        "{hypervisors}"
    );
    assert!(server["OS-EXT-SRV-ATTR:host"].is_null(), "{server}");
}

/// A host that fails a create after making the instance (its answer lost, or
/// the start failed late) is not left running it: the build removes it
/// there, gives the claim back and places the server on another host.
#[test]
fn a_build_retried_on_another_host_leaves_nothing_on_the_first() {
    let cloud = Cloud::start(Delays {
        create: Duration::from_millis(1500),
        action: Duration::ZERO,
        delete: Duration::ZERO,
    });
    cloud.hostd.fail_creates();
    let (flavor, image) = bootable(&cloud.c, &cloud.admin, 1, 128);
    let r = call(
        &cloud.c,
        "POST",
        "/compute/v2.1/servers",
        &[cloud.auth()],
        &format!(
            r#"{{"server": {{"name": "vm", "imageRef": "{image}", "flavorRef": "{flavor}"}}}}"#
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    // The first host is the only one when the build is placed; a second
    // registers while the first is busy with the create.
    std::thread::sleep(Duration::from_millis(500));
    let second = StandInHostd::start_as("second", Delays::NONE);
    second.register(&cloud.c);
    let server = cloud.wait(&id, "ACTIVE");
    assert_eq!(server["OS-EXT-SRV-ATTR:host"], "second", "{server}");
    assert!(
        cloud.hostd.instances().is_empty(),
        "{:?}",
        cloud.hostd.instances()
    );
    assert_eq!(
        second.instances().get(&id).map(String::as_str),
        Some("running")
    );
    let hypervisors = call(
        &cloud.c,
        "GET",
        "/compute/v2.1/os-hypervisors/detail",
        &[cloud.auth()],
        "",
    )
    .json();
    let used: Vec<(String, i64)> = hypervisors["hypervisors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["hypervisor_hostname"].as_str().unwrap().to_owned(),
                h["vcpus_used"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(used.contains(&("stand-in".to_owned(), 0)), "{used:?}");
    assert!(used.contains(&("second".to_owned(), 1)), "{used:?}");
}

/// A serial console URL (`os-getSerialConsole`) is a websocket with a
/// one-time token: what the client types reaches the host, what the host's
/// console shows reaches the client; the token does not open a second
/// session; another project's user gets no URL; only `serial` is offered.
#[test]
fn a_serial_console_is_a_websocket_with_a_one_time_token() {
    use tungstenite::{client::IntoClientRequest, Message};
    let cloud = Cloud::start(Delays::NONE);
    let (c, t) = (&cloud.c, cloud.auth());
    let (id, _) = cloud.active_server();
    let get_console = |token: (&str, &str), kind: &str| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[token],
            &format!(r#"{{"os-getSerialConsole": {{"type": "{kind}"}}}}"#),
        )
    };
    let r = get_console(t, "serial");
    assert_eq!(r.status, 200, "{}", r.body);
    let console = r.json()["console"].clone();
    assert_eq!(console["type"], "serial");
    let url = console["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("ws://{}/serial-console/?token=", c.addr)),
        "{url}"
    );

    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let stream = std::net::TcpStream::connect(&c.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut ws, response) = tungstenite::client(request, stream).unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "binary"
    );
    ws.send(Message::binary(b"root\r".to_vec())).unwrap();
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => seen.extend_from_slice(&b),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&seen), "echo: root\r");
    assert_eq!(cloud.hostd.typed(), b"root\r");

    // The token was taken: a second connection is refused before the
    // upgrade, as is a token nobody issued.
    for bad in [
        url.clone(),
        format!("ws://{}/serial-console/?token=made-up", c.addr),
    ] {
        let stream = std::net::TcpStream::connect(&c.addr).unwrap();
        match tungstenite::client(bad.as_str(), stream) {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                assert_eq!(r.status(), 401)
            }
            other => panic!("{bad}: {:?}", other.map(|(_, r)| r.status())),
        }
    }

    // Only serial consoles; only the server's own project.
    assert_eq!(get_console(t, "novnc").status, 400);
    common::second_project(c);
    let other = common::token(c, "bob", "bob-password", "other");
    assert_eq!(get_console(("X-Auth-Token", &other), "serial").status, 404);
}

/// `rebuild` replaces the server's instance on its host from the new image
/// (a delete and a create there), keeps its id and power state, renames it
/// if asked, and is recorded; bad requests are refused before anything
/// starts.
#[test]
fn a_rebuild_makes_the_instance_again_from_the_new_image() {
    let cloud = Cloud::start(Delays {
        create: Duration::ZERO,
        action: Duration::from_millis(300),
        delete: Duration::ZERO,
    });
    let (c, t) = (&cloud.c, cloud.auth());
    let (id, _) = cloud.active_server();
    let image = call(
        c,
        "POST",
        "/image/v2/images",
        &[t],
        r#"{"name": "kernel-2", "disk_format": "aki", "container_format": "aki"}"#,
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/image/v2/images/{image}/file");
    assert_eq!(
        common::put_bytes(c, &path, &cloud.admin, b"\x7fELF two"),
        204
    );
    let act = |body: String| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[t],
            &body,
        )
    };
    let rebuild = |name: &str| {
        act(format!(
            r#"{{"rebuild": {{"imageRef": "{image}", "name": "{name}"}}}}"#
        ))
    };

    let r = rebuild("vm-rebuilt");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["server"]["status"], "REBUILD", "{}", r.body);
    assert_eq!(rebuild("again").status, 409, "one task at a time");
    let s = cloud.wait(&id, "ACTIVE");
    assert_eq!(s["image"]["id"], image);
    assert_eq!(s["name"], "vm-rebuilt");
    let creates = cloud.hostd.create_bodies();
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert_eq!(creates[1]["kernel_image"], image);
    assert_eq!(cloud.hostd.instances().get(&id).unwrap(), "running");
    let actions = call(
        c,
        "GET",
        &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
        &[t],
        "",
    )
    .json();
    assert!(
        actions["instanceActions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "rebuild" && a["message"].is_null()),
        "{actions}"
    );

    // A stopped server is stopped again afterwards.
    assert_eq!(act(r#"{"os-stop": null}"#.into()).status, 202);
    cloud.wait(&id, "SHUTOFF");
    assert_eq!(rebuild("vm-rebuilt").status, 202);
    cloud.wait(&id, "SHUTOFF");
    assert_eq!(cloud.hostd.create_bodies().len(), 3);
    assert_eq!(cloud.hostd.instances().get(&id).unwrap(), "shutoff");

    // Refused before anything starts.
    assert_eq!(act(r#"{"rebuild": {}}"#.into()).status, 400);
    let r = act(format!(
        r#"{{"rebuild": {{"imageRef": "{image}", "key_name": "k"}}}}"#
    ));
    assert_eq!(
        r.status, 400,
        "key_name needs microversion 2.54: {}",
        r.body
    );
    let r = act(r#"{"rebuild": {"imageRef": "00000000-0000-0000-0000-000000000000"}}"#.into());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("could not be found"), "{}", r.body);
    let r = act(format!(
        r#"{{"rebuild": {{"imageRef": "{image}", "preserve_ephemeral": true}}}}"#
    ));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("preserve_ephemeral"), "{}", r.body);
    assert_eq!(cloud.show(&id)["status"], "SHUTOFF");
}

/// A server booted from a raw disk image of its own (a root disk to
/// snapshot): the image's id and the server's, active. Uses the first
/// flavor, so a server (`active_server`) must have made it.
fn disk_server(cloud: &Cloud) -> (String, String) {
    let (c, t) = (&cloud.c, cloud.auth());
    let disk = call(
        c,
        "POST",
        "/image/v2/images",
        &[t],
        r#"{"name": "disk", "disk_format": "raw", "container_format": "bare"}"#,
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/image/v2/images/{disk}/file");
    assert_eq!(common::put_bytes(c, &path, &cloud.admin, &[0u8; 4096]), 204);
    let flavor = call(c, "GET", "/compute/v2.1/flavors", &[t], "").json()["flavors"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        c,
        "POST",
        "/compute/v2.1/servers",
        &[t],
        &format!(
            r#"{{"server": {{"name": "vm-disk", "imageRef": "{disk}", "flavorRef": "{flavor}"}}}}"#
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&id, "ACTIVE");
    (disk, id)
}

/// `createImage` makes a private Glance image at once (`saving`), and the
/// server's host delivers the root disk's data straight into it; the image
/// becomes active with Nova's snapshot properties. A server booted from a
/// kernel image has no root disk to snapshot; only the server's host may
/// deliver the data.
#[test]
fn a_snapshot_is_an_image_of_the_root_disk_delivered_by_the_host() {
    let cloud = Cloud::start(Delays::NONE);
    let (c, t) = (&cloud.c, cloud.auth());
    let (kernel_server, _) = cloud.active_server();
    let (disk, id) = disk_server(&cloud);
    let create_image = |server: &str, body: &str| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{server}/action"),
            &[t],
            body,
        )
    };

    let r = create_image(
        &id,
        r#"{"createImage": {"name": "snap-1", "metadata": {"purpose": "test"}}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let location = r.header("location").unwrap().to_owned();
    let image_id = location.rsplit('/').next().unwrap().to_owned();
    assert!(location.ends_with(&format!("/image/v2/images/{image_id}")));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let image = loop {
        let image = call(c, "GET", &format!("/image/v2/images/{image_id}"), &[t], "").json();
        if image["status"] == "active" {
            break image;
        }
        assert_eq!(image["status"], "saving", "{image}");
        assert!(std::time::Instant::now() < deadline, "{image}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(image["name"], "snap-1");
    assert_eq!(image["visibility"], "private");
    assert_eq!(image["image_type"], "snapshot");
    assert_eq!(image["instance_uuid"], id.as_str());
    assert_eq!(image["base_image_ref"], disk.as_str());
    assert_eq!(image["purpose"], "test");
    assert_eq!(image["disk_format"], "raw");
    let data = call(
        c,
        "GET",
        &format!("/image/v2/images/{image_id}/file"),
        &[t],
        "",
    );
    // The host sent its data, not its hole; the image is whole, and its
    // checksums are the whole image's.
    let whole = {
        let mut d = format!("root disk of {id}").into_bytes();
        d.resize(common::hostd::ROOT_DISK_BYTES as usize, 0);
        d
    };
    assert_eq!(data.bytes, whole);
    assert_eq!(image["size"], common::hostd::ROOT_DISK_BYTES);
    assert_eq!(
        image["checksum"],
        format!("{:x}", <md5::Md5 as md5::Digest>::digest(&whole))
    );
    // A host asking for the image gets it sparse, and the same.
    let own = format!("Bearer {}", common::hostd::host_token(&cloud.hostd.host_id));
    let raw = call(
        c,
        "GET",
        &format!("/internal/v1/images/{image_id}/raw"),
        &[
            ("Authorization", &own),
            ("Accept", hostd_proto::sparse::CONTENT_TYPE),
        ],
        "",
    );
    assert_eq!(raw.status, 200);
    assert_eq!(
        raw.header("content-type"),
        Some(hostd_proto::sparse::CONTENT_TYPE)
    );
    // One filesystem block of data, not 1 MiB.
    assert!(raw.bytes.len() < 16 << 10, "{} bytes sent", raw.bytes.len());
    let got = hostd_proto::sparse::decode_all(&raw.bytes, u64::MAX).unwrap();
    assert_eq!(got, whole);
    let s = cloud.wait(&id, "ACTIVE");
    assert!(s["OS-EXT-STS:task_state"].is_null());

    // Only the server's host delivers a snapshot's data, and only once.
    let stranger = format!("Bearer {}", common::hostd::host_token("elsewhere"));
    let r = call(
        c,
        "PUT",
        &format!("/internal/v1/images/{image_id}/file"),
        &[("Authorization", &stranger)],
        "forged",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        c,
        "PUT",
        &format!("/internal/v1/images/{image_id}/file"),
        &[("Authorization", &own)],
        "again",
    );
    assert_eq!(r.status, 409, "{}", r.body);

    // No import or location task ever works on an image here (Glance 2.12).
    let tasks = call(
        c,
        "GET",
        &format!("/image/v2/images/{image_id}/tasks"),
        &[t],
        "",
    );
    assert_eq!(
        (tasks.status, tasks.json()),
        (200, serde_json::json!({"tasks": []}))
    );
    let r = call(
        c,
        "GET",
        "/image/v2/images/00000000-0000-4000-8000-000000000000/tasks",
        &[t],
        "",
    );
    assert_eq!(r.status, 404);
    // The caller may name the image_type, as Nova lets it; not the server.
    let r = create_image(
        &id,
        r#"{"createImage": {"name": "snap-3", "metadata": {"image_type": "test", "instance_uuid": "forged"}}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let third = r
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let shown = call(c, "GET", &format!("/image/v2/images/{third}"), &[t], "").json();
    assert_eq!(
        (&shown["image_type"], &shown["instance_uuid"]),
        (&serde_json::json!("test"), &serde_json::json!(id))
    );
    cloud.wait(&id, "ACTIVE");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while call(c, "GET", &format!("/image/v2/images/{third}"), &[t], "").json()["status"]
        != "active"
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Nothing to snapshot; a name is required.
    let r = create_image(&kernel_server, r#"{"createImage": {"name": "snap-2"}}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(create_image(&id, r#"{"createImage": {}}"#).status, 400);
}

/// `createBackup` is a snapshot of type `backup`; once one is active the
/// server keeps only its newest `rotation` backups of that type (other types
/// and plain snapshots untouched). From 2.45 the image's id is in the body.
#[test]
fn backups_rotate_by_type() {
    let cloud = Cloud::start(Delays::NONE);
    let (c, t) = (&cloud.c, cloud.auth());
    // Its flavor and host, for the server booted from a disk.
    cloud.active_server();
    let (_, id) = disk_server(&cloud);
    let action = |version: &str, body: String| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[t, ("OpenStack-API-Version", version)],
            &body,
        )
    };
    let image_status = |image: &str| {
        let r = call(c, "GET", &format!("/image/v2/images/{image}"), &[t], "");
        (r.status == 200).then(|| r.json())
    };
    // Made one after another, each active before the next, as tempest does.
    let backup = |name: &str, kind: &str, rotation: &str| -> String {
        let r = action(
            "compute 2.45",
            format!(
                r#"{{"createBackup": {{"name": "{name}", "backup_type": "{kind}", "rotation": {rotation}}}}}"#
            ),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let image = r.json()["image_id"].as_str().unwrap().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let shown = image_status(&image).unwrap();
            if shown["status"] == "active" {
                assert_eq!(shown["image_type"], "backup");
                assert_eq!(shown["backup_type"], kind);
                assert_eq!(shown["instance_uuid"], id.as_str());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{shown}");
            std::thread::sleep(Duration::from_millis(50));
        }
        cloud.wait(&id, "ACTIVE");
        // created_at counts seconds: the next backup is newer.
        std::thread::sleep(Duration::from_millis(1100));
        image
    };
    let first = backup("b1", "daily", "2");
    let weekly = backup("w1", "weekly", "1");
    let second = backup("b2", "daily", "\"2\"");
    assert!(image_status(&first).is_some(), "two kept");
    let third = backup("b3", "daily", "2");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while image_status(&first).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "b1 was not rotated out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for kept in [&second, &third, &weekly] {
        assert!(image_status(kept).is_some(), "{kept} kept");
    }
    // Before 2.45: the image in a Location header.
    let r = action(
        "compute 2.1",
        r#"{"createBackup": {"name": "old", "backup_type": "monthly", "rotation": 1}}"#.into(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.header("location").is_some());
    cloud.wait(&id, "ACTIVE");
    for bad in [
        r#"{"createBackup": {"name": "x", "rotation": 1}}"#,
        r#"{"createBackup": {"name": "x", "backup_type": "daily"}}"#,
        r#"{"createBackup": {"name": "x", "backup_type": "daily", "rotation": -1}}"#,
        r#"{"createBackup": {"name": "x", "backup_type": "daily", "rotation": "1x"}}"#,
        r#"{"createBackup": {"backup_type": "daily", "rotation": 1}}"#,
    ] {
        assert_eq!(action("compute 2.45", bad.into()).status, 400, "{bad}");
    }
}

/// `resize` moves the server to a new flavor on its host (the claim moves
/// with it, refused at once when the host has no room) and waits in
/// VERIFY_RESIZE; `confirmResize` keeps it, `revertResize` brings the old
/// flavor back.
#[test]
fn a_resize_waits_to_be_confirmed_or_reverted() {
    resizes(&Cloud::start(RESIZE_DELAYS));
}

#[test]
fn resizes_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    resizes(&Cloud::start_on(Some(pg.url()), RESIZE_DELAYS, ""));
}

const RESIZE_DELAYS: Delays = Delays {
    create: Duration::ZERO,
    action: Duration::from_millis(100),
    delete: Duration::ZERO,
};

fn resizes(cloud: &Cloud) {
    let (c, t) = (&cloud.c, cloud.auth());
    let (id, _) = cloud.active_server();
    let first = cloud.show(&id)["flavor"]["id"].as_str().unwrap().to_owned();
    let flavor = |name: &str, vcpus: i64, ram: i64| {
        call(
            c,
            "POST",
            "/compute/v2.1/flavors",
            &[t],
            &serde_json::json!({"flavor": {"name": name, "ram": ram, "vcpus": vcpus, "disk": 0}})
                .to_string(),
        )
        .json()["flavor"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (bigger, huge) = (flavor("bigger", 2, 256), flavor("huge", 2, 1 << 20));
    let act = |body: String| {
        call(
            c,
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            &[t],
            &body,
        )
    };
    let resize = |to: &str| act(format!(r#"{{"resize": {{"flavorRef": "{to}"}}}}"#));

    assert_eq!(resize(&first).status, 400, "the same flavor");
    let with_ephemeral = call(
        c,
        "POST",
        "/compute/v2.1/flavors",
        &[t],
        r#"{"flavor": {"name": "eph", "ram": 256, "vcpus": 2, "disk": 0,
            "OS-FLV-EXT-DATA:ephemeral": 1}}"#,
    )
    .json()["flavor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = resize(&with_ephemeral);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("ephemeral disk (1 GiB)"), "{}", r.body);
    // Over the project's quota: refused before any host is asked (403).
    let r = resize(&huge);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Quota exceeded for ram"), "{}", r.body);
    let project = cloud.show(&id)["tenant_id"].as_str().unwrap().to_owned();
    let r = call(
        c,
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{project}"),
        &[t],
        r#"{"quota_set": {"ram": -1}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Within it, but no host has the room (409).
    let r = resize(&huge);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("No valid host was found"), "{}", r.body);
    assert_eq!(cloud.show(&id)["status"], "ACTIVE");

    let r = resize(&bigger);
    assert_eq!(r.status, 202, "{}", r.body);
    let s = cloud.wait(&id, "VERIFY_RESIZE");
    assert_eq!(s["flavor"]["id"], bigger);
    assert_eq!(act(r#"{"confirmResize": null}"#.into()).status, 204);
    let s = cloud.wait(&id, "ACTIVE");
    assert_eq!(s["flavor"]["id"], bigger);
    assert_eq!(
        act(r#"{"confirmResize": null}"#.into()).status,
        409,
        "nothing to confirm"
    );

    // Reverted: the flavor from before.
    assert_eq!(resize(&first).status, 202);
    cloud.wait(&id, "VERIFY_RESIZE");
    assert_eq!(act(r#"{"revertResize": null}"#.into()).status, 202);
    let s = cloud.wait(&id, "ACTIVE");
    assert_eq!(s["flavor"]["id"], bigger);
    let actions = call(
        c,
        "GET",
        &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
        &[t],
        "",
    )
    .json();
    let names: Vec<&str> = actions["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    for want in ["resize", "confirmResize", "revertResize"] {
        assert!(names.contains(&want), "{names:?}");
    }

    // Each resize is a migration record (`openstack server migration
    // list`), newest first: reverted, confirmed; the refused ones none.
    let migrations = |query: &str, version: &str| {
        let r = call(
            c,
            "GET",
            &format!("/compute/v2.1/os-migrations{query}"),
            &[t, ("OpenStack-API-Version", version)],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["migrations"].as_array().unwrap().clone()
    };
    let all = migrations("", "compute 2.1");
    let statuses: Vec<&str> = all.iter().filter_map(|m| m["status"].as_str()).collect();
    assert_eq!(statuses, ["reverted", "confirmed"], "{all:?}");
    let host = cloud.show(&id)["OS-EXT-SRV-ATTR:host"].clone();
    assert_eq!(all[1]["instance_uuid"], id.as_str());
    assert_eq!(
        (&all[1]["source_compute"], &all[1]["dest_compute"]),
        (&host, &host)
    );
    assert!(all[1]["created_at"]
        .as_str()
        .is_some_and(|t| !t.ends_with('Z')));
    assert!(all[1].get("migration_type").is_none(), "from 2.23");
    assert_eq!(
        migrations("?status=confirmed", "compute 2.23")[0]["migration_type"],
        "resize"
    );
    assert_eq!(
        migrations(
            &format!("?instance_uuid={id}&migration_type=resize"),
            "compute 2.23"
        )
        .len(),
        2
    );
    assert!(migrations("?host=elsewhere", "compute 2.1").is_empty());
    common::second_project(c);
    let bob = common::token(c, "bob", "bob-password", "other");
    let r = call(
        c,
        "GET",
        "/compute/v2.1/os-migrations",
        &[("X-Auth-Token", &bob)],
        "",
    );
    assert_eq!(r.status, 403, "admins only");
}

/// Nova's os-simple-tenant-usage: a project's servers over a period, also
/// those deleted since; every project's for admins only.
#[test]
fn usage_counts_running_and_deleted_servers_over_a_period() {
    usage_over_a_period(&Cloud::start(Delays::NONE));
}

#[test]
fn usage_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    usage_over_a_period(&Cloud::start_on(Some(pg.url()), Delays::NONE, ""));
}

fn usage_over_a_period(cloud: &Cloud) {
    let (c, t) = (&cloud.c, cloud.auth());
    let (id, _) = cloud.active_server();
    let project = cloud.show(&id)["tenant_id"].as_str().unwrap().to_owned();
    let (yesterday, tomorrow) = ("2000-01-01T00:00:00", "2100-01-01T00:00:00.000000");
    let get = |who: (&str, &str), path: &str| {
        call(
            c,
            "GET",
            &format!("/compute/v2.1/os-simple-tenant-usage{path}"),
            &[who],
            "",
        )
    };
    let period = format!("start={yesterday}&end={tomorrow}");

    let r = get(t, &format!("?{period}&detailed=1"));
    assert_eq!(r.status, 200, "{}", r.body);
    let usages = r.json()["tenant_usages"].clone();
    assert_eq!(usages.as_array().unwrap().len(), 1, "{usages}");
    let u = &usages[0];
    assert_eq!(u["tenant_id"], project.as_str());
    assert_eq!(u["start"], "2000-01-01T00:00:00.000000");
    let s = &u["server_usages"][0];
    assert_eq!(s["instance_id"], id.as_str());
    assert_eq!(
        (s["vcpus"].as_i64(), s["memory_mb"].as_i64()),
        (Some(1), Some(128))
    );
    assert_eq!(s["state"], "active");
    assert!(s["ended_at"].is_null());
    assert!(u["total_hours"].as_f64().unwrap() > 0.0, "{u}");
    // Without `detailed`, the totals only.
    let r = get(t, &format!("?{period}"));
    assert!(r.json()["tenant_usages"][0].get("server_usages").is_none());

    // From 2.40, pages of servers: a second server, one per page.
    let shown = cloud.show(&id);
    let r = call(
        c,
        "POST",
        "/compute/v2.1/servers",
        &[t],
        &serde_json::json!({"server": {"name": "vm2", "imageRef": shown["image"]["id"],
            "flavorRef": shown["flavor"]["id"]}})
        .to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let second = r.json()["server"]["id"].as_str().unwrap().to_owned();
    cloud.wait(&second, "ACTIVE");
    let v240 = ("OpenStack-API-Version", "compute 2.40");
    let page = |query: &str| {
        let r = call(
            c,
            "GET",
            &format!("/compute/v2.1/os-simple-tenant-usage/{project}?{period}{query}"),
            &[t, v240],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let first_page = page("&limit=1");
    let ids = |p: &serde_json::Value| -> Vec<String> {
        p["tenant_usage"]["server_usages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["instance_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut both = [id.clone(), second.clone()];
    both.sort();
    assert_eq!(ids(&first_page), both[..1]);
    let next = first_page["tenant_usage_links"][0]["href"]
        .as_str()
        .unwrap();
    assert!(next.contains(&format!("marker={}", both[0])), "{next}");
    let second_page = page(&format!("&limit=1&marker={}", both[0]));
    assert_eq!(ids(&second_page), both[1..]);
    assert!(
        second_page.get("tenant_usage_links").is_none(),
        "the last page"
    );
    let r = call(
        c,
        "GET",
        &format!("/compute/v2.1/os-simple-tenant-usage/{project}?{period}&marker=nope"),
        &[t, v240],
        "",
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        call(
            c,
            "DELETE",
            &format!("/compute/v2.1/servers/{second}"),
            &[t],
            ""
        )
        .status,
        204
    );

    // Deleted, it still counts for the time it ran.
    let r = call(
        c,
        "DELETE",
        &format!("/compute/v2.1/servers/{id}"),
        &[t],
        "",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for gone in [&id, &second] {
        while call(c, "GET", &format!("/compute/v2.1/servers/{gone}"), &[t], "").status != 404 {
            assert!(
                std::time::Instant::now() < deadline,
                "the delete of {gone} never finished"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let r = get(t, &format!("/{project}?{period}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let usages = r.json()["tenant_usage"]["server_usages"].clone();
    let usages = usages.as_array().unwrap();
    assert_eq!(usages.len(), 2, "both deleted servers: {usages:?}");
    for s in usages {
        assert_eq!(s["state"], "terminated", "{s}");
        assert!(s["ended_at"].as_str().is_some(), "{s}");
    }
    assert!(usages.iter().any(|s| s["instance_id"] == id.as_str()));
    // A period before it ran: nothing.
    let r = get(
        t,
        &format!("/{project}?start=2000-01-01T00:00:00&end=2000-01-02T00:00:00"),
    );
    assert_eq!(r.json(), serde_json::json!({"tenant_usage": {}}));

    // Members see their own project's usage only; the list is for admins.
    common::second_project(c);
    let bob = common::token(c, "bob", "bob-password", "other");
    let b = ("X-Auth-Token", bob.as_str());
    assert_eq!(get(b, &format!("?{period}")).status, 403);
    assert_eq!(get(b, &format!("/{project}?{period}")).status, 403);
    let other = call(c, "GET", "/identity/v3/projects?name=other", &[t], "").json()["projects"][0]
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(b, &format!("/{other}?{period}")).status, 200);
    // No project named.
    let r = call(
        c,
        "GET",
        &format!("/compute/v2.1/os-simple-tenant-usage/?{period}"),
        &[t],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    // The period ends before it starts; a time in no format Nova reads.
    assert_eq!(
        get(t, &format!("?start={tomorrow}&end={yesterday}")).status,
        400
    );
    assert_eq!(get(t, "?start=yesterday").status, 400);
}
