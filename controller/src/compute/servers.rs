//! Server records: what was asked for, where it runs, and the state Nova
//! clients see (`vm_state` + `task_state` -> `status`).

use std::collections::BTreeMap;

use super::quotas::Quota;
use crate::store::{int, opt_int, opt_text, text, Engine, Step, Store, StoreError, Value};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Server {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub flavor_id: String,
    pub image_id: String,
    pub vcpus: i64,
    pub ram_mib: i64,
    pub disk_gib: i64,
    /// The flavor's ephemeral disk (GiB, 0 for none) and swap (MiB).
    pub ephemeral_gib: i64,
    pub swap_mib: i64,
    /// Whether its guest gets a config drive (else only the metadata
    /// service tells it who it is).
    pub config_drive: bool,
    pub host_id: Option<String>,
    /// building, active, stopped, paused, error.
    pub vm_state: String,
    pub task_state: Option<String>,
    /// 0 no state, 1 running, 3 paused, 4 shut down.
    pub power_state: i64,
    pub fault: Option<String>,
    pub key_name: Option<String>,
    pub user_data: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub availability_zone: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub launched_at: Option<i64>,
    /// Bumped by every write: a conditional write names the one it read.
    pub generation: i64,
    /// Shown as the owner set them (`accessIPv4`, `accessIPv6`).
    pub access_ipv4: String,
    pub access_ipv6: String,
    /// `OS-DCF:diskConfig`: AUTO or MANUAL.
    pub disk_config: String,
    pub description: Option<String>,
    /// Shared by the servers one request created (`r-` and 8 characters).
    pub reservation_id: String,
    /// Locked: only admins change it (Nova's lock/unlock).
    pub locked: bool,
    /// Its place among the servers of its request (0 for the first).
    pub launch_index: i64,
    /// Sorted, each once (microversion 2.26).
    pub tags: Vec<String>,
}

impl Server {
    /// The status Nova clients poll for.
    pub fn status(&self) -> &'static str {
        match (self.vm_state.as_str(), self.task_state.as_deref()) {
            ("active", Some("rebooting")) => "REBOOT",
            ("active", Some("rebooting_hard")) => "HARD_REBOOT",
            ("active" | "stopped" | "error", Some("rebuilding" | "rebuild_spawning")) => "REBUILD",
            ("active" | "stopped", Some("resize_prep" | "resize_migrating" | "resize_finish")) => {
                "RESIZE"
            }
            ("resized", Some("resize_reverting")) => "REVERT_RESIZE",
            ("resized", _) => "VERIFY_RESIZE",
            ("building", _) => "BUILD",
            ("active", _) => "ACTIVE",
            ("stopped", _) => "SHUTOFF",
            ("paused", _) => "PAUSED",
            ("suspended", _) => "SUSPENDED",
            ("error", _) => "ERROR",
            ("deleted", _) => "DELETED",
            _ => "UNKNOWN",
        }
    }
}

const COLUMNS: &str = "id, project_id, user_id, name, flavor_id, image_id, vcpus, ram_mib, disk_gib, \
    host_id, vm_state, task_state, power_state, fault, key_name, user_data, metadata, availability_zone, \
    created_at, updated_at, launched_at, generation, ephemeral_gib, swap_mib, config_drive, \
    access_ipv4, access_ipv6, disk_config, description, reservation_id, locked, launch_index, tags";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Server, StoreError> {
    Ok(Server {
        id: text(r, "id")?,
        project_id: text(r, "project_id")?,
        user_id: text(r, "user_id")?,
        name: text(r, "name")?,
        flavor_id: text(r, "flavor_id")?,
        image_id: text(r, "image_id")?,
        vcpus: int(r, "vcpus")?,
        ram_mib: int(r, "ram_mib")?,
        disk_gib: int(r, "disk_gib")?,
        host_id: opt_text(r, "host_id")?,
        vm_state: text(r, "vm_state")?,
        task_state: opt_text(r, "task_state")?,
        power_state: int(r, "power_state")?,
        fault: opt_text(r, "fault")?,
        key_name: opt_text(r, "key_name")?,
        user_data: opt_text(r, "user_data")?,
        metadata: serde_json::from_str(&text(r, "metadata")?).unwrap_or_default(),
        availability_zone: text(r, "availability_zone")?,
        created_at: int(r, "created_at")?,
        updated_at: int(r, "updated_at")?,
        launched_at: sqlx::Row::try_get::<Option<i64>, _>(r, "launched_at")?,
        generation: int(r, "generation")?,
        ephemeral_gib: int(r, "ephemeral_gib")?,
        swap_mib: int(r, "swap_mib")?,
        config_drive: int(r, "config_drive")? != 0,
        access_ipv4: text(r, "access_ipv4")?,
        access_ipv6: text(r, "access_ipv6")?,
        disk_config: text(r, "disk_config")?,
        description: opt_text(r, "description")?,
        reservation_id: text(r, "reservation_id")?,
        locked: int(r, "locked")? != 0,
        launch_index: int(r, "launch_index")?,
        tags: serde_json::from_str(&text(r, "tags")?).unwrap_or_default(),
    })
}

/// A server from a `json_array` of [`COLUMNS`], in their order.
fn from_json(v: &[serde_json::Value]) -> Result<Server, StoreError> {
    let bad =
        |i: usize| StoreError::Corrupt(format!("servers page: column {i} has the wrong type"));
    let text = |i: usize| -> Result<String, StoreError> {
        v.get(i)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(i))
    };
    let opt_text = |i: usize| -> Result<Option<String>, StoreError> {
        match v.get(i) {
            Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(bad(i)),
        }
    };
    let int = |i: usize| v.get(i).and_then(|x| x.as_i64()).ok_or_else(|| bad(i));
    Ok(Server {
        id: text(0)?,
        project_id: text(1)?,
        user_id: text(2)?,
        name: text(3)?,
        flavor_id: text(4)?,
        image_id: text(5)?,
        vcpus: int(6)?,
        ram_mib: int(7)?,
        disk_gib: int(8)?,
        host_id: opt_text(9)?,
        vm_state: text(10)?,
        task_state: opt_text(11)?,
        power_state: int(12)?,
        fault: opt_text(13)?,
        key_name: opt_text(14)?,
        user_data: opt_text(15)?,
        metadata: serde_json::from_str(&text(16)?).unwrap_or_default(),
        availability_zone: text(17)?,
        created_at: int(18)?,
        updated_at: int(19)?,
        launched_at: match v.get(20) {
            Some(serde_json::Value::Null) => None,
            _ => Some(int(20)?),
        },
        generation: int(21)?,
        ephemeral_gib: int(22)?,
        swap_mib: int(23)?,
        config_drive: int(24)? != 0,
        access_ipv4: text(25)?,
        access_ipv6: text(26)?,
        disk_config: text(27)?,
        description: opt_text(28)?,
        reservation_id: text(29)?,
        locked: int(30)? != 0,
        launch_index: int(31)?,
        tags: serde_json::from_str(&text(32)?).unwrap_or_default(),
    })
}

/// A project's use, for quotas: (servers, vCPUs, MiB).
/// A server's use of resources from its launch to its delete (or now).
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub flavor_name: String,
    pub vcpus: i64,
    pub ram_mib: i64,
    /// Root and ephemeral disks.
    pub local_gib: i64,
    pub launched_at: i64,
    pub terminated_at: Option<i64>,
    /// Its vm_state, or `terminated` once deleted.
    pub state: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub instances: i64,
    pub cores: i64,
    pub ram_mib: i64,
}

/// Whether a create fitted its project's quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    OverQuota(OverQuota),
}

/// The limit a refused create would have passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverQuota {
    /// instances, cores or ram (Nova's names).
    pub resource: &'static str,
    pub limit: i64,
    pub used: i64,
    pub requested: i64,
}

/// A server list's filters and page (Nova's query parameters, parsed).
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only this project's servers (None: every project's).
    pub project: Option<String>,
    /// A case-insensitive substring of the name.
    pub name: Option<String>,
    /// Only servers in one of these vm_states.
    pub vm_states: Option<Vec<&'static str>>,
    pub image: Option<String>,
    pub flavor: Option<String>,
    pub host: Option<String>,
    /// Only the servers one request created.
    pub reservation_id: Option<String>,
    /// Tag filters (2.26): servers with all of `tags`, with any of
    /// `tags_any`, without all of `not_tags`, without any of `not_tags_any`.
    pub tags: Vec<String>,
    pub tags_any: Vec<String>,
    pub not_tags: Vec<String>,
    pub not_tags_any: Vec<String>,
    /// Only servers updated at or after this time (unix seconds).
    pub changes_since: Option<i64>,
    /// Start after this server: its (created_at, id).
    pub marker: Option<(i64, String)>,
    pub limit: Option<i64>,
}

pub struct Servers {
    store: Store,
}

impl Servers {
    pub fn new(store: Store) -> Self {
        Servers { store }
    }

    /// Inserts the server if its project stays within `quota` (instances,
    /// cores, RAM) with it. The check and the insert are one transaction that
    /// first locks the project's row in `quota_locks`, so creates racing in
    /// one project are admitted one at a time. A negative limit is no limit.
    pub async fn insert_within(&self, s: &Server, quota: &Quota) -> Result<Admission, StoreError> {
        let metadata = serde_json::to_string(&s.metadata).unwrap_or_default();
        let tags = serde_json::to_string(&s.tags).unwrap_or_else(|_| "[]".into());
        // Placeholders in order of first appearance (SQLite numbers them so).
        let insert = format!(
            "INSERT INTO servers ({COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, 0, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32 \
             WHERE ($33 < 0 OR (SELECT COUNT(*) FROM servers WHERE project_id = $2) + 1 <= $33) \
             AND ($34 < 0 OR (SELECT COALESCE(SUM(vcpus), 0) FROM servers WHERE project_id = $2) + $7 <= $34) \
             AND ($35 < 0 OR (SELECT COALESCE(SUM(ram_mib), 0) FROM servers WHERE project_id = $2) + $8 <= $35)"
        );
        let admitted = self
            .store
            .atomically(&[
                Step {
                    sql: "INSERT INTO quota_locks (project_id, creates) VALUES ($1, 1) \
                          ON CONFLICT (project_id) DO UPDATE SET creates = quota_locks.creates + 1",
                    args: &[Value::Text(&s.project_id)],
                    rows: None,
                },
                Step {
                    sql: &insert,
                    args: &[
                        Value::Text(&s.id),
                        Value::Text(&s.project_id),
                        Value::Text(&s.user_id),
                        Value::Text(&s.name),
                        Value::Text(&s.flavor_id),
                        Value::Text(&s.image_id),
                        Value::Int(s.vcpus),
                        Value::Int(s.ram_mib),
                        Value::Int(s.disk_gib),
                        Value::OptText(s.host_id.as_deref()),
                        Value::Text(&s.vm_state),
                        Value::OptText(s.task_state.as_deref()),
                        Value::Int(s.power_state),
                        Value::OptText(s.fault.as_deref()),
                        Value::OptText(s.key_name.as_deref()),
                        Value::OptText(s.user_data.as_deref()),
                        Value::Text(&metadata),
                        Value::Text(&s.availability_zone),
                        Value::Int(s.created_at),
                        Value::Int(s.updated_at),
                        Value::OptInt(s.launched_at),
                        Value::Int(s.ephemeral_gib),
                        Value::Int(s.swap_mib),
                        Value::Int(i64::from(s.config_drive)),
                        Value::Text(&s.access_ipv4),
                        Value::Text(&s.access_ipv6),
                        Value::Text(&s.disk_config),
                        Value::OptText(s.description.as_deref()),
                        Value::Text(&s.reservation_id),
                        Value::Int(i64::from(s.locked)),
                        Value::Int(s.launch_index),
                        Value::Text(&tags),
                        Value::Int(quota.instances),
                        Value::Int(quota.cores),
                        Value::Int(quota.ram_mib),
                    ],
                    rows: Some(1),
                },
            ])
            .await?;
        if admitted {
            return Ok(Admission::Admitted);
        }
        // Refused: say which limit, from the usage now (a racing delete may
        // have made room meanwhile; the client retries then).
        let used = self.usage(&s.project_id).await?;
        let over = [
            ("instances", quota.instances, used.instances, 1),
            ("cores", quota.cores, used.cores, s.vcpus),
            ("ram", quota.ram_mib, used.ram_mib, s.ram_mib),
        ]
        .into_iter()
        .find(|&(_, limit, used, add)| limit >= 0 && used + add > limit)
        .unwrap_or(("instances", quota.instances, used.instances, 1));
        Ok(Admission::OverQuota(OverQuota {
            resource: over.0,
            limit: over.1,
            used: over.2,
            requested: over.3,
        }))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Server>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM servers WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// One page of a filtered list, newest first (created_at, then id, both
    /// descending): the servers after `marker`, at most `limit` of them.
    pub async fn page(&self, q: &ListQuery) -> Result<Vec<Server>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM servers WHERE 1 = 1");
        let name = q.name.as_ref().map(|n| {
            let escaped = n
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let mut args: Vec<Value> = Vec::new();
        // Appends `text` with its `?` numbered as the next placeholder.
        fn clause<'a>(sql: &mut String, args: &mut Vec<Value<'a>>, text: &str, value: Value<'a>) {
            args.push(value);
            sql.push_str(&text.replace('?', &format!("${}", args.len())));
        }
        if let Some(p) = &q.project {
            clause(&mut sql, &mut args, " AND project_id = ?", Value::Text(p));
        }
        if let Some(n) = &name {
            clause(
                &mut sql,
                &mut args,
                " AND lower(name) LIKE ? ESCAPE '\\'",
                Value::Text(n),
            );
        }
        if let Some(r) = &q.reservation_id {
            clause(
                &mut sql,
                &mut args,
                " AND reservation_id = ?",
                Value::Text(r),
            );
        }
        // Tags are a JSON array of strings: a tag is there when its JSON
        // form, quotes included, is (LIKE's wildcards escaped).
        let patterns = |tags: &[String]| -> Vec<String> {
            tags.iter()
                .map(|t| {
                    let quoted = serde_json::to_string(t).unwrap_or_default();
                    let escaped = quoted
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    format!("%{escaped}%")
                })
                .collect()
        };
        let tag_filters = [
            (patterns(&q.tags), " AND ", false),
            (patterns(&q.tags_any), " OR ", false),
            (patterns(&q.not_tags), " AND ", true),
            (patterns(&q.not_tags_any), " OR ", true),
        ];
        for (list, join, negate) in &tag_filters {
            if list.is_empty() {
                continue;
            }
            sql.push_str(if *negate { " AND NOT (" } else { " AND (" });
            for (i, p) in list.iter().enumerate() {
                if i > 0 {
                    sql.push_str(join);
                }
                clause(
                    &mut sql,
                    &mut args,
                    "tags LIKE ? ESCAPE '\\'",
                    Value::Text(p),
                );
            }
            sql.push(')');
        }
        match q.vm_states.as_deref() {
            // `IN ()` is not SQL: no state means no server.
            Some([]) => sql.push_str(" AND 1 = 0"),
            Some(states) => {
                for (i, st) in states.iter().enumerate() {
                    let text = if i == 0 { " AND vm_state IN (?" } else { ", ?" };
                    clause(&mut sql, &mut args, text, Value::Text(st));
                }
                sql.push(')');
            }
            None => {}
        }
        if let Some(i) = &q.image {
            clause(&mut sql, &mut args, " AND image_id = ?", Value::Text(i));
        }
        if let Some(f) = &q.flavor {
            clause(&mut sql, &mut args, " AND flavor_id = ?", Value::Text(f));
        }
        if let Some(h) = &q.host {
            clause(&mut sql, &mut args, " AND host_id = ?", Value::Text(h));
        }
        if let Some(t) = q.changes_since {
            clause(&mut sql, &mut args, " AND updated_at >= ?", Value::Int(t));
        }
        if let Some((created, id)) = &q.marker {
            clause(
                &mut sql,
                &mut args,
                " AND (created_at < ?",
                Value::Int(*created),
            );
            clause(
                &mut sql,
                &mut args,
                " OR (created_at = ?",
                Value::Int(*created),
            );
            clause(&mut sql, &mut args, " AND id < ?))", Value::Text(id));
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        if let Some(limit) = q.limit {
            clause(&mut sql, &mut args, " LIMIT ?", Value::Int(limit));
        }
        if self.store.engine == Engine::Sqlite {
            // sqlx hands SQLite rows over one at a time from its worker
            // thread (a wakeup and a copy of each column per row); a page as
            // one JSON value is several times faster at a thousand servers.
            // (PostgreSQL's json_agg measured slower than its rows: 10.5 ms
            // against 8.3 ms p50 for /servers/detail at 1,000 servers.)
            let sql =
                format!("SELECT json_group_array(json_array({COLUMNS})) AS page FROM ({sql})");
            let Some(row) = self.store.fetch_optional(&sql, &args).await? else {
                return Ok(Vec::new());
            };
            let page: Vec<Vec<serde_json::Value>> = serde_json::from_str(&text(&row, "page")?)
                .map_err(|e| StoreError::Corrupt(format!("servers page: {e}")))?;
            let mut servers = page
                .iter()
                .map(|v| from_json(v))
                .collect::<Result<Vec<Server>, StoreError>>()?;
            // The aggregate need not keep the subquery's order.
            servers.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            return Ok(servers);
        }
        let rows = self.store.fetch_all(&sql, &args).await?;
        rows.iter().map(from_row).collect()
    }

    /// What a project uses, for its quotas.
    pub async fn usage(&self, project: &str) -> Result<Usage, StoreError> {
        // PostgreSQL's SUM of BIGINT is NUMERIC: cast back for the Any driver.
        let row = self
            .store
            .fetch_optional(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS cores, \
                 CAST(COALESCE(SUM(ram_mib), 0) AS BIGINT) AS ram FROM servers WHERE project_id = $1",
                &[Value::Text(project)],
            )
            .await?;
        Ok(match row {
            Some(r) => Usage {
                instances: int(&r, "n")?,
                cores: int(&r, "cores")?,
                ram_mib: int(&r, "ram")?,
            },
            None => Usage::default(),
        })
    }

    /// Servers placed on a host and past building: what the state sync
    /// compares with the hosts' own lists.
    pub async fn placed(&self) -> Result<Vec<Server>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM servers WHERE host_id IS NOT NULL AND vm_state <> 'building'"
                ),
                &[],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets where and how a server runs.
    pub async fn set_state(
        &self,
        id: &str,
        vm_state: &str,
        task_state: Option<&str>,
        power_state: i64,
        fault: Option<&str>,
    ) -> Result<(), StoreError> {
        let launched = (vm_state == "active").then(crate::identity::now);
        self.store
            .execute(
                "UPDATE servers SET generation = generation + 1, vm_state = $1, task_state = CASE WHEN task_state = 'deleting' \
                 THEN task_state ELSE $2 END, power_state = $3, fault = $4, updated_at = $5, \
                 launched_at = COALESCE(launched_at, $6) WHERE id = $7",
                &[
                    Value::Text(vm_state),
                    Value::OptText(task_state),
                    Value::Int(power_state),
                    Value::OptText(fault),
                    Value::Int(crate::identity::now()),
                    Value::OptInt(launched),
                    Value::Text(id),
                ],
            )
            .await?;
        Ok(())
    }

    /// The state sync's write: as [`Servers::set_state`] with no task, only
    /// if the server is still at `generation` (nothing wrote it since the
    /// sync read it: a host listing taken before an action must not undo
    /// the action's result) and no task or build is in flight. Whether it
    /// was written.
    pub async fn sync_state(
        &self,
        id: &str,
        generation: i64,
        vm_state: &str,
        power_state: i64,
        fault: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self
            .store
            .execute(
                "UPDATE servers SET generation = generation + 1, vm_state = $1, power_state = $2, \
                 fault = $3, updated_at = $4 \
                 WHERE id = $5 AND generation = $6 AND task_state IS NULL AND vm_state <> 'building'",
                &[
                    Value::Text(vm_state),
                    Value::Int(power_state),
                    Value::OptText(fault),
                    Value::Int(crate::identity::now()),
                    Value::Text(id),
                    Value::Int(generation),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Starts a task on a server (powering-off, rebooting, ...) if it has
    /// none and is in one of `from`: false when it was not (another task, or
    /// the wrong state). One conditional UPDATE, so two racing requests
    /// cannot both start theirs.
    pub async fn begin_task(
        &self,
        id: &str,
        task: &str,
        from: &[&str],
    ) -> Result<bool, StoreError> {
        if from.is_empty() {
            return Ok(false);
        }
        let mut sql = "UPDATE servers SET generation = generation + 1, task_state = $1, updated_at = $2 WHERE id = $3 AND task_state IS NULL \
                       AND vm_state IN ("
            .to_owned();
        let now = crate::identity::now();
        let mut args = vec![Value::Text(task), Value::Int(now), Value::Text(id)];
        for (i, st) in from.iter().enumerate() {
            args.push(Value::Text(st));
            sql.push_str(&format!(
                "{}${}",
                if i == 0 { "" } else { ", " },
                args.len()
            ));
        }
        sql.push(')');
        Ok(self.store.execute(&sql, &args).await? == 1)
    }

    /// Ends a task that failed, leaving the server's state as it was.
    /// Notes that the server's task is still being worked on (so that it
    /// is not taken for abandoned).
    pub async fn touch_task(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE servers SET updated_at = $1 WHERE id = $2 AND task_state IS NOT NULL",
                &[Value::Int(crate::identity::now()), Value::Text(id)],
            )
            .await?;
        Ok(())
    }

    /// Points the server at a new image (a rebuild), with a new name if one
    /// is given.
    pub async fn set_image(
        &self,
        id: &str,
        image_id: &str,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE servers SET generation = generation + 1, image_id = $1, \
                 name = COALESCE($2, name), updated_at = $3 WHERE id = $4",
                &[
                    Value::Text(image_id),
                    Value::OptText(name),
                    Value::Int(crate::identity::now()),
                    Value::Text(id),
                ],
            )
            .await?;
        Ok(())
    }

    /// Writes what the owner changes on a server (name, access addresses,
    /// disk config label, description, metadata, lock, tags) if no other write came
    /// after the read it was made from (`s.generation`); false if one did.
    pub async fn update_attributes(&self, s: &Server) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(&s.metadata).unwrap_or_default();
        let tags = serde_json::to_string(&s.tags).unwrap_or_else(|_| "[]".into());
        Ok(self
            .store
            .execute(
                "UPDATE servers SET generation = generation + 1, name = $1, access_ipv4 = $2, \
                 access_ipv6 = $3, disk_config = $4, description = $5, metadata = $6, \
                 updated_at = $7, locked = $8, tags = $9 WHERE id = $10 AND generation = $11",
                &[
                    Value::Text(&s.name),
                    Value::Text(&s.access_ipv4),
                    Value::Text(&s.access_ipv6),
                    Value::Text(&s.disk_config),
                    Value::OptText(s.description.as_deref()),
                    Value::Text(&metadata),
                    Value::Int(crate::identity::now()),
                    Value::Int(i64::from(s.locked)),
                    Value::Text(&tags),
                    Value::Text(&s.id),
                    Value::Int(s.generation),
                ],
            )
            .await?
            == 1)
    }

    pub async fn clear_task(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE servers SET generation = generation + 1, task_state = NULL, updated_at = $1 WHERE id = $2 \
                 AND task_state <> 'deleting'",
                &[Value::Int(crate::identity::now()), Value::Text(id)],
            )
            .await?;
        Ok(())
    }

    /// Builds whose controller stopped (not updated since `before`, and not
    /// being deleted), each taken by one conditional write of its
    /// generation: of two controllers resuming at once, one gets it. The
    /// taken servers, as read before the take.
    pub async fn take_stale_builds(&self, before: i64) -> Result<Vec<Server>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM servers WHERE vm_state = 'building' AND updated_at < $1 \
                     AND (task_state IS NULL OR task_state <> 'deleting')"
                ),
                &[Value::Int(before)],
            )
            .await?;
        let mut taken = Vec::new();
        for s in rows.iter().map(from_row) {
            let s = s?;
            let n = self
                .store
                .execute(
                    "UPDATE servers SET generation = generation + 1, updated_at = $1 \
                     WHERE id = $2 AND generation = $3",
                    &[
                        Value::Int(crate::identity::now()),
                        Value::Text(&s.id),
                        Value::Int(s.generation),
                    ],
                )
                .await?;
            if n == 1 {
                taken.push(s);
            }
        }
        Ok(taken)
    }

    /// Drops tasks (actions) that nobody will finish: those not updated since
    /// `before` (their controller stopped); the state sync then corrects
    /// vm_state from the host. Returns how many.
    pub async fn drop_stale_tasks(&self, before: i64) -> Result<u64, StoreError> {
        self.store
            .execute(
                "UPDATE servers SET generation = generation + 1, task_state = NULL, updated_at = $1 \
                 WHERE task_state IS NOT NULL AND task_state <> 'deleting' \
                 AND vm_state <> 'building' AND updated_at < $2",
                &[Value::Int(crate::identity::now()), Value::Int(before)],
            )
            .await
    }

    /// Records that the server is being deleted, before anything is undone:
    /// a controller that stops midway finishes the delete when it starts
    /// again. Nothing else overwrites this task.
    pub async fn mark_deleting(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE servers SET generation = generation + 1, task_state = 'deleting', updated_at = $1 WHERE id = $2",
                &[Value::Int(crate::identity::now()), Value::Text(id)],
            )
            .await?;
        Ok(())
    }

    /// A delete that could not go ahead (its host refused): the server is as
    /// it was, without a task.
    pub async fn unmark_deleting(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE servers SET generation = generation + 1, task_state = NULL, updated_at = $1 \
                 WHERE id = $2 AND task_state = 'deleting'",
                &[Value::Int(crate::identity::now()), Value::Text(id)],
            )
            .await?;
        Ok(())
    }

    /// Servers whose delete was recorded before `before` and not finished.
    pub async fn deleting(&self, before: i64) -> Result<Vec<Server>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM servers WHERE task_state = 'deleting' AND updated_at < $1"
                ),
                &[Value::Int(before)],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes the server, gives its claim back and leaves a tombstone (so
    /// that an instance of it found on a host later is known as a leftover),
    /// in one transaction. False when it was gone already.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let now = crate::identity::now();
        self.store
            .atomically(&[
                Step {
                    sql: "UPDATE hosts SET \
                          claimed_vcpus = claimed_vcpus - (SELECT vcpus FROM servers WHERE id = $1), \
                          claimed_ram_mib = claimed_ram_mib - (SELECT ram_mib FROM servers WHERE id = $1) \
                          WHERE id = (SELECT host_id FROM servers WHERE id = $1)",
                    args: &[Value::Text(id)],
                    rows: None,
                },
                Step {
                    // $1 first: SQLite numbers placeholders as they appear.
                    sql: "INSERT INTO server_tombstones (id, host_id, deleted_at) \
                          SELECT $1, host_id, $2 FROM servers WHERE id = $1",
                    args: &[Value::Text(id), Value::Int(now)],
                    rows: None,
                },
                Step {
                    // What it used, for usage reports (a server that never
                    // ran used nothing).
                    sql: "INSERT INTO server_usage (id, project_id, name, flavor_name, vcpus, \
                          ram_mib, local_gib, launched_at, terminated_at) \
                          SELECT $1, s.project_id, s.name, COALESCE(f.name, s.flavor_id), s.vcpus, \
                          s.ram_mib, s.disk_gib + s.ephemeral_gib, s.launched_at, $2 \
                          FROM servers s LEFT JOIN flavors f ON f.id = s.flavor_id \
                          WHERE s.id = $1 AND s.launched_at IS NOT NULL \
                          ON CONFLICT (id) DO NOTHING",
                    args: &[Value::Text(id), Value::Int(now)],
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM servers WHERE id = $1",
                    args: &[Value::Text(id)],
                    rows: Some(1),
                },
            ])
            .await
    }

    /// The servers (of `project`, or all) that ran at some time between
    /// `start` and `stop`: those alive, and those deleted after `start`.
    pub async fn ran_between(
        &self,
        project: Option<&str>,
        start: i64,
        stop: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let mine = if project.is_some() {
            "AND s.project_id = $2"
        } else {
            "AND $2 = ''"
        };
        let alive = format!(
            "SELECT s.id, s.project_id, s.name, COALESCE(f.name, s.flavor_id) AS flavor_name, \
             s.vcpus, s.ram_mib, s.disk_gib + s.ephemeral_gib AS local_gib, s.launched_at, \
             CAST(NULL AS BIGINT) AS terminated_at, s.vm_state FROM servers s LEFT JOIN flavors f ON f.id = s.flavor_id \
             WHERE s.launched_at IS NOT NULL AND s.launched_at < $1 {mine}"
        );
        let deleted = format!(
            "SELECT s.id, s.project_id, s.name, s.flavor_name, s.vcpus, s.ram_mib, s.local_gib, \
             s.launched_at, s.terminated_at, 'terminated' AS vm_state FROM server_usage s \
             WHERE s.launched_at < $1 {mine} AND s.terminated_at > $3"
        );
        let args = [
            Value::Int(stop),
            Value::Text(project.unwrap_or_default()),
            Value::Int(start),
        ];
        let mut records = Vec::new();
        for (sql, args) in [(alive, &args[..2]), (deleted, &args[..])] {
            for r in self.store.fetch_all(&sql, args).await? {
                records.push(UsageRecord {
                    id: text(&r, "id")?,
                    project_id: text(&r, "project_id")?,
                    name: text(&r, "name")?,
                    flavor_name: text(&r, "flavor_name")?,
                    vcpus: int(&r, "vcpus")?,
                    ram_mib: int(&r, "ram_mib")?,
                    local_gib: int(&r, "local_gib")?,
                    launched_at: int(&r, "launched_at")?,
                    terminated_at: opt_int(&r, "terminated_at")?,
                    state: text(&r, "vm_state")?,
                });
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Whether a server of this id was deleted (in the last day).
    pub async fn was_deleted(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .fetch_optional(
                "SELECT id FROM server_tombstones WHERE id = $1",
                &[Value::Text(id)],
            )
            .await?
            .is_some())
    }

    /// Forgets the quota locks of projects that no longer exist (a deleted
    /// project can make no more creates); returns how many.
    pub async fn purge_quota_locks(&self) -> Result<u64, StoreError> {
        self.store
            .execute(
                "DELETE FROM quota_locks WHERE project_id NOT IN (SELECT id FROM projects)",
                &[],
            )
            .await
    }

    /// Forgets tombstones older than `before`.
    pub async fn purge_tombstones(&self, before: i64) -> Result<u64, StoreError> {
        self.store
            .execute(
                "DELETE FROM server_tombstones WHERE deleted_at < $1",
                &[Value::Int(before)],
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::quotas::DEFAULT_QUOTA;

    /// A building server of 1 vCPU and 128 MiB in project `p`.
    fn building(id: &str) -> Server {
        Server {
            id: id.into(),
            project_id: "p".into(),
            user_id: "u".into(),
            name: "n".into(),
            flavor_id: "f".into(),
            image_id: "img".into(),
            vcpus: 1,
            ram_mib: 128,
            disk_gib: 0,
            ephemeral_gib: 0,
            swap_mib: 0,
            config_drive: false,
            host_id: None,
            vm_state: "building".into(),
            task_state: Some("spawning".into()),
            power_state: 0,
            fault: None,
            key_name: None,
            user_data: None,
            metadata: BTreeMap::new(),
            availability_zone: "nova".into(),
            created_at: 100,
            updated_at: 100,
            launched_at: None,
            generation: 0,
            disk_config: "MANUAL".into(),
            ..Server::default()
        }
    }

    #[test]
    fn statuses() {
        let mut s = building("i");
        assert_eq!(s.status(), "BUILD");
        s.vm_state = "active".into();
        s.task_state = None;
        assert_eq!(s.status(), "ACTIVE");
        s.task_state = Some("rebooting_hard".into());
        assert_eq!(s.status(), "HARD_REBOOT");
        s.vm_state = "stopped".into();
        s.task_state = None;
        assert_eq!(s.status(), "SHUTOFF");
        s.vm_state = "error".into();
        assert_eq!(s.status(), "ERROR");
    }

    #[tokio::test]
    async fn a_delete_wins_over_other_tasks_and_leaves_a_tombstone_and_no_claim() {
        let (_dir, store) = crate::store::temp_sqlite().await;
        let servers = Servers::new(store.clone());
        let hosts = crate::compute::hosts::Hosts::new(store.clone());
        hosts
            .heartbeat(&hostd_proto::Heartbeat {
                host_id: "h".into(),
                url: "http://h:8790".into(),
                cpus: 4,
                memory_mib: 4096,
                memory_usable_mib: 4000,
                disk_free_mib: 1000,
                disk_total_mib: 2000,
                vcpus_used: 0,
                memory_used_mib: 0,
                instances: 0,
                kvm_mode: "hardware".into(),
                version: "test".into(),
                booted_at: 0,
                load_average: [0.0; 3],
            })
            .await
            .unwrap();
        store
            .execute(
                "UPDATE hosts SET claimed_vcpus = 1, claimed_ram_mib = 128 WHERE id = 'h'",
                &[],
            )
            .await
            .unwrap();
        let mut s = building("doomed");
        s.host_id = Some("h".into());
        assert_eq!(
            servers.insert_within(&s, &DEFAULT_QUOTA).await.unwrap(),
            Admission::Admitted
        );

        servers.mark_deleting("doomed").await.unwrap();
        // A build finishing, or an action ending, keeps the delete recorded.
        servers
            .set_state("doomed", "active", None, 1, None)
            .await
            .unwrap();
        servers.clear_task("doomed").await.unwrap();
        let now = crate::identity::now();
        assert_eq!(servers.deleting(now + 1).await.unwrap().len(), 1);
        assert!(
            servers.deleting(now - 100).await.unwrap().is_empty(),
            "not yet stale"
        );
        // Nor is it taken as an abandoned build, or its task dropped.
        assert!(servers
            .take_stale_builds(i64::MAX)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(servers.drop_stale_tasks(i64::MAX).await.unwrap(), 0);

        assert!(servers.delete("doomed").await.unwrap());
        assert!(!servers.delete("doomed").await.unwrap(), "once");
        assert!(servers.get("doomed").await.unwrap().is_none());
        assert!(servers.was_deleted("doomed").await.unwrap());
        assert!(!servers.was_deleted("other").await.unwrap());
        let h = hosts.list().await.unwrap().remove(0);
        assert_eq!(
            (h.claimed_vcpus, h.claimed_ram_mib),
            (0, 0),
            "its claim went with it"
        );
        assert_eq!(servers.purge_tombstones(now + 10).await.unwrap(), 1);
        assert!(!servers.was_deleted("doomed").await.unwrap());
    }

    #[tokio::test]
    async fn the_quota_locks_of_deleted_projects_are_purged() {
        let (_dir, store) = crate::store::temp_sqlite().await;
        let servers = Servers::new(store.clone());
        for sql in [
            "INSERT INTO domains (id, name) VALUES ('d', 'D')",
            "INSERT INTO projects (id, name, domain_id) VALUES ('kept', 'kept', 'd')",
        ] {
            store.execute(sql, &[]).await.unwrap();
        }
        for (id, project) in [("a", "kept"), ("b", "gone")] {
            let mut s = building(id);
            s.project_id = project.into();
            servers.insert_within(&s, &DEFAULT_QUOTA).await.unwrap();
        }
        assert_eq!(servers.purge_quota_locks().await.unwrap(), 1);
        let left = store
            .fetch_all("SELECT project_id FROM quota_locks", &[])
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(crate::store::text(&left[0], "project_id").unwrap(), "kept");
    }

    #[tokio::test]
    async fn a_server_reads_back_as_written_one_by_one_and_by_the_page() {
        let (_dir, store) = crate::store::temp_sqlite().await;
        let servers = Servers::new(store);
        let mut s = building("eph");
        (s.disk_gib, s.ephemeral_gib, s.swap_mib) = (3, 2, 512);
        s.key_name = Some("k".into());
        s.metadata = BTreeMap::from([("a".into(), "b".into())]);
        servers.insert_within(&s, &DEFAULT_QUOTA).await.unwrap();
        assert_eq!(servers.get("eph").await.unwrap(), Some(s.clone()));
        let page = servers.page(&ListQuery::default()).await.unwrap();
        assert_eq!(page, vec![s]);
    }

    #[tokio::test]
    async fn tasks_and_abandoned_builds() {
        let (_dir, store) = crate::store::temp_sqlite().await;
        let servers = Servers::new(store);
        let mut s = building("building");
        assert_eq!(
            servers.insert_within(&s, &DEFAULT_QUOTA).await.unwrap(),
            Admission::Admitted
        );
        s.id = "active".into();
        s.vm_state = "active".into();
        s.task_state = None;
        assert_eq!(
            servers.insert_within(&s, &DEFAULT_QUOTA).await.unwrap(),
            Admission::Admitted
        );

        // One task at a time, only from the allowed states.
        assert!(!servers
            .begin_task("active", "pausing", &["stopped"])
            .await
            .unwrap());
        assert!(servers
            .begin_task("active", "powering-off", &["active"])
            .await
            .unwrap());
        assert!(!servers
            .begin_task("active", "pausing", &["active"])
            .await
            .unwrap());
        assert!(!servers
            .begin_task("missing", "pausing", &["active"])
            .await
            .unwrap());
        // The state sync leaves servers with tasks and builds alone.
        let generation = |id: &'static str| {
            let servers = &servers;
            async move { servers.get(id).await.unwrap().unwrap().generation }
        };
        assert!(!servers
            .sync_state("active", generation("active").await, "error", 0, None)
            .await
            .unwrap());
        assert!(!servers
            .sync_state("building", generation("building").await, "error", 0, None)
            .await
            .unwrap());
        assert_eq!(
            servers.usage("p").await.unwrap(),
            Usage {
                instances: 2,
                cores: 2,
                ram_mib: 256
            }
        );

        // Nothing is stale before its time; then the build is taken once (to
        // be resumed) and the task is dropped.
        assert!(servers.take_stale_builds(50).await.unwrap().is_empty());
        assert_eq!(servers.drop_stale_tasks(50).await.unwrap(), 0);
        let t0 = crate::identity::now();
        let taken = servers.take_stale_builds(t0).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, "building");
        assert!(
            servers.take_stale_builds(t0).await.unwrap().is_empty(),
            "taken: written at t0 or later, so no longer stale"
        );
        assert_eq!(servers.drop_stale_tasks(t0 + 10).await.unwrap(), 1);
        let b = servers.get("building").await.unwrap().unwrap();
        assert_eq!(b.status(), "BUILD");
        let a = servers.get("active").await.unwrap().unwrap();
        assert_eq!((a.status(), a.task_state), ("ACTIVE", None));
        // A sync that read the server before its last write writes nothing.
        let read = generation("active").await;
        assert!(servers
            .begin_task("active", "powering-off", &["active"])
            .await
            .unwrap());
        servers.clear_task("active").await.unwrap();
        assert!(!servers
            .sync_state("active", read, "stopped", 4, None)
            .await
            .unwrap());
        assert!(servers
            .sync_state("active", generation("active").await, "stopped", 4, None)
            .await
            .unwrap());
        assert_eq!(
            servers.get("active").await.unwrap().unwrap().status(),
            "SHUTOFF"
        );
    }
}
