//! Gratuitous ARP: a router announces an address it just took (a floating
//! IP, its gateway address), so that neighbours holding an entry for it
//! (the external network's gateway, a floating IP that moved from another
//! router) point it at this router at once instead of when the entry ages
//! out, as Neutron's L3 agent does with `arping -U`.
//!
//! The frame is built by a pure function; sending it needs a packet socket
//! (`AF_PACKET`), which the `rustix` version in use does not cover, so it
//! is one small wrapper over libc.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
/// An Ethernet header and an IPv4-over-Ethernet ARP packet.
pub const FRAME_LEN: usize = 42;

/// A gratuitous ARP request: `ip` is at `mac`, asked of everyone
/// (sender and target address both `ip`; RFC 5227's ARP Announcement).
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6- and 4-byte addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // The target MAC stays zero.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends the announcement of `ip` at `mac` out of link `ifindex`, in the
/// calling thread's network namespace.
pub fn announce(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))?;
    // SAFETY: socket(2) with constant arguments; the descriptor it returns
    // is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket(2) just returned, owned by no
    // one else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data, for which all zeroes is valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    let f = frame(mac, ip);
    // SAFETY: the buffer and the address are valid for the lengths given
    // for the duration of the call; the descriptor is open.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            f.as_ptr().cast(),
            f.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_the_address_as_sender_and_target() {
        let mac = [0xfa, 0x16, 0x3e, 1, 2, 3];
        let f = frame(mac, Ipv4Addr::new(172, 24, 4, 3));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[172, 24, 4, 3]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[172, 24, 4, 3]);
    }
}
