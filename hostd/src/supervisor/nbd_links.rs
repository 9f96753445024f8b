//! Keeps remote disks connected. When storaged restarts or the storage
//! network drops, the kernel tells of each NBD connection that died
//! (`nbd::watch_dead_links`) and holds the guest's I/O for up to
//! [`nbd::DEAD_CONNECTION_TIMEOUT`]; hostd gives the device fresh
//! connections to the same export in that time, and the kernel sends what
//! was in flight again. The guest sees a pause, not an error.
//!
//! The kernel's events are for every NBD device of the host: only those
//! this hostd's instances own are repaired. A device is named to the
//! kernel by its instance and disk (its backend), so a repair can never
//! give one device another's sockets, whatever changed meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{lock, Supervisor};
use crate::instance::NbdSource;
use crate::nbd::{self, LinkEvent};

/// How long the watcher waits before opening its socket again (the nbd
/// module not loaded yet, say).
const REOPEN_AFTER: Duration = Duration::from_secs(10);
/// How long between attempts while storaged does not answer.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct LinkRepair {
    started: OnceLock<()>,
    /// Devices being repaired, and whether another death was told since
    /// the repair began (it runs once more then).
    repairing: Mutex<HashMap<u32, bool>>,
}

/// What a device is to the kernel: its backend identifier.
pub(super) fn backend(instance: &str, disk: &str) -> String {
    format!("virga:{instance}/{disk}")
}

/// A remote disk of one of this hostd's instances.
struct Target {
    instance: String,
    disk: String,
    nbd: NbdSource,
}

impl Supervisor {
    /// Starts watching for dead NBD links, once: hostd calls it when it
    /// has a remote disk (at start, or when one is added).
    pub(super) fn watch_nbd_links(self: &Arc<Self>) {
        self.nbd_links.started.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let watcher = std::thread::Builder::new()
                .name("nbd-links".into())
                .spawn(move || {
                    let mut told = false;
                    loop {
                        let result = nbd::watch_dead_links(|event| {
                            let _ = tx.send(event);
                        });
                        if tx.is_closed() {
                            return;
                        }
                        if let Err(e) = result {
                            if !told {
                                tracing::warn!("watching NBD links (remote disks): {e}");
                                told = true;
                            }
                        }
                        std::thread::sleep(REOPEN_AFTER);
                    }
                });
            if let Err(e) = watcher {
                tracing::warn!("no NBD link watcher: {e}");
                return;
            }
            let sup = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let Some(sup) = sup.upgrade() else { return };
                    sup.link_event(event);
                }
            });
        });
    }

    /// Disconnects the NBD devices made for this hostd's instances that
    /// their specs do not hold: a hostd killed between connecting a
    /// remote disk and recording it. Called at start, before any request.
    pub(super) async fn tidy_nbd_leftovers(&self) {
        let ours: std::collections::HashSet<String> =
            lock(&self.instances).keys().cloned().collect();
        let held = self.remote_disks();
        let leftovers: Vec<(u32, String)> = tokio::task::spawn_blocking(nbd::backends)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(index, backend)| {
                let instance = backend
                    .strip_prefix("virga:")
                    .and_then(|b| b.split_once('/'))
                    .map(|(instance, _)| instance);
                instance.is_some_and(|i| ours.contains(i)) && !held.contains_key(index)
            })
            .collect();
        for (index, backend) in leftovers {
            tracing::warn!(
                index,
                backend,
                "disconnecting an NBD device no instance holds (an interrupted attach)"
            );
            if let Err(e) = tokio::task::spawn_blocking(move || nbd::disconnect(index))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                tracing::warn!(index, "disconnecting it: {e}");
            }
        }
    }

    fn link_event(self: &Arc<Self>, event: LinkEvent) {
        let targets: Vec<u32> = self
            .remote_disks()
            .into_iter()
            .filter(|(index, _)| match event {
                LinkEvent::Dead(dead) => *index == dead,
                // Links may have died unseen: look at every connected one
                // (a repair of a healthy device changes nothing).
                LinkEvent::Watching => nbd::connected(*index),
            })
            .map(|(index, _)| index)
            .collect();
        let seen_dead = matches!(event, LinkEvent::Dead(_));
        for index in targets {
            self.repair(index, seen_dead);
        }
    }

    /// This hostd's remote disks by device index.
    fn remote_disks(&self) -> HashMap<u32, Target> {
        lock(&self.instances)
            .values()
            .flat_map(|h| {
                let record = h.record.borrow();
                record
                    .spec
                    .remote_disks
                    .iter()
                    .map(|r| {
                        (
                            r.index,
                            Target {
                                instance: record.spec.id.clone(),
                                disk: r.id.clone(),
                                nbd: r.nbd.clone(),
                            },
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Gives `/dev/nbd{index}` fresh connections, retrying while the
    /// kernel still holds its I/O; a repair already under way runs once
    /// more instead. `seen_dead`: the kernel told of a death (otherwise
    /// this is a look, and a healthy device is no news).
    fn repair(self: &Arc<Self>, index: u32, seen_dead: bool) {
        {
            let mut repairing = lock(&self.nbd_links.repairing);
            if let Some(again) = repairing.get_mut(&index) {
                *again = true;
                return;
            }
            repairing.insert(index, false);
        }
        let sup = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + nbd::DEAD_CONNECTION_TIMEOUT;
            let mut failures = 0u32;
            loop {
                // Whose the device is now: it may have been detached.
                let Some(target) = sup.remote_disks().remove(&index) else {
                    lock(&sup.nbd_links.repairing).remove(&index);
                    return;
                };
                let backend = backend(&target.instance, &target.disk);
                let nbd = target.nbd.clone();
                let result = tokio::task::spawn_blocking(move || {
                    nbd::reconnect(index, &nbd.address, &nbd.export, &backend)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                match result {
                    Ok(()) => {
                        let again = {
                            let mut repairing = lock(&sup.nbd_links.repairing);
                            match repairing.get_mut(&index) {
                                Some(again) if *again => {
                                    *again = false;
                                    true
                                }
                                _ => {
                                    repairing.remove(&index);
                                    false
                                }
                            }
                        };
                        if !again {
                            if seen_dead || failures > 0 {
                                tracing::info!(
                                    instance = target.instance,
                                    disk = target.disk,
                                    index,
                                    failures,
                                    "remote disk connected again"
                                );
                            }
                            return;
                        }
                    }
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!(
                            instance = target.instance,
                            disk = target.disk,
                            index,
                            "remote disk lost (its I/O fails until the server starts again): {e}"
                        );
                        lock(&sup.nbd_links.repairing).remove(&index);
                        return;
                    }
                    Err(e) => {
                        if failures == 0 {
                            tracing::warn!(
                                instance = target.instance,
                                disk = target.disk,
                                index,
                                "reconnecting a remote disk, retrying: {e}"
                            );
                        }
                        failures += 1;
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        });
    }
}
