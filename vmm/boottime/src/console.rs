//! What a boot's console lines say about its phases: the kernel's own
//! timestamps (`[    1.234567] ...`, printk's clock), the moment the kernel
//! starts init, and `initcall_debug`'s per-initcall times. A `quiet` kernel
//! prints none of these; the phases the VMM sees remain.

/// The kernel's line when it hands over to userspace: "Run /init as init
/// process" (init/main.c), for an initramfs or a root filesystem's init.
const INIT_START: (&str, &str) = ("Run /", " as init process");

/// What one console line tells.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// The kernel starts init; its printk clock then, if printed.
    InitStart { kernel_clock_s: Option<f64> },
    /// An initcall finished (`initcall_debug`): its name and duration.
    Initcall { name: String, usecs: u64 },
}

/// The printk timestamp a line starts with, in seconds.
pub fn kernel_clock(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    let stamp = stamp.trim();
    // "seconds.micros" only: a log level or other bracket is not a clock.
    let (s, us) = stamp.split_once('.')?;
    if s.is_empty() || us.len() != 6 || !s.bytes().chain(us.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// Reads one line (without its newline).
pub fn event(line: &str) -> Option<Event> {
    let (start, end) = INIT_START;
    if let Some(i) = line.find(start) {
        if line[i..].contains(end) {
            return Some(Event::InitStart {
                kernel_clock_s: kernel_clock(line),
            });
        }
    }
    // "initcall virtio_blk_init+0x0/0x90 returned 0 after 1234 usecs"
    let (_, rest) = line.split_once("initcall ")?;
    let (name, rest) = rest.split_once(" returned ")?;
    let (_, rest) = rest.split_once(" after ")?;
    let usecs = rest.strip_suffix(" usecs")?.trim().parse().ok()?;
    let name = name.split('+').next().unwrap_or(name);
    if name.is_empty() || name.len() > 128 || name.contains(' ') {
        return None;
    }
    Some(Event::Initcall {
        name: name.to_owned(),
        usecs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printk_clock_is_read_and_nothing_else() {
        assert_eq!(kernel_clock("[    1.234567] Run /init"), Some(1.234567));
        assert_eq!(kernel_clock("[12345.000001] x"), Some(12345.000001));
        assert_eq!(kernel_clock("[  OK  ] Started"), None);
        assert_eq!(kernel_clock("[1.2] short"), None);
        assert_eq!(kernel_clock("no clock"), None);
        assert_eq!(kernel_clock("[ -1.000000] x"), None);
    }

    #[test]
    fn init_start_with_and_without_clock() {
        assert_eq!(
            event("[    0.912345] Run /init as init process"),
            Some(Event::InitStart {
                kernel_clock_s: Some(0.912345)
            })
        );
        assert_eq!(
            event("Run /sbin/init as init process"),
            Some(Event::InitStart {
                kernel_clock_s: None
            })
        );
        assert_eq!(event("Run /init now"), None);
    }

    #[test]
    fn initcalls_are_named_and_timed() {
        assert_eq!(
            event("[    0.2] initcall virtio_blk_init+0x0/0x90 returned 0 after 1234 usecs"),
            Some(Event::Initcall {
                name: "virtio_blk_init".into(),
                usecs: 1234
            })
        );
        assert_eq!(
            event("initcall pci_init returned -19 after 5 usecs"),
            Some(Event::Initcall {
                name: "pci_init".into(),
                usecs: 5
            })
        );
        assert_eq!(event("initcall x returned 0 after many usecs"), None);
        assert_eq!(event("calling  virtio_blk_init+0x0/0x90 @ 1"), None);
    }
}
