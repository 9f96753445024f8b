//! Instances booted from a disk image, against the stand-in VMM: hostd makes
//! each a private root disk from the cached image, runs the real sandboxed
//! `virga-bootpick` on it before every boot (also after the guest reboots),
//! boots what the image's own grub.cfg names, attaches a config drive, and
//! keeps the root disk until the instance is deleted. An image that cannot
//! boot is refused with the picker's reason and leaves nothing behind.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use virga_test_support::disks::{debian_grub, ext4, gpt_disk, File, ROOT_UUID};

const IMAGE: &str = "0f0e0d0c-0000-4000-8000-00000000000a";
const VERSION: &str = "6.1.0-27-cloud-amd64";

/// Enough of a bzImage for the VMM's format check (the stand-in boots nothing).
fn fake_bzimage(tag: u8) -> Vec<u8> {
    let mut k = vec![tag; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// A Debian-style GPT disk whose grub.cfg boots the kernel with `extra` on
/// its command line; None when mkfs.ext4 is missing (the test skips).
fn debian_image(extra: &str) -> Option<tempfile::NamedTempFile> {
    let grub = debian_grub(ROOT_UUID, "/boot", VERSION).replace(
        "console=ttyS0,115200",
        &format!("console=ttyS0,115200 {extra}"),
    );
    let kernel = fake_bzimage(0x27);
    let root = ext4(
        ROOT_UUID,
        &[
            File("/etc/os-release", b"ID=debian\n"),
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File(&format!("/boot/vmlinuz-{VERSION}"), &kernel),
            File(&format!("/boot/initrd.img-{VERSION}"), b"initrd 27"),
        ],
    )?;
    Some(gpt_disk(&[root]))
}

fn bootpick() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_hostd")).with_file_name("virga-bootpick");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo build -p virga-bootpick)",
        p.display()
    );
    p
}

/// hostd with the stand-in VMM and the real picker, the image in its cache.
fn hostd_with(image: &tempfile::NamedTempFile) -> Hostd {
    let h = start_with_fake_vmm(&format!("bootpick_binary = \"{}\"\n", bootpick().display()));
    let cache = h.dir.path().join("state/images");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(image.path(), cache.join(IMAGE)).unwrap();
    h
}

fn disk_spec(id: &str, gib: u32) -> String {
    serde_json::json!({
        "id": id, "vcpus": 1, "memory_mib": 64,
        "root_image": IMAGE, "root_disk_gib": gib,
        "config_drive": {
            "meta_data": {"uuid": id, "hostname": "vm1", "public_keys": {"k": "ssh-ed25519 AAAA"}},
            "user_data": "IyEvYmluL3NoCmVjaG8gaGkK",
        },
    })
    .to_string()
}

fn run_dir(h: &Hostd, id: &str) -> PathBuf {
    h.dir.path().join("state/instances").join(id)
}

fn vmm_config(h: &Hostd, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run_dir(h, id).join("vmm.json")).unwrap()).unwrap()
}

#[test]
fn a_disk_image_boots_from_its_own_boot_with_a_private_root_disk() {
    let Some(image) = debian_image("") else {
        return;
    };
    let h = hostd_with(&image);
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("disk-1", 1));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "running");

    let dir = run_dir(&h, "disk-1");
    let root = dir.join("root.img");
    assert_eq!(
        std::fs::metadata(&root).unwrap().len(),
        1 << 30,
        "the size asked for"
    );
    let config = vmm_config(&h, "disk-1");
    assert_eq!(
        config["cmdline"], "root=PARTUUID=1234 ro console=ttyS0,115200",
        "grub.cfg's default entry; its serial console kept, not doubled"
    );
    let kernel = config["kernel"].as_str().unwrap();
    assert_eq!(std::fs::read(kernel).unwrap(), fake_bzimage(0x27));
    let initrd = config["initramfs"].as_str().unwrap();
    assert_eq!(std::fs::read(initrd).unwrap(), b"initrd 27");
    let disks = config["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(disks[0]["path"], root.display().to_string());
    assert_eq!(disks[0]["read_only"], false);
    assert_eq!(
        disks[1]["path"],
        dir.join("config-drive.img").display().to_string()
    );
    assert_eq!(disks[1]["read_only"], true);
    assert_eq!(
        config["on_reboot"], "exit",
        "hostd picks again after a reboot"
    );

    // What the guest writes stays across a stop and a start; the cached
    // image is untouched.
    let at = (1 << 30) - 4096;
    let mut w = std::fs::OpenOptions::new().write(true).open(&root).unwrap();
    w.seek(SeekFrom::Start(at)).unwrap();
    w.write_all(b"guest data").unwrap();
    drop(w);
    let stop = api(
        &h,
        "POST",
        "/instances/disk-1/actions/stop",
        r#"{"hard": true}"#,
    );
    assert_eq!(stop.0, 200, "{}", stop.1);
    let start = api(&h, "POST", "/instances/disk-1/actions/start", "");
    assert_eq!(
        (start.0, &start.1["starts"]),
        (200, &2.into()),
        "{}",
        start.1
    );
    let mut r = std::fs::File::open(&root).unwrap();
    r.seek(SeekFrom::Start(at)).unwrap();
    let mut got = [0u8; 10];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"guest data");
    let cached = std::fs::read(h.dir.path().join("state/images").join(IMAGE)).unwrap();
    assert_eq!(cached, std::fs::read(image.path()).unwrap());

    // A second instance of the image has its own root disk.
    let (status, second) = api(&h, "POST", "/instances", &disk_spec("disk-2", 2));
    assert_eq!(status, 201, "{second}");
    let other = run_dir(&h, "disk-2").join("root.img");
    assert_eq!(std::fs::metadata(&other).unwrap().len(), 2 << 30);

    // Deleted with the instance; the cached image stays.
    assert_eq!(api(&h, "DELETE", "/instances/disk-1", "").0, 204);
    assert!(!dir.exists(), "the root disk goes with its instance");
    assert!(h.dir.path().join("state/images").join(IMAGE).exists());
    assert_eq!(api(&h, "DELETE", "/instances/disk-2", "").0, 204);
}

#[test]
fn after_the_guest_reboots_hostd_picks_again_and_starts_a_new_vmm() {
    let Some(image) = debian_image("fake.reboot_once_after_ms=300") else {
        return;
    };
    let h = hostd_with(&image);
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("reboot-1", 1));
    assert_eq!(status, 201, "{created}");
    let record = virga_test_support::wait::until(
        "the instance to run its second VMM",
        Duration::from_secs(20),
        || {
            let (_, i) = api(&h, "GET", "/instances/reboot-1", "");
            (i["starts"] == 2 && i["state"] == "running").then_some(i)
        },
    );
    assert_eq!(record["state"], "running", "{record}");
    assert_eq!(api(&h, "DELETE", "/instances/reboot-1", "").0, 204);
}

#[test]
fn an_image_that_cannot_boot_is_refused_with_the_reason_and_leaves_nothing() {
    let Some(root) = ext4(ROOT_UUID, &[File("/etc/os-release", b"ID=debian\n")]) else {
        return;
    };
    let image = gpt_disk(&[root]);
    let h = hostd_with(&image);
    let (status, refused) = api(&h, "POST", "/instances", &disk_spec("broken-1", 1));
    assert_eq!(status, 422, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the root disk cannot boot: nothing to boot on the image"),
        "{message}"
    );
    assert_eq!(api(&h, "GET", "/instances/broken-1", "").0, 404);
    assert!(!run_dir(&h, "broken-1").exists(), "nothing left behind");

    // A root image names its own initramfs and command line.
    let mut spec: serde_json::Value = serde_json::from_str(&disk_spec("bad-2", 1)).unwrap();
    spec["cmdline"] = "console=ttyS0".into();
    let (status, bad) = api(&h, "POST", "/instances", &spec.to_string());
    assert_eq!(status, 400, "{bad}");
    let mut spec: serde_json::Value = serde_json::from_str(&disk_spec("bad-3", 1)).unwrap();
    spec["config_drive"]["user_data"] = "not base64!".into();
    let (status, bad) = api(&h, "POST", "/instances", &spec.to_string());
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("base64"),
        "{bad}"
    );
}
