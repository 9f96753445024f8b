//! GRUB on a disk image, as `grub-install` leaves it for both firmwares,
//! without a loop device: so that the cloud image also boots under QEMU with
//! SeaBIOS or OVMF, as Debian's own image does (and the boot benchmark can
//! time those paths on the same disk).
//!
//! - BIOS: `boot.img` in the MBR's code area (the protective MBR's partition
//!   table kept), `core.img` in the BIOS boot partition, its first sector's
//!   block list pointing at the rest, as `grub-bios-setup` patches them.
//! - UEFI: a GRUB EFI image at the removable-media path `EFI/BOOT/BOOTX64.EFI`
//!   of the ESP, which firmware without boot entries starts.
//!
//! Both images come from the image's own GRUB packages (`grub-mkimage` run
//! in its root) and embed only what finds the root filesystem by UUID; GRUB
//! loads its modules and `grub.cfg` from `/boot/grub` there, as after
//! `grub-install`.

use std::path::Path;
use std::process::Command;

use crate::debian::{run, DebianError};
use crate::{io_err, ImageError};

const SECTOR: usize = 512;
/// boot.img: where the LBA of core.img's first sector goes (u64 LE).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: a jump that works around BIOSes passing a wrong boot drive,
/// replaced by two NOPs for hard disks.
const DRIVE_CHECK: usize = 0x66;
/// The BIOS parameter block area of sector 0, kept from the disk.
const BPB: std::ops::Range<usize> = 0x03..0x5a;
/// Disk signature and partition table of sector 0, kept from the disk.
const PARTITION_AREA: std::ops::Range<usize> = 0x1b8..0x1fe;
/// core.img's first sector (diskboot.img) ends in a block list entry:
/// start (u64), sector count (u16), load segment (u16).
const BLOCKLIST: usize = SECTOR - 12;

/// What the disk needs beyond the root filesystem's `/boot/grub`.
pub struct GrubImages {
    /// The MBR boot code (GRUB's boot.img, unpatched).
    pub boot_img: Vec<u8>,
    /// The BIOS core image, for the BIOS boot partition.
    pub core_img: Vec<u8>,
    /// The UEFI image, for `EFI/BOOT/BOOTX64.EFI`.
    pub efi: Vec<u8>,
}

/// Makes GRUB's images with the tools installed in `root` (a chroot with
/// `grub-pc-bin` and `grub-efi-amd64-bin`) and copies the modules to
/// `root/boot/grub`, as grub-install does. `fs_uuid` is the root
/// filesystem's, which the images search for.
pub fn prepare(root: &Path, fs_uuid: &str) -> Result<GrubImages, ImageError> {
    let early = root.join("tmp/virga-grub-early.cfg");
    std::fs::write(&early, early_config(fs_uuid)).map_err(io_err(&early))?;
    let mkimage = |format: &str, out: &str, modules: &[&str]| -> Result<Vec<u8>, ImageError> {
        run(Command::new("chroot")
            .arg(root)
            .args(["grub-mkimage", "-O", format, "-o", out])
            .args(["-p", "/boot/grub", "-c", "/tmp/virga-grub-early.cfg"])
            .args(modules))?;
        let path = root.join(out.trim_start_matches('/'));
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(bytes)
    };
    let finds_root = ["part_gpt", "part_msdos", "ext2", "search_fs_uuid"];
    let mut bios = vec!["biosdisk"];
    bios.extend(finds_root);
    let core_img = mkimage("i386-pc", "/tmp/virga-core.img", &bios)?;
    let efi = mkimage("x86_64-efi", "/tmp/virga-bootx64.efi", &finds_root)?;
    std::fs::remove_file(&early).map_err(io_err(&early))?;

    for platform in ["i386-pc", "x86_64-efi"] {
        let from = root.join("usr/lib/grub").join(platform);
        let to = root.join("boot/grub").join(platform);
        std::fs::create_dir_all(&to).map_err(io_err(&to))?;
        for entry in std::fs::read_dir(&from).map_err(io_err(&from))?.flatten() {
            let name = entry.file_name();
            let keep = name
                .to_str()
                .is_some_and(|n| n.ends_with(".mod") || n.ends_with(".lst"));
            if keep {
                let dest = to.join(&name);
                std::fs::copy(entry.path(), &dest).map_err(io_err(&dest))?;
            }
        }
    }
    let boot = root.join("usr/lib/grub/i386-pc/boot.img");
    let boot_img = std::fs::read(&boot).map_err(io_err(&boot))?;
    if boot_img.len() != SECTOR {
        return Err(DebianError::Unexpected(format!(
            "{} is {} bytes, not one sector",
            boot.display(),
            boot_img.len()
        ))
        .into());
    }
    Ok(GrubImages {
        boot_img,
        core_img,
        efi,
    })
}

/// What the images run first: find the root filesystem, then GRUB's
/// directory on it.
fn early_config(fs_uuid: &str) -> String {
    format!("search.fs_uuid {fs_uuid} root\nset prefix=($root)/boot/grub\n")
}

/// Sector 0 with GRUB's boot code: `boot_img` patched to load core.img from
/// `core_lba`, the BPB and partition table of `mbr` kept.
pub fn boot_sector(boot_img: &[u8], mbr: &[u8], core_lba: u64) -> Result<Vec<u8>, String> {
    if boot_img.len() != SECTOR || mbr.len() != SECTOR {
        return Err("boot.img and the MBR are one sector each".into());
    }
    let mut sector = boot_img.to_vec();
    sector[BPB].copy_from_slice(&mbr[BPB]);
    sector[DRIVE_CHECK] = 0x90;
    sector[DRIVE_CHECK + 1] = 0x90;
    sector[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    sector[PARTITION_AREA].copy_from_slice(&mbr[PARTITION_AREA]);
    sector[510..].copy_from_slice(&[0x55, 0xaa]);
    Ok(sector)
}

/// core.img with its first sector's block list pointing at the rest of it,
/// stored from `core_lba` on, in `room` bytes.
pub fn placed_core(core_img: &[u8], core_lba: u64, room: usize) -> Result<Vec<u8>, String> {
    let sectors = core_img.len().div_ceil(SECTOR);
    if sectors < 2 || sectors * SECTOR > room {
        return Err(format!(
            "core.img of {} bytes does not fit the BIOS boot partition ({room} bytes)",
            core_img.len()
        ));
    }
    let rest = u16::try_from(sectors - 1).map_err(|_| "core.img is too big".to_owned())?;
    let mut core = core_img.to_vec();
    core.resize(sectors * SECTOR, 0);
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&rest.to_le_bytes());
    // The load segment stays grub-mkimage's (0x820: right after the first
    // sector, loaded at 0x8000).
    Ok(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_sector_points_at_core_and_keeps_the_partition_table() {
        let boot_img = vec![0xb8; SECTOR];
        let mut mbr = vec![0u8; SECTOR];
        mbr[0x1be..0x1ce].copy_from_slice(&[
            0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let s = boot_sector(&boot_img, &mbr, 2048).unwrap();
        assert_eq!(&s[KERNEL_SECTOR..KERNEL_SECTOR + 8], &2048u64.to_le_bytes());
        assert_eq!(&s[0x1be..0x1fe], &mbr[0x1be..0x1fe]);
        assert_eq!(&s[BPB], &mbr[BPB]);
        assert_eq!(&s[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert_eq!(s[0], 0xb8);
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        assert!(boot_sector(&boot_img[..100], &mbr, 1).is_err());
    }

    #[test]
    fn core_lists_its_remaining_sectors() {
        let mut img = vec![1u8; 3 * SECTOR + 10];
        img[SECTOR - 2..SECTOR].copy_from_slice(&0x820u16.to_le_bytes());
        let core = placed_core(&img, 2048, 1 << 20).unwrap();
        assert_eq!(core.len(), 4 * SECTOR);
        assert_eq!(&core[BLOCKLIST..BLOCKLIST + 8], &2049u64.to_le_bytes());
        assert_eq!(&core[BLOCKLIST + 8..BLOCKLIST + 10], &3u16.to_le_bytes());
        assert_eq!(&core[SECTOR - 2..SECTOR], &0x820u16.to_le_bytes());
        assert!(placed_core(&img, 2048, 2 * SECTOR).is_err());
        assert!(placed_core(&img[..SECTOR], 2048, 1 << 20).is_err());
    }

    #[test]
    fn the_early_config_finds_the_root_by_uuid() {
        let c = early_config("6b3f");
        assert!(c.starts_with("search.fs_uuid 6b3f root\n"));
        assert!(c.contains("set prefix=($root)/boot/grub"));
    }
}
