//! The picker's sandbox: resource limits, then a seccomp filter that allows
//! reading the descriptors it was given, writing its outputs, allocating
//! memory and exiting. Nothing can be opened, executed, mapped from a file
//! or sent anywhere after it is installed: a bug in a parser fed a hostile
//! image can at worst write garbage to the outputs it already holds.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("setting {0}: {1}")]
    Limit(&'static str, std::io::Error),
    #[error("building the seccomp filter: {0}")]
    Filter(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// The limits the picker runs under.
pub struct Limits {
    pub cpu_secs: u64,
    pub address_space_bytes: u64,
    /// The largest output file.
    pub file_bytes: u64,
}

/// System calls the picker makes once it runs on the image.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    // qcow2 overlays are read through imago, which reads vectors.
    libc::SYS_preadv,
    libc::SYS_write,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // What the pick cost, for hostd's log.
    libc::SYS_getrusage,
];

fn set_limit(
    resource: libc::__rlimit_resource_t,
    name: &'static str,
    value: u64,
) -> Result<(), SandboxError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct passed by reference; no memory is
    // kept.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(SandboxError::Limit(name, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Enters the sandbox; after it returns, only the system calls in
/// [`ALLOWED`] work, and any other kills the process (SIGSYS).
pub fn enter(limits: &Limits) -> Result<(), SandboxError> {
    set_limit(libc::RLIMIT_CPU, "RLIMIT_CPU", limits.cpu_secs)?;
    set_limit(libc::RLIMIT_AS, "RLIMIT_AS", limits.address_space_bytes)?;
    set_limit(libc::RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.file_bytes)?;
    set_limit(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    set_limit(libc::RLIMIT_NPROC, "RLIMIT_NPROC", 0)?;
    let mut rules = ALLOWED
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    // fcntl(fd, F_GETFD) only: what std's debug builds ask when a file
    // closes; no other command (F_DUPFD and friends) gets through.
    let getfd = seccompiler::SeccompCondition::new(
        1,
        seccompiler::SeccompCmpArgLen::Dword,
        seccompiler::SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )
    .and_then(|c| seccompiler::SeccompRule::new(vec![c]))
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    rules.insert(libc::SYS_fcntl, vec![getfd]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Filter(e.to_string()))?;
    seccompiler::apply_filter(&program).map_err(|e| SandboxError::Install(e.to_string()))
}

/// What this process has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// User and system CPU time.
    pub cpu_ms: u64,
    /// 512-byte blocks read from storage (not from the page cache).
    pub blocks_read: u64,
}

/// What this process has used so far; zeros if the kernel will not say.
pub fn usage() -> Usage {
    // SAFETY: rusage is plain data that getrusage fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only the struct passed by pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Usage::default();
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    Usage {
        cpu_ms: ms(ru.ru_utime) + ms(ru.ru_stime),
        blocks_read: ru.ru_inblock as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_cpu_time() {
        // Spun until the kernel counts 20 ms more, however busy the host
        // (a fixed spell of wall time may get little CPU); a usage that
        // never grows runs out of the 20 s.
        let before = usage();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while usage().cpu_ms < before.cpu_ms + 20
            && started.elapsed() < std::time::Duration::from_secs(20)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(
            usage().cpu_ms >= before.cpu_ms + 20,
            "{before:?} {:?}",
            usage()
        );
    }
}
