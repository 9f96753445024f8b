//! Per-project quotas: instances, cores, RAM and key pairs. A project without
//! its own row has the defaults.

use crate::store::{int, Store, StoreError, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub instances: i64,
    pub cores: i64,
    pub ram_mib: i64,
    pub key_pairs: i64,
}

pub const DEFAULT_QUOTA: Quota = Quota {
    instances: 10,
    cores: 20,
    ram_mib: 51_200,
    key_pairs: 100,
};

pub struct Quotas {
    store: Store,
}

impl Quotas {
    pub fn new(store: Store) -> Self {
        Quotas { store }
    }

    pub async fn get(&self, project: &str) -> Result<Quota, StoreError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT instances, cores, ram_mib, key_pairs FROM quotas WHERE project_id = $1",
                &[Value::Text(project)],
            )
            .await?;
        Ok(match row {
            Some(r) => Quota {
                instances: int(&r, "instances")?,
                cores: int(&r, "cores")?,
                ram_mib: int(&r, "ram_mib")?,
                key_pairs: int(&r, "key_pairs")?,
            },
            None => DEFAULT_QUOTA,
        })
    }

    pub async fn set(&self, project: &str, q: &Quota) -> Result<(), StoreError> {
        self.store
            .execute(
                "INSERT INTO quotas (project_id, instances, cores, ram_mib, key_pairs) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (project_id) DO UPDATE SET instances = excluded.instances, cores = excluded.cores, \
                 ram_mib = excluded.ram_mib, key_pairs = excluded.key_pairs",
                &[
                    Value::Text(project),
                    Value::Int(q.instances),
                    Value::Int(q.cores),
                    Value::Int(q.ram_mib),
                    Value::Int(q.key_pairs),
                ],
            )
            .await?;
        Ok(())
    }

    /// Forgets the project's own quotas: it has the defaults again. False
    /// when it had none of its own.
    pub async fn delete(&self, project: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM quotas WHERE project_id = $1",
                &[Value::Text(project)],
            )
            .await?
            > 0)
    }
}
