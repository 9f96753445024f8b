//! The volume service's SQL. Every status change is a conditional write
//! (`... WHERE status IN (...)`): two requests racing on one volume, or a
//! request racing the reconciler, cannot both win. A create or an extend
//! checks the project's quota in the same statement that writes.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;

use super::model::{Attachment, Snapshot, StorageHost, Volume};
use crate::store::{int, opt_text, text, Store, StoreError, Value};

/// What a create writes.
const INSERT_COLUMNS: &str = "id, project_id, user_id, name, description, size_gib, \
    target_size_gib, status, volume_type, availability_zone, storage_host, bootable, metadata, \
    fault, created_at, updated_at, snapshot_id, source_volid, image_metadata, root_of, \
    delete_on_termination";
const COLUMNS: &str = "id, project_id, user_id, name, description, size_gib, target_size_gib, \
    status, volume_type, availability_zone, storage_host, bootable, metadata, fault, created_at, \
    updated_at, server_id, attachment_id, attached_host, attached_at, snapshot_id, source_volid, \
    image_metadata, root_of, delete_on_termination, attach_external, attach_mode, attach_connector";
const SNAPSHOT_COLUMNS: &str = "id, project_id, user_id, volume_id, storage_host, name, \
    description, size_gib, status, metadata, fault, created_at, updated_at";

/// The GiB project `p` (an SQL expression) uses: its volumes' and its
/// snapshots', as Cinder counts them. (PostgreSQL sums BIGINTs as NUMERIC:
/// cast back.)
fn used_gib(p: &str) -> String {
    format!(
        "CAST((SELECT COALESCE(SUM(size_gib), 0) FROM volumes WHERE project_id = {p}) + \
         (SELECT COALESCE(SUM(size_gib), 0) FROM volume_snapshots WHERE project_id = {p}) AS BIGINT)"
    )
}

/// Whether volume `v` (an SQL expression) has nothing being made from its
/// data right now: no snapshot of it and no volume from it `creating`. Its
/// file changes under such work, so nothing may plug, grow or remove it.
fn quiet(v: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM volume_snapshots WHERE volume_id = {v} AND status = 'creating') \
         AND NOT EXISTS (SELECT 1 FROM volumes WHERE source_volid = {v} AND status = 'creating')"
    )
}

fn snapshot_from_row(r: &AnyRow) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        id: text(r, "id")?,
        project_id: text(r, "project_id")?,
        user_id: text(r, "user_id")?,
        volume_id: text(r, "volume_id")?,
        storage_host: text(r, "storage_host")?,
        name: opt_text(r, "name")?,
        description: opt_text(r, "description")?,
        size_gib: int(r, "size_gib")?,
        status: text(r, "status")?,
        metadata: serde_json::from_str(&text(r, "metadata")?)
            .map_err(|e| StoreError::Corrupt(format!("a snapshot's metadata: {e}")))?,
        fault: opt_text(r, "fault")?,
        created_at: int(r, "created_at")?,
        updated_at: int(r, "updated_at")?,
    })
}

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
                external: int(r, "attach_external")? != 0,
                mode: opt_text(r, "attach_mode")?.unwrap_or_else(|| "rw".into()),
                connector: opt_text(r, "attach_connector")?
                    .map(|c| serde_json::from_str(&c))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("an attachment's connector: {e}")))?,
            }),
            _ => None,
        },
        snapshot_id: opt_text(r, "snapshot_id")?,
        source_volid: opt_text(r, "source_volid")?,
        image_metadata: opt_text(r, "image_metadata")?
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("a volume's image metadata: {e}")))?,
        root_of: opt_text(r, "root_of")?,
        delete_on_termination: int(r, "delete_on_termination")? != 0,
    })
}

/// A project's volume quota: how many, and how many GiB in all (negative:
/// no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub volumes: i64,
    pub snapshots: i64,
    pub gigabytes: i64,
}

/// What a project uses against its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub volumes: i64,
    pub snapshots: i64,
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
                "INSERT INTO storage_hosts (host_id, url, availability_zone, total_bytes, free_bytes, last_seen, peer_url) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (host_id) DO UPDATE SET url = $2, availability_zone = $3, \
                 total_bytes = $4, free_bytes = $5, last_seen = $6, peer_url = $7",
                &[
                    Value::Text(&h.host_id),
                    Value::Text(&h.url),
                    Value::Text(&h.availability_zone),
                    Value::Int(h.total_bytes),
                    Value::Int(h.free_bytes),
                    Value::Int(h.last_seen),
                    Value::OptText(h.peer_url.as_deref()),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn storage_hosts(&self) -> Result<Vec<StorageHost>, StoreError> {
        self.store
            .fetch_all(
                "SELECT host_id, url, availability_zone, total_bytes, free_bytes, last_seen, peer_url \
                 FROM storage_hosts ORDER BY host_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(StorageHost {
                    host_id: text(r, "host_id")?,
                    url: text(r, "url")?,
                    peer_url: crate::store::opt_text(r, "peer_url")?,
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

    /// Inserts `v` if its project stays within `quota` with it and what it
    /// is made from (its snapshot, or its source volume) is `available`;
    /// whether it did.
    pub async fn insert_within(&self, v: &Volume, quota: Quota) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(&v.metadata).unwrap_or_else(|_| "{}".into());
        let image_metadata = v
            .image_metadata
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()));
        let sql = format!(
            "INSERT INTO volumes ({INSERT_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16, NULLIF($19, ''), NULLIF($20, ''), $21, $22, $23 \
             WHERE ($17 < 0 OR (SELECT COUNT(*) FROM volumes WHERE project_id = $2) + 1 <= $17) \
             AND ($18 < 0 OR {} + $6 <= $18) \
             AND ($19 = '' OR EXISTS (SELECT 1 FROM volume_snapshots WHERE id = $19 AND status = 'available')) \
             AND ($20 = '' OR EXISTS (SELECT 1 FROM volumes WHERE id = $20 AND status = 'available'))",
            used_gib("$2")
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
            Value::Text(v.snapshot_id.as_deref().unwrap_or("")),
            Value::Text(v.source_volid.as_deref().unwrap_or("")),
            Value::OptText(image_metadata.as_deref()),
            Value::OptText(v.root_of.as_deref()),
            Value::Bool(v.delete_on_termination),
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
                &format!(
                    "SELECT (SELECT COUNT(*) FROM volumes WHERE project_id = $1) AS n, \
                     (SELECT COUNT(*) FROM volume_snapshots WHERE project_id = $1) AS snaps, \
                     {} AS gib",
                    used_gib("$1")
                ),
                &[Value::Text(project_id)],
            )
            .await?;
        Ok(match row {
            Some(r) => Usage {
                volumes: int(&r, "n")?,
                snapshots: int(&r, "snaps")?,
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

    /// One of `from` (`available`, or `in-use`) -> `extending` to
    /// `new_size`, if the project's GiB quota holds the growth and nothing
    /// is being made from it; whether it moved.
    pub async fn begin_extend(
        &self,
        id: &str,
        from: &[&str],
        new_size: i64,
        quota: Quota,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = 'extending', target_size_gib = $1, updated_at = $2 \
                     WHERE id = $3 AND status IN ({}) AND size_gib < $1 AND {} \
                     AND ($4 < 0 OR {} - size_gib + $1 <= $4)",
                    status_list(from),
                    quiet("$3"),
                    used_gib("(SELECT project_id FROM volumes WHERE id = $3)")
                ),
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

    /// One of `from` -> `deleting`, if nothing is being made from it and
    /// it has no snapshots (or, with `cascade`, only snapshots that can be
    /// deleted, which go too); whether it moved.
    pub async fn begin_delete(
        &self,
        id: &str,
        from: &[&str],
        cascade: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let moved = self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = 'deleting', updated_at = $1 \
                     WHERE id = $2 AND status IN ({}) AND root_of IS NULL AND {} \
                     AND NOT EXISTS (SELECT 1 FROM volume_snapshots WHERE volume_id = $2 \
                     AND ($3 = 0 OR status NOT IN ({})))",
                    status_list(from),
                    quiet("$2"),
                    status_list(super::service::SNAPSHOT_DELETABLE)
                ),
                &[Value::Int(now), Value::Text(id), Value::Bool(cascade)],
            )
            .await?
            == 1;
        if moved && cascade {
            self.store
                .execute(
                    &format!(
                        "UPDATE volume_snapshots SET status = 'deleting', updated_at = $1 \
                         WHERE volume_id = $2 AND status IN ({})",
                        status_list(super::service::SNAPSHOT_DELETABLE)
                    ),
                    &[Value::Int(now), Value::Text(id)],
                )
                .await?;
        }
        Ok(moved)
    }

    /// Whether something is being made from volume `id`'s data right now.
    pub async fn busy(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .fetch_optional(
                &format!("SELECT 1 AS quiet WHERE {}", quiet("$1")),
                &[Value::Text(id)],
            )
            .await?
            .is_none())
    }

    /// `extending` -> `available` (or `in-use`, attached) at its new size.
    pub async fn finish_extend(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = CASE WHEN attachment_id IS NULL THEN 'available' \
                 ELSE 'in-use' END, size_gib = target_size_gib, \
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

    pub async fn set_bootable(
        &self,
        id: &str,
        bootable: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET bootable = $1, updated_at = $2 WHERE id = $3",
                &[Value::Bool(bootable), Value::Int(now), Value::Text(id)],
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
                &format!(
                    "UPDATE volumes SET status = 'reserved', server_id = $1, attachment_id = $2, \
                     attached_host = NULL, attached_at = NULL, fault = NULL, updated_at = $3, \
                     attach_external = 0, attach_mode = 'rw', attach_connector = NULL \
                     WHERE id = $4 AND status = 'available' AND root_of IS NULL AND {}",
                    quiet("$4")
                ),
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
                     attached_host = NULL, attached_at = NULL, fault = $1, updated_at = $2, \
                     attach_external = 0, attach_mode = NULL, attach_connector = NULL \
                     WHERE id = $3 AND status IN ({from})"
                ),
                &[Value::OptText(fault), Value::Int(now), Value::Text(id)],
            )
            .await?
            == 1)
    }

    /// An attached volume's failed extend: back to `in-use` at its old
    /// size, saying why.
    pub async fn abandon_extend(
        &self,
        id: &str,
        fault: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = 'in-use', target_size_gib = NULL, fault = $1, \
                 updated_at = $2 WHERE id = $3 AND status = 'extending' AND attachment_id IS NOT NULL",
                &[Value::Text(fault), Value::Int(now), Value::Text(id)],
            )
            .await?
            == 1)
    }

    /// `available` -> `to` (`reserved`, or `attaching` for the older
    /// os-reserve) under a new attachment made through Cinder's API, for
    /// `instance` ("" for none yet); whether it was available.
    pub async fn reserve_external(
        &self,
        id: &str,
        instance: &str,
        attachment_id: &str,
        mode: &str,
        to: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = $1, server_id = $2, attachment_id = $3, \
                     attached_host = NULL, attached_at = NULL, fault = NULL, updated_at = $4, \
                     attach_external = 1, attach_mode = $5, attach_connector = NULL \
                     WHERE id = $6 AND status = 'available' AND root_of IS NULL AND {}",
                    quiet("$6")
                ),
                &[
                    Value::Text(to),
                    Value::Text(instance),
                    Value::Text(attachment_id),
                    Value::Int(now),
                    Value::Text(mode),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// An API-made attachment given its attacher's connector: `reserved`
    /// (or `attaching`) -> `attaching`; whether it moved.
    pub async fn connect_external(
        &self,
        id: &str,
        connector: &serde_json::Value,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE volumes SET status = 'attaching', attach_connector = $1, updated_at = $2 \
                 WHERE id = $3 AND attach_external = 1 AND status IN ('reserved', 'attaching')",
                &[
                    Value::Text(&connector.to_string()),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// An API-made attachment done: one of `from` -> `in-use`, attached on
    /// `host` (and to `instance`, when given); whether it moved.
    pub async fn complete_external(
        &self,
        id: &str,
        from: &[&str],
        instance: Option<&str>,
        host: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = 'in-use', server_id = COALESCE($1, server_id), \
                     attached_host = COALESCE($2, attached_host), attached_at = $3, updated_at = $3 \
                     WHERE id = $4 AND attach_external = 1 AND status IN ({})",
                    status_list(from)
                ),
                &[
                    Value::OptText(instance),
                    Value::OptText(host),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// The volume of attachment `attachment_id`, if any.
    pub async fn by_attachment(&self, attachment_id: &str) -> Result<Option<Volume>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM volumes WHERE attachment_id = $1"),
                &[Value::Text(attachment_id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Every attached volume (or one being attached or detached) of
    /// `project_id` (None: every project's), oldest attachment first.
    pub async fn with_attachments(
        &self,
        project_id: Option<&str>,
    ) -> Result<Vec<Volume>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM volumes WHERE attachment_id IS NOT NULL \
                     AND ($1 = '' OR project_id = $1) ORDER BY attached_at, id"
                ),
                &[Value::Text(project_id.unwrap_or(""))],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The volumes attached (or being attached or detached) to a server.
    pub async fn of_server(&self, server_id: &str) -> Result<Vec<Volume>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM volumes WHERE server_id = $1 AND attach_external = 0 \
                     ORDER BY attached_at, id"
                ),
                &[Value::Text(server_id)],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The volumes attached to each server (or being attached or detached),
    /// its root volume first, then by attach time.
    pub async fn attached_by_server(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                "SELECT id, server_id FROM volumes WHERE server_id IS NOT NULL AND attach_external = 0 \
                 ORDER BY server_id, CASE WHEN root_of IS NULL THEN 1 ELSE 0 END, attached_at, id",
                &[],
            )
            .await?;
        let mut by = BTreeMap::<String, Vec<String>>::new();
        for r in &rows {
            by.entry(text(r, "server_id")?)
                .or_default()
                .push(text(r, "id")?);
        }
        Ok(by)
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

    /// Inserts snapshot `s` if its volume is in one of `statuses` (one or
    /// two) and the project stays within `quota` with it; whether it did.
    pub async fn insert_snapshot_within(
        &self,
        s: &Snapshot,
        statuses: &[&str],
        quota: Quota,
    ) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into());
        let sql = format!(
            "INSERT INTO volume_snapshots ({SNAPSHOT_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13 \
             WHERE EXISTS (SELECT 1 FROM volumes WHERE id = $4 AND status IN ($16, $17)) \
             AND ($14 < 0 OR (SELECT COUNT(*) FROM volume_snapshots WHERE project_id = $2) + 1 <= $14) \
             AND ($15 < 0 OR {} + $8 <= $15)",
            used_gib("$2")
        );
        let status = |i: usize| {
            statuses
                .get(i)
                .or(statuses.first())
                .copied()
                .unwrap_or("available")
        };
        let args = [
            Value::Text(&s.id),
            Value::Text(&s.project_id),
            Value::Text(&s.user_id),
            Value::Text(&s.volume_id),
            Value::Text(&s.storage_host),
            Value::OptText(s.name.as_deref()),
            Value::OptText(s.description.as_deref()),
            Value::Int(s.size_gib),
            Value::Text(&s.status),
            Value::Text(&metadata),
            Value::OptText(s.fault.as_deref()),
            Value::Int(s.created_at),
            Value::Int(s.updated_at),
            Value::Int(quota.snapshots),
            Value::Int(quota.gigabytes),
            Value::Text(status(0)),
            Value::Text(status(1)),
        ];
        Ok(self.store.execute(&sql, &args).await? == 1)
    }

    pub async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(snapshot_from_row)
            .transpose()
    }

    /// The snapshots `filter` selects (`volume_id` too), oldest first.
    pub async fn snapshots(
        &self,
        filter: &ListFilter,
        volume_id: Option<&str>,
    ) -> Result<Vec<Snapshot>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE ($1 = '' OR project_id = $1) \
                     AND ($2 = '' OR name = $2) AND ($3 = '' OR status = $3) \
                     AND ($4 = '' OR volume_id = $4) ORDER BY created_at, id"
                ),
                &[
                    Value::Text(filter.project_id.as_deref().unwrap_or("")),
                    Value::Text(filter.name.as_deref().unwrap_or("")),
                    Value::Text(filter.status.as_deref().unwrap_or("")),
                    Value::Text(volume_id.unwrap_or("")),
                ],
            )
            .await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// Every project's snapshots in one of `statuses` (the reconciler's).
    pub async fn snapshots_in_status(
        &self,
        statuses: &[&str],
    ) -> Result<Vec<Snapshot>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE status IN ({}) \
                     ORDER BY created_at, id",
                    status_list(statuses)
                ),
                &[],
            )
            .await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// Moves snapshot `id` from one of `from` to `to` (with `fault`);
    /// whether it did.
    pub async fn snapshot_transition(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        fault: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volume_snapshots SET status = $1, fault = $2, updated_at = $3 \
                     WHERE id = $4 AND status IN ({})",
                    status_list(from)
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

    pub async fn update_snapshot(
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
                "UPDATE volume_snapshots SET name = $1, description = $2, metadata = $3, \
                 updated_at = $4 WHERE id = $5",
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

    /// Forgets a snapshot whose data is gone (it was `deleting`).
    pub async fn remove_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM volume_snapshots WHERE id = $1 AND status = 'deleting'",
                &[Value::Text(id)],
            )
            .await?
            == 1)
    }

    /// Makes `id` the volume server `server_id` boots from, if it is
    /// `available`, nobody's and nothing is being made from it; whether it
    /// did.
    pub async fn claim_root(
        &self,
        id: &str,
        server_id: &str,
        delete_on_termination: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET root_of = $1, delete_on_termination = $2, updated_at = $3 \
                     WHERE id = $4 AND status = 'available' AND root_of IS NULL \
                     AND server_id IS NULL AND {}",
                    quiet("$4")
                ),
                &[
                    Value::Text(server_id),
                    Value::Bool(delete_on_termination),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1)
    }

    /// The volume server `server_id` boots from, if any.
    pub async fn root_of(&self, server_id: &str) -> Result<Option<Volume>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM volumes WHERE root_of = $1"),
                &[Value::Text(server_id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Every volume some server boots from (the reconciler's, to let go of
    /// those of servers that are gone).
    pub async fn roots(&self) -> Result<Vec<Volume>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!("SELECT {COLUMNS} FROM volumes WHERE root_of IS NOT NULL ORDER BY id"),
                &[],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The root volume `available` -> `in-use` for its server on `host`
    /// under a new attachment; whether it moved (already in use there
    /// counts as moved).
    pub async fn attach_root(
        &self,
        id: &str,
        server_id: &str,
        attachment_id: &str,
        host: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let moved = self
            .store
            .execute(
                &format!(
                    "UPDATE volumes SET status = 'in-use', server_id = $1, attachment_id = $2, \
                     attached_host = $3, attached_at = $4, fault = NULL, updated_at = $4 \
                     WHERE id = $5 AND root_of = $1 AND status = 'available' AND {}",
                    quiet("$5")
                ),
                &[
                    Value::Text(server_id),
                    Value::Text(attachment_id),
                    Value::Text(host),
                    Value::Int(now),
                    Value::Text(id),
                ],
            )
            .await?
            == 1;
        Ok(moved
            || self.get(id).await?.is_some_and(|v| {
                v.status == "in-use"
                    && v.attachment.as_ref().is_some_and(|a| {
                        a.server_id == server_id && a.host.as_deref() == Some(host)
                    })
            }))
    }

    /// Lets go of a root volume whose server is gone: no longer its root,
    /// and `deleting` when it was to go with the server, else back to
    /// `available` if it was attached.
    pub async fn free_root(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE volumes SET status = CASE WHEN delete_on_termination = 1 \
                 AND status IN ('available', 'in-use', 'error') THEN 'deleting' \
                 WHEN status = 'in-use' THEN 'available' ELSE status END, \
                 server_id = NULL, attachment_id = NULL, attached_host = NULL, attached_at = NULL, \
                 root_of = NULL, delete_on_termination = 0, updated_at = $1 \
                 WHERE id = $2 AND status NOT IN ('creating', 'extending', 'deleting')",
                &[Value::Int(now), Value::Text(id)],
            )
            .await?;
        Ok(())
    }
}
