//! The controller's services wired together: configuration, each service's
//! store, the scheduler. HTTP handlers, the services' logic and the
//! background reconcilers all work on one shared `App`.

use crate::compute::actions::Actions;
use crate::compute::console_tokens::ConsoleTokens;
use crate::compute::flavors::Flavors;
use crate::compute::hosts::Hosts;
use crate::compute::keypairs::Keypairs;
use crate::compute::nics::NicRequests;
use crate::compute::quotas::Quotas;
use crate::compute::scheduler::Scheduler;
use crate::compute::server_groups::ServerGroups;
use crate::compute::servers::Servers;
use crate::config::Config;
use crate::identity::Identity;
use crate::image::Images;
use crate::network::service::NetworkService;
use crate::volume::service::VolumeService;

pub struct App {
    pub config: Config,
    pub identity: Identity,
    pub flavors: Flavors,
    pub hosts: Hosts,
    pub images: Images,
    pub network: NetworkService,
    pub volumes: VolumeService,
    pub keypairs: Keypairs,
    pub server_groups: ServerGroups,
    pub aggregates: crate::compute::aggregates::Aggregates,
    pub migrations: crate::compute::migrations::Migrations,
    pub nic_requests: NicRequests,
    pub console_tokens: ConsoleTokens,
    pub quotas: Quotas,
    pub servers: Servers,
    pub actions: Actions,
    pub scheduler: Scheduler,
    pub store_engine: crate::store::Engine,
    /// The reconcilers, their status and triggers.
    pub background: crate::background::Background,
    /// This app, for background work it starts (server builds).
    pub me: std::sync::Weak<App>,
}

impl App {
    /// Whether this controller is the only one using its database (SQLite).
    pub fn owns_its_database(&self) -> bool {
        self.store_engine == crate::store::Engine::Sqlite
    }

    /// The token this controller calls a host's hostd with (empty when no
    /// hostd secret is configured: no host could have registered).
    pub fn hostd_token(&self, host_id: &str) -> String {
        self.config
            .hostd_secret
            .as_deref()
            .map(|secret| hostd_proto::token::for_host(secret, host_id))
            .unwrap_or_default()
    }
}
