//! Nova's `os-interface`: a server's NICs, listed, attached and detached
//! (`openstack server add/remove port|network`). Parsing and rendering
//! only; `compute::service::interfaces` does the work.
//!
//! | method | path                                  | reply                          |
//! |--------|---------------------------------------|--------------------------------|
//! | GET    | /servers/{id}/os-interface            | 200 `interfaceAttachments`     |
//! | POST   | /servers/{id}/os-interface            | 200 `interfaceAttachment`, once plugged |
//! | GET    | /servers/{id}/os-interface/{port_id}  | 200 `interfaceAttachment`      |
//! | DELETE | /servers/{id}/os-interface/{port_id}  | 202, unplugged in the background |

use std::net::Ipv4Addr;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{compute_error, nova_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::service::interfaces;
use crate::context::RequestContext;
use crate::network::model::Port;
use crate::network::nova::{NicRequest, Requested};

pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
    rest: &[String],
) -> Option<Response<Body>> {
    Some(match (req.method().clone(), rest) {
        (Method::GET, []) => match interfaces::list(app, ctx, id).await {
            Ok(ports) => json(
                StatusCode::OK,
                &json!({"interfaceAttachments": ports.iter().map(attachment).collect::<Vec<_>>()}),
            ),
            Err(e) => compute_error(e),
        },
        (Method::POST, []) => {
            let body = match read_json(req, nova_error).await {
                Ok(b) => b,
                Err(r) => return Some(r),
            };
            let wanted = match parse_attach(&body) {
                Ok(w) => w,
                Err(m) => return Some(nova_error(StatusCode::BAD_REQUEST, &m)),
            };
            match interfaces::attach(app, ctx, id, wanted).await {
                Ok(port) => json(
                    StatusCode::OK,
                    &json!({"interfaceAttachment": attachment(&port)}),
                ),
                Err(e) => compute_error(e),
            }
        }
        (Method::GET, [port_id]) => match interfaces::show(app, ctx, id, port_id).await {
            Ok(port) => json(
                StatusCode::OK,
                &json!({"interfaceAttachment": attachment(&port)}),
            ),
            Err(e) => compute_error(e),
        },
        (Method::DELETE, [port_id]) => match interfaces::detach(app, ctx, id, port_id).await {
            Ok(()) => empty(StatusCode::ACCEPTED),
            Err(e) => compute_error(e),
        },
        _ => return None,
    })
}

/// An attach's body, as Nova takes it: `interfaceAttachment` with a
/// `port_id` or a `net_id` (and perhaps `fixed_ips`), or neither (the
/// project's network).
fn parse_attach(body: &Json) -> Result<Requested, String> {
    let Some(a) = body.get("interfaceAttachment") else {
        return Ok(Requested::Default);
    };
    let a = a
        .as_object()
        .ok_or("interfaceAttachment: an object is expected")?;
    let text = |key: &str| -> Result<Option<String>, String> {
        match a.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "Invalid input for field/attribute {key}. Value: {other}."
            )),
        }
    };
    let (port_id, network_id) = (text("port_id")?, text("net_id")?);
    let fixed_ip = match a.get("fixed_ips") {
        None | Some(Json::Null) => None,
        Some(Json::Array(ips)) if ips.len() == 1 => {
            let ip = ips[0]
                .get("ip_address")
                .and_then(Json::as_str)
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| {
                    format!("Invalid input for field/attribute fixed_ips. Value: {ips:?}.")
                })?;
            Some(ip)
        }
        Some(other) => {
            return Err(format!(
            "Invalid input for field/attribute fixed_ips. Value: {other}. One address is allowed."
        ))
        }
    };
    match (&port_id, &network_id) {
        (Some(_), Some(_)) => return Err("Must not input both network_id and port_id".into()),
        (None, None) if fixed_ip.is_some() => {
            return Err("Must input network_id when request IP address".into())
        }
        (None, None) => return Ok(Requested::Default),
        _ => {}
    }
    Ok(Requested::These(vec![NicRequest {
        network_id,
        port_id,
        fixed_ip,
        ..NicRequest::default()
    }]))
}

/// A NIC as Nova shows it.
fn attachment(p: &Port) -> Json {
    json!({
        "port_state": p.status,
        "fixed_ips": p.fixed_ips.iter().map(|ip| json!({
            "subnet_id": ip.subnet_id, "ip_address": ip.ip_address.to_string(),
        })).collect::<Vec<_>>(),
        "port_id": p.std.id,
        "net_id": p.network_id,
        "mac_addr": p.mac_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_bodies_parse_as_nova_takes_them() {
        let nic = |body: Json| match parse_attach(&body) {
            Ok(Requested::These(mut v)) => v.pop().unwrap(),
            other => panic!("{body}: {other:?}"),
        };
        let n = nic(json!({"interfaceAttachment": {"port_id": "p1"}}));
        assert_eq!((n.port_id.as_deref(), n.network_id), (Some("p1"), None));
        let n = nic(
            json!({"interfaceAttachment": {"net_id": "n1", "fixed_ips": [{"ip_address": "10.0.0.9"}]}}),
        );
        assert_eq!(n.network_id.as_deref(), Some("n1"));
        assert_eq!(n.fixed_ip, Some(Ipv4Addr::new(10, 0, 0, 9)));
        for body in [json!({}), json!({"interfaceAttachment": {}})] {
            assert_eq!(parse_attach(&body), Ok(Requested::Default), "{body}");
        }
        for bad in [
            json!({"interfaceAttachment": {"port_id": "p", "net_id": "n"}}),
            json!({"interfaceAttachment": {"fixed_ips": [{"ip_address": "10.0.0.9"}]}}),
            json!({"interfaceAttachment": {"net_id": "n", "fixed_ips": [{"ip_address": "x"}]}}),
            json!({"interfaceAttachment": {"net_id": "n", "fixed_ips": [{}, {}]}}),
            json!({"interfaceAttachment": {"port_id": 7}}),
            json!({"interfaceAttachment": "p1"}),
        ] {
            assert!(parse_attach(&bad).is_err(), "{bad}");
        }
    }
}
