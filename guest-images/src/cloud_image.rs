//! A Debian 12 cloud image, built here from Debian's packages only, laid out
//! as Debian's own `genericcloud` image is: a GPT disk with a BIOS boot
//! partition (14), an EFI system partition (15, vfat) and the ext4 root (1),
//! the cloud kernel, systemd, cloud-init and OpenSSH, a grub.cfg in
//! grub-mkconfig's shape naming the kernel and initramfs under `/boot`, and
//! GRUB installed for BIOS and UEFI firmware (see `grub_install`). Nothing
//! in it is Virga's: it is what users upload, and it boots elsewhere too.
//!
//! Made without loop mounts or privileges beyond a chroot: `mmdebstrap`
//! installs the packages into a directory, `mkfs.ext4 -d` turns that into
//! the root filesystem, the `gpt` crate writes the partition table, the
//! `fatfs` crate the ESP, and `qemu-img` the qcow2 copy.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::debian::{run, DebianError};
use crate::gpt_layout::table_error;
use crate::grub_install::{self, GrubImages};
use crate::{io_err, ImageError};

pub const RAW: &str = "debian-12-genericcloud-amd64.raw";
pub const QCOW2: &str = "debian-12-genericcloud-amd64.qcow2";
const MANIFEST: &str = "manifest.json";

/// What is installed beyond Debian's required packages.
const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "initramfs-tools",
    "cloud-init",
    "cloud-guest-utils",
    // sfdisk, with which growpart grows a GPT partition.
    "fdisk",
    "openssh-server",
    "sudo",
    "netbase",
    "ifupdown",
    "isc-dhcp-client",
    // What Debian's own genericcloud image has and users reach for first.
    "iputils-ping",
    "curl",
    "e2fsprogs",
    // GRUB's images and modules for both firmwares; not grub-pc or
    // grub-efi-amd64, whose scripts would install to the build host's disks.
    "grub-pc-bin",
    "grub-efi-amd64-bin",
];
const SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

const MIB: u64 = 1 << 20;
/// The root filesystem's size; cloud-init grows it to the server's disk.
const ROOT_MIB: u64 = 1536;
/// Fixed ids, so that a rebuild of the same packages is the same disk.
const ROOT_FS_UUID: &str = "6b3f1c2e-0d1a-4c55-9d2e-3a9f6b3c1d21";
const ROOT_PART_UUID: &str = "7c4e2d3f-1e2b-4d66-8e3f-4b0a7c4d2e32";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudManifest {
    pub builder_revision: String,
    pub kernel_release: String,
    pub raw_bytes: u64,
    pub qcow2_bytes: u64,
    pub build_seconds: u64,
}

/// A built cloud image.
#[derive(Clone, Debug)]
pub struct CloudImage {
    pub dir: PathBuf,
    pub manifest: CloudManifest,
}

impl CloudImage {
    pub fn raw(&self) -> PathBuf {
        self.dir.join(RAW)
    }
    pub fn qcow2(&self) -> PathBuf {
        self.dir.join(QCOW2)
    }
}

/// This module's own source and GRUB's installer: a change to them rebuilds
/// the image, a change elsewhere in the crate does not.
fn revision() -> String {
    use sha2::{Digest, Sha256};
    let mut sources = Sha256::new();
    sources.update(include_str!("cloud_image.rs"));
    sources.update(include_str!("grub_install.rs"));
    sources.update(include_str!("gpt_layout.rs"));
    let hash = sources.finalize();
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads what an earlier [`build`] left in `dir`.
pub fn load(dir: &Path) -> Result<CloudImage, ImageError> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|_| ImageError::NotBuilt(dir.to_owned()))?;
    let manifest: CloudManifest =
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest { path, source })?;
    let image = CloudImage {
        dir: dir.to_owned(),
        manifest,
    };
    if !image.raw().exists() || !image.qcow2().exists() {
        return Err(ImageError::NotBuilt(dir.to_owned()));
    }
    Ok(image)
}

/// Builds the image into `dir` unless this builder already did.
pub fn build(dir: &Path, log: &dyn Fn(&str)) -> Result<CloudImage, ImageError> {
    if let Ok(image) = load(dir) {
        if image.manifest.builder_revision == revision() {
            log(&format!(
                "Debian cloud image up to date (kernel {})",
                image.manifest.kernel_release
            ));
            return Ok(image);
        }
    }
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let root = dir.join("root");
    remove_dir(&root)?;
    log("Debian cloud image: installing packages with mmdebstrap");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        "--aptopt=Acquire::Languages \"none\"",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ])
    .arg(format!("--include={}", PACKAGES.join(",")))
    .arg("bookworm")
    .arg(&root)
    .args(SOURCES);
    run(&mut cmd)?;
    let release = kernel_release(&root)?;
    configure(&root, &release)?;
    let grub = grub_install::prepare(&root, ROOT_FS_UUID)?;

    log("Debian cloud image: making the filesystems and the disk");
    let fs = dir.join("root.ext4");
    let _ = std::fs::remove_file(&fs);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-U", ROOT_FS_UUID, "-d"])
        .arg(&root)
        .arg(&fs)
        .arg(format!("{ROOT_MIB}M")))?;
    remove_dir(&root)?;
    let raw = dir.join(RAW);
    assemble(&fs, &raw, &grub)?;
    let _ = std::fs::remove_file(&fs);
    let qcow2 = dir.join(QCOW2);
    let _ = std::fs::remove_file(&qcow2);
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2))?;

    let manifest = CloudManifest {
        builder_revision: revision(),
        kernel_release: release,
        raw_bytes: std::fs::metadata(&raw).map_err(io_err(&raw))?.len(),
        qcow2_bytes: std::fs::metadata(&qcow2).map_err(io_err(&qcow2))?.len(),
        build_seconds: started.elapsed().as_secs(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
        path: dir.join(MANIFEST),
        source,
    })?;
    crate::write_atomically(&dir.join(MANIFEST), &json)?;
    log(&format!(
        "Debian cloud image written to {} in {} s ({} MiB raw, {} MiB qcow2)",
        dir.display(),
        manifest.build_seconds,
        manifest.raw_bytes / MIB,
        manifest.qcow2_bytes / MIB
    ));
    Ok(CloudImage {
        dir: dir.to_owned(),
        manifest,
    })
}

fn remove_dir(dir: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// The one kernel under `root/boot`.
fn kernel_release(root: &Path) -> Result<String, ImageError> {
    let boot = root.join("boot");
    let mut releases: Vec<String> = std::fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .collect();
    releases.sort();
    releases.pop().ok_or_else(|| {
        DebianError::Unexpected(format!("no vmlinuz-* in {}", boot.display())).into()
    })
}

/// What Debian's image build does after installing: the root's fstab and
/// grub.cfg, and nothing that must differ between servers (host keys,
/// machine id, the build host's name and resolver).
fn configure(root: &Path, release: &str) -> Result<(), ImageError> {
    let write = |rel: &str, text: &str| -> Result<(), ImageError> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&path, text).map_err(io_err(&path))
    };
    write(
        "etc/fstab",
        &format!(
            "PARTUUID={ROOT_PART_UUID} / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1\n"
        ),
    )?;
    write("etc/hostname", "localhost\n")?;
    write("etc/machine-id", "")?;
    write("etc/resolv.conf", "")?;
    // The system locale cloud-init keeps: left to its default (en_US.UTF-8),
    // it runs Debian's locale-gen, which ignores its argument (nothing is
    // enabled in /etc/locale.gen), and update-locale then fails on the
    // console; in the testbed that took 55 s of every first boot.
    write("etc/default/locale", "LANG=C.UTF-8\n")?;
    write("etc/cloud/cloud.cfg.d/01_locale.cfg", "locale: C.UTF-8\n")?;
    write("boot/grub/grub.cfg", &grub_cfg(release))?;
    let ssh = root.join("etc/ssh");
    for entry in std::fs::read_dir(&ssh).map_err(io_err(&ssh))?.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("ssh_host_"))
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// grub.cfg as grub-mkconfig writes it for one kernel, with Debian's cloud
/// command line.
fn grub_cfg(release: &str) -> String {
    format!(
        r#"#
# DO NOT EDIT THIS FILE
#
# It is automatically generated by grub-mkconfig using templates
# from /etc/grub.d and settings from /etc/default/grub
#
set default="0"
if [ x"${{feature_menuentry_id}}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
function load_video {{
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  else
    insmod efi_gop
    insmod efi_uga
    insmod ieee1275_fb
    insmod vbe
    insmod vga
    insmod video_bochs
    insmod video_cirrus
  fi
}}
serial --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-{ROOT_FS_UUID}' {{
	load_video
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root {ROOT_FS_UUID}
	echo	'Loading Linux {release} ...'
	linux	/boot/vmlinuz-{release} root=PARTUUID={ROOT_PART_UUID} ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-{release}
}}
"#
    )
}

/// Writes the disk: GPT with BIOS boot (14, 3 MiB at 1 MiB, GRUB's core
/// image), ESP (15, 124 MiB, vfat with GRUB's EFI image) and the root (1,
/// from `fs`), as Debian's genericcloud image lays them out; GRUB's boot
/// code in the MBR.
fn assemble(fs: &Path, raw: &Path, grub: &GrubImages) -> Result<(), ImageError> {
    let fs_len = std::fs::metadata(fs).map_err(io_err(fs))?.len();
    let root_start = 128 * MIB;
    let total = root_start + fs_len + MIB;
    let part = raw.with_extension("part");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&part)
        .map_err(io_err(&part))?;
    file.set_len(total).map_err(io_err(&part))?;
    let mut disk = crate::gpt_layout::empty_gpt(&mut file, &part, total)?;
    let bios = gpt::partition_types::Type {
        guid: BIOS_BOOT.parse().map_err(|e: uuid::Error| table_error(e))?,
        os: gpt::partition_types::OperatingSystem::None,
    };
    let lba = |bytes: u64| bytes / 512;
    disk.add_partition_at("", 14, lba(MIB), lba(3 * MIB), bios, 0)
        .map_err(table_error)?;
    disk.add_partition_at(
        "",
        15,
        lba(4 * MIB),
        lba(124 * MIB),
        gpt::partition_types::EFI,
        0,
    )
    .map_err(table_error)?;
    disk.add_partition_at(
        "",
        1,
        lba(root_start),
        lba(fs_len),
        gpt::partition_types::LINUX_FS,
        0,
    )
    .map_err(table_error)?;
    if let Some(root) = disk.partitions().get(&1).cloned() {
        let mut root = root;
        root.part_guid = ROOT_PART_UUID
            .parse()
            .map_err(|e: uuid::Error| table_error(e))?;
        let mut parts = disk.partitions().clone();
        parts.insert(1, root);
        disk.update_partitions(parts).map_err(table_error)?;
    }
    disk.write().map_err(table_error)?;

    // The ESP: a FAT filesystem with GRUB at the removable-media path.
    let mut esp = fscommon_slice(&mut file, 4 * MIB, 124 * MIB);
    fatfs::format_volume(
        &mut esp,
        fatfs::FormatVolumeOptions::new().volume_label(*b"EFI        "),
    )
    .map_err(io_err(&part))?;
    esp.seek(SeekFrom::Start(0)).map_err(io_err(&part))?;
    {
        let esp = fatfs::FileSystem::new(esp, fatfs::FsOptions::new()).map_err(io_err(&part))?;
        esp.root_dir()
            .create_dir("EFI")
            .and_then(|d| d.create_dir("BOOT"))
            .and_then(|d| d.create_file("BOOTX64.EFI"))
            .and_then(|mut f| f.write_all(&grub.efi))
            .map_err(io_err(&part))?;
        esp.unmount().map_err(io_err(&part))?;
    }

    // BIOS: core.img in the BIOS boot partition, boot.img in the MBR.
    use std::os::unix::fs::FileExt;
    let core_lba = MIB / 512;
    let grub_err = |e: String| ImageError::from(DebianError::Unexpected(format!("GRUB: {e}")));
    let core =
        grub_install::placed_core(&grub.core_img, core_lba, 3 * MIB as usize).map_err(grub_err)?;
    file.write_all_at(&core, MIB).map_err(io_err(&part))?;
    let mut mbr = vec![0u8; 512];
    file.read_exact_at(&mut mbr, 0).map_err(io_err(&part))?;
    let sector0 = grub_install::boot_sector(&grub.boot_img, &mbr, core_lba).map_err(grub_err)?;
    file.write_all_at(&sector0, 0).map_err(io_err(&part))?;

    let mut source = std::fs::File::open(fs).map_err(io_err(fs))?;
    file.seek(SeekFrom::Start(root_start))
        .map_err(io_err(&part))?;
    copy_sparse(&mut source, &mut file).map_err(io_err(&part))?;
    file.sync_all().map_err(io_err(&part))?;
    drop(file);
    std::fs::rename(&part, raw).map_err(io_err(raw))
}

/// Copies `source` to `target`'s position, seeking over all-zero blocks so
/// that the disk stays as sparse as the filesystem image.
fn copy_sparse(source: &mut std::fs::File, target: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::Read;
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for chunk in buf[..n].chunks(4096) {
            if chunk.iter().all(|b| *b == 0) {
                target.seek(SeekFrom::Current(chunk.len() as i64))?;
            } else {
                target.write_all(chunk)?;
            }
        }
    }
}

/// A window of `file` from `start`, `len` long, as a stream of its own.
fn fscommon_slice(file: &mut std::fs::File, start: u64, len: u64) -> Window<'_> {
    Window {
        file,
        start,
        len,
        at: 0,
    }
}

struct Window<'a> {
    file: &'a mut std::fs::File,
    start: u64,
    len: u64,
    at: u64,
}

impl std::io::Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = usize::try_from(self.len - self.at).unwrap_or(usize::MAX);
        let n = buf.len().min(left);
        let n = self.file.read_at(&mut buf[..n], self.start + self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = usize::try_from(self.len - self.at).unwrap_or(usize::MAX);
        if left == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("past the end of the partition"));
        }
        let n = buf.len().min(left);
        let n = self.file.write_at(&buf[..n], self.start + self.at)?;
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
        };
        match to {
            Some(n) if n <= self.len => {
                self.at = n;
                Ok(n)
            }
            _ => Err(std::io::Error::other("seek outside the partition")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_names_the_kernel_initrd_and_root_as_debian_does() {
        let cfg = grub_cfg("6.1.0-50-cloud-amd64");
        assert!(cfg.contains("set default=\"0\""));
        assert!(cfg.contains("\tlinux\t/boot/vmlinuz-6.1.0-50-cloud-amd64 root=PARTUUID="));
        assert!(cfg.contains("console=ttyS0,115200"));
        assert!(cfg.contains("\tinitrd\t/boot/initrd.img-6.1.0-50-cloud-amd64\n"));
    }

    #[test]
    fn a_window_stays_inside_its_partition() {
        use std::io::Read;
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(64).unwrap();
        let mut w = fscommon_slice(&mut f, 16, 16);
        w.write_all(&[7; 16]).unwrap();
        assert!(w.write(&[1]).is_err());
        assert!(w.seek(SeekFrom::Start(17)).is_err());
        w.seek(SeekFrom::Start(0)).unwrap();
        let mut back = [0u8; 16];
        w.read_exact(&mut back).unwrap();
        assert_eq!(back, [7; 16]);
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(&all[..16], &[0; 16]);
        assert_eq!(&all[32..], &[0; 32]);
    }
}
