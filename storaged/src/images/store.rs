//! The images this storage host holds: `DATA_DIR/images/{id}`, the bytes as
//! uploaded, and for a qcow2 `{id}.raw`, its raw conversion (what VMMs boot
//! and volumes start from). Files are written once, durably
//! (`virga_imagefile`: synced, renamed, the directory synced) and removed
//! with their image; the temporary files of uploads a crash cut short are
//! removed at start.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body::Body;
use storaged_proto::StoredImage;
use virga_imagefile::{Encoding, UploadError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0:?} is not an image id")]
    BadId(String),
    #[error("image {0} is not on this storage host")]
    NotFound(String),
    #[error("{0}")]
    Receive(#[from] UploadError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A Glance image id (a UUID, hyphenated, either case): also a file name.
pub fn is_image_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Suffixes of files an upload writes before renaming them into place.
const TEMPORARY: [&str; 2] = [".part", ".raw-part"];

pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// Opens (or makes) `data_dir/images`, removing what unfinished
    /// uploads left.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("images");
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if TEMPORARY.iter().any(|t| name.ends_with(t)) {
                tracing::info!(file = %name, "removing an unfinished image upload");
                std::fs::remove_file(dir.join(&*name))?;
            }
        }
        Ok(ImageStore { dir })
    }

    fn checked(id: &str) -> Result<(), ImageError> {
        if is_image_id(id) {
            Ok(())
        } else {
            Err(ImageError::BadId(id.to_owned()))
        }
    }

    fn data(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn converted(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.raw"))
    }

    /// Stores image `id`'s data from `body` (replacing what an earlier
    /// upload of it left): a qcow2 is checked and converted to raw before
    /// the answer, so a stored image is always bootable.
    pub async fn receive<B>(
        &self,
        id: &str,
        body: B,
        disk_format: &str,
        encoding: Encoding,
        max_bytes: u64,
    ) -> Result<StoredImage, ImageError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        Self::checked(id)?;
        self.delete(id).await?;
        let data = self.data(id);
        let stored = virga_imagefile::store(body, &data, max_bytes, encoding).await?;
        let virtual_size = if disk_format == "qcow2" {
            match virga_imagefile::qcow2_to_raw(&data, &self.converted(id)).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&data).await;
                    return Err(e.into());
                }
            }
        } else {
            stored.size
        };
        Ok(StoredImage {
            size: stored.size,
            md5: stored.md5_hex,
            sha512: stored.sha512_hex,
            virtual_size,
        })
    }

    /// The bytes as uploaded.
    pub fn open_data(&self, id: &str) -> Result<std::fs::File, ImageError> {
        Self::checked(id)?;
        std::fs::File::open(self.data(id)).map_err(|e| self.missing(id, e))
    }

    /// The raw disk: the conversion of a qcow2, else the upload itself.
    pub fn open_raw(&self, id: &str) -> Result<std::fs::File, ImageError> {
        Self::checked(id)?;
        match std::fs::File::open(self.converted(id)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.open_data(id),
            other => other.map_err(|e| self.missing(id, e)),
        }
    }

    /// Where the raw disk is: the conversion of a qcow2, else the upload
    /// itself.
    pub fn raw_path(&self, id: &str) -> Result<PathBuf, ImageError> {
        Self::checked(id)?;
        [self.converted(id), self.data(id)]
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| ImageError::NotFound(id.to_owned()))
    }

    fn missing(&self, id: &str, e: std::io::Error) -> ImageError {
        match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::NotFound(id.to_owned()),
            _ => ImageError::Io(e),
        }
    }

    /// Removes image `id`'s data (nothing when there is none).
    pub async fn delete(&self, id: &str) -> Result<(), ImageError> {
        Self::checked(id)?;
        for path in [self.converted(id), self.data(id)] {
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    const ID: &str = "0b6ee4a4-5c2e-4a57-9d43-1f7b1c9f4c11";

    #[test]
    fn ids_are_uuids_and_nothing_else() {
        assert!(is_image_id(ID));
        assert!(is_image_id(&ID.to_uppercase()));
        for bad in [
            "",
            "../etc/passwd",
            &ID[..35],
            &format!("{ID}x"),
            &ID.replace('-', "/"),
        ] {
            assert!(!is_image_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_image_is_stored_served_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let bytes = vec![5u8; 100_000];
        let stored = store
            .receive(
                ID,
                Full::new(Bytes::from(bytes.clone())),
                "raw",
                Encoding::Plain,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!((stored.size, stored.virtual_size), (100_000, 100_000));
        assert_eq!(stored.md5.len(), 32);
        let read = |f: std::fs::File| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut v).unwrap();
            v
        };
        assert_eq!(read(store.open_raw(ID).unwrap()), bytes);
        assert_eq!(read(store.open_data(ID).unwrap()), bytes);
        store.delete(ID).await.unwrap();
        store.delete(ID).await.unwrap();
        assert!(matches!(store.open_raw(ID), Err(ImageError::NotFound(_))));
        assert!(matches!(
            store.open_raw("../images"),
            Err(ImageError::BadId(_))
        ));
    }

    #[tokio::test]
    async fn too_much_or_a_bad_qcow2_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let big = Full::new(Bytes::from(vec![1u8; 5000]));
        match store.receive(ID, big, "raw", Encoding::Plain, 4096).await {
            Err(ImageError::Receive(UploadError::TooLarge(4096))) => {}
            other => panic!("{other:?}"),
        }
        let bogus = Full::new(Bytes::from_static(b"not a qcow2"));
        match store
            .receive(ID, bogus, "qcow2", Encoding::Plain, 4096)
            .await
        {
            Err(ImageError::Receive(UploadError::Format(_))) => {}
            other => panic!("{other:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn unfinished_uploads_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        for name in [
            format!("{ID}.part"),
            format!("{ID}.raw-part"),
            ID.to_owned(),
        ] {
            std::fs::write(dir.path().join("images").join(name), b"x").unwrap();
        }
        ImageStore::open(dir.path()).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [ID]);
    }
}
