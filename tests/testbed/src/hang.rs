//! What L1's CPU is doing when a testbed hangs: asked of QEMU's monitor before
//! the testbed is killed, so that a hang can be placed (the L1 kernel spinning
//! with interrupts off, idle, or running an L2 guest) instead of guessed at.
//! Each sample also reads L1's local APIC: an interrupt left pending in its
//! IRR while the CPU stays in an L2 guest is one L1 never got to take.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Samples of L1's vCPU, taken `SAMPLES` times a little apart: a RIP that never
/// moves is a tight loop, one that changes is progress somewhere.
const SAMPLES: usize = 3;

/// A report of L1's CPU state, with the kernel symbol of each RIP when the
/// address lies in L1's kernel text (the testbed boots L1 with `nokaslr`).
pub fn cpu_report(monitor: &Path, system_map: Option<&Path>) -> String {
    // Debian ships a stub System.map (one line pointing at the -dbg
    // package): without `_etext` there is nothing to name an address by.
    let symbols = system_map
        .and_then(|p| std::fs::read_to_string(p).ok())
        .filter(|m| m.contains(" _etext"));
    let mut report = String::new();
    for i in 0..SAMPLES {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        match monitor_command(monitor, "info registers", "CPU#") {
            Ok(regs) => {
                let lapic = monitor_command(monitor, "info lapic", "dumping").unwrap_or_default();
                let line = summary(&regs, symbols.as_deref());
                let apic = lapic_summary(&lapic);
                report.push_str(&format!("sample {}: {line} {apic}\n", i + 1));
                if i == 0 {
                    report.push_str(&regs);
                    report.push('\n');
                    report.push_str(&lapic);
                    report.push('\n');
                }
            }
            Err(e) => {
                report.push_str(&format!("QEMU monitor {}: {e}\n", monitor.display()));
                break;
            }
        }
    }
    report
}

/// What wakes an L1 whose CPU stays in an L2 guest with its own timer
/// interrupt pending: a fresh interrupt makes QEMU look at L1's interrupts
/// again (a key press reaches L1's local APIC through the IOAPIC; an NMI
/// needs no driver), and the pending one then takes L1 out of the guest.
/// In the order tried, with what each is called in a report.
const KICKS: &[(&str, &str)] = &[
    (
        "sendkey shift",
        "a key press (an interrupt through L1's IOAPIC)",
    ),
    ("nmi", "an NMI"),
];

/// How long a kick has to restart L1's output before the next is tried.
const KICK_WAIT: Duration = Duration::from_secs(5);

/// Tries each of [`KICKS`] on a silent L1 until `alive` says it moves again;
/// returns the kick that woke it, or `None` if none did.
pub fn kick(monitor: &Path, alive: impl Fn() -> bool) -> Option<&'static str> {
    for (command, name) in KICKS {
        if monitor_command(monitor, command, "").is_err() {
            return None;
        }
        let deadline = Instant::now() + KICK_WAIT;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            if alive() {
                return Some(name);
            }
        }
    }
    None
}

/// `command`'s answer from QEMU's human monitor, from where `starts` is.
fn monitor_command(monitor: &Path, command: &str, starts: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(monitor)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    read_for(&mut s, Duration::from_millis(500)); // the banner and prompt
    s.write_all(format!("{command}\n").as_bytes())?;
    let out = read_for(&mut s, Duration::from_secs(2));
    // The monitor echoes the command with terminal escapes: keep the answer.
    Ok(match out.find(starts) {
        Some(i) => out[i..].trim_end_matches("(qemu) ").to_owned(),
        None => out,
    })
}

fn read_for(s: &mut UnixStream, total: Duration) -> String {
    let deadline = Instant::now() + total;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if out.ends_with(b"(qemu) ") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

/// `RIP=... (symbol+off) CPL=.. IF=.. HLT=..` from `info registers` output.
fn summary(regs: &str, symbols: Option<&str>) -> String {
    let find = |name: &str| {
        regs.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let field = |name: &str| find(name).unwrap_or_else(|| "?".into());
    // 64-bit mode shows RIP/RFL, 32-bit mode EIP/EFL.
    let rip = find("RIP")
        .or_else(|| find("EIP"))
        .unwrap_or_else(|| "?".into());
    let rfl = find("RFL")
        .or_else(|| find("EFL"))
        .and_then(|f| u64::from_str_radix(&f, 16).ok());
    let interrupts = match rfl {
        Some(f) if f & (1 << 9) != 0 => "on",
        Some(_) => "off",
        None => "?",
    };
    let symbol = match (symbols, u64::from_str_radix(&rip, 16).ok()) {
        (None, _) => "no System.map to name it; L1's /proc/kallsyms does, under nokaslr".into(),
        (Some(m), Some(a)) => symbol_of(m, a).unwrap_or_else(|| {
            "not in L1's kernel text (a module, user space or an L2 guest)".into()
        }),
        (Some(_), None) => "unreadable".into(),
    };
    format!(
        "RIP={rip} ({symbol}) CPL={} interrupts {interrupts} HLT={}",
        field("CPL"),
        field("HLT")
    )
}

/// `L1-IRR=.. L1-ISR=.. L1-PPR=..` from `info lapic` output: the vectors
/// L1's local APIC holds for its CPU (requested, in service) and the
/// priority below which it holds them back.
fn lapic_summary(lapic: &str) -> String {
    let row = |name: &str| {
        lapic.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.starts_with(char::is_whitespace)
                .then(|| rest.split_whitespace().collect::<Vec<_>>().join(","))
        })
    };
    let ppr = lapic
        .split_whitespace()
        .skip_while(|w| *w != "PPR")
        .nth(1)
        .unwrap_or("?");
    format!(
        "L1-IRR={} L1-ISR={} L1-PPR={ppr}",
        row("IRR").unwrap_or_else(|| "?".into()),
        row("ISR").unwrap_or_else(|| "?".into()),
    )
}

/// The System.map symbol at or below `addr`, as `name+0xoff`, when `addr` is in
/// the kernel's text.
fn symbol_of(system_map: &str, addr: u64) -> Option<String> {
    let mut best: Option<(u64, &str)> = None;
    let mut text_end = 0;
    for line in system_map.lines() {
        let mut parts = line.split_whitespace();
        let (Some(a), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if name == "_etext" {
            text_end = a;
        }
        if matches!(kind, "T" | "t") && a <= addr && best.is_none_or(|(b, _)| a > b) {
            best = Some((a, name));
        }
    }
    let (start, name) = best?;
    (addr < text_end).then(|| format!("{name}+{:#x}", addr - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rip_is_named_by_its_kernel_symbol() {
        let map = "ffffffff81000000 T _stext\nffffffff81001000 t native_safe_halt\n\
                   ffffffff81002000 T other\nffffffff81003000 T _etext\n";
        assert_eq!(
            symbol_of(map, 0xffffffff81001010).as_deref(),
            Some("native_safe_halt+0x10")
        );
        assert_eq!(symbol_of(map, 0xffffffffc0001000), None, "a module");
        let regs = "RAX=0 RBX=1\nRIP=ffffffff81001010 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n";
        assert_eq!(
            summary(regs, Some(map)),
            "RIP=ffffffff81001010 (native_safe_halt+0x10) CPL=0 interrupts on HLT=1"
        );
        let regs = "EIP=0000b7b9 EFL=00000002 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\n";
        assert!(summary(regs, Some(map)).contains("RIP=0000b7b9 (not in L1's kernel text"));
        assert!(summary(regs, Some(map)).contains("interrupts off HLT=0"));
        assert!(summary(regs, None).contains("(no System.map to name it"));
    }

    #[test]
    fn the_local_apic_says_what_l1_has_pending() {
        // QEMU 7.2's `info lapic`, abridged.
        let lapic = "dumping local APIC state for CPU 0\n\nLVTT\t 0x000000ec active-hi edge \
                     one-shot Fixed  (vec 236)\nISR\t (none)\nIRR\t 34 236\n\n\
                     APR 0x00 TPR 0x00 DFR 0x0f LDR 0x01 PPR 0x00\n";
        assert_eq!(
            lapic_summary(lapic),
            "L1-IRR=34,236 L1-ISR=(none) L1-PPR=0x00"
        );
        assert_eq!(lapic_summary(""), "L1-IRR=? L1-ISR=? L1-PPR=?");
    }

    #[test]
    fn a_running_qemu_reports_its_cpu() {
        if std::process::Command::new(crate::nested::QEMU)
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: no QEMU");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let monitor = dir.path().join("monitor.sock");
        let mut qemu = std::process::Command::new(crate::nested::QEMU)
            .args([
                "-accel",
                "tcg",
                "-display",
                "none",
                "-nodefaults",
                "-m",
                "64",
            ])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !monitor.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let report = cpu_report(&monitor, None);
        // Both kicks are commands this QEMU knows (an unknown one answers
        // "unknown command"; a running CPU is not woken by them).
        let answers: Vec<String> = KICKS
            .iter()
            .map(|(command, _)| monitor_command(&monitor, command, "").unwrap())
            .collect();
        let _ = qemu.kill();
        let _ = qemu.wait();
        assert!(report.contains("sample 1: RIP="), "{report}");
        assert!(report.contains("sample 3: RIP="), "{report}");
        assert!(report.contains("CPU#0"), "{report}");
        assert!(report.contains("L1-IRR="), "{report}");
        assert!(report.contains("LVTT"), "{report}");
        for (answer, (command, _)) in answers.iter().zip(KICKS) {
            assert!(answer.contains(command), "{command}: {answer}");
            assert!(!answer.contains("unknown command"), "{command}: {answer}");
            assert!(!answer.contains("Error"), "{command}: {answer}");
        }
    }
}
