//! The NICs each server asked for, kept for its build (which makes their
//! ports) until the server is gone.

use crate::network::nova::NicRequest;
use crate::store::{text, Store, StoreError, Value};

pub struct NicRequests {
    store: Store,
}

impl NicRequests {
    pub fn new(store: Store) -> Self {
        NicRequests { store }
    }

    pub async fn set(&self, server_id: &str, nics: &[NicRequest]) -> Result<(), StoreError> {
        let body = serde_json::to_string(nics).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store
            .execute(
                "INSERT INTO server_nic_requests (server_id, body) VALUES ($1, $2)",
                &[Value::Text(server_id), Value::Text(&body)],
            )
            .await
            .map(|_| ())
    }

    /// What the server asked for (nothing for a server from before NICs).
    pub async fn get(&self, server_id: &str) -> Result<Vec<NicRequest>, StoreError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT body FROM server_nic_requests WHERE server_id = $1",
                &[Value::Text(server_id)],
            )
            .await?;
        match row {
            None => Ok(Vec::new()),
            Some(r) => serde_json::from_str(&text(&r, "body")?)
                .map_err(|e| StoreError::Corrupt(format!("a server's NIC requests: {e}"))),
        }
    }

    pub async fn delete(&self, server_id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "DELETE FROM server_nic_requests WHERE server_id = $1",
                &[Value::Text(server_id)],
            )
            .await
            .map(|_| ())
    }
}
