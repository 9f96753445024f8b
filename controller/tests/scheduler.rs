//! The scheduler against real databases: filters, weighers, and atomic claims
//! under concurrency (8 placements racing for room for 5), each bound to its
//! server's row (released once, however often asked).

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use controller::compute::hosts::Hosts;
use controller::compute::scheduler::{Demand, GroupRule, PlaceError, Policy, Scheduler, Weigher};
use controller::store::{Store, Value};
use hostd_proto::Heartbeat;

fn beat(id: &str, memory_usable_mib: u64) -> Heartbeat {
    Heartbeat {
        host_id: id.into(),
        url: format!("http://{id}:8790"),
        cpus: 16,
        memory_mib: memory_usable_mib + 512,
        memory_usable_mib,
        disk_free_mib: 100_000,
        disk_total_mib: 200_000,
        vcpus_used: 0,
        memory_used_mib: 0,
        instances: 0,
        kvm_mode: "hardware".into(),
        version: "test".into(),
        booted_at: 0,
        load_average: [0.0; 3],
    }
}

fn small() -> Demand {
    Demand {
        vcpus: 1,
        ram_mib: 1024,
        disk_gib: 1,
        availability_zone: None,
        preferred_host: None,
        group: None,
    }
}

/// Where a fresh server of `demand` goes, or why nowhere.
async fn place_fresh(
    scheduler: &Scheduler,
    store: &Store,
    demand: Demand,
) -> Result<String, String> {
    let id = server(store, &uuid::Uuid::new_v4().to_string()).await;
    match scheduler.place(&id, &demand, &[]).await {
        Ok(h) => Ok(h.report.host_id),
        Err(PlaceError::NoValidHost(why)) => Err(why),
        Err(e) => panic!("{e}"),
    }
}

/// A server row of the `small` flavor, not placed yet.
async fn server(store: &Store, id: &str) -> String {
    store
        .execute(
            "INSERT INTO servers (id, project_id, user_id, name, flavor_id, image_id, vcpus, ram_mib, \
             disk_gib, vm_state, created_at, updated_at) \
             VALUES ($1, 'p', 'u', $1, 'f', 'i', 1, 1024, 1, 'building', 0, 0)",
            &[Value::Text(id)],
        )
        .await
        .unwrap();
    id.to_owned()
}

async fn racing_claims(url: &str) {
    let store = Store::open(url).await.unwrap();
    Hosts::new(store.clone())
        .heartbeat(&beat("h1", 5 * 1024))
        .await
        .unwrap();
    let sched = Arc::new(Scheduler::new(store.clone(), Policy::default()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = sched.clone();
        let id = server(&store, &format!("s{i}")).await;
        tasks.push(tokio::spawn(
            async move { s.place(&id, &small(), &[]).await },
        ));
    }
    let mut placed = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(h) => {
                assert_eq!(h.report.host_id, "h1");
                placed += 1;
            }
            Err(PlaceError::NoValidHost(why)) => {
                assert!(why.contains("h1"), "{why}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((placed, refused), (5, 3), "exactly the host's capacity");
    let placed_ids: Vec<String> = {
        let rows = store
            .fetch_all("SELECT id FROM servers WHERE host_id = 'h1'", &[])
            .await
            .unwrap();
        rows.iter()
            .map(|r| controller::store::text(r, "id").unwrap())
            .collect()
    };
    assert_eq!(placed_ids.len(), 5, "each claim names its server's host");
    // Released capacity can be claimed again, once however often it is
    // released.
    assert!(sched.release(&placed_ids[0], "h1").await.unwrap());
    assert!(!sched.release(&placed_ids[0], "h1").await.unwrap());
    assert!(!sched.release(&placed_ids[1], "elsewhere").await.unwrap());
    let again = server(&store, "again").await;
    assert!(sched.place(&again, &small(), &[]).await.is_ok());
    // A server already placed is not placed twice.
    assert!(sched.place(&again, &small(), &[]).await.is_err());
    let more = server(&store, "more").await;
    assert!(sched.place(&more, &small(), &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_never_oversubscribe_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    racing_claims(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("s.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_never_oversubscribe_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    racing_claims(&pg.url()).await;
}

#[tokio::test]
async fn filters_and_weighers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("s.db").display()
    ))
    .await
    .unwrap();
    let hosts = Hosts::new(store.clone());
    hosts.heartbeat(&beat("big", 8192)).await.unwrap();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        let store = store.clone();
        async move { server(&store, &format!("f{n}")).await }
    };
    hosts.heartbeat(&beat("small", 3072)).await.unwrap();
    let spread = Scheduler::new(store.clone(), Policy::default());
    assert_eq!(
        spread
            .place(&fresh().await, &small(), &[])
            .await
            .unwrap()
            .report
            .host_id,
        "big"
    );
    // The host of the volume it boots from goes first, whatever the
    // weigher says, while it has room (below, once full, it does not).
    let near_volume = Demand {
        preferred_host: Some("small".into()),
        ..small()
    };
    assert_eq!(
        spread
            .place(&fresh().await, &near_volume, &[])
            .await
            .unwrap()
            .report
            .host_id,
        "small"
    );
    let pack = Scheduler::new(
        store.clone(),
        Policy {
            weigher: Weigher::Pack,
            ..Policy::default()
        },
    );
    assert_eq!(
        pack.place(&fresh().await, &small(), &[])
            .await
            .unwrap()
            .report
            .host_id,
        "small"
    );
    // Excluding a host (a failed attempt) moves on to the next.
    assert_eq!(
        spread
            .place(&fresh().await, &small(), &["big".into()])
            .await
            .unwrap()
            .report
            .host_id,
        "small"
    );
    // Too big for any host.
    let huge = Demand {
        ram_mib: 1 << 20,
        ..small()
    };
    let Err(PlaceError::NoValidHost(why)) = spread.place(&fresh().await, &huge, &[]).await else {
        panic!("placed an impossible demand")
    };
    assert!(why.contains("not enough"), "{why}");
    // A root disk larger than any host's free disk.
    let wide = Demand {
        disk_gib: 1000,
        ..small()
    };
    let Err(PlaceError::NoValidHost(why)) = spread.place(&fresh().await, &wide, &[]).await else {
        panic!("placed a disk no host has room for")
    };
    assert!(why.contains("not enough free disk"), "{why}");
    // Another availability zone.
    let elsewhere = Demand {
        availability_zone: Some("zone-b".into()),
        ..small()
    };
    assert!(spread.place(&fresh().await, &elsewhere, &[]).await.is_err());
    // The volume's host full ("small" is by now), or not a host at all:
    // another takes it (and reaches the volume over NBD).
    for preferred in ["small", "nowhere"] {
        let d = Demand {
            preferred_host: Some(preferred.into()),
            ..small()
        };
        let placed = spread.place(&fresh().await, &d, &[]).await.unwrap();
        assert_eq!(placed.report.host_id, "big", "preferring {preferred}");
    }
    // Server groups, with "small" full by now: the hard policies filter,
    // the soft ones only prefer.
    let group = |policy: &str, on: &str| Demand {
        group: Some(GroupRule {
            policy: policy.into(),
            hosts: vec![on.into()],
        }),
        ..small()
    };
    assert_eq!(
        place_fresh(&spread, &store, group("affinity", "big")).await,
        Ok("big".into())
    );
    let why = place_fresh(&spread, &store, group("affinity", "small"))
        .await
        .unwrap_err();
    assert!(
        why.contains("big: not the host of its affinity group"),
        "{why}"
    );
    let why = place_fresh(&spread, &store, group("anti-affinity", "big"))
        .await
        .unwrap_err();
    assert!(
        why.contains("big: its anti-affinity group is on it"),
        "{why}"
    );
    assert_eq!(
        place_fresh(&spread, &store, group("soft-anti-affinity", "big")).await,
        Ok("big".into())
    );
    assert_eq!(
        place_fresh(&spread, &store, group("soft-affinity", "small")).await,
        Ok("big".into())
    );
    // A host without recent heartbeats is skipped.
    let strict = Scheduler::new(
        store.clone(),
        Policy {
            heartbeat_timeout_secs: -1,
            ..Policy::default()
        },
    );
    let Err(PlaceError::NoValidHost(why)) = strict.place(&fresh().await, &small(), &[]).await
    else {
        panic!("placed on a silent host")
    };
    assert!(why.contains("heartbeat"), "{why}");
}

/// The claims audit: a host whose claims differ from its servers' flavors is
/// corrected (and named); one whose claims match is left alone.
async fn recount(url: &str) {
    let store = Store::open(url).await.unwrap();
    let hosts = Hosts::new(store.clone());
    hosts.heartbeat(&beat("right", 8192)).await.unwrap();
    hosts.heartbeat(&beat("drifted", 8192)).await.unwrap();
    let sched = Scheduler::new(store.clone(), Policy::default());
    for (i, host) in ["right", "drifted", "drifted"].iter().enumerate() {
        let id = server(&store, &format!("r{i}")).await;
        let exclude: Vec<String> = ["right", "drifted"]
            .iter()
            .filter(|h| *h != host)
            .map(|h| h.to_string())
            .collect();
        assert_eq!(
            sched
                .place(&id, &small(), &exclude)
                .await
                .unwrap()
                .report
                .host_id,
            *host
        );
    }
    assert!(hosts.recount_claims().await.unwrap().is_empty());
    store
        .execute(
            "UPDATE hosts SET claimed_vcpus = 7, claimed_ram_mib = 9 WHERE id = 'drifted'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(hosts.recount_claims().await.unwrap(), ["drifted"]);
    // Listed in registration order.
    let claims: Vec<(String, i64, i64)> = hosts
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.report.host_id, h.claimed_vcpus, h.claimed_ram_mib))
        .collect();
    assert_eq!(
        claims,
        [
            ("right".to_owned(), 1, 1024),
            ("drifted".to_owned(), 2, 2048)
        ]
    );
}

#[tokio::test]
async fn claims_are_recounted_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    recount(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("s.db").display()
    ))
    .await;
}

#[tokio::test]
async fn claims_are_recounted_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    recount(&pg.url()).await;
}
