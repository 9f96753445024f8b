//! Keystone over HTTP against a real controller process and database.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{call, start, Controller, Postgres};

const ADMIN_AUTH: &str = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"admin-secret"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}"#;

fn exercise_keystone(c: &Controller) {
    // Discovery.
    let r = call(c, "GET", "/identity", &[], "");
    assert_eq!(r.status, 300);
    assert_eq!(r.json()["versions"]["values"][0]["id"], "v3.14");
    assert!(r
        .header("x-openstack-request-id")
        .unwrap()
        .starts_with("req-"));
    assert_eq!(call(c, "GET", "/identity/v3", &[], "").status, 200);

    // Issue.
    let r = call(c, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.header("x-subject-token").unwrap().to_owned();
    let body = r.json();
    assert_eq!(body["token"]["user"]["name"], "admin");
    assert_eq!(body["token"]["project"]["name"], "admin");
    assert_eq!(body["token"]["roles"][0]["name"], "admin");
    let types: Vec<&str> = body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "identity",
            "compute",
            "image",
            "network",
            "block-storage",
            "volumev3"
        ]
    );
    assert!(body["token"]["expires_at"]
        .as_str()
        .unwrap()
        .ends_with(".000000Z"));

    // Validate (GET and HEAD), then revoke.
    let both = [
        ("X-Auth-Token", token.as_str()),
        ("X-Subject-Token", token.as_str()),
    ];
    let r = call(c, "GET", "/identity/v3/auth/tokens", &both, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-subject-token"), Some(token.as_str()));
    assert_eq!(
        call(c, "HEAD", "/identity/v3/auth/tokens", &both, "").status,
        200
    );
    let other = call(c, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
    let other = other.header("x-subject-token").unwrap().to_owned();
    let r = call(
        c,
        "DELETE",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &other)],
        "",
    );
    assert_eq!(r.status, 204);
    let r = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &other)],
        "",
    );
    assert_eq!(r.status, 404, "a revoked token is gone");

    // Mistakes.
    let wrong = ADMIN_AUTH.replace("admin-secret", "nope");
    let r = call(c, "POST", "/identity/v3/auth/tokens", &[], &wrong);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], 401);
    assert!(r.header("x-subject-token").is_none());
    assert_eq!(
        call(c, "POST", "/identity/v3/auth/tokens", &[], "{oops").status,
        400
    );
    assert_eq!(
        call(c, "POST", "/identity/v3/auth/tokens", &[], "{}").status,
        400
    );
    let r = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Subject-Token", &token)],
        "",
    );
    assert_eq!(r.status, 401, "no caller token");
    // What a member reads about themselves, as Keystone's defaults allow:
    // the catalog and projects their token reaches, their own projects,
    // their project's domain; not another user's.
    common::second_project(c);
    let bob = common::token(c, "bob", "bob-password", "other");
    let b = ("X-Auth-Token", bob.as_str());
    let r = call(c, "GET", "/identity/v3/auth/catalog", &[b], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["catalog"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    let r = call(c, "GET", "/identity/v3/auth/projects", &[b], "");
    assert_eq!(r.json()["projects"][0]["name"], "other", "{}", r.body);
    let me = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[b, ("X-Subject-Token", &bob)],
        "",
    );
    let bob_id = me.json()["token"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        c,
        "GET",
        &format!("/identity/v3/users/{bob_id}/projects"),
        &[b],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["projects"].as_array().map(Vec::len), Some(1));
    let admin_id = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
        "",
    )
    .json()["token"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        c,
        "GET",
        &format!("/identity/v3/users/{admin_id}/projects"),
        &[b],
        "",
    );
    assert_eq!(r.status, 403, "another user's projects");
    assert_eq!(
        call(c, "GET", "/identity/v3/domains/default", &[b], "").status,
        200
    );
    assert_eq!(call(c, "GET", "/identity/v3/domains", &[b], "").status, 403);

    exercise_app_credentials(c, &token, &admin_id);
    exercise_roles(c, &token, &bob, &bob_id);
    exercise_domains(c, &token);

    assert_eq!(call(c, "GET", "/nowhere", &[], "").status, 404);
    assert_eq!(
        call(c, "PUT", "/identity/v3/auth/tokens", &[], "").status,
        405
    );
}

/// Roles an admin makes, renames, grants and deletes, as Keystone's API
/// does; the bootstrap roles (`manager` among them) are immutable, and a
/// member changes none.
fn exercise_roles(c: &Controller, admin: &str, member: &str, member_id: &str) {
    let a = ("X-Auth-Token", admin);
    let json = ("Content-Type", "application/json");
    let r = call(c, "GET", "/identity/v3/roles", &[a], "");
    let roles = r.json()["roles"].clone();
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["admin", "manager", "member", "reader"],
        "{}",
        r.body
    );
    let admin_role = roles[0].clone();
    assert_eq!(admin_role["options"]["immutable"], true);

    let r = call(
        c,
        "POST",
        "/identity/v3/roles",
        &[a, json],
        r#"{"role": {"name": "auditor", "description": "reads the books"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let role = r.json()["role"].clone();
    assert_eq!(role["description"], "reads the books");
    assert_eq!(role["options"], serde_json::json!({}));
    let id = role["id"].as_str().unwrap();
    let again = r#"{"role": {"name": "auditor"}}"#;
    let r = call(c, "POST", "/identity/v3/roles", &[a, json], again);
    assert_eq!(r.status, 409, "{}", r.body);
    for bad in [
        r#"{"role": {}}"#,
        r#"{"role": {"name": "x", "description": 3}}"#,
        r#"{"role": {"name": "x", "domain_id": "default"}}"#,
        r#"{"nope": {}}"#,
    ] {
        let r = call(c, "POST", "/identity/v3/roles", &[a, json], bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let m = ("X-Auth-Token", member);
    let r = call(c, "POST", "/identity/v3/roles", &[m, json], again);
    assert_eq!(r.status, 403, "{}", r.body);

    let one = format!("/identity/v3/roles/{id}");
    let r = call(
        c,
        "PATCH",
        &one,
        &[a, json],
        r#"{"role": {"name": "auditors"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["role"]["name"], "auditors");
    assert_eq!(r.json()["role"]["description"], "reads the books");
    let r = call(
        c,
        "PATCH",
        &one,
        &[a, json],
        r#"{"role": {"enabled": false}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = call(
        c,
        "PATCH",
        &one,
        &[a, json],
        r#"{"role": {"name": "member"}}"#,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let immutable = format!("/identity/v3/roles/{}", admin_role["id"].as_str().unwrap());
    let r = call(
        c,
        "PATCH",
        &immutable,
        &[a, json],
        r#"{"role": {"name": "boss"}}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(call(c, "DELETE", &immutable, &[a], "").status, 403);

    // Granted, then deleted: the grant goes with it.
    let other = call(c, "GET", "/identity/v3/projects?name=other", &[a], "");
    let project = other.json()["projects"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let grant = format!("/identity/v3/projects/{project}/users/{member_id}/roles/{id}");
    assert_eq!(call(c, "PUT", &grant, &[a], "").status, 204);
    assert_eq!(call(c, "HEAD", &grant, &[a], "").status, 204);
    assert_eq!(call(c, "DELETE", &one, &[m], "").status, 403);
    assert_eq!(call(c, "DELETE", &one, &[a], "").status, 204);
    assert_eq!(call(c, "GET", &one, &[a], "").status, 404);
    assert_eq!(call(c, "DELETE", &one, &[a], "").status, 404);
    let held = call(
        c,
        "GET",
        &format!("/identity/v3/projects/{project}/users/{member_id}/roles"),
        &[a],
        "",
    );
    assert_eq!(
        held.json()["roles"].as_array().map(Vec::len),
        Some(1),
        "{}",
        held.body
    );
}

/// Domains an admin makes, fills, disables (their users' tokens end) and
/// deletes with what is in them; the default domain stays.
fn exercise_domains(c: &Controller, admin: &str) {
    let a = ("X-Auth-Token", admin);
    let json = ("Content-Type", "application/json");
    let post = |path: &str, body: &str| call(c, "POST", path, &[a, json], body);
    let r = post(
        "/identity/v3/domains",
        r#"{"domain": {"name": "acme", "description": "a customer"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let domain = r.json()["domain"].clone();
    assert_eq!(
        (&domain["enabled"], &domain["description"]),
        (&true.into(), &"a customer".into())
    );
    let id = domain["id"].as_str().unwrap();
    for (bad, want) in [
        (r#"{"domain": {"name": "acme"}}"#, 409),
        (r#"{"domain": {"name": ""}}"#, 400),
        (
            &format!(r#"{{"domain": {{"name": "{}"}}}}"#, "d".repeat(65)),
            400,
        ),
        (r#"{"domain": {"name": "x", "enabled": "yes"}}"#, 400),
    ] {
        let r = post("/identity/v3/domains", bad);
        assert_eq!(r.status, want, "{bad}: {}", r.body);
    }
    let long_project = format!(
        r#"{{"project": {{"name": "{}", "domain_id": "{id}"}}}}"#,
        "p".repeat(65)
    );
    assert_eq!(post("/identity/v3/projects", &long_project).status, 400);
    let nowhere = r#"{"user": {"name": "u", "domain_id": "nowhere", "password": "long-enough"}}"#;
    let r = post("/identity/v3/users", nowhere);
    assert_eq!(r.status, 404, "no such domain: {}", r.body);

    // A user and a project in it, the user granted a role there.
    let r = post(
        "/identity/v3/projects",
        &format!(r#"{{"project": {{"name": "acme-web", "domain_id": "{id}"}}}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let project = r.json()["project"]["id"].as_str().unwrap().to_owned();
    let r = post(
        "/identity/v3/users",
        &format!(
            r#"{{"user": {{"name": "wile", "domain_id": "{id}", "password": "coyote-secret"}}}}"#
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let user = r.json()["user"]["id"].as_str().unwrap().to_owned();
    let roles = call(c, "GET", "/identity/v3/roles?name=member", &[a], "");
    let member = roles.json()["roles"][0]["id"].as_str().unwrap().to_owned();
    let grant = format!("/identity/v3/projects/{project}/users/{user}/roles/{member}");
    assert_eq!(call(c, "PUT", &grant, &[a], "").status, 204);
    let auth = format!(
        r#"{{"auth":{{"identity":{{"methods":["password"],"password":{{"user":{{"name":"wile","domain":{{"name":"acme"}},"password":"coyote-secret"}}}}}},"scope":{{"project":{{"id":"{project}"}}}}}}}}"#
    );
    let r = call(c, "POST", "/identity/v3/auth/tokens", &[], &auth);
    assert_eq!(r.status, 201, "{}", r.body);
    let wile = r.header("x-subject-token").unwrap().to_owned();
    let check = |token: &str| {
        call(
            c,
            "GET",
            "/identity/v3/auth/tokens",
            &[a, ("X-Subject-Token", token)],
            "",
        )
        .status
    };
    assert_eq!(check(&wile), 200);

    // Enabled: not deleted. Disabled: its users' tokens end.
    let one = format!("/identity/v3/domains/{id}");
    let r = call(c, "DELETE", &one, &[a], "");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        c,
        "PATCH",
        &one,
        &[a, json],
        r#"{"domain": {"enabled": false, "description": "gone"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["domain"]["enabled"], false);
    assert_eq!(r.json()["domain"]["description"], "gone");
    assert_eq!(check(&wile), 404, "a disabled domain's user's token");
    assert_eq!(
        call(c, "POST", "/identity/v3/auth/tokens", &[], &auth).status,
        401
    );
    assert_eq!(call(c, "DELETE", &one, &[a], "").status, 204);
    assert_eq!(call(c, "GET", &one, &[a], "").status, 404);
    for gone in [
        format!("/identity/v3/projects/{project}"),
        format!("/identity/v3/users/{user}"),
    ] {
        assert_eq!(call(c, "GET", &gone, &[a], "").status, 404, "{gone}");
    }

    // The default domain stays.
    let default = "/identity/v3/domains/default";
    let off = r#"{"domain": {"enabled": false}}"#;
    assert_eq!(call(c, "PATCH", default, &[a, json], off).status, 403);
    assert_eq!(call(c, "DELETE", default, &[a], "").status, 403);
}

/// Application credentials over HTTP, as tempest drives them: made with a
/// project-scoped token (the secret shown once), a token made with one
/// (its project, its roles, the method and the credential named), listed
/// by name, an expiry given as Python's `isoformat()` shown back as given,
/// duplicates refused, and nothing authenticates once it is deleted.
fn exercise_app_credentials(c: &Controller, token: &str, user_id: &str) {
    let h = [("X-Auth-Token", token)];
    let path = format!("/identity/v3/users/{user_id}/application_credentials");
    let r = call(
        c,
        "POST",
        &path,
        &h,
        r#"{"application_credential": {"name": "ci", "expires_at": "2099-01-01T10:20:30.123456"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let made = r.json()["application_credential"].clone();
    let (id, secret) = (
        made["id"].as_str().unwrap().to_owned(),
        made["secret"].as_str().unwrap().to_owned(),
    );
    assert_eq!(made["expires_at"], "2099-01-01T10:20:30.123456");
    assert_eq!(made["unrestricted"], false);
    assert_eq!(made["roles"][0]["name"], "admin");
    let r = call(
        c,
        "POST",
        &path,
        &h,
        r#"{"application_credential": {"name": "ci"}}"#,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = call(
        c,
        "POST",
        &path,
        &h,
        r#"{"application_credential": {"name": "x", "expires_at": "2001-01-01T00:00:00"}}"#,
    );
    assert_eq!(r.status, 400, "an expiry in the past: {}", r.body);
    let r = call(
        c,
        "POST",
        &path,
        &h,
        r#"{"application_credential": {"name": "x", "roles": [{"name": "reader"}]}}"#,
    );
    assert_eq!(r.status, 400, "a role the user lacks: {}", r.body);
    let r = call(
        c,
        "POST",
        &path,
        &h,
        r#"{"application_credential": {"name": "two", "secret": "my-own-secret"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.json()["application_credential"]["secret"],
        "my-own-secret"
    );
    let two = r.json()["application_credential"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = call(c, "GET", &format!("{path}/{id}"), &h, "");
    assert_eq!(r.status, 200);
    assert!(r.json()["application_credential"].get("secret").is_none());
    let r = call(c, "GET", &format!("{path}?name=two"), &h, "");
    let listed = r.json()["application_credentials"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], two.as_str());
    assert_eq!(
        call(c, "GET", &path, &h, "").json()["application_credentials"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let auth = |id: &str, secret: &str| {
        call(
            c,
            "POST",
            "/identity/v3/auth/tokens",
            &[],
            &format!(
                r#"{{"auth": {{"identity": {{"methods": ["application_credential"],
                "application_credential": {{"id": "{id}", "secret": "{secret}"}}}}}}}}"#
            ),
        )
    };
    let r = auth(&id, &secret);
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json()["token"].clone();
    assert_eq!(t["methods"][0], "application_credential");
    assert_eq!(t["project"]["name"], "admin");
    assert_eq!(t["application_credential"]["id"], id.as_str());
    assert_eq!(t["application_credential"]["restricted"], true);
    let app_token = r.header("x-subject-token").unwrap().to_owned();
    // By name, with its user.
    let r = call(
        c,
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        &format!(
            r#"{{"auth": {{"identity": {{"methods": ["application_credential"],
            "application_credential": {{"name": "two", "secret": "my-own-secret",
            "user": {{"id": "{user_id}"}}}}}}}}}}"#
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(auth(&id, "wrong").status, 401);
    assert_eq!(auth("nope", &secret).status, 401);
    // A restricted credential's token makes no more of them.
    let r = call(
        c,
        "POST",
        &path,
        &[("X-Auth-Token", &app_token)],
        r#"{"application_credential": {"name": "more"}}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);

    for cred in [&id, &two] {
        assert_eq!(
            call(c, "DELETE", &format!("{path}/{cred}"), &h, "").status,
            204
        );
    }
    assert_eq!(
        call(c, "DELETE", &format!("{path}/{id}"), &h, "").status,
        404
    );
    assert_eq!(auth(&id, &secret).status, 401);
    // Its tokens end with it.
    let r = call(
        c,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", token), ("X-Subject-Token", &app_token)],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn keystone_on_sqlite() {
    let c = start(None);
    exercise_keystone(&c);
}

#[test]
fn a_bad_config_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[bootstrap]\nadmin_password = \"short\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootstrap.admin_password"), "{err}");
}

#[test]
fn keystone_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let c = start(Some(pg.url()));
    exercise_keystone(&c);
    // A second controller on the same database shares the identities.
    let c2 = start(Some(pg.url()));
    let r = call(&c2, "POST", "/identity/v3/auth/tokens", &[], ADMIN_AUTH);
    assert_eq!(r.status, 201);
}
