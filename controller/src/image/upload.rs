//! Receiving an image's bytes: streamed from the request body to a temporary
//! file next to its final place, hashed on the way, never held in memory whole.

use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use md5::{Digest, Md5};
use sha2::Sha512;
use tokio::io::AsyncWriteExt;

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

/// Streams `body` into `dest` (via `dest.part`, renamed at the end).
pub async fn store(body: Incoming, dest: &Path, max_bytes: u64) -> Result<Stored, UploadError> {
    let part = dest.with_extension("part");
    let result = write(body, &part, max_bytes).await;
    match result {
        Ok(stored) => {
            tokio::fs::rename(&part, dest).await?;
            Ok(stored)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

async fn write(mut body: Incoming, part: &Path, max_bytes: u64) -> Result<Stored, UploadError> {
    let mut file = tokio::fs::File::create(part).await?;
    let (mut md5, mut sha) = (Md5::new(), Sha512::new());
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UploadError::Body(e.to_string()))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        size += data.len() as u64;
        if size > max_bytes {
            return Err(UploadError::TooLarge(max_bytes));
        }
        md5.update(data);
        sha.update(data);
        file.write_all(data).await?;
    }
    file.sync_all().await?;
    Ok(Stored {
        size,
        md5_hex: hex(&md5.finalize()),
        sha512_hex: hex(&sha.finalize()),
    })
}

/// Converts a qcow2 upload into the raw file the VMM boots (qemu-img, from
/// Debian's qemu-utils) and returns its virtual size.
pub async fn qcow2_to_raw(src: &Path, dest: &Path) -> Result<u64, UploadError> {
    let info = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(src)
        .output()
        .await
        .map_err(|e| UploadError::Format(format!("running qemu-img: {e}")))?;
    if !info.status.success() {
        return Err(UploadError::Format(format!(
            "not a valid qcow2 image: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        )));
    }
    let virtual_size = serde_json::from_slice::<serde_json::Value>(&info.stdout)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or_else(|| UploadError::Format("qemu-img info gave no virtual size".into()))?;
    let part: PathBuf = dest.with_extension("raw-part");
    let out = tokio::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(src)
        .arg(&part)
        .output()
        .await
        .map_err(|e| UploadError::Format(format!("running qemu-img: {e}")))?;
    if !out.status.success() {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(UploadError::Format(format!(
            "converting qcow2 to raw: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tokio::fs::rename(&part, dest).await?;
    Ok(virtual_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests() {
        assert_eq!(hex(&Md5::digest(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(&hex(&Sha512::digest(b""))[..16], "cf83e1357eefb8bd");
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
