//! VMM processes at the system-call level: starting one detached from hostd (its
//! own session, its cgroup, exactly the descriptors it needs, no new
//! privileges, no core dumps, bounded descriptors), finding
//! one again by pid and start time, and watching one exit through a pidfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;

use crate::instance::Process;

/// How a watched process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Not our child (re-adopted after a hostd restart): the kernel keeps its
    /// status for its parent, not for us.
    Unknown,
}

/// What a VMM process starts with.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub args: Vec<String>,
    pub log: std::fs::File,
    /// `cgroup.procs` of its group, written between fork and exec.
    pub cgroup_procs: Option<std::fs::File>,
    /// Descriptors the VMM inherits (tap queues), at the same numbers.
    pub inherit: Vec<RawFd>,
}

/// Descriptors a VMM may hold: disks, tap queues, vhost, eventfds and irqfds
/// for every queue, with room to spare.
const VMM_MAX_OPEN_FILES: libc::rlim_t = 4096;

/// Starts the VMM in its own session so that it outlives hostd.
pub fn spawn(launch: Launch<'_>) -> std::io::Result<Process> {
    let mut cmd = Command::new(launch.binary);
    cmd.args(&launch.args)
        // The jail is hostd's to choose (its configuration and the instance's
        // user), not the environment's.
        .env_remove("VIRGA_VMM_JAIL")
        .stdin(Stdio::null())
        .stdout(launch.log.try_clone()?)
        .stderr(launch.log);
    let procs_fd = launch.cgroup_procs.as_ref().map(AsRawFd::as_raw_fd);
    let inherit = launch.inherit.clone();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on plain integers and a stack buffer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd {
                // "0" moves the writing process.
                if libc::write(fd, b"0\n".as_ptr().cast(), 2) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // No privileges gained through exec (setuid binaries, file
            // capabilities) from here on, whatever the VMM does.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // No core dumps (a dump holds guest memory), and a bound on the
            // descriptors a VMM can hold.
            for (resource, limit) in [
                (libc::RLIMIT_CORE, 0),
                (libc::RLIMIT_NOFILE, VMM_MAX_OPEN_FILES),
            ] {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &rlimit) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // The Child handle is dropped: hostd reaps through the pidfd instead.
    drop(child);
    let start_ticks = start_ticks(pid).unwrap_or(0);
    Ok(Process { pid, start_ticks })
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past
    // its closing parenthesis, then field 3 is first.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `p` is still the process that was recorded (not a reused pid) and
/// still a live one (not a zombie).
pub fn is_alive(p: &Process) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            rest.chars().next()
        });
    matches!(state, Some(c) if c != 'Z' && c != 'X') && start_ticks(p.pid) == Some(p.start_ticks)
}

/// A pidfd: readable once the process exits.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
}

impl PidFd {
    pub fn open(pid: i32) -> std::io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same
        // descriptor, for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(PidFd { fd, pid })
    }

    /// Waits for the process to exit, and reaps it when it is our child.
    pub async fn exited(&self) -> Exit {
        // A pidfd becomes readable once, when the process exits, and stays so.
        if let Err(e) = self.fd.readable().await {
            tracing::warn!(pid = self.pid, "waiting on pidfd: {e}");
            return Exit::Unknown;
        }
        self.reap()
    }

    fn reap(&self) -> Exit {
        // SAFETY: siginfo_t is plain data; zeroed is a valid starting value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into `info`; P_PIDFD takes our pidfd. It fails
        // with ECHILD when the process is not our child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc < 0 {
            return Exit::Unknown;
        }
        // SAFETY: after a successful WEXITED wait, si_code and si_status are set.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        if code == libc::CLD_EXITED {
            Exit::Code(status)
        } else {
            Exit::Signal(status)
        }
    }

    /// Sends `signal` to the process (no risk of hitting a reused pid).
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal takes our pidfd, a signal number, no info.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(args: &[&str], log: std::fs::File) -> Launch<'static> {
        Launch {
            binary: Path::new("/bin/sh"),
            args: args.iter().map(|s| s.to_string()).collect(),
            log,
            cgroup_procs: None,
            inherit: vec![],
        }
    }

    #[tokio::test]
    async fn children_are_watched_and_reaped() {
        let log = tempfile::tempfile().unwrap();
        let p = spawn(launch(&["-c", "exit 3"], log)).unwrap();
        let pidfd = PidFd::open(p.pid).unwrap();
        assert_eq!(pidfd.exited().await, Exit::Code(3));
        assert!(!is_alive(&p), "reaped");

        let log = tempfile::tempfile().unwrap();
        let p = spawn(launch(&["-c", "sleep 30"], log)).unwrap();
        assert!(is_alive(&p));
        assert!(!is_alive(&Process {
            pid: p.pid,
            start_ticks: p.start_ticks + 1
        }));
        let pidfd = PidFd::open(p.pid).unwrap();
        pidfd.signal(libc::SIGKILL).unwrap();
        assert_eq!(pidfd.exited().await, Exit::Signal(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_child_runs_in_its_own_session() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let p = spawn(launch(
            &["-c", "cat /proc/self/stat"],
            log.reopen().unwrap(),
        ))
        .unwrap();
        let pidfd = PidFd::open(p.pid).unwrap();
        assert_eq!(pidfd.exited().await, Exit::Code(0));
        let stat = std::fs::read_to_string(log.path()).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // Field 6 (session) equals field 1 (pid): it leads its own session.
        assert_eq!(fields[3], p.pid.to_string());
    }

    #[tokio::test]
    async fn a_child_gains_no_privileges_dumps_no_core_and_has_bounded_files() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let p = spawn(launch(
            &["-c", "cat /proc/self/status /proc/self/limits"],
            log.reopen().unwrap(),
        ))
        .unwrap();
        let pidfd = PidFd::open(p.pid).unwrap();
        assert_eq!(pidfd.exited().await, Exit::Code(0));
        let out = std::fs::read_to_string(log.path()).unwrap();
        assert!(out.contains("NoNewPrivs:\t1"), "{out}");
        let limit = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(name))
                .map(|l| {
                    l[name.len()..]
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        assert_eq!(limit("Max core file size"), ["0", "0"], "{out}");
        assert_eq!(limit("Max open files"), ["4096", "4096"], "{out}");
    }

    #[test]
    fn start_time_parsing() {
        let me = std::process::id() as i32;
        assert!(start_ticks(me).is_some());
        assert!(start_ticks(-1).is_none());
    }
}
