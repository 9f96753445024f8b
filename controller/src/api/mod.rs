//! The controller's HTTP front door: one listener, one path prefix per service
//! (`/identity`, `/compute/v2.1`, `/image`, `/network`, `/volume`; `/serial-console` for console
//! websockets), each response tagged with an `X-OpenStack-Request-ID`.

pub mod aggregates;
pub mod cinder_attachments;
pub mod compute;
pub mod compute_discovery;
pub mod compute_misc;
pub mod flavor_access;
pub mod flavor_extra_specs;
pub mod http;
pub mod hypervisors;
pub mod identity;
pub mod identity_admin;
pub mod identity_app_credentials;
pub mod identity_ec2;
pub mod image;
pub mod interfaces;
pub mod internal;
pub mod network;
pub mod nova_images;
pub mod nova_network;
pub mod nova_volumes;
pub mod os_hosts;
pub mod os_migrations;
pub mod policy;
pub mod serial_console;
pub mod server_groups;
pub mod server_metadata;
pub mod server_tags;
pub mod servers;
pub mod simple_tenant_usage;
pub mod usage_audit_log;
pub mod volume;
pub mod volume_attachments;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

pub use crate::app::App;
use http::Body;

/// The request's `X-OpenStack-Request-ID`, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl App {
    /// Who the request's X-Auth-Token speaks for, if anyone.
    pub async fn caller(&self, req: &Request<Incoming>) -> Option<crate::identity::Auth> {
        let token = req.headers().get("x-auth-token")?.to_str().ok()?;
        match self.identity.validate(token).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("validating a token: {e}");
                None
            }
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let request_id = http::new_request_id();
        // Handlers that record what a request did (instance actions) name it.
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if let Some(refused) = self.refused_by_policy(&req, &segments).await {
            return Ok(self.finish(refused, &request_id, &method, &path));
        }
        let response = match segments.split_first() {
            Some((&"identity", rest)) => identity::route(&self, req, rest).await,
            Some((&"compute", rest)) => compute::route(&self, req, rest).await,
            Some((&"network", rest)) => network::route(&self, req, rest).await,
            Some((&"volume", rest)) => volume::route(&self, req, rest).await,
            Some((&"internal", rest)) => internal::route(&self, req, rest).await,
            Some((&"serial-console", [])) => serial_console::route(&self, req).await,
            Some((&"image", rest)) => {
                let auth = self.caller(&req).await;
                image::route(&self, req, rest, auth).await
            }
            _ => http::keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
        };
        Ok(self.finish(response, &request_id, &method, &path))
    }

    /// The policy table's refusal of a change the caller's roles do not
    /// allow (`policy.rs`); reads are not looked at here.
    async fn refused_by_policy(
        &self,
        req: &Request<Incoming>,
        segments: &[&str],
    ) -> Option<Response<Body>> {
        use policy::Service;
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let (service, rest) = match segments.split_first()? {
            (&"compute", rest) => (Service::Compute, rest),
            (&"image", rest) => (Service::Image, rest),
            (&"network", rest) => (Service::Network, rest),
            (&"volume", rest) => (Service::Volume, rest),
            _ => return None,
        };
        let auth = self.caller(req).await;
        policy::check(service, req.method(), rest, auth.as_ref())
    }

    fn finish(
        &self,
        mut response: Response<Body>,
        request_id: &str,
        method: &Method,
        path: &str,
    ) -> Response<Body> {
        if let Ok(v) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert(http::REQUEST_ID, v);
        }
        tracing::debug!(%method, path, status = response.status().as_u16(), request_id, "request");
        response
    }
}

/// Serves one accepted connection.
pub fn serve_connection<IO>(app: Arc<App>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| app.clone().handle(req));
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            // Serial consoles are websockets.
            .with_upgrades()
            .await
        {
            tracing::debug!("connection: {e}");
        }
    });
}
