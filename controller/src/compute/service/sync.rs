//! The compute reconcilers, run by [`sync_loop`]: each round, for every
//! host, the instance state sync (hostd's list against the servers' rows;
//! writes are generation-checked, so a listing older than an action cannot
//! undo it) and the orphan reaper (instances of servers that are gone or
//! placed elsewhere); unfinished deletes and abandoned builds are resumed;
//! abandoned tasks are dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use super::state::from_hostd;
use super::{delete, HOSTD_TIMEOUT};
use crate::app::App;
use crate::compute::servers::Server;
use crate::hostd_client::{self, HostdError};
use crate::identity::now;

/// Builds and tasks not updated for this long belong to a controller that
/// stopped (the longest hostd call is HOSTD_CREATE_TIMEOUT per attempt).
const STALE_AFTER_SECS: i64 = 15 * 60;
/// How long a deleted server's id is remembered (to tell its leftovers from
/// instances nobody recorded).
const TOMBSTONE_SECS: i64 = 24 * 3600;

/// Drops tasks last updated before `before` (see
/// [`crate::compute::servers::Servers::drop_stale_tasks`]) and closes the
/// open actions of their controller, which stopped. (Builds are resumed
/// instead: [`super::create::resume`].)
pub async fn expire_stale(app: &App, before: i64) {
    match app.servers.drop_stale_tasks(before).await {
        Ok(0) => {}
        Ok(tasks) => tracing::warn!(tasks, "abandoned tasks dropped (their controller stopped)"),
        Err(e) => tracing::error!("dropping abandoned tasks: {e}"),
    }
    if let Err(e) = app.actions.abandon_unfinished(before).await {
        tracing::error!("closing abandoned instance actions: {e}");
    }
}

/// Keeps server states in step with their hosts (a guest that powers itself
/// off, a VMM that dies): every few seconds, each host's instances. Servers
/// with a task in flight are left to it. Each round also finishes recorded
/// deletes and removes leftover instances ([`reap_orphans`]); once a minute,
/// abandoned builds are resumed and abandoned tasks dropped.
pub async fn sync_loop(app: Arc<App>) {
    let mut rounds: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        rounds += 1;
        if rounds.is_multiple_of(20) {
            super::create::resume(&app, now() - STALE_AFTER_SECS).await;
            expire_stale(&app, now() - STALE_AFTER_SECS).await;
            if let Err(e) = app.servers.purge_tombstones(now() - TOMBSTONE_SECS).await {
                tracing::warn!("purging server tombstones: {e}");
            }
        }
        delete::resume(&app, now() - HOSTD_TIMEOUT.as_secs() as i64 - 1).await;
        let (Ok(hosts), Ok(servers)) = (app.hosts.list().await, app.servers.placed().await) else {
            continue;
        };
        for host in hosts {
            let mine: Vec<&Server> = servers
                .iter()
                .filter(|s| {
                    s.host_id.as_deref() == Some(host.report.host_id.as_str())
                        && s.task_state.is_none()
                })
                .collect();
            let Ok(list) = hostd_client::call(
                &host.report.url,
                &app.hostd_token(&host.report.host_id),
                Method::GET,
                "/instances",
                None,
                HOSTD_TIMEOUT,
            )
            .await
            else {
                continue;
            };
            let states: BTreeMap<&str, &str> = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| Some((i["id"].as_str()?, i["state"].as_str()?)))
                        .collect()
                })
                .unwrap_or_default();
            let strangers: Vec<&str> = states
                .keys()
                .copied()
                .filter(|id| {
                    !servers.iter().any(|s| {
                        s.id == *id && s.host_id.as_deref() == Some(host.report.host_id.as_str())
                    })
                })
                .collect();
            reap_orphans(&app, &host, &strangers).await;
            for s in mine {
                let (vm, power, fault) = match states.get(s.id.as_str()) {
                    // A suspended server is a paused VMM.
                    Some(&"paused") if s.vm_state == "suspended" => continue,
                    Some(st) => {
                        let (vm, power) = from_hostd(st);
                        (vm, power, None)
                    }
                    None => ("error", 0, Some("the instance is gone from its host")),
                };
                if vm != s.vm_state || power != s.power_state {
                    // Only if nothing wrote it since it was read.
                    let _ = app
                        .servers
                        .sync_state(&s.id, s.generation, vm, power, fault)
                        .await;
                }
            }
        }
    }
}

/// Removes instances a host runs for servers that are gone (deleted while
/// their create was still on its way, or before a stopped controller could
/// undo it) or placed elsewhere (a create that timed out and was retried on
/// another host); an instance of a server this controller never had is
/// reported, not touched. `listed` is the host's instance list.
async fn reap_orphans(app: &App, host: &crate::compute::hosts::Host, listed: &[&str]) {
    let host_id = &host.report.host_id;
    for &id in listed {
        // Read now, after the listing: a build records its host before it
        // asks the host for the instance.
        let server = match app.servers.get(id).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let leftover = match &server {
            Some(s) => s.host_id.as_deref() != Some(host_id.as_str()),
            None => match app.servers.was_deleted(id).await {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        if !leftover {
            if server.is_none() {
                tracing::warn!(host = %host_id, instance = id, "the host runs an instance of no server this controller knows");
            }
            continue;
        }
        match hostd_client::call(
            &host.report.url,
            &app.hostd_token(host_id),
            Method::DELETE,
            &format!("/instances/{id}"),
            None,
            HOSTD_TIMEOUT,
        )
        .await
        {
            Ok(_) | Err(HostdError::Refused { status: 404, .. }) => {
                tracing::info!(host = %host_id, instance = id, "removed a leftover instance")
            }
            Err(e) => {
                tracing::warn!(host = %host_id, instance = id, "removing a leftover instance: {e}")
            }
        }
    }
}
