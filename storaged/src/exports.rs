//! Which volumes are exported over NBD to which host, under which name.
//!
//! One file per export under `exports/`, named by the export's name (a
//! random 128-bit secret, in hex) and holding `VOLUME HOST`: the name is
//! what a client must know, and a storaged restarted keeps serving the
//! exports a compute host's kernel reconnects to. Writes are atomic
//! (temporary file, rename, directory synced).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exports under {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// An export's volume and host, as its file holds them.
type Entry = (String, String);

pub struct ExportTable {
    dir: PathBuf,
    /// One change at a time (find-or-create must not race itself).
    changing: Mutex<()>,
}

fn is_name(name: &str) -> bool {
    name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ExportTable {
    pub fn open(data_dir: &Path) -> Result<ExportTable, ExportError> {
        let dir = data_dir.join("exports");
        std::fs::create_dir_all(&dir).map_err(|source| ExportError::Io {
            dir: dir.clone(),
            source,
        })?;
        let table = ExportTable {
            dir,
            changing: Mutex::new(()),
        };
        // A crash between writing and renaming leaves a temporary file.
        for (name, _) in table.entries()? {
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(table.dir.join(name));
            }
        }
        Ok(table)
    }

    fn err(&self) -> impl Fn(std::io::Error) -> ExportError + '_ {
        |source| ExportError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Every file under `exports/` and what it holds (`None`: unreadable).
    fn entries(&self) -> Result<Vec<(String, Option<Entry>)>, ExportError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(self.err())? {
            let entry = entry.map_err(self.err())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((name.clone(), self.read(&name)));
        }
        Ok(out)
    }

    fn read(&self, name: &str) -> Option<Entry> {
        let mut text = String::new();
        std::fs::File::open(self.dir.join(name))
            .ok()?
            .take(1024)
            .read_to_string(&mut text)
            .ok()?;
        let (volume, host) = text.trim().split_once(' ')?;
        Some((volume.to_owned(), host.to_owned()))
    }

    /// The volume and host export `name` is for.
    pub fn lookup(&self, name: &str) -> Option<Entry> {
        if !is_name(name) {
            return None;
        }
        self.read(name)
    }

    /// The export of `volume` to `host`: the one there is, or a new one.
    pub fn export(&self, volume: &str, host: &str) -> Result<String, ExportError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let want = (volume.to_owned(), host.to_owned());
        if let Some((name, _)) = self
            .entries()?
            .into_iter()
            .find(|(name, e)| is_name(name) && e.as_ref() == Some(&want))
        {
            return Ok(name);
        }
        let mut secret = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(self.err())?;
        let name: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(self.err())?;
        f.write_all(format!("{volume} {host}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(self.err())?;
        std::fs::rename(&tmp, self.dir.join(&name)).map_err(self.err())?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.err())?;
        Ok(name)
    }

    /// Ends the exports of `volume` (to `host`, or to every host); gone
    /// already is fine. Connections open now are not cut.
    pub fn unexport(&self, volume: &str, host: Option<&str>) -> Result<(), ExportError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        for (name, entry) in self.entries()? {
            let Some((v, h)) = entry else { continue };
            if v == volume && host.is_none_or(|host| host == h) {
                match std::fs::remove_file(self.dir.join(&name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.err()(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_secret_names_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let t = ExportTable::open(dir.path()).unwrap();
        let a = t.export("vol-1", "host-b").unwrap();
        assert!(is_name(&a), "{a}");
        assert_eq!(
            t.export("vol-1", "host-b").unwrap(),
            a,
            "one per volume and host"
        );
        let b = t.export("vol-1", "host-c").unwrap();
        assert_ne!(a, b);
        drop(t);
        std::fs::write(dir.path().join("exports/0123.tmp"), "half").unwrap();
        let t = ExportTable::open(dir.path()).unwrap();
        assert!(!dir.path().join("exports/0123.tmp").exists());
        assert_eq!(t.lookup(&a), Some(("vol-1".into(), "host-b".into())));
        assert_eq!(t.lookup("../../etc/passwd"), None);
        assert_eq!(t.lookup(&a.to_uppercase()), None);
        t.unexport("vol-1", Some("host-b")).unwrap();
        assert_eq!(t.lookup(&a), None);
        assert!(t.lookup(&b).is_some());
        t.unexport("vol-1", None).unwrap();
        assert_eq!(t.lookup(&b), None);
        t.unexport("vol-1", None).unwrap();
    }
}
