//! Writers racing on real databases (SQLite and PostgreSQL): server creates
//! against their project's quota, and the state sync against actions.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use controller::compute::quotas::Quota;
use controller::compute::servers::{Admission, Server, Servers};
use controller::store::Store;

fn server(id: &str, project: &str) -> Server {
    Server {
        id: id.into(),
        project_id: project.into(),
        user_id: "u".into(),
        name: id.into(),
        flavor_id: "f".into(),
        image_id: "i".into(),
        vcpus: 2,
        ram_mib: 512,
        disk_gib: 0,
        ephemeral_gib: 0,
        swap_mib: 0,
        config_drive: false,
        host_id: None,
        vm_state: "building".into(),
        task_state: Some("scheduling".into()),
        power_state: 0,
        fault: None,
        key_name: None,
        user_data: None,
        metadata: BTreeMap::new(),
        availability_zone: "nova".into(),
        created_at: 0,
        updated_at: 0,
        launched_at: None,
        generation: 0,
        disk_config: "MANUAL".into(),
        ..Server::default()
    }
}

/// 16 creates at once in each of two projects: one with room for 3
/// instances, one with room for 5 cores (2 servers of 2). Each project ends
/// at its limit exactly, and every refusal names the limit it hit.
async fn racing_creates(url: &str) {
    let store = Store::open(url).await.unwrap();
    let servers = Arc::new(Servers::new(store));
    let quotas = [
        (
            "by-instances",
            Quota {
                instances: 3,
                cores: -1,
                ram_mib: -1,
                key_pairs: 10,
            },
        ),
        (
            "by-cores",
            Quota {
                instances: -1,
                cores: 5,
                ram_mib: -1,
                key_pairs: 10,
            },
        ),
    ];
    let mut racers = Vec::new();
    for i in 0..16 {
        for (project, quota) in quotas {
            let servers = servers.clone();
            racers.push(tokio::spawn(async move {
                let s = server(&format!("{project}-{i}"), project);
                (project, servers.insert_within(&s, &quota).await.unwrap())
            }));
        }
    }
    let mut admitted: BTreeMap<&str, usize> = BTreeMap::new();
    for r in racers {
        match r.await.unwrap() {
            (p, Admission::Admitted) => *admitted.entry(p).or_default() += 1,
            ("by-instances", Admission::OverQuota(o)) => {
                assert_eq!((o.resource, o.limit, o.used), ("instances", 3, 3))
            }
            (_, Admission::OverQuota(o)) => {
                assert_eq!((o.resource, o.limit, o.used), ("cores", 5, 4))
            }
        }
    }
    assert_eq!(
        admitted,
        BTreeMap::from([("by-cores", 2), ("by-instances", 3)])
    );
    assert_eq!(servers.usage("by-instances").await.unwrap().instances, 3);
    assert_eq!(servers.usage("by-cores").await.unwrap().cores, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_keep_quotas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    racing_creates(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("s.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_keep_quotas_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    racing_creates(&pg.url()).await;
}
