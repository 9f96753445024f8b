//! Background tasks: the reconcilers that converge what is recorded with what
//! runs (instance state sync, orphan reaper, resumed builds and deletes, token
//! purge). Each runs on its period, or at once when triggered over the
//! internal API (`POST /internal/v1/reconcilers/NAME/run`), one run at a
//! time; its last run's outcome is kept for `GET /internal/v1/reconcilers`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::app::App;

/// One run: what it did, in a line for operators.
pub type Run = Pin<Box<dyn Future<Output = String> + Send>>;

/// A task: its name, period and body.
pub struct Task {
    pub name: &'static str,
    pub period: Duration,
    pub run: fn(Arc<App>) -> Run,
}

/// What the internal API shows of a task.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub name: &'static str,
    pub period_secs: f64,
    /// Runs finished since the controller started.
    pub runs: u64,
    pub running: bool,
    /// Unix seconds of the last run's start.
    pub last_started: Option<i64>,
    pub last_duration_ms: Option<u64>,
    pub last_outcome: Option<String>,
}

struct Handle {
    task: Task,
    wake: Notify,
    /// The task's status; callers waiting for a run watch its `runs`.
    status: watch::Sender<Status>,
}

/// The tasks of one controller.
pub struct Background {
    handles: Vec<Arc<Handle>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("no background task {0:?}")]
    Unknown(String),
    #[error("the task did not finish a run within {0:?}")]
    Timeout(Duration),
}

impl Background {
    pub fn new(tasks: Vec<Task>) -> Self {
        let handles = tasks
            .into_iter()
            .map(|task| {
                Arc::new(Handle {
                    status: watch::channel(Status {
                        name: task.name,
                        period_secs: task.period.as_secs_f64(),
                        ..Status::default()
                    })
                    .0,
                    task,
                    wake: Notify::new(),
                })
            })
            .collect();
        Background { handles }
    }

    /// Starts every task's loop: a run, then a wait of its period or until
    /// it is triggered.
    pub fn start(&self, app: &Arc<App>) {
        for h in &self.handles {
            let (h, app) = (h.clone(), app.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(h.task.period) => {}
                        _ = h.wake.notified() => {}
                    }
                    h.run_once(app.clone()).await;
                }
            });
        }
    }

    pub fn statuses(&self) -> Vec<Status> {
        self.handles.iter().map(|h| h.status()).collect()
    }

    /// Asks the task for a run now and waits, at most `wait`, until a run
    /// that started after the request finished; returns its status.
    pub async fn trigger(&self, name: &str, wait: Duration) -> Result<Status, TriggerError> {
        let h = self
            .handles
            .iter()
            .find(|h| h.task.name == name)
            .ok_or_else(|| TriggerError::Unknown(name.to_owned()))?;
        let mut status = h.status.subscribe();
        // A run in progress may have read the state before this request:
        // wait for the one after it (the wake-up is kept until then).
        let want = {
            let now = status.borrow_and_update();
            now.runs + 1 + u64::from(now.running)
        };
        h.wake.notify_one();
        tokio::time::timeout(wait, status.wait_for(|s| s.runs >= want))
            .await
            .map_err(|_| TriggerError::Timeout(wait))?
            .map_err(|_| TriggerError::Timeout(wait))?;
        Ok(h.status())
    }
}

impl Handle {
    fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    async fn run_once(&self, app: Arc<App>) {
        let started = Instant::now();
        self.update(|s| {
            s.running = true;
            s.last_started = Some(crate::identity::now());
        });
        let outcome = (self.task.run)(app).await;
        tracing::debug!(task = self.task.name, outcome, "background run");
        self.update(|s| {
            s.running = false;
            s.runs += 1;
            s.last_duration_ms = Some(started.elapsed().as_millis() as u64);
            s.last_outcome = Some(outcome);
        });
    }
}
