//! Who may change what: OpenStack's secure defaults (Keystone's default
//! roles, Nova's, Glance's, Neutron's and Cinder's "secure RBAC"
//! policies) in one table, checked before a request reaches its service.
//!
//! | role      | may                                                        |
//! |-----------|------------------------------------------------------------|
//! | `reader`  | read its project's resources; change nothing               |
//! | `member`  | also create, change and delete its project's resources     |
//! | `manager` | as `member` (project-level administration is not built)    |
//! | `admin`   | everything, in every project                               |
//!
//! Reads (GET, HEAD) pass here; each service still decides what a caller
//! sees (its own project's resources, what an admin alone may read). A
//! change (POST, PUT, PATCH, DELETE) needs a role that may write, except
//! what belongs to the user rather than the project (keypairs, as Nova's
//! `os-keypairs` policy has it). Admin-only operations (flavors, hosts,
//! other projects) are refused by their services as before. Identity keeps
//! its own checks (a token request is a POST anyone makes). The object
//! store applies the same rule in storaged (`swift/`: `reader` reads).

use hyper::{Method, StatusCode};

use super::http::Body;
use crate::identity::Auth;

/// Services whose changes this table governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Compute,
    Image,
    Network,
    Volume,
}

/// The roles that may change a project's resources.
const WRITERS: &[&str] = &["member", "manager", "admin"];

/// Whether `auth` may make this request of `service` (`path`: the segments
/// after the service's prefix); requests without a valid token pass, for
/// the service to answer 401 in its own words.
fn allowed(service: Service, method: &Method, path: &[&str], auth: Option<&Auth>) -> bool {
    let Some(auth) = auth else { return true };
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    // A user's own keypairs are theirs whatever their role in the project.
    let users_own = service == Service::Compute && path.contains(&"os-keypairs");
    users_own
        || auth
            .roles
            .iter()
            .any(|r| WRITERS.contains(&r.name.as_str()))
}

/// The refusal of a request the table does not allow, in its service's
/// error shape; None when it is allowed.
pub fn check(
    service: Service,
    method: &Method,
    path: &[&str],
    auth: Option<&Auth>,
) -> Option<hyper::Response<Body>> {
    if allowed(service, method, path, auth) {
        return None;
    }
    let message = "Policy doesn't allow this operation: the reader role reads only.";
    let status = StatusCode::FORBIDDEN;
    Some(match service {
        Service::Compute => super::compute::nova_error(status, message),
        Service::Image => super::image::glance_error(status, message),
        Service::Network => super::network::neutron_error(status, "PolicyNotAuthorized", message),
        Service::Volume => super::volume::cinder_error(status, "forbidden", message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Named;

    fn auth(roles: &[&str]) -> Auth {
        let named = |n: &str| Named {
            id: n.into(),
            name: n.into(),
        };
        Auth {
            user: named("u"),
            user_domain: named("default"),
            project: Some((named("p"), named("default"))),
            roles: roles.iter().map(|r| named(r)).collect(),
            issued_at: 0,
            expires_at: 0,
            audit_id: String::new(),
            app_credential: None,
        }
    }

    #[test]
    fn readers_read_members_and_above_write() {
        let reader = auth(&["reader"]);
        let post = Method::POST;
        for service in [
            Service::Compute,
            Service::Image,
            Service::Network,
            Service::Volume,
        ] {
            assert!(allowed(service, &Method::GET, &["servers"], Some(&reader)));
            assert!(
                !allowed(service, &post, &["servers"], Some(&reader)),
                "{service:?}"
            );
            assert!(!allowed(service, &Method::DELETE, &["x"], Some(&reader)));
            for writer in ["member", "manager", "admin"] {
                assert!(allowed(
                    service,
                    &post,
                    &["x"],
                    Some(&auth(&["reader", writer]))
                ));
            }
        }
        assert!(allowed(
            Service::Compute,
            &post,
            &["v2.1", "os-keypairs"],
            Some(&reader)
        ));
        assert!(!allowed(
            Service::Image,
            &post,
            &["v2", "os-keypairs"],
            Some(&reader)
        ));
        assert!(!allowed(
            Service::Compute,
            &post,
            &["servers"],
            Some(&auth(&["custom"]))
        ));
        assert!(
            allowed(Service::Compute, &post, &["servers"], None),
            "the service says 401"
        );
    }
}
