//! Flavors: the sizes servers come in, and their extra specs.

use std::collections::BTreeMap;

use crate::store::{boolean, int, text, Store, StoreError, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: i64,
    pub ram_mib: i64,
    pub disk_gib: i64,
    pub ephemeral_gib: i64,
    pub swap_mib: i64,
    pub is_public: bool,
}

const COLUMNS: &str = "id, name, vcpus, ram_mib, disk_gib, ephemeral_gib, swap_mib, is_public";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Flavor, StoreError> {
    Ok(Flavor {
        id: text(r, "id")?,
        name: text(r, "name")?,
        vcpus: int(r, "vcpus")?,
        ram_mib: int(r, "ram_mib")?,
        disk_gib: int(r, "disk_gib")?,
        ephemeral_gib: int(r, "ephemeral_gib")?,
        swap_mib: int(r, "swap_mib")?,
        is_public: boolean(r, "is_public")?,
    })
}

pub struct Flavors {
    store: Store,
}

impl Flavors {
    pub fn new(store: Store) -> Self {
        Flavors { store }
    }

    /// Public flavors, and private ones too for admins.
    pub async fn list(&self, include_private: bool) -> Result<Vec<Flavor>, StoreError> {
        let sql = if include_private {
            format!("SELECT {COLUMNS} FROM flavors ORDER BY ram_mib, id")
        } else {
            format!("SELECT {COLUMNS} FROM flavors WHERE is_public = 1 ORDER BY ram_mib, id")
        };
        self.store
            .fetch_all(&sql, &[])
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<Flavor>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM flavors WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Creates a flavor; a taken id or name is a conflict.
    pub async fn create(&self, f: &Flavor) -> Result<(), StoreError> {
        let taken = self
            .store
            .fetch_optional(
                "SELECT id FROM flavors WHERE id = $1 OR name = $2",
                &[Value::Text(&f.id), Value::Text(&f.name)],
            )
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "Flavor with name {} or ID {} already exists.",
                f.name, f.id
            )));
        }
        self.store
            .execute(
                &format!(
                    "INSERT INTO flavors ({COLUMNS}, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    Value::Text(&f.id),
                    Value::Text(&f.name),
                    Value::Int(f.vcpus),
                    Value::Int(f.ram_mib),
                    Value::Int(f.disk_gib),
                    Value::Int(f.ephemeral_gib),
                    Value::Int(f.swap_mib),
                    Value::Bool(f.is_public),
                    Value::Int(crate::identity::now()),
                ],
            )
            .await
            .map_err(|e| match e {
                // Lost a race with a concurrent create.
                StoreError::Sql(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    StoreError::Conflict(format!("Flavor {} already exists.", f.name))
                }
                other => other,
            })?;
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.store
            .execute(
                "DELETE FROM flavor_extra_specs WHERE flavor_id = $1",
                &[Value::Text(id)],
            )
            .await?;
        Ok(self
            .store
            .execute("DELETE FROM flavors WHERE id = $1", &[Value::Text(id)])
            .await?
            > 0)
    }

    /// Flavor `id`'s extra specs.
    pub async fn extra_specs(&self, id: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.store
            .fetch_all(
                "SELECT spec_key, spec_value FROM flavor_extra_specs WHERE flavor_id = $1",
                &[Value::Text(id)],
            )
            .await?
            .iter()
            .map(|r| Ok((text(r, "spec_key")?, text(r, "spec_value")?)))
            .collect()
    }

    /// Sets (adds or replaces) extra specs of flavor `id`; the others stay.
    pub async fn set_extra_specs(
        &self,
        id: &str,
        specs: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        for (key, value) in specs {
            self.store
                .execute(
                    "INSERT INTO flavor_extra_specs (flavor_id, spec_key, spec_value) VALUES ($1, $2, $3) \
                     ON CONFLICT (flavor_id, spec_key) DO UPDATE SET spec_value = excluded.spec_value",
                    &[Value::Text(id), Value::Text(key), Value::Text(value)],
                )
                .await?;
        }
        Ok(())
    }

    /// Removes one extra spec; false when the flavor had no such key.
    pub async fn unset_extra_spec(&self, id: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM flavor_extra_specs WHERE flavor_id = $1 AND spec_key = $2",
                &[Value::Text(id), Value::Text(key)],
            )
            .await?
            > 0)
    }
}
