//! Compute: flavors and the hosts hostd registers; servers, keypairs, quotas
//! and scheduling next.

pub mod flavors;
pub mod hosts;
