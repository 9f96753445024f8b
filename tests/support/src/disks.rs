//! Synthetic disks as distributions lay theirs out, for the tests of what
//! reads them (the boot picker, hostd's root disks, the testbed's guests):
//! filesystems made by the real `mkfs.ext4 -d`, partition tables by the
//! `gpt` and `mbrman` crates.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

/// A file or symbolic link in a filesystem to make.
pub enum Node<'a> {
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
}

pub use Node::{File, Link};

/// An ext4 filesystem of 8 MiB with `uuid` holding `nodes`, or None (the test
/// skips) when mkfs.ext4 is missing.
pub fn ext4(uuid: &str, nodes: &[Node]) -> Option<Vec<u8>> {
    ext4_of(8, uuid, nodes)
}

/// [`ext4`] of `mib` MiB.
pub fn ext4_of(mib: u64, uuid: &str, nodes: &[Node]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for node in nodes {
        let (File(path, _) | Link(path, _)) = node;
        let at = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        match node {
            File(_, bytes) => std::fs::write(&at, bytes).unwrap(),
            Link(_, to) => std::os::unix::fs::symlink(to, &at).unwrap(),
        }
    }
    let image = dir.path().join("fs.img");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-d"])
        .arg(&root)
        .arg(&image)
        .arg(format!("{mib}M"))
        .output();
    match made {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            crate::tools::missing("mkfs.ext4");
            return None;
        }
    }
    Some(std::fs::read(&image).unwrap())
}

/// A GPT disk: a 1 MiB BIOS-boot partition and an ESP of junk first (as
/// Debian's genericcloud image has), then `filesystems`.
pub fn gpt_disk(filesystems: &[Vec<u8>]) -> tempfile::NamedTempFile {
    let total = 4 * MIB + filesystems.iter().map(|f| f.len() as u64).sum::<u64>() + 2 * MIB;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(total).unwrap();
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total / 512 - 1).unwrap());
    mbr.overwrite_lba0(file.as_file_mut()).unwrap();
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file.as_file().try_clone().unwrap(), None)
        .unwrap();
    disk.update_partitions(Default::default()).unwrap();
    let bios = gpt::partition_types::Type {
        guid: "21686148-6449-6E6F-744E-656564454649".parse().unwrap(),
        os: gpt::partition_types::OperatingSystem::None,
    };
    disk.add_partition("bios", MIB, bios, 0, Some(2048))
        .unwrap();
    let esp = disk
        .add_partition("esp", MIB, gpt::partition_types::EFI, 0, Some(2048))
        .unwrap();
    let mut places = vec![(esp, vec![0x5a; MIB as usize])];
    for (n, fs) in filesystems.iter().enumerate() {
        let id = disk
            .add_partition(
                &format!("fs{n}"),
                fs.len() as u64,
                gpt::partition_types::LINUX_FS,
                0,
                Some(2048),
            )
            .unwrap();
        places.push((id, fs.clone()));
    }
    let starts: Vec<(u64, Vec<u8>)> = places
        .into_iter()
        .map(|(id, bytes)| (disk.partitions()[&id].first_lba * 512, bytes))
        .collect();
    disk.write().unwrap();
    for (start, bytes) in starts {
        let f = file.as_file_mut();
        f.seek(SeekFrom::Start(start)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    file
}

/// An MBR disk with `filesystems` as primary partitions.
pub fn mbr_disk(filesystems: &[Vec<u8>]) -> tempfile::NamedTempFile {
    let total = MIB + filesystems.iter().map(|f| f.len() as u64).sum::<u64>() + MIB;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(total).unwrap();
    let mut mbr = mbrman::MBR::new_from(file.as_file_mut(), 512, [1, 2, 3, 4]).unwrap();
    let mut at = 2048u32;
    let mut places = Vec::new();
    for (n, fs) in filesystems.iter().enumerate() {
        let sectors = u32::try_from(fs.len() as u64 / 512).unwrap();
        mbr[n + 1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: at,
            sectors,
        };
        places.push((u64::from(at) * 512, fs.clone()));
        at += sectors;
    }
    mbr.write_into(file.as_file_mut()).unwrap();
    for (start, bytes) in places {
        let f = file.as_file_mut();
        f.seek(SeekFrom::Start(start)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    file
}

pub const ROOT_UUID: &str = "0b3f1a2c-0000-4000-8000-000000000001";
pub const BOOT_UUID: &str = "0b3f1a2c-0000-4000-8000-000000000002";

pub fn debian_grub(uuid: &str, prefix: &str, version: &str) -> String {
    format!(
        "set default=\"0\"\nmenuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple' {{\n\tsearch --no-floppy --fs-uuid --set=root {uuid}\n\tlinux\t{prefix}/vmlinuz-{version} root=PARTUUID=1234 ro console=ttyS0,115200\n\tinitrd\t{prefix}/initrd.img-{version}\n}}\n"
    )
}
