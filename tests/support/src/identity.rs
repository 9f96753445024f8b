//! Keystone v3 tokens, as the openstack CLI asks for them.

use crate::http::{send, Endpoint};

/// The body of a password authentication scoped to a project (Default domain).
pub fn password_auth(user: &str, password: &str, project: &str) -> String {
    serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}})
    .to_string()
}

/// A project-scoped token for `user`, or None when the identity service
/// (`/identity/v3` at `at`) refuses it or cannot be reached.
pub fn try_token(
    at: impl Into<Endpoint>,
    user: &str,
    password: &str,
    project: &str,
) -> Option<String> {
    let body = password_auth(user, password, project);
    let r = send(at, "POST", "/identity/v3/auth/tokens", &[], body.as_bytes()).ok()?;
    if r.status != 201 {
        return None;
    }
    r.header("x-subject-token").map(str::to_owned)
}

/// As [`try_token`], failing the test when there is none.
pub fn token(at: impl Into<Endpoint>, user: &str, password: &str, project: &str) -> String {
    try_token(at, user, password, project)
        .unwrap_or_else(|| panic!("no token for {user} in {project}"))
}
