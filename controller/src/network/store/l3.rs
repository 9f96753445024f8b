//! Routers' and floating IPs' SQL (`migrations/0018_routers.sql`).

use std::net::Ipv4Addr;

use super::{body, doc, Deleted, NetworkStore};
use crate::network::model::{Association, FloatingIp, Router, ROUTER_INTERFACE};
use crate::store::{opt_text, text, Step, StoreError, Value};

const FLOATING_COLUMNS: &str =
    "body, port_id, fixed_ip_address, router_id, status FROM floating_ips";

/// A floating IP from its row: the document, its association and status
/// from the columns.
fn floating(row: &sqlx::any::AnyRow) -> Result<FloatingIp, StoreError> {
    let mut fip: FloatingIp = doc(row)?;
    fip.status = text(row, "status")?;
    fip.association = match (
        opt_text(row, "port_id")?,
        opt_text(row, "fixed_ip_address")?,
        opt_text(row, "router_id")?,
    ) {
        (Some(port_id), Some(ip), Some(router_id)) => Some(Association {
            port_id,
            fixed_ip_address: ip
                .parse::<Ipv4Addr>()
                .map_err(|e| StoreError::Corrupt(format!("a floating IP's fixed address: {e}")))?,
            router_id,
        }),
        _ => None,
    };
    Ok(fip)
}

impl NetworkStore {
    // --- routers

    pub async fn create_router(&self, router: &Router) -> Result<(), StoreError> {
        let doc = body(router)?;
        self.store
            .execute(
                "INSERT INTO routers (id, project_id, host_id, revision, body) VALUES ($1, $2, '', $3, $4)",
                &[
                    Value::Text(&router.std.id),
                    Value::Text(&router.std.project_id),
                    Value::Int(router.std.revision_number),
                    Value::Text(&doc),
                ],
            )
            .await
            .map(|_| ())
    }

    pub async fn router(&self, id: &str) -> Result<Option<Router>, StoreError> {
        self.one("SELECT body FROM routers WHERE id = $1", &[Value::Text(id)])
            .await
    }

    pub async fn routers(&self) -> Result<Vec<Router>, StoreError> {
        self.docs("SELECT body FROM routers ORDER BY id", &[]).await
    }

    /// The host a router is placed on ("" none yet).
    pub async fn router_host(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            match self
                .store
                .fetch_optional(
                    "SELECT host_id FROM routers WHERE id = $1",
                    &[Value::Text(id)],
                )
                .await?
            {
                Some(row) => Some(text(&row, "host_id")?),
                None => None,
            },
        )
    }

    pub async fn routers_on_host(&self, host_id: &str) -> Result<Vec<Router>, StoreError> {
        self.docs(
            "SELECT body FROM routers WHERE host_id = $1 ORDER BY id",
            &[Value::Text(host_id)],
        )
        .await
    }

    /// Places the routers not yet placed on `host_id`; answers their ids.
    pub async fn place_routers(&self, host_id: &str) -> Result<Vec<String>, StoreError> {
        let waiting: Vec<String> = self
            .store
            .fetch_all("SELECT id FROM routers WHERE host_id = ''", &[])
            .await?
            .iter()
            .map(|r| text(r, "id"))
            .collect::<Result<_, _>>()?;
        let mut placed = Vec::new();
        for id in waiting {
            // Another gateway host may take it first.
            let n = self
                .store
                .execute(
                    "UPDATE routers SET host_id = $1 WHERE id = $2 AND host_id = ''",
                    &[Value::Text(host_id), Value::Text(&id)],
                )
                .await?;
            if n == 1 {
                placed.push(id);
            }
        }
        Ok(placed)
    }

    pub async fn update_router(&self, router: &Router, read: i64) -> Result<bool, StoreError> {
        self.replace("routers", &router.std, router, read).await
    }

    /// Deletes a router and its gateway port, unless it still has an
    /// interface.
    pub async fn delete_router(&self, id: &str) -> Result<Deleted, StoreError> {
        let args = [Value::Text(id), Value::Text(ROUTER_INTERFACE)];
        let own = [Value::Text(id)];
        let done = self
            .store
            .atomically(&[
                Step {
                    sql: "DELETE FROM routers WHERE id = $1 AND NOT EXISTS \
                          (SELECT 1 FROM ports WHERE device_id = $1 AND device_owner = $2)",
                    args: &args,
                    rows: Some(1),
                },
                Step {
                    sql: "DELETE FROM ip_allocations WHERE port_id IN \
                          (SELECT id FROM ports WHERE device_id = $1)",
                    args: &own,
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM port_security_groups WHERE port_id IN \
                          (SELECT id FROM ports WHERE device_id = $1)",
                    args: &own,
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM ports WHERE device_id = $1",
                    args: &own,
                    rows: None,
                },
            ])
            .await?;
        Ok(match done {
            true => Deleted::Yes,
            false if self.router(id).await?.is_some() => Deleted::InUse,
            false => Deleted::NotFound,
        })
    }

    // --- floating IPs

    pub async fn create_floating_ip(&self, fip: &FloatingIp) -> Result<(), StoreError> {
        let doc = body(fip)?;
        let a = fip.association.as_ref();
        let fixed = a.map(|a| a.fixed_ip_address.to_string());
        self.store
            .execute(
                "INSERT INTO floating_ips (id, project_id, address_port_id, port_id, fixed_ip_address, \
                 router_id, status, revision, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    Value::Text(&fip.std.id),
                    Value::Text(&fip.std.project_id),
                    Value::Text(&fip.address_port_id),
                    Value::OptText(a.map(|a| a.port_id.as_str())),
                    Value::OptText(fixed.as_deref()),
                    Value::OptText(a.map(|a| a.router_id.as_str())),
                    Value::Text(&fip.status),
                    Value::Int(fip.std.revision_number),
                    Value::Text(&doc),
                ],
            )
            .await
            .map(|_| ())
    }

    pub async fn floating_ip(&self, id: &str) -> Result<Option<FloatingIp>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {FLOATING_COLUMNS} WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(floating)
            .transpose()
    }

    pub async fn floating_ips(&self) -> Result<Vec<FloatingIp>, StoreError> {
        self.store
            .fetch_all(&format!("SELECT {FLOATING_COLUMNS} ORDER BY id"), &[])
            .await?
            .iter()
            .map(floating)
            .collect()
    }

    pub async fn floating_ips_of_router(
        &self,
        router_id: &str,
    ) -> Result<Vec<FloatingIp>, StoreError> {
        self.store
            .fetch_all(
                &format!("SELECT {FLOATING_COLUMNS} WHERE router_id = $1 ORDER BY id"),
                &[Value::Text(router_id)],
            )
            .await?
            .iter()
            .map(floating)
            .collect()
    }

    /// Replaces a floating IP read at revision `read` (its document, its
    /// association, its status); false if it changed since. A unique
    /// violation: the fixed address has a floating IP already.
    pub async fn update_floating_ip(
        &self,
        fip: &FloatingIp,
        read: i64,
    ) -> Result<bool, StoreError> {
        let doc = body(fip)?;
        let a = fip.association.as_ref();
        let fixed = a.map(|a| a.fixed_ip_address.to_string());
        self.store
            .atomically(&[Step {
                sql: "UPDATE floating_ips SET body = $1, revision = $2, port_id = $3, \
                      fixed_ip_address = $4, router_id = $5, status = $6 WHERE id = $7 AND revision = $8",
                args: &[
                    Value::Text(&doc),
                    Value::Int(fip.std.revision_number),
                    Value::OptText(a.map(|a| a.port_id.as_str())),
                    Value::OptText(fixed.as_deref()),
                    Value::OptText(a.map(|a| a.router_id.as_str())),
                    Value::Text(&fip.status),
                    Value::Text(&fip.std.id),
                    Value::Int(read),
                ],
                rows: Some(1),
            }])
            .await
    }

    /// Sets a floating IP's status (the agent's view; no revision bump).
    pub async fn set_floating_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "UPDATE floating_ips SET status = $1 WHERE id = $2",
                &[Value::Text(status), Value::Text(id)],
            )
            .await
            .map(|_| ())
    }

    /// Deletes a floating IP and the port holding its address.
    pub async fn delete_floating_ip(&self, fip: &FloatingIp) -> Result<bool, StoreError> {
        let id = [Value::Text(&fip.std.id)];
        let port = [Value::Text(&fip.address_port_id)];
        self.store
            .atomically(&[
                Step {
                    sql: "DELETE FROM floating_ips WHERE id = $1",
                    args: &id,
                    rows: Some(1),
                },
                Step {
                    sql: "DELETE FROM ip_allocations WHERE port_id = $1",
                    args: &port,
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM ports WHERE id = $1",
                    args: &port,
                    rows: None,
                },
            ])
            .await
    }
}
