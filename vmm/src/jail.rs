//! The VMM's jail: its own mount namespace whose root holds only what this VM
//! needs, entered as an unprivileged user before any thread starts and before
//! anything the guest controls is read.
//!
//! The root is a small tmpfs (read-only once built) holding:
//! - the kernel, the initramfs and each disk, bind-mounted at the paths the
//!   configuration names (read-only ones read-only), so reopening them on a
//!   guest reboot works unchanged;
//! - `/dev/kvm`, and `/dev/vhost-net` when a NIC may use it: device nodes
//!   made here, owned by the jail's user, so the host's nodes keep their own
//!   permissions;
//! - a `/proc` that shows this process only (`hidepid=invisible,subset=pid`).
//!
//! What the VMM opens once (its console file or PTY, its API socket, its taps'
//! queues, inherited from hostd or opened by name in [`open_taps`]) is opened
//! before entering and is not in the jail. The uid and gid
//! must not be root's; they need read access to every file and write access to
//! every writable disk (hostd gives each instance's disks to its user).
//!
//! Like Firecracker's jailer, and unlike it in one way: there is no separate
//! jailer binary; the VMM starts as root and enters the jail itself, first
//! thing after reading its configuration (which its supervisor wrote), so that
//! a guest never meets a VMM that still has privileges.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Access, FileType, Gid, Mode, OFlags, Uid};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::virtio::net::tap::Tap;
use crate::virtio::net::VhostMode;

/// The directory the jail's root is mounted on when none is given. The mount is
/// seen only inside the VMM's own mount namespace; nothing is written there.
pub const DEFAULT_ROOT: &str = "/tmp";

/// Who the VMM runs as, and where its root is mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    pub uid: u32,
    pub gid: u32,
    /// An existing directory to mount the jail's root on (inside the VMM's own
    /// mount namespace only).
    #[serde(default = "default_root")]
    pub root: PathBuf,
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

impl std::str::FromStr for JailConfig {
    type Err = String;

    /// `UID:GID[,root=DIR]`
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let ids = parts.next().unwrap_or_default();
        let (uid, gid) = ids
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .ok_or_else(|| format!("expected UID:GID[,root=DIR], got {s:?}"))?;
        let mut jail = JailConfig {
            uid,
            gid,
            root: default_root(),
        };
        for part in parts {
            match part.split_once('=') {
                Some(("root", dir)) if !dir.is_empty() => jail.root = dir.into(),
                _ => return Err(format!("expected root=DIR, got {part:?}")),
            }
        }
        Ok(jail)
    }
}

impl JailConfig {
    /// What can be checked before anything is mounted.
    pub fn check(&self) -> Result<(), String> {
        if self.uid == 0 || self.gid == 0 {
            return Err("uid and gid must not be 0: a jail for root keeps root's powers".into());
        }
        if !self.root.is_absolute() || !self.root.is_dir() {
            return Err(format!(
                "root {}: must be an existing directory, given as an absolute path",
                self.root.display()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what}: {source}")]
    Setup {
        what: String,
        source: std::io::Error,
    },
    #[error("jail: {0}")]
    Refused(String),
}

fn setup(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> JailError {
    let what = what.into();
    move |e| JailError::Setup {
        what,
        source: e.into(),
    }
}

fn setup_io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Setup { what, source }
}

/// A file the VM opens by path, and whether it writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailFile {
    pub path: PathBuf,
    pub writable: bool,
}

/// Everything the jail holds for a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub files: Vec<JailFile>,
    /// Device nodes, by their host path (`/dev/kvm`).
    pub devices: Vec<&'static str>,
}

pub const KVM: &str = "/dev/kvm";

impl Contents {
    /// What `config` opens by path after the jail is entered. Its paths are
    /// made canonical here, in the configuration itself (absolute, no `..`,
    /// no symlinks: the jail's working directory is its root, and a bind's
    /// target must stay inside it); a file named twice is bound once,
    /// writable if either use writes it.
    pub fn of(config: &mut VmConfig) -> Result<Contents, JailError> {
        let mut files: Vec<JailFile> = Vec::new();
        let mut add = |p: &mut PathBuf, writable: bool| -> Result<(), JailError> {
            *p = std::fs::canonicalize(&*p).map_err(setup_io(p.display().to_string()))?;
            match files.iter_mut().find(|f| f.path == *p) {
                Some(f) => f.writable |= writable,
                None => files.push(JailFile {
                    path: p.clone(),
                    writable,
                }),
            }
            Ok(())
        };
        add(&mut config.kernel, false)?;
        if let Some(initramfs) = &mut config.initramfs {
            add(initramfs, false)?;
        }
        // A disk on descriptors needs no path in the jail.
        for disk in config.disks.iter_mut().filter(|d| d.fds.is_empty()) {
            add(&mut disk.path, !disk.read_only)?;
            if let Some(base) = &mut disk.base {
                // Shared with every overlay over it: never writable.
                add(base, false)?;
            }
            for layer in &mut disk.layers {
                add(layer, false)?;
            }
        }
        let mut devices = vec![KVM];
        if config.nets.iter().any(|n| n.vhost != VhostMode::Off) {
            devices.push(crate::virtio::net::vhost::VHOST_NET_PATH);
        }
        Ok(Contents { files, devices })
    }
}

/// Opens the NICs named by tap now, while the VMM is still root (creating taps
/// that do not exist yet), and hands them to the VM as descriptors, as hostd
/// does: in the jail the VMM could neither create a tap nor attach to one. The
/// taps returned must stay open for the life of the process.
pub fn open_taps(config: &mut VmConfig) -> Result<Vec<Tap>, JailError> {
    let mut taps = Vec::new();
    for net in &mut config.nets {
        let Some(name) = net.tap.take() else {
            continue;
        };
        let tap = Tap::open(&name, net.queues.unwrap_or(1)).map_err(|e| JailError::Setup {
            what: format!("tap {name}"),
            source: std::io::Error::other(e),
        })?;
        net.fds = (0..tap.queue_count()).map(|q| tap.fd(q)).collect();
        net.queues = Some(tap.queue_count() as u16);
        taps.push(tap);
    }
    Ok(taps)
}

/// Builds the jail, moves this process into it and drops to the jail's user.
/// Must run before the process starts a thread: a mount namespace belongs to
/// the thread that made it, and the other threads would keep the host's view.
pub fn enter(jail: &JailConfig, contents: &Contents) -> Result<(), JailError> {
    jail.check().map_err(JailError::Refused)?;
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(setup_io("/proc/self/task"))?
        .count();
    if threads != 1 {
        return Err(JailError::Refused(format!(
            "entered with {threads} threads running; it must come before any thread starts"
        )));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(JailError::Refused(
            "setting one up needs root (or run the VMM without a jail)".into(),
        ));
    }

    let mut devices = Vec::new();
    for &path in &contents.devices {
        match rustix::fs::stat(path) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice => {
                devices.push((path, st.st_rdev))
            }
            Ok(_) => {
                return Err(JailError::Refused(format!(
                    "{path}: not a character device"
                )))
            }
            // The VM reports what it cannot open; vhost-net may be absent.
            Err(rustix::io::Errno::NOENT) if path != KVM => {}
            Err(e) => return Err(setup(path)(e)),
        }
    }

    // SAFETY: the process has one thread (checked above), so no other thread
    // shares the filesystem context that CLONE_NEWNS unshares.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(setup("unshare(CLONE_NEWNS)"))?;
    // Nothing mounted from here on propagates back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(setup("making / private"))?;

    // Sources are opened before the jail's root covers its mount point (a file
    // may live under that directory), and after the unshare: a bind takes its
    // source from a mount of this namespace only.
    let sources = contents
        .files
        .iter()
        .map(|f| {
            rustix::fs::open(&f.path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                .map_err(setup(f.path.display().to_string()))
        })
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let root = &jail.root;
    rustix::mount::mount(
        "tmpfs",
        root,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"mode=0755,size=1m,nr_inodes=1024"),
    )
    .map_err(setup(format!("tmpfs on {}", root.display())))?;
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));

    for (file, source) in contents.files.iter().zip(&sources) {
        let target = inside(&file.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(setup_io(parent.display().to_string()))?;
        }
        // A new, empty file: never one that is already there (paths are
        // canonical and distinct, see `Contents::of`).
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(setup_io(target.display().to_string()))?;
        let fd_path = format!("/proc/self/fd/{}", source.as_raw_fd());
        rustix::mount::mount_bind(fd_path.as_str(), &target)
            .map_err(setup(format!("binding {}", file.path.display())))?;
        // Disks may be block devices: no nodev on them.
        let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NOEXEC;
        if !file.writable {
            flags |= MountFlags::RDONLY;
        }
        rustix::mount::mount_remount(&target, flags, "")
            .map_err(setup(format!("restricting {}", file.path.display())))?;
    }
    drop(sources);

    for (path, rdev) in devices {
        let target = inside(Path::new(path));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(setup_io(parent.display().to_string()))?;
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &target,
            FileType::CharacterDevice,
            Mode::RUSR | Mode::WUSR,
            rdev,
        )
        .map_err(setup(format!("mknod {path}")))?;
        rustix::fs::chown(
            &target,
            Some(Uid::from_raw(jail.uid)),
            Some(Gid::from_raw(jail.gid)),
        )
        .map_err(setup(format!("chown {path}")))?;
    }

    let proc = root.join("proc");
    std::fs::create_dir_all(&proc).map_err(setup_io("proc"))?;
    rustix::mount::mount(
        "proc",
        &proc,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"hidepid=invisible,subset=pid"),
    )
    .map_err(setup("mounting /proc"))?;

    // The jail's root becomes /; the host's root is stacked on it by
    // pivot_root(".", ".") and then detached (pivot_root(2)'s own recipe).
    rustix::process::chdir(root).map_err(setup(root.display().to_string()))?;
    match rustix::process::pivot_root(".", ".") {
        Ok(()) => rustix::mount::unmount(".", UnmountFlags::DETACH)
            .map_err(setup("detaching the host's root"))?,
        // A host running from its initramfs cannot pivot its root away
        // (pivot_root(2) refuses rootfs). There the process is chrooted into
        // the jail: the host's tree stays in its namespace but out of reach,
        // since leaving a chroot takes CAP_SYS_CHROOT, and the kernel refuses
        // a chrooted process the new user namespace that would grant it
        // (unshare(2), EPERM). The jail's mount is not moved over /: that
        // would make the process look unchrooted to that check.
        Err(rustix::io::Errno::INVAL) if root_is_rootfs() => {
            rustix::process::chroot(".").map_err(setup("chroot"))?;
        }
        Err(e) => return Err(setup("pivot_root")(e)),
    }
    rustix::process::chdir("/").map_err(setup("chdir /"))?;
    rustix::mount::mount_remount(
        "/",
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC,
        "",
    )
    .map_err(setup("making the root read-only"))?;

    give_up_terminal();
    drop_privileges(jail.uid, jail.gid)?;

    // Each file must be usable by the jail's user: say which is not, now,
    // rather than fail on it when the VM (or a reboot) opens it.
    for file in &contents.files {
        let mode = if file.writable {
            Access::READ_OK | Access::WRITE_OK
        } else {
            Access::READ_OK
        };
        rustix::fs::access(&file.path, mode).map_err(|e| {
            JailError::Refused(format!(
                "{}: not {} by uid {} ({})",
                file.path.display(),
                if file.writable {
                    "writable"
                } else {
                    "readable"
                },
                jail.uid,
                std::io::Error::from(e)
            ))
        })?;
    }
    Ok(())
}

/// Whether / is the initramfs's rootfs, which pivot_root(2) cannot move away.
fn root_is_rootfs() -> bool {
    // mountinfo(5): field 5 is the mount point; after " - ", the filesystem type.
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_once(" - ").is_some_and(|(mount, fs)| {
                mount.split(' ').nth(4) == Some("/") && fs.starts_with("rootfs ")
            })
        })
    })
}

/// Lets go of the controlling terminal a VMM started by hand inherited:
/// through it (TIOCSTI) an unprivileged process could type into the root
/// shell that started it.
fn give_up_terminal() {
    for fd in 0..=2 {
        // SAFETY: isatty and ioctl(TIOCNOTTY) take a descriptor number and no
        // memory; on a descriptor that is not our controlling terminal the
        // ioctl fails harmlessly.
        unsafe {
            if libc::isatty(fd) == 1 {
                libc::ioctl(fd, libc::TIOCNOTTY);
            }
        }
    }
}

/// Becomes uid:gid for good: no supplementary groups, every id (real, effective,
/// saved) changed, so no capability is left and none can come back.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: setgroups with a count of 0 reads no memory; setresgid and
    // setresuid take plain integers. glibc applies them to every thread (there is
    // only one).
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) < 0
            || libc::setresgid(gid, gid, gid) < 0
            || libc::setresuid(uid, uid, uid) < 0
    };
    if failed {
        return Err(setup_io(format!("becoming {uid}:{gid}"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(setup_io("no_new_privs")(std::io::Error::last_os_error()));
    }
    // Not dumpable, whatever fs.suid_dumpable says: no other process of this
    // user (a later VMM given the same uid) can ptrace it or read its memory.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        return Err(setup_io("not dumpable")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn parses_the_flag() {
        let j: JailConfig = "1000:1001".parse().unwrap();
        assert_eq!(
            (j.uid, j.gid, j.root.as_path()),
            (1000, 1001, Path::new("/tmp"))
        );
        let j: JailConfig = "7:8,root=/run/x".parse().unwrap();
        assert_eq!(j.root, Path::new("/run/x"));
        for bad in ["", "1000", "a:b", "1:2,root=", "1:2,other=x"] {
            assert!(bad.parse::<JailConfig>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_ids_and_bad_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jail = |uid, gid, root: &Path| JailConfig {
            uid,
            gid,
            root: root.to_owned(),
        };
        assert!(jail(1000, 1000, dir.path()).check().is_ok());
        assert!(jail(0, 1000, dir.path())
            .check()
            .unwrap_err()
            .contains("must not be 0"));
        assert!(jail(1000, 0, dir.path()).check().is_err());
        assert!(jail(1000, 1000, Path::new("relative")).check().is_err());
        assert!(jail(1000, 1000, &dir.path().join("missing"))
            .check()
            .is_err());
    }

    /// Runs `inside` in a forked child (one thread, as the VMM is when it enters
    /// its jail) and returns what it wrote and its exit status.
    fn in_child(inside: impl FnOnce(&mut File) -> i32) -> (String, i32) {
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().unwrap();
        // SAFETY: the child only runs `inside` (the jail code under test, which
        // allocates: glibc's fork leaves malloc usable in the child) and exits
        // with _exit, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            drop(reader);
            let mut out = File::from(OwnedFd::from(writer));
            let code = inside(&mut out);
            drop(out);
            // SAFETY: ends the child at once, running no destructor of the
            // parent's state.
            unsafe { libc::_exit(code) };
        }
        drop(writer);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child; status is a plain integer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        (text, libc::WEXITSTATUS(status))
    }

    /// Needs root and /dev/kvm, as the VMM's jail does.
    #[test]
    fn the_jail_holds_only_the_vms_files_as_its_user() {
        use std::io::Write;
        use std::os::unix::fs::chown;
        if !rustix::process::geteuid().is_root() || !Path::new(KVM).exists() {
            eprintln!("skipped: needs root and {KVM}");
            return;
        }
        // The directories on the way are the jail's own (0755): the host's
        // 0700 temporary directory does not stand in the way.
        let dir = tempfile::tempdir().unwrap();
        let (kernel, disk, private) = (
            dir.path().join("kernel"),
            dir.path().join("disk.img"),
            dir.path().join("private"),
        );
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&disk, vec![0u8; 512]).unwrap();
        std::fs::write(&private, b"secret").unwrap();
        chown(&disk, Some(4242), Some(4242)).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let jail = JailConfig {
            uid: 4242,
            gid: 4242,
            root,
        };
        let contents = Contents {
            files: vec![
                JailFile {
                    path: kernel.clone(),
                    writable: false,
                },
                JailFile {
                    path: disk.clone(),
                    writable: true,
                },
            ],
            devices: vec![KVM],
        };
        let (out, code) = in_child(|out| {
            if let Err(e) = enter(&jail, &contents) {
                let _ = writeln!(out, "ENTER {e}");
                return 1;
            }
            let mut seen = Vec::new();
            let mut dirs = vec![PathBuf::from("/")];
            while let Some(d) = dirs.pop() {
                if d == Path::new("/proc") {
                    continue;
                }
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(e.path());
                    } else {
                        seen.push(e.path().display().to_string());
                    }
                }
            }
            seen.sort();
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("?")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let pids = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count();
            let _ = writeln!(out, "FILES {}", seen.join(" "));
            let _ = writeln!(out, "UID {}", field("Uid:"));
            let _ = writeln!(out, "CAPEFF {}", field("CapEff:"));
            let _ = writeln!(out, "PIDS {pids}");
            let wrote_disk = std::fs::OpenOptions::new().write(true).open(&disk).is_ok();
            let wrote_kernel = std::fs::OpenOptions::new()
                .write(true)
                .open(&kernel)
                .is_ok();
            let kvm = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(KVM)
                .is_ok();
            let _ = writeln!(out, "DISK_RW {wrote_disk}");
            let _ = writeln!(out, "KERNEL_RW {wrote_kernel}");
            let _ = writeln!(out, "KVM {kvm}");
            let _ = writeln!(out, "PRIVATE {}", private.exists());
            let _ = writeln!(out, "MKDIR {}", std::fs::create_dir("/new").is_ok());
            0
        });
        assert_eq!(code, 0, "{out}");
        let line = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let mut expected = [
            kernel.display().to_string(),
            disk.display().to_string(),
            KVM.to_owned(),
        ];
        expected.sort();
        assert_eq!(line("FILES"), expected.join(" "), "{out}");
        assert_eq!(line("UID"), "4242 4242 4242 4242", "{out}");
        assert_eq!(line("CAPEFF"), "0000000000000000", "{out}");
        assert_eq!(line("PIDS"), "1", "only itself in /proc: {out}");
        assert_eq!(line("DISK_RW"), "true", "{out}");
        assert_eq!(line("KERNEL_RW"), "false", "{out}");
        assert_eq!(line("KVM"), "true", "{out}");
        assert_eq!(line("PRIVATE"), "false", "{out}");
        assert_eq!(line("MKDIR"), "false", "{out}");
        // The host saw nothing of it.
        assert_eq!(
            std::fs::read_dir(dir.path().join("root")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_file_the_user_cannot_write_is_named() {
        if !rustix::process::geteuid().is_root() || !Path::new(KVM).exists() {
            eprintln!("skipped: needs root and {KVM}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 512]).unwrap();
        let jail = JailConfig {
            uid: 4243,
            gid: 4243,
            root: dir.path().to_owned(),
        };
        let contents = Contents {
            files: vec![JailFile {
                path: disk.clone(),
                writable: true,
            }],
            devices: vec![KVM],
        };
        let (out, code) = in_child(|out| {
            use std::io::Write;
            match enter(&jail, &contents) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = write!(out, "{e}");
                    1
                }
            }
        });
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("{}: not writable by uid 4243", disk.display())),
            "{out}"
        );
    }

    #[test]
    fn paths_become_canonical_and_a_file_named_twice_is_bound_once() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        let disk = dir.path().join("disk.img");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&disk, [0u8; 512]).unwrap();
        std::os::unix::fs::symlink(&disk, dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let disk_at = |path: PathBuf, read_only| crate::config::DiskConfig {
            id: None,
            pci_slot: None,
            fds: Vec::new(),
            backing_fds: Vec::new(),
            path,
            base: None,
            layers: Vec::new(),
            read_only,
            serial: None,
            direct: false,
            queues: None,
            rate_limit: Default::default(),
        };
        let mut config = VmConfig {
            kernel: dir.path().join("sub/../kernel"),
            kernel_format: crate::config::KernelFormat::Elf,
            initramfs: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            serial: Default::default(),
            api_socket: None,
            on_reboot: Default::default(),
            rng: false,
            disks: vec![
                disk_at(dir.path().join("link"), true),
                disk_at(disk.clone(), false),
            ],
            nets: Vec::new(),
            seccomp: Default::default(),
            jail: None,
            smbios: Default::default(),
        };
        let contents = Contents::of(&mut config).unwrap();
        let real = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(config.kernel, real(&kernel), "no `..` left");
        assert_eq!(config.disks[0].path, real(&disk), "no symlink left");
        assert_eq!(
            contents.files,
            [
                JailFile {
                    path: real(&kernel),
                    writable: false
                },
                JailFile {
                    path: real(&disk),
                    writable: true
                },
            ],
            "the disk named twice is bound once, writable"
        );
        assert!(Contents::of(&mut VmConfig {
            kernel: dir.path().join("missing"),
            ..config
        })
        .is_err());
    }

    #[test]
    fn a_threaded_process_is_refused() {
        // The test harness runs this on a thread of its own.
        let dir = tempfile::tempdir().unwrap();
        let jail = JailConfig {
            uid: 1000,
            gid: 1000,
            root: dir.path().to_owned(),
        };
        match enter(&jail, &Contents::default()) {
            Err(JailError::Refused(why)) => {
                assert!(why.contains("threads"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
