//! Network namespaces as the tests' hosts and guests: made with `ip netns
//! add`, removed (with every link in them) when dropped. Commands run in one
//! through `ip netns exec`; the test's own calls through [`NetNs::run`],
//! which opens its sockets from a thread that has entered the namespace.

use std::process::Command;

/// Whether this machine can make namespaces (root, `ip`). Tests call it
/// concurrently, so each probe has a name of its own.
pub fn available() -> Result<(), String> {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("virga-probe-{}-{n}", std::process::id());
    let added = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !added.status.success() {
        return Err(format!(
            "ip netns add: {}",
            String::from_utf8_lossy(&added.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    Ok(())
}

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A new namespace named `name` (a leftover of that name is replaced),
    /// with its loopback up.
    pub fn new(name: &str) -> NetNs {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        let ns = NetNs { name: name.into() };
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        ns
    }

    /// `ip netns exec NAME program`, to be given arguments.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a shell line in the namespace; whether it succeeded.
    pub fn try_sh(&self, line: &str) -> bool {
        self.command("sh")
            .args(["-c", line])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs a shell line in the namespace and returns its output; fails the
    /// test if it fails.
    pub fn sh(&self, line: &str) -> String {
        let out = self
            .command("sh")
            .args(["-c", line])
            .output()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            out.status.success(),
            "in {}: {line}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls `f` on a thread inside the namespace: the sockets it opens
    /// (TCP connections to a server in there, say) belong to it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a shell line in the test's own namespace; fails the test if it fails.
pub fn sh(line: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", line])
        .output()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
