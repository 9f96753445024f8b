//! seccomp-bpf filters, one per kind of thread, installed by each thread before it
//! touches anything the guest controls.
//!
//! Filters stack: a thread keeps the filters of the thread that spawned it and
//! adds its own, and a system call must pass all of them. So the control loop's
//! list (it builds VMs and spawns every other thread) is the widest, and a vCPU's
//! list also covers what device activation does on it (spawning the device's
//! workers, which then narrow themselves further).
//!
//! In `enforce` mode (the default) a forbidden call traps: the SIGSYS handler
//! writes `vmm: exit 159: seccomp: ...` (the VMM's last-line convention, naming the
//! thread kind and the call's number) and ends the process with status 159
//! (128 + SIGSYS). `log` lets every call through and has the kernel log the ones
//! outside the lists (`dmesg`, audit type 1326): the way to find a missing one.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde::{Deserialize, Serialize};

/// The VMM's exit status when a thread made a forbidden system call.
pub const EXIT_FORBIDDEN_SYSCALL: u8 = 159;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// A forbidden call ends the VMM (status 159, reason on stderr).
    #[default]
    Enforce,
    /// Forbidden calls are allowed and logged by the kernel (diagnosis).
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err("expected enforce, log or off".into()),
        }
    }
}

/// The kinds of thread the VMM runs, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The control loop: builds (and rebuilds) the VM, answers the API.
    Control,
    Vcpu,
    /// The control API's HTTP server.
    Api,
    /// A virtio-blk queue worker.
    Block,
    /// A virtio-net queue pair or control queue worker.
    Net,
    /// The virtio-rng worker.
    Rng,
    /// Console output (partial lines) and PTY input.
    Console,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Control => "control",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Block => "virtio-blk",
            ThreadKind::Net => "virtio-net",
            ThreadKind::Rng => "virtio-rng",
            ThreadKind::Console => "console",
        }
    }

    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Control,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Rng,
        ThreadKind::Console,
    ];

    /// The system calls this kind of thread may make.
    pub fn allowed(self) -> Vec<libc::c_long> {
        let mut calls = COMMON.to_vec();
        // A thread keeps its spawner's filter: whatever a device worker does,
        // the vCPU that activated it (and the control loop that started that
        // vCPU) must allow too.
        let lists: &[&[libc::c_long]] = match self {
            ThreadKind::Control => &[SPAWN, CONTROL, VCPU, BLOCK, NET],
            ThreadKind::Vcpu => &[SPAWN, VCPU, BLOCK, NET],
            ThreadKind::Api => &[API],
            ThreadKind::Block => &[BLOCK],
            ThreadKind::Net => &[NET],
            ThreadKind::Rng | ThreadKind::Console => &[],
        };
        for list in lists {
            calls.extend_from_slice(list);
        }
        calls.sort_unstable();
        calls.dedup();
        calls
    }
}

/// Every thread: memory, locks, time, signals, its own end, and the SIGSYS
/// handler's write and exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // A panic aborts (panic = "abort"), and abort() raises SIGABRT with
    // tgkill, resetting the handler first if it must: a panicking worker
    // must die of SIGABRT, not be reported as a seccomp violation.
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    // Allowed here, but answered EACCES on the threads that may not open
    // files (see `NO_OPEN`): glibc's malloc opens
    // /proc/sys/vm/overcommit_memory once, from whichever thread first trims
    // an arena, and falls back when that fails.
    libc::SYS_openat,
];

/// Starting a thread (glibc and Rust's std) and its installing its filter.
const SPAWN: &[libc::c_long] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_sched_getaffinity,
];

/// Building a VM beyond what a vCPU does (its list is included): reading
/// directories and links, sockets and epoll, guest memory, the host's size;
/// and at exit, removing the API socket.
const CONTROL: &[libc::c_long] = &[
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_socket,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_sysinfo,
    // imago asks a qcow2 overlay's filesystem for its alignments on open.
    libc::SYS_fstatfs,
];

/// Running the guest (KVM_RUN, MSI-X routes and irqfds) and what device
/// activation does on a vCPU: eventfds, vhost-net and tap setup, io_uring
/// rings, rate-limit timers (the workers' lists, which it must also pass, are
/// included; opening files is in `COMMON`).
const VCPU: &[libc::c_long] = &[
    libc::SYS_ioctl,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_enter,
    libc::SYS_dup,
    libc::SYS_dup3,
];

/// tokio's current-thread runtime on a Unix socket.
const API: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_ioctl,
];

/// io_uring or the synchronous engine, the rate-limit timer, and lowering its
/// own priority (the worker yields to vCPUs); ftruncate for imago, which
/// sizes an overlay's file as a discard or write-zeroes frees or zeroes
/// clusters.
const BLOCK: &[libc::c_long] = &[
    libc::SYS_setpriority,
    libc::SYS_ftruncate,
    libc::SYS_io_uring_enter,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// The tap (frames through read/write), attaching queues (TUNSETQUEUE), the
/// rate-limit timer.
const NET: &[libc::c_long] = &[
    libc::SYS_ioctl,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// Opening files: refused with EACCES (not trapped) on the thread kinds that
/// have no business opening any, so that glibc's one-time probe fails softly.
const NO_OPEN: &[libc::c_long] = &[libc::SYS_openat, libc::SYS_open, libc::SYS_creat];

impl ThreadKind {
    /// Whether this kind's opens are refused ([`NO_OPEN`]).
    fn may_open(self) -> bool {
        matches!(self, ThreadKind::Control | ThreadKind::Vcpu)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {kind} thread's seccomp filter: {source}")]
    Build {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("installing the {kind} thread's seccomp filter: {source}")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The compiled filter for `kind`, or None when `mode` is off.
pub fn filter(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    // clone only for threads: a flag that makes a namespace (a new user
    // namespace would hand back capabilities inside it) fails the rule.
    let no_namespaces = seccompiler::SeccompRule::new(vec![seccompiler::SeccompCondition::new(
        0,
        seccompiler::SeccompCmpArgLen::Qword,
        seccompiler::SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
        0,
    )
    .map_err(build)?])
    .map_err(build)?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = kind
        .allowed()
        .into_iter()
        .map(|nr| match nr {
            libc::SYS_clone => (nr, vec![no_namespaces.clone()]),
            nr => (nr, Vec::new()),
        })
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    Ok(Some(filter.try_into().map_err(build)?))
}

/// Every `CLONE_NEW*` flag: clone(2) may make threads, not namespaces.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | 0x80/* CLONE_NEWTIME */) as u64;

/// The second filter of a kind that may start threads: clone3 fails with
/// ENOSYS (its flags sit in memory, out of a filter's sight), and glibc then
/// starts threads with clone, whose flags the first filter checks.
fn no_clone3_filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    refusing_filter(
        kind,
        &[libc::SYS_clone3],
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

/// The second filter of a kind that may not open files: EACCES for opens
/// (logged instead in log mode), everything else left to the first.
fn no_open_filter(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let refuse = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Errno(libc::EACCES as u32),
    };
    refusing_filter(kind, NO_OPEN, refuse)
}

/// A filter that answers `calls` with `refuse` and lets everything else
/// through to the other filters.
fn refusing_filter(
    kind: ThreadKind,
    calls: &[libc::c_long],
    refuse: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let rules = calls.iter().map(|&nr| (nr, Vec::new())).collect();
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    SeccompFilter::new(rules, SeccompAction::Allow, refuse, TargetArch::x86_64)
        .map_err(build)?
        .try_into()
        .map_err(build)
}

/// The process's mode, set once at start (unset, as in unit tests: off).
static MODE: std::sync::OnceLock<SeccompMode> = std::sync::OnceLock::new();

/// Sets the mode every later [`apply`] uses; the first call wins.
pub fn set_mode(mode: SeccompMode) {
    let _ = MODE.set(mode);
}

pub fn mode() -> SeccompMode {
    MODE.get().copied().unwrap_or(SeccompMode::Off)
}

thread_local! {
    /// This thread's kind, for the SIGSYS handler's message.
    /// A thread that has not installed its own filter yet runs under the
    /// filters of the thread that started it.
    static KIND: Cell<&'static str> = const { Cell::new("newly started") };
}

/// Installs `kind`'s filter on the calling thread, in the process's mode.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    apply_in(kind, mode())
}

fn apply_in(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(program) = filter(kind, mode)? else {
        return Ok(());
    };
    let install = |program: &BpfProgram| {
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })
    };
    let mut extra = Vec::new();
    if kind.allowed().contains(&libc::SYS_clone3) {
        extra.push(no_clone3_filter(kind)?);
    }
    if !kind.may_open() {
        extra.push(no_open_filter(kind, mode)?);
    }
    // The narrower filter last: once it is in, prctl and seccomp may be gone.
    for program in &extra {
        install(program)?;
    }
    install(&program)?;
    KIND.with(|k| k.set(kind.name()));
    Ok(())
}

/// Installs the SIGSYS handler that turns a trapped call into a clear exit.
/// Called once, before any filter.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction is plain data, filled in before use; the handler only
    // makes async-signal-safe calls (write, _exit) on a stack buffer.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = sigsys_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: after si_signo,
/// si_errno, si_code, padding (16 bytes) and `si_call_addr` (8).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; si_syscall is an
    // int at a fixed offset of its _sigsys member.
    let syscall = unsafe { *info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>() };
    let kind = KIND.with(|k| k.get());
    let mut buf = [0u8; 160];
    let len = forbidden_call_message(&mut buf, kind, syscall);
    // SAFETY: write and _exit are async-signal-safe and allowed on every
    // thread; buf outlives the call.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(i32::from(EXIT_FORBIDDEN_SYSCALL));
    }
}

/// `vmm: exit 159: seccomp: the KIND thread made a forbidden system call (N)\n`
/// into `buf` without allocating; returns its length.
fn forbidden_call_message(buf: &mut [u8], kind: &str, syscall: i32) -> usize {
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(crate::EXIT_LINE.as_bytes());
    put(b"159: seccomp: the ");
    put(kind.as_bytes());
    put(b" thread made a forbidden system call (");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let negative = syscall < 0;
    let mut n = syscall.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        put(b"-");
    }
    put(&digits[i..]);
    put(b")\n");
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes_and_off_builds_nothing() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let program = filter(kind, mode).unwrap().expect("a filter");
                assert!(!program.is_empty(), "{kind:?}");
            }
            assert!(filter(kind, SeccompMode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn workers_cannot_spawn_or_open_and_only_spawners_can() {
        for kind in [
            ThreadKind::Block,
            ThreadKind::Net,
            ThreadKind::Rng,
            ThreadKind::Api,
            ThreadKind::Console,
        ] {
            let allowed = kind.allowed();
            for forbidden in [
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_execve,
                libc::SYS_socket,
            ] {
                assert!(!allowed.contains(&forbidden), "{kind:?} {forbidden}");
            }
            assert!(!kind.may_open(), "{kind:?}");
        }
        for kind in [ThreadKind::Control, ThreadKind::Vcpu] {
            assert!(kind.allowed().contains(&libc::SYS_clone3));
        }
        for kind in ThreadKind::ALL {
            assert!(!kind.allowed().contains(&libc::SYS_execve), "{kind:?}");
            assert!(kind.allowed().contains(&libc::SYS_exit_group));
            assert!(kind.allowed().contains(&libc::SYS_write));
        }
    }

    #[test]
    fn a_spawned_thread_passes_its_spawners_filters() {
        let subset = |a: ThreadKind, b: ThreadKind| {
            let outer = b.allowed();
            a.allowed().iter().all(|c| outer.contains(c))
        };
        for worker in [ThreadKind::Block, ThreadKind::Net, ThreadKind::Rng] {
            assert!(subset(worker, ThreadKind::Vcpu), "{worker:?} under a vCPU");
            assert!(
                subset(worker, ThreadKind::Control),
                "{worker:?} under the control loop"
            );
        }
        assert!(subset(ThreadKind::Vcpu, ThreadKind::Control));
    }

    #[test]
    fn the_message_names_the_thread_and_the_call() {
        let mut buf = [0u8; 160];
        let n = forbidden_call_message(&mut buf, "vcpu", 59);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "vmm: exit 159: seccomp: the vcpu thread made a forbidden system call (59)\n"
        );
        let n = forbidden_call_message(&mut buf, "api", -1);
        assert!(std::str::from_utf8(&buf[..n]).unwrap().ends_with("(-1)\n"));
    }

    /// Set for the child process that [`forbidden_call_child`] runs in.
    const CHILD_KIND: &str = "VIRGA_SECCOMP_CHILD_KIND";
    const CHILD_MODE: &str = "VIRGA_SECCOMP_CHILD_MODE";
    /// What the child does once filtered: `getppid` (on no list), or
    /// `clone-newuser` (clone asking for a user namespace).
    const CHILD_CALL: &str = "VIRGA_SECCOMP_CHILD_CALL";

    /// In a child process: installs `kind`'s real filter and the real handler
    /// on a thread, which then calls getppid (on no kind's list).
    #[test]
    #[ignore = "run in a child process by the test below"]
    fn forbidden_call_child() {
        let kind = std::env::var(CHILD_KIND).expect("run by the parent test");
        let kind = ThreadKind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .expect("a kind");
        let mode: SeccompMode = std::env::var(CHILD_MODE).unwrap().parse().unwrap();
        install_sigsys_handler().unwrap();
        std::thread::spawn(move || {
            apply_in(kind, mode).unwrap();
            let open = std::fs::File::open("/proc/sys/vm/overcommit_memory");
            if mode == SeccompMode::Enforce && !kind.may_open() {
                // Refused softly, as glibc's malloc needs, not trapped.
                let e = open.expect_err("opens are refused");
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{kind:?}");
            } else {
                open.expect("this kind may open files");
            }
            if kind.allowed().contains(&libc::SYS_clone3) {
                // clone3 is refused with ENOSYS; threads still start, by clone.
                std::thread::spawn(|| ()).join().expect("a thread starts");
            }
            match std::env::var(CHILD_CALL).as_deref() {
                Ok("clone-newuser") => {
                    // SAFETY: a clone that the filter must stop before it
                    // happens; were it let through, the child process would
                    // share nothing and exit at once.
                    let pid = unsafe {
                        libc::syscall(
                            libc::SYS_clone,
                            libc::CLONE_NEWUSER | libc::SIGCHLD,
                            0,
                            0,
                            0,
                            0,
                        )
                    };
                    if pid == 0 {
                        // SAFETY: the child leaves at once.
                        unsafe { libc::_exit(0) };
                    }
                }
                // SAFETY: getppid takes no arguments and cannot fail.
                _ => unsafe {
                    libc::syscall(libc::SYS_getppid);
                },
            }
        })
        .join()
        .unwrap();
    }

    fn child(kind: ThreadKind, mode: &str) -> std::process::Output {
        child_calling(kind, mode, "getppid")
    }

    fn child_calling(kind: ThreadKind, mode: &str, call: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "seccomp::tests::forbidden_call_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_KIND, kind.name())
            .env(CHILD_MODE, mode)
            .env(CHILD_CALL, call)
            .output()
            .unwrap()
    }

    /// The child ended with status 159, naming its thread kind and `call`.
    fn assert_trapped(out: &std::process::Output, kind: ThreadKind, call: libc::c_long) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(EXIT_FORBIDDEN_SYSCALL)),
            "{kind:?}: {stderr}"
        );
        let reason = format!(
            "vmm: exit 159: seccomp: the {} thread made a forbidden system call ({call})",
            kind.name(),
        );
        assert!(stderr.contains(&reason), "{kind:?}: {stderr}");
    }

    #[test]
    fn threads_start_but_no_namespace_is_made() {
        for kind in [ThreadKind::Control, ThreadKind::Vcpu] {
            let out = child_calling(kind, "enforce", "clone-newuser");
            assert_trapped(&out, kind, libc::SYS_clone);
        }
    }

    #[test]
    fn a_forbidden_call_on_each_kind_of_thread_ends_the_vmm_with_its_reason() {
        for kind in ThreadKind::ALL {
            assert_trapped(&child(kind, "enforce"), kind, libc::SYS_getppid);
        }
        // Diagnosis: the same call goes through, and the kernel logs it.
        let out = child(ThreadKind::Vcpu, "log");
        assert!(out.status.success(), "{out:?}");
    }

    /// In a child process: a thread under the block worker's real filter
    /// serves what a guest asks of a qcow2 overlay through imago (first
    /// writes, write-zeroes, discards, a flush), which calls more than the
    /// raw data path does.
    #[test]
    #[ignore = "run in a child process by the test below"]
    fn overlay_work_child() {
        use crate::virtio::block::qcow2;
        let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR).expect("run by the parent"));
        let base = dir.join("base.raw");
        std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
        let path = dir.join("disk.qcow2");
        qcow2::create_overlay(&path, "base.raw", 64 << 20).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let overlay = qcow2::Overlay::open(&file, &base, true).unwrap();
        install_sigsys_handler().unwrap();
        std::thread::spawn(move || {
            apply_in(ThreadKind::Block, SeccompMode::Enforce).unwrap();
            // Writes, write-zeroes and discards of any size and alignment,
            // as a guest mixes them (imago COWs zero clusters, grows and
            // trims the file): a fixed pseudo-random sequence.
            let data = vec![2u8; 1 << 20];
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = move |below: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % below
            };
            for _ in 0..400 {
                let at = next(64 << 11) * 512;
                let len = (next(2048) + 1) * 512;
                let len = len.min((64 << 20) - at);
                match next(3) {
                    0 => overlay
                        .write_vectored(
                            &[std::io::IoSlice::new(&data[..len.min(1 << 20) as usize])],
                            at,
                        )
                        .unwrap(),
                    1 => overlay.write_zeroes(at, len).unwrap(),
                    // SAFETY: nothing else uses the overlay.
                    _ => unsafe { overlay.discard(at, len) }.unwrap(),
                }
            }
            overlay.flush().unwrap();
        })
        .join()
        .unwrap();
    }

    const CHILD_DIR: &str = "VIRGA_SECCOMP_CHILD_DIR";

    #[test]
    fn the_block_workers_filter_lets_it_serve_an_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "seccomp::tests::overlay_work_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("log".parse::<SeccompMode>(), Ok(SeccompMode::Log));
        assert!("loud".parse::<SeccompMode>().is_err());
    }
}
