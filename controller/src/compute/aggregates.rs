//! Host aggregates (Nova's `os-aggregates`): named sets of compute hosts
//! with metadata, kept by admins. The `availability_zone` key puts the
//! aggregate's hosts in that zone: [`crate::compute::hosts::Hosts::list`]
//! reads each host's zone through it, so the scheduler and
//! `os-availability-zone` follow. A host is in one zone at most: adding it
//! to (or zoning) an aggregate that would put it in a second is refused.

use std::collections::BTreeMap;

use crate::store::{int, opt_int, text, Step, Store, StoreError, Value};

/// The metadata key that names the aggregate's availability zone.
pub const AZ_KEY: &str = "availability_zone";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub hosts: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

impl Aggregate {
    pub fn availability_zone(&self) -> Option<&str> {
        self.metadata.get(AZ_KEY).map(String::as_str)
    }
}

/// What refuses a change, in Nova's words.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("Aggregate {0} could not be found.")]
    NotFound(i64),
    #[error("Aggregate {0} already exists.")]
    NameExists(String),
    #[error("Compute host {0} could not be found.")]
    NoSuchHost(String),
    #[error("Aggregate {aggregate} already has host {host}.")]
    HostExists { aggregate: i64, host: String },
    #[error("Aggregate {aggregate} has no host {host}.")]
    HostNotFound { aggregate: i64, host: String },
    #[error(
        "Cannot add host to aggregate {aggregate}. Reason: One or more hosts already in availability zone(s) [{zones}]."
    )]
    HostInOtherZone { aggregate: i64, zones: String },
    #[error(
        "Cannot update aggregate {aggregate}. Reason: One or more hosts already in availability zone(s) [{zones}]."
    )]
    ZoneConflict { aggregate: i64, zones: String },
    #[error("Cannot remove aggregate {0}. Reason: Host aggregate is not empty.")]
    NotEmpty(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Aggregates {
    store: Store,
}

const COLUMNS: &str = "id, uuid, name, created_at, updated_at";

impl Aggregates {
    pub fn new(store: Store) -> Self {
        Aggregates { store }
    }

    pub async fn list(&self) -> Result<Vec<Aggregate>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!("SELECT {COLUMNS} FROM aggregates ORDER BY id"),
                &[],
            )
            .await?;
        let mut all = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        for r in self
            .store
            .fetch_all(
                "SELECT aggregate_id, host FROM aggregate_hosts ORDER BY host",
                &[],
            )
            .await?
        {
            let id = int(&r, "aggregate_id")?;
            if let Some(a) = all.iter_mut().find(|a| a.id == id) {
                a.hosts.push(text(&r, "host")?);
            }
        }
        for r in self
            .store
            .fetch_all(
                "SELECT aggregate_id, meta_key, meta_value FROM aggregate_metadata",
                &[],
            )
            .await?
        {
            let id = int(&r, "aggregate_id")?;
            if let Some(a) = all.iter_mut().find(|a| a.id == id) {
                a.metadata
                    .insert(text(&r, "meta_key")?, text(&r, "meta_value")?);
            }
        }
        Ok(all)
    }

    pub async fn get(&self, id: i64) -> Result<Aggregate, AggregateError> {
        self.list()
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or(AggregateError::NotFound(id))
    }

    /// Makes an aggregate named `name` (unique), in zone `zone` if given.
    /// Its id is the next integer: a concurrent create that took it first
    /// makes this one try the next.
    pub async fn create(
        &self,
        name: &str,
        zone: Option<&str>,
        now: i64,
    ) -> Result<Aggregate, AggregateError> {
        let uuid = uuid::Uuid::new_v4().to_string();
        for _ in 0..5 {
            let insert = Step {
                sql: "INSERT INTO aggregates (id, uuid, name, created_at, updated_at) \
                      SELECT COALESCE((SELECT MAX(id) FROM aggregates), 0) + 1, $1, $2, $3, NULL \
                      WHERE NOT EXISTS (SELECT 1 FROM aggregates WHERE name = $2)",
                args: &[Value::Text(&uuid), Value::Text(name), Value::Int(now)],
                rows: Some(1),
            };
            let zone_args = [Value::Text(&uuid), Value::Text(zone.unwrap_or_default())];
            let zoned = Step {
                sql: "INSERT INTO aggregate_metadata (aggregate_id, meta_key, meta_value) \
                      SELECT id, 'availability_zone', $2 FROM aggregates WHERE uuid = $1",
                args: &zone_args,
                rows: Some(1),
            };
            let steps: &[Step] = if zone.is_some() {
                &[insert, zoned]
            } else {
                &[insert]
            };
            match self.store.atomically(steps).await {
                Ok(true) => {}
                Ok(false) => return Err(AggregateError::NameExists(name.to_owned())),
                // The id (or the name) taken meanwhile: look again.
                Err(StoreError::Sql(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
            let made = self
                .list()
                .await?
                .into_iter()
                .find(|a| a.uuid == uuid)
                .ok_or_else(|| StoreError::Corrupt(format!("aggregate {uuid} vanished")))?;
            return Ok(made);
        }
        Err(StoreError::Conflict(format!(
            "aggregate {name}: concurrent creates kept taking its id; try again"
        ))
        .into())
    }

    /// Renames the aggregate and/or sets (Some(Some)) or removes
    /// (Some(None)) its zone.
    pub async fn update(
        &self,
        id: i64,
        name: Option<&str>,
        zone: Option<Option<&str>>,
        now: i64,
    ) -> Result<Aggregate, AggregateError> {
        let a = self.get(id).await?;
        if let Some(name) = name.filter(|n| *n != a.name) {
            let renamed = self
                .store
                .execute(
                    "UPDATE aggregates SET name = $1, updated_at = $2 WHERE id = $3 \
                     AND NOT EXISTS (SELECT 1 FROM aggregates WHERE name = $1)",
                    &[Value::Text(name), Value::Int(now), Value::Int(id)],
                )
                .await;
            match renamed {
                Ok(1) => {}
                Ok(_) => return Err(AggregateError::NameExists(name.to_owned())),
                Err(StoreError::Sql(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                    return Err(AggregateError::NameExists(name.to_owned()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(zone) = zone {
            let mut changes = BTreeMap::new();
            changes.insert(AZ_KEY.to_owned(), zone.map(str::to_owned));
            return self.set_metadata(id, &changes, now).await;
        }
        self.touch(id, now).await?;
        self.get(id).await
    }

    /// Sets each key to its value, or removes it (None).
    pub async fn set_metadata(
        &self,
        id: i64,
        changes: &BTreeMap<String, Option<String>>,
        now: i64,
    ) -> Result<Aggregate, AggregateError> {
        let a = self.get(id).await?;
        if let Some(Some(zone)) = changes.get(AZ_KEY) {
            let others = self.zones_elsewhere(&a.hosts, id).await?;
            let clash: Vec<&String> = others.iter().filter(|z| *z != zone).collect();
            if !clash.is_empty() {
                return Err(AggregateError::ZoneConflict {
                    aggregate: id,
                    zones: join(&clash),
                });
            }
        }
        // All keys or none.
        let removals: Vec<[Value; 2]> = changes
            .keys()
            .map(|k| [Value::Int(id), Value::Text(k)])
            .collect();
        let additions: Vec<[Value; 3]> = changes
            .iter()
            .filter_map(|(k, v)| {
                v.as_deref()
                    .map(|v| [Value::Int(id), Value::Text(k), Value::Text(v)])
            })
            .collect();
        let touched = [Value::Int(now), Value::Int(id)];
        let mut steps: Vec<Step> = removals
            .iter()
            .map(|args| Step {
                sql: "DELETE FROM aggregate_metadata WHERE aggregate_id = $1 AND meta_key = $2",
                args,
                rows: None,
            })
            .collect();
        steps.extend(additions.iter().map(|args| Step {
            sql: "INSERT INTO aggregate_metadata (aggregate_id, meta_key, meta_value) \
                  VALUES ($1, $2, $3)",
            args,
            rows: Some(1),
        }));
        steps.push(Step {
            sql: "UPDATE aggregates SET updated_at = $1 WHERE id = $2",
            args: &touched,
            rows: Some(1),
        });
        if !self.store.atomically(&steps).await? {
            return Err(AggregateError::NotFound(id));
        }
        self.get(id).await
    }

    /// Removes an aggregate without hosts.
    pub async fn delete(&self, id: i64) -> Result<(), AggregateError> {
        let a = self.get(id).await?;
        if !a.hosts.is_empty() {
            return Err(AggregateError::NotEmpty(id));
        }
        let removed = self
            .store
            .atomically(&[
                Step {
                    sql: "DELETE FROM aggregates WHERE id = $1 \
                          AND NOT EXISTS (SELECT 1 FROM aggregate_hosts WHERE aggregate_id = $1)",
                    args: &[Value::Int(id)],
                    rows: Some(1),
                },
                Step {
                    sql: "DELETE FROM aggregate_metadata WHERE aggregate_id = $1",
                    args: &[Value::Int(id)],
                    rows: None,
                },
            ])
            .await?;
        if removed {
            Ok(())
        } else {
            Err(AggregateError::NotEmpty(id))
        }
    }

    /// Adds compute host `host` (registered) to the aggregate.
    pub async fn add_host(
        &self,
        id: i64,
        host: &str,
        now: i64,
    ) -> Result<Aggregate, AggregateError> {
        let a = self.get(id).await?;
        let known = self
            .store
            .fetch_optional("SELECT id FROM hosts WHERE id = $1", &[Value::Text(host)])
            .await?
            .is_some();
        if !known {
            return Err(AggregateError::NoSuchHost(host.to_owned()));
        }
        if a.hosts.iter().any(|h| h == host) {
            return Err(AggregateError::HostExists {
                aggregate: id,
                host: host.to_owned(),
            });
        }
        if let Some(zone) = a.availability_zone() {
            let others = self.zones_elsewhere(&[host.to_owned()], id).await?;
            let clash: Vec<&String> = others.iter().filter(|z| *z != zone).collect();
            if !clash.is_empty() {
                return Err(AggregateError::HostInOtherZone {
                    aggregate: id,
                    zones: join(&clash),
                });
            }
        }
        let added = self
            .store
            .execute(
                "INSERT INTO aggregate_hosts (aggregate_id, host) SELECT $1, $2 \
                 WHERE NOT EXISTS (SELECT 1 FROM aggregate_hosts WHERE aggregate_id = $1 AND host = $2)",
                &[Value::Int(id), Value::Text(host)],
            )
            .await;
        match added {
            Ok(1) => {}
            Ok(_) => {
                return Err(AggregateError::HostExists {
                    aggregate: id,
                    host: host.to_owned(),
                })
            }
            Err(StoreError::Sql(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                return Err(AggregateError::HostExists {
                    aggregate: id,
                    host: host.to_owned(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.touch(id, now).await?;
        self.get(id).await
    }

    pub async fn remove_host(
        &self,
        id: i64,
        host: &str,
        now: i64,
    ) -> Result<Aggregate, AggregateError> {
        self.get(id).await?;
        let removed = self
            .store
            .execute(
                "DELETE FROM aggregate_hosts WHERE aggregate_id = $1 AND host = $2",
                &[Value::Int(id), Value::Text(host)],
            )
            .await?;
        if removed == 0 {
            return Err(AggregateError::HostNotFound {
                aggregate: id,
                host: host.to_owned(),
            });
        }
        self.touch(id, now).await?;
        self.get(id).await
    }

    /// The zones other aggregates than `id` give `hosts`.
    async fn zones_elsewhere(&self, hosts: &[String], id: i64) -> Result<Vec<String>, StoreError> {
        let mut zones: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|a| a.id != id && a.hosts.iter().any(|h| hosts.contains(h)))
            .filter_map(|a| a.availability_zone().map(str::to_owned))
            .collect();
        zones.sort();
        zones.dedup();
        Ok(zones)
    }

    async fn touch(&self, id: i64, now: i64) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE aggregates SET updated_at = $1 WHERE id = $2",
                &[Value::Int(now), Value::Int(id)],
            )
            .await?;
        Ok(())
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Aggregate, StoreError> {
    Ok(Aggregate {
        id: int(r, "id")?,
        uuid: text(r, "uuid")?,
        name: text(r, "name")?,
        created_at: int(r, "created_at")?,
        updated_at: opt_int(r, "updated_at")?,
        hosts: Vec::new(),
        metadata: BTreeMap::new(),
    })
}

fn join(zones: &[&String]) -> String {
    zones
        .iter()
        .map(|z| format!("'{z}'"))
        .collect::<Vec<_>>()
        .join(", ")
}
