//! Flavors: the sizes servers come in, their extra specs, and which
//! projects a private flavor is open to.

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

/// Which flavors a list shows (Nova's `is_public` filter).
#[derive(Clone, Copy, Debug)]
pub enum Listing<'a> {
    /// Public ones and the private ones open to this project (any caller's
    /// default view).
    OpenTo(Option<&'a str>),
    /// Private ones only (admins' `is_public=false`).
    PrivateOnly,
    /// Every flavor (admins' `is_public=none`).
    All,
}

pub struct Flavors {
    store: Store,
}

impl Flavors {
    pub fn new(store: Store) -> Self {
        Flavors { store }
    }

    /// The flavors `listing` names, by RAM then id.
    pub async fn list(&self, listing: Listing<'_>) -> Result<Vec<Flavor>, StoreError> {
        let (filter, params): (&str, Vec<Value>) = match listing {
            Listing::All => ("", vec![]),
            Listing::PrivateOnly => ("WHERE is_public = 0", vec![]),
            Listing::OpenTo(None) => ("WHERE is_public = 1", vec![]),
            Listing::OpenTo(Some(project)) => (
                "WHERE is_public = 1 OR id IN \
                 (SELECT flavor_id FROM flavor_projects WHERE project_id = $1)",
                vec![Value::Text(project)],
            ),
        };
        self.store
            .fetch_all(
                &format!("SELECT {COLUMNS} FROM flavors {filter} ORDER BY ram_mib, id"),
                &params,
            )
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Flavor `id` if the caller may see and use it: a public one, a
    /// private one its project was given, any for an admin.
    pub async fn get_for(
        &self,
        id: &str,
        project: Option<&str>,
        admin: bool,
    ) -> Result<Option<Flavor>, StoreError> {
        let Some(f) = self.get(id).await? else {
            return Ok(None);
        };
        if f.is_public || admin {
            return Ok(Some(f));
        }
        let Some(project) = project else {
            return Ok(None);
        };
        let open = self
            .store
            .fetch_optional(
                "SELECT 1 AS open FROM flavor_projects WHERE flavor_id = $1 AND project_id = $2",
                &[Value::Text(id), Value::Text(project)],
            )
            .await?;
        Ok(open.map(|_| f))
    }

    /// The projects private flavor `id` is open to, sorted.
    pub async fn access(&self, id: &str) -> Result<Vec<String>, StoreError> {
        self.store
            .fetch_all(
                "SELECT project_id FROM flavor_projects WHERE flavor_id = $1 ORDER BY project_id",
                &[Value::Text(id)],
            )
            .await?
            .iter()
            .map(|r| text(r, "project_id"))
            .collect()
    }

    /// Opens flavor `id` to `project`; false when it already was.
    pub async fn add_access(&self, id: &str, project: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "INSERT INTO flavor_projects (flavor_id, project_id) VALUES ($1, $2) \
                 ON CONFLICT (flavor_id, project_id) DO NOTHING",
                &[Value::Text(id), Value::Text(project)],
            )
            .await?
            > 0)
    }

    /// Closes flavor `id` to `project`; false when it was not open to it.
    pub async fn remove_access(&self, id: &str, project: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM flavor_projects WHERE flavor_id = $1 AND project_id = $2",
                &[Value::Text(id), Value::Text(project)],
            )
            .await?
            > 0)
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
        for table in ["flavor_extra_specs", "flavor_projects"] {
            self.store
                .execute(
                    &format!("DELETE FROM {table} WHERE flavor_id = $1"),
                    &[Value::Text(id)],
                )
                .await?;
        }
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
