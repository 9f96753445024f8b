//! Compute: flavors, keypairs, quotas, servers and their actions, the hosts hostd registers and
//! the scheduler that places servers on them.

pub mod actions;
pub mod aggregates;
pub mod console_tokens;
pub mod flavors;
pub mod hosts;
pub mod keypairs;
pub mod migrations;
pub mod nics;
pub mod quotas;
pub mod scheduler;
pub mod server_groups;
pub mod servers;
pub mod service;
pub mod usage;
