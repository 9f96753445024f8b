//! The host side of the guest's serial console: where its output goes (stdout, a
//! file, a PTY) and, for a PTY, where its input comes from.

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use crate::config::{SerialConfig, SerialMode};
use crate::devices::lock;
use crate::devices::serial::SerialDevice;

/// Output shared by every VM this process builds (a restart keeps the same console).
#[derive(Clone)]
pub struct Console {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    input_target: Arc<Mutex<Option<Arc<Mutex<SerialDevice>>>>>,
    pty_path: Option<String>,
    /// Held open so the master neither reads EIO nor loses output while no client is
    /// attached; a full PTY buffer then drops output instead of blocking a vCPU.
    _pty_slave: Option<Arc<File>>,
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
}

impl Console {
    pub fn open(config: &SerialConfig) -> Result<Self, ConsoleError> {
        let mut pty_path = None;
        let mut pty_reader = None;
        let mut pty_slave = None;
        // Line buffering: whole lines reach the reader promptly (boot-time markers are
        // timed from outside) without one write(2) per guest byte.
        let out: Box<dyn Write + Send> = match config.mode {
            SerialMode::Stdout => Box::new(LineWriter::new(std::io::stdout())),
            SerialMode::Off => Box::new(std::io::sink()),
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
                Box::new(LineWriter::new(file))
            }
            SerialMode::Pty => {
                let (master, slave, path) = open_pty().map_err(ConsoleError::Pty)?;
                pty_slave = Some(Arc::new(slave));
                let reader = File::from(master.try_clone().map_err(ConsoleError::Pty)?);
                pty_reader = Some(reader);
                pty_path = Some(path);
                Box::new(File::from(master))
            }
        };
        let console = Console {
            out: Arc::new(Mutex::new(out)),
            input_target: Arc::new(Mutex::new(None)),
            pty_path,
            _pty_slave: pty_slave,
        };
        if let Some(reader) = pty_reader {
            console.spawn_input_forwarder(reader);
        }
        Ok(console)
    }

    pub fn pty_path(&self) -> Option<&str> {
        self.pty_path.as_deref()
    }

    /// A writer for one VM's UART.
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(ConsoleWriter(self.out.clone()))
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
                let mut buf = [0u8; 64];
                loop {
                    wait_readable(&reader);
                    match reader.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            if let Some(serial) = lock(&target).as_ref() {
                                // A full FIFO drops input, as a real UART would.
                                lock(serial).enqueue_input(&buf[..n]);
                            }
                        }
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

struct ConsoleWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.0).flush()
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
