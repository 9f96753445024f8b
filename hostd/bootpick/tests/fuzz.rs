//! Fuzz target `bootpick`: a Debian-style disk with random bytes written over
//! its partition table and its filesystem's metadata, and random boot loader
//! configuration text. The picker must end (no hang), never panic, and never
//! hand back more than its limits allow. `cargo xtask fuzz --target bootpick`
//! runs it long.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Seek, SeekFrom, Write};

use common::*;
use proptest::prelude::*;
use virga_bootpick::loader::{bls_entry, grub_default};
use virga_bootpick::{pick, Limits};

#[derive(Debug, Clone)]
enum Case {
    /// (offset, byte) written over the disk; offsets mostly in its first
    /// MiBs, where the tables and the filesystem's metadata are.
    Disk(Vec<(u64, u8)>),
    Text(String),
}

fn case(disk_len: u64) -> impl Strategy<Value = Case> {
    let near = 0..(8 * MIB).min(disk_len);
    let anywhere = 0..disk_len;
    let write = prop_oneof![4 => (near, any::<u8>()), 1 => (anywhere, any::<u8>())];
    let text = prop_oneof![
        ".{0,400}",
        "(menuentry '[a-z]{0,3}' [{{}]? |linux /[a-z]{0,4} |initrd /x |set default=[0-9a-z\"]{0,3}|\\}|\\{|search --fs-uuid --set=root [a-f0-9-]{0,8}|\n){0,40}",
    ];
    prop_oneof![
        4 => proptest::collection::vec(write, 1..64).prop_map(Case::Disk),
        1 => text.prop_map(Case::Text),
    ]
}

#[test]
fn bootpick() {
    let grub = debian_grub(ROOT_UUID, "/boot", "6.1.0-27-cloud-amd64");
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/etc/os-release", b"ID=debian\n"),
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File("/boot/vmlinuz-6.1.0-27-cloud-amd64", &[0x4b; 3000]),
            File("/boot/initrd.img-6.1.0-27-cloud-amd64", &[0x49; 5000]),
            File(
                "/loader/entries/a.conf",
                b"linux /boot/vmlinuz-6.1.0-27-cloud-amd64\n",
            ),
            Link("/vmlinuz", "boot/vmlinuz-6.1.0-27-cloud-amd64"),
        ],
    ) else {
        return;
    };
    let pristine = std::fs::read(gpt_disk(&[root]).path()).unwrap();
    let limits = Limits {
        kernel_bytes: 4096,
        initrd_bytes: 8192,
        config_bytes: 64 << 10,
        cmdline_bytes: 512,
        entries: 32,
    };
    virga_test_support::fuzz::run("bootpick", case(pristine.len() as u64), |c| {
        match c {
            Case::Text(text) => {
                let _ = grub_default(&text);
                let _ = bls_entry(&text, "x.conf");
            }
            Case::Disk(writes) => {
                let mut file = tempfile::NamedTempFile::new().unwrap();
                file.write_all(&pristine).unwrap();
                for (at, byte) in writes {
                    file.seek(SeekFrom::Start(at)).unwrap();
                    file.write_all(&[byte]).unwrap();
                }
                let disk = image(&file);
                let limits = limits.clone();
                let result =
                    virga_test_support::fuzz::within("pick", move || pick(&disk, &limits))?;
                if let Ok(choice) = result {
                    prop_assert!(choice.kernel.len() <= 4096);
                    prop_assert!(choice.initrd.len() <= 8192);
                    prop_assert!(choice.cmdline.len() <= 512);
                }
            }
        }
        Ok(())
    });
}
