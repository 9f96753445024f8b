//! Config drives: what cloud-init reads of an instance (its id, name, keys,
//! user data), with no network service involved. Written as Nova writes one:
//! a vfat filesystem labelled `config-2` holding `openstack/latest/` and
//! `openstack/2012-08-10/` (the oldest version cloud-init asks for), attached
//! read-only after the root disk.

use std::io::{self, Write};
use std::path::Path;

use base64::Engine;
use hostd_proto::instance::ConfigDrive;

/// Nova's limit on user data: 65535 bytes of base64.
pub const MAX_USER_DATA_BASE64: usize = 65535;
/// Most JSON the three metadata documents may take together.
const MAX_JSON_BYTES: usize = 256 << 10;
/// The filesystem's size: room for the documents with plenty to spare; the
/// file is sparse.
const DRIVE_BYTES: u64 = 4 << 20;
const LABEL: [u8; 11] = *b"config-2   ";
/// The metadata versions written, each a full copy (they are small).
const VERSIONS: [&str; 2] = ["latest", "2012-08-10"];

/// Checks what hostd writes before anything is made.
pub fn check(drive: &ConfigDrive) -> Result<(), String> {
    if let Some(data) = &drive.user_data {
        if data.len() > MAX_USER_DATA_BASE64 {
            return Err(format!(
                "config_drive.user_data: at most {MAX_USER_DATA_BASE64} bytes of base64"
            ));
        }
        decode(data)?;
    }
    let json = documents(drive).map_err(|e| format!("config_drive: {e}"))?;
    let total: usize = json.iter().map(|(_, d)| d.len()).sum();
    if total > MAX_JSON_BYTES {
        return Err(format!(
            "config_drive: at most {MAX_JSON_BYTES} bytes of metadata"
        ));
    }
    Ok(())
}

fn decode(data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("config_drive.user_data is not base64: {e}"))
}

/// The JSON documents, by file name.
fn documents(drive: &ConfigDrive) -> serde_json::Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(vec![
        ("meta_data.json", serde_json::to_vec(&drive.meta_data)?),
        ("vendor_data.json", serde_json::to_vec(&drive.vendor_data)?),
        ("vendor_data2.json", b"{}".to_vec()),
        (
            "network_data.json",
            serde_json::to_vec(&drive.network_data)?,
        ),
    ])
}

/// Writes the config drive to `path` (replaced if present).
pub fn write(drive: &ConfigDrive, path: &Path) -> io::Result<()> {
    check(drive).map_err(io::Error::other)?;
    let user_data = match &drive.user_data {
        Some(d) => Some(decode(d).map_err(io::Error::other)?),
        None => None,
    };
    let part = path.with_extension("part");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&part)?;
    file.set_len(DRIVE_BYTES)?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new().volume_label(LABEL),
    )?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
        {
            let openstack = fs.root_dir().create_dir("openstack")?;
            for version in VERSIONS {
                let dir = openstack.create_dir(version)?;
                for (name, bytes) in documents(drive)? {
                    dir.create_file(name)?.write_all(&bytes)?;
                }
                if let Some(data) = &user_data {
                    dir.create_file("user_data")?.write_all(data)?;
                }
            }
        }
        fs.unmount()?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&part, path)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn drive() -> ConfigDrive {
        let meta = serde_json::json!({
            "uuid": "7d5e6a1c-0000-4000-8000-000000000001",
            "name": "vm1",
            "hostname": "vm1",
            "public_keys": {"mykey": "ssh-ed25519 AAAA test@virga"},
        });
        ConfigDrive {
            meta_data: meta.as_object().unwrap().clone(),
            user_data: Some(
                base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n"),
            ),
            ..Default::default()
        }
    }

    fn read(fs: &fatfs::FileSystem<&mut std::fs::File>, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        fs.root_dir()
            .open_file(path)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_drive_holds_novas_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config-drive.img");
        write(&drive(), &path).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "config-2");
        for version in VERSIONS {
            let meta: serde_json::Value =
                serde_json::from_slice(&read(&fs, &format!("openstack/{version}/meta_data.json")))
                    .unwrap();
            assert_eq!(meta["hostname"], "vm1");
            assert_eq!(meta["public_keys"]["mykey"], "ssh-ed25519 AAAA test@virga");
            assert_eq!(
                read(&fs, &format!("openstack/{version}/user_data")),
                b"#!/bin/sh\necho hi\n"
            );
            assert_eq!(
                read(&fs, &format!("openstack/{version}/network_data.json")),
                b"{}"
            );
        }
        drop(fs);
        // What cloud-init's ds-identify and blkid see.
        if let Ok(out) = std::process::Command::new("blkid")
            .args(["-o", "export"])
            .arg(&path)
            .output()
        {
            let out = String::from_utf8_lossy(&out.stdout);
            if !out.is_empty() {
                assert!(out.contains("LABEL=config-2"), "{out}");
                assert!(out.contains("TYPE=vfat"), "{out}");
            }
        }
    }

    #[test]
    fn bad_drives_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cd.img");
        let mut d = drive();
        d.user_data = Some("not base64!".into());
        assert!(check(&d).unwrap_err().contains("not base64"));
        assert!(write(&d, &path).is_err());
        d.user_data = Some("A".repeat(MAX_USER_DATA_BASE64 + 4));
        assert!(check(&d).unwrap_err().contains("at most"));
        let mut d = drive();
        d.meta_data.insert(
            "big".into(),
            serde_json::Value::String("x".repeat(300 << 10)),
        );
        assert!(check(&d).unwrap_err().contains("metadata"));
        assert!(!path.exists());
    }
}
