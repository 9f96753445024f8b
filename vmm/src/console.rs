//! The host side of the guest's serial console: where its output goes (stdout, a
//! file, a PTY) and where its input comes from (a PTY, or a FIFO beside a
//! file).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::{SerialConfig, SerialMode};
use crate::devices::lock;
use crate::devices::serial::SerialDevice;

/// How long a partial line (a prompt, say) waits for the rest of its line
/// before it is written anyway.
const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(100);
/// Pending output written out even without a newline.
const MAX_PENDING: usize = 4096;

/// Output shared by every VM this process builds (a restart keeps the same console).
#[derive(Clone)]
pub struct Console {
    out: Arc<Output>,
    input_target: Arc<Mutex<Option<Arc<Mutex<SerialDevice>>>>>,
    pty_path: Option<String>,
    /// Held open so the master neither reads EIO nor loses output while no client is
    /// attached; a full PTY buffer then drops output instead of blocking a vCPU.
    _pty_slave: Option<Arc<File>>,
    /// Where input comes from (the PTY's reading side, or a FIFO) until
    /// [`Console::start`] hands it to its thread.
    pty_reader: Arc<Mutex<Option<File>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("serial.path {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("opening a PTY for the serial console: {0}")]
    Pty(std::io::Error),
    #[error("serial.input {path}: {why}")]
    Input { path: String, why: String },
}

/// Opens the FIFO console input is read from. Opened for writing too, so
/// that it never reads end-of-file while nobody has it open to type.
fn open_input_fifo(path: &std::path::Path) -> Result<File, ConsoleError> {
    use std::os::unix::fs::FileTypeExt;
    let failed = |why: String| ConsoleError::Input {
        path: path.display().to_string(),
        why,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| failed(e.to_string()))?;
    let kind = file.metadata().map_err(|e| failed(e.to_string()))?;
    if !kind.file_type().is_fifo() {
        return Err(failed("not a FIFO".into()));
    }
    Ok(file)
}

impl Console {
    pub fn open(config: &SerialConfig) -> Result<Self, ConsoleError> {
        let mut pty_path = None;
        let mut pty_reader = None;
        let mut pty_slave = None;
        // Stdout and files get whole lines (see `Output`); a PTY is interactive
        // and has one reader, so it gets each byte as the guest sends it.
        let (out, by_line): (Box<dyn Write + Send>, bool) = match config.mode {
            SerialMode::Stdout => (Box::new(std::io::stdout()), true),
            SerialMode::Off => (Box::new(std::io::sink()), false),
            SerialMode::File => {
                let path = config.path.clone().unwrap_or_default();
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| ConsoleError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                if let Some(input) = &config.input {
                    pty_reader = Some(open_input_fifo(input)?);
                }
                (Box::new(file), true)
            }
            SerialMode::Pty => {
                let (master, slave, path) = open_pty().map_err(ConsoleError::Pty)?;
                pty_slave = Some(Arc::new(slave));
                let reader = File::from(master.try_clone().map_err(ConsoleError::Pty)?);
                pty_reader = Some(reader);
                pty_path = Some(path);
                (Box::new(File::from(master)), false)
            }
        };
        Ok(Console {
            out: Arc::new(Output::new(out, by_line)),
            input_target: Arc::new(Mutex::new(None)),
            pty_path,
            _pty_slave: pty_slave,
            pty_reader: Arc::new(Mutex::new(pty_reader)),
        })
    }

    /// Starts the console's threads: the partial-line flusher for line-wise
    /// output and the input forwarder for a PTY or FIFO. Separate from [`Console::open`]
    /// so that a jail can be entered in between (it must precede every thread).
    pub fn start(&self) {
        if lock(&self.out.state).by_line {
            spawn_partial_line_flusher(self.out.clone());
        }
        if let Some(reader) = lock(&self.pty_reader).take() {
            self.spawn_input_forwarder(reader);
        }
    }

    pub fn pty_path(&self) -> Option<&str> {
        self.pty_path.as_deref()
    }

    /// A writer for one VM's UART.
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(ConsoleWriter(self.out.clone()))
    }

    /// Writes out whatever the guest sent that is still pending (at exit).
    pub fn flush(&self) {
        let mut state = lock(&self.out.state);
        if let Err(e) = state.write_pending() {
            tracing::warn!("serial console output failed: {e}");
        }
    }

    /// Host input goes to this UART from now on.
    pub fn attach_input(&self, serial: Arc<Mutex<SerialDevice>>) {
        *lock(&self.input_target) = Some(serial);
    }

    fn spawn_input_forwarder(&self, mut reader: File) {
        let target = self.input_target.clone();
        let spawned = std::thread::Builder::new()
            .name("console-in".into())
            .stack_size(crate::THREAD_STACK_BYTES)
            .spawn(move || {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Console) {
                    tracing::error!("{e}; no console input");
                    return;
                }
                let mut buf = [0u8; 64];
                loop {
                    wait_readable(&reader);
                    match reader.read(&mut buf) {
                        Ok(n) if n > 0 => feed(&target, &buf[..n]),
                        Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no console input: {e}");
        }
    }
}

/// How long input waits for a guest that reads none of it before it is
/// dropped.
const INPUT_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands `bytes` to the UART as its 64-byte FIFO makes room, so a pasted
/// line arrives whole (a real UART would drop what overflows; a terminal
/// would not send it that fast). Waiting here leaves the rest in the pipe
/// it came from. A guest that takes nothing for [`INPUT_STALL`] loses the
/// rest.
fn feed(target: &Mutex<Option<Arc<Mutex<SerialDevice>>>>, mut bytes: &[u8]) {
    let mut progress = std::time::Instant::now();
    while !bytes.is_empty() {
        let taken = match lock(target).as_ref() {
            Some(serial) => lock(serial).enqueue_input(bytes),
            None => return,
        };
        bytes = &bytes[taken..];
        if taken > 0 {
            progress = std::time::Instant::now();
        } else if progress.elapsed() > INPUT_STALL {
            crate::rate_limited_warn!(
                "the guest reads no console input; dropped {} bytes",
                bytes.len()
            );
            return;
        }
        if !bytes.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Where guest output goes, a whole line per write(2) when `by_line`.
///
/// The UART hands over one byte at a time (and vm-superio flushes after each).
/// Written byte by byte, a line could be split by anything else writing to the
/// same file (a supervisor's shell, another VMM on the same terminal), and
/// every byte cost a system call. Lines go out whole; a partial line (a login
/// prompt) goes out after [`PARTIAL_LINE_DELAY`] without more output.
struct Output {
    state: Mutex<OutputState>,
    /// Wakes the partial-line flusher when a partial line starts waiting.
    partial: Condvar,
}

struct OutputState {
    sink: Box<dyn Write + Send>,
    by_line: bool,
    pending: Vec<u8>,
    /// When the oldest pending byte arrived.
    pending_since: Option<Instant>,
}

impl Output {
    fn new(sink: Box<dyn Write + Send>, by_line: bool) -> Self {
        Output {
            state: Mutex::new(OutputState {
                sink,
                by_line,
                pending: Vec::new(),
                pending_since: None,
            }),
            partial: Condvar::new(),
        }
    }
}

impl OutputState {
    /// Takes `buf`; writes every complete line (or everything, past
    /// [`MAX_PENDING`]). Returns whether a partial line now waits, and how
    /// the write went.
    fn push(&mut self, buf: &[u8]) -> (bool, std::io::Result<()>) {
        if !self.by_line {
            let written = self.sink.write_all(buf).and_then(|_| self.sink.flush());
            return (false, written);
        }
        // Only the new bytes are searched: `pending` never keeps a newline
        // (this runs on a vCPU for every byte the guest sends).
        let newline = buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| self.pending.len() + i);
        self.pending.extend_from_slice(buf);
        let written = if self.pending.len() >= MAX_PENDING {
            self.write_pending()
        } else if let Some(end) = newline {
            let rest = self.pending.split_off(end + 1);
            let lines = std::mem::replace(&mut self.pending, rest);
            self.pending_since = None;
            self.sink.write_all(&lines).and_then(|_| self.sink.flush())
        } else {
            Ok(())
        };
        // Even when the sink failed, a partial line left behind gets its
        // deadline, so the flusher still writes it out.
        let newly_partial = !self.pending.is_empty() && self.pending_since.is_none();
        if self.pending.is_empty() {
            self.pending_since = None;
        } else {
            self.pending_since.get_or_insert_with(Instant::now);
        }
        (newly_partial, written)
    }

    fn write_pending(&mut self) -> std::io::Result<()> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        // Taken first: output that failed is dropped rather than retried
        // forever (the guest must not notice a full disk or a closed pipe).
        let pending = std::mem::take(&mut self.pending);
        self.sink.write_all(&pending)?;
        self.sink.flush()
    }
}

/// Writes a partial line once it has waited [`PARTIAL_LINE_DELAY`].
fn spawn_partial_line_flusher(out: Arc<Output>) {
    let spawned = std::thread::Builder::new()
        .name("console-out".into())
        .stack_size(crate::THREAD_STACK_BYTES)
        .spawn(move || {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Console) {
                // Lines still go out whole from the vCPUs; only a trailing prompt
                // waits for more output.
                tracing::error!("{e}; partial console lines wait for their newline");
                return;
            }
            let mut state = lock(&out.state);
            loop {
                let Some(since) = state.pending_since else {
                    state = out.partial.wait(state).unwrap_or_else(|p| p.into_inner());
                    continue;
                };
                let due = since + PARTIAL_LINE_DELAY;
                let now = Instant::now();
                if now >= due {
                    if let Err(e) = state.write_pending() {
                        crate::rate_limited_warn!("serial console output failed: {e}");
                    }
                    continue;
                }
                state = match out.partial.wait_timeout(state, due - now) {
                    Ok((s, _)) => s,
                    Err(p) => p.into_inner().0,
                };
            }
        });
    if let Err(e) = spawned {
        // Lines still go out whole; only a trailing prompt waits for more output.
        tracing::warn!("no console flusher thread: {e}");
    }
}

struct ConsoleWriter(Arc<Output>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (newly_partial, written) = lock(&self.0.state).push(buf);
        if newly_partial {
            self.0.partial.notify_one();
        }
        written.map(|_| buf.len())
    }

    /// Nothing to do: lines go out whole as they complete, partial ones
    /// after a short delay (vm-superio calls this after every byte).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_readable(file: &File) {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd array of length 1 for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, -1) };
}

/// Opens a non-blocking PTY master, and its slave in raw mode, and returns both with
/// the slave's path.
fn open_pty() -> std::io::Result<(OwnedFd, File, String)> {
    // SAFETY: posix_openpt has no memory-safety preconditions; the result is checked.
    let fd = unsafe {
        libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = master.as_raw_fd();
    // SAFETY: raw is a valid PTY master for the calls below, which take no pointers
    // except ptsname_r's buffer, sized by its length argument.
    let path = unsafe {
        if libc::grantpt(raw) != 0 || libc::unlockpt(raw) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        let rc = libc::ptsname_r(raw, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    // Raw mode on the slave side so the guest sees bytes as typed.
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)?;
    // SAFETY: termios is plain data; tcgetattr fills it and the fd is valid.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    Ok((master, slave, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;

    #[test]
    fn a_pasted_line_longer_than_the_fifo_arrives_whole() {
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            crate::devices::irq::IrqLine::new(4).unwrap(),
            Box::new(std::io::sink()),
        )));
        let target = Arc::new(Mutex::new(Some(serial.clone())));
        let line: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        let feeder = {
            let (target, line) = (target.clone(), line.clone());
            std::thread::spawn(move || feed(&target, &line))
        };
        // The guest reads its receive register a byte at a time, slowly.
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < line.len() && Instant::now() < deadline {
            let mut lsr = [0u8; 1];
            lock(&serial).read(5, &mut lsr);
            if lsr[0] & 1 == 1 {
                let mut byte = [0u8; 1];
                lock(&serial).read(0, &mut byte);
                got.push(byte[0]);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        feeder.join().unwrap();
        assert_eq!(got, line);
    }

    #[test]
    fn console_input_comes_from_a_fifo_only() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("console.in");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        let mut input = open_input_fifo(&fifo).unwrap();
        // Nobody types: no end-of-file, just nothing yet.
        let mut buf = [0u8; 8];
        let e = input.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        let mut typist = OpenOptions::new().write(true).open(&fifo).unwrap();
        typist.write_all(b"root\n").unwrap();
        drop(typist);
        assert_eq!(input.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"root\n");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let e = open_input_fifo(&plain).unwrap_err().to_string();
        assert!(e.ends_with("not a FIFO"), "{e}");
        std::os::unix::fs::symlink(&fifo, dir.path().join("link")).unwrap();
        assert!(
            open_input_fifo(&dir.path().join("link")).is_err(),
            "symlinks are not followed"
        );
    }

    /// A sink that records each write(2) it would have made.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn by_line() -> (Writes, Arc<Output>) {
        let writes = Writes::default();
        let out = Arc::new(Output::new(Box::new(writes.clone()), true));
        spawn_partial_line_flusher(out.clone());
        (writes, out)
    }

    #[test]
    fn guest_bytes_leave_as_whole_lines() {
        let (writes, out) = by_line();
        let mut w = ConsoleWriter(out);
        for b in b"first line\nsecond" {
            w.write_all(&[*b]).unwrap();
            w.flush().unwrap();
        }
        for b in b" half\n" {
            w.write_all(&[*b]).unwrap();
        }
        let got = lock(&writes.0).clone();
        assert_eq!(got[0], b"first line\n");
        // The partial "second" may have gone out on its own after the delay,
        // but never a byte at a time, and nothing is lost or reordered.
        assert_eq!(got.concat(), b"first line\nsecond half\n");
        assert!(got.iter().all(|w| w.len() > 1), "{got:?}");
    }

    #[test]
    fn a_partial_line_goes_out_after_a_short_delay() {
        let (writes, out) = by_line();
        let mut w = ConsoleWriter(out);
        w.write_all(b"login: ").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&writes.0).is_empty() {
            assert!(Instant::now() < deadline, "the prompt never went out");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lock(&writes.0).concat(), b"login: ");
    }

    #[test]
    fn a_long_line_without_newline_is_written_in_pieces_and_at_exit() {
        let writes = Writes::default();
        let out = Arc::new(Output::new(Box::new(writes.clone()), true));
        let console = Console {
            out: out.clone(),
            input_target: Arc::new(Mutex::new(None)),
            pty_path: None,
            _pty_slave: None,
            pty_reader: Arc::new(Mutex::new(None)),
        };
        let mut w = console.writer();
        let long = vec![b'x'; MAX_PENDING + 10];
        for b in &long {
            w.write_all(&[*b]).unwrap();
        }
        assert_eq!(lock(&writes.0).concat().len(), MAX_PENDING);
        console.flush();
        assert_eq!(lock(&writes.0).concat(), long);
    }
}
