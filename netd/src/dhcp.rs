//! DHCP for a network's guests on this host, as Neutron's leases are:
//! static (a port's MAC gets the port's address, nothing is remembered),
//! so the answers are a pure function of the intended state ([`answer`]).
//!
//! Each network with a DHCP subnet has, on each host with its ports, a
//! namespace holding 169.254.169.254 on a veth whose other end is an
//! isolated port of the network's bridge (it reaches the host's guests,
//! never the tunnel: every host answers its own guests, as OVN's
//! localports do). The server there answers from 169.254.169.254 and
//! tells guests that address is on-link (a classless route), where the
//! metadata service will answer too. Answers are broadcast: a guest
//! without an address cannot take a unicast the server could only send
//! after ARP.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, RwLock};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ipnet::Ipv4Net;
use netd_proto::{HostNetwork, SubnetInfo};

use crate::nl::parse_mac;

/// Where DHCP (and metadata) answers from, on every network.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Neutron's lease time.
pub const LEASE_SECS: u32 = 86_400;

/// What one guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub mtu: u16,
}

/// The leases of a network's ports on this host, by MAC.
pub type Leases = HashMap<[u8; 6], Lease>;

/// The leases `net` gives its ports here: each port's first address on a
/// DHCP subnet.
pub fn leases(net: &HostNetwork) -> Leases {
    let subnets: Vec<(Ipv4Net, &SubnetInfo)> = net
        .subnets
        .iter()
        .filter(|s| s.dhcp)
        .filter_map(|s| Some((s.cidr.parse::<Ipv4Net>().ok()?, s)))
        .collect();
    let mut out = Leases::new();
    for port in &net.ports {
        let Some(mac) = parse_mac(&port.mac) else {
            continue;
        };
        let found = port.ips.iter().find_map(|ip| {
            subnets
                .iter()
                .find(|(n, _)| n.contains(ip))
                .map(|s| (*ip, s))
        });
        let Some((ip, (cidr, subnet))) = found else {
            continue;
        };
        let mut routes: Vec<(Ipv4Net, Ipv4Addr)> = subnet
            .routes
            .iter()
            .filter_map(|r| Some((r.destination.parse::<Ipv4Net>().ok()?.trunc(), r.nexthop)))
            .collect();
        // 0.0.0.0 as the next hop: on-link (RFC 3442).
        routes.push((Ipv4Net::from(SERVER), Ipv4Addr::UNSPECIFIED));
        // Clients that take classless routes ignore the router option.
        if let Some(gw) = subnet.gateway {
            routes.push((Ipv4Net::default(), gw));
        }
        out.insert(
            mac,
            Lease {
                ip,
                mask: cidr.netmask(),
                gateway: subnet.gateway,
                dns: subnet.dns.clone(),
                routes,
                mtu: u16::try_from(net.mtu).unwrap_or(1500),
            },
        );
    }
    out
}

/// The answer to one request, if it gets one: a DISCOVER an OFFER, a
/// REQUEST for its own address an ACK (for another a NAK); an unknown MAC,
/// a malformed request or anything else nothing.
pub fn answer(request: &Message, leases: &Leases) -> Option<Message> {
    if request.opcode() != Opcode::BootRequest
        || request.htype() != HType::Eth
        || request.hlen() != 6
    {
        return None;
    }
    let mac = <[u8; 6]>::try_from(request.chaddr().get(..6)?).ok()?;
    let lease = leases.get(&mac)?;
    let kind = match request.opts().msg_type()? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            let asked = match request.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => request.ciaddr(),
            };
            if asked == lease.ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        _ => return None,
    };
    let yiaddr = if kind == MessageType::Nak {
        Ipv4Addr::UNSPECIFIED
    } else {
        lease.ip
    };
    let mut reply = Message::new_with_id(
        request.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        request.giaddr(),
        &mac,
    );
    reply.set_opcode(Opcode::BootReply);
    reply.set_flags(Flags::default().set_broadcast());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(SERVER));
    if kind != MessageType::Nak {
        opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
        opts.insert(DhcpOption::SubnetMask(lease.mask));
        if let Some(gw) = lease.gateway {
            opts.insert(DhcpOption::Router(vec![gw]));
        }
        if !lease.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
        }
        opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
        opts.insert(DhcpOption::ClasslessStaticRoute(lease.routes.clone()));
    }
    Some(reply)
}

/// Answers requests on `socket` (UDP port 67 in the network's namespace)
/// from `leases`, until dropped.
pub async fn serve(socket: tokio::net::UdpSocket, leases: Arc<RwLock<Leases>>, network: String) {
    let mut buf = vec![0u8; 1500];
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(e) => {
                tracing::warn!(network, "DHCP socket: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(request) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        let reply = {
            let leases = leases.read().unwrap_or_else(|p| p.into_inner());
            answer(&request, &leases)
        };
        let Some(reply) = reply else {
            continue;
        };
        match reply.to_vec() {
            Ok(bytes) => {
                if let Err(e) = socket.send_to(&bytes, to).await {
                    tracing::warn!(network, "sending a DHCP answer: {e}");
                }
            }
            Err(e) => tracing::warn!(network, "encoding a DHCP answer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_proto::{LocalPort, Route};

    const MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];

    fn network() -> HostNetwork {
        HostNetwork {
            id: "n".into(),
            vni: 1000,
            mtu: 1450,
            external: false,
            subnets: vec![SubnetInfo {
                cidr: "10.0.0.0/24".into(),
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dhcp: true,
                dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
                routes: vec![Route {
                    destination: "192.168.0.0/16".into(),
                    nexthop: Ipv4Addr::new(10, 0, 0, 9),
                }],
            }],
            ports: vec![LocalPort {
                id: "p".into(),
                tap: "tapp".into(),
                mac: "fa:16:3e:00:00:01".into(),
                ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
                admin_state_up: true,
                port_security: true,
                allowed_pairs: vec![],
                rules: vec![],
            }],
            remote: vec![],
        }
    }

    fn request(kind: MessageType, mac: [u8; 6], asked: Option<Ipv4Addr>) -> Message {
        let mut m = Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(ip) = asked {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        m
    }

    /// Through the wire format, as a client would read it.
    fn round_trip(m: &Message) -> Message {
        let bytes = m.to_vec().expect("encodes");
        Message::decode(&mut Decoder::new(&bytes)).expect("decodes")
    }

    #[test]
    fn a_port_is_offered_and_given_its_address_with_the_subnet_around_it() {
        let leases = leases(&network());
        let offer = round_trip(
            &answer(&request(MessageType::Discover, MAC, None), &leases).expect("offer"),
        );
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234);
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(offer.chaddr(), &MAC);
        let o = offer.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(LEASE_SECS))
        );
        assert_eq!(
            o.get(OptionCode::ClasslessStaticRoute),
            Some(&DhcpOption::ClasslessStaticRoute(vec![
                (
                    "192.168.0.0/16".parse().unwrap_or_default(),
                    Ipv4Addr::new(10, 0, 0, 9)
                ),
                (
                    "169.254.169.254/32".parse().unwrap_or_default(),
                    Ipv4Addr::UNSPECIFIED
                ),
                (
                    "0.0.0.0/0".parse().unwrap_or_default(),
                    Ipv4Addr::new(10, 0, 0, 1)
                ),
            ]))
        );
        let ack = answer(
            &request(MessageType::Request, MAC, Some(Ipv4Addr::new(10, 0, 0, 5))),
            &leases,
        )
        .expect("ack");
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 0, 0, 5));
    }

    #[test]
    fn strangers_and_wrong_requests_get_nothing_or_a_nak() {
        let leases = leases(&network());
        let other = [0xfa, 0x16, 0x3e, 0, 0, 2];
        assert!(answer(&request(MessageType::Discover, other, None), &leases).is_none());
        let nak = answer(
            &request(MessageType::Request, MAC, Some(Ipv4Addr::new(10, 0, 0, 6))),
            &leases,
        )
        .expect("nak");
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(answer(&request(MessageType::Release, MAC, None), &leases).is_none());
        // A reply is never answered.
        let mut reply = request(MessageType::Discover, MAC, None);
        reply.set_opcode(Opcode::BootReply);
        assert!(answer(&reply, &leases).is_none());
        // No DHCP subnet: no leases.
        let mut net = network();
        net.subnets[0].dhcp = false;
        assert!(super::leases(&net).is_empty());
    }

    #[test]
    fn garbage_never_panics_the_decoder_or_the_answer() {
        let leases = leases(&network());
        let good = request(MessageType::Discover, MAC, None)
            .to_vec()
            .expect("encodes");
        for cut in 0..good.len() {
            if let Ok(m) = Message::decode(&mut Decoder::new(&good[..cut])) {
                let _ = answer(&m, &leases);
            }
        }
        let mut flipped = good.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
            if let Ok(m) = Message::decode(&mut Decoder::new(&flipped)) {
                let _ = answer(&m, &leases);
            }
        }
    }
}
