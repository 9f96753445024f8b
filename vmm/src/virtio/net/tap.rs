//! TAP devices: open one by name, or take an open descriptor from a supervisor.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {name}: opening /dev/net/tun: {source}")]
    OpenTun {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: {what}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("tap fd {fd}: {source}")]
    Fd { fd: RawFd, source: std::io::Error },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
    pub name: String,
}

impl Tap {
    /// Attaches to (or creates) the TAP interface `name`, with virtio-net headers.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::Name(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is, for the
        // duration of the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        let tap = Tap {
            file,
            name: name.to_owned(),
        };
        tap.check(rc, "TUNSETIFF")?;
        tap.set_vnet_header_size()?;
        Ok(tap)
    }

    /// Uses an open TAP descriptor passed by the supervisor (hostd). The VMM works
    /// on a duplicate, so the inherited descriptor survives for a VM restart.
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor number; an invalid one
        // fails with EBADF, which is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(TapError::Fd {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        // SAFETY: setting O_NONBLOCK on a descriptor we own (shared with the
        // original, which the VMM alone uses).
        unsafe {
            let flags = libc::fcntl(dup, libc::F_GETFL);
            libc::fcntl(dup, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let tap = Tap {
            file,
            name: format!("fd{fd}"),
        };
        tap.set_vnet_header_size()?;
        Ok(tap)
    }

    fn check(&self, rc: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if rc < 0 {
            Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: std::io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    }

    fn set_vnet_header_size(&self) -> Result<(), TapError> {
        let size: libc::c_int = super::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        self.check(rc, "TUNSETVNETHDRSZ")
    }

    /// Which offloads the tap may hand us (what the guest accepts).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        self.check(rc, "TUNSETOFFLOAD")
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_descriptors_are_refused() {
        assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-far-too-long"),
            Err(TapError::Name(_))
        ));
        assert!(matches!(Tap::from_fd(9999), Err(TapError::Fd { .. })));
        // Not a tap: the ioctl fails cleanly and the caller's descriptor survives.
        let f = tempfile::tempfile().unwrap();
        assert!(Tap::from_fd(f.as_raw_fd()).is_err());
        // SAFETY: F_GETFD only inspects the descriptor.
        assert!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) } >= 0);
    }
}
