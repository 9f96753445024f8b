//! The kernel's links and forwarding entries through rtnetlink: the one
//! module that uses the crate (pinned; its API moves every few months), so
//! the datapath code speaks of bridges, VXLAN devices and tunnel entries,
//! not netlink messages.

use std::net::Ipv4Addr;

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("no link named {0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NlError {
    let what = what.into();
    move |source| NlError::Request { what, source }
}

/// A link as the datapath needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
}

impl Link {
    fn of(msg: &LinkMessage) -> Option<Link> {
        let mut name = None;
        let mut master = None;
        let mut mtu = 0;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Controller(m) => master = Some(*m),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Some(Link {
            index: msg.header.index,
            name: name?,
            master,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
        })
    }
}

/// A forwarding entry of a VXLAN device: frames for `mac` go to the tunnel
/// endpoint `dst` (the all-zero MAC: broadcast and unknown frames, one copy
/// per entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// What a new VXLAN device is made with.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub local: Ipv4Addr,
    /// The underlay device to send through, if pinned to one.
    pub underlay: Option<u32>,
    pub port: u16,
    pub mtu: u32,
}

/// A netlink connection in netd's network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and drives it on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NlError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NlError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>, NlError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing links"))?;
        Ok(msgs.iter().filter_map(Link::of).collect())
    }

    pub async fn add_bridge(&self, name: &str, mtu: u32) -> Result<(), NlError> {
        let msg = LinkBridge::new(name).mtu(mtu).up().build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(failed(format!("creating bridge {name}")))
    }

    /// A VXLAN device that neither learns nor floods by itself: every
    /// remote entry comes from the controller.
    pub async fn add_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<(), NlError> {
        let mut b = LinkVxlan::new(spec.name, spec.vni)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu);
        if let Some(dev) = spec.underlay {
            b = b.dev(dev);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(failed(format!("creating VXLAN device {}", spec.name)))
    }

    pub async fn delete(&self, link: &Link) -> Result<(), NlError> {
        self.handle
            .link()
            .del(link.index)
            .execute()
            .await
            .map_err(failed(format!("deleting {}", link.name)))
    }

    /// Makes `link` a port of `bridge`, with `mtu`, up.
    pub async fn attach(&self, link: &Link, bridge: u32, mtu: u32) -> Result<(), NlError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .mtu(mtu)
            .up()
            .controller(bridge)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(failed(format!("attaching {}", link.name)))
    }

    /// Takes `link` off its bridge.
    pub async fn detach(&self, link: &Link) -> Result<(), NlError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .nocontroller()
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!("detaching {}", link.name)))
    }

    /// A veth pair, both ends down.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<(), NlError> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(failed(format!("creating veth {name}")))
    }

    /// Moves `link` into the network namespace open as `ns`.
    pub async fn move_to(&self, link: &Link, ns: &std::fs::File) -> Result<(), NlError> {
        use std::os::fd::AsRawFd;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!("moving {} to a namespace", link.name)))
    }

    /// A bridge port that talks only to the bridge's non-isolated ports.
    pub async fn isolate(&self, link: &Link) -> Result<(), NlError> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(link.index).isolated(true).build())
            .execute()
            .await
            .map_err(failed(format!("isolating {}", link.name)))
    }

    pub async fn set_up(&self, link: &Link) -> Result<(), NlError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(failed(format!("setting {} up", link.name)))
    }

    /// Gives `link` an address (again, harmlessly).
    pub async fn add_address(&self, link: &Link, ip: Ipv4Addr, prefix: u8) -> Result<(), NlError> {
        self.handle
            .address()
            .add(link.index, ip.into(), prefix)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("adding {ip}/{prefix} to {}", link.name)))
    }

    /// A default route out of `link` (on-link), again harmlessly.
    pub async fn default_route(&self, link: &Link) -> Result<(), NlError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(link.index)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("a default route out of {}", link.name)))
    }

    /// Sets a link's MAC and MTU and brings it up.
    pub async fn set_mac_mtu_up(&self, link: &Link, mac: [u8; 6], mtu: u32) -> Result<(), NlError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .address(mac.to_vec())
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!("setting up {}", link.name)))
    }

    /// The IPv4 addresses of `link`, with their prefix lengths.
    pub async fn addresses(&self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>, NlError> {
        Ok(self
            .address_messages(link)
            .await?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    async fn address_messages(&self, link: &Link) -> Result<Vec<AddressMessage>, NlError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(failed(format!("listing the addresses of {}", link.name)))
    }

    /// Takes an address off `link` (a no-op if it has none such).
    pub async fn delete_address(
        &self,
        link: &Link,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NlError> {
        for msg in self.address_messages(link).await? {
            if address_of(&msg) == Some((ip, prefix)) {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(failed(format!("deleting {ip}/{prefix} from {}", link.name)))?;
            }
        }
        Ok(())
    }

    /// The default route: through `gateway` out of `link`, replacing any.
    pub async fn default_route_via(&self, link: &Link, gateway: Ipv4Addr) -> Result<(), NlError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(link.index)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("a default route via {gateway}")))
    }

    /// The tunnel entries of VXLAN device `index`.
    pub async fn tunnel_entries(&self, index: u32) -> Result<Vec<TunnelEntry>, NlError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing forwarding entries"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(tunnel_entry)
            .collect())
    }

    /// Adds a tunnel entry beside any others for the same MAC (several
    /// all-zero entries make the flood list).
    pub async fn add_tunnel_entry(&self, index: u32, e: TunnelEntry) -> Result<(), NlError> {
        let msg = entry_message(index, e);
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_APPEND,
            format!("adding {} -> {}", mac_text(&e.mac), e.dst),
        )
        .await
    }

    pub async fn delete_tunnel_entry(&self, index: u32, e: TunnelEntry) -> Result<(), NlError> {
        let msg = entry_message(index, e);
        self.request(
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
            format!("removing {} -> {}", mac_text(&e.mac), e.dst),
        )
        .await
    }

    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: String,
    ) -> Result<(), NlError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(req).map_err(failed(what.clone()))?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                return Err(NlError::Request {
                    what,
                    source: rtnetlink::Error::NetlinkError(e),
                });
            }
        }
        Ok(())
    }
}

/// A VXLAN device's own entry (`bridge fdb ... self dst X`), as one.
fn tunnel_entry(msg: &NeighbourMessage) -> Option<TunnelEntry> {
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
            // The crate leaves a bridge entry's address as bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => {}
        }
    }
    Some(TunnelEntry {
        mac: mac?,
        dst: dst?,
    })
}

fn entry_message(index: u32, e: TunnelEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(e.dst)),
    ];
    msg
}

/// An IPv4 address message's address and prefix length.
fn address_of(msg: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some((*ip, msg.header.prefix_len)),
        _ => None,
    })
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `fa:16:3e:01:02:03` as bytes; None for anything else.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_read_and_print() {
        let mac = parse_mac("fa:16:3E:0a:0b:ff");
        assert_eq!(mac, Some([0xfa, 0x16, 0x3e, 0x0a, 0x0b, 0xff]));
        assert_eq!(
            mac.map(|m| mac_text(&m)).as_deref(),
            Some("fa:16:3e:0a:0b:ff")
        );
        for bad in [
            "",
            "fa:16:3e:0a:0b",
            "fa:16:3e:0a:0b:ff:00",
            "fa:16:3e:0a:0b:f",
            "fa:16:3e:0a:0b:zz",
            "fa-16-3e-0a-0b-ff",
            "+f:16:3e:0a:0b:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
