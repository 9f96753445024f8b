//! Keystone v3, the subset clients call: version discovery, and issuing,
//! validating and revoking tokens (password method, project-scoped or not).

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, iso_micros, json, keystone_error, read_json, Body};
use super::App;
use crate::identity::app_credentials::{AppCredentialAuth, AppCredentialName};
use crate::identity::{Auth, DomainRef, IdentityError, ProjectRef, UserRef};

const SUBJECT_TOKEN: &str = "x-subject-token";
const AUTH_TOKEN: &str = "x-auth-token";

fn version(app: &App) -> Json {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{}/identity/v3/", app.config.public_url)}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

pub async fn route(app: &App, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    if let ["v3", "users", user_id, "credentials", "OS-EC2", more @ ..] = rest {
        return super::identity_ec2::route(app, req, user_id, more).await;
    }
    if let ["v3", "users", user_id, "application_credentials", more @ ..] = rest {
        return super::identity_app_credentials::route(app, req, user_id, more).await;
    }
    if rest.first() == Some(&"v3")
        && matches!(
            rest.get(1),
            Some(&("domains" | "projects" | "users" | "roles"))
        )
    {
        return match super::identity_admin::route(app, req, &rest[1..]).await {
            Some(r) => r,
            None => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
        };
    }
    match (req.method().clone(), rest) {
        (Method::GET, []) => json(
            StatusCode::MULTIPLE_CHOICES,
            &json!({"versions": {"values": [version(app)]}}),
        ),
        (Method::GET, ["v3"]) => json(StatusCode::OK, &json!({"version": version(app)})),
        (Method::POST, ["v3", "auth", "tokens"]) => issue(app, req).await,
        (Method::GET | Method::HEAD, ["v3", "auth", "tokens"]) => check(app, &req).await,
        (Method::DELETE, ["v3", "auth", "tokens"]) => revoke(app, &req).await,
        (Method::GET, ["v3", "auth", what @ ("catalog" | "projects" | "domains")]) => {
            auth_listing(app, &req, what).await
        }
        (_, ["v3", "auth", "tokens"]) | (_, ["v3"]) | (_, []) => {
            keystone_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

fn domain_ref(v: &Json) -> Option<DomainRef> {
    if let Some(id) = v.get("id").and_then(Json::as_str) {
        return Some(DomainRef::Id(id.to_owned()));
    }
    v.get("name")
        .and_then(Json::as_str)
        .map(|n| DomainRef::Name(n.to_owned()))
}

/// How a token request authenticates.
enum Credentials {
    Password {
        user: UserRef,
        password: String,
        project: Option<ProjectRef>,
    },
    AppCredential(AppCredentialAuth),
}

/// A user named by id, or by name with their domain.
fn user_ref(user: &Json) -> Result<UserRef, String> {
    match (
        user.get("id").and_then(Json::as_str),
        user.get("name").and_then(Json::as_str),
    ) {
        (Some(id), _) => Ok(UserRef::Id(id.to_owned())),
        (None, Some(name)) => Ok(UserRef::Name {
            name: name.to_owned(),
            domain: user
                .get("domain")
                .and_then(domain_ref)
                .ok_or("a user given by name needs its domain (id or name)")?,
        }),
        (None, None) => Err("the user needs an id or a name".into()),
    }
}

/// Parses `{"auth": {"identity": {"methods": ["password"], "password": {"user":
/// ...}}, "scope": {"project": ...}}}`, or the `application_credential`
/// method (`{"id", "secret"}`, or `{"name", "user", "secret"}`; its token
/// is scoped to the credential's project, so a scope is not asked for).
fn parse_auth(body: &Json) -> Result<Credentials, String> {
    let auth = body.get("auth").ok_or("missing auth")?;
    let identity = auth.get("identity").ok_or("missing auth.identity")?;
    let methods: Vec<&str> = identity
        .get("methods")
        .and_then(Json::as_array)
        .ok_or("missing auth.identity.methods")?
        .iter()
        .filter_map(Json::as_str)
        .collect();
    if methods == ["application_credential"] {
        let c = identity
            .get("application_credential")
            .ok_or("missing auth.identity.application_credential")?;
        let secret = c
            .get("secret")
            .and_then(Json::as_str)
            .ok_or("missing application_credential.secret")?
            .to_owned();
        let credential = match (
            c.get("id").and_then(Json::as_str),
            c.get("name").and_then(Json::as_str),
        ) {
            (Some(id), _) => AppCredentialName::Id(id.to_owned()),
            (None, Some(name)) => AppCredentialName::Name {
                name: name.to_owned(),
                user: user_ref(
                    c.get("user")
                        .ok_or("an application credential given by name needs its user")?,
                )?,
            },
            (None, None) => return Err("the application credential needs an id or a name".into()),
        };
        return Ok(Credentials::AppCredential(AppCredentialAuth {
            credential,
            secret,
        }));
    }
    if methods != ["password"] {
        return Err(format!(
            "unsupported authentication methods {methods:?}: [\"password\"] or [\"application_credential\"]"
        ));
    }
    let user = identity
        .get("password")
        .and_then(|p| p.get("user"))
        .ok_or("missing auth.identity.password.user")?;
    let password = user
        .get("password")
        .and_then(Json::as_str)
        .ok_or("missing user password")?
        .to_owned();
    let user_ref = user_ref(user)?;
    let project = match auth.get("scope") {
        None => None,
        Some(scope) => match scope.get("project") {
            Some(p) => Some(
                match (
                    p.get("id").and_then(Json::as_str),
                    p.get("name").and_then(Json::as_str),
                ) {
                    (Some(id), _) => ProjectRef::Id(id.to_owned()),
                    (None, Some(name)) => ProjectRef::Name {
                        name: name.to_owned(),
                        domain: p
                            .get("domain")
                            .and_then(domain_ref)
                            .ok_or("a project given by name needs its domain (id or name)")?,
                    },
                    (None, None) => return Err("the scope's project needs an id or a name".into()),
                },
            ),
            None => return Err("only project scopes are supported".into()),
        },
    };
    Ok(Credentials::Password {
        user: user_ref,
        password,
        project,
    })
}

/// The token body Keystone returns.
pub fn token_body(app: &App, auth: &Auth, with_catalog: bool) -> Json {
    let method = if auth.app_credential.is_some() {
        "application_credential"
    } else {
        "password"
    };
    let mut token = json!({
        "methods": [method],
        "expires_at": iso_micros(auth.expires_at),
        "issued_at": iso_micros(auth.issued_at),
        "audit_ids": [auth.audit_id],
        "is_domain": false,
        "user": {
            "id": auth.user.id,
            "name": auth.user.name,
            "domain": {"id": auth.user_domain.id, "name": auth.user_domain.name},
            "password_expires_at": null,
        },
    });
    if let Some((p, d)) = &auth.project {
        token["project"] =
            json!({"id": p.id, "name": p.name, "domain": {"id": d.id, "name": d.name}});
        token["roles"] = auth
            .roles
            .iter()
            .map(|r| json!({"id": r.id, "name": r.name}))
            .collect();
        if with_catalog {
            token["catalog"] = catalog(app, Some(&p.id));
        }
    }
    if let Some(a) = &auth.app_credential {
        token["application_credential"] =
            json!({"id": a.id, "name": a.name, "restricted": a.restricted});
    }
    json!({ "token": token })
}

/// The service catalog: every service on this controller, under its
/// prefix; with a project, its Swift account on storaged too.
pub fn catalog(app: &App, project: Option<&str>) -> Json {
    let base = &app.config.public_url;
    let region = &app.config.region;
    let service = |kind: &str, name: &str, url: String| {
        let endpoints: Vec<Json> = ["public", "internal", "admin"]
            .iter()
            .map(|iface| {
                json!({"id": format!("{name}-{iface}"), "interface": iface, "region": region,
                       "region_id": region, "url": url})
            })
            .collect();
        json!({"id": name, "type": kind, "name": name, "endpoints": endpoints})
    };
    let mut services = json!([
        service("identity", "keystone", format!("{base}/identity")),
        service("compute", "nova", format!("{base}/compute/v2.1")),
        service("image", "glance", format!("{base}/image")),
        service("network", "neutron", format!("{base}/network")),
        // Cinder's current type and the one older clients look for; the
        // project is not in the URL (3.67's form, which every route takes).
        service("block-storage", "cinder", format!("{base}/volume/v3")),
        service("volumev3", "cinderv3", format!("{base}/volume/v3")),
    ]);
    if let (Some(url), Some(project), Some(list)) = (
        &app.config.object_store_url,
        project,
        services.as_array_mut(),
    ) {
        list.push(service(
            "object-store",
            "swift",
            format!("{url}/v1/AUTH_{project}"),
        ));
    }
    services
}

fn status_of(e: &IdentityError) -> StatusCode {
    match e {
        IdentityError::Unauthorized => StatusCode::UNAUTHORIZED,
        IdentityError::BadRequest(_) => StatusCode::BAD_REQUEST,
        IdentityError::Conflict(_) => StatusCode::CONFLICT,
        IdentityError::NotFound(_) => StatusCode::NOT_FOUND,
        IdentityError::Forbidden(_) => StatusCode::FORBIDDEN,
        IdentityError::Store(_) | IdentityError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn issue(app: &App, req: Request<Incoming>) -> Response<Body> {
    let nocatalog = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "nocatalog" || kv.starts_with("nocatalog="))
    });
    let body = match read_json(req, keystone_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let issued = match parse_auth(&body) {
        Ok(Credentials::Password {
            user,
            password,
            project,
        }) => app.identity.issue(&user, &password, project.as_ref()).await,
        Ok(Credentials::AppCredential(by)) => app.identity.issue_with_app_credential(&by).await,
        Err(e) => return keystone_error(StatusCode::BAD_REQUEST, &e),
    };
    match issued {
        Ok((token, auth)) => {
            let mut r = json(StatusCode::CREATED, &token_body(app, &auth, !nocatalog));
            if let Ok(v) = HeaderValue::from_str(&token) {
                r.headers_mut().insert(SUBJECT_TOKEN, v);
            }
            r
        }
        Err(e) => {
            if !matches!(e, IdentityError::Unauthorized) {
                tracing::error!("issuing a token: {e}");
            }
            keystone_error(status_of(&e), &e.to_string())
        }
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The caller's token must be valid before anything else is answered.
pub(super) async fn caller(app: &App, req: &Request<Incoming>) -> Result<Auth, Response<Body>> {
    let unauthorized = || {
        keystone_error(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        )
    };
    let Some(token) = header(req, AUTH_TOKEN) else {
        return Err(unauthorized());
    };
    match app.identity.validate(token).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(unauthorized()),
        Err(e) => Err(keystone_error(status_of(&e), &e.to_string())),
    }
}

async fn check(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let me = match caller(app, req).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(subject) = header(req, SUBJECT_TOKEN) else {
        return keystone_error(StatusCode::BAD_REQUEST, "missing X-Subject-Token");
    };
    let auth = match app.identity.validate(subject).await {
        Ok(Some(a)) => a,
        Ok(None) => return keystone_error(StatusCode::NOT_FOUND, "Could not find token."),
        Err(e) => return keystone_error(status_of(&e), &e.to_string()),
    };
    // Users may check their own tokens; checking others' is an admin's job.
    if auth.user.id != me.user.id && !me.is_admin() {
        return keystone_error(
            StatusCode::FORBIDDEN,
            "You are not authorized to perform the requested action.",
        );
    }
    let mut r = if req.method() == Method::HEAD {
        empty(StatusCode::OK)
    } else {
        let nocatalog = req.uri().query().is_some_and(|q| q.contains("nocatalog"));
        json(StatusCode::OK, &token_body(app, &auth, !nocatalog))
    };
    if let Ok(v) = HeaderValue::from_str(subject) {
        r.headers_mut().insert(SUBJECT_TOKEN, v);
    }
    r
}

/// `GET /v3/auth/{catalog,projects,domains}`: what the caller's token
/// reaches (the catalog of its project; the projects where its user holds
/// a role; no domains, since roles are held on projects only).
async fn auth_listing(app: &App, req: &Request<Incoming>, what: &str) -> Response<Body> {
    let me = match caller(app, req).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let links = json!({"self": format!("{}/identity/v3/auth/{what}", app.config.public_url),
                       "next": null, "previous": null});
    match what {
        "catalog" => match me.project_id() {
            Some(project) => json(
                StatusCode::OK,
                &json!({"catalog": catalog(app, Some(project)), "links": links}),
            ),
            None => keystone_error(
                StatusCode::FORBIDDEN,
                "A project-scoped token is required to produce a service catalog.",
            ),
        },
        "projects" => match app.identity.user_projects(&me.user.id).await {
            Ok(list) => json(
                StatusCode::OK,
                &json!({"projects": list.iter().map(|p| json!({
                    "id": p.id, "name": p.name, "domain_id": p.domain_id, "enabled": p.enabled,
                    "links": {"self": format!("{}/identity/v3/projects/{}", app.config.public_url, p.id)},
                })).collect::<Vec<_>>(), "links": links}),
            ),
            Err(e) => keystone_error(status_of(&e), &e.to_string()),
        },
        _ => json(StatusCode::OK, &json!({"domains": [], "links": links})),
    }
}

async fn revoke(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let me = match caller(app, req).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(subject) = header(req, SUBJECT_TOKEN) else {
        return keystone_error(StatusCode::BAD_REQUEST, "missing X-Subject-Token");
    };
    match app.identity.validate(subject).await {
        Ok(Some(a)) if a.user.id == me.user.id || me.is_admin() => {}
        Ok(Some(_)) => {
            return keystone_error(
                StatusCode::FORBIDDEN,
                "You are not authorized to perform the requested action.",
            )
        }
        Ok(None) => return keystone_error(StatusCode::NOT_FOUND, "Could not find token."),
        Err(e) => return keystone_error(status_of(&e), &e.to_string()),
    }
    match app.identity.revoke(subject).await {
        Ok(true) => empty(StatusCode::NO_CONTENT),
        Ok(false) => keystone_error(StatusCode::NOT_FOUND, "Could not find token."),
        Err(e) => keystone_error(status_of(&e), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_bodies() {
        let password = |body: &Json| match parse_auth(body) {
            Ok(Credentials::Password {
                user,
                password,
                project,
            }) => (user, password, project),
            Ok(Credentials::AppCredential(_)) => panic!("not a password request: {body}"),
            Err(e) => panic!("{e}: {body}"),
        };
        let osc = json!({"auth": {"identity": {"methods": ["password"], "password": {"user":
            {"name": "demo", "domain": {"name": "Default"}, "password": "secret"}}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
        let (user, pw, project) = password(&osc);
        assert!(
            matches!(user, UserRef::Name { ref name, domain: DomainRef::Name(ref d) } if name == "demo" && d == "Default")
        );
        assert_eq!(pw, "secret");
        assert!(matches!(project, Some(ProjectRef::Name { .. })));
        let by_id = json!({"auth": {"identity": {"methods": ["password"], "password": {"user":
            {"id": "u1", "password": "p"}}}, "scope": {"project": {"id": "p1"}}}});
        let (user, _, project) = password(&by_id);
        assert!(matches!(user, UserRef::Id(ref id) if id == "u1"));
        assert!(matches!(project, Some(ProjectRef::Id(ref id)) if id == "p1"));
        let app = json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": "c1", "secret": "s"}}}});
        assert!(matches!(parse_auth(&app),
            Ok(Credentials::AppCredential(AppCredentialAuth { credential: AppCredentialName::Id(ref id), ref secret }))
                if id == "c1" && secret == "s"));
        let by_name = json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"name": "ci", "secret": "s", "user": {"id": "u1"}}}}});
        assert!(matches!(parse_auth(&by_name),
            Ok(Credentials::AppCredential(AppCredentialAuth { credential: AppCredentialName::Name { ref name, user: UserRef::Id(_) }, .. }))
                if name == "ci"));
        for bad in [
            json!({}),
            json!({"auth": {"identity": {"methods": ["token"], "token": {"id": "x"}}}}),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "a", "password": "p"}}}}}),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": "a"}}}}}),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": "a", "password": "p"}}},
                   "scope": {"system": {"all": true}}}}),
            json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": "c1"}}}}),
            json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"name": "c", "secret": "s"}}}}),
        ] {
            assert!(parse_auth(&bad).is_err(), "{bad}");
        }
    }
}
