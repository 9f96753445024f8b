//! The picker on small synthetic disks, built as distributions lay theirs
//! out (see `common`). Broken disks end in an error that says why, never a
//! panic.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;
use virga_bootpick::{pick, Limits, PickError};

#[test]
fn a_debian_layout_boots_grubs_default_entry() {
    let grub = debian_grub(ROOT_UUID, "/boot", "6.1.0-27-cloud-amd64");
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/etc/os-release", b"ID=debian\n"),
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File("/boot/vmlinuz-6.1.0-27-cloud-amd64", b"kernel 27"),
            File("/boot/initrd.img-6.1.0-27-cloud-amd64", b"initrd 27"),
            // Newer, but not what grub boots.
            File("/boot/vmlinuz-6.1.0-28-cloud-amd64", b"kernel 28"),
            Link("/vmlinuz", "boot/vmlinuz-6.1.0-27-cloud-amd64"),
        ],
    ) else {
        return;
    };
    let disk = gpt_disk(&[root]);
    let choice = pick(&image(&disk), &Limits::default()).unwrap();
    assert_eq!(choice.kernel, b"kernel 27");
    assert_eq!(choice.initrd, b"initrd 27");
    assert_eq!(choice.cmdline, "root=PARTUUID=1234 ro console=ttyS0,115200");
    assert_eq!(choice.how, "grub.cfg entry 'Debian GNU/Linux'");
}

#[test]
fn an_ubuntu_layout_reads_its_own_boot_partition() {
    let grub = debian_grub(BOOT_UUID, "", "6.8.0-45-generic");
    let (Some(root), Some(boot)) = (
        ext4(ROOT_UUID, &[File("/etc/os-release", b"ID=ubuntu\n")]),
        ext4(
            BOOT_UUID,
            &[
                File("/grub/grub.cfg", grub.as_bytes()),
                File("/vmlinuz-6.8.0-45-generic", b"ubuntu kernel"),
                File("/initrd.img-6.8.0-45-generic", b"ubuntu initrd"),
            ],
        ),
    ) else {
        return;
    };
    let disk = gpt_disk(&[root, boot]);
    let choice = pick(&image(&disk), &Limits::default()).unwrap();
    assert_eq!(choice.kernel, b"ubuntu kernel");
    assert_eq!(choice.initrd, b"ubuntu initrd");
}

#[test]
fn boot_loader_spec_entries_come_first_newest_version_first() {
    let entry = |v: &str| {
        format!("title Fedora ({v})\nversion {v}\nlinux /vmlinuz-{v}\ninitrd /initramfs-{v}.img\noptions root=UUID={ROOT_UUID} ro\n")
    };
    let (e9, e10) = (entry("6.9.4"), entry("6.10.2"));
    let (Some(root), Some(boot)) = (
        ext4(ROOT_UUID, &[File("/etc/os-release", b"ID=fedora\n")]),
        ext4(
            BOOT_UUID,
            &[
                File("/loader/entries/f-6.9.4.conf", e9.as_bytes()),
                File("/loader/entries/f-6.10.2.conf", e10.as_bytes()),
                File("/vmlinuz-6.9.4", b"k 6.9"),
                File("/vmlinuz-6.10.2", b"k 6.10"),
                File("/initramfs-6.10.2.img", b"i 6.10"),
                File(
                    "/grub2/grub.cfg",
                    b"menuentry 'old' {\n linux /vmlinuz-6.9.4\n}\n",
                ),
            ],
        ),
    ) else {
        return;
    };
    let disk = gpt_disk(&[root, boot]);
    let choice = pick(&image(&disk), &Limits::default()).unwrap();
    assert_eq!(choice.kernel, b"k 6.10");
    assert_eq!(choice.initrd, b"i 6.10");
    assert_eq!(choice.cmdline, format!("root=UUID={ROOT_UUID} ro"));
    assert_eq!(choice.how, "Boot Loader Spec entry 'Fedora (6.10.2)'");
}

#[test]
fn without_a_loader_config_the_newest_kernel_boots_on_an_mbr_disk() {
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/etc/os-release", b"ID=debian\n"),
            File("/boot/vmlinuz-5.10.0-9-amd64", b"old"),
            File("/boot/vmlinuz-5.10.0-30-amd64", b"new"),
            File("/boot/initrd.img-5.10.0-30-amd64", b"new initrd"),
        ],
    ) else {
        return;
    };
    let disk = mbr_disk(&[root]);
    let choice = pick(&image(&disk), &Limits::default()).unwrap();
    assert_eq!(choice.kernel, b"new");
    assert_eq!(choice.initrd, b"new initrd");
    assert_eq!(choice.cmdline, format!("root=UUID={ROOT_UUID} ro"));
}

#[test]
fn a_filesystem_without_a_partition_table_boots_too() {
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/etc/hostname", b"x\n"),
            File("/boot/vmlinuz-1.0", b"k"),
        ],
    ) else {
        return;
    };
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&root).unwrap();
    let choice = pick(&image(&file), &Limits::default()).unwrap();
    assert_eq!(
        (choice.kernel.as_slice(), choice.initrd.len()),
        (&b"k"[..], 0)
    );
}

#[test]
fn broken_images_say_why_and_never_panic() {
    // Not a disk at all.
    let mut junk = tempfile::NamedTempFile::new().unwrap();
    junk.write_all(&vec![0xa5; 3 * MIB as usize]).unwrap();
    assert!(matches!(
        pick(&image(&junk), &Limits::default()),
        Err(PickError::NoFilesystem(1))
    ));
    // Empty.
    let empty = tempfile::NamedTempFile::new().unwrap();
    assert!(pick(&image(&empty), &Limits::default()).is_err());

    // No kernel anywhere; a grub.cfg naming a missing one; a symlink loop.
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/etc/os-release", b"x"),
            File(
                "/boot/grub/grub.cfg",
                b"menuentry 'gone' {\n linux /boot/vmlinuz-gone\n}\n",
            ),
            Link("/boot/vmlinuz-9", "vmlinuz-9"),
        ],
    ) else {
        return;
    };
    let disk = gpt_disk(std::slice::from_ref(&root));
    let err = pick(&image(&disk), &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Boot Loader Spec entries"), "{err}");
    assert!(err.contains("kernel /boot/vmlinuz-gone"), "{err}");
    assert!(err.contains("kernel /boot/vmlinuz-9"), "the loop: {err}");

    // An initrd over the limit is refused before it is read.
    let grub = debian_grub(ROOT_UUID, "/boot", "1");
    let Some(big) = ext4(
        ROOT_UUID,
        &[
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File("/boot/vmlinuz-1", b"k"),
            File("/boot/initrd.img-1", &[7; 5000]),
        ],
    ) else {
        return;
    };
    let disk = gpt_disk(&[big]);
    let limits = Limits {
        initrd_bytes: 4096,
        ..Limits::default()
    };
    let err = pick(&image(&disk), &limits).unwrap_err().to_string();
    assert!(
        err.contains("5000 bytes, more than the 4096 allowed"),
        "{err}"
    );

    // A disk cut short: its partitions lie beyond the end.
    let disk = gpt_disk(&[root]);
    let cut = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cut.path(),
        &std::fs::read(disk.path()).unwrap()[..(3 * MIB) as usize],
    )
    .unwrap();
    assert!(pick(&image(&cut), &Limits::default()).is_err());
}

/// Runs the sandboxed binary on `disk`: (status, stdout, stderr, kernel,
/// initrd), the outputs read from the files given as descriptors 3 and 4.
fn run_binary(
    disk: &Path,
    args: &[&str],
) -> (std::process::ExitStatus, String, String, Vec<u8>, Vec<u8>) {
    run_binary_with_base(disk, None, args)
}

/// As [`run_binary`], with `base` as descriptor 5 (for `--overlay`).
fn run_binary_with_base(
    disk: &Path,
    base: Option<&Path>,
    args: &[&str],
) -> (std::process::ExitStatus, String, String, Vec<u8>, Vec<u8>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let (k, i) = (
        kernel.as_file().try_clone().unwrap(),
        initrd.as_file().try_clone().unwrap(),
    );
    let (kfd, ifd) = (k.as_raw_fd(), i.as_raw_fd());
    let base = base.map(|b| std::fs::File::open(b).unwrap());
    let bfd = base.as_ref().map(|b| b.as_raw_fd());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_virga-bootpick"));
    cmd.args(args).stdin(std::fs::File::open(disk).unwrap());
    // SAFETY: between fork and exec only dup2, which is async-signal-safe,
    // on descriptors this process holds open.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(kfd, 3), (ifd, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(b) = bfd {
                if libc::dup2(b, 5) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        std::fs::read(kernel.path()).unwrap(),
        std::fs::read(initrd.path()).unwrap(),
    )
}

#[test]
fn the_sandboxed_binary_writes_its_choice_to_the_descriptors_it_was_given() {
    let grub = debian_grub(ROOT_UUID, "/boot", "6.1.0-27-cloud-amd64");
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File("/boot/vmlinuz-6.1.0-27-cloud-amd64", b"kernel 27"),
            File("/boot/initrd.img-6.1.0-27-cloud-amd64", b"initrd 27"),
        ],
    ) else {
        return;
    };
    let disk = gpt_disk(&[root]);
    let (status, stdout, stderr, kernel, initrd) = run_binary(disk.path(), &[]);
    assert!(status.success(), "{status}: {stderr}");
    let line: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        line["cmdline"],
        "root=PARTUUID=1234 ro console=ttyS0,115200"
    );
    assert_eq!(line["kernel_bytes"], 9);
    // What the pick cost, asked of the kernel inside the sandbox.
    assert!(line["cpu_ms"].is_u64(), "{stdout}");
    assert!(line["blocks_read"].is_u64(), "{stdout}");
    assert_eq!(
        (kernel.as_slice(), initrd.as_slice()),
        (&b"kernel 27"[..], &b"initrd 27"[..])
    );

    // A junk image: exit 1 with the reason.
    let mut junk = tempfile::NamedTempFile::new().unwrap();
    junk.write_all(&[0u8; 4096]).unwrap();
    let (status, _, stderr, _, _) = run_binary(junk.path(), &[]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.starts_with("virga-bootpick: no ext4 filesystem"),
        "{stderr}"
    );
}

#[test]
fn inside_the_sandbox_nothing_can_be_opened() {
    use std::os::unix::process::ExitStatusExt;
    let empty = tempfile::NamedTempFile::new().unwrap();
    let (status, _, stderr, _, _) = run_binary(empty.path(), &["--check-sandbox"]);
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}: {stderr}");
}

/// Makes `path` an empty qcow2 overlay of `size` bytes (as hostd does).
fn qcow2_overlay(path: &Path, size: u64) {
    use imago::FormatCreateBuilder;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    imago::qcow2::Qcow2::<imago::file::File>::create_builder(
        imago::file::File::try_from(file).unwrap(),
    )
    .size(size)
    .backing("/etc/hostname".into(), "raw".into())
    .create()
    .unwrap();
}

#[test]
fn a_root_disk_that_is_a_qcow2_overlay_is_read_through_to_its_base() {
    let grub = debian_grub(ROOT_UUID, "/boot", "6.1.0-27-cloud-amd64");
    let Some(root) = ext4(
        ROOT_UUID,
        &[
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File("/boot/vmlinuz-6.1.0-27-cloud-amd64", b"kernel 27"),
            File("/boot/initrd.img-6.1.0-27-cloud-amd64", b"initrd 27"),
        ],
    ) else {
        return;
    };
    let disk = gpt_disk(&[root]);
    let len = std::fs::metadata(disk.path()).unwrap().len();
    let dir = tempfile::tempdir().unwrap();

    // Nothing written yet: everything comes from the base.
    let fresh = dir.path().join("fresh.qcow2");
    qcow2_overlay(&fresh, len + (1 << 20));
    let (status, stdout, stderr, kernel, _) =
        run_binary_with_base(&fresh, Some(disk.path()), &["--overlay"]);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stdout.contains("root=PARTUUID=1234"), "{stdout}");
    assert_eq!(kernel, b"kernel 27");

    // Over an empty base, the whole disk written into the overlay.
    let zeros = dir.path().join("zeros.raw");
    std::fs::write(&zeros, vec![0u8; len as usize]).unwrap();
    let written = dir.path().join("written.qcow2");
    qcow2_overlay(&written, len);
    {
        use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&written)
            .unwrap();
        let qcow2 = imago::qcow2::Qcow2::<imago::file::File>::builder(
            imago::file::File::try_from(file).unwrap(),
        )
        .write(true)
        .backing(None)
        .open(DenyImplicitOpenGate::default())
        .unwrap();
        let access = FormatAccess::new(qcow2);
        access
            .write(&std::fs::read(disk.path()).unwrap()[..], 0)
            .unwrap();
        access.flush().unwrap();
    }
    let (status, _, stderr, kernel, initrd) =
        run_binary_with_base(&written, Some(&zeros), &["--overlay"]);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        (kernel.as_slice(), initrd.as_slice()),
        (&b"kernel 27"[..], &b"initrd 27"[..])
    );

    // The same overlay over the empty base, read as a raw disk: no
    // filesystem (its header is not taken for a format without --overlay).
    let (status, _, stderr, _, _) = run_binary(&written, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
}
