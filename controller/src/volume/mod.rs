//! Block storage (the Cinder v3 subset): volumes on the storage hosts'
//! storaged. The controller keeps the intended state; storaged holds the
//! data, and the volume bytes never pass through here.
//!
//! - [`model`]: a volume and how the API shows it
//! - [`store`]: the SQL (volumes, storage hosts), with the conditional
//!   writes that keep status changes and quotas right under concurrency
//! - [`service`]: who may do what, Cinder's rules, placement
//! - [`reconcile`]: finishing what a status promises (creating, extending,
//!   deleting), right after the request and again after any crash
//! - [`attachments`]: attachments made through Cinder's API, for attachers
//!   other than our compute service

pub mod attachments;
pub mod model;
pub mod reconcile;
pub mod service;
pub mod store;

use crate::store::StoreError;

/// Why a volume request failed: Cinder's status, fault name and message.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{message}")]
    Cinder {
        status: u16,
        /// The fault's key in the body: `badRequest`, `itemNotFound`, ...
        fault: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VolumeError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        VolumeError::Cinder {
            status: 400,
            fault: "badRequest",
            message: message.into(),
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        VolumeError::Cinder {
            status: 404,
            fault: "itemNotFound",
            message: format!("{what} {id} could not be found."),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        VolumeError::Cinder {
            status: 403,
            fault: "forbidden",
            message: message.into(),
        }
    }

    pub fn over_quota(message: impl Into<String>) -> Self {
        VolumeError::Cinder {
            status: 413,
            fault: "overLimit",
            message: message.into(),
        }
    }
}
