//! `virga-bootpick`: finds what the disk image on its standard input boots,
//! in a sandbox (see `sandbox`), and writes the kernel to descriptor 3, the
//! initramfs to descriptor 4 and a JSON line to standard output:
//! `{"cmdline": ..., "how": ..., "kernel_bytes": N, "initrd_bytes": N,
//! "cpu_ms": N, "blocks_read": N}` (what the pick cost: a slow pick on a
//! busy host tells CPU from disk by them).
//! With `--overlay`, standard input is a qcow2 overlay and descriptor 5 the
//! raw image under it; with `--layers N` too, descriptors 6 to 5+N are the
//! qcow2 layers between them (the one right under the overlay first).
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
const FIRST_LAYER_FD: i32 = 6;

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
    let args: Vec<String> = std::env::args().collect();
    let layers = match args.iter().position(|a| a == "--layers") {
        Some(at) => args
            .get(at + 1)
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|n| (0..=virga_bootpick::disk::MAX_LAYERS as i32).contains(n))
            .unwrap_or_else(|| fail("--layers: a number of layers (0-32)")),
        None => 0,
    };
    let image = if args.iter().any(|a| a == "--overlay") {
        // SAFETY: hostd hands descriptor 5, and 6 to 5+layers, over for
        // exactly this; each is owned by its File from here on.
        let base = unsafe { std::fs::File::from_raw_fd(BASE_FD) };
        let layers = (FIRST_LAYER_FD..FIRST_LAYER_FD + layers)
            // SAFETY: as above.
            .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) })
            .collect();
        Image::chain(input, layers, base)
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
    let used = sandbox::usage();
    let line = serde_json::json!({
        "cmdline": choice.cmdline,
        "how": choice.how,
        "kernel_bytes": choice.kernel.len(),
        "initrd_bytes": choice.initrd.len(),
        "cpu_ms": used.cpu_ms,
        "blocks_read": used.blocks_read,
    });
    println!("{line}");
}
