//! Each DHCP network's local port on this host: a namespace of netd's
//! holding 169.254.169.254 on `dhn<id>`, whose veth peer `dhp<id>` is an
//! isolated port of the network's bridge (it reaches this host's guests,
//! never the tunnel), and the DHCP server and metadata service answering
//! there. Made when a
//! network with a DHCP subnet has ports here, gone when it has none; the
//! namespace (and so the veth) lives as long as netd holds it, so a netd
//! that restarts makes them afresh and leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use netd_proto::{HostNetwork, HostNetworks};

use crate::config::Config;
use crate::dhcp::{self, Leases};
use crate::metadata;
use crate::netns;
use crate::nl::{Link, Netlink, NlError};

/// The bridge's end of the local port.
pub fn host_end(network_id: &str) -> String {
    format!("dhp{}", network_id.get(..11).unwrap_or(network_id))
}

/// The namespace's end.
fn inner_end(network_id: &str) -> String {
    format!("dhn{}", network_id.get(..11).unwrap_or(network_id))
}

/// Whether `net` gets a local port here.
pub fn wanted(net: &HostNetwork) -> bool {
    !net.ports.is_empty() && net.subnets.iter().any(|s| s.dhcp)
}

#[derive(Debug, thiserror::Error)]
pub enum LocalPortError {
    #[error("the DHCP namespace: {0}")]
    Namespace(std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("{0} did not appear")]
    Missing(String),
}

struct Server {
    leases: Arc<RwLock<Leases>>,
    task: tokio::task::JoinHandle<()>,
    metadata: Arc<metadata::Service>,
    metadata_task: tokio::task::JoinHandle<()>,
    /// Holds the namespace: dropped, it goes with its links.
    _ns: std::fs::File,
}

pub struct LocalPorts {
    config: Config,
    servers: HashMap<String, Server>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        self.metadata_task.abort();
    }
}

/// A network's guests on this host by address: their ports.
fn guests(net: &HostNetwork) -> HashMap<std::net::Ipv4Addr, String> {
    net.ports
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p.id.clone())))
        .collect()
}

impl LocalPorts {
    pub fn new(config: Config) -> LocalPorts {
        LocalPorts {
            config,
            servers: HashMap::new(),
        }
    }

    /// Makes each wanted network's local port and server, removes the
    /// others'. `links` are the host's, after the bridges were made.
    pub async fn converge(
        &mut self,
        nl: &Netlink,
        want: &HostNetworks,
        links: &[Link],
    ) -> Result<(), LocalPortError> {
        let wanted: HashMap<&str, &HostNetwork> = want
            .networks
            .iter()
            .filter(|n| wanted(n))
            .map(|n| (n.id.as_str(), n))
            .collect();
        self.servers
            .retain(|id, _| wanted.contains_key(id.as_str()));
        for (id, net) in wanted {
            let leases = dhcp::leases(net);
            if let Some(server) = self.servers.get(id) {
                if !server.task.is_finished()
                    && !server.metadata_task.is_finished()
                    && links.iter().any(|l| l.name == host_end(id))
                {
                    *server.leases.write().unwrap_or_else(|p| p.into_inner()) = leases;
                    *server
                        .metadata
                        .guests
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = guests(net);
                    continue;
                }
            }
            let server = self.start(nl, net, links, leases).await?;
            self.servers.insert(id.to_owned(), server);
        }
        Ok(())
    }

    /// Makes the namespace and veth afresh and starts the server.
    async fn start(
        &self,
        nl: &Netlink,
        net: &HostNetwork,
        links: &[Link],
        leases: Leases,
    ) -> Result<Server, LocalPortError> {
        let id = net.id.as_str();
        let (outer, inner) = (host_end(id), inner_end(id));
        // A pair of a namespace netd let go of (or of a netd that died) may
        // still be going away.
        for stale in links.iter().filter(|l| l.name == outer || l.name == inner) {
            nl.delete(stale).await?;
        }
        let ns = netns::create().map_err(LocalPortError::Namespace)?;
        nl.add_veth(&outer, &inner).await?;
        let now = nl.links().await?;
        let peer = now
            .iter()
            .find(|l| l.name == inner)
            .ok_or_else(|| LocalPortError::Missing(inner.clone()))?;
        nl.move_to(peer, &ns).await?;
        let runtime = tokio::runtime::Handle::current();
        let inside = netns::within(&ns, &runtime, || {
            Netlink::connect().map_err(std::io::Error::other)
        })
        .map_err(LocalPortError::Namespace)?;
        let links = inside.links().await?;
        for name in ["lo", inner.as_str()] {
            let link = links
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| LocalPortError::Missing(format!("{name} in the namespace")))?;
            inside.set_up(link).await?;
            if name == inner {
                inside.add_address(link, dhcp::SERVER, 16).await?;
                inside.default_route(link).await?;
            }
        }
        let socket = netns::within(&ns, &runtime, || {
            let s = std::net::UdpSocket::bind("0.0.0.0:67")?;
            s.set_broadcast(true)?;
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        })
        .map_err(LocalPortError::Namespace)?;
        let listener = netns::within(&ns, &runtime, || {
            let l = std::net::TcpListener::bind((dhcp::SERVER, 80))?;
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(LocalPortError::Namespace)?;
        let leases = Arc::new(RwLock::new(leases));
        let task = tokio::spawn(dhcp::serve(socket, leases.clone(), id.to_owned()));
        let service = Arc::new(metadata::Service::new(self.config.clone()));
        *service.guests.write().unwrap_or_else(|p| p.into_inner()) = guests(net);
        let metadata_task = tokio::spawn(metadata::serve(listener, service.clone()));
        tracing::info!(network = id, "serving DHCP and metadata");
        Ok(Server {
            leases,
            task,
            metadata: service,
            metadata_task,
            _ns: ns,
        })
    }
}
