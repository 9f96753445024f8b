//! Volumes on another host, through the kernel's NBD client.
//!
//! hostd connects to the storage host's storaged and negotiates the export
//! (the fixed newstyle handshake: `NBD_OPT_GO`), then hands the connected
//! sockets to the kernel over generic netlink (`NBD_CMD_CONNECT`). The
//! kernel serves `/dev/nbdN` from then on, with no process of ours in the
//! data path, and the device outlives a restart of hostd. The VMM gets the
//! device as a plain block device, on descriptors hostd opens.
//!
//! Netlink rather than the older ioctls: `NBD_DO_IT` blocks a thread for
//! the device's whole life and takes the device down with its process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    parse_u32, DecodeError, DefaultNla, Emitable, ErrorContext, NetlinkMessage, NetlinkPayload,
    Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED, NLM_F_ACK,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use storaged_proto::nbd::{
    CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
    INFO_EXPORT, NBDMAGIC, OPT_GO, REPLY_MAGIC, REP_ACK, REP_FLAG_ERROR, REP_INFO, TX_READ_ONLY,
};

/// The longest option reply taken (an info item or an error message).
const MAX_REPLY: u32 = 64 << 10;

const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_CMD_RECONFIGURE: u8 = 3;
/// What the kernel sends its multicast group when a connection dies.
const NBD_CMD_LINK_DEAD: u8 = 4;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;
const NBD_MCAST_GROUP: &str = "nbd_mc_group";

/// Connections per device: requests spread over them (the export allows
/// several, `CAN_MULTI_CONN`).
const CONNECTIONS: usize = 2;
/// The device's logical block: the guest's 512-byte sectors, so that the
/// VMM's O_DIRECT I/O at any sector works.
const BLOCK_SIZE: u64 = 512;
/// How long a request may go unanswered before the kernel gives up on its
/// connection and sends it again on another (the block layer's default,
/// said aloud). Short timeouts would resend writes a slow but live server
/// may still apply late.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the kernel holds I/O when every connection of a device is
/// dead, waiting for new ones (hostd's reconnect, see
/// [`watch_dead_links`]), before failing it: a storaged restarting or a
/// storage network flapping must not become I/O errors in the guest.
pub const DEAD_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("negotiating with {address}: {what}")]
    Handshake { address: String, what: String },
    #[error("the kernel's NBD client: {0}")]
    Netlink(String),
}

/// A negotiated export: its size and transmission flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
}

impl Export {
    pub fn read_only(&self) -> bool {
        self.flags & TX_READ_ONLY != 0
    }
}

/// Negotiates export `name` on a connected stream (blocking), leaving it
/// ready for the transmission phase.
pub fn handshake<S: Read + Write>(s: &mut S, name: &str) -> Result<Export, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).map_err(io)?;
    let magic = u64::from_be_bytes(hello[0..8].try_into().map_err(|_| "short")?);
    let opt = u64::from_be_bytes(hello[8..16].try_into().map_err(|_| "short")?);
    let flags = u16::from_be_bytes([hello[16], hello[17]]);
    if magic != NBDMAGIC || opt != IHAVEOPT {
        return Err("not an NBD server (or not newstyle)".into());
    }
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err("the server does not speak fixed newstyle".into());
    }
    let mut client = CLIENT_FIXED_NEWSTYLE;
    if flags & FLAG_NO_ZEROES != 0 {
        client |= CLIENT_NO_ZEROES;
    }
    let mut go = Vec::with_capacity(32 + name.len());
    go.extend_from_slice(&client.to_be_bytes());
    go.extend_from_slice(&IHAVEOPT.to_be_bytes());
    go.extend_from_slice(&OPT_GO.to_be_bytes());
    go.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&go).map_err(io)?;
    s.flush().map_err(io)?;
    let mut export = None;
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).map_err(io)?;
        let magic = u64::from_be_bytes(head[0..8].try_into().map_err(|_| "short")?);
        let kind = u32::from_be_bytes(head[12..16].try_into().map_err(|_| "short")?);
        let len = u32::from_be_bytes(head[16..20].try_into().map_err(|_| "short")?);
        if magic != REPLY_MAGIC || len > MAX_REPLY {
            return Err("a malformed option reply".into());
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).map_err(io)?;
        match kind {
            REP_ACK => break,
            REP_INFO if data.len() >= 12 && data[0..2] == INFO_EXPORT.to_be_bytes() => {
                export = Some(Export {
                    size: u64::from_be_bytes(data[2..10].try_into().map_err(|_| "short")?),
                    flags: u16::from_be_bytes([data[10], data[11]]),
                });
            }
            REP_INFO => {}
            error if error & REP_FLAG_ERROR != 0 => {
                return Err(format!(
                    "the export was refused ({error:#x}: {})",
                    String::from_utf8_lossy(&data)
                ))
            }
            other => return Err(format!("an unexpected option reply {other}")),
        }
    }
    export.ok_or_else(|| "the server named no size for the export".into())
}

/// Opens [`CONNECTIONS`] sockets to `address` and negotiates export
/// `name` on each, ready to hand to the kernel.
fn open(address: &str, name: &str) -> Result<(Vec<TcpStream>, Export), NbdError> {
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    let mut export = None;
    for _ in 0..CONNECTIONS {
        let err = |source| NbdError::Connect {
            address: address.to_owned(),
            source,
        };
        let mut s = TcpStream::connect(address).map_err(err)?;
        s.set_nodelay(true).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        let e = handshake(&mut s, name).map_err(|what| NbdError::Handshake {
            address: address.to_owned(),
            what,
        })?;
        s.set_read_timeout(None).map_err(err)?;
        export = Some(e);
        sockets.push(s);
    }
    let export = export.ok_or_else(|| NbdError::Netlink("no connection".into()))?;
    Ok((sockets, export))
}

fn fds(sockets: &[TcpStream]) -> Vec<u32> {
    sockets.iter().map(|s| s.as_raw_fd() as u32).collect()
}

/// Connects export `name` at `address` to a free `/dev/nbdN`; returns N
/// and what was negotiated. `backend` names what the device is for (the
/// kernel shows it in `/sys/block/nbdN/backend`, so never the secret
/// export name) and guards [`reconnect`]: the kernel refuses new sockets
/// for a device whose backend is another.
pub fn connect(address: &str, name: &str, backend: &str) -> Result<(u32, Export), NbdError> {
    let (sockets, export) = open(address, name)?;
    let reply = request(
        NBD_CMD_CONNECT,
        vec![
            NbdAttr::U64(NBD_ATTR_SIZE_BYTES, export.size),
            NbdAttr::U64(NBD_ATTR_BLOCK_SIZE_BYTES, BLOCK_SIZE),
            NbdAttr::U64(NBD_ATTR_SERVER_FLAGS, u64::from(export.flags)),
            NbdAttr::U64(NBD_ATTR_TIMEOUT, REQUEST_TIMEOUT.as_secs()),
            NbdAttr::U64(
                NBD_ATTR_DEAD_CONN_TIMEOUT,
                DEAD_CONNECTION_TIMEOUT.as_secs(),
            ),
            NbdAttr::Str(NBD_ATTR_BACKEND_IDENTIFIER, backend.to_owned()),
            NbdAttr::Sockets(fds(&sockets)),
        ],
    )?;
    // The kernel holds the sockets now; ours close.
    drop(sockets);
    let index = reply
        .iter()
        .find_map(|a| match a {
            NbdAttr::U32(NBD_ATTR_INDEX, i) => Some(*i),
            _ => None,
        })
        .ok_or_else(|| NbdError::Netlink("the kernel named no device".into()))?;
    Ok((index, export))
}

/// Gives `/dev/nbd{index}` fresh connections to export `name` at
/// `address` in place of its dead ones; the kernel resends what was in
/// flight on them. Live connections stay (the kernel takes only as many
/// sockets as it has dead ones), so this is harmless when none died.
pub fn reconnect(index: u32, address: &str, name: &str, backend: &str) -> Result<(), NbdError> {
    let (sockets, _) = open(address, name)?;
    request(
        NBD_CMD_RECONFIGURE,
        vec![
            NbdAttr::U32(NBD_ATTR_INDEX, index),
            NbdAttr::Str(NBD_ATTR_BACKEND_IDENTIFIER, backend.to_owned()),
            NbdAttr::Sockets(fds(&sockets)),
        ],
    )?;
    Ok(())
}

/// Tells `/dev/nbd{index}` its export now has `bytes` (the volume grew
/// on its storage host, which serves it at that size already): the kernel
/// sets the device's capacity and announces the change.
pub fn resize(index: u32, backend: &str, bytes: u64) -> Result<(), NbdError> {
    request(
        NBD_CMD_RECONFIGURE,
        vec![
            NbdAttr::U32(NBD_ATTR_INDEX, index),
            NbdAttr::Str(NBD_ATTR_BACKEND_IDENTIFIER, backend.to_owned()),
            NbdAttr::U64(NBD_ATTR_SIZE_BYTES, bytes),
        ],
    )?;
    Ok(())
}

/// What [`watch_dead_links`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Watching from now on: a link that died before was not seen.
    Watching,
    /// `/dev/nbd{index}` lost a connection.
    Dead(u32),
}

/// Reports each NBD device the kernel says lost a connection
/// (`NBD_CMD_LINK_DEAD` on the family's multicast group), on this host,
/// for any process's devices. Returns only when the socket fails; the
/// caller opens it again.
pub fn watch_dead_links(mut event: impl FnMut(LinkEvent)) -> Result<(), NbdError> {
    let (socket, family) = nbd_socket()?;
    let group = family
        .link_events
        .ok_or_else(|| NbdError::Netlink(format!("the nbd family has no {NBD_MCAST_GROUP}")))?;
    socket.add_membership(group).map_err(netlink_err)?;
    event(LinkEvent::Watching);
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            // Events came faster than read: some are lost, so every
            // device is worth a look.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("NBD link events overflowed; some may be lost");
                event(LinkEvent::Watching);
                continue;
            }
            Err(e) => return Err(netlink_err(e)),
        };
        for index in dead_links(&buf[..n]) {
            event(LinkEvent::Dead(index));
        }
    }
}

/// The device indices of the `NBD_CMD_LINK_DEAD` messages in `buf`.
fn dead_links(buf: &[u8]) -> Vec<u32> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Ok(msg) = NetlinkMessage::<GenlMessage<NbdMessage>>::deserialize(&buf[at..]) else {
            break;
        };
        let len = msg.header.length as usize;
        if let NetlinkPayload::InnerMessage(m) = msg.payload {
            if m.payload.cmd == NBD_CMD_LINK_DEAD {
                found.extend(m.payload.attrs.iter().filter_map(|a| match a {
                    NbdAttr::U32(NBD_ATTR_INDEX, i) => Some(*i),
                    _ => None,
                }));
            }
        }
        if len == 0 {
            break;
        }
        at += len;
    }
    found
}

/// Disconnects `/dev/nbd{index}` (already disconnected is fine).
pub fn disconnect(index: u32) -> Result<(), NbdError> {
    match request(
        NBD_CMD_DISCONNECT,
        vec![NbdAttr::U32(NBD_ATTR_INDEX, index)],
    ) {
        Ok(_) => Ok(()),
        Err(NbdError::Netlink(e)) if e.contains("os error 22") || e.contains("os error 19") => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether `/dev/nbd{index}` is connected: its `pid` attribute exists
/// exactly while it is.
pub fn connected(index: u32) -> bool {
    std::path::Path::new(&format!("/sys/block/nbd{index}/pid")).exists()
}

/// The connected NBD devices of this host and their backends (what
/// [`connect`] named them for), from sysfs.
pub fn backends() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let index = e.file_name().to_str()?.strip_prefix("nbd")?.parse().ok()?;
            let backend = std::fs::read_to_string(e.path().join("backend")).ok()?;
            connected(index).then(|| (index, backend.trim_end().to_owned()))
        })
        .collect()
}

pub fn device(index: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/dev/nbd{index}"))
}

/// An NBD netlink attribute: a number, or the sockets of a connect.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NbdAttr {
    U32(u16, u32),
    U64(u16, u64),
    /// A NUL-terminated string.
    Str(u16, String),
    Sockets(Vec<u32>),
    Other(DefaultNla),
}

/// One socket of a connect: `NBD_SOCK_ITEM { NBD_SOCK_FD }`.
struct SockItem(u32);

struct SockFd(u32);

impl Nla for SockFd {
    fn value_len(&self) -> usize {
        4
    }
    fn kind(&self) -> u16 {
        NBD_SOCK_FD
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        buffer[..4].copy_from_slice(&self.0.to_ne_bytes());
    }
}

impl Nla for SockItem {
    fn value_len(&self) -> usize {
        SockFd(self.0).buffer_len()
    }
    fn kind(&self) -> u16 {
        NBD_SOCK_ITEM | NLA_F_NESTED
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        SockFd(self.0).emit(buffer)
    }
}

impl Nla for NbdAttr {
    fn value_len(&self) -> usize {
        match self {
            NbdAttr::U32(..) => 4,
            NbdAttr::U64(..) => 8,
            NbdAttr::Str(_, v) => v.len() + 1,
            NbdAttr::Sockets(fds) => fds.iter().map(|fd| SockItem(*fd).buffer_len()).sum(),
            NbdAttr::Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            NbdAttr::U32(kind, _) | NbdAttr::U64(kind, _) | NbdAttr::Str(kind, _) => *kind,
            NbdAttr::Sockets(_) => NBD_ATTR_SOCKETS | NLA_F_NESTED,
            NbdAttr::Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            NbdAttr::U32(_, v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            NbdAttr::U64(_, v) => buffer[..8].copy_from_slice(&v.to_ne_bytes()),
            NbdAttr::Str(_, v) => {
                buffer[..v.len()].copy_from_slice(v.as_bytes());
                buffer[v.len()] = 0;
            }
            NbdAttr::Sockets(fds) => {
                let items: Vec<SockItem> = fds.iter().map(|fd| SockItem(*fd)).collect();
                items.as_slice().emit(buffer)
            }
            NbdAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NbdAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        Ok(match buf.kind() {
            NBD_ATTR_INDEX => NbdAttr::U32(
                NBD_ATTR_INDEX,
                parse_u32(buf.value()).context("NBD_ATTR_INDEX")?,
            ),
            _ => NbdAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// An NBD generic netlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NbdMessage {
    cmd: u8,
    attrs: Vec<NbdAttr>,
}

impl GenlFamily for NbdMessage {
    fn family_name() -> &'static str {
        "nbd"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for NbdMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NbdMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| NbdAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NbdMessage {
            cmd: header.cmd,
            attrs,
        })
    }
}

fn netlink_err(e: impl std::fmt::Display) -> NbdError {
    NbdError::Netlink(e.to_string())
}

/// Sends one generic netlink request and returns the attributes of its
/// answer (none for a bare acknowledgement).
fn send_and_wait<F>(socket: &Socket, message: GenlMessage<F>) -> Result<Vec<F>, NbdError>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
{
    let mut nl = NetlinkMessage::from(message);
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    nl.finalize();
    let mut out = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut out);
    socket.send(&out, 0).map_err(netlink_err)?;
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0).map_err(netlink_err)?;
        let mut at = 0;
        while at < n {
            let msg =
                NetlinkMessage::<GenlMessage<F>>::deserialize(&buf[at..n]).map_err(netlink_err)?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => answers.push(m.payload),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(_) => Err(NbdError::Netlink(e.to_io().to_string())),
                    }
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// A generic netlink socket, in this thread's network namespace or the
/// host's first one.
fn netlink_socket(initial_namespace: bool) -> Result<Socket, NbdError> {
    let open = || -> Result<Socket, NbdError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(netlink_err)?;
        socket.bind_auto().map_err(netlink_err)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(netlink_err)?;
        Ok(socket)
    };
    if !initial_namespace {
        return open();
    }
    // A thread of its own enters the namespace (a socket stays in the one
    // it was made in), and ends with it.
    std::thread::spawn(move || {
        let ns = std::fs::File::open("/proc/1/ns/net").map_err(netlink_err)?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(netlink_err)?;
        open()
    })
    .join()
    .map_err(|_| NbdError::Netlink("opening a netlink socket panicked".into()))?
}

/// The nbd family as a namespace sees it (the kernel numbers it when the
/// module loads): its id, and its multicast group's.
struct Family {
    id: u16,
    link_events: Option<u32>,
}

fn nbd_family(socket: &Socket) -> Result<Family, NbdError> {
    let mut ask = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("nbd".into())],
    });
    ask.finalize();
    let attrs: Vec<GenlCtrlAttrs> = send_and_wait(socket, ask)?
        .into_iter()
        .flat_map(|m| m.nlas)
        .collect();
    let id = attrs
        .iter()
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| NbdError::Netlink("the kernel named no nbd family id".into()))?;
    let link_events = attrs.iter().find_map(|a| match a {
        GenlCtrlAttrs::McastGroups(groups) => groups.iter().find_map(|g| {
            let named = g
                .iter()
                .any(|a| matches!(a, McastGrpAttrs::Name(n) if n == NBD_MCAST_GROUP));
            g.iter().find_map(|a| match a {
                McastGrpAttrs::Id(id) if named => Some(*id),
                _ => None,
            })
        }),
        _ => None,
    });
    Ok(Family { id, link_events })
}

/// A generic netlink socket where the nbd family is, and the family.
fn nbd_socket() -> Result<(Socket, Family), NbdError> {
    // Kernels before 6.3 or so offer the nbd family in the host's first
    // network namespace only; hostd may run in another (a test's "host").
    match netlink_socket(false).and_then(|s| Ok((nbd_family(&s)?, s))) {
        Ok((family, socket)) => Ok((socket, family)),
        Err(here) => {
            let socket = netlink_socket(true).map_err(|e| {
                NbdError::Netlink(format!(
                    "no nbd family ({here}; {e}): is the nbd module loaded?"
                ))
            })?;
            let family = nbd_family(&socket).map_err(|e| {
                NbdError::Netlink(format!(
                    "no nbd family ({e}): is the nbd module loaded (modprobe nbd)?"
                ))
            })?;
            Ok((socket, family))
        }
    }
}

fn request(cmd: u8, attrs: Vec<NbdAttr>) -> Result<Vec<NbdAttr>, NbdError> {
    let (socket, family) = nbd_socket()?;
    let mut msg = GenlMessage::from_payload(NbdMessage { cmd, attrs });
    msg.set_resolved_family_id(family.id);
    msg.finalize();
    Ok(send_and_wait(&socket, msg)?
        .into_iter()
        .flat_map(|m| m.attrs)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted server side of the handshake, over a socket pair.
    fn serve(replies: Vec<(u32, Vec<u8>)>) -> std::os::unix::net::UnixStream {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut hello = Vec::new();
            hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
            hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
            hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            theirs.write_all(&hello).unwrap();
            // Client flags, then the option: magic, GO, length, name, 0.
            let mut head = [0u8; 20];
            theirs.read_exact(&mut head).unwrap();
            assert_eq!(u32::from_be_bytes(head[0..4].try_into().unwrap()), 3);
            assert_eq!(u32::from_be_bytes(head[12..16].try_into().unwrap()), OPT_GO);
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            theirs.read_exact(&mut data).unwrap();
            assert_eq!(&data[4..data.len() - 2], b"secret");
            for (kind, data) in replies {
                let mut r = Vec::new();
                r.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
                r.extend_from_slice(&OPT_GO.to_be_bytes());
                r.extend_from_slice(&kind.to_be_bytes());
                r.extend_from_slice(&(data.len() as u32).to_be_bytes());
                r.extend_from_slice(&data);
                theirs.write_all(&r).unwrap();
            }
        });
        ours
    }

    #[test]
    fn the_handshake_takes_the_exports_size_or_says_why_not() {
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&(1u64 << 30).to_be_bytes());
        info.extend_from_slice(&(1u16 | TX_READ_ONLY).to_be_bytes());
        let mut s = serve(vec![(REP_INFO, info), (REP_ACK, vec![])]);
        let e = handshake(&mut s, "secret").unwrap();
        assert_eq!(e.size, 1 << 30);
        assert!(e.read_only());

        let mut s = serve(vec![(
            storaged_proto::nbd::REP_ERR_UNKNOWN,
            b"no such export".to_vec(),
        )]);
        let err = handshake(&mut s, "secret").unwrap_err();
        assert!(err.contains("no such export"), "{err}");

        let mut s = serve(vec![(REP_ACK, vec![])]);
        assert!(handshake(&mut s, "secret").is_err(), "no size");
    }

    #[test]
    fn a_connect_request_carries_its_sockets_nested() {
        let attr = NbdAttr::Sockets(vec![7, 9]);
        let mut buf = vec![0u8; attr.buffer_len()];
        attr.emit(&mut buf);
        // Header (len 28, nested 7), then two items of 12 bytes, each an
        // item header (nested 1) and an fd attribute (1) with the fd.
        assert_eq!(buf.len(), 4 + 2 * 12);
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), 28);
        assert_eq!(
            u16::from_ne_bytes([buf[2], buf[3]]),
            NBD_ATTR_SOCKETS | NLA_F_NESTED
        );
        assert_eq!(
            u16::from_ne_bytes([buf[6], buf[7]]),
            NBD_SOCK_ITEM | NLA_F_NESTED
        );
        assert_eq!(u16::from_ne_bytes([buf[10], buf[11]]), NBD_SOCK_FD);
        assert_eq!(u32::from_ne_bytes(buf[12..16].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(buf[24..28].try_into().unwrap()), 9);
    }

    /// The kernel's multicast message, as `nbd_mcast_index` builds it.
    fn message(cmd: u8, index: u32) -> Vec<u8> {
        let mut m = GenlMessage::from_payload(NbdMessage {
            cmd,
            attrs: vec![NbdAttr::U32(NBD_ATTR_INDEX, index)],
        });
        m.set_resolved_family_id(30);
        let mut nl = NetlinkMessage::from(m);
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        out
    }

    #[test]
    fn dead_link_events_name_their_devices() {
        let mut buf = message(NBD_CMD_LINK_DEAD, 5);
        buf.extend(message(NBD_CMD_CONNECT, 6));
        buf.extend(message(NBD_CMD_LINK_DEAD, 7));
        assert_eq!(dead_links(&buf), vec![5, 7]);
        // Garbage ends the scan, with what came before it kept.
        let mut bad = message(NBD_CMD_LINK_DEAD, 1);
        bad.extend([0xff; 7]);
        assert_eq!(dead_links(&bad), vec![1]);
        assert!(dead_links(&[]).is_empty());
    }
}
