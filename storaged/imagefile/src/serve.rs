//! Sending an image's bytes: a file as it is, or as a sparse stream (its
//! data, not its holes), read on tokio's blocking threads a chunk at a time
//! into a channel a few chunks deep, never whole in memory. A read error
//! ends the body short of its `Content-Length`, so the receiver sees a
//! broken transfer, not a smaller image.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

/// Bytes read at once.
const CHUNK: usize = 256 << 10;

/// A response body fed by a channel.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A file's bytes as they are, and its length.
pub async fn plain(file: tokio::fs::File) -> (ChannelBody, Option<u64>) {
    use tokio::io::AsyncReadExt;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut file = file;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return; // the receiver went away
                    }
                }
            }
        }
    });
    (ChannelBody(rx), len)
}

/// A disk image as a sparse stream (`hostd_proto::sparse`), and the
/// stream's length.
pub async fn sparse(file: std::fs::File) -> std::io::Result<(ChannelBody, u64)> {
    // Finding the extents takes a system call or two per extent.
    let reader = tokio::task::spawn_blocking(move || hostd_proto::sparse::SparseReader::new(file))
        .await
        .map_err(std::io::Error::other)??;
    let len = reader.encoded_len();
    let (rx, _task) = hostd_proto::sparse::spawn_reader(reader, CHUNK);
    Ok((ChannelBody(rx), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_file_comes_back_whole_and_as_a_sparse_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mut image = vec![0u8; 3 << 20];
        image[..4096].fill(7);
        image[(2 << 20)..(2 << 20) + 10].fill(9);
        // Written as a disk image is stored: the zero blocks as holes.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(image.len() as u64).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&image[..4096], 0).unwrap();
        file.write_all_at(&image[2 << 20..(2 << 20) + 10], 2 << 20)
            .unwrap();

        let (body, len) = plain(tokio::fs::File::open(&path).await.unwrap()).await;
        assert_eq!(len, Some(image.len() as u64));
        assert_eq!(body.collect().await.unwrap().to_bytes(), image);

        let (body, len) = sparse(std::fs::File::open(&path).unwrap()).await.unwrap();
        let stream = body.collect().await.unwrap().to_bytes();
        assert_eq!(stream.len() as u64, len);
        assert!(stream.len() < image.len() / 2, "holes are not sent");
        let back = hostd_proto::sparse::decode_all(&stream, 1 << 30).unwrap();
        assert_eq!(back, image);
    }
}
