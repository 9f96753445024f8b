//! The NBD server: how a host other than this one reaches a volume.
//!
//! The compute host's kernel is the client (its `nbd` driver, set up over
//! netlink with sockets hostd connected and negotiated), so the guest's
//! disk is a plain block device there, whatever the volume's format here:
//! this server serves the volume as the guest sees it (a raw file, or a
//! qcow2 overlay through its layers, read with the VMM's own disk code).
//!
//! Protocol: the fixed newstyle handshake (`NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`; a list of exports is refused,
//! their names being secrets), then simple replies. A FLUSH (and a write
//! with FUA) is answered once what it covers is on stable storage here.
//! Requests on one connection are served concurrently, up to
//! [`MAX_IN_FLIGHT`] and 64 MiB of data; several connections to one export share one open
//! disk (`CAN_MULTI_CONN`), so a qcow2 overlay has one writer. A snapshot
//! or an extend of a volume being served moves that disk onto the
//! volume's files as they are then ([`OpenVolumes::reopen`]), between two
//! requests: the clients notice nothing.
//!
//! An export's name is a random 128-bit secret the controller hands to
//! the one compute host it exported the volume to; anyone else gets
//! `NBD_REP_ERR_UNKNOWN`. The traffic itself is not encrypted: keep it on
//! the storage network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use vmm::virtio::block::disk::Disk;

use storaged_proto::nbd::*;

/// The longest option a client may send (an export name and a few info
/// requests fit in far less).
const MAX_OPTION: u32 = 4096;
/// The largest read or write: the kernel client sends at most its queue's
/// max_sectors (1 MiB by default); more than this closes the connection.
pub const MAX_REQUEST: u32 = 32 << 20;
/// The largest read tried from the page cache on the connection's own
/// task ([`Disk::read_cached`]): small enough that copying it there holds
/// the connection's other requests up by microseconds.
const INLINE_READ: u32 = 128 << 10;
/// How long a client may take to choose its export.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Requests served at once per connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// The data a connection's requests may hold at once, in units of
/// [`BUFFER_UNIT`]: 64 MiB, whatever a client asks.
const BUFFER_UNIT: u32 = 64 << 10;
const BUFFER_UNITS: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

fn protocol(what: impl Into<String>) -> NbdError {
    NbdError::Protocol(what.into())
}

/// What an export name opens: the volume's files (as
/// [`crate::volumes::FileBackend::files`] gives them).
pub trait Exports: Send + Sync + 'static {
    /// The volume `name` exports, and its files: its own (raw, or a qcow2
    /// overlay) and its backing chain (layers top first, then the base).
    fn lookup(&self, name: &str) -> Option<(String, storaged_proto::Connection)>;
}

/// One volume as its connections serve it. Each request holds the disk
/// for as long as it runs; a reopen waits for those before it moves.
pub struct Served {
    disk: RwLock<Arc<Disk>>,
}

impl Served {
    /// The disk requests go to now (a clone: a request in flight keeps
    /// the one it started on, and the reopen waits for it).
    fn disk(&self) -> std::sync::RwLockReadGuard<'_, Arc<Disk>> {
        self.disk.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The volumes being served, each opened once for all its connections;
/// shared by the NBD server and the API that changes volumes' files.
#[derive(Default)]
pub struct OpenVolumes {
    open: Mutex<HashMap<String, Weak<Served>>>,
}

impl OpenVolumes {
    /// Volume `volume` as its connections serve it, opened from `files`
    /// unless it is served already.
    fn get_or_open(
        &self,
        volume: &str,
        files: &storaged_proto::Connection,
    ) -> std::io::Result<Arc<Served>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(served) = open.get(volume).and_then(Weak::upgrade) {
            return Ok(served);
        }
        open.retain(|_, d| d.strong_count() > 0);
        let served = Arc::new(Served {
            disk: RwLock::new(Arc::new(open_disk(files)?)),
        });
        open.insert(volume.to_owned(), Arc::downgrade(&served));
        Ok(served)
    }

    /// Moves volume `volume`, if it is being served, onto `files` (a
    /// snapshot froze its old ones under a new overlay, or it grew): once
    /// the requests in flight have finished, the old overlay's metadata
    /// reaches its file (the new chain reads it there) and every later
    /// request goes to the new disk. Blocks meanwhile.
    pub fn reopen(&self, volume: &str, files: &storaged_proto::Connection) -> std::io::Result<()> {
        let served = {
            let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.get(volume).and_then(Weak::upgrade)
        };
        let Some(served) = served else {
            return Ok(());
        };
        let mut disk = served.disk.write().unwrap_or_else(|e| e.into_inner());
        disk.flush()?;
        *disk = Arc::new(open_disk(files)?);
        tracing::info!(volume, "nbd: volume moved onto its files as they are now");
        Ok(())
    }
}

/// Opens a volume's files as the guest sees them.
fn open_disk(files: &storaged_proto::Connection) -> std::io::Result<Disk> {
    let (base, layers) = match files.backing.split_last() {
        Some((base, layers)) => (
            Some(std::path::PathBuf::from(base)),
            layers.iter().map(std::path::PathBuf::from).collect(),
        ),
        None => (None, Vec::new()),
    };
    Disk::open(
        std::path::Path::new(&files.path),
        base.as_deref(),
        &layers,
        false,
        false,
    )
    .map_err(std::io::Error::other)
}

/// The server: open disks shared by the connections to one volume.
pub struct Server<E> {
    exports: E,
    open: Arc<OpenVolumes>,
}

impl<E: Exports> Server<E> {
    pub fn new(exports: E, open: Arc<OpenVolumes>) -> Arc<Self> {
        Arc::new(Server { exports, open })
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("nbd: accepting: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                match server.connection(socket).await {
                    Ok(()) => tracing::debug!(%peer, "nbd: connection closed"),
                    Err(e) => tracing::info!(%peer, "nbd: connection ended: {e}"),
                }
            });
        }
    }

    async fn connection<S>(self: Arc<Self>, socket: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(socket);
        // A client that never finishes negotiating holds nothing for long.
        let negotiated =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut rd, &mut wr)).await;
        let Some((volume, disk)) =
            negotiated.map_err(|_| protocol("the handshake timed out"))??
        else {
            return Ok(());
        };
        tracing::info!(volume, "nbd: export in use");
        transmission(rd, wr, disk).await
    }

    /// The fixed newstyle negotiation; the export chosen, or None when the
    /// client aborted.
    async fn handshake<R, W>(
        &self,
        rd: &mut R,
        wr: &mut W,
    ) -> Result<Option<(String, Arc<Served>)>, NbdError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        wr.write_all(&hello).await?;
        wr.flush().await?;
        let client_flags = rd.read_u32().await?;
        let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
        loop {
            if rd.read_u64().await? != IHAVEOPT {
                return Err(protocol("an option without its magic"));
            }
            let option = rd.read_u32().await?;
            let len = rd.read_u32().await?;
            if len > MAX_OPTION {
                return Err(protocol(format!("option {option}: {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await?;
            match option {
                OPT_ABORT => {
                    option_reply(wr, option, REP_ACK, &[]).await?;
                    return Ok(None);
                }
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    // No way to say no here but to hang up.
                    let Some((volume, served)) = self.open_export(&name) else {
                        return Err(protocol("NBD_OPT_EXPORT_NAME: no such export"));
                    };
                    let (capacity, flags) = {
                        let disk = served.disk();
                        (disk.capacity(), transmission_flags(&disk))
                    };
                    let mut reply = Vec::with_capacity(10 + 124);
                    reply.extend_from_slice(&capacity.to_be_bytes());
                    reply.extend_from_slice(&flags.to_be_bytes());
                    if !no_zeroes {
                        reply.extend_from_slice(&[0u8; 124]);
                    }
                    wr.write_all(&reply).await?;
                    wr.flush().await?;
                    return Ok(Some((volume, served)));
                }
                OPT_INFO | OPT_GO => {
                    let Some(name) = go_name(&data) else {
                        option_reply(wr, option, REP_ERR_INVALID, b"malformed").await?;
                        continue;
                    };
                    let Some((volume, served)) = self.open_export(&name) else {
                        option_reply(wr, option, REP_ERR_UNKNOWN, b"no such export").await?;
                        continue;
                    };
                    let (capacity, flags) = {
                        let disk = served.disk();
                        (disk.capacity(), transmission_flags(&disk))
                    };
                    let mut info = Vec::with_capacity(12);
                    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    info.extend_from_slice(&capacity.to_be_bytes());
                    info.extend_from_slice(&flags.to_be_bytes());
                    option_reply(wr, option, REP_INFO, &info).await?;
                    option_reply(wr, option, REP_ACK, &[]).await?;
                    if option == OPT_GO {
                        return Ok(Some((volume, served)));
                    }
                }
                // Export names are secrets: no listing.
                OPT_LIST => {
                    option_reply(wr, option, REP_ERR_POLICY, b"exports are not listed").await?
                }
                _ => option_reply(wr, option, REP_ERR_UNSUP, &[]).await?,
            }
        }
    }

    fn open_export(&self, name: &str) -> Option<(String, Arc<Served>)> {
        let (volume, files) = self.exports.lookup(name)?;
        match self.open.get_or_open(&volume, &files) {
            Ok(served) => Some((volume, served)),
            Err(e) => {
                tracing::warn!(volume, "nbd: opening the volume: {e}");
                None
            }
        }
    }
}

/// `NBD_OPT_GO`/`INFO` data: a name (u32 length first), then info requests.
fn go_name(data: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(len)?)?;
    let requests = u16::from_be_bytes(data.get(4 + len..6 + len)?.try_into().ok()?) as usize;
    (data.len() == 6 + len + 2 * requests).then(|| String::from_utf8_lossy(name).into_owned())
}

fn transmission_flags(disk: &Disk) -> u16 {
    let mut flags = TX_HAS_FLAGS | TX_SEND_FLUSH | TX_SEND_FUA | TX_CAN_MULTI_CONN;
    flags |= TX_SEND_TRIM | TX_SEND_WRITE_ZEROES;
    if disk.read_only {
        flags |= TX_READ_ONLY;
    }
    flags
}

async fn option_reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    option: u32,
    reply: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(())
}

/// One request, as read off the wire.
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    /// A write's payload.
    data: Vec<u8>,
}

/// A reply: the request's cookie, an errno (0: done) and a read's data.
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
}

/// Reads requests and hands each to a blocking task; a writer task sends
/// the replies in the order they complete.
async fn transmission<R, W>(mut rd: R, mut wr: W, served: Arc<Served>) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let pool = Arc::new(BufferPool::default());
    let returned = pool.clone();
    let writer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            header[4..8].copy_from_slice(&r.error.to_be_bytes());
            header[8..16].copy_from_slice(&r.cookie.to_be_bytes());
            // The data goes as it is, after the header: no copy of it.
            if write_all_vectored(&mut wr, &header, &r.data).await.is_err() {
                return;
            }
            returned.put(r.data);
            // Nothing else queued: send now rather than wait for more.
            if rx.is_empty() && wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let buffers = Arc::new(Semaphore::new(BUFFER_UNITS as usize));
    let result = loop {
        let mut request = match read_request(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        // A slot, and room for its data, before its payload is read.
        let units = request_units(&request);
        let (Ok(slot), Ok(room)) = (
            slots.clone().acquire_owned().await,
            buffers.clone().acquire_many_owned(units).await,
        ) else {
            break Ok(());
        };
        // A read the page cache holds is served here, with no thread hop
        // (unless a reopen is waiting for the disk: this task must not).
        let disk = served.disk.try_read().ok().map(|d| Arc::clone(&d));
        if let Some(disk) = disk.filter(|disk| {
            request.kind == CMD_READ
                && request.length <= INLINE_READ
                && request
                    .offset
                    .checked_add(u64::from(request.length))
                    .is_some_and(|end| end <= disk.capacity())
        }) {
            let mut data = pool.take(request.length as usize);
            if disk.read_cached(&mut data, request.offset) {
                let reply = Reply {
                    cookie: request.cookie,
                    error: 0,
                    data,
                };
                if tx.send(reply).await.is_err() {
                    break Ok(());
                }
                drop((slot, room));
                continue;
            }
            pool.put(data);
        }
        if request.kind == CMD_WRITE {
            request.data = pool.take(request.length as usize);
            if let Err(e) = rd.read_exact(&mut request.data).await {
                break Err(e.into());
            }
        }
        let (served, tx, pool) = (served.clone(), tx.clone(), pool.clone());
        tokio::task::spawn_blocking(move || {
            let reply = if request.kind == CMD_TRIM {
                // A discard frees an overlay's clusters for later writes:
                // it runs alone (no inline read touches an overlay).
                serve(
                    &served.disk.write().unwrap_or_else(|e| e.into_inner()),
                    request,
                    &pool,
                )
            } else {
                serve(&served.disk(), request, &pool)
            };
            let _ = tx.blocking_send(reply);
            drop((slot, room));
        });
    };
    // Every request taken is answered before the connection goes.
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let _ = writer.await;
    result
}

/// The next request, or None at the client's NBD_CMD_DISC (or its close).
async fn read_request<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Option<Request>, NbdError> {
    let mut header = [0u8; 28];
    match rd.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let be64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if be32(0) != REQUEST_MAGIC {
        return Err(protocol("a request without its magic"));
    }
    let r = Request {
        flags: be16(4),
        kind: be16(6),
        cookie: be64(8),
        offset: be64(16),
        length: be32(24),
        data: Vec::new(),
    };
    if r.kind == CMD_DISC {
        return Ok(None);
    }
    if r.kind == CMD_WRITE && r.length > MAX_REQUEST {
        return Err(protocol(format!("a write of {} bytes", r.length)));
    }
    Ok(Some(r))
}

/// The buffer units a request holds while it is served: its data (a
/// read's or write's; zeros written without `fallocate`), at least one.
fn request_units(r: &Request) -> u32 {
    let bytes = match r.kind {
        CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES => r.length.min(MAX_REQUEST),
        _ => 0,
    };
    (bytes / BUFFER_UNIT).clamp(1, BUFFER_UNITS)
}

/// The NBD error for an I/O error: the disk is full, or anything else.
fn errno(e: &std::io::Error) -> u32 {
    if e.raw_os_error() == Some(ENOSPC as i32) {
        ENOSPC
    } else {
        EIO
    }
}

/// Buffers a connection's requests and replies reuse: a read's buffer is
/// not zeroed for every request (it is filled whole, or the read fails),
/// and large ones are not allocated again each time.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// At most this many buffers wait, at most this large each: what the
    /// kernel client sends (up to 1 MiB) reuses; larger ones are freed.
    const KEPT: usize = 16;
    const KEPT_BYTES: usize = 1 << 20;

    /// A buffer of `len` bytes, their content whatever it was.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::KEPT_BYTES {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < Self::KEPT {
            kept.push(buf);
        }
    }
}

/// Writes `header` then `data` in as few system calls as the socket takes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    header: &[u8],
    data: &[u8],
) -> std::io::Result<()> {
    let mut done = 0;
    let total = header.len() + data.len();
    while done < total {
        let n = if done < header.len() {
            let slices = [
                std::io::IoSlice::new(&header[done..]),
                std::io::IoSlice::new(data),
            ];
            wr.write_vectored(&slices).await?
        } else {
            wr.write(&data[done - header.len()..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// Serves one request on the disk (blocking I/O). A TRIM only with the
/// disk alone: the connection holds the volume's write lock for it.
fn serve(disk: &Disk, r: Request, pool: &BufferPool) -> Reply {
    let reply = |error: u32, data: Vec<u8>| Reply {
        cookie: r.cookie,
        error,
        data,
    };
    let end = r.offset.checked_add(u64::from(r.length));
    let in_range = end.is_some_and(|e| e <= disk.capacity());
    let write = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if write && disk.read_only {
        return reply(EPERM, Vec::new());
    }
    let result = match r.kind {
        CMD_READ if !in_range || r.length > MAX_REQUEST => return reply(EINVAL, Vec::new()),
        CMD_READ => {
            let mut buf = pool.take(r.length as usize);
            return match disk.read_at(&mut buf, r.offset) {
                Ok(()) => reply(0, buf),
                Err(e) => {
                    tracing::warn!("nbd: read at {}: {e}", r.offset);
                    reply(errno(&e), Vec::new())
                }
            };
        }
        CMD_WRITE if !in_range => return reply(ENOSPC, Vec::new()),
        CMD_WRITE => {
            let written = disk.write_at(&r.data, r.offset);
            pool.put(r.data);
            written
        }
        CMD_FLUSH => disk.flush(),
        CMD_TRIM | CMD_WRITE_ZEROES if !in_range => return reply(EINVAL, Vec::new()),
        // Discard is advisory: where the disk cannot, nothing.
        CMD_TRIM if !disk.takes_discard() => Ok(()),
        // SAFETY: a TRIM is served under the volume's write lock, which
        // every other request's serving holds for reading (and inline
        // reads never touch an overlay).
        CMD_TRIM => unsafe { disk.discard(r.offset, u64::from(r.length)) },
        CMD_WRITE_ZEROES if disk.takes_discard() => {
            disk.write_zeroes(r.offset, u64::from(r.length))
        }
        CMD_WRITE_ZEROES if r.length > MAX_REQUEST => return reply(EINVAL, Vec::new()),
        CMD_WRITE_ZEROES => disk.write_at(&vec![0u8; r.length as usize], r.offset),
        _ => return reply(ENOTSUP, Vec::new()),
    };
    let result = result.and_then(|()| {
        if write && r.flags & CMD_FLAG_FUA != 0 {
            disk.flush()
        } else {
            Ok(())
        }
    });
    match result {
        Ok(()) => reply(0, Vec::new()),
        Err(e) => {
            tracing::warn!("nbd: command {} at {}: {e}", r.kind, r.offset);
            reply(errno(&e), Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// "good" names volume v1, whose files the test may change.
    struct OneVolume(Arc<Mutex<storaged_proto::Connection>>);

    impl Exports for OneVolume {
        fn lookup(&self, name: &str) -> Option<(String, storaged_proto::Connection)> {
            (name == "good").then(|| ("v1".to_owned(), self.0.lock().unwrap().clone()))
        }
    }

    /// A server on one end of a pipe, a 1 MiB raw volume behind "good".
    fn serve() -> (DuplexStream, tempfile::TempDir) {
        let (c, dir, _, _) = serve_open();
        (c, dir)
    }

    /// As [`serve`], with the volume's files and the open volumes.
    fn serve_open() -> (
        DuplexStream,
        tempfile::TempDir,
        Arc<Mutex<storaged_proto::Connection>>,
        Arc<OpenVolumes>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.raw");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let files = Arc::new(Mutex::new(storaged_proto::Connection {
            path: path.display().to_string(),
            ..Default::default()
        }));
        let open = Arc::new(OpenVolumes::default());
        let server = Server::new(OneVolume(files.clone()), open.clone());
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let _ = server.connection(theirs).await;
        });
        (ours, dir, files, open)
    }

    async fn go(c: &mut DuplexStream, name: &str) -> (u32, Vec<u8>) {
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_u32(1 | 2).await.unwrap();
        c.write_u64(IHAVEOPT).await.unwrap();
        c.write_u32(OPT_GO).await.unwrap();
        c.write_u32(4 + name.len() as u32 + 2).await.unwrap();
        c.write_u32(name.len() as u32).await.unwrap();
        c.write_all(name.as_bytes()).await.unwrap();
        c.write_u16(0).await.unwrap();
        // The replies up to the first that is not information.
        loop {
            assert_eq!(c.read_u64().await.unwrap(), REPLY_MAGIC);
            let _option = c.read_u32().await.unwrap();
            let kind = c.read_u32().await.unwrap();
            let mut data = vec![0u8; c.read_u32().await.unwrap() as usize];
            c.read_exact(&mut data).await.unwrap();
            if kind != REP_INFO {
                return (kind, data);
            }
        }
    }

    async fn request(c: &mut DuplexStream, kind: u16, offset: u64, data: &[u8], len: u32) -> u32 {
        c.write_u32(REQUEST_MAGIC).await.unwrap();
        c.write_u16(0).await.unwrap();
        c.write_u16(kind).await.unwrap();
        c.write_u64(7).await.unwrap();
        c.write_u64(offset).await.unwrap();
        c.write_u32(len).await.unwrap();
        c.write_all(data).await.unwrap();
        assert_eq!(c.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        let error = c.read_u32().await.unwrap();
        assert_eq!(c.read_u64().await.unwrap(), 7);
        if kind == CMD_READ && error == 0 {
            let mut buf = vec![0u8; len as usize];
            c.read_exact(&mut buf).await.unwrap();
        }
        error
    }

    #[tokio::test]
    async fn requests_out_of_range_get_errors_and_the_volume_is_served() {
        let (mut c, dir) = serve();
        assert_eq!(go(&mut c, "good").await.0, REP_ACK);
        assert_eq!(request(&mut c, CMD_WRITE, 4096, b"virga!", 6).await, 0);
        assert_eq!(request(&mut c, CMD_FLUSH, 0, b"", 0).await, 0);
        assert_eq!(request(&mut c, CMD_READ, 4096, b"", 6).await, 0);
        assert_eq!(
            request(&mut c, CMD_WRITE, (1 << 20) - 2, b"abcd", 4).await,
            ENOSPC
        );
        assert_eq!(
            request(&mut c, CMD_READ, u64::MAX - 2, b"", 4).await,
            EINVAL
        );
        assert_eq!(request(&mut c, CMD_TRIM, 0, b"", 4096).await, 0);
        assert_eq!(request(&mut c, 99, 0, b"", 0).await, ENOTSUP);
        let on_disk = std::fs::read(dir.path().join("v1.raw")).unwrap();
        assert_eq!(&on_disk[4096..4102], b"virga!");
        assert!(on_disk[..4096].iter().all(|&b| b == 0), "trimmed");
    }

    async fn read(c: &mut DuplexStream, offset: u64, len: u32) -> Vec<u8> {
        c.write_u32(REQUEST_MAGIC).await.unwrap();
        c.write_u16(0).await.unwrap();
        c.write_u16(CMD_READ).await.unwrap();
        c.write_u64(8).await.unwrap();
        c.write_u64(offset).await.unwrap();
        c.write_u32(len).await.unwrap();
        assert_eq!(c.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        assert_eq!(c.read_u32().await.unwrap(), 0, "read at {offset}");
        assert_eq!(c.read_u64().await.unwrap(), 8);
        let mut buf = vec![0u8; len as usize];
        c.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// A snapshot of a served volume, as storaged's freeze makes it: the
    /// file becomes the layer, an overlay over it the volume. Reopened,
    /// the connection goes on: what came before is the layer's, what comes
    /// after the overlay's only. A grown file is served at its new size.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_served_volume_moves_onto_new_files_and_grows() {
        let (mut c, dir, files, open) = serve_open();
        assert_eq!(go(&mut c, "good").await.0, REP_ACK);
        assert_eq!(request(&mut c, CMD_WRITE, 4096, b"before", 6).await, 0);
        let raw = dir.path().join("v1.raw");
        let layer = dir.path().join("snap.raw");
        std::fs::hard_link(&raw, &layer).unwrap();
        std::fs::remove_file(&raw).unwrap();
        let overlay = dir.path().join("v1.qcow2");
        vmm::virtio::block::qcow2::create_overlay(&overlay, "snap", 1 << 20).unwrap();
        let moved = storaged_proto::Connection {
            path: overlay.display().to_string(),
            backing: vec![layer.display().to_string()],
            ..Default::default()
        };
        *files.lock().unwrap() = moved.clone();
        let reopen = open.clone();
        tokio::task::spawn_blocking(move || reopen.reopen("v1", &moved))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request(&mut c, CMD_WRITE, 8192, b"after!", 6).await, 0);
        assert_eq!(request(&mut c, CMD_FLUSH, 0, b"", 0).await, 0);
        assert_eq!(read(&mut c, 4096, 6).await, b"before");
        assert_eq!(read(&mut c, 8192, 6).await, b"after!");
        let frozen = std::fs::read(&layer).unwrap();
        assert_eq!(&frozen[4096..4102], b"before");
        assert!(
            frozen[8192..8198].iter().all(|&b| b == 0),
            "nothing after the move reaches the snapshot"
        );
        // Grown (storaged's extend): served at the new size once reopened.
        assert_eq!(
            request(&mut c, CMD_WRITE, 1 << 20, b"more", 4).await,
            ENOSPC
        );
        vmm::virtio::block::qcow2::grow_file(
            &std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&overlay)
                .unwrap(),
            2 << 20,
        )
        .unwrap();
        let grown = files.lock().unwrap().clone();
        let reopen = open.clone();
        tokio::task::spawn_blocking(move || reopen.reopen("v1", &grown))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request(&mut c, CMD_WRITE, 1 << 20, b"more", 4).await, 0);
        assert_eq!(read(&mut c, 1 << 20, 4).await, b"more");
        // Trimmed and zeroed on the overlay: zeros where the layer's data
        // and the overlay's were, the layer as it was.
        assert_eq!(request(&mut c, CMD_TRIM, 0, b"", 64 << 10).await, 0);
        assert_eq!(
            request(&mut c, CMD_WRITE_ZEROES, 1 << 20, b"", 4096).await,
            0
        );
        assert_eq!(read(&mut c, 4096, 6).await, [0u8; 6]);
        assert_eq!(read(&mut c, 8192, 6).await, [0u8; 6]);
        assert_eq!(read(&mut c, 1 << 20, 4).await, [0u8; 4]);
        assert_eq!(&std::fs::read(&layer).unwrap()[4096..4102], b"before");
        assert_eq!(
            request(&mut c, CMD_TRIM, 2 << 20, b"", 4096).await,
            EINVAL,
            "past the end"
        );
        // A volume nobody serves: nothing to move.
        open.reopen("v2", &files.lock().unwrap().clone()).unwrap();
    }

    #[tokio::test]
    async fn bad_clients_are_refused_without_harm() {
        // An unknown export: refused, and the client may try another.
        let (mut c, _dir) = serve();
        assert_eq!(go(&mut c, "guess").await.0, REP_ERR_UNKNOWN);
        // A request without its magic ends the connection.
        let (mut c, _dir) = serve();
        go(&mut c, "good").await;
        c.write_all(&[0u8; 28]).await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
        // An option too long to be one ends it too.
        let (mut c, _dir) = serve();
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).await.unwrap();
        c.write_u32(1).await.unwrap();
        c.write_u64(IHAVEOPT).await.unwrap();
        c.write_u32(OPT_GO).await.unwrap();
        c.write_u32(MAX_OPTION + 1).await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
        // A write larger than any the kernel sends ends it.
        let (mut c, _dir) = serve();
        go(&mut c, "good").await;
        c.write_u32(REQUEST_MAGIC).await.unwrap();
        c.write_u16(0).await.unwrap();
        c.write_u16(CMD_WRITE).await.unwrap();
        c.write_u64(1).await.unwrap();
        c.write_u64(0).await.unwrap();
        c.write_u32(MAX_REQUEST + 1).await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
    }
}
