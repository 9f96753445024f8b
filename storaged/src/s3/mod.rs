//! storaged's S3 API: the wire protocol (routing, SigV4 in headers and
//! presigned URLs, aws-chunked bodies and their trailers, XML, errors) is
//! the `s3s` crate's; the operations here map it onto the object store
//! ([`crate::objects`]) and the project that owns each bucket.
//!
//! - [`auth`]: the secrets signatures are checked with, from the controller
//!
//! Buckets are named globally, as on AWS, and belong to the project of the
//! credential that made them; a credential of another project gets
//! `AccessDenied` on them.

pub mod auth;

use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::objects::{ObjectError, ObjectInfo, ObjectStore};

use self::auth::Signers;

/// The largest object a single PUT makes (S3's limit).
pub const MAX_OBJECT: u64 = 5 << 30;
/// The region buckets are said to be in.
pub const REGION: &str = "us-east-1";

pub struct S3Api {
    pub store: Arc<ObjectStore>,
    pub signers: Arc<Signers>,
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    tracing::warn!("s3: {e}");
    s3_error!(InternalError, "{e}")
}

fn object_error(e: ObjectError) -> S3Error {
    match e {
        ObjectError::NoSuchBucket => s3_error!(NoSuchBucket),
        ObjectError::NoSuchKey => s3_error!(NoSuchKey),
        ObjectError::BucketNotEmpty => s3_error!(BucketNotEmpty),
        ObjectError::NoSuchUpload => s3_error!(NoSuchUpload),
        ObjectError::InvalidPart(what) => s3_error!(InvalidPart, "{what}"),
        ObjectError::InvalidPartOrder => s3_error!(InvalidPartOrder),
        ObjectError::EntityTooSmall(n) => {
            s3_error!(EntityTooSmall, "part {n} is below 5 MiB and not the last")
        }
        ObjectError::BucketExists { mine: true } => s3_error!(BucketAlreadyOwnedByYou),
        ObjectError::BucketExists { mine: false } => s3_error!(BucketAlreadyExists),
        e @ ObjectError::Blob(_) => {
            tracing::error!("s3: {e}");
            s3_error!(InternalError, "the object's data failed its checksum")
        }
        e => internal(e),
    }
}

/// Refuses a Swift large object (a manifest: its data is its segments',
/// which only the Swift API joins).
fn plain(info: ObjectInfo) -> S3Result<ObjectInfo> {
    if info.manifest.is_some() || info.segments.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "a Swift large object: read it over the Swift API"
        ));
    }
    Ok(info)
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn etag(info: &ObjectInfo) -> ETag {
    ETag::Strong(info.etag.clone())
}

impl S3Api {
    /// The project the request's credential acts for.
    fn project<T>(&self, req: &S3Request<T>) -> S3Result<String> {
        let access = req
            .credentials
            .as_ref()
            .map(|c| c.access_key.clone())
            .ok_or_else(|| s3_error!(AccessDenied, "anonymous requests are not allowed"))?;
        self.signers
            .cached(&access)
            .map(|s| s.project_id)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }

    /// Checks that the request may read `bucket`: its project's, or public
    /// (`public-read`) for an anonymous request.
    async fn readable<T>(&self, req: &S3Request<T>, bucket: &str) -> S3Result<()> {
        if req.credentials.is_some() {
            return self.owned(req, bucket).await;
        }
        match self.store.bucket(bucket).await.map_err(object_error)? {
            Some(b) if b.public_read => Ok(()),
            _ => Err(s3_error!(AccessDenied)),
        }
    }

    /// Checks that `bucket` exists and belongs to the request's project.
    async fn owned<T>(&self, req: &S3Request<T>, bucket: &str) -> S3Result<()> {
        let project = self.project(req)?;
        match self.store.bucket(bucket).await.map_err(object_error)? {
            None => Err(s3_error!(NoSuchBucket)),
            Some(b) if b.project_id != project => Err(s3_error!(AccessDenied)),
            Some(_) => Ok(()),
        }
    }

    /// Streams `body` into a new temporary blob (written on a blocking
    /// thread a chunk at a time), then checks its length and the
    /// checksums asked for. On any failure the blob is gone.
    async fn receive(
        &self,
        body: Option<StreamingBlob>,
        content_length: Option<i64>,
        mut expected: Expected,
        trailers: Option<s3s::TrailingHeaders>,
    ) -> S3Result<Received> {
        let Some(mut body) = body else {
            return Err(s3_error!(IncompleteBody));
        };
        if content_length.is_some_and(|l| l < 0 || l as u64 > MAX_OBJECT) {
            return Err(s3_error!(EntityTooLarge));
        }
        let mut md5 = Md5::new();
        let mut requested = s3s::checksum::ChecksumHasher::default();
        if expected.crc32.is_some() {
            requested.crc32 = Some(Default::default());
        }
        if expected.crc32c.is_some() {
            requested.crc32c = Some(Default::default());
        }
        if expected.sha1.is_some() {
            requested.sha1 = Some(Default::default());
        }
        if expected.sha256.is_some() {
            requested.sha256 = Some(Default::default());
        }
        if expected.crc64nvme.is_some() {
            requested.crc64nvme = Some(Default::default());
        }
        if let Some(alg) = &expected.algorithm {
            match alg.as_str() {
                ChecksumAlgorithm::CRC32 => requested.crc32 = Some(Default::default()),
                ChecksumAlgorithm::CRC32C => requested.crc32c = Some(Default::default()),
                ChecksumAlgorithm::SHA1 => requested.sha1 = Some(Default::default()),
                ChecksumAlgorithm::SHA256 => requested.sha256 = Some(Default::default()),
                ChecksumAlgorithm::CRC64NVME => requested.crc64nvme = Some(Default::default()),
                _ => return Err(s3_error!(InvalidArgument, "unknown checksum algorithm")),
            }
        }
        let mut sink = crate::objects::sink::BlobSink::start(&self.store).map_err(object_error)?;
        let (id, path) = (sink.id.clone(), sink.path.clone());
        let received: S3Result<()> = async {
            use futures_core::Stream;
            loop {
                let next =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx)).await;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
                if sink.size() + chunk.len() as u64 > MAX_OBJECT {
                    return Err(s3_error!(EntityTooLarge));
                }
                md5.update(&chunk);
                requested.update(&chunk);
                sink.push(&chunk).await.map_err(object_error)?;
            }
            if content_length.is_some_and(|l| l as u64 != sink.size()) {
                return Err(s3_error!(IncompleteBody));
            }
            Ok(())
        }
        .await;
        let written = match received {
            Ok(()) => sink.finish(&self.store).await.map_err(object_error),
            Err(e) => {
                sink.abandon(&self.store).await;
                Err(e)
            }
        };
        let fail = |e: S3Error| {
            self.store.discard(&path);
            Err(e)
        };
        let size = match written {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let md5: [u8; 16] = md5.finalize().into();
        if let Some(sent) = &expected.content_md5 {
            let ok = base64_simd::STANDARD
                .decode_to_vec(sent)
                .is_ok_and(|d| d.as_slice() == md5.as_slice());
            if !ok {
                return fail(s3_error!(BadDigest, "Content-MD5 does not match the body"));
            }
        }
        if let Some(t) = trailers.as_ref().and_then(|t| t.take()) {
            for (name, slot) in [
                ("x-amz-checksum-crc32", &mut expected.crc32),
                ("x-amz-checksum-crc32c", &mut expected.crc32c),
                ("x-amz-checksum-sha1", &mut expected.sha1),
                ("x-amz-checksum-sha256", &mut expected.sha256),
                ("x-amz-checksum-crc64nvme", &mut expected.crc64nvme),
            ] {
                if let Some(v) = t.get(name) {
                    match v.to_str() {
                        Ok(v) => *slot = Some(v.to_owned()),
                        Err(_) => return fail(s3_error!(InvalidArgument, "{name}")),
                    }
                }
            }
        }
        let computed = requested.finalize();
        let mut checksums = std::collections::BTreeMap::new();
        for (name, sent, got) in [
            ("crc32", &expected.crc32, &computed.checksum_crc32),
            ("crc32c", &expected.crc32c, &computed.checksum_crc32c),
            ("sha1", &expected.sha1, &computed.checksum_sha1),
            ("sha256", &expected.sha256, &computed.checksum_sha256),
            (
                "crc64nvme",
                &expected.crc64nvme,
                &computed.checksum_crc64nvme,
            ),
        ] {
            match (sent, got) {
                (Some(s), Some(g)) if s == g => {
                    checksums.insert(name.to_owned(), g.clone());
                }
                (Some(_), _) => {
                    return fail(s3_error!(
                        BadDigest,
                        "the {name} checksum does not match the body"
                    ))
                }
                // Named as the algorithm, never sent.
                (None, Some(_)) => {
                    return fail(s3_error!(InvalidRequest, "no {name} checksum was sent"))
                }
                (None, None) => {}
            }
        }
        Ok(Received {
            id,
            path,
            size,
            md5,
            checksums,
        })
    }

    /// The object a copy reads: in a bucket of the request's project.
    async fn copy_source<T>(
        &self,
        req: &S3Request<T>,
        source: &CopySource,
    ) -> S3Result<ObjectInfo> {
        let CopySource::Bucket {
            bucket,
            key,
            version_id,
        } = source
        else {
            return Err(s3_error!(NotImplemented, "copies from access points"));
        };
        if version_id.is_some() {
            return Err(s3_error!(NotImplemented, "object versions"));
        }
        self.owned(req, bucket).await?;
        self.store
            .head(bucket, key)
            .await
            .map_err(object_error)
            .and_then(plain)
    }

    /// A copy's source conditions: any that fails is 412, as S3 answers.
    fn copy_conditions(
        src: &ObjectInfo,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<()> {
        Self::conditions(
            src,
            if_match,
            if_none_match,
            if_modified_since,
            if_unmodified_since,
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed)
            } else {
                e
            }
        })
    }

    /// Checks a GET's or HEAD's conditions against the object.
    fn conditions(
        info: &ObjectInfo,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<()> {
        let ours = etag(info);
        let matches = |c: &ETagCondition| match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => ours.strong_cmp(e) || ours.value() == e.value(),
        };
        let modified = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(info.modified_ms.max(0) as u64);
        let as_time = |t: &Timestamp| {
            Some(std::time::SystemTime::from(time::OffsetDateTime::from(
                t.clone(),
            )))
        };
        if let Some(c) = if_match {
            if !matches(c) {
                return Err(s3_error!(PreconditionFailed));
            }
        } else if let Some(t) = if_unmodified_since.and_then(as_time) {
            // Whole seconds, as HTTP dates are.
            if modified.duration_since(t).is_ok_and(|d| d.as_secs() >= 1) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        if let Some(c) = if_none_match {
            if matches(c) {
                return Err(S3Error::new(S3ErrorCode::NotModified));
            }
        } else if let Some(t) = if_modified_since.and_then(as_time) {
            if t.duration_since(modified).is_ok()
                || modified.duration_since(t).is_ok_and(|d| d.as_secs() < 1)
            {
                return Err(S3Error::new(S3ErrorCode::NotModified));
            }
        }
        Ok(())
    }
}

/// A GET's body: blocks read (and checked) on a blocking thread, a few
/// ahead of the client.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn validate_key(key: &str) -> S3Result<()> {
    if key.is_empty() || key.len() > 1024 {
        return Err(s3_error!(KeyTooLongError));
    }
    Ok(())
}

/// The checksums a body must match: those its request sent (by value, or
/// by naming an algorithm whose value comes in the trailer).
#[derive(Default)]
struct Expected {
    content_md5: Option<String>,
    crc32: Option<String>,
    crc32c: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    crc64nvme: Option<String>,
    algorithm: Option<ChecksumAlgorithm>,
}

/// A body written to a temporary blob and verified, not yet committed.
struct Received {
    id: String,
    path: std::path::PathBuf,
    size: u64,
    md5: [u8; 16],
    /// The checksums verified, by algorithm, base64.
    checksums: std::collections::BTreeMap<String, String>,
}

impl Received {
    fn md5_hex(&self) -> String {
        self.md5.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[async_trait::async_trait]
impl S3 for S3Api {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let project = self.project(&req)?;
        let buckets = self
            .store
            .list_buckets(&project)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(timestamp(b.created_ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            owner: Some(Owner {
                display_name: Some(project.clone()),
                id: Some(project),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let project = self.project(&req)?;
        let public_read = canned_public_read(req.input.acl.as_ref().map(|a| a.as_str()))?;
        self.store
            .create_bucket(&req.input.bucket, &project, public_read)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.readable(&req, &req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(REGION.into()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        // us-east-1 is said by saying nothing.
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        self.store
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let trailers = req.trailing_headers.clone();
        let mut input = req.input;
        validate_key(&input.key)?;
        if let Some(c) = &input.if_none_match {
            if c.is_any() && self.store.head(&input.bucket, &input.key).await.is_ok() {
                return Err(s3_error!(PreconditionFailed, "the object exists"));
            }
        }
        let expected = Expected {
            content_md5: input.content_md5.take(),
            crc32: input.checksum_crc32.take(),
            crc32c: input.checksum_crc32c.take(),
            sha1: input.checksum_sha1.take(),
            sha256: input.checksum_sha256.take(),
            crc64nvme: input.checksum_crc64nvme.take(),
            algorithm: input.checksum_algorithm.take(),
        };
        let got = self
            .receive(input.body.take(), input.content_length, expected, trailers)
            .await?;
        let info = ObjectInfo {
            key: input.key.clone(),
            size: got.size,
            etag: got.md5_hex(),
            content_type: input.content_type.clone(),
            content_encoding: input.content_encoding.clone(),
            metadata: input
                .metadata
                .take()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            checksums: got.checksums.clone(),
            ..Default::default()
        };
        if let Err(e) = self.store.commit(&input.bucket, &got.id, info).await {
            self.store.discard(&got.path);
            return Err(object_error(e));
        }
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(got.md5_hex())),
            checksum_crc32: got.checksums.get("crc32").cloned(),
            checksum_crc32c: got.checksums.get("crc32c").cloned(),
            checksum_sha1: got.checksums.get("sha1").cloned(),
            checksum_sha256: got.checksums.get("sha256").cloned(),
            checksum_crc64nvme: got.checksums.get("crc64nvme").cloned(),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.readable(&req, &req.input.bucket).await?;
        let input = &req.input;
        let info = self
            .store
            .head(&input.bucket, &input.key)
            .await
            .map_err(object_error)
            .and_then(plain)?;
        Self::conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(info.size as i64),
            content_type: info.content_type.clone(),
            content_encoding: info.content_encoding.clone(),
            e_tag: Some(etag(&info)),
            last_modified: Some(timestamp(info.modified_ms)),
            metadata: Some(info.metadata.clone().into_iter().collect()),
            accept_ranges: Some("bytes".into()),
            checksum_crc32: info.checksums.get("crc32").cloned(),
            checksum_crc32c: info.checksums.get("crc32c").cloned(),
            checksum_sha1: info.checksums.get("sha1").cloned(),
            checksum_sha256: info.checksums.get("sha256").cloned(),
            checksum_crc64nvme: info.checksums.get("crc64nvme").cloned(),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.readable(&req, &req.input.bucket).await?;
        let input = &req.input;
        let info = self
            .store
            .head(&input.bucket, &input.key)
            .await
            .map_err(object_error)
            .and_then(plain)?;
        Self::conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (start, end, content_range) = match &input.range {
            None => (0, info.size, None),
            Some(range) => {
                let r = range.check(info.size)?;
                let shown = format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    info.size
                );
                (r.start, r.end, Some(shown))
            }
        };
        let blob = self.store.open_blob(&info).map_err(object_error)?;
        // The first block is read and checked before answering, so that a
        // corrupted small object is an error status, not a cut body.
        let first = if start < end {
            let block = start / crate::objects::blob::BLOCK;
            Some(blob.block(block).map_err(|e| object_error(e.into()))?)
        } else {
            None
        };
        drop(first);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let sent = blob.read_range(start, end, |part| {
                tx.blocking_send(Ok(Bytes::from(part))).is_ok()
            });
            if let Err(e) = sent {
                tracing::error!("s3: {e}");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        let whole = content_range.is_none();
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(Chunks(rx))),
            content_length: Some((end - start) as i64),
            content_range,
            content_type: info.content_type.clone(),
            content_encoding: info.content_encoding.clone(),
            e_tag: Some(etag(&info)),
            last_modified: Some(timestamp(info.modified_ms)),
            metadata: Some(info.metadata.clone().into_iter().collect()),
            accept_ranges: Some("bytes".into()),
            // S3 gives checksums of the whole object only.
            checksum_crc32: info.checksums.get("crc32").filter(|_| whole).cloned(),
            checksum_crc32c: info.checksums.get("crc32c").filter(|_| whole).cloned(),
            checksum_sha1: info.checksums.get("sha1").filter(|_| whole).cloned(),
            checksum_sha256: info.checksums.get("sha256").filter(|_| whole).cloned(),
            checksum_crc64nvme: info.checksums.get("crc64nvme").filter(|_| whole).cloned(),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        validate_key(&req.input.key)?;
        // Deleting what is not there succeeds, as on S3.
        self.store
            .delete(&req.input.bucket, &req.input.key)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let objects = &req.input.delete.objects;
        if objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in objects {
            match self.store.delete(&req.input.bucket, &o.key).await {
                Ok(_) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key.clone()),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(Error {
                    key: Some(o.key.clone()),
                    code: Some("InternalError".into()),
                    message: Some(e.to_string()),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors).filter(|e| !e.is_empty()),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.readable(&req, &req.input.bucket).await?;
        let input = &req.input;
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        // The continuation token is the last key (or prefix) returned.
        let after = match &input.continuation_token {
            Some(t) => Some(
                base64_simd::URL_SAFE_NO_PAD
                    .decode_to_vec(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        s3_error!(
                            InvalidArgument,
                            "The continuation token provided is incorrect"
                        )
                    })?,
            ),
            None => input.start_after.clone(),
        };
        let listing = self
            .store
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                after.as_deref(),
                max,
            )
            .await
            .map_err(object_error)?;
        let count = listing.objects.len() + listing.common_prefixes.len();
        let next = listing
            .last
            .as_ref()
            .filter(|_| listing.truncated)
            .map(|l| base64_simd::URL_SAFE_NO_PAD.encode_to_string(l.as_bytes()));
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: Some(prefix),
            delimiter: input.delimiter.clone(),
            max_keys: Some(max as i32),
            key_count: Some(count as i32),
            is_truncated: Some(listing.truncated),
            continuation_token: input.continuation_token.clone(),
            next_continuation_token: next,
            start_after: input.start_after.clone(),
            encoding_type: input.encoding_type.clone(),
            contents: Some(listing.objects.iter().map(object_entry).collect()),
            common_prefixes: Some(
                listing
                    .common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.readable(&req, &req.input.bucket).await?;
        let input = &req.input;
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let listing = self
            .store
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                input.marker.as_deref(),
                max,
            )
            .await
            .map_err(object_error)?;
        // NextMarker only with a delimiter (without one, clients use the
        // last key), as S3 does.
        let next = listing
            .last
            .clone()
            .filter(|_| listing.truncated && input.delimiter.is_some());
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket.clone()),
            prefix: Some(prefix),
            delimiter: input.delimiter.clone(),
            marker: Some(input.marker.clone().unwrap_or_default()),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            next_marker: next,
            encoding_type: input.encoding_type.clone(),
            contents: Some(listing.objects.iter().map(object_entry).collect()),
            common_prefixes: Some(
                listing
                    .common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = req.input;
        validate_key(&input.key)?;
        let id = self
            .store
            .create_upload(crate::objects::multipart::UploadInfo {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                content_type: input.content_type,
                content_encoding: input.content_encoding,
                metadata: input.metadata.unwrap_or_default().into_iter().collect(),
                ..Default::default()
            })
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let trailers = req.trailing_headers.clone();
        let mut input = req.input;
        let number = i64::from(input.part_number);
        if !(1..=crate::objects::multipart::MAX_PARTS).contains(&number) {
            return Err(s3_error!(InvalidArgument, "part numbers are 1 to 10000"));
        }
        self.store
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let expected = Expected {
            content_md5: input.content_md5.take(),
            crc32: input.checksum_crc32.take(),
            crc32c: input.checksum_crc32c.take(),
            sha1: input.checksum_sha1.take(),
            sha256: input.checksum_sha256.take(),
            crc64nvme: input.checksum_crc64nvme.take(),
            algorithm: input.checksum_algorithm.take(),
        };
        let got = self
            .receive(input.body.take(), input.content_length, expected, trailers)
            .await?;
        if let Err(e) = self
            .store
            .commit_part(&input.upload_id, number, &got.id, got.size, &got.md5_hex())
            .await
        {
            self.store.discard(&got.path);
            return Err(object_error(e));
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(got.md5_hex())),
            checksum_crc32: got.checksums.get("crc32").cloned(),
            checksum_crc32c: got.checksums.get("crc32c").cloned(),
            checksum_sha1: got.checksums.get("sha1").cloned(),
            checksum_sha256: got.checksums.get("sha256").cloned(),
            checksum_crc64nvme: got.checksums.get("crc64nvme").cloned(),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = req.input;
        let upload = self
            .store
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let chosen = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                Ok((
                    i64::from(
                        p.part_number
                            .ok_or_else(|| s3_error!(InvalidPart, "a part without its number"))?,
                    ),
                    p.e_tag
                        .map(|e| e.value().to_owned())
                        .ok_or_else(|| s3_error!(InvalidPart, "a part without its ETag"))?,
                ))
            })
            .collect::<S3Result<Vec<_>>>()?;
        if chosen.len() > crate::objects::multipart::MAX_PARTS as usize {
            return Err(s3_error!(MalformedXML, "at most 10000 parts"));
        }
        let info = self
            .store
            .complete(&upload, &chosen)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&info)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = &req.input;
        self.store
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        self.store
            .abort(&input.upload_id)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = &req.input;
        self.store
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = i64::from(input.part_number_marker.unwrap_or(0));
        let all: Vec<_> = self
            .store
            .parts(&input.upload_id)
            .await
            .map_err(object_error)?
            .into_iter()
            .filter(|p| p.number > after)
            .collect();
        let truncated = all.len() > max;
        let page = &all[..all.len().min(max)];
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            upload_id: Some(input.upload_id.clone()),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: page.last().filter(|_| truncated).map(|p| p.number as i32),
            parts: Some(
                page.iter()
                    .map(|p| Part {
                        part_number: Some(p.number as i32),
                        e_tag: Some(ETag::Strong(p.etag.clone())),
                        size: Some(p.size as i64),
                        last_modified: Some(timestamp(p.modified_ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = &req.input;
        let max = input.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let key_marker = input.key_marker.clone();
        let all: Vec<_> = self
            .store
            .list_uploads(&input.bucket, &prefix)
            .await
            .map_err(object_error)?
            .into_iter()
            .filter(|u| {
                key_marker
                    .as_ref()
                    .is_none_or(|m| u.key.as_bytes() > m.as_bytes())
            })
            .collect();
        let truncated = all.len() > max;
        let page = &all[..all.len().min(max)];
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket.clone()),
            prefix: Some(prefix),
            key_marker: input.key_marker.clone(),
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: page.last().filter(|_| truncated).map(|u| u.key.clone()),
            uploads: Some(
                page.iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key.clone()),
                        upload_id: Some(u.id.clone()),
                        initiated: Some(timestamp(u.created_ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = &req.input;
        validate_key(&input.key)?;
        let src = self.copy_source(&req, &input.copy_source).await?;
        Self::copy_conditions(
            &src,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let same = matches!(&input.copy_source, CopySource::Bucket { bucket, key, .. }
            if **bucket == *input.bucket && **key == *input.key);
        if same && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object onto itself changes nothing: say MetadataDirective REPLACE"
            ));
        }
        if src.size > MAX_OBJECT {
            return Err(s3_error!(
                InvalidRequest,
                "objects over 5 GiB are copied in parts"
            ));
        }
        let (id, path, size, md5) = self
            .store
            .copy_data(&src, 0, src.size)
            .await
            .map_err(object_error)?;
        let hex: String = md5.iter().map(|b| format!("{b:02x}")).collect();
        let info = if replace {
            ObjectInfo {
                key: input.key.clone(),
                size,
                etag: hex.clone(),
                content_type: input.content_type.clone(),
                content_encoding: input.content_encoding.clone(),
                metadata: input
                    .metadata
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                ..Default::default()
            }
        } else {
            ObjectInfo {
                key: input.key.clone(),
                size,
                etag: hex.clone(),
                content_type: src.content_type.clone(),
                content_encoding: src.content_encoding.clone(),
                metadata: src.metadata.clone(),
                checksums: src.checksums.clone(),
                ..Default::default()
            }
        };
        if let Err(e) = self.store.commit(&input.bucket, &id, info).await {
            self.store.discard(&path);
            return Err(object_error(e));
        }
        let made = self
            .store
            .head(&input.bucket, &input.key)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(hex)),
                last_modified: Some(timestamp(made.modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = &req.input;
        let number = i64::from(input.part_number);
        if !(1..=crate::objects::multipart::MAX_PARTS).contains(&number) {
            return Err(s3_error!(InvalidArgument, "part numbers are 1 to 10000"));
        }
        self.store
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let src = self.copy_source(&req, &input.copy_source).await?;
        Self::copy_conditions(
            &src,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        // `bytes=first-last`, both inside the source.
        let (start, end) = match &input.copy_source_range {
            None => (0, src.size),
            Some(r) => {
                let bad = || {
                    s3_error!(
                        InvalidArgument,
                        "x-amz-copy-source-range: bytes=first-last within the source"
                    )
                };
                let (a, b) = r
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .ok_or_else(bad)?;
                let (a, b): (u64, u64) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b >= src.size {
                    return Err(bad());
                }
                (a, b + 1)
            }
        };
        if end - start > MAX_OBJECT {
            return Err(s3_error!(EntityTooLarge));
        }
        let (id, path, size, md5) = self
            .store
            .copy_data(&src, start, end)
            .await
            .map_err(object_error)?;
        let hex: String = md5.iter().map(|b| format!("{b:02x}")).collect();
        if let Err(e) = self
            .store
            .commit_part(&input.upload_id, number, &id, size, &hex)
            .await
        {
            self.store.discard(&path);
            return Err(object_error(e));
        }
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(hex)),
                last_modified: Some(timestamp(crate::objects::now_ms())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let input = &req.input;
        if input.access_control_policy.is_some()
            || input.grant_full_control.is_some()
            || input.grant_read.is_some()
            || input.grant_read_acp.is_some()
            || input.grant_write.is_some()
            || input.grant_write_acp.is_some()
        {
            return Err(s3_error!(
                NotImplemented,
                "only canned ACLs: private, public-read"
            ));
        }
        let public_read = canned_public_read(input.acl.as_ref().map(|a| a.as_str()))?;
        self.store
            .set_public_read(&input.bucket, public_read)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        self.owned(&req, &req.input.bucket).await?;
        let bucket = self
            .store
            .bucket(&req.input.bucket)
            .await
            .map_err(object_error)?
            .ok_or_else(|| s3_error!(NoSuchBucket))?;
        let owner = Owner {
            display_name: Some(bucket.project_id.clone()),
            id: Some(bucket.project_id.clone()),
        };
        let mut grants = vec![Grant {
            grantee: Some(Grantee {
                display_name: owner.display_name.clone(),
                id: owner.id.clone(),
                type_: Type::from_static(Type::CANONICAL_USER),
                email_address: None,
                uri: None,
            }),
            permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
        }];
        if bucket.public_read {
            grants.push(Grant {
                grantee: Some(Grantee {
                    display_name: None,
                    id: None,
                    type_: Type::from_static(Type::GROUP),
                    email_address: None,
                    uri: Some("http://acs.amazonaws.com/groups/global/AllUsers".into()),
                }),
                permission: Some(Permission::from_static(Permission::READ)),
            });
        }
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(grants),
            owner: Some(owner),
        }))
    }
}

fn object_entry(o: &ObjectInfo) -> Object {
    Object {
        key: Some(o.key.clone()),
        size: Some(o.size as i64),
        e_tag: Some(etag(o)),
        last_modified: Some(timestamp(o.modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

/// Whether a canned ACL makes a bucket public; only `private` (the
/// default) and `public-read` exist here.
fn canned_public_read(acl: Option<&str>) -> S3Result<bool> {
    match acl {
        None | Some(BucketCannedACL::PRIVATE) => Ok(false),
        Some(BucketCannedACL::PUBLIC_READ) => Ok(true),
        Some(other) => Err(s3_error!(
            NotImplemented,
            "the canned ACL {other}: only private and public-read"
        )),
    }
}

/// Virtual-host-style requests under the configured domain
/// (`BUCKET.DOMAIN`, with or without a port, in any case); any other Host
/// (an address, the domain itself, a name we do not serve) is path-style.
/// s3s's `SingleDomain` compares the port too and reads any other name as
/// a bucket (CNAME style), which would turn `Host: 10.0.0.5:9000` into a
/// bucket name.
pub struct VirtualHosts {
    domain: String,
}

impl VirtualHosts {
    pub fn new(domain: &str) -> Self {
        VirtualHosts {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// The bucket `host` names, if it names one under the domain.
    fn bucket(&self, host: &str) -> Option<String> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            _ => host,
        };
        let name = name.to_ascii_lowercase();
        let bucket = name.strip_suffix(&self.domain)?.strip_suffix('.')?;
        (!bucket.is_empty()).then(|| bucket.to_owned())
    }
}

impl s3s::host::S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        let vhost = s3s::host::VirtualHost::new(self.domain.as_str());
        Ok(match self.bucket(host) {
            Some(bucket) => vhost.with_bucket(bucket),
            None => vhost,
        })
    }
}

/// Who may send a request at all: anyone with a valid signature (each
/// operation then checks the bucket's project), and, without one, reads
/// of public buckets (listing, GET and HEAD of their objects).
pub struct Access {
    pub store: Arc<ObjectStore>,
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_some() {
            return Ok(());
        }
        let bucket = match cx.s3_path() {
            s3s::path::S3Path::Bucket { bucket } | s3s::path::S3Path::Object { bucket, .. } => {
                bucket.to_string()
            }
            s3s::path::S3Path::Root => {
                return Err(s3_error!(AccessDenied, "Signature is required"))
            }
        };
        let read = matches!(
            cx.s3_op().name(),
            "GetObject" | "HeadObject" | "ListObjects" | "ListObjectsV2" | "HeadBucket"
        );
        let public = read
            && self
                .store
                .bucket(&bucket)
                .await
                .map_err(object_error)?
                .is_some_and(|b| b.public_read);
        if public {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "Signature is required"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts_name_buckets_under_the_domain_only() {
        let v = VirtualHosts::new("s3.example.com");
        assert_eq!(v.bucket("b1.s3.example.com").as_deref(), Some("b1"));
        assert_eq!(v.bucket("B1.S3.Example.com:9000").as_deref(), Some("b1"));
        assert_eq!(v.bucket("a.b.s3.example.com").as_deref(), Some("a.b"));
        for path_style in [
            "s3.example.com",
            "s3.example.com:9000",
            "10.0.0.5:9000",
            "[::1]:9000",
            "evil.com",
            "xs3.example.com",
            ".s3.example.com",
        ] {
            assert_eq!(v.bucket(path_style), None, "{path_style}");
        }
    }
}
