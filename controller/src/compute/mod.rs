//! Compute: flavors, keypairs, quotas, servers, the hosts hostd registers and
//! the scheduler that places servers on them.

pub mod flavors;
pub mod hosts;
pub mod keypairs;
pub mod quotas;
pub mod scheduler;
pub mod servers;
