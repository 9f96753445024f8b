//! Fuzz target `nbd`: storaged's NBD server, which any host on the storage
//! network can reach, fed random bytes after no handshake, part of one or
//! all of it, and random requests (any command, flags, offset and length).
//! It must answer or hang up within the fuzz runner's hang limit, never
//! crash, never write outside the volume, and keep serving good clients.
//! `cargo xtask fuzz --target nbd` runs it long.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use proptest::prelude::*;
use storaged::nbd::{Exports, Server};

const VOLUME: u64 = 1 << 20;
const NAME: &str = "0123456789abcdef0123456789abcdef";
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;

struct OneVolume(std::path::PathBuf);

impl Exports for OneVolume {
    fn lookup(&self, name: &str) -> Option<(String, storaged_proto::Connection)> {
        (name == NAME).then(|| {
            let files = storaged_proto::Connection {
                path: self.0.display().to_string(),
                ..Default::default()
            };
            ("v1".to_owned(), files)
        })
    }
}

/// How far into the protocol a case gets before its random part.
#[derive(Debug, Clone)]
enum Start {
    Nothing,
    ClientFlags,
    Negotiated,
}

#[derive(Debug, Clone)]
struct Request {
    flags: u16,
    kind: u16,
    offset: u64,
    length: u32,
    /// Payload bytes sent (a write's, or stray ones).
    payload: usize,
}

#[derive(Debug, Clone)]
struct Case {
    start: Start,
    requests: Vec<Request>,
    tail: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    let start = prop_oneof![
        1 => Just(Start::Nothing),
        1 => Just(Start::ClientFlags),
        4 => Just(Start::Negotiated)
    ];
    let offset = prop_oneof![0..VOLUME + 8192, any::<u64>()];
    let length = prop_oneof![0u32..65536, any::<u32>()];
    let request = (any::<u16>(), 0u16..10, offset, length, 0usize..70_000).prop_map(
        |(flags, kind, offset, length, payload)| Request {
            flags,
            kind,
            offset,
            length,
            payload,
        },
    );
    (
        start,
        proptest::collection::vec(request, 0..6),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(start, requests, tail)| Case {
            start,
            requests,
            tail,
        })
}

/// Reads the greeting and negotiates the export (NBD_OPT_GO); false when
/// the server did not take it.
fn negotiate(s: &mut TcpStream) -> bool {
    let mut hello = [0u8; 18];
    if s.read_exact(&mut hello).is_err() {
        return false;
    }
    let mut go = Vec::new();
    go.extend_from_slice(&3u32.to_be_bytes());
    go.extend_from_slice(&IHAVEOPT.to_be_bytes());
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&((4 + NAME.len() + 2) as u32).to_be_bytes());
    go.extend_from_slice(&(NAME.len() as u32).to_be_bytes());
    go.extend_from_slice(NAME.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    if s.write_all(&go).is_err() {
        return false;
    }
    // NBD_REP_INFO then NBD_REP_ACK.
    for _ in 0..2 {
        let mut head = [0u8; 20];
        if s.read_exact(&mut head).is_err() {
            return false;
        }
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        if s.read_exact(&mut data).is_err() {
            return false;
        }
    }
    true
}

/// Set by any panic, on any thread: a connection's task that panicked
/// would otherwise only end that connection, quietly.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[test]
fn nbd() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
        previous(info)
    }));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(VOLUME)
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = Server::new(OneVolume(path.clone()), Default::default());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            server.serve(listener).await
        });
    });

    virga_test_support::fuzz::run("nbd", case(), |c| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(virga_test_support::fuzz::HANG))
            .unwrap();
        let mut out = Vec::new();
        match c.start {
            Start::Nothing => {}
            Start::ClientFlags => {
                let mut hello = [0u8; 18];
                s.read_exact(&mut hello).unwrap();
                out.extend_from_slice(&3u32.to_be_bytes());
            }
            Start::Negotiated => prop_assert!(negotiate(&mut s), "a good handshake failed"),
        }
        for r in &c.requests {
            out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            out.extend_from_slice(&r.flags.to_be_bytes());
            out.extend_from_slice(&r.kind.to_be_bytes());
            out.extend_from_slice(&1u64.to_be_bytes());
            out.extend_from_slice(&r.offset.to_be_bytes());
            out.extend_from_slice(&r.length.to_be_bytes());
            out.extend(std::iter::repeat_n(0x5a, r.payload));
        }
        out.extend_from_slice(&c.tail);
        // The server may hang up before taking it all.
        let _ = s.write_all(&out);
        let _ = s.shutdown(Shutdown::Write);
        // It answers what it can and ends the connection.
        let mut rest = Vec::new();
        if let Err(e) = s.read_to_end(&mut rest) {
            prop_assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "no end within the hang limit"
            );
        }
        // Nothing was written past the volume's end.
        prop_assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME);
        // A good client is still served.
        let mut good = TcpStream::connect(addr).unwrap();
        good.set_read_timeout(Some(virga_test_support::fuzz::HANG))
            .unwrap();
        prop_assert!(negotiate(&mut good), "the server stopped serving");
        prop_assert!(
            !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
            "the server panicked"
        );
        Ok(())
    });
}
