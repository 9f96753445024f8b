//! Address management for IPv4 subnets (pure): what a subnet's CIDR,
//! gateway and allocation pools may be, Neutron's defaults for them, and the
//! next free address. The store makes an allocation stick (an address is
//! the primary key of its subnet's allocations), so a lost race is retried
//! with the next address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// An allocation pool, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }

    fn overlaps(&self, other: &Pool) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// Why a subnet's addressing is refused, in Neutron's words.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("Invalid input for cidr. Reason: '{0}' is not a valid IP subnet.")]
    BadCidr(String),
    #[error("Invalid input for cidr. Reason: '{given}' isn't a recommended CIDR, '{canonical}' should be specified instead.")]
    NotCanonical { given: String, canonical: String },
    #[error(
        "Invalid input for operation: a /{0} subnet leaves no address for ports (at most /30)."
    )]
    TooSmall(u8),
    #[error("Invalid input for operation: Gateway is not valid on subnet.")]
    GatewayOutside,
    #[error("Invalid input for operation: '{0}' is not a valid IP address.")]
    BadAddress(String),
    #[error("The allocation pool {0} spans beyond the subnet cidr {1}.")]
    PoolOutside(String, Ipv4Net),
    #[error("Invalid input for operation: the allocation pool {0} ends before it starts.")]
    PoolReversed(String),
    #[error("Found overlapping allocation pools: {0} and {1}.")]
    PoolsOverlap(String, String),
    #[error("Gateway ip {0} conflicts with allocation pool {1}.")]
    GatewayInPool(Ipv4Addr, String),
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Parses a subnet's CIDR, which must name its network address.
pub fn parse_cidr(cidr: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = cidr
        .trim()
        .parse()
        .map_err(|_| IpamError::BadCidr(cidr.to_owned()))?;
    if net.addr() != net.network() {
        return Err(IpamError::NotCanonical {
            given: cidr.to_owned(),
            canonical: net.trunc().to_string(),
        });
    }
    if net.prefix_len() > 30 {
        return Err(IpamError::TooSmall(net.prefix_len()));
    }
    Ok(net)
}

pub fn parse_ip(ip: &str) -> Result<Ipv4Addr, IpamError> {
    ip.trim()
        .parse()
        .map_err(|_| IpamError::BadAddress(ip.to_owned()))
}

/// The addresses ports may have: all but the network and broadcast addresses.
fn usable(net: &Ipv4Net) -> Pool {
    let first = u32::from(net.network()) + 1;
    let last = u32::from(net.broadcast()) - 1;
    Pool {
        start: first.into(),
        end: last.into(),
    }
}

/// Whether a port may hold `ip` on this subnet.
pub fn is_usable(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    usable(net).contains(ip)
}

/// Neutron's default gateway: the first usable address.
pub fn default_gateway(net: &Ipv4Net) -> Ipv4Addr {
    usable(net).start
}

/// Checks a gateway the user gave (None: the subnet has no gateway).
pub fn check_gateway(net: &Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<(), IpamError> {
    match gateway {
        Some(g) if !is_usable(net, g) => Err(IpamError::GatewayOutside),
        _ => Ok(()),
    }
}

/// Neutron's default pools: every usable address but the gateway.
pub fn default_pools(net: &Ipv4Net, gateway: Option<Ipv4Addr>) -> Vec<Pool> {
    let all = usable(net);
    let Some(g) = gateway.filter(|g| all.contains(*g)) else {
        return vec![all];
    };
    let g = u32::from(g);
    let mut pools = Vec::new();
    if g > u32::from(all.start) {
        pools.push(Pool {
            start: all.start,
            end: (g - 1).into(),
        });
    }
    if g < u32::from(all.end) {
        pools.push(Pool {
            start: (g + 1).into(),
            end: all.end,
        });
    }
    pools
}

/// Checks pools the user gave against the subnet and its gateway.
pub fn check_pools(
    net: &Ipv4Net,
    gateway: Option<Ipv4Addr>,
    pools: &[Pool],
) -> Result<(), IpamError> {
    let all = usable(net);
    for (i, p) in pools.iter().enumerate() {
        if p.start > p.end {
            return Err(IpamError::PoolReversed(p.to_string()));
        }
        if !all.contains(p.start) || !all.contains(p.end) {
            return Err(IpamError::PoolOutside(p.to_string(), *net));
        }
        if let Some(other) = pools[..i].iter().find(|o| o.overlaps(p)) {
            return Err(IpamError::PoolsOverlap(other.to_string(), p.to_string()));
        }
        if let Some(g) = gateway.filter(|g| p.contains(*g)) {
            return Err(IpamError::GatewayInPool(g, p.to_string()));
        }
    }
    Ok(())
}

/// The lowest address of the pools not in `taken`, if any is left.
pub fn first_free(pools: &[Pool], taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let mut sorted = pools.to_vec();
    sorted.sort_by_key(|p| p.start);
    for p in sorted {
        let mut ip = u32::from(p.start);
        // Skip past taken addresses in order: the set is sorted too.
        for t in taken.range(p.start..=p.end) {
            if u32::from(*t) != ip {
                break;
            }
            ip += 1;
        }
        if ip <= u32::from(p.end) {
            return Some(ip.into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    fn pool(a: &str, b: &str) -> Pool {
        Pool {
            start: ip(a),
            end: ip(b),
        }
    }

    #[test]
    fn cidrs_must_name_their_network() {
        assert_eq!(
            parse_cidr("10.0.0.0/24").map(|n| n.to_string()),
            Ok("10.0.0.0/24".into())
        );
        assert_eq!(
            parse_cidr("10.0.0.5/24"),
            Err(IpamError::NotCanonical {
                given: "10.0.0.5/24".into(),
                canonical: "10.0.0.0/24".into()
            })
        );
        assert!(matches!(
            parse_cidr("10.0.0.0/33"),
            Err(IpamError::BadCidr(_))
        ));
        assert!(matches!(parse_cidr("banana"), Err(IpamError::BadCidr(_))));
        assert!(matches!(
            parse_cidr("fd00::/64"),
            Err(IpamError::BadCidr(_))
        ));
        assert_eq!(parse_cidr("10.0.0.0/31"), Err(IpamError::TooSmall(31)));
        assert!(parse_cidr("10.0.0.0/30").is_ok());
    }

    #[test]
    fn defaults_are_neutrons() {
        let net = parse_cidr("10.0.0.0/24").unwrap_or_default();
        assert_eq!(default_gateway(&net), ip("10.0.0.1"));
        assert_eq!(
            default_pools(&net, Some(ip("10.0.0.1"))),
            [pool("10.0.0.2", "10.0.0.254")]
        );
        assert_eq!(
            default_pools(&net, Some(ip("10.0.0.100"))),
            [
                pool("10.0.0.1", "10.0.0.99"),
                pool("10.0.0.101", "10.0.0.254")
            ]
        );
        assert_eq!(default_pools(&net, None), [pool("10.0.0.1", "10.0.0.254")]);
        let tiny = parse_cidr("10.0.0.0/30").unwrap_or_default();
        assert_eq!(
            default_pools(&tiny, Some(ip("10.0.0.1"))),
            [pool("10.0.0.2", "10.0.0.2")]
        );
    }

    #[test]
    fn gateways_and_pools_are_checked() {
        let net = parse_cidr("10.0.0.0/24").unwrap_or_default();
        assert_eq!(
            check_gateway(&net, Some(ip("10.0.1.1"))),
            Err(IpamError::GatewayOutside)
        );
        assert_eq!(
            check_gateway(&net, Some(ip("10.0.0.255"))),
            Err(IpamError::GatewayOutside)
        );
        assert_eq!(check_gateway(&net, None), Ok(()));
        let gw = Some(ip("10.0.0.1"));
        assert!(check_pools(&net, gw, &[pool("10.0.0.10", "10.0.0.20")]).is_ok());
        assert!(matches!(
            check_pools(&net, gw, &[pool("10.0.0.20", "10.0.0.10")]),
            Err(IpamError::PoolReversed(_))
        ));
        assert!(matches!(
            check_pools(&net, gw, &[pool("10.0.0.10", "10.0.1.20")]),
            Err(IpamError::PoolOutside(..))
        ));
        assert!(matches!(
            check_pools(&net, gw, &[pool("10.0.0.0", "10.0.0.20")]),
            Err(IpamError::PoolOutside(..))
        ));
        assert!(matches!(
            check_pools(
                &net,
                gw,
                &[
                    pool("10.0.0.10", "10.0.0.20"),
                    pool("10.0.0.20", "10.0.0.30")
                ]
            ),
            Err(IpamError::PoolsOverlap(..))
        ));
        assert!(matches!(
            check_pools(&net, gw, &[pool("10.0.0.1", "10.0.0.20")]),
            Err(IpamError::GatewayInPool(..))
        ));
    }

    #[test]
    fn the_first_free_address_skips_taken_ones() {
        let pools = [pool("10.0.0.10", "10.0.0.12"), pool("10.0.0.2", "10.0.0.3")];
        let mut taken = BTreeSet::new();
        assert_eq!(first_free(&pools, &taken), Some(ip("10.0.0.2")));
        taken.extend([ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.11")]);
        assert_eq!(first_free(&pools, &taken), Some(ip("10.0.0.10")));
        taken.insert(ip("10.0.0.10"));
        assert_eq!(first_free(&pools, &taken), Some(ip("10.0.0.12")));
        taken.insert(ip("10.0.0.12"));
        assert_eq!(first_free(&pools, &taken), None);
    }

    proptest! {
        /// Whatever is taken, the answer is in a pool, not taken, and the
        /// lowest such address; None only when every address is taken.
        #[test]
        fn first_free_is_the_lowest_free_pool_address(
            taken in proptest::collection::btree_set(0u32..64, 0..64),
        ) {
            let base = u32::from(ip("10.0.0.0"));
            let pools = [
                Pool { start: (base + 40).into(), end: (base + 63).into() },
                Pool { start: (base + 1).into(), end: (base + 20).into() },
            ];
            let taken: BTreeSet<Ipv4Addr> = taken.into_iter().map(|o| (base + o).into()).collect();
            let free: Vec<Ipv4Addr> = (0..64u32)
                .map(|o| Ipv4Addr::from(base + o))
                .filter(|a| pools.iter().any(|p| p.contains(*a)) && !taken.contains(a))
                .collect();
            prop_assert_eq!(first_free(&pools, &taken), free.first().copied());
        }
    }
}
