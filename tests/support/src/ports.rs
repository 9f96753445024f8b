//! Free TCP ports on 127.0.0.1.

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
    fn ports_are_distinct() {
        let [a, b, c] = super::free_ports::<3>();
        assert!(a != b && b != c && a != c);
    }
}
