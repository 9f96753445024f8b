//! A device worker thread: waits on eventfds and stops on request.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::ThreadKind;

/// A running worker; stopping (or dropping) it joins the thread.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Runs `body(stop)` on a new thread, under `kind`'s seccomp filter;
    /// `body` must return once `stop` is readable.
    pub fn spawn(
        name: &str,
        kind: ThreadKind,
        body: impl FnOnce(EventFd) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let theirs = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(crate::THREAD_STACK_BYTES)
            .spawn(move || {
                // Before the first look at a queue the guest fills.
                if let Err(e) = crate::seccomp::apply(kind) {
                    tracing::error!("{e}; this device stops");
                    return;
                }
                body(theirs)
            })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            if t.join().is_err() {
                tracing::error!("a device worker panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocks until one of `fds` is readable; returns which ones are.
pub fn wait_readable(fds: &[&EventFd]) -> std::io::Result<Vec<usize>> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    wait_readable_fds(&raw)
}

/// As [`wait_readable`], for any descriptors; negative ones are ignored.
pub fn wait_readable_fds(fds: &[RawFd]) -> std::io::Result<Vec<usize>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: pollfds is a valid array of pollfd for its whole length.
        let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(pollfds
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn worker_wakes_on_events_and_stops() {
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let theirs = kick.try_clone().unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        let mut w = Worker::spawn("test-worker", ThreadKind::Rng, move |stop| loop {
            let ready = wait_readable(&[&stop, &theirs]).unwrap();
            if ready.contains(&0) {
                return;
            }
            let _ = theirs.read();
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        kick.write(1).unwrap();
        for _ in 0..200 {
            if seen.load(Ordering::SeqCst) == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        w.stop();
        w.stop();
    }
}
