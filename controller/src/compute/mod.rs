//! Compute: flavors, keypairs, quotas, the hosts hostd registers and the
//! scheduler that places on them; servers next.

pub mod flavors;
pub mod hosts;
pub mod keypairs;
pub mod quotas;
pub mod scheduler;
