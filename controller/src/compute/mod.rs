//! Compute: flavors today; servers, keypairs, quotas and scheduling next.

pub mod flavors;
