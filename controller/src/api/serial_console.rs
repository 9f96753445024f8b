//! `GET /serial-console/?token=...`: the websocket a serial console URL names
//! (see [`crate::compute::service::console`]). The token is taken before the
//! upgrade, so a used, expired or made-up one is refused with a plain HTTP
//! error; the session then runs on its own task. A client that offers the
//! `binary` subprotocol (as Nova's serial proxy clients do) gets it.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use super::http::{keystone_error, query_params, Body};
use super::App;
use crate::compute::service::console;
use crate::compute::service::ComputeError;

pub async fn route(app: &std::sync::Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    if !hyper_tungstenite::is_upgrade_request(&req) {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "A serial console is a websocket: connect with a websocket client.",
        );
    }
    let Some(token) = query_params(&req).remove("token") else {
        return keystone_error(StatusCode::UNAUTHORIZED, "The console token is missing.");
    };
    let server = match console::open(app, &token).await {
        Ok(server) => server,
        Err(ComputeError::NotFound(m)) => return keystone_error(StatusCode::UNAUTHORIZED, &m),
        Err(e) => return keystone_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let binary = req
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "binary");
    let (response, websocket) = match hyper_tungstenite::upgrade(&mut req, None) {
        Ok(upgrade) => upgrade,
        Err(e) => return keystone_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    tokio::spawn(console::session(app.clone(), server, websocket));
    let mut response = response.map(|b| b.map_err(|never| match never {}).boxed());
    if binary {
        response.headers_mut().insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("binary"),
        );
    }
    response
}
