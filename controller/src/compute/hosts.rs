//! Compute hosts, as hostd registers them with its heartbeats.

use hostd_proto::Heartbeat;

use crate::store::{boolean, int, text, Store, StoreError, Value};

#[derive(Clone, Debug)]
pub struct Host {
    pub report: Heartbeat,
    pub enabled: bool,
    /// Unix seconds of the last heartbeat.
    pub last_seen: i64,
    pub availability_zone: String,
    /// What the scheduler has promised here.
    pub claimed_vcpus: i64,
    pub claimed_ram_mib: i64,
    /// A small number, in registration order (Nova's integer ids at 2.1).
    pub num: i64,
    pub disabled_reason: Option<String>,
}

pub struct Hosts {
    store: Store,
}

impl Hosts {
    pub fn new(store: Store) -> Self {
        Hosts { store }
    }

    /// Records a heartbeat (registering the host on its first).
    pub async fn heartbeat(&self, h: &Heartbeat) -> Result<(), StoreError> {
        let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
        let [one, five, fifteen] = h.load_average;
        let load = format!("{one:.2} {five:.2} {fifteen:.2}");
        self.store
            .execute(
                "INSERT INTO hosts (id, url, cpus, memory_mib, memory_usable_mib, disk_free_mib, \
                 vcpus_used, memory_used_mib, instances, kvm_mode, version, enabled, last_seen, \
                 disk_total_mib, booted_at, load_average, num) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 (SELECT COALESCE(MAX(num), 0) + 1 FROM hosts)) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, cpus = excluded.cpus, \
                 memory_mib = excluded.memory_mib, memory_usable_mib = excluded.memory_usable_mib, \
                 disk_free_mib = excluded.disk_free_mib, vcpus_used = excluded.vcpus_used, \
                 memory_used_mib = excluded.memory_used_mib, instances = excluded.instances, \
                 kvm_mode = excluded.kvm_mode, version = excluded.version, last_seen = excluded.last_seen, \
                 disk_total_mib = excluded.disk_total_mib, booted_at = excluded.booted_at, \
                 load_average = excluded.load_average, \
                 num = CASE WHEN hosts.num = 0 THEN excluded.num ELSE hosts.num END",
                &[
                    Value::Text(&h.host_id),
                    Value::Text(&h.url),
                    int(h.cpus),
                    int(h.memory_mib),
                    int(h.memory_usable_mib),
                    int(h.disk_free_mib),
                    int(h.vcpus_used),
                    int(h.memory_used_mib),
                    int(h.instances as u64),
                    Value::Text(&h.kvm_mode),
                    Value::Text(&h.version),
                    Value::Bool(true),
                    Value::Int(crate::identity::now()),
                    int(h.disk_total_mib),
                    Value::Int(h.booted_at),
                    Value::Text(&load),
                ],
            )
            .await?;
        Ok(())
    }

    /// Enables or disables a host for new servers (servers on it keep
    /// running); false when no such host is registered.
    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE hosts SET enabled = $1, disabled_reason = $2 WHERE id = $3",
                &[
                    Value::Bool(enabled),
                    Value::OptText(if enabled { None } else { reason }),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// Every registered host; its zone is its aggregate's, if one gives it
    /// a zone, else the one it reports.
    pub async fn list(&self) -> Result<Vec<Host>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                "SELECT id, url, cpus, memory_mib, memory_usable_mib, disk_free_mib, vcpus_used, \
                 memory_used_mib, instances, kvm_mode, version, enabled, last_seen, \
                 COALESCE((SELECT m.meta_value FROM aggregate_hosts ah JOIN aggregate_metadata m \
                   ON m.aggregate_id = ah.aggregate_id AND m.meta_key = 'availability_zone' \
                   WHERE ah.host = hosts.id ORDER BY ah.aggregate_id LIMIT 1), availability_zone) \
                   AS availability_zone, \
                 claimed_vcpus, claimed_ram_mib, num, disabled_reason, disk_total_mib, booted_at, \
                 load_average FROM hosts ORDER BY num, id",
                &[],
            )
            .await?;
        let u = |r: &sqlx::any::AnyRow, c: &str| int(r, c).map(|v| u64::try_from(v).unwrap_or(0));
        rows.iter()
            .map(|r| {
                Ok(Host {
                    report: Heartbeat {
                        host_id: text(r, "id")?,
                        url: text(r, "url")?,
                        cpus: u(r, "cpus")?,
                        memory_mib: u(r, "memory_mib")?,
                        memory_usable_mib: u(r, "memory_usable_mib")?,
                        disk_free_mib: u(r, "disk_free_mib")?,
                        disk_total_mib: u(r, "disk_total_mib")?,
                        vcpus_used: u(r, "vcpus_used")?,
                        memory_used_mib: u(r, "memory_used_mib")?,
                        instances: u(r, "instances")? as usize,
                        kvm_mode: text(r, "kvm_mode")?,
                        version: text(r, "version")?,
                        booted_at: int(r, "booted_at")?,
                        load_average: load_average(&text(r, "load_average")?),
                    },
                    enabled: boolean(r, "enabled")?,
                    last_seen: int(r, "last_seen")?,
                    availability_zone: text(r, "availability_zone")?,
                    claimed_vcpus: int(r, "claimed_vcpus")?,
                    claimed_ram_mib: int(r, "claimed_ram_mib")?,
                    num: int(r, "num")?,
                    disabled_reason: crate::store::opt_text(r, "disabled_reason")?,
                })
            })
            .collect()
    }

    /// Sets each host's claims to the sum of the flavors of the servers
    /// placed on it where they differ (claims are bound to servers in one
    /// transaction, so a difference is a bug to report). Each correction is
    /// a compare-and-set of the values read, so a claim made meanwhile is
    /// never overwritten. Returns the hosts corrected.
    pub async fn recount_claims(&self) -> Result<Vec<String>, StoreError> {
        // PostgreSQL's SUM of BIGINT is NUMERIC: cast back for the Any driver.
        let sums = "CAST(COALESCE((SELECT SUM(vcpus) FROM servers WHERE host_id = hosts.id), 0) AS BIGINT)";
        let rams = "CAST(COALESCE((SELECT SUM(ram_mib) FROM servers WHERE host_id = hosts.id), 0) AS BIGINT)";
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT id, claimed_vcpus, claimed_ram_mib, {sums} AS vcpus, {rams} AS ram FROM hosts"
                ),
                &[],
            )
            .await?;
        let mut fixed = Vec::new();
        for r in &rows {
            let (id, cv, cr, v, m) = (
                text(r, "id")?,
                int(r, "claimed_vcpus")?,
                int(r, "claimed_ram_mib")?,
                int(r, "vcpus")?,
                int(r, "ram")?,
            );
            if (cv, cr) == (v, m) {
                continue;
            }
            let n = self
                .store
                .execute(
                    &format!(
                        "UPDATE hosts SET claimed_vcpus = $1, claimed_ram_mib = $2 WHERE id = $3 \
                         AND claimed_vcpus = $4 AND claimed_ram_mib = $5 AND {sums} = $1 AND {rams} = $2"
                    ),
                    &[
                        Value::Int(v),
                        Value::Int(m),
                        Value::Text(&id),
                        Value::Int(cv),
                        Value::Int(cr),
                    ],
                )
                .await?;
            if n == 1 {
                fixed.push(id);
            }
        }
        Ok(fixed)
    }
}

/// The load averages as stored ("0.20 0.12 0.14"); zeros when unknown.
fn load_average(stored: &str) -> [f64; 3] {
    let mut load = [0.0; 3];
    for (slot, field) in load.iter_mut().zip(stored.split_whitespace()) {
        *slot = field.parse().unwrap_or(0.0);
    }
    load
}
