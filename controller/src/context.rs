//! Who asks, and under which request id: built once per request by the HTTP
//! layer's one authentication path, and handed to the services, which
//! authorize with it and record it (instance actions name the request).

use crate::identity::Auth;

#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The request's `X-OpenStack-Request-ID`.
    pub request_id: String,
    pub auth: Auth,
}

impl RequestContext {
    pub fn is_admin(&self) -> bool {
        self.auth.is_admin()
    }

    /// The project the caller's token is scoped to ("" when unscoped).
    pub fn project_id(&self) -> &str {
        self.auth.project_id().unwrap_or_default()
    }

    pub fn user_id(&self) -> &str {
        &self.auth.user.id
    }
}
