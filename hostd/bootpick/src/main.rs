//! `virga-bootpick`: finds what the disk image on its standard input boots,
//! in a sandbox (see `sandbox`), and writes the kernel to descriptor 3, the
//! initramfs to descriptor 4 and a JSON line to standard output:
//! `{"cmdline": ..., "how": ..., "kernel_bytes": N, "initrd_bytes": N}`.
//! With `--overlay`, standard input is a qcow2 overlay and descriptor 5 the
//! raw image under it.
//! hostd starts it with exactly those descriptors. On failure it exits 1
//! with one line on standard error saying why.
//!
//! `--check-sandbox` enters the sandbox and then tries to open a file: the
//! process must die of SIGSYS (what hostd's tests check).

use std::io::Write;
use std::os::fd::FromRawFd;

use virga_bootpick::disk::Image;
use virga_bootpick::sandbox;
use virga_bootpick::{pick, Limits};

const KERNEL_FD: i32 = 3;
const INITRD_FD: i32 = 4;
const BASE_FD: i32 = 5;

fn fail(why: impl std::fmt::Display) -> ! {
    eprintln!("virga-bootpick: {why}");
    std::process::exit(1);
}

fn main() {
    let limits = Limits::default();
    // Taken before the filter: fstat is not allowed inside.
    // SAFETY: descriptor 0 is ours (standard input); it is owned by this
    // File from here on and by nothing else.
    let input = unsafe { std::fs::File::from_raw_fd(0) };
    let image = if std::env::args().any(|a| a == "--overlay") {
        // SAFETY: hostd hands descriptor 5 over for exactly this; it is
        // owned by this File from here on.
        let base = unsafe { std::fs::File::from_raw_fd(BASE_FD) };
        Image::overlay(input, base)
            .unwrap_or_else(|e| fail(format!("the qcow2 overlay on standard input: {e}")))
    } else {
        Image::new(input).unwrap_or_else(|e| fail(format!("the image on standard input: {e}")))
    };
    let sandbox = sandbox::Limits {
        cpu_secs: 60,
        // Kernel and initrd in memory, plus the filesystem's caches.
        address_space_bytes: limits.kernel_bytes + limits.initrd_bytes + (1 << 30),
        file_bytes: limits.kernel_bytes.max(limits.initrd_bytes),
    };
    sandbox::enter(&sandbox).unwrap_or_else(|e| fail(e));
    if std::env::args().nth(1).as_deref() == Some("--check-sandbox") {
        let _ = std::fs::File::open("/etc/hostname");
        fail("the sandbox let an open through");
    }
    let choice = pick(&image, &limits).unwrap_or_else(|e| fail(e));
    for (fd, bytes, what) in [
        (KERNEL_FD, &choice.kernel, "kernel"),
        (INITRD_FD, &choice.initrd, "initrd"),
    ] {
        // SAFETY: hostd hands these descriptors over for exactly this; each
        // is owned by this File and closed when it drops.
        let mut out = unsafe { std::fs::File::from_raw_fd(fd) };
        out.write_all(bytes)
            .unwrap_or_else(|e| fail(format!("writing the {what} to descriptor {fd}: {e}")));
    }
    let line = serde_json::json!({
        "cmdline": choice.cmdline,
        "how": choice.how,
        "kernel_bytes": choice.kernel.len(),
        "initrd_bytes": choice.initrd.len(),
    });
    println!("{line}");
}
