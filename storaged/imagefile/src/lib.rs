//! Receiving an image's bytes: streamed from a request body to a temporary
//! file next to its final place, hashed on the way, never held in memory
//! whole, and durable (synced, renamed, its directory synced) before it is
//! reported stored. A qcow2 upload is checked and converted to the raw file
//! the VMM boots. [`serve`] sends image files; [`download`] fetches one;
//! [`clone`] copies one on the same filesystem.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use sha2::Sha512;

pub mod clone;
pub mod download;
pub mod serve;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the image is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("reading the upload: {0}")]
    Body(String),
    #[error("storing the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Format(String),
}

/// What was stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub md5_hex: String,
    pub sha512_hex: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How an upload's bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The image's bytes as they are (clients' uploads).
    Plain,
    /// A sparse stream (`hostd_proto::sparse`: hosts' snapshots).
    Sparse,
}

/// Streams `body` into `dest` (via `dest.part`, renamed at the end, once
/// its data is on stable storage).
pub async fn store<B>(
    body: B,
    dest: &Path,
    max_bytes: u64,
    encoding: Encoding,
) -> Result<Stored, UploadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let part = dest.with_extension("part");
    let result = match encoding {
        Encoding::Plain => write(body, &part, max_bytes).await,
        Encoding::Sparse => write_sparse(body, &part, max_bytes).await,
    };
    match result {
        Ok(stored) => {
            tokio::fs::rename(&part, dest).await?;
            sync_parent(dest).await?;
            Ok(stored)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

/// Stores a plain upload with holes where its blocks are zero (a raw disk
/// image is mostly free space; the hosts it is sent to skip the holes).
async fn write<B>(mut body: B, part: &Path, max_bytes: u64) -> Result<Stored, UploadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut writer = hostd_proto::sparse::HoleWriter::new(std::fs::File::create(part)?);
    let (mut md5, mut sha) = (Md5::new(), Sha512::new());
    let mut size = 0u64;
    let joined = |e: tokio::task::JoinError| UploadError::Io(std::io::Error::other(e));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UploadError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > max_bytes {
            return Err(UploadError::TooLarge(max_bytes));
        }
        md5.update(&data);
        sha.update(&data);
        writer = tokio::task::spawn_blocking(move || writer.push(&data).map(|()| writer))
            .await
            .map_err(joined)??;
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(joined)??;
    Ok(Stored {
        size,
        md5_hex: hex(&md5.finalize()),
        sha512_hex: hex(&sha.finalize()),
    })
}

/// Zeros to hash a hole with.
static ZEROS: [u8; 256 << 10] = [0; 256 << 10];

/// Writes a sparse stream's data at its offsets (the holes stay holes);
/// the checksums cover the whole image, zeros of the holes included, as
/// they would for the plain bytes.
async fn write_sparse<B>(mut body: B, part: &Path, max_bytes: u64) -> Result<Stored, UploadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use hostd_proto::sparse::{Decoder, Piece, SparseError};
    use std::os::unix::fs::FileExt;
    let file = std::sync::Arc::new(std::fs::File::create(part)?);
    let mut decoder = Decoder::new(max_bytes);
    let mut hashes = Some((Md5::new(), Sha512::new()));
    let mut size = 0u64;
    let joined = |e: tokio::task::JoinError| UploadError::Io(std::io::Error::other(e));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UploadError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let pieces = decoder.feed(data).map_err(|e| match e {
            SparseError::TooLarge { .. } => UploadError::TooLarge(max_bytes),
            e => UploadError::Format(format!("the sparse stream: {e}")),
        })?;
        for piece in pieces {
            match piece {
                Piece::Size(n) => {
                    size = n;
                    file.set_len(n)?;
                }
                Piece::Data { offset, bytes } => {
                    if let Some((md5, sha)) = hashes.as_mut() {
                        md5.update(&bytes);
                        sha.update(&bytes);
                    }
                    let file = file.clone();
                    tokio::task::spawn_blocking(move || file.write_all_at(&bytes, offset))
                        .await
                        .map_err(joined)??;
                }
                Piece::Zeros { len, .. } if len <= ZEROS.len() as u64 => {
                    if let Some((md5, sha)) = hashes.as_mut() {
                        md5.update(&ZEROS[..len as usize]);
                        sha.update(&ZEROS[..len as usize]);
                    }
                }
                Piece::Zeros { len, .. } => {
                    // Gigabytes of zeros take seconds to hash: off the
                    // runtime's threads.
                    let (mut md5, mut sha) = hashes.take().unwrap_or_default();
                    hashes = Some(
                        tokio::task::spawn_blocking(move || {
                            let mut left = len;
                            while left > 0 {
                                let n = left.min(ZEROS.len() as u64) as usize;
                                md5.update(&ZEROS[..n]);
                                sha.update(&ZEROS[..n]);
                                left -= n as u64;
                            }
                            (md5, sha)
                        })
                        .await
                        .map_err(joined)?,
                    );
                }
                Piece::End => {}
            }
        }
    }
    decoder
        .finish()
        .map_err(|e| UploadError::Body(format!("the sparse stream: {e}")))?;
    let synced = file.clone();
    tokio::task::spawn_blocking(move || synced.sync_all())
        .await
        .map_err(joined)??;
    let (md5, sha) = hashes.unwrap_or_default();
    Ok(Stored {
        size,
        md5_hex: hex(&md5.finalize()),
        sha512_hex: hex(&sha.finalize()),
    })
}

/// The largest disk a qcow2 upload may describe (its virtual size).
pub const MAX_VIRTUAL_SIZE: u64 = 2 << 40;
/// How long qemu-img may take over one step of a conversion.
const QEMU_IMG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs qemu-img with a deadline; it is killed if the deadline passes.
async fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<std::process::Output, UploadError> {
    let child = tokio::process::Command::new("qemu-img")
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(QEMU_IMG_TIMEOUT, child).await {
        // Not the image's fault: a host without qemu-img (qemu-utils).
        Ok(out) => out.map_err(|e| {
            UploadError::Io(std::io::Error::new(
                e.kind(),
                format!("running qemu-img (Debian's qemu-utils) on this host: {e}"),
            ))
        }),
        Err(_) => Err(UploadError::Format(format!(
            "qemu-img took longer than {QEMU_IMG_TIMEOUT:?}"
        ))),
    }
}

/// Why a qcow2 image is refused before it is converted, from `qemu-img
/// info`'s JSON: a backing file or an external data file would make qemu-img
/// read a file of the storing host into the image (and so into anyone's
/// download of it: OSSA-2015-014, CVE-2022-47951), and an absurd virtual size
/// would fill its disk.
fn refusal(info: &serde_json::Value) -> Option<String> {
    if let Some(backing) = info
        .get("backing-filename")
        .or(info.get("full-backing-filename"))
    {
        return Some(format!(
            "qcow2 images with a backing file ({backing}) are refused"
        ));
    }
    if let Some(data_file) = info.pointer("/format-specific/data/data-file") {
        return Some(format!(
            "qcow2 images with an external data file ({data_file}) are refused"
        ));
    }
    match info["virtual-size"].as_u64() {
        None => Some("qemu-img info gave no virtual size".into()),
        Some(v) if v > MAX_VIRTUAL_SIZE => Some(format!(
            "a virtual size of {v} bytes is more than the {MAX_VIRTUAL_SIZE} allowed"
        )),
        Some(_) => None,
    }
}

/// Converts a qcow2 upload into the raw file the VMM boots (qemu-img, from
/// Debian's qemu-utils) and returns its virtual size.
pub async fn qcow2_to_raw(src: &Path, dest: &Path) -> Result<u64, UploadError> {
    let info = qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        src.as_os_str(),
    ])
    .await?;
    if !info.status.success() {
        return Err(UploadError::Format(format!(
            "not a valid qcow2 image: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        )));
    }
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)
        .map_err(|e| UploadError::Format(format!("qemu-img info: {e}")))?;
    if let Some(why) = refusal(&info) {
        return Err(UploadError::Format(why));
    }
    let virtual_size = info["virtual-size"].as_u64().unwrap_or_default();
    let part: PathBuf = dest.with_extension("raw-part");
    let out = qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        src.as_os_str(),
        part.as_os_str(),
    ])
    .await;
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    if !out.status.success() {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(UploadError::Format(format!(
            "converting qcow2 to raw: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let synced = part.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(synced)?.sync_all())
        .await
        .map_err(|e| UploadError::Io(std::io::Error::other(e)))??;
    tokio::fs::rename(&part, dest).await?;
    sync_parent(dest).await?;
    Ok(virtual_size)
}

/// Makes a rename into `path`'s directory durable.
async fn sync_parent(path: &Path) -> Result<(), UploadError> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(|e| UploadError::Io(std::io::Error::other(e)))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests() {
        assert_eq!(hex(&Md5::digest(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(&hex(&Sha512::digest(b""))[..16], "cf83e1357eefb8bd");
    }

    #[test]
    fn backing_files_data_files_and_huge_disks_are_refused() {
        let ok = serde_json::json!({"virtual-size": 8u64 << 20, "format": "qcow2"});
        assert_eq!(refusal(&ok), None);
        let backed = serde_json::json!({"virtual-size": 1, "backing-filename": "/etc/shadow"});
        assert!(refusal(&backed).unwrap().contains("backing file"));
        let data = serde_json::json!({"virtual-size": 1,
            "format-specific": {"type": "qcow2", "data": {"data-file": "/etc/shadow"}}});
        assert!(refusal(&data).unwrap().contains("data file"));
        let huge = serde_json::json!({"virtual-size": MAX_VIRTUAL_SIZE + 1});
        assert!(refusal(&huge).unwrap().contains("virtual size"));
        assert!(refusal(&serde_json::json!({})).is_some());
    }

    /// With qemu-img (cargo xtask test installs it): an image whose backing
    /// file is a host file is refused, and that file's bytes go nowhere.
    #[tokio::test]
    async fn a_qcow2_backed_by_a_host_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, vec![b's'; 1 << 20]).unwrap();
        let image = dir.path().join("evil.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&secret)
            .arg(&image)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            assert!(
                std::env::var_os("VIRGA_REQUIRE_TOOLS").is_none(),
                "qemu-img is required but missing"
            );
            eprintln!("skipping: qemu-img is not installed");
            return;
        }
        let out = dir.path().join("out");
        match qcow2_to_raw(&image, &out).await {
            Err(UploadError::Format(why)) => assert!(why.contains("backing file"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!out.exists() && !out.with_extension("raw-part").exists());
    }

    #[tokio::test]
    async fn qcow2_conversion_checks_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus");
        std::fs::write(&bogus, b"not qcow2 at all").unwrap();
        match qcow2_to_raw(&bogus, &dir.path().join("out")).await {
            Err(UploadError::Format(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("out").exists());
    }
}
