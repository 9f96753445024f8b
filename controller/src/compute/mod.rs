//! Compute: flavors, keypairs, quotas and the hosts hostd registers; servers
//! and scheduling next.

pub mod flavors;
pub mod hosts;
pub mod keypairs;
pub mod quotas;
