//! Server groups: a policy (affinity, anti-affinity, or their soft forms)
//! over the servers created into the group, which the scheduler follows.

use crate::store::{int, text, Store, StoreError, Value};

/// Nova's default quotas, which Virga keeps: groups per project, servers
/// per group (reported in `os-quota-sets` and `limits`).
pub const MAX_GROUPS: i64 = 10;
pub const MAX_MEMBERS: i64 = 10;

/// The policies Nova knows (the soft ones from microversion 2.15).
pub const POLICIES: &[&str] = &[
    "affinity",
    "anti-affinity",
    "soft-affinity",
    "soft-anti-affinity",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerGroup {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub policy: String,
    pub created_at: i64,
}

const COLUMNS: &str = "id, project_id, user_id, name, policy, created_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ServerGroup, StoreError> {
    Ok(ServerGroup {
        id: text(r, "id")?,
        project_id: text(r, "project_id")?,
        user_id: text(r, "user_id")?,
        name: text(r, "name")?,
        policy: text(r, "policy")?,
        created_at: int(r, "created_at")?,
    })
}

pub struct ServerGroups {
    store: Store,
}

impl ServerGroups {
    pub fn new(store: Store) -> Self {
        ServerGroups { store }
    }

    /// Creates the group if its project has fewer than `limit` (a negative
    /// limit is none); false when it has that many already.
    pub async fn create(&self, g: &ServerGroup, limit: i64) -> Result<bool, StoreError> {
        let made = self
            .store
            .execute(
                &format!(
                    "INSERT INTO server_groups ({COLUMNS}) SELECT $1, $2, $3, $4, $5, $6 \
                     WHERE $7 < 0 OR (SELECT COUNT(*) FROM server_groups WHERE project_id = $2) < $7"
                ),
                &[
                    Value::Text(&g.id),
                    Value::Text(&g.project_id),
                    Value::Text(&g.user_id),
                    Value::Text(&g.name),
                    Value::Text(&g.policy),
                    Value::Int(g.created_at),
                    Value::Int(limit),
                ],
            )
            .await?;
        Ok(made == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<ServerGroup>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM server_groups WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// A project's groups (every project's for None), oldest first.
    pub async fn list(&self, project: Option<&str>) -> Result<Vec<ServerGroup>, StoreError> {
        let rows = match project {
            Some(p) => {
                self.store
                    .fetch_all(
                        &format!("SELECT {COLUMNS} FROM server_groups WHERE project_id = $1 ORDER BY created_at, id"),
                        &[Value::Text(p)],
                    )
                    .await?
            }
            None => {
                self.store
                    .fetch_all(
                        &format!("SELECT {COLUMNS} FROM server_groups ORDER BY created_at, id"),
                        &[],
                    )
                    .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// Deletes the group and its memberships (its servers stay).
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.store
            .execute(
                "DELETE FROM server_group_members WHERE group_id = $1",
                &[Value::Text(id)],
            )
            .await?;
        Ok(self
            .store
            .execute(
                "DELETE FROM server_groups WHERE id = $1",
                &[Value::Text(id)],
            )
            .await?
            > 0)
    }

    /// The group's servers that exist, oldest first.
    pub async fn members(&self, group_id: &str) -> Result<Vec<String>, StoreError> {
        self.store
            .fetch_all(
                "SELECT m.server_id AS id FROM server_group_members m \
                 JOIN servers s ON s.id = m.server_id WHERE m.group_id = $1 ORDER BY s.created_at, s.id",
                &[Value::Text(group_id)],
            )
            .await?
            .iter()
            .map(|r| text(r, "id"))
            .collect()
    }

    /// Puts a server in the group if it has fewer than `limit` members (a
    /// negative limit is none); false when full.
    pub async fn add_member(
        &self,
        group_id: &str,
        server_id: &str,
        limit: i64,
    ) -> Result<bool, StoreError> {
        let added = self
            .store
            .execute(
                "INSERT INTO server_group_members (server_id, group_id) SELECT $1, $2 \
                 WHERE $3 < 0 OR (SELECT COUNT(*) FROM server_group_members WHERE group_id = $2) < $3",
                &[Value::Text(server_id), Value::Text(group_id), Value::Int(limit)],
            )
            .await?;
        Ok(added == 1)
    }

    pub async fn remove_member(&self, server_id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "DELETE FROM server_group_members WHERE server_id = $1",
                &[Value::Text(server_id)],
            )
            .await?;
        Ok(())
    }

    /// The group a server is in, with the hosts its other members are on.
    pub async fn placement_of(
        &self,
        server_id: &str,
    ) -> Result<Option<(ServerGroup, Vec<String>)>, StoreError> {
        let Some(row) = self
            .store
            .fetch_optional(
                "SELECT group_id FROM server_group_members WHERE server_id = $1",
                &[Value::Text(server_id)],
            )
            .await?
        else {
            return Ok(None);
        };
        let Some(group) = self.get(&text(&row, "group_id")?).await? else {
            return Ok(None);
        };
        let hosts = self
            .store
            .fetch_all(
                "SELECT DISTINCT s.host_id AS host FROM server_group_members m \
                 JOIN servers s ON s.id = m.server_id \
                 WHERE m.group_id = $1 AND m.server_id <> $2 AND s.host_id IS NOT NULL",
                &[Value::Text(&group.id), Value::Text(server_id)],
            )
            .await?
            .iter()
            .map(|r| text(r, "host"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((group, hosts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, project: &str) -> ServerGroup {
        ServerGroup {
            id: id.into(),
            project_id: project.into(),
            user_id: "u".into(),
            name: "g".into(),
            policy: "anti-affinity".into(),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn groups_are_made_within_the_quota_and_forgotten_with_their_members() {
        let (_dir, store) = crate::store::temp_sqlite().await;
        let groups = ServerGroups::new(store);
        assert!(groups.create(&group("g1", "p"), 2).await.unwrap());
        assert!(groups.create(&group("g2", "p"), 2).await.unwrap());
        assert!(
            !groups.create(&group("g3", "p"), 2).await.unwrap(),
            "over quota"
        );
        assert!(groups.create(&group("g3", "q"), 2).await.unwrap());
        assert_eq!(groups.list(Some("p")).await.unwrap().len(), 2);
        assert!(groups.add_member("g1", "s1", 1).await.unwrap());
        assert!(!groups.add_member("g1", "s2", 1).await.unwrap(), "full");
        assert!(
            groups.add_member("g2", "s1", -1).await.is_err(),
            "a server is in one group at most"
        );
        assert!(groups.delete("g1").await.unwrap());
        assert!(groups.placement_of("s1").await.unwrap().is_none());
        assert!(!groups.delete("g1").await.unwrap());
    }
}
