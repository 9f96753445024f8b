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

/// A project-scoped token for `user`, or why there is none: what the
/// identity service (`/identity/v3` at `at`) answered, or why it could not
/// be asked.
pub fn request_token(
    at: impl Into<Endpoint>,
    user: &str,
    password: &str,
    project: &str,
) -> Result<String, String> {
    let body = password_auth(user, password, project);
    let r = send(at, "POST", "/identity/v3/auth/tokens", &[], body.as_bytes())?;
    if r.status != 201 {
        return Err(format!("answered {}: {}", r.status, r.body));
    }
    r.header("x-subject-token")
        .map(str::to_owned)
        .ok_or_else(|| "answered 201 without X-Subject-Token".to_owned())
}

/// As [`request_token`], None when there is none.
pub fn try_token(
    at: impl Into<Endpoint>,
    user: &str,
    password: &str,
    project: &str,
) -> Option<String> {
    request_token(at, user, password, project).ok()
}

/// As [`request_token`], failing the test with the reason when there is none.
pub fn token(at: impl Into<Endpoint>, user: &str, password: &str, project: &str) -> String {
    request_token(at, user, password, project)
        .unwrap_or_else(|why| panic!("no token for {user} in {project}: {why}"))
}
