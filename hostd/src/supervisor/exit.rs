//! What a VMM's exit means: the state and reason an instance ends with, read
//! from the exit status and the VMM's own last line.

use std::path::Path;

use crate::instance::State;
use crate::process::Exit;

/// What a VMM's exit means for its instance: (state, reason).
pub(super) fn classify(requested: bool, exit: &Exit, last_line: Option<&str>) -> (State, String) {
    let said = last_line
        .and_then(|l| l.strip_prefix(vmm::EXIT_LINE))
        .and_then(|rest| rest.split_once(": "))
        .map(|(code, what)| (code.trim().parse::<i32>().ok(), what.to_owned()));
    // A VMM that failed before any VM ran (a bad configuration, a jail it could
    // not enter) said why on its last line, without the exit-line prefix.
    let early = last_line
        .filter(|_| said.is_none())
        .and_then(|l| l.strip_prefix("vmm: "));
    match (requested, exit, said) {
        (false, Exit::Code(c), None) if *c != 0 && early.is_some() => (
            State::Error,
            format!("VMM exited with status {c}: {}", early.unwrap_or_default()),
        ),
        (true, _, Some((_, what))) => (State::Shutoff, format!("stopped: {what}")),
        (true, Exit::Signal(s), None) => (
            State::Shutoff,
            format!("stopped (VMM killed by signal {s})"),
        ),
        (true, _, None) => (State::Shutoff, "stopped".into()),
        (false, Exit::Code(0), Some((_, what))) => (State::Shutoff, what),
        (false, Exit::Code(0), None) => (State::Shutoff, "the VMM exited".into()),
        (false, Exit::Code(c), Some((_, what))) => {
            (State::Error, format!("VMM exited with status {c}: {what}"))
        }
        (false, Exit::Code(c), None) => (State::Error, format!("VMM exited with status {c}")),
        (false, Exit::Signal(s), _) => (
            State::Error,
            format!(
                "VMM killed by signal {s}{}",
                if *s == libc::SIGKILL {
                    " (SIGKILL)"
                } else {
                    ""
                }
            ),
        ),
        (false, Exit::Unknown, Some((Some(0), what))) => (State::Shutoff, what),
        (false, Exit::Unknown, Some((_, what))) => (State::Error, format!("VMM failed: {what}")),
        (false, Exit::Unknown, None) => (
            State::Error,
            "VMM died without a word (killed or crashed; re-adopted, so its status is unknown)"
                .into(),
        ),
    }
}

/// Whether the VMM's last line says it exited because its guest rebooted
/// (its `on_reboot: exit` policy).
pub(super) fn guest_rebooted(last_line: Option<&str>) -> bool {
    last_line
        .and_then(|l| l.strip_prefix(vmm::EXIT_LINE))
        .is_some_and(|rest| rest.starts_with("0: guest rebooted"))
}

/// The VMM's last line if the VMM wrote it (its exit line, or why it could not
/// start), not a line of its tracing output.
pub(super) fn last_exit_line(log: &Path) -> Option<String> {
    tail_lines(log, 1).pop().filter(|l| l.starts_with("vmm: "))
}

/// The last `n` lines of a file (empty if it cannot be read); reads at most the
/// last 64 KiB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 << 10;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // a partial first line
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified() {
        let clean = Some("vmm: exit 0: guest powered off");
        let failed = Some("vmm: exit 1: guest triple fault on vCPU 0 (KVM_EXIT_SHUTDOWN)");
        assert_eq!(classify(false, &Exit::Code(0), clean).0, State::Shutoff);
        assert_eq!(classify(false, &Exit::Code(1), failed).0, State::Error);
        assert!(classify(false, &Exit::Code(1), failed)
            .1
            .contains("triple fault"));
        let (s, why) = classify(false, &Exit::Signal(9), None);
        assert_eq!(s, State::Error);
        assert!(why.contains("SIGKILL"), "{why}");
        assert_eq!(classify(true, &Exit::Signal(9), None).0, State::Shutoff);
        assert_eq!(classify(false, &Exit::Unknown, clean).0, State::Shutoff);
        assert_eq!(classify(false, &Exit::Unknown, failed).0, State::Error);
        assert_eq!(classify(false, &Exit::Unknown, None).0, State::Error);
        // A VMM that broke its seccomp filter says which thread and call.
        let seccomp =
            Some("vmm: exit 159: seccomp: the vcpu thread made a forbidden system call (59)");
        let (s, why) = classify(false, &Exit::Code(159), seccomp);
        assert_eq!(s, State::Error);
        assert_eq!(
            why,
            "VMM exited with status 159: seccomp: the vcpu thread made a forbidden system call (59)"
        );
        // One that could not start says why, without an exit line.
        let jail = Some("vmm: invalid configuration: jail: /img: not writable by uid 2000000");
        let (s, why) = classify(false, &Exit::Code(2), jail);
        assert_eq!(s, State::Error);
        assert_eq!(
            why,
            "VMM exited with status 2: invalid configuration: jail: /img: not writable by uid 2000000"
        );
        // Its other lines are no reason for a death it did not report.
        let (_, why) = classify(
            false,
            &Exit::Unknown,
            Some("vmm: serial console on /dev/pts/3"),
        );
        assert!(why.contains("without a word"), "{why}");
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert!(tail_lines(&p, 3).is_empty());
        std::fs::write(&p, "a\nb\r\nc\nd\n").unwrap();
        assert_eq!(tail_lines(&p, 2), vec!["c", "d"]);
        assert_eq!(tail_lines(&p, 10).len(), 4);
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, big).unwrap();
        assert_eq!(tail_lines(&p, 1), vec!["line 19999"]);
    }
}
