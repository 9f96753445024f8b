//! Networks (the Neutron v2.0 subset): networks, subnets, ports, security
//! groups and their rules, routers and floating IPs, tags and quotas. The controller keeps the intended
//! state; each host's netd converges its kernel to it.
//!
//! - [`model`]: the resources and how the API shows them
//! - [`ipam`]: subnets' addressing and the next free address (pure)
//! - [`query`]: list filters, sorting, paging and fields (pure)
//! - [`store`]: the SQL, with the constraints concurrent requests need
//! - [`service`]: who may do what, the attributes' rules, allocation
//! - [`nova`]: what the compute service asks: NICs checked, ports made and
//!   bound for servers and released with them, addresses, network_data
//! - [`l3`]: routers (interfaces, external gateways) and floating IPs
//! - [`agent`]: what each host's netd asks: its ports' status by its
//!   report, and the networks it must carry

pub mod agent;
pub mod ipam;
pub mod l3;
pub mod model;
pub mod nova;
pub mod query;
pub mod service;
pub mod store;

use crate::store::StoreError;

/// Why a network request failed: Neutron's status, error type and message.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{message}")]
    Neutron {
        status: u16,
        kind: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NetworkError {
    pub fn new(status: u16, kind: &str, message: String) -> Self {
        NetworkError::Neutron {
            status,
            kind: kind.to_owned(),
            message,
        }
    }

    pub fn bad_request(message: String) -> Self {
        Self::new(400, "HTTPBadRequest", message)
    }

    /// Neutron's policy refusal; `action` says what was refused.
    pub fn forbidden(action: &str) -> Self {
        Self::new(
            403,
            "PolicyNotAuthorized",
            format!("rule:{action} is disallowed by policy"),
        )
    }

    /// `NetworkNotFound`: "Network X could not be found." (and so on).
    pub fn not_found(resource: &str, id: &str) -> Self {
        Self::new(
            404,
            &format!("{resource}NotFound"),
            format!("{resource} {id} could not be found."),
        )
    }

    pub fn sg_not_found(id: &str) -> Self {
        Self::new(
            404,
            "SecurityGroupNotFound",
            format!("Security group {id} does not exist"),
        )
    }

    pub fn ipam(e: ipam::IpamError) -> Self {
        Self::new(400, "InvalidInput", e.to_string())
    }
}
