//! Writing initramfs archives (cpio newc, uncompressed: the kernel unpacks it
//! without spending guest CPU time on decompression).

use std::io::Write;
use std::path::Path;

use cpio::NewcBuilder;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// An archive under construction; parents must be added before their children.
pub struct Archive<W: Write> {
    /// cpio's entry writer takes the output by value and hands it back when done.
    out: Option<W>,
    next_ino: u32,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Archive {
            out: Some(out),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name}: larger than 4 GiB")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let out = self
            .out
            .take()
            .ok_or_else(|| std::io::Error::other("archive output lost after an error"))?;
        let mut w = NewcBuilder::new(name.trim_start_matches('/'))
            .ino(ino)
            .mode(mode)
            .nlink(if mode & S_IFDIR != 0 { 2 } else { 1 })
            .write(out, size);
        w.write_all(data)?;
        self.out = Some(w.finish()?);
        Ok(())
    }

    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, &[])
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, S_IFREG | mode, data)
    }

    /// Copies a host file, keeping its permission bits.
    pub fn host_file(&mut self, name: &str, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
        self.file(name, mode, &data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes())
    }

    /// Creates `path` and every missing parent directory, tracking what exists.
    pub fn dirs(&mut self, existing: &mut Vec<String>, path: &str) -> std::io::Result<()> {
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            if !existing.contains(&prefix) {
                self.dir(&prefix)?;
                existing.push(prefix.clone());
            }
        }
        Ok(())
    }

    pub fn finish(self) -> std::io::Result<W> {
        let out = self
            .out
            .ok_or_else(|| std::io::Error::other("archive output lost after an error"))?;
        cpio::newc::trailer(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_reader() {
        let mut a = Archive::new(Vec::new());
        let mut existing = Vec::new();
        a.dirs(&mut existing, "/lib/modules").unwrap();
        a.dirs(&mut existing, "/lib/firmware").unwrap();
        a.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        a.symlink("/bin/sh", "busybox").unwrap();
        let bytes = a.finish().unwrap();

        let mut names = Vec::new();
        let mut rest = &bytes[..];
        loop {
            let r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            names.push((r.entry().name().to_owned(), r.entry().mode()));
            rest = r.finish().unwrap();
        }
        assert_eq!(
            names,
            vec![
                ("lib".to_owned(), S_IFDIR | 0o755),
                ("lib/modules".to_owned(), S_IFDIR | 0o755),
                ("lib/firmware".to_owned(), S_IFDIR | 0o755),
                ("init".to_owned(), S_IFREG | 0o755),
                ("bin/sh".to_owned(), S_IFLNK | 0o777),
            ]
        );
    }
}
