//! What storaged and the controller say to each other.
//!
//! storaged registers and refreshes itself with a [`Heartbeat`] (`PUT
//! /internal/v1/storage-hosts/{host_id}` on the controller, with its host
//! token); the controller drives its volumes through storaged's API (`/v1`,
//! the same token as a bearer token):
//!
//! - `PUT /v1/volumes/{id}` with [`CreateVolume`]: makes the volume (201),
//!   or finds it made with that size (200); another size is a conflict (409).
//!   One from an image is filled in the background: [`Pending`] (202) until
//!   it is made; a failed fill is told once (409), and the next call starts
//!   over;
//! - `GET /v1/volumes/{id}`: its [`VolumeInfo`] (404 when there is none);
//! - `POST /v1/volumes/{id}/extend` with [`ExtendVolume`]: grows it (200;
//!   409 when asked to shrink);
//! - `POST /v1/volumes/{id}/export` with [`Export`]: how a host reaches the
//!   volume's data ([`Connection`]); a host other than storaged's own is
//!   refused (409) until a remote transport exists;
//! - `DELETE /v1/volumes/{id}`: removes it (204, also when it was gone);
//! - `GET /v1/volumes`: every volume's [`VolumeInfo`];
//! - `PUT /v1/snapshots/{id}` with [`CreateSnapshot`]: freezes the volume's
//!   data as it is now (201), or finds that snapshot taken (200);
//! - `POST /v1/snapshots/{id}/settle`: the VMM that had its volume open
//!   (`in_use`) has moved onto the volume's new files (204, also when
//!   said before): what the snapshot froze is written no more;
//! - `GET /v1/snapshots/{id}`: its [`SnapshotInfo`];
//! - `DELETE /v1/snapshots/{id}`: removes it (204, also when gone). Volumes
//!   made from it keep reading its data: storaged keeps what they need.
//!
//! Glance images' data lives on storage hosts too:
//!
//! - `PUT /v1/images/{id}?disk_format=F` with the image's bytes (or, with
//!   content type `application/x-virga-sparse`, a sparse stream): stored
//!   durably, a qcow2 checked and converted to raw; answers [`StoredImage`]
//!   (201), 400 for data that is not what it claims, 413 for too much
//!   (`max_bytes` in the query);
//! - `GET /v1/images/{id}/file`: the bytes as uploaded;
//! - `GET /v1/images/{id}/raw`: the raw disk a VMM boots, as a sparse stream;
//!   also without the bearer token, with a ticket the controller issued
//!   ([`image_ticket_subject`]), which is how hosts and other storage hosts
//!   fetch it: the controller redirects them here;
//! - `DELETE /v1/images/{id}`: removes it (204, also when gone).
//!
//! A volume can be made from a snapshot or from another volume of the same
//! storage host ([`CreateVolume::source`]), in constant time whatever its
//! size.
//!
//! Every call is idempotent, so the controller's reconciler can repeat any
//! of them after a crash on either side.

use serde::{Deserialize, Serialize};

pub mod nbd;

/// What storing an image's data found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// Bytes as uploaded.
    pub size: u64,
    pub md5: String,
    pub sha512: String,
    /// The disk's size (a qcow2's virtual size; a raw image's own).
    pub virtual_size: u64,
}

/// What a ticket for image `id`'s raw data is signed over. A ticketed fetch
/// carries `?expires=UNIX_SECONDS&ticket=HEX`, the ticket being
/// `hostd_proto::token::ticket` of this under the storage host's token.
pub fn image_ticket_subject(id: &str) -> String {
    format!("GET /v1/images/{id}/raw")
}

/// A storage host's registration and refresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host_id: String,
    /// Where the controller reaches its API (`http://HOST:PORT`).
    pub url: String,
    /// Where other hosts reach it for image data, when not at `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
    pub availability_zone: String,
    /// The volumes' filesystem: its size and what is free on it.
    pub total_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub size_gib: u64,
    /// What the new volume starts as; blank when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
}

/// The data a new volume starts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSource {
    /// A snapshot's.
    Snapshot(String),
    /// Another volume's, as it is now.
    Volume(String),
    /// An image's (its raw bytes, fetched from the controller).
    Image(String),
}

/// A create still under way (202).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    /// What it is waiting for, for logs.
    pub pending: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub volume_id: String,
    /// A VMM on the storage host has the volume open and goes on writing
    /// what the snapshot freezes until the controller moves it onto the
    /// volume's new files and says so (`POST /v1/snapshots/{id}/settle`).
    #[serde(default)]
    pub in_use: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub volume_id: String,
    /// The volume's size when it was taken.
    pub size_gib: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendVolume {
    pub size_gib: u64,
}

/// For which host a volume is to be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub host_id: String,
}

/// How that host reaches it: on storaged's own host, its files; from
/// another host, an NBD export (`path` then empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The volume's own file: raw, or a qcow2 overlay when `backing` is
    /// not empty. The only one written.
    pub path: String,
    /// What a qcow2 overlay reads through to, read-only: qcow2 layers, the
    /// one right under it first, then a raw base (the snapshots it was
    /// made over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backing: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdExport>,
}

/// A volume served over NBD to one other host: the guest's view of it
/// (raw, whatever its format on the storage host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdExport {
    /// `HOST:PORT` of storaged's NBD listener.
    pub address: String,
    /// The export's name: a secret only the controller and that host know.
    pub export: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: String,
    pub size_gib: u64,
    /// What the volume takes on disk (thin: only what was written).
    pub allocated_bytes: u64,
}

/// The largest volume storaged makes (Cinder's own limit is the quota).
pub const MAX_SIZE_GIB: u64 = 64 * 1024;

/// Whether `id` can name a volume: a UUID in its usual text form (the
/// controller makes them; storaged names files after them).
pub fn is_volume_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Who a Keystone token speaks for, as the controller tells a storage host
/// (`GET /internal/v1/token-owner`, the token in `X-Subject-Token`): the
/// Swift API's check of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOwner {
    pub project_id: String,
    pub user_id: String,
    /// Role names in the project (`reader` alone: read only).
    pub roles: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The credential behind an S3 access key, as the controller gives it to
/// a storage host (`GET /internal/v1/ec2-credentials/{access}`): the secret
/// verifies a request's signature; the project owns what it touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2Signer {
    pub access: String,
    pub secret: String,
    pub user_id: String,
    pub project_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_uuids_name_volumes() {
        assert!(is_volume_id("5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c"));
        for bad in [
            "",
            "../../etc/passwd",
            "5D3F9A7E-6C1B-4E0A-9F2D-8B7C6A5E4D3C",
            "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3",
            "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c0",
            "5d3f9a7e/6c1b-4e0a-9f2d-8b7c6a5e4d3c",
            "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3g",
        ] {
            assert!(!is_volume_id(bad), "{bad:?}");
        }
    }
}
