//! Migration records, as Nova keeps them for `os-migrations`: one per
//! resize (Virga resizes on the server's own host, so source and
//! destination are the same), its status following the resize: `migrating`
//! while the host works, `finished` when it waits in VERIFY_RESIZE, then
//! `confirmed` or `reverted`, or `error`.

use crate::store::{int, opt_int, opt_text, text, Step, Store, StoreError, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub id: i64,
    pub instance_uuid: String,
    pub source_compute: Option<String>,
    pub dest_compute: Option<String>,
    pub old_flavor_id: Option<String>,
    pub new_flavor_id: Option<String>,
    pub migration_type: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

/// What a listing keeps (each None: any).
pub struct Filter<'a> {
    /// Source or destination.
    pub host: Option<&'a str>,
    pub status: Option<&'a str>,
    pub instance_uuid: Option<&'a str>,
    pub migration_type: Option<&'a str>,
}

pub struct Migrations {
    store: Store,
}

const COLUMNS: &str = "id, instance_uuid, source_compute, dest_compute, old_flavor_id, \
                       new_flavor_id, migration_type, status, created_at, updated_at";

impl Migrations {
    pub fn new(store: Store) -> Self {
        Migrations { store }
    }

    /// Records a resize of `instance` on `host` from one flavor to another,
    /// `migrating`.
    pub async fn record_resize(
        &self,
        instance: &str,
        host: &str,
        from_flavor: &str,
        to_flavor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        // The next id, taken in the insert itself; taken meanwhile by
        // another insert: tried again.
        let mut last = Ok(false);
        for _ in 0..5 {
            last = self
                .store
                .atomically(&[Step {
                    sql: "INSERT INTO migrations (id, instance_uuid, source_compute, dest_compute, \
                          old_flavor_id, new_flavor_id, migration_type, status, created_at, updated_at) \
                          SELECT COALESCE((SELECT MAX(id) FROM migrations), 0) + 1, $1, $2, $2, $3, $4, \
                          'resize', 'migrating', $5, NULL",
                    args: &[
                        Value::Text(instance),
                        Value::Text(host),
                        Value::Text(from_flavor),
                        Value::Text(to_flavor),
                        Value::Int(now),
                    ],
                    rows: Some(1),
                }])
                .await;
            if matches!(last, Ok(true)) {
                return Ok(());
            }
        }
        last.map(|_| ())
    }

    /// Moves `instance`'s latest migration from `from` to `to`; whether it
    /// was at `from`.
    pub async fn advance(
        &self,
        instance: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .store
            .execute(
                "UPDATE migrations SET status = $1, updated_at = $2 \
                 WHERE id = (SELECT MAX(id) FROM migrations WHERE instance_uuid = $3) \
                 AND status = $4",
                &[
                    Value::Text(to),
                    Value::Int(now),
                    Value::Text(instance),
                    Value::Text(from),
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    /// The migrations `filter` keeps, newest first.
    pub async fn list(&self, filter: &Filter<'_>) -> Result<Vec<Migration>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM migrations WHERE \
                     ($1 = '' OR source_compute = $1 OR dest_compute = $1) \
                     AND ($2 = '' OR status = $2) AND ($3 = '' OR instance_uuid = $3) \
                     AND ($4 = '' OR migration_type = $4) ORDER BY id DESC"
                ),
                &[
                    Value::Text(filter.host.unwrap_or_default()),
                    Value::Text(filter.status.unwrap_or_default()),
                    Value::Text(filter.instance_uuid.unwrap_or_default()),
                    Value::Text(filter.migration_type.unwrap_or_default()),
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Migration {
                    id: int(r, "id")?,
                    instance_uuid: text(r, "instance_uuid")?,
                    source_compute: opt_text(r, "source_compute")?,
                    dest_compute: opt_text(r, "dest_compute")?,
                    old_flavor_id: opt_text(r, "old_flavor_id")?,
                    new_flavor_id: opt_text(r, "new_flavor_id")?,
                    migration_type: text(r, "migration_type")?,
                    status: text(r, "status")?,
                    created_at: int(r, "created_at")?,
                    updated_at: opt_int(r, "updated_at")?,
                })
            })
            .collect()
    }
}
