//! The compute reconcilers, run by the background driver
//! ([`crate::background`]):
//! - `instance_sync` (every 3 s): finishes recorded deletes older than a
//!   hostd call, then for all hosts in parallel compares hostd's instance
//!   list with the servers' rows: states are corrected with writes checked
//!   against the generation read (a listing older than an action cannot undo
//!   it), and instances of servers that are gone or placed elsewhere are
//!   removed (the orphan reaper); an instance no server ever had is reported.
//! - `stale_work` (every minute): resumes builds and drops tasks whose
//!   controller stopped, recounts the hosts' claims from their servers, and
//!   forgets old tombstones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hostd_proto::instance::State;

use super::delete;
use super::state::from_hostd;
use crate::app::App;
use crate::background::{Run, Task};
use crate::compute::hosts::Host;
use crate::compute::servers::Server;
use crate::hostd_client::{self, Hostd};
use crate::identity::now;

/// Builds and tasks not updated for this long belong to a controller that
/// stopped (a build waiting on its host writes its row every minute).
const STALE_AFTER_SECS: i64 = 15 * 60;
/// How long a deleted server's id is remembered (to tell its leftovers from
/// instances nobody recorded).
const TOMBSTONE_SECS: i64 = 24 * 3600;

/// The compute reconcilers.
pub fn tasks() -> Vec<Task> {
    vec![
        Task {
            name: "instance_sync",
            period: Duration::from_secs(3),
            run: |app| -> Run { Box::pin(async move { instance_sync(&app).await }) },
        },
        Task {
            name: "stale_work",
            period: Duration::from_secs(60),
            run: |app| -> Run {
                Box::pin(async move { stale_work(&app, now() - STALE_AFTER_SECS).await })
            },
        },
    ]
}

/// Drops tasks last updated before `before` (see
/// [`crate::compute::servers::Servers::drop_stale_tasks`]) and closes the
/// open actions of their controller, which stopped. (Builds are resumed
/// instead: [`super::create::resume`].) Returns the tasks dropped.
pub async fn expire_stale(app: &App, before: i64) -> u64 {
    let dropped = match app.servers.drop_stale_tasks(before).await {
        Ok(0) => 0,
        Ok(tasks) => {
            tracing::warn!(tasks, "abandoned tasks dropped (their controller stopped)");
            tasks
        }
        Err(e) => {
            tracing::error!("dropping abandoned tasks: {e}");
            0
        }
    };
    if let Err(e) = app.actions.abandon_unfinished(before).await {
        tracing::error!("closing abandoned instance actions: {e}");
    }
    dropped
}

/// Work a stopped controller left: builds resumed, tasks dropped; and the
/// hosts' claims recounted, old tombstones and deleted projects' quota
/// locks forgotten.
async fn stale_work(app: &Arc<App>, before: i64) -> String {
    let builds = super::create::resume(app, before).await;
    let tasks = expire_stale(app, before).await;
    let claims = match app.hosts.recount_claims().await {
        Ok(fixed) => {
            for h in &fixed {
                tracing::error!(host = %h, "its claims differed from its servers' flavors: recounted");
            }
            fixed.len()
        }
        Err(e) => {
            tracing::error!("recounting claims: {e}");
            0
        }
    };
    if let Err(e) = app.servers.purge_tombstones(now() - TOMBSTONE_SECS).await {
        tracing::warn!("purging server tombstones: {e}");
    }
    if let Err(e) = app.actions.purge_forgotten().await {
        tracing::warn!("purging the actions of long-deleted servers: {e}");
    }
    if let Err(e) = app.servers.purge_quota_locks().await {
        tracing::warn!("purging the quota locks of deleted projects: {e}");
    }
    format!("{builds} builds resumed, {tasks} tasks dropped, {claims} hosts' claims recounted")
}

/// One round of the instance state sync over every host, in parallel.
async fn instance_sync(app: &Arc<App>) -> String {
    let deletes = delete::resume(app, now() - hostd_client::TIMEOUT.as_secs() as i64 - 1).await;
    let (hosts, servers) = match (app.hosts.list().await, app.servers.placed().await) {
        (Ok(h), Ok(s)) => (h, Arc::new(s)),
        (Err(e), _) | (_, Err(e)) => return format!("reading hosts and servers: {e}"),
    };
    let mut rounds = tokio::task::JoinSet::new();
    for host in hosts {
        let (app, servers) = (app.clone(), servers.clone());
        rounds.spawn(async move { sync_host(&app, &host, &servers).await });
    }
    let mut total = HostRound::default();
    let mut hosts = 0;
    while let Some(r) = rounds.join_next().await {
        hosts += 1;
        match r {
            Ok(r) => {
                total.corrected += r.corrected;
                total.unreachable += r.unreachable;
                total.strangers.removed += r.strangers.removed;
                total.strangers.unknown += r.strangers.unknown;
            }
            Err(e) => {
                tracing::error!("a host's sync round failed: {e}");
                total.unreachable += 1;
            }
        }
    }
    format!(
        "{hosts} hosts ({} unreachable): {} states corrected, {} leftover instances removed, \
         {} unknown instances, {deletes} deletes finished",
        total.unreachable, total.corrected, total.strangers.removed, total.strangers.unknown
    )
}

#[derive(Default)]
struct HostRound {
    corrected: usize,
    unreachable: usize,
    strangers: Stranger,
}

/// Instances a host runs for no server placed on it.
#[derive(Default)]
struct Stranger {
    removed: usize,
    /// Of no server this controller knows (reported, not touched).
    unknown: usize,
}

/// Compares one host's instances with the servers placed on it.
async fn sync_host(app: &App, host: &Host, servers: &[Server]) -> HostRound {
    let host_id = host.report.host_id.as_str();
    let mut round = HostRound::default();
    let hostd = Hostd::new(&host.report.url, app.hostd_token(host_id));
    let list = match hostd.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(host = host_id, "listing its instances: {e}");
            round.unreachable = 1;
            return round;
        }
    };
    let states: BTreeMap<&str, State> = list.iter().map(|i| (i.id.as_str(), i.state)).collect();
    let placed: BTreeMap<&str, &Server> = servers
        .iter()
        .filter(|s| s.host_id.as_deref() == Some(host_id))
        .map(|s| (s.id.as_str(), s))
        .collect();
    let strangers: Vec<&str> = states
        .keys()
        .copied()
        .filter(|id| !placed.contains_key(id))
        .collect();
    round.strangers = reap_orphans(app, &hostd, host_id, &strangers).await;
    for s in placed.values().filter(|s| s.task_state.is_none()) {
        let (vm, power, fault) = match states.get(s.id.as_str()) {
            // A suspended server is a paused VMM.
            Some(State::Paused) if s.vm_state == "suspended" => continue,
            // A resize to confirm or revert runs or is stopped as it was.
            Some(State::Running | State::Shutoff) if s.vm_state == "resized" => continue,
            // As Nova's power sync: ERROR stays until a hard reboot, a
            // rebuild or an admin's reset-state ends it; only the power
            // state follows the host.
            Some(&st) if s.vm_state == "error" => ("error", from_hostd(st).1, s.fault.as_deref()),
            Some(&st) => {
                let (vm, power) = from_hostd(st);
                (vm, power, None)
            }
            None => ("error", 0, Some("the instance is gone from its host")),
        };
        // Only if nothing wrote it since it was read.
        if (vm != s.vm_state || power != s.power_state)
            && app
                .servers
                .sync_state(&s.id, s.generation, vm, power, fault)
                .await
                .unwrap_or(false)
        {
            round.corrected += 1;
        }
    }
    round
}

/// Removes instances a host runs for servers that are gone (deleted while
/// their create was still on its way, or before a stopped controller could
/// undo it) or placed elsewhere (a create that timed out and was retried on
/// another host); an instance of a server this controller never had is
/// reported, not touched. `listed` is the host's instance list.
async fn reap_orphans(app: &App, hostd: &Hostd, host_id: &str, listed: &[&str]) -> Stranger {
    let mut found = Stranger::default();
    for &id in listed {
        // Read now, after the listing: a build records its host before it
        // asks the host for the instance.
        let server = match app.servers.get(id).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let leftover = match &server {
            Some(s) => s.host_id.as_deref() != Some(host_id),
            None => match app.servers.was_deleted(id).await {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        if !leftover {
            if server.is_none() {
                tracing::warn!(host = %host_id, instance = id, "the host runs an instance of no server this controller knows");
                found.unknown += 1;
            }
            continue;
        }
        match hostd.remove(id).await {
            Ok(()) => {
                tracing::info!(host = %host_id, instance = id, "removed a leftover instance");
                found.removed += 1;
            }
            Err(e) => {
                tracing::warn!(host = %host_id, instance = id, "removing a leftover instance: {e}")
            }
        }
    }
    found
}
