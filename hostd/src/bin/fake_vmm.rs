//! A stand-in VMM for hostd's tests: it serves the control socket the way the
//! real VMM does (`GET /vm`, `PUT /vm/state`, `PUT /vm/actions/shutdown`,
//! `GET /metrics`) without KVM or a guest, so hostd's instance lifecycle is
//! tested on any machine. Not for production use.
//!
//! Behaviour is chosen per instance by words on the kernel command line:
//! - `fake.silent`: never opens the control socket (a VMM that hangs while
//!   starting);
//! - `fake.ignore_shutdown`: accepts a shutdown request and goes on running
//!   (a guest that ignores ACPI power button presses);
//! - `fake.crash_after_ms=N`: fails N ms after starting, with status 3 and
//!   an exit line, as a VMM whose guest triple-faulted does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exits the way the real VMM does: its last line says why.
fn exit_with(code: i32, why: &str) -> ! {
    println!("vmm: exit {code}: {why}");
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--version") {
        println!("vmm 0.0.0-fake");
        return;
    }
    let Some(config) = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
    else {
        println!("vmm: usage: fake-vmm --config FILE");
        std::process::exit(2);
    };
    let config_path = config.clone();
    let config: serde_json::Value = match std::fs::read(config)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("vmm: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    // Gone with the test that made it: its configuration's directory is
    // removed when the test ends, however it ends.
    let config_path = PathBuf::from(config_path);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if !config_path.exists() {
            std::process::exit(0);
        }
    });
    let cmdline = config["cmdline"].as_str().unwrap_or_default().to_owned();
    let has = |word: &str| cmdline.split_whitespace().any(|w| w == word);
    if let Some(path) = config["serial"]["path"].as_str() {
        let _ = std::fs::write(path, "fake guest: booted\n");
    }
    if has("fake.silent") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if let Some(ms) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fake.crash_after_ms="))
        .and_then(|n| n.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            exit_with(3, "guest triple fault (fake)");
        });
    }
    let Some(socket) = config["api_socket"].as_str().map(PathBuf::from) else {
        println!("vmm: invalid configuration: no api_socket");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            println!("vmm: {}: {e}", socket.display());
            std::process::exit(1);
        }
    };
    let paused = Arc::new(AtomicBool::new(false));
    let ignore_shutdown = has("fake.ignore_shutdown");
    for stream in listener.incoming().flatten() {
        let paused = paused.clone();
        std::thread::spawn(move || serve(stream, &paused, ignore_shutdown));
    }
}

/// Answers one HTTP/1.1 request on `stream`.
fn serve(stream: UnixStream, paused: &AtomicBool, ignore_shutdown: bool) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0).min(1 << 20);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body);
    let (status, answer) = match (method.as_str(), path.as_str()) {
        ("GET", "/vm") => {
            let state = if paused.load(Ordering::SeqCst) {
                "paused"
            } else {
                "running"
            };
            ("200 OK", format!(r#"{{"state":"{state}"}}"#))
        }
        ("PUT", "/vm/state") => {
            paused.store(body.contains("paused"), Ordering::SeqCst);
            ("204 No Content", String::new())
        }
        ("PUT", "/vm/actions/shutdown") => {
            if !ignore_shutdown {
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    exit_with(0, "guest powered off");
                });
            }
            ("202 Accepted", String::new())
        }
        ("GET", "/metrics") => ("200 OK", r#"{"fake":true}"#.to_owned()),
        _ => (
            "404 Not Found",
            r#"{"error":"no such resource"}"#.to_owned(),
        ),
    };
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
}
