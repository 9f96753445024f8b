//! The object store: buckets and objects of storaged's S3 API, on this
//! host's disk, durable before they are acknowledged.
//!
//! - [`blob`]: an object's bytes, with a checksum per 64 KiB block
//! - [`multipart`]: uploads in parts, each part a blob, joined at the end
//! - [`sink`]: a request body streamed into a new blob
//!
//! Layout under `<data_dir>/objects/`:
//!
//! ```text
//! meta.db             SQLite (WAL, synchronous=FULL): buckets, objects
//! blobs/<xx>/<id>     one blob per stored version of an object
//! tmp/<id>            blobs being written
//! ```
//!
//! Commit protocol of a PUT: the blob is written under `tmp/` and synced;
//! renamed into `blobs/` and its directory synced; then one SQLite
//! transaction points the key at it (durable at commit). Only then is the
//! PUT acknowledged, and the blob the key pointed at before is removed. A
//! crash anywhere leaves the old object or the new one, never a torn one:
//! what it leaves over (temporary files, blobs no row points at) is removed
//! at the next start. A DELETE commits the row's removal, then unlinks.

pub mod blob;
pub mod multipart;
pub mod sink;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use self::blob::{Blob, BlobError, BlobWriter};

/// The format of the rows written now (every row carries one).
pub const FORMAT: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("the key does not exist")]
    NoSuchKey,
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    #[error("the upload does not exist")]
    NoSuchUpload,
    /// A completion's part list names a part that is not there (or not
    /// with that ETag).
    #[error("{0}")]
    InvalidPart(String),
    #[error("the parts are not in ascending order")]
    InvalidPartOrder,
    /// A part other than the last is below 5 MiB.
    #[error("part {0} is smaller than 5 MiB")]
    EntityTooSmall(i64),
    /// Metadata beyond the limits.
    #[error("{0}")]
    BadMetadata(String),
    /// Taken: by the caller's project (`mine`) or another's.
    #[error("the bucket exists")]
    BucketExists { mine: bool },
    #[error("{0}")]
    Blob(#[from] BlobError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("metadata: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub project_id: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Anyone may list it and read its objects (canned ACL `public-read`).
    pub public_read: bool,
    /// Swift container metadata (`X-Container-Meta-*`), by lowercase name.
    pub metadata: BTreeMap<String, String>,
    /// Swift's `X-Container-Read` and `X-Container-Write`, as set.
    pub read_acl: Option<String>,
    pub write_acl: Option<String>,
}

/// A change to a bucket's Swift settings: fields left `None` stay.
#[derive(Debug, Default)]
pub struct ContainerUpdate {
    pub set_metadata: BTreeMap<String, String>,
    pub remove_metadata: Vec<String>,
    /// `Some(None)` removes the ACL.
    pub read_acl: Option<Option<String>>,
    pub write_acl: Option<Option<String>>,
    /// What the read ACL means for S3's canned `public-read`.
    pub public_read: Option<bool>,
}

/// The most metadata items a container or object keeps, and their total
/// size (names and values), as Swift's defaults.
pub const MAX_META_ITEMS: usize = 90;
pub const MAX_META_BYTES: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The MD5 of the data, hex (S3's ETag of a single-part object).
    pub etag: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: BTreeMap<String, String>,
    /// The checksums the client sent and we verified, by algorithm
    /// (`crc32`, `crc32c`, `sha1`, `sha256`, `crc64nvme`), base64.
    pub checksums: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub modified_ms: i64,
    pub blob: String,
    /// A Swift dynamic large object's `container/prefix`: the object reads
    /// as its segments' data, in name order.
    pub manifest: Option<String>,
    /// A Swift static large object's segments, as their JSON manifest: the
    /// object reads as them, in the manifest's order.
    pub segments: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<ObjectInfo>,
    pub common_prefixes: Vec<String>,
    /// Whether more follow; the next page starts after `last`.
    pub truncated: bool,
    pub last: Option<String>,
}

/// A blob being written for a PUT: written in `tmp/`, committed with
/// [`ObjectStore::commit`] or dropped with [`ObjectStore::discard`].
pub struct Upload {
    pub id: String,
    pub path: PathBuf,
    pub writer: BlobWriter,
}

pub struct ObjectStore {
    dir: PathBuf,
    db: SqlitePool,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Syncs a directory, so that the entries made or removed in it last.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The first key after every key that starts with `prefix`: `prefix` with
/// its last byte raised (keys compare as bytes; UTF-8 has no 0xff byte).
fn after_prefix(prefix: &str) -> Option<Vec<u8>> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return Some(bytes);
        }
    }
    None
}

/// Columns added to tables made before they existed (their defaults are
/// what rows made before meant).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("buckets", "metadata", "TEXT NOT NULL DEFAULT '{}'"),
    ("buckets", "read_acl", "TEXT"),
    ("buckets", "write_acl", "TEXT"),
];

async fn add_columns(db: &SqlitePool) -> Result<(), ObjectError> {
    for (table, column, kind) in ADDED_COLUMNS {
        let have = sqlx::query(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?"
        ))
        .bind(column)
        .fetch_optional(db)
        .await?
        .is_some();
        if !have {
            sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .execute(db)
                .await?;
        }
    }
    Ok(())
}

const BUCKET_COLUMNS: &str =
    "name, project_id, created_ms, public_read, metadata, read_acl, write_acl";

fn bucket_info(r: &sqlx::sqlite::SqliteRow) -> BucketInfo {
    BucketInfo {
        name: r.get("name"),
        project_id: r.get("project_id"),
        created_ms: r.get("created_ms"),
        public_read: r.get::<i64, _>("public_read") != 0,
        metadata: serde_json::from_str(&r.get::<String, _>("metadata")).unwrap_or_default(),
        read_acl: r.get("read_acl"),
        write_acl: r.get("write_acl"),
    }
}

/// Write transactions begin `IMMEDIATE` (`begin_with`): one that began as
/// a reader and then wrote would fail with `SQLITE_BUSY`, which no busy
/// timeout waits out, whenever another writer committed in between.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS buckets (
        name TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        public_read INTEGER NOT NULL DEFAULT 0,
        format INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS objects (
        bucket TEXT NOT NULL,
        key BLOB NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        content_type TEXT,
        content_encoding TEXT,
        metadata TEXT NOT NULL,
        checksums TEXT NOT NULL,
        modified_ms INTEGER NOT NULL,
        manifest TEXT,
        segments TEXT,
        format INTEGER NOT NULL,
        PRIMARY KEY (bucket, key)
    )",
    "CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY,
        bucket TEXT NOT NULL,
        key BLOB NOT NULL,
        content_type TEXT,
        content_encoding TEXT,
        metadata TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        format INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS parts (
        upload_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        modified_ms INTEGER NOT NULL,
        format INTEGER NOT NULL,
        PRIMARY KEY (upload_id, number)
    )",
];

impl ObjectStore {
    /// Opens (or makes) the store under `data_dir/objects` and tidies what
    /// a crash left over.
    pub async fn open(data_dir: &Path) -> Result<Self, ObjectError> {
        let dir = data_dir.join("objects");
        for sub in ["blobs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(ObjectError::Db)?
            .filename(dir.join("meta.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(30));
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&db).await?;
        }
        add_columns(&db).await?;
        let store = ObjectStore { dir, db };
        store.tidy().await?;
        Ok(store)
    }

    /// Removes temporary blobs and blobs no object points at: what a crash
    /// between writing a blob and committing (or after committing, before
    /// removing the old one) leaves.
    async fn tidy(&self) -> Result<(), ObjectError> {
        for entry in std::fs::read_dir(self.dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let used: std::collections::HashSet<String> =
            sqlx::query("SELECT blob FROM objects UNION ALL SELECT blob FROM parts")
                .fetch_all(&self.db)
                .await?
                .iter()
                .map(|r| r.get::<String, _>("blob"))
                .collect();
        let mut removed = 0;
        for shard in std::fs::read_dir(self.dir.join("blobs"))?.flatten() {
            for entry in std::fs::read_dir(shard.path())?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !used.contains(&name) {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "objects: removed blobs no object points at");
        }
        Ok(())
    }

    fn blob_path(&self, id: &str) -> PathBuf {
        self.dir.join("blobs").join(&id[..2]).join(id)
    }

    pub async fn bucket(&self, name: &str) -> Result<Option<BucketInfo>, ObjectError> {
        Ok(sqlx::query(&format!(
            "SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.db)
        .await?
        .as_ref()
        .map(bucket_info))
    }

    pub async fn list_buckets(&self, project_id: &str) -> Result<Vec<BucketInfo>, ObjectError> {
        Ok(sqlx::query(&format!(
            "SELECT {BUCKET_COLUMNS} FROM buckets WHERE project_id = ? ORDER BY name"
        ))
        .bind(project_id)
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(bucket_info)
        .collect())
    }

    pub async fn create_bucket(
        &self,
        name: &str,
        project_id: &str,
        public_read: bool,
    ) -> Result<(), ObjectError> {
        let made = sqlx::query(
            "INSERT INTO buckets (name, project_id, created_ms, public_read, format) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(project_id)
        .bind(now_ms())
        .bind(i64::from(public_read))
        .bind(FORMAT)
        .execute(&self.db)
        .await?
        .rows_affected();
        if made == 1 {
            return Ok(());
        }
        let mine = self
            .bucket(name)
            .await?
            .is_some_and(|b| b.project_id == project_id);
        Err(ObjectError::BucketExists { mine })
    }

    /// A bucket's object count and bytes.
    pub async fn bucket_usage(&self, name: &str) -> Result<(u64, u64), ObjectError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM objects WHERE bucket = ?",
        )
        .bind(name)
        .fetch_one(&self.db)
        .await?;
        Ok((
            row.get::<i64, _>("n") as u64,
            row.get::<i64, _>("bytes") as u64,
        ))
    }

    /// Makes a bucket readable by anyone, or by its project only (for
    /// Swift too: its read ACL becomes `.r:*,.rlistings`, or none).
    pub async fn set_public_read(&self, name: &str, public_read: bool) -> Result<(), ObjectError> {
        let read_acl = public_read.then_some(".r:*,.rlistings");
        let changed =
            sqlx::query("UPDATE buckets SET public_read = ?, read_acl = ? WHERE name = ?")
                .bind(i64::from(public_read))
                .bind(read_acl)
                .bind(name)
                .execute(&self.db)
                .await?
                .rows_affected();
        if changed == 0 {
            return Err(ObjectError::NoSuchBucket);
        }
        Ok(())
    }

    /// Changes a bucket's Swift metadata and ACLs in one transaction;
    /// refuses metadata beyond Swift's limits.
    pub async fn update_container(
        &self,
        name: &str,
        update: ContainerUpdate,
    ) -> Result<(), ObjectError> {
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(&format!(
            "SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ObjectError::NoSuchBucket)?;
        let mut bucket = bucket_info(&row);
        for key in &update.remove_metadata {
            bucket.metadata.remove(key);
        }
        bucket.metadata.extend(update.set_metadata);
        bucket.metadata.retain(|_, v| !v.is_empty());
        let bytes: usize = bucket.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bucket.metadata.len() > MAX_META_ITEMS || bytes > MAX_META_BYTES {
            return Err(ObjectError::BadMetadata(format!(
                "at most {MAX_META_ITEMS} metadata items of {MAX_META_BYTES} bytes in all"
            )));
        }
        let read_acl = update.read_acl.unwrap_or(bucket.read_acl);
        let write_acl = update.write_acl.unwrap_or(bucket.write_acl);
        let public_read = update.public_read.unwrap_or(bucket.public_read);
        sqlx::query(
            "UPDATE buckets SET metadata = ?, read_acl = ?, write_acl = ?, public_read = ? WHERE name = ?",
        )
        .bind(serde_json::to_string(&bucket.metadata).unwrap_or_default())
        .bind(read_acl)
        .bind(write_acl)
        .bind(i64::from(public_read))
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes an empty bucket.
    pub async fn delete_bucket(&self, name: &str) -> Result<(), ObjectError> {
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        let has = sqlx::query("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if has.is_some() {
            return Err(ObjectError::BucketNotEmpty);
        }
        let gone = sqlx::query("DELETE FROM buckets WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Uploads in progress go with it (their blobs after the commit).
        let parts: Vec<String> = sqlx::query(
            "SELECT p.blob FROM parts p JOIN uploads u ON u.id = p.upload_id WHERE u.bucket = ?",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.get("blob"))
        .collect();
        sqlx::query(
            "DELETE FROM parts WHERE upload_id IN (SELECT id FROM uploads WHERE bucket = ?)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM uploads WHERE bucket = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if gone == 0 {
            return Err(ObjectError::NoSuchBucket);
        }
        for blob in parts {
            let _ = std::fs::remove_file(self.blob_path(&blob));
        }
        Ok(())
    }

    /// A new blob to write an object's data into.
    pub fn begin(&self) -> Result<Upload, ObjectError> {
        let id = new_id();
        let path = self.dir.join("tmp").join(&id);
        let writer = BlobWriter::create(&path)?;
        Ok(Upload { id, path, writer })
    }

    /// Drops an upload that will not be committed.
    pub fn discard(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
    }

    /// Makes the written blob `id` (its writer finished) object `key` of
    /// `bucket`, durably; then removes the blob it replaced.
    pub async fn commit(
        &self,
        bucket: &str,
        id: &str,
        info: ObjectInfo,
    ) -> Result<(), ObjectError> {
        self.commit_finishing(bucket, id, info, None).await
    }

    /// Moves the finished temporary blob `id` into `blobs/`, durably.
    fn place_blob(&self, id: &str) -> Result<PathBuf, ObjectError> {
        let tmp = self.dir.join("tmp").join(id);
        let dest = self.blob_path(id);
        let shard = dest.parent().map(Path::to_owned).unwrap_or_default();
        if !shard.exists() {
            std::fs::create_dir_all(&shard)?;
            sync_dir(&self.dir.join("blobs"))?;
        }
        std::fs::rename(&tmp, &dest)?;
        // The new name made durable. The old one's removal need not be: a
        // `tmp/` entry back after a crash is a second name of the same
        // file, and the start's tidying removes that name only.
        sync_dir(&shard)?;
        Ok(dest)
    }

    /// As [`ObjectStore::commit`]; with `finishing`, the multipart upload
    /// the object was made of goes in the same transaction (its part
    /// blobs are unlinked after it).
    async fn commit_finishing(
        &self,
        bucket: &str,
        id: &str,
        mut info: ObjectInfo,
        finishing: Option<&str>,
    ) -> Result<(), ObjectError> {
        let dest = self.place_blob(id)?;
        info.blob = id.to_owned();
        info.modified_ms = now_ms();
        let metadata = serde_json::to_string(&info.metadata).unwrap_or_else(|_| "{}".into());
        let checksums = serde_json::to_string(&info.checksums).unwrap_or_else(|_| "{}".into());
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        if sqlx::query("SELECT 1 FROM buckets WHERE name = ?")
            .bind(bucket)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            drop(tx);
            let _ = std::fs::remove_file(&dest);
            return Err(ObjectError::NoSuchBucket);
        }
        let old: Option<String> =
            sqlx::query("SELECT blob FROM objects WHERE bucket = ? AND key = ?")
                .bind(bucket)
                .bind(info.key.as_bytes())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get("blob"));
        sqlx::query(
            "INSERT INTO objects (bucket, key, blob, size, etag, content_type, content_encoding, \
             metadata, checksums, modified_ms, manifest, segments, format) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (bucket, key) DO UPDATE SET blob = excluded.blob, size = excluded.size, \
             etag = excluded.etag, content_type = excluded.content_type, \
             content_encoding = excluded.content_encoding, metadata = excluded.metadata, \
             checksums = excluded.checksums, modified_ms = excluded.modified_ms, \
             manifest = excluded.manifest, segments = excluded.segments, format = excluded.format",
        )
        .bind(bucket)
        .bind(info.key.as_bytes())
        .bind(id)
        .bind(info.size as i64)
        .bind(&info.etag)
        .bind(&info.content_type)
        .bind(&info.content_encoding)
        .bind(metadata)
        .bind(checksums)
        .bind(info.modified_ms)
        .bind(&info.manifest)
        .bind(&info.segments)
        .bind(FORMAT)
        .execute(&mut *tx)
        .await?;
        let mut parts = Vec::new();
        if let Some(upload) = finishing {
            parts = sqlx::query("SELECT blob FROM parts WHERE upload_id = ?")
                .bind(upload)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.get::<String, _>("blob"))
                .collect();
            sqlx::query("DELETE FROM parts WHERE upload_id = ?")
                .bind(upload)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM uploads WHERE id = ?")
                .bind(upload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        for blob in old.into_iter().chain(parts) {
            let _ = std::fs::remove_file(self.blob_path(&blob));
        }
        Ok(())
    }

    fn info(row: &sqlx::sqlite::SqliteRow) -> ObjectInfo {
        let key: Vec<u8> = row.get("key");
        ObjectInfo {
            key: String::from_utf8_lossy(&key).into_owned(),
            size: row.get::<i64, _>("size") as u64,
            etag: row.get("etag"),
            content_type: row.get("content_type"),
            content_encoding: row.get("content_encoding"),
            metadata: serde_json::from_str(row.get::<&str, _>("metadata")).unwrap_or_default(),
            checksums: serde_json::from_str(row.get::<&str, _>("checksums")).unwrap_or_default(),
            modified_ms: row.get("modified_ms"),
            blob: row.get("blob"),
            manifest: row.get("manifest"),
            segments: row.get("segments"),
        }
    }

    const OBJECT_COLUMNS: &'static str =
        "key, blob, size, etag, content_type, content_encoding, metadata, checksums, modified_ms, manifest, segments";

    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM objects WHERE bucket = ? AND key = ?",
            Self::OBJECT_COLUMNS
        ))
        .bind(bucket)
        .bind(key.as_bytes())
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(Self::info).ok_or(ObjectError::NoSuchKey)
    }

    /// The object's data, opened and checked (its trailer and sums).
    pub fn open_blob(&self, info: &ObjectInfo) -> Result<Blob, ObjectError> {
        Ok(Blob::open(&self.blob_path(&info.blob), info.size)?)
    }

    /// Copies bytes `[start, end)` of object `src` into a new temporary
    /// blob (each block checked as it is read): the blob's id and path
    /// (for [`ObjectStore::commit`] or [`ObjectStore::discard`]), size and
    /// MD5.
    pub async fn copy_data(
        &self,
        src: &ObjectInfo,
        start: u64,
        end: u64,
    ) -> Result<(String, PathBuf, u64, [u8; 16]), ObjectError> {
        let blob = self.open_blob(src)?;
        let up = self.begin()?;
        let (id, path) = (up.id.clone(), up.path.clone());
        let mut writer = up.writer;
        let copied =
            tokio::task::spawn_blocking(move || -> Result<(u64, [u8; 16]), ObjectError> {
                use md5::Digest;
                let mut md5 = md5::Md5::new();
                let mut failed = None;
                blob.read_range(start, end, |data| {
                    md5.update(&data);
                    match writer.write(&data) {
                        Ok(()) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                })?;
                if let Some(e) = failed {
                    return Err(e.into());
                }
                let size = writer.finish()?;
                Ok((size, md5.finalize().into()))
            })
            .await
            .map_err(|e| ObjectError::Io(std::io::Error::other(e.to_string())))?;
        match copied {
            Ok((size, md5)) => Ok((id, path, size, md5)),
            Err(e) => {
                self.discard(&path);
                Err(e)
            }
        }
    }

    /// Replaces an object's user metadata and content type (Swift's
    /// POST), leaving its data as it is; NoSuchKey when there is none.
    pub async fn set_metadata(
        &self,
        bucket: &str,
        key: &str,
        metadata: &BTreeMap<String, String>,
        content_type: Option<&str>,
    ) -> Result<(), ObjectError> {
        let metadata = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into());
        let changed = sqlx::query(
            "UPDATE objects SET metadata = ?, content_type = COALESCE(?, content_type), \
             modified_ms = ? WHERE bucket = ? AND key = ?",
        )
        .bind(metadata)
        .bind(content_type)
        .bind(now_ms())
        .bind(bucket)
        .bind(key.as_bytes())
        .execute(&self.db)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ObjectError::NoSuchKey);
        }
        Ok(())
    }

    /// Removes an object; false when there was none.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        let old: Option<String> =
            sqlx::query("SELECT blob FROM objects WHERE bucket = ? AND key = ?")
                .bind(bucket)
                .bind(key.as_bytes())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get("blob"));
        let Some(old) = old else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM objects WHERE bucket = ? AND key = ?")
            .bind(bucket)
            .bind(key.as_bytes())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let _ = std::fs::remove_file(self.blob_path(&old));
        Ok(true)
    }

    /// Up to `max` entries (objects and common prefixes) of `bucket` whose
    /// keys start with `prefix`, after `after`, in key order; keys with
    /// `delimiter` past the prefix roll up into common prefixes.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<Listing, ObjectError> {
        let mut listing = Listing::default();
        let end = after_prefix(prefix);
        // Where the scan starts: after `after`, at `prefix`.
        let mut from: Vec<u8> = prefix.as_bytes().to_vec();
        let mut inclusive = true;
        if let Some(a) = after {
            if a.as_bytes() >= from.as_slice() {
                from = a.as_bytes().to_vec();
                inclusive = false;
            }
        }
        let delimiter = delimiter.filter(|d| !d.is_empty());
        while listing.objects.len() + listing.common_prefixes.len() < max {
            let page = 1000.min(max + 1);
            let rows = sqlx::query(&format!(
                "SELECT {} FROM objects WHERE bucket = ? AND key {} ? AND (? IS NULL OR key < ?) \
                 ORDER BY key LIMIT ?",
                Self::OBJECT_COLUMNS,
                if inclusive { ">=" } else { ">" }
            ))
            .bind(bucket)
            .bind(&from)
            .bind(end.as_deref())
            .bind(end.as_deref())
            .bind(page as i64)
            .fetch_all(&self.db)
            .await?;
            if rows.is_empty() {
                return Ok(listing);
            }
            let mut jumped = false;
            for row in &rows {
                let info = Self::info(row);
                if listing.objects.len() + listing.common_prefixes.len() >= max {
                    listing.truncated = true;
                    return Ok(listing);
                }
                let rest = &info.key[prefix.len().min(info.key.len())..];
                if let Some(at) = delimiter.and_then(|d| rest.find(d).map(|i| i + d.len())) {
                    let common = format!("{prefix}{}", &rest[..at]);
                    // Every key under it rolls up: go on after them all.
                    match after_prefix(&common) {
                        Some(next) => {
                            from = next;
                            inclusive = true;
                        }
                        None => return Ok(listing),
                    }
                    // A page that ended at this prefix already gave it.
                    if after.is_none_or(|a| common.as_bytes() > a.as_bytes()) {
                        listing.last = Some(common.clone());
                        listing.common_prefixes.push(common);
                    }
                    jumped = true;
                    break;
                }
                listing.last = Some(info.key.clone());
                from = info.key.as_bytes().to_vec();
                inclusive = false;
                listing.objects.push(info);
            }
            if !jumped && rows.len() < page {
                return Ok(listing);
            }
        }
        // Full: truncated if anything is left.
        let more = sqlx::query(&format!(
            "SELECT 1 FROM objects WHERE bucket = ? AND key {} ? AND (? IS NULL OR key < ?) LIMIT 1",
            if inclusive { ">=" } else { ">" }
        ))
        .bind(bucket)
        .bind(&from)
        .bind(end.as_deref())
        .bind(end.as_deref())
        .fetch_optional(&self.db)
        .await?;
        listing.truncated = more.is_some();
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn put(store: &ObjectStore, bucket: &str, key: &str, data: &[u8]) {
        let mut up = store.begin().unwrap();
        up.writer.write(data).unwrap();
        let size = up.writer.finish().unwrap();
        let info = ObjectInfo {
            key: key.into(),
            size,
            etag: "e".into(),
            ..Default::default()
        };
        store.commit(bucket, &up.id, info).await.unwrap();
    }

    /// What S3 lists, the slow and obvious way.
    fn model(
        keys: &[String],
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> (Vec<String>, Vec<String>, bool) {
        let mut entries: Vec<(String, bool)> = Vec::new();
        let mut sorted: Vec<&String> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
        sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        for k in sorted {
            let rest = &k[prefix.len()..];
            let entry = match delimiter.and_then(|d| rest.find(d).map(|i| i + d.len())) {
                Some(at) => (format!("{prefix}{}", &rest[..at]), true),
                None => (k.clone(), false),
            };
            if entries.last() != Some(&entry) {
                entries.push(entry);
            }
        }
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|(e, _)| after.is_none_or(|a| e.as_bytes() > a.as_bytes()))
            .collect();
        let truncated = entries.len() > max;
        let page = &entries[..entries.len().min(max)];
        (
            page.iter()
                .filter(|(_, p)| !p)
                .map(|(e, _)| e.clone())
                .collect(),
            page.iter()
                .filter(|(_, p)| *p)
                .map(|(e, _)| e.clone())
                .collect(),
            truncated,
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
        #[test]
        fn listings_match_the_model_page_after_page(
            keys in proptest::collection::vec("[ab/]{1,5}", 0..25),
            prefix in "[ab/]{0,2}",
            slash in proptest::bool::ANY,
            max in 1usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            rt().block_on(async {
                let store = ObjectStore::open(dir.path()).await.unwrap();
                store.create_bucket("bkt", "p", false).await.unwrap();
                for k in &keys {
                    put(&store, "bkt", k, k.as_bytes()).await;
                }
                let delimiter = slash.then_some("/");
                let mut after: Option<String> = None;
                for _ in 0..40 {
                    let got = store.list("bkt", &prefix, delimiter, after.as_deref(), max).await.unwrap();
                    let want = model(&keys, &prefix, delimiter, after.as_deref(), max);
                    let objects: Vec<String> = got.objects.iter().map(|o| o.key.clone()).collect();
                    assert_eq!((objects, got.common_prefixes.clone(), got.truncated), want);
                    if !got.truncated {
                        break;
                    }
                    after = got.last.clone();
                }
            });
        }
    }

    #[test]
    fn a_restart_tidies_what_a_crash_left_and_keeps_every_object() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store = ObjectStore::open(dir.path()).await.unwrap();
            store.create_bucket("bkt", "p", false).await.unwrap();
            put(&store, "bkt", "kept", b"kept data").await;
            put(&store, "bkt", "kept", b"replaced").await;
            // A PUT cut off before its commit: its blob written, no row.
            let mut cut = store.begin().unwrap();
            cut.writer.write(b"never committed").unwrap();
            cut.writer.finish().unwrap();
            let orphan = store.blob_path(&cut.id);
            std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
            std::fs::rename(&cut.path, &orphan).unwrap();
            // And one cut off while writing.
            let half = store.begin().unwrap();
            drop(half.writer);
            drop(store);

            let store = ObjectStore::open(dir.path()).await.unwrap();
            assert!(!orphan.exists(), "a blob no object points at goes");
            assert!(!half.path.exists(), "temporary files go");
            let info = store.head("bkt", "kept").await.unwrap();
            let blob = store.open_blob(&info).unwrap();
            let mut data = Vec::new();
            blob.read_range(0, info.size, |p| {
                data.extend(p);
                true
            })
            .unwrap();
            assert_eq!(data, b"replaced");
            let files: usize = std::fs::read_dir(dir.path().join("objects/blobs"))
                .unwrap()
                .flatten()
                .map(|d| std::fs::read_dir(d.path()).unwrap().count())
                .sum();
            assert_eq!(files, 1, "the replaced object's blob went at the PUT");
            // Buckets: names are global; deleting needs them empty.
            assert!(matches!(
                store.create_bucket("bkt", "q", false).await,
                Err(ObjectError::BucketExists { mine: false })
            ));
            assert!(matches!(
                store.delete_bucket("bkt").await,
                Err(ObjectError::BucketNotEmpty)
            ));
            assert!(store.delete("bkt", "kept").await.unwrap());
            assert!(!store.delete("bkt", "kept").await.unwrap());
            store.delete_bucket("bkt").await.unwrap();
            assert!(matches!(
                store.delete_bucket("bkt").await,
                Err(ObjectError::NoSuchBucket)
            ));
        });
    }
}
