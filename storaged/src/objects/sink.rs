//! A body on its way into a new blob: received and hashed by the caller's
//! task, written by a blocking thread of its own in 1 MiB batches through
//! a queue of two, so hashing and disk writes overlap. Used by the S3 and
//! the Swift API alike.

use std::path::PathBuf;

use super::{ObjectError, ObjectStore};

/// How much of a body is gathered before it goes to the disk.
pub const BATCH: usize = 1 << 20;

pub struct BlobSink {
    pub id: String,
    pub path: PathBuf,
    size: u64,
    pending: Vec<u8>,
    batches: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    disk: tokio::task::JoinHandle<Result<u64, super::blob::BlobError>>,
}

impl BlobSink {
    pub fn start(store: &ObjectStore) -> Result<Self, ObjectError> {
        let upload = store.begin()?;
        let (batches, mut queue) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let mut writer = upload.writer;
        let disk = tokio::task::spawn_blocking(move || {
            while let Some(batch) = queue.blocking_recv() {
                writer.write(&batch)?;
            }
            writer.finish()
        });
        Ok(BlobSink {
            id: upload.id,
            path: upload.path,
            size: 0,
            pending: Vec::with_capacity(BATCH),
            batches: Some(batches),
            disk,
        })
    }

    /// Bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), ObjectError> {
        self.size += chunk.len() as u64;
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= BATCH {
            let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
            self.send(batch).await?;
        }
        Ok(())
    }

    async fn send(&mut self, batch: Vec<u8>) -> Result<(), ObjectError> {
        let sent = match &self.batches {
            Some(b) => b.send(batch).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error comes out of `finish`.
            Err(ObjectError::Io(std::io::Error::other(
                "the blob writer stopped",
            )))
        }
    }

    /// Writes what is left, syncs the blob and checks its length; on any
    /// failure the blob is removed. Its size.
    pub async fn finish(mut self, store: &ObjectStore) -> Result<u64, ObjectError> {
        let rest = std::mem::take(&mut self.pending);
        let sent = if rest.is_empty() {
            Ok(())
        } else {
            self.send(rest).await
        };
        self.batches = None;
        let written = match (&mut self.disk).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ObjectError::Blob(e)),
            Err(e) => Err(ObjectError::Io(std::io::Error::other(e.to_string()))),
        };
        match (sent, written) {
            (Ok(()), Ok(n)) if n == self.size => Ok(n),
            (Ok(()), Ok(_)) => {
                store.discard(&self.path);
                Err(ObjectError::Io(std::io::Error::other(
                    "the blob's length differs from the body's",
                )))
            }
            (_, Err(e)) | (Err(e), _) => {
                store.discard(&self.path);
                Err(e)
            }
        }
    }

    /// Drops the blob (the body failed or its checks did).
    pub async fn abandon(mut self, store: &ObjectStore) {
        self.batches = None;
        let _ = (&mut self.disk).await;
        store.discard(&self.path);
    }
}
