//! Instance actions (Nova's `os-instance-actions`): each request that changed
//! a server (create, stop, start, reboot, pause, ...), who made it, under
//! which request id, and how it ended. Operators read them when a server
//! did not do what was asked; tempest reads them on failures.

use crate::store::{int, opt_text, text, Store, StoreError, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub request_id: String,
    pub server_id: String,
    pub project_id: String,
    pub user_id: String,
    /// Nova's action name: create, stop, start, reboot, pause, unpause,
    /// suspend, resume.
    pub action: String,
    /// Microseconds since the epoch.
    pub start_us: i64,
    pub finish_us: Option<i64>,
    /// `Success` or `Error` once finished.
    pub result: Option<String>,
    /// Why it failed.
    pub message: Option<String>,
}

impl Action {
    /// The one event Nova would record for this action.
    pub fn event(&self) -> String {
        match self.action.as_str() {
            "create" => "compute__do_build_and_run_instance".into(),
            other => format!("compute_{other}_instance"),
        }
    }
}

const COLUMNS: &str =
    "request_id, server_id, project_id, user_id, action, start_us, finish_us, result, message";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Action, StoreError> {
    Ok(Action {
        request_id: text(r, "request_id")?,
        server_id: text(r, "server_id")?,
        project_id: text(r, "project_id")?,
        user_id: text(r, "user_id")?,
        action: text(r, "action")?,
        start_us: int(r, "start_us")?,
        finish_us: sqlx::Row::try_get::<Option<i64>, _>(r, "finish_us")?,
        result: opt_text(r, "result")?,
        message: opt_text(r, "message")?,
    })
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

pub struct Actions {
    store: Store,
}

impl Actions {
    pub fn new(store: Store) -> Self {
        Actions { store }
    }

    pub async fn start(&self, a: &Action) -> Result<(), StoreError> {
        self.store
            .execute(
                &format!("INSERT INTO instance_actions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
                &[
                    Value::Text(&a.request_id),
                    Value::Text(&a.server_id),
                    Value::Text(&a.project_id),
                    Value::Text(&a.user_id),
                    Value::Text(&a.action),
                    Value::Int(a.start_us),
                    Value::OptInt(a.finish_us),
                    Value::OptText(a.result.as_deref()),
                    Value::OptText(a.message.as_deref()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Records how an action ended: `failure` says why, when it failed.
    pub async fn finish(
        &self,
        server_id: &str,
        request_id: &str,
        failure: Option<&str>,
    ) -> Result<(), StoreError> {
        let result = if failure.is_some() {
            "Error"
        } else {
            "Success"
        };
        self.store
            .execute(
                "UPDATE instance_actions SET finish_us = $1, result = $2, message = $3 \
                 WHERE server_id = $4 AND request_id = $5",
                &[
                    Value::Int(now_us()),
                    Value::Text(result),
                    Value::OptText(failure),
                    Value::Text(server_id),
                    Value::Text(request_id),
                ],
            )
            .await?;
        Ok(())
    }

    /// A server's actions, newest first.
    pub async fn list(&self, server_id: &str) -> Result<Vec<Action>, StoreError> {
        let rows = self
            .store
            .fetch_all(
                &format!("SELECT {COLUMNS} FROM instance_actions WHERE server_id = $1 ORDER BY start_us DESC, request_id DESC"),
                &[Value::Text(server_id)],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn get(
        &self,
        server_id: &str,
        request_id: &str,
    ) -> Result<Option<Action>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM instance_actions WHERE server_id = $1 AND request_id = $2"),
                &[Value::Text(server_id), Value::Text(request_id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Forgets the actions of servers deleted so long ago that their
    /// tombstones are gone; returns how many.
    pub async fn purge_forgotten(&self) -> Result<u64, StoreError> {
        self.store
            .execute(
                "DELETE FROM instance_actions WHERE server_id NOT IN (SELECT id FROM servers) \
                 AND server_id NOT IN (SELECT id FROM server_tombstones)",
                &[],
            )
            .await
    }

    /// Actions started before `before` (unix seconds) and never finished (their controller
    /// stopped): marked failed. Creates are not: their builds are resumed and
    /// finish them.
    pub async fn abandon_unfinished(&self, before: i64) -> Result<u64, StoreError> {
        self.store
            .execute(
                "UPDATE instance_actions SET finish_us = $1, result = 'Error', \
                 message = 'abandoned: its controller stopped before it finished' \
                 WHERE finish_us IS NULL AND start_us < $2 AND action <> 'create'",
                &[
                    Value::Int(now_us()),
                    Value::Int(before.saturating_mul(1_000_000)),
                ],
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recorded_finished_listed_and_forgotten() {
        let (_dir, store) = crate::store::temp_sqlite().await;
        let actions = Actions::new(store);
        let mut a = Action {
            request_id: "req-1".into(),
            server_id: "s1".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            action: "create".into(),
            start_us: 10_000_000,
            finish_us: None,
            result: None,
            message: None,
        };
        actions.start(&a).await.unwrap();
        a.request_id = "req-2".into();
        a.action = "stop".into();
        a.start_us = 20_000_000;
        actions.start(&a).await.unwrap();
        actions
            .finish("s1", "req-2", Some("hostd answered 409"))
            .await
            .unwrap();

        let list = actions.list("s1").await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].request_id, "req-2", "newest first");
        assert_eq!(list[0].result.as_deref(), Some("Error"));
        assert_eq!(list[0].message.as_deref(), Some("hostd answered 409"));
        assert_eq!(list[0].event(), "compute_stop_instance");
        assert_eq!(list[1].event(), "compute__do_build_and_run_instance");
        assert!(list[1].finish_us.is_none());
        // An unfinished action is abandoned once old enough; a create is
        // left to its resumed build.
        a.request_id = "req-3".into();
        a.action = "reboot".into();
        a.start_us = 12_000_000;
        actions.start(&a).await.unwrap();
        assert_eq!(actions.abandon_unfinished(11).await.unwrap(), 0);
        assert_eq!(actions.abandon_unfinished(15).await.unwrap(), 1);
        let reboot = actions.get("s1", "req-3").await.unwrap().unwrap();
        assert_eq!(reboot.result.as_deref(), Some("Error"));
        let create = actions.get("s1", "req-1").await.unwrap().unwrap();
        assert_eq!(create.result, None);
        assert!(actions.get("s2", "req-1").await.unwrap().is_none());
        assert_eq!(
            actions.purge_forgotten().await.unwrap(),
            3,
            "no such server"
        );
        assert!(actions.list("s1").await.unwrap().is_empty());
    }
}
