//! The boot-test kernel and initramfs as a small bootable disk image: a GPT
//! disk whose one partition holds an ext4 root with `/boot/vmlinuz-R`,
//! `/boot/initrd.img-R` and a `/boot/grub/grub.cfg` in Debian's shape naming
//! them. hostd boots it as it boots a cloud image (the kernel picked from its
//! own `/boot`), so a server booted from it has a root disk of its own:
//! snapshots, backups and volumes made from it work, which a server booted
//! from the kernel image (`aki`) cannot have. It boots in the test
//! initramfs's time, where the Debian cloud image takes tens of seconds, so
//! the all-in-one's conformance run uses it.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian::run;
use crate::gpt_layout::table_error;
use crate::{io_err, ImageError};

pub const TEST_DISK: &str = "test-disk.raw";
const MIB: u64 = 1 << 20;
/// Room for the bzImage, the initramfs and ext4's own metadata.
const ROOT_MIB: u64 = 40;
const ROOT_FS_UUID: &str = "6a1c8a52-59e4-4b8e-9d5e-7a1e1d5f0c11";
/// Where the root partition starts (sectors of 512 bytes: 1 MiB).
const ROOT_START: u64 = MIB;
/// The boot-test init's ticking mode: the guest runs until it is stopped, as
/// a server does (the boot picker adds Virga's console).
pub const CMDLINE: &str =
    "reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.dumbkbd virga.mode=ticks";

/// The grub.cfg grub-mkconfig writes for one kernel (what the boot picker
/// reads), booting `cmdline`.
fn grub_cfg(release: &str, cmdline: &str) -> String {
    format!(
        "set default=\"0\"\n\
         menuentry 'Virga boot test' --class debian $menuentry_id_option 'gnulinux-simple-{ROOT_FS_UUID}' {{\n\
         \tsearch --no-floppy --fs-uuid --set=root {ROOT_FS_UUID}\n\
         \tlinux\t/boot/vmlinuz-{release} root=UUID={ROOT_FS_UUID} ro {cmdline}\n\
         \tinitrd\t/boot/initrd.img-{release}\n\
         }}\n"
    )
}

/// Writes `dir/test-disk.raw` from the kernel and initramfs.
pub fn build(
    dir: &Path,
    release: &str,
    bzimage: &Path,
    initramfs: &Path,
) -> Result<PathBuf, ImageError> {
    let staging = dir.join("test-disk-staging");
    let _ = std::fs::remove_dir_all(&staging);
    let grub_dir = staging.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).map_err(io_err(&grub_dir))?;
    std::fs::create_dir_all(staging.join("etc")).map_err(io_err(&staging))?;
    let copy = |from: &Path, to: PathBuf| std::fs::copy(from, &to).map(drop).map_err(io_err(&to));
    copy(bzimage, staging.join(format!("boot/vmlinuz-{release}")))?;
    copy(
        initramfs,
        staging.join(format!("boot/initrd.img-{release}")),
    )?;
    let write = |to: PathBuf, text: &str| std::fs::write(&to, text).map_err(io_err(&to));
    write(grub_dir.join("grub.cfg"), &grub_cfg(release, CMDLINE))?;
    write(
        staging.join("etc/os-release"),
        "PRETTY_NAME=\"Virga boot test\"\nID=virga-test\n",
    )?;

    let fs = dir.join("test-disk.ext4");
    let _ = std::fs::remove_file(&fs);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-U", ROOT_FS_UUID, "-d"])
        .arg(&staging)
        .arg(&fs)
        .arg(format!("{ROOT_MIB}M")))?;
    let _ = std::fs::remove_dir_all(&staging);
    let disk = dir.join(TEST_DISK);
    let assembled = assemble(&fs, &disk);
    let _ = std::fs::remove_file(&fs);
    assembled?;
    Ok(disk)
}

/// A GPT disk with `fs` as its one (Linux filesystem) partition.
fn assemble(fs: &Path, disk: &Path) -> Result<(), ImageError> {
    let fs_len = std::fs::metadata(fs).map_err(io_err(fs))?.len();
    let total = ROOT_START + fs_len + MIB;
    let part = disk.with_extension("part");
    let _ = std::fs::remove_file(&part);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(io_err(&part))?;
    file.set_len(total).map_err(io_err(&part))?;
    let mut table_disk = crate::gpt_layout::empty_gpt(&mut file, &part, total)?;
    table_disk
        .add_partition_at(
            "root",
            1,
            ROOT_START / 512,
            fs_len / 512,
            gpt::partition_types::LINUX_FS,
            0,
        )
        .map_err(table_error)?;
    table_disk.write().map_err(table_error)?;
    let mut source = std::fs::File::open(fs).map_err(io_err(fs))?;
    file.seek(SeekFrom::Start(ROOT_START))
        .map_err(io_err(&part))?;
    std::io::copy(&mut source, &mut file).map_err(io_err(&part))?;
    file.sync_all().map_err(io_err(&part))?;
    drop(file);
    std::fs::set_permissions(&part, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io_err(&part))?;
    std::fs::rename(&part, disk).map_err(io_err(disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_entry_names_the_files_and_the_command_line() {
        let cfg = grub_cfg("6.1.0-57-cloud-amd64", "console=ttyS0 virga.mode=ticks");
        assert!(cfg.contains("\tlinux\t/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID="));
        assert!(cfg.contains(" ro console=ttyS0 virga.mode=ticks\n"));
        assert!(cfg.contains("\tinitrd\t/boot/initrd.img-6.1.0-57-cloud-amd64\n"));
    }
}
