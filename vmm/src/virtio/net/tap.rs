//! TAP devices: open one by name, or take open descriptors from a supervisor.
//! A multiqueue tap has one descriptor per queue pair; the kernel spreads flows
//! over the queues that are attached.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
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

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut req = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        let n = name.len().min(15);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }
}

pub struct Tap {
    /// One descriptor per queue pair.
    queues: Vec<File>,
    pub name: String,
}

fn open_tun(name: &str) -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| TapError::OpenTun {
            name: name.to_owned(),
            source,
        })
}

impl Tap {
    /// Attaches to (or creates) the TAP interface `name`, with virtio-net headers
    /// and `pairs` queues. An existing single-queue tap cannot take more queues:
    /// it is used with one, and the log says so.
    pub fn open(name: &str, pairs: u16) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::Name(name.to_owned()));
        }
        let pairs = pairs.max(1);
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        let mut tap = Tap {
            queues: Vec::new(),
            name: name.to_owned(),
        };
        let multi = if pairs > 1 { IFF_MULTI_QUEUE } else { 0 };
        for i in 0..pairs {
            let file = open_tun(name)?;
            let mut req = IfReq::new(name, flags | multi);
            // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is, for the
            // duration of the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
            if rc < 0 && i == 0 && multi != 0 {
                let err = std::io::Error::last_os_error();
                tracing::warn!(
                    tap = name,
                    "tap refuses multiqueue ({err}); using one queue pair"
                );
                return Tap::open(name, 1);
            }
            tap.check(rc, "TUNSETIFF")?;
            tap.queues.push(file);
        }
        tap.set_vnet_header_size()?;
        Ok(tap)
    }

    /// Uses open TAP descriptors passed by the supervisor (hostd), one per queue
    /// pair. The VMM works on duplicates, so the inherited descriptors survive for
    /// a VM restart.
    pub fn from_fds(fds: &[RawFd]) -> Result<Tap, TapError> {
        let mut tap = Tap {
            queues: Vec::new(),
            name: format!("fd{}", fds.first().copied().unwrap_or(-1)),
        };
        for &fd in fds {
            // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor number; an invalid
            // one fails with EBADF, which is checked.
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
            tap.queues.push(file);
        }
        if tap.queues.is_empty() {
            return Err(TapError::Fd {
                fd: -1,
                source: std::io::Error::from_raw_os_error(libc::EBADF),
            });
        }
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
        for q in &self.queues {
            // SAFETY: TUNSETVNETHDRSZ reads one int.
            let rc = unsafe { libc::ioctl(q.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
            self.check(rc, "TUNSETVNETHDRSZ")?;
        }
        Ok(())
    }

    /// Which offloads the tap may hand us (what the guest accepts).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        for q in &self.queues {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            let rc = unsafe { libc::ioctl(q.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
            self.check(rc, "TUNSETOFFLOAD")?;
        }
        Ok(())
    }

    /// Attaches or detaches queue `i`: the kernel queues packets only on attached
    /// queues, so pairs the guest does not use must be detached.
    pub fn set_queue_enabled(&self, i: usize, enabled: bool) -> Result<(), TapError> {
        if self.queues.len() < 2 {
            return Ok(());
        }
        let Some(q) = self.queues.get(i) else {
            return Ok(());
        };
        let flags = if enabled {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        let mut req = IfReq::new(&self.name, flags);
        // SAFETY: TUNSETQUEUE reads an ifreq, which `req` is.
        let rc = unsafe { libc::ioctl(q.as_raw_fd(), TUNSETQUEUE, &mut req) };
        // Attaching an attached queue (or detaching a detached one) is EINVAL.
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            return Ok(());
        }
        self.check(rc, "TUNSETQUEUE")
    }

    /// Number of queue pairs (descriptors).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn fd(&self, queue: usize) -> RawFd {
        self.queues.get(queue).map_or(-1, |q| q.as_raw_fd())
    }

    pub fn file(&self, queue: usize) -> Option<&File> {
        self.queues.get(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_descriptors_are_refused() {
        assert!(matches!(Tap::open("", 1), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-far-too-long", 2),
            Err(TapError::Name(_))
        ));
        assert!(matches!(Tap::from_fds(&[9999]), Err(TapError::Fd { .. })));
        assert!(matches!(Tap::from_fds(&[]), Err(TapError::Fd { .. })));
        // Not a tap: the ioctl fails cleanly and the caller's descriptor survives.
        let f = tempfile::tempfile().unwrap();
        assert!(Tap::from_fds(&[f.as_raw_fd()]).is_err());
        // SAFETY: F_GETFD only inspects the descriptor.
        assert!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) } >= 0);
    }
}
