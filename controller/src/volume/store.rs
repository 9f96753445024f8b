//! The volume service's SQL. Every status change is a conditional write
//! (`... WHERE status IN (...)`): two requests racing on one volume, or a
//! request racing the reconciler, cannot both win. A create or an extend
//! checks the project's quota in the same statement that writes.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;

use super::model::{Attachment, StorageHost, Volume};
use crate::store::{int, opt_text, text, Store, StoreError, Value};

/// What a create writes.
const INSERT_COLUMNS: &str = "id, project_id, user_id, name, description, size_gib, \
    target_size_gib, status, volume_type, availability_zone, storage_host, bootable, metadata, \
    fault, created_at, updated_at";
const COLUMNS: &str = "id, project_id, user_id, name, description, size_gib, target_size_gib, \
    status, volume_type, availability_zone, storage_host, bootable, metadata, fault, created_at, \
    updated_at, server_id, attachment_id, attached_host, attached_at";

fn from_row(r: &AnyRow) -> Result<Volume, StoreError> {
    Ok(Volume {
        id: text(r, "id")?,
        project_id: text(r, "project_id")?,
        user_id: text(r, "user_id")?,
        name: opt_text(r, "name")?,
        description: opt_text(r, "description")?,
        size_gib: int(r, "size_gib")?,
        target_size_gib: sqlx::Row::try_get::<Option<i64>, _>(r, "target_size_gib")?,
        status: text(r, "status")?,
        volume_type: text(r, "volume_type")?,
        availability_zone: text(r, "availability_zone")?,
        storage_host: opt_text(r, "storage_host")?,
        bootable: int(r, "bootable")? != 0,
        metadata: serde_json::from_str(&text(r, "metadata")?)
            .map_err(|e| StoreError::Corrupt(format!("a volume's metadata: {e}")))?,
        fault: opt_text(r, "fault")?,
        created_at: int(r, "created_at")?,
        updated_at: int(r, "updated_at")?,
        attachment: match (opt_text(r, "attachment_id")?, opt_text(r, "server_id")?) {
            (Some(id), Some(server_id)) => Some(Attachment {
                id,
                server_id,
                host: opt_text(r, "attached_host")?,
                attached_at: sqlx::Row::try_get::<Option<i64>, _>(r, "attached_at")?,
            }),
            _ => None,
        },
    })
}

/// A project's volume quota: how many, and how many GiB in all (negative:
/// no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub volumes: i64,
    pub gigabytes: i64,
}

/// What a project uses against its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub volumes: i64,
    pub gigabytes: i64,
}

/// Filters of a list.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// None: every project's (an admin's `all_tenants`).
    pub project_id: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
}

/// Statuses (the code's own words, never a client's) as an SQL `IN` list.
fn status_list(statuses: &[&str]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone)]
pub struct Volumes {
    store: Store,
}

impl Volumes {
    pub fn new(store: Store) -> Self {
        Volumes { store }
    }

    /// Records a storage host's heartbeat.
    pub async fn heartbeat(&self, h: &StorageHost) -> Result<(), StoreError> {
        self.store
            .execute(
                "INSERT INTO storage_hosts (host_id, url, availability_zone, total_bytes, free_bytes, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (host_id) DO UPDATE SET url = $2, availability_zone = $3, \
                 total_bytes = $4, free_bytes = $5, last_seen = $6",
                &[
                    Value::Text(&h.host_id),
                    Value::Text(&h.url),
                    Value::Text(&h.availability_zone),
                    Value::Int(h.total_bytes),
                    Value::Int(h.free_bytes),
                    Value::Int(h.last_seen),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn storage_hosts(&self) -> Result<Vec<StorageHost>, StoreError> {
        self.store
            .fetch_all(
                "SELECT host_id, url, availability_zone, total_bytes, free_bytes, last_seen \
                 FROM storage_hosts ORDER BY host_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(StorageHost {
                    host_id: text(r, "host_id")?,
                    url: text(r, "url")?,
                    availability_zone: text(r, "availability_zone")?,
                    total_bytes: int(r, "total_bytes")?,
                    free_bytes: int(r, "free_bytes")?,
                    last_seen: int(r, "last_seen")?,
                })
            })
            .collect()
    }

    pub async fn storage_host(&self, id: &str) -> Result<Option<StorageHost>, StoreError> {
        Ok(self
            .storage_hosts()
            .await?
            .into_iter()
            .find(|h| h.host_id == id))
    }

    /// Inserts `v` if its project stays within `quota` with it; whether it
    /// did.
    pub async fn insert_within(&self, v: &Volume, quota: Quota) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(&v.metadata).unwrap_or_else(|_| "{}".into());
        let sql = format!(
            "INSERT INTO volumes ({INSERT_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16 \
             WHERE ($17 < 0 OR (SELECT COUNT(*) FROM volumes WHERE project_id = $2) + 1 <= $17) \
             AND ($18 < 0 OR (SELECT COALESCE(SUM(size_gib), 0) FROM volumes WHERE project_id = $2) + $6 <= $18)"
        );
        let args = [
            Value::Text(&v.id),
            Value::Text(&v.project_id),
            Value::Text(&v.user_id),
            Value::OptText(v.name.as_deref()),
            Value::OptText(v.description.as_deref()),
            Value::Int(v.size_gib),
            Value::OptInt(v.target_size_gib),
            Value::Text(&v.status),
            Value::Text(&v.volume_type),
            Value::Text(&v.availability_zone),
            Value::OptText(v.storage_host.as_deref()),
            Value::Bool(v.bootable),
            Value::Text(&metadata),
            Value::OptText(v.fault.as_deref()),
            Value::Int(v.created_at),
            Value::Int(v.updated_at),
            Value::Int(quota.volumes),
            Value::Int(quota.gigabytes),
        ];
        Ok(self.store.execute(&sql, &args).await? == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Volume>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM volumes WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// The volumes `filter` selects, oldest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Volume>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM volumes WHERE ($1 = '' OR project_id = $1) \
                     AND ($2 = '' OR name = $2) AND ($3 = '' OR status = $3) \
                     ORDER BY created_at, id"
                ),
                &[
                    Value::Text(filter.project_id.as_deref().unwrap_or("")),
                    Value::Text(filter.name.as_deref().unwrap_or("")),
                    Value::Text(filter.status.as_deref().unwrap_or("")),
                ],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every project's volumes in one of `statuses` (the reconciler's).
    pub async fn in_status(&self, statuses: &[&str]) -> Result<Vec<Volume>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM volumes WHERE status IN ({}) ORDER BY created_at, id",
                    status_list(statuses)
                ),
                &[],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn usage(&self, project_id: &str) -> Result<Usage, StoreError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT COUNT(*) AS n, COALESCE(SUM(size_gib), 0) AS gib FROM volumes WHERE project_id = $1",
                &[Value::Text(project_id)],
            )
            .await?;
        Ok(match row {
            Some(r) => Usage {
                volumes: int(&r, "n")?,
                gigabytes: int(&r, "gib")?,
            },
            None => Usage::default(),
        })
    }

    /// Moves `id` from one of `from` to `to` (with `fault`); whether it did.
    pub async fn transition(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        fault: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let from = status_list(from);
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = $1, fault = $2, updated_at = $3 \
                     WHERE id = $4 AND status IN ({from})"
                ),
                &[
                    Value::Text(to),
                    Value::OptText(fault),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// `available` -> `extending` to `new_size`, if the project's GiB quota
    /// holds the growth; whether it moved.
    pub async fn begin_extend(
        &self,
        id: &str,
        new_size: i64,
        quota: Quota,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = 'extending', target_size_gib = $1, updated_at = $2 \
                 WHERE id = $3 AND status = 'available' AND size_gib < $1 \
                 AND ($4 < 0 OR (SELECT COALESCE(SUM(size_gib), 0) FROM volumes WHERE project_id = \
                 (SELECT project_id FROM volumes WHERE id = $3)) - size_gib + $1 <= $4)",
                &[
                    Value::Int(new_size),
                    Value::Int(now),
                    Value::Text(id),
                    Value::Int(quota.gigabytes),
                ],
            )
            .await?
            == 1)
    }

    /// `extending` -> `available` at its new size.
    pub async fn finish_extend(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = 'available', size_gib = target_size_gib, \
                 target_size_gib = NULL, fault = NULL, updated_at = $1 \
                 WHERE id = $2 AND status = 'extending' AND target_size_gib IS NOT NULL",
                &[Value::Int(now), Value::Text(id)],
            )
            .await?
            == 1)
    }

    pub async fn update(
        &self,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        metadata: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into());
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET name = $1, description = $2, metadata = $3, updated_at = $4 \
                 WHERE id = $5",
                &[
                    Value::OptText(name),
                    Value::OptText(description),
                    Value::Text(&metadata),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// `available` -> `reserved` for `server_id` under a new attachment
    /// `attachment_id`; whether it was available.
    pub async fn reserve(
        &self,
        id: &str,
        server_id: &str,
        attachment_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = 'reserved', server_id = $1, attachment_id = $2, \
                 attached_host = NULL, attached_at = NULL, fault = NULL, updated_at = $3 \
                 WHERE id = $4 AND status = 'available'",
                &[
                    Value::Text(server_id),
                    Value::Text(attachment_id),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// `attaching` -> `in-use`, plugged on `host`.
    pub async fn attached(&self, id: &str, host: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = 'in-use', attached_host = $1, attached_at = $2, \
                 updated_at = $2 WHERE id = $3 AND status = 'attaching'",
                &[Value::Text(host), Value::Int(now), Value::Text(id)],
            )
            .await?
            == 1)
    }

    /// From one of `from` back to `available`, the attachment gone (with
    /// `fault` saying why, when it failed).
    pub async fn release(
        &self,
        id: &str,
        from: &[&str],
        fault: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let from = status_list(from);
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = 'available', server_id = NULL, attachment_id = NULL, \
                     attached_host = NULL, attached_at = NULL, fault = $1, updated_at = $2 \
                     WHERE id = $3 AND status IN ({from})"
                ),
                &[Value::OptText(fault), Value::Int(now), Value::Text(id)],
            )
            .await?
            == 1)
    }

    /// The volumes attached (or being attached or detached) to a server.
    pub async fn of_server(&self, server_id: &str) -> Result<Vec<Volume>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM volumes WHERE server_id = $1 ORDER BY attached_at, id"
                ),
                &[Value::Text(server_id)],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Forgets a volume whose data is gone (it was `deleting`).
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM volumes WHERE id = $1 AND status = 'deleting'",
                &[Value::Text(id)],
            )
            .await?
            == 1)
    }
}
