//! TCP ports on 127.0.0.1 for servers under test.
//!
//! A port picked free and bound later by the server is a race: anything
//! started meanwhile (another test's server, PostgreSQL) may take it, and
//! the test then talks to that. [`HeldPort`] closes it: the test binds the
//! port and hands the socket to the server, as systemd's socket activation
//! does.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;

/// `N` distinct free ports: every listener is held until all are known, so
/// the kernel cannot hand out one port twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("its address").port())
}

pub fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

/// A port the test holds: bound and listening from the start; a server
/// started with [`HeldPort::hand_to`] serves it (descriptor 3,
/// `LISTEN_FDS=1`). Connections made before the server is up wait in the
/// backlog; the test keeps the socket, so a restarted server gets it again.
pub struct HeldPort {
    listener: TcpListener,
    pub port: u16,
}

impl HeldPort {
    pub fn new() -> HeldPort {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        HeldPort { listener, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Makes `cmd` start its process with this socket as descriptor 3 and
    /// `LISTEN_FDS=1`.
    pub fn hand_to(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.listener.as_raw_fd();
        cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
        // SAFETY: between fork and exec only dup2 and fcntl, which are
        // async-signal-safe, on a descriptor this process holds open.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself keeps close-on-exec: clear it.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Default for HeldPort {
    fn default() -> Self {
        HeldPort::new()
    }
}

/// Waits (at most 20 s) until something listens on `port`.
pub fn wait_for_port(port: u16) {
    crate::wait::until(
        &format!("port {port} to open"),
        std::time::Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_held_port_is_served_by_the_process_it_is_handed_to() {
        use std::io::{Read, Write};
        let held = super::HeldPort::new();
        // A shell that answers on descriptor 3 is more than a test needs:
        // python's socket.fromfd serves one connection.
        let mut cmd = super::Command::new("python3");
        cmd.args([
            "-c",
            "import os,socket; assert os.environ['LISTEN_FDS']=='1'; s=socket.socket(fileno=3); c,_=s.accept(); c.recv(1); c.sendall(b'held'); c.close()",
        ]);
        held.hand_to(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut got = String::new();
        let mut conn = std::net::TcpStream::connect(held.addr()).unwrap();
        conn.write_all(b"x").unwrap();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, "held");
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn ports_are_distinct() {
        let [a, b, c] = super::free_ports::<3>();
        assert!(a != b && b != c && a != c);
    }
}
