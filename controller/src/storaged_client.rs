//! The controller's client for a storage host's storaged: the typed calls
//! of `storaged_proto` (volumes, snapshots, image data), over the same HTTP
//! plumbing as hostd's client.

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::Method;
use storaged_proto::{
    Connection, CreateSnapshot, CreateVolume, Export, ExtendVolume, Pending, SnapshotInfo,
    StoredImage, VolumeInfo, VolumeSource,
};

/// What a create answered.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum Created {
    Done(VolumeInfo),
    /// Still being made (filled from an image): ask again later.
    Pending(Pending),
}

use crate::hostd_client::{call_raw, read_body, send_body, HostdError, TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// storaged could not be reached or did not answer in time: try again.
    #[error("storaged at {0}: {1}")]
    Unreachable(String, String),
    /// storaged answered no: the request cannot succeed as it is.
    #[error("storaged refused ({0}): {1}")]
    Refused(u16, String),
    #[error("storaged's answer: {0}")]
    BadAnswer(String),
}

impl From<HostdError> for StorageError {
    fn from(e: HostdError) -> Self {
        match e {
            HostdError::Unreachable { url, message } => StorageError::Unreachable(url, message),
            HostdError::Refused { status, message } => StorageError::Refused(status, message),
            HostdError::BadAnswer(m) => StorageError::BadAnswer(m),
        }
    }
}

/// One storage host's storaged.
pub struct Storaged {
    url: String,
    token: String,
}

impl Storaged {
    pub fn new(url: &str, token: String) -> Self {
        Storaged {
            url: url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Streams image `id`'s data (a sparse stream when `sparse`) to the
    /// storage host, which stores it durably (a qcow2 also converted);
    /// no deadline: an upload takes as long as its client.
    pub async fn put_image<B>(
        &self,
        id: &str,
        disk_format: &str,
        max_bytes: u64,
        sparse: bool,
        body: B,
    ) -> Result<StoredImage, StorageError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = format!("/v1/images/{id}?disk_format={disk_format}&max_bytes={max_bytes}");
        let content_type = match sparse {
            true => hostd_proto::sparse::CONTENT_TYPE,
            false => "application/octet-stream",
        };
        let resp = send_body(
            &self.url,
            &self.token,
            Method::PUT,
            &path,
            content_type,
            body,
        )
        .await?;
        let bytes = read_body(&self.url, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::BadAnswer(e.to_string()))
    }

    /// Image `id`'s data as uploaded: the answer, its body still to read.
    pub async fn image_file(&self, id: &str) -> Result<hyper::Response<Incoming>, StorageError> {
        let path = format!("/v1/images/{id}/file");
        let sent = send_body(
            &self.url,
            &self.token,
            Method::GET,
            &path,
            "application/json",
            Empty::<Bytes>::new(),
        );
        Ok(tokio::time::timeout(TIMEOUT, sent).await.map_err(|_| {
            StorageError::Unreachable(self.url.clone(), format!("no answer within {TIMEOUT:?}"))
        })??)
    }

    /// Removes image `id`'s data (also when it was gone).
    pub async fn delete_image(&self, id: &str) -> Result<(), StorageError> {
        self.call(Method::DELETE, &format!("/v1/images/{id}"), None)
            .await
            .map(|_| ())
    }

    /// Where a host fetches image `id`'s raw disk for the next `for_secs`
    /// seconds without this storaged's token: a URL under `peer_url` (this
    /// storaged as other hosts reach it) carrying a ticket.
    pub fn image_ticket_url(&self, peer_url: &str, id: &str, now: u64, for_secs: u64) -> String {
        let expires = now + for_secs;
        let subject = storaged_proto::image_ticket_subject(id);
        let ticket = hostd_proto::token::ticket(&self.token, &subject, expires);
        let base = peer_url.trim_end_matches('/');
        format!("{base}/v1/images/{id}/raw?expires={expires}&ticket={ticket}")
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>, StorageError> {
        Ok(call_raw(&self.url, &self.token, method, path, body.as_ref(), TIMEOUT).await?)
    }

    fn info(bytes: &[u8]) -> Result<VolumeInfo, StorageError> {
        serde_json::from_slice(bytes).map_err(|e| StorageError::BadAnswer(e.to_string()))
    }

    /// Makes the volume, blank or from `source` (or finds it made with
    /// that size).
    pub async fn create(
        &self,
        id: &str,
        size_gib: u64,
        source: Option<VolumeSource>,
    ) -> Result<Created, StorageError> {
        let body = serde_json::to_value(CreateVolume { size_gib, source })
            .map_err(|e| StorageError::BadAnswer(e.to_string()))?;
        let bytes = self
            .call(Method::PUT, &format!("/v1/volumes/{id}"), Some(body))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::BadAnswer(e.to_string()))
    }

    pub async fn extend(&self, id: &str, size_gib: u64) -> Result<VolumeInfo, StorageError> {
        let body = serde_json::to_value(ExtendVolume { size_gib })
            .map_err(|e| StorageError::BadAnswer(e.to_string()))?;
        Self::info(
            &self
                .call(
                    Method::POST,
                    &format!("/v1/volumes/{id}/extend"),
                    Some(body),
                )
                .await?,
        )
    }

    /// How host `host_id` reaches the volume's data.
    pub async fn export(&self, id: &str, host_id: &str) -> Result<Connection, StorageError> {
        let body = serde_json::to_value(Export {
            host_id: host_id.to_owned(),
        })
        .map_err(|e| StorageError::BadAnswer(e.to_string()))?;
        let bytes = self
            .call(
                Method::POST,
                &format!("/v1/volumes/{id}/export"),
                Some(body),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::BadAnswer(e.to_string()))
    }

    /// Ends the volume's NBD export to `host_id` (gone already is fine).
    pub async fn unexport(&self, id: &str, host_id: &str) -> Result<(), StorageError> {
        self.call(
            Method::DELETE,
            &format!("/v1/volumes/{id}/exports/{host_id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Removes the volume (gone already is fine).
    pub async fn delete(&self, id: &str) -> Result<(), StorageError> {
        self.call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
            .await
            .map(|_| ())
    }

    /// Takes the snapshot (or finds it taken). `in_use`: a VMM on the
    /// storage host has the volume open, and is moved onto its new files
    /// before [`Storaged::settle`].
    pub async fn snapshot(
        &self,
        id: &str,
        volume_id: &str,
        in_use: bool,
    ) -> Result<SnapshotInfo, StorageError> {
        let body = serde_json::to_value(CreateSnapshot {
            volume_id: volume_id.to_owned(),
            in_use,
        })
        .map_err(|e| StorageError::BadAnswer(e.to_string()))?;
        let bytes = self
            .call(Method::PUT, &format!("/v1/snapshots/{id}"), Some(body))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::BadAnswer(e.to_string()))
    }

    /// Says the VMM that had the snapshot's volume open has moved onto the
    /// volume's new files (said before is fine).
    pub async fn settle(&self, id: &str) -> Result<(), StorageError> {
        self.call(Method::POST, &format!("/v1/snapshots/{id}/settle"), None)
            .await
            .map(|_| ())
    }

    /// Removes the snapshot (gone already is fine).
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), StorageError> {
        self.call(Method::DELETE, &format!("/v1/snapshots/{id}"), None)
            .await
            .map(|_| ())
    }
}
