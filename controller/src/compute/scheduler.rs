//! Placement: filter the registered hosts (enabled, heartbeat, zone, free
//! vCPUs/RAM under the overcommit ratios, free disk), weigh them, and claim resources on
//! the first that takes the claim.
//!
//! A claim is one conditional `UPDATE` of the host's row ("add these vCPUs and
//! MiB if the totals stay within capacity"), which both engines apply
//! atomically (PostgreSQL re-checks the condition under the row lock), so
//! concurrent placements, from one controller or several, never oversubscribe a
//! host. A claim is released when its server goes away or fails to start.

use crate::compute::hosts::{Host, Hosts};
use crate::store::{Step, Store, StoreError, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weigher {
    /// Most free RAM first: spreads load (the default).
    Spread,
    /// Least free RAM first: fills hosts up.
    Pack,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    /// A host silent for longer than this is not placed on.
    pub heartbeat_timeout_secs: i64,
    pub weigher: Weigher,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            heartbeat_timeout_secs: 60,
            weigher: Weigher::Spread,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    pub vcpus: i64,
    pub ram_mib: i64,
    /// The flavor's local disks (root, ephemeral and swap). Checked
    /// against the host's free disk, not claimed: they are sparse files,
    /// which take space only as guests write.
    pub disk_gib: i64,
    pub availability_zone: Option<String>,
    /// The host it goes to when it can (where the volume it boots from
    /// is: its disk then needs no network); another reaches it over NBD.
    pub preferred_host: Option<String>,
    /// Its server group's policy and the hosts its other members are on.
    pub group: Option<GroupRule>,
}

/// A server group's policy as the scheduler follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRule {
    /// `affinity`, `anti-affinity`, `soft-affinity` or `soft-anti-affinity`.
    pub policy: String,
    /// Where the group's other servers are.
    pub hosts: Vec<String>,
}

impl GroupRule {
    /// Whether a host is among the members' hosts.
    fn has(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    /// Why the hard policies refuse a host, if they do.
    fn refuses(&self, host: &str) -> Option<&'static str> {
        match self.policy.as_str() {
            "affinity" if !self.hosts.is_empty() && !self.has(host) => {
                Some("not the host of its affinity group")
            }
            "anti-affinity" if self.has(host) => Some("its anti-affinity group is on it"),
            _ => None,
        }
    }

    /// The soft policies' preference: false sorts first.
    fn dislikes(&self, host: &str) -> bool {
        match self.policy.as_str() {
            "soft-affinity" => !self.hosts.is_empty() && !self.has(host),
            "soft-anti-affinity" => self.has(host),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("No valid host was found. {0}")]
    NoValidHost(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Capacity of a host under the policy: (vCPUs, MiB).
fn capacity(h: &Host, p: &Policy) -> (i64, i64) {
    (
        (h.report.cpus as f64 * p.cpu_allocation_ratio).floor() as i64,
        (h.report.memory_usable_mib as f64 * p.ram_allocation_ratio).floor() as i64,
    )
}

pub struct Scheduler {
    store: Store,
    hosts: Hosts,
    policy: Policy,
}

impl Scheduler {
    pub fn new(store: Store, policy: Policy) -> Self {
        Scheduler {
            hosts: Hosts::new(store.clone()),
            store,
            policy,
        }
    }

    /// Claims `demand` on a host (none of `exclude`); returns the host.
    pub async fn place(
        &self,
        server: &str,
        demand: &Demand,
        exclude: &[String],
    ) -> Result<Host, PlaceError> {
        let now = crate::identity::now();
        let mut candidates: Vec<(Host, i64)> = Vec::new();
        let mut reasons = Vec::new();
        for h in self.hosts.list().await? {
            let (cap_cpu, cap_ram) = capacity(&h, &self.policy);
            let why = if !h.enabled {
                Some("disabled")
            } else if now - h.last_seen > self.policy.heartbeat_timeout_secs {
                Some("no recent heartbeat")
            } else if exclude.contains(&h.report.host_id) {
                Some("already tried")
            } else if demand
                .availability_zone
                .as_ref()
                .is_some_and(|z| *z != h.availability_zone)
            {
                Some("other availability zone")
            } else if let Some(why) = demand
                .group
                .as_ref()
                .and_then(|g| g.refuses(&h.report.host_id))
            {
                Some(why)
            } else if h.claimed_vcpus + demand.vcpus > cap_cpu
                || h.claimed_ram_mib + demand.ram_mib > cap_ram
            {
                Some("not enough free vCPUs or RAM")
            } else if (h.report.disk_free_mib as i64) < demand.disk_gib.saturating_mul(1024) {
                Some("not enough free disk")
            } else {
                None
            };
            match why {
                Some(w) => reasons.push(format!("{}: {w}", h.report.host_id)),
                None => {
                    let free_ram = cap_ram - h.claimed_ram_mib;
                    candidates.push((h, free_ram));
                }
            }
        }
        match self.policy.weigher {
            Weigher::Spread => candidates.sort_by_key(|(_, free)| std::cmp::Reverse(*free)),
            Weigher::Pack => candidates.sort_by_key(|(_, free)| *free),
        }
        // The volume's host, then a soft group policy weigh first (the
        // sorts are stable).
        if let Some(p) = &demand.preferred_host {
            candidates.sort_by_key(|(h, _)| h.report.host_id != *p);
        }
        if let Some(g) = &demand.group {
            candidates.sort_by_key(|(h, _)| g.dislikes(&h.report.host_id));
        }
        for (h, _) in candidates {
            let (cap_cpu, cap_ram) = capacity(&h, &self.policy);
            if self
                .claim(server, &h.report.host_id, demand, cap_cpu, cap_ram)
                .await?
            {
                return Ok(h);
            }
            reasons.push(format!(
                "{}: lost the claim to a concurrent placement",
                h.report.host_id
            ));
        }
        if reasons.is_empty() {
            reasons.push("no hosts are registered".into());
        }
        Err(PlaceError::NoValidHost(reasons.join("; ")))
    }

    /// Adds the demand to the host's claims if it still fits, and records the
    /// host on the server, in one transaction: a claim exists exactly while a
    /// server names its host, whatever stops the controller in between.
    async fn claim(
        &self,
        server: &str,
        host: &str,
        d: &Demand,
        cap_cpu: i64,
        cap_ram: i64,
    ) -> Result<bool, StoreError> {
        let now = crate::identity::now();
        self.store
            .atomically(&[
                Step {
                    sql: "UPDATE servers SET generation = generation + 1, host_id = $1, updated_at = $2 \
                          WHERE id = $3 AND host_id IS NULL",
                    args: &[Value::Text(host), Value::Int(now), Value::Text(server)],
                    rows: Some(1),
                },
                Step {
                    sql: "UPDATE hosts SET claimed_vcpus = claimed_vcpus + $1, claimed_ram_mib = claimed_ram_mib + $2 \
                          WHERE id = $3 AND claimed_vcpus + $1 <= $4 AND claimed_ram_mib + $2 <= $5",
                    args: &[
                        Value::Int(d.vcpus),
                        Value::Int(d.ram_mib),
                        Value::Text(host),
                        Value::Int(cap_cpu),
                        Value::Int(cap_ram),
                    ],
                    rows: Some(1),
                },
            ])
            .await
    }

    /// Gives a server's claim back and forgets its host, in one transaction;
    /// a second call (or one for a server placed elsewhere by then) changes
    /// nothing.
    pub async fn release(&self, server: &str, host: &str) -> Result<bool, StoreError> {
        self.store
            .atomically(&[
                Step {
                    sql: RELEASE_CLAIM,
                    args: &[Value::Text(server), Value::Text(host)],
                    rows: None,
                },
                Step {
                    sql: "UPDATE servers SET generation = generation + 1, host_id = NULL, updated_at = $1 WHERE id = $2 AND host_id = $3",
                    args: &[
                        Value::Int(crate::identity::now()),
                        Value::Text(server),
                        Value::Text(host),
                    ],
                    rows: Some(1),
                },
            ])
            .await
    }
}

/// A server's resources: what a resize moves its claim from or to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub flavor_id: String,
    pub vcpus: i64,
    pub ram_mib: i64,
    pub disk_gib: i64,
}

impl Scheduler {
    /// Moves a server's claim on its host from `from` to `to` (a resize on
    /// the same host) if the host has room for the difference, and records
    /// `from` on the server for a revert: one transaction.
    pub async fn resize(
        &self,
        server: &str,
        host: &str,
        from: &Resources,
        to: &Resources,
    ) -> Result<bool, StoreError> {
        let Some(h) = self
            .hosts
            .list()
            .await?
            .into_iter()
            .find(|h| h.report.host_id == host)
        else {
            return Ok(false);
        };
        let (cap_cpu, cap_ram) = capacity(&h, &self.policy);
        let recorded = serde_json::to_string(from).unwrap_or_default();
        self.move_claim(
            server,
            host,
            from,
            to,
            Some((cap_cpu, cap_ram)),
            Some(&recorded),
        )
        .await
    }

    /// Moves the claim back from `now` to what the server recorded before
    /// its resize (a revert, which always fits), or only forgets the record
    /// (a confirm, `revert` false).
    pub async fn end_resize(
        &self,
        server: &str,
        host: &str,
        now: &Resources,
        revert: bool,
    ) -> Result<bool, StoreError> {
        let Some(row) = self
            .store
            .fetch_optional(
                "SELECT resized_from FROM servers WHERE id = $1",
                &[Value::Text(server)],
            )
            .await?
        else {
            return Ok(false);
        };
        let Some(from) = crate::store::opt_text(&row, "resized_from")?
            .and_then(|j| serde_json::from_str::<Resources>(&j).ok())
        else {
            return Ok(false);
        };
        let to = if revert { from } else { now.clone() };
        self.move_claim(server, host, now, &to, None, None).await
    }

    async fn move_claim(
        &self,
        server: &str,
        host: &str,
        from: &Resources,
        to: &Resources,
        cap: Option<(i64, i64)>,
        record: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (dv, dr) = (to.vcpus - from.vcpus, to.ram_mib - from.ram_mib);
        let (cap_cpu, cap_ram) = cap.unwrap_or((i64::MAX, i64::MAX));
        self.store
            .atomically(&[
                Step {
                    sql: "UPDATE hosts SET claimed_vcpus = claimed_vcpus + $1, claimed_ram_mib = claimed_ram_mib + $2 \
                          WHERE id = $3 AND claimed_vcpus + $1 <= $4 AND claimed_ram_mib + $2 <= $5",
                    args: &[
                        Value::Int(dv),
                        Value::Int(dr),
                        Value::Text(host),
                        Value::Int(cap_cpu),
                        Value::Int(cap_ram),
                    ],
                    rows: Some(1),
                },
                Step {
                    sql: "UPDATE servers SET generation = generation + 1, flavor_id = $1, vcpus = $2, ram_mib = $3, \
                          disk_gib = $4, resized_from = $5, updated_at = $6 \
                          WHERE id = $7 AND host_id = $8 AND vcpus = $9 AND ram_mib = $10",
                    args: &[
                        Value::Text(&to.flavor_id),
                        Value::Int(to.vcpus),
                        Value::Int(to.ram_mib),
                        Value::Int(to.disk_gib),
                        Value::OptText(record),
                        Value::Int(crate::identity::now()),
                        Value::Text(server),
                        Value::Text(host),
                        Value::Int(from.vcpus),
                        Value::Int(from.ram_mib),
                    ],
                    rows: Some(1),
                },
            ])
            .await
    }
}

/// Takes a server's flavor off the claims of the host it names ($1: server,
/// $2: host; no row when the server names another host or none).
pub const RELEASE_CLAIM: &str = "UPDATE hosts SET \
     claimed_vcpus = claimed_vcpus - (SELECT vcpus FROM servers WHERE id = $1), \
     claimed_ram_mib = claimed_ram_mib - (SELECT ram_mib FROM servers WHERE id = $1) \
     WHERE id = $2 AND id = (SELECT host_id FROM servers WHERE id = $1)";
