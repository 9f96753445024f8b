//! Network namespaces held by netd alone: made and entered from short-lived
//! threads (a socket opened in a namespace stays in it), never named under
//! /run/netns. A namespace lives while netd holds it (its handle, its
//! sockets) and goes, with its links, when netd lets go or dies: nothing of
//! it is left to clean up.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

/// A new, empty network namespace (its loopback down), as a handle.
pub fn create() -> io::Result<File> {
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<File> {
            // SAFETY: only a new network namespace, for this thread alone
            // (it ends right after): no file table or memory is unshared
            // from the rest of the process.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Runs `f` on a thread inside namespace `ns`, within `runtime` (so that
/// what it opens registers with netd's reactor).
pub fn within<T: Send>(
    ns: &File,
    runtime: &tokio::runtime::Handle,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let _entered = runtime.enter();
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_namespace_is_another_one_and_holds_its_own_sockets() {
        let Ok(ns) = create() else {
            eprintln!("skipping: no permission to make namespaces");
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let own = std::fs::read_link("/proc/self/ns/net").expect("own namespace");
        let inside = within(&ns, runtime.handle(), || {
            std::fs::read_link("/proc/thread-self/ns/net")
        })
        .expect("entered");
        assert_ne!(own, inside);
        // The same port is free in there though taken out here.
        let out = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = out.local_addr().expect("addr").port();
        let bound = within(&ns, runtime.handle(), || {
            std::net::UdpSocket::bind(("0.0.0.0", port))
        });
        assert!(bound.is_ok(), "{bound:?}");
    }
}
