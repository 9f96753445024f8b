//! The NBD protocol's numbers (the upstream `proto.md`), shared by
//! storaged's server and hostd's client so that both speak one protocol.

/// The first word of the server's greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// The greeting's second word (newstyle), and the first of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The first word of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The first word of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The first word of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (the server's greeting).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flags: the client takes the server's `NO_ZEROES`.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option replies; errors have the top bit set.
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR + 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR + 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR + 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR + 6;
/// The `NBD_INFO_EXPORT` item of an `NBD_REP_INFO`: size and flags.
pub const INFO_EXPORT: u16 = 0;

/// Transmission flags.
pub const TX_HAS_FLAGS: u16 = 1;
pub const TX_READ_ONLY: u16 = 1 << 1;
pub const TX_SEND_FLUSH: u16 = 1 << 2;
pub const TX_SEND_FUA: u16 = 1 << 3;
pub const TX_SEND_TRIM: u16 = 1 << 5;
pub const TX_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TX_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands and their flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1;

/// The errors a simple reply carries (Linux's numbers, as the protocol
/// defines them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ENOTSUP: u32 = 95;
