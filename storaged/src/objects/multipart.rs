//! Multipart uploads: an upload is a record naming its bucket, key and
//! headers; each part is a blob committed as objects are (written, synced,
//! renamed, recorded); completion writes one new blob of the parts' bytes
//! in the order asked (each part's blocks checked as they are read) and
//! commits it as the object in the same transaction that removes the
//! upload, so a crash leaves either the upload or the object. The object's
//! ETag is S3's: the MD5 of the parts' MD5s, then `-` and their count.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use sqlx::Row;

use super::blob::{Blob, BlobWriter};
use super::{new_id, now_ms, ObjectError, ObjectInfo, ObjectStore, FORMAT};

/// The smallest part but the last, and the most parts (S3's limits).
pub const MIN_PART: u64 = 5 << 20;
pub const MAX_PARTS: i64 = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadInfo {
    pub id: String,
    pub bucket: String,
    pub key: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub number: i64,
    pub blob: String,
    pub size: u64,
    /// The part's MD5, hex.
    pub etag: String,
    pub modified_ms: i64,
}

fn upload_from(row: &sqlx::sqlite::SqliteRow) -> UploadInfo {
    let key: Vec<u8> = row.get("key");
    UploadInfo {
        id: row.get("id"),
        bucket: row.get("bucket"),
        key: String::from_utf8_lossy(&key).into_owned(),
        content_type: row.get("content_type"),
        content_encoding: row.get("content_encoding"),
        metadata: serde_json::from_str(row.get::<&str, _>("metadata")).unwrap_or_default(),
        created_ms: row.get("created_ms"),
    }
}

impl ObjectStore {
    /// Starts an upload of `info.key` into `bucket`; its id.
    pub async fn create_upload(&self, mut info: UploadInfo) -> Result<String, ObjectError> {
        info.id = new_id();
        let metadata = serde_json::to_string(&info.metadata).unwrap_or_else(|_| "{}".into());
        let made = sqlx::query(
            "INSERT INTO uploads (id, bucket, key, content_type, content_encoding, metadata, created_ms, format) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM buckets WHERE name = ?)",
        )
        .bind(&info.id)
        .bind(&info.bucket)
        .bind(info.key.as_bytes())
        .bind(&info.content_type)
        .bind(&info.content_encoding)
        .bind(metadata)
        .bind(now_ms())
        .bind(FORMAT)
        .bind(&info.bucket)
        .execute(&self.db)
        .await?
        .rows_affected();
        if made == 0 {
            return Err(ObjectError::NoSuchBucket);
        }
        Ok(info.id)
    }

    /// Upload `id` of `bucket`/`key`.
    pub async fn upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
    ) -> Result<UploadInfo, ObjectError> {
        sqlx::query(
            "SELECT id, bucket, key, content_type, content_encoding, metadata, created_ms \
             FROM uploads WHERE id = ? AND bucket = ? AND key = ?",
        )
        .bind(id)
        .bind(bucket)
        .bind(key.as_bytes())
        .fetch_optional(&self.db)
        .await?
        .as_ref()
        .map(upload_from)
        .ok_or(ObjectError::NoSuchUpload)
    }

    /// The uploads in progress in `bucket`, by key then start.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, ObjectError> {
        let rows = sqlx::query(
            "SELECT id, bucket, key, content_type, content_encoding, metadata, created_ms \
             FROM uploads WHERE bucket = ? ORDER BY key, created_ms, id",
        )
        .bind(bucket)
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .iter()
            .map(upload_from)
            .filter(|u| u.key.starts_with(prefix))
            .collect())
    }

    /// Makes the written blob `blob` part `number` of upload `id`
    /// (replacing one sent before under that number).
    pub async fn commit_part(
        &self,
        id: &str,
        number: i64,
        blob: &str,
        size: u64,
        etag: &str,
    ) -> Result<(), ObjectError> {
        let dest = self.place_blob(blob)?;
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        if sqlx::query("SELECT 1 FROM uploads WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            drop(tx);
            let _ = std::fs::remove_file(&dest);
            return Err(ObjectError::NoSuchUpload);
        }
        let old: Option<String> =
            sqlx::query("SELECT blob FROM parts WHERE upload_id = ? AND number = ?")
                .bind(id)
                .bind(number)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get("blob"));
        sqlx::query(
            "INSERT INTO parts (upload_id, number, blob, size, etag, modified_ms, format) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id, number) DO UPDATE SET \
             blob = excluded.blob, size = excluded.size, etag = excluded.etag, \
             modified_ms = excluded.modified_ms, format = excluded.format",
        )
        .bind(id)
        .bind(number)
        .bind(blob)
        .bind(size as i64)
        .bind(etag)
        .bind(now_ms())
        .bind(FORMAT)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(old) = old {
            let _ = std::fs::remove_file(self.blob_path(&old));
        }
        Ok(())
    }

    /// Upload `id`'s parts, by number.
    pub async fn parts(&self, id: &str) -> Result<Vec<PartInfo>, ObjectError> {
        Ok(sqlx::query(
            "SELECT number, blob, size, etag, modified_ms FROM parts WHERE upload_id = ? ORDER BY number",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(|r| PartInfo {
            number: r.get("number"),
            blob: r.get("blob"),
            size: r.get::<i64, _>("size") as u64,
            etag: r.get("etag"),
            modified_ms: r.get("modified_ms"),
        })
        .collect())
    }

    /// Joins the parts `chosen` (number and ETag, ascending) of `upload`
    /// into its object; the object's info.
    pub async fn complete(
        &self,
        upload: &UploadInfo,
        chosen: &[(i64, String)],
    ) -> Result<ObjectInfo, ObjectError> {
        if chosen.is_empty() {
            return Err(ObjectError::InvalidPart("no parts were named".into()));
        }
        if chosen.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(ObjectError::InvalidPartOrder);
        }
        let have: BTreeMap<i64, PartInfo> = self
            .parts(&upload.id)
            .await?
            .into_iter()
            .map(|p| (p.number, p))
            .collect();
        let mut parts = Vec::with_capacity(chosen.len());
        for (i, (number, etag)) in chosen.iter().enumerate() {
            let part = have
                .get(number)
                .filter(|p| p.etag == etag.trim_matches('"'))
                .ok_or_else(|| ObjectError::InvalidPart(format!("part {number} (ETag {etag})")))?;
            if i + 1 < chosen.len() && part.size < MIN_PART {
                return Err(ObjectError::EntityTooSmall(*number));
            }
            parts.push(part.clone());
        }
        let mut md5s = Md5::new();
        for p in &parts {
            let raw = (0..p.etag.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(p.etag.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| {
                    ObjectError::InvalidPart(format!("part {} has a bad ETag", p.number))
                })?;
            md5s.update(&raw);
        }
        let etag = format!(
            "{}-{}",
            md5s.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            parts.len()
        );
        let up = self.begin()?;
        let (blob_id, tmp) = (up.id.clone(), up.path.clone());
        let paths: Vec<_> = parts
            .iter()
            .map(|p| (self.blob_path(&p.blob), p.size))
            .collect();
        let mut writer = up.writer;
        let joined = tokio::task::spawn_blocking(move || -> Result<u64, ObjectError> {
            for (path, size) in paths {
                let blob = Blob::open(&path, size)?;
                let mut failed = None;
                blob.read_range(0, size, |data| match writer.write(&data) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                })?;
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
            Ok(BlobWriter::finish(writer)?)
        })
        .await
        .map_err(|e| ObjectError::Io(std::io::Error::other(e.to_string())))?;
        let size = match joined {
            Ok(s) => s,
            Err(e) => {
                self.discard(&tmp);
                return Err(e);
            }
        };
        let info = ObjectInfo {
            key: upload.key.clone(),
            size,
            etag,
            content_type: upload.content_type.clone(),
            content_encoding: upload.content_encoding.clone(),
            metadata: upload.metadata.clone(),
            ..Default::default()
        };
        self.commit_finishing(&upload.bucket, &blob_id, info.clone(), Some(&upload.id))
            .await?;
        Ok(info)
    }

    /// Drops upload `id` and its parts; false when there was none.
    pub async fn abort(&self, id: &str) -> Result<bool, ObjectError> {
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        let blobs: Vec<String> = sqlx::query("SELECT blob FROM parts WHERE upload_id = ?")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get("blob"))
            .collect();
        sqlx::query("DELETE FROM parts WHERE upload_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        for blob in blobs {
            let _ = std::fs::remove_file(self.blob_path(&blob));
        }
        Ok(gone > 0)
    }
}
