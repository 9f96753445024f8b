//! Usage over a period (Nova's os-simple-tenant-usage): for each project,
//! the hours each of its servers ran within the period and, weighted by
//! them, the vCPUs, RAM and local disk it held. Deleted servers count for
//! the time they ran. Pure arithmetic over the servers store's records.

use std::collections::BTreeMap;

use crate::compute::servers::UsageRecord;

/// One project's usage in a period.
#[derive(Debug, PartialEq)]
pub struct ProjectUsage {
    pub project_id: String,
    pub total_hours: f64,
    pub vcpu_hours: f64,
    pub ram_mib_hours: f64,
    pub local_gib_hours: f64,
    /// Each server that ran in the period, with its hours in it.
    pub servers: Vec<(UsageRecord, f64)>,
}

/// The hours of `[start, stop)` that server `r` ran.
pub fn hours(r: &UsageRecord, start: i64, stop: i64) -> f64 {
    let from = r.launched_at.max(start);
    let to = r.terminated_at.unwrap_or(stop).min(stop);
    (to - from).max(0) as f64 / 3600.0
}

/// `records` summed per project (sorted by project, servers by id).
pub fn by_project(records: Vec<UsageRecord>, start: i64, stop: i64) -> Vec<ProjectUsage> {
    let mut projects: BTreeMap<String, ProjectUsage> = BTreeMap::new();
    for r in records {
        let h = hours(&r, start, stop);
        let p = projects
            .entry(r.project_id.clone())
            .or_insert_with(|| ProjectUsage {
                project_id: r.project_id.clone(),
                total_hours: 0.0,
                vcpu_hours: 0.0,
                ram_mib_hours: 0.0,
                local_gib_hours: 0.0,
                servers: Vec::new(),
            });
        p.total_hours += h;
        p.vcpu_hours += r.vcpus as f64 * h;
        p.ram_mib_hours += r.ram_mib as f64 * h;
        p.local_gib_hours += r.local_gib as f64 * h;
        p.servers.push((r, h));
    }
    let mut list: Vec<ProjectUsage> = projects.into_values().collect();
    for p in &mut list {
        p.servers.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, project: &str, launched: i64, terminated: Option<i64>) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            project_id: project.into(),
            name: id.into(),
            flavor_name: "small".into(),
            vcpus: 2,
            ram_mib: 512,
            local_gib: 10,
            launched_at: launched,
            terminated_at: terminated,
            state: if terminated.is_some() {
                "terminated"
            } else {
                "active"
            }
            .into(),
        }
    }

    #[test]
    fn only_the_hours_inside_the_period_count() {
        let (start, stop) = (3600, 4 * 3600);
        // Launched before the period, alive: the whole period.
        assert_eq!(hours(&record("a", "p", 0, None), start, stop), 3.0);
        // Launched inside, deleted inside.
        assert_eq!(hours(&record("b", "p", 7200, Some(9000)), start, stop), 0.5);
        // Deleted before the period began, launched after it ended.
        assert_eq!(hours(&record("c", "p", 0, Some(1800)), start, stop), 0.0);
        assert_eq!(hours(&record("d", "p", 5 * 3600, None), start, stop), 0.0);
    }

    #[test]
    fn projects_sum_their_servers_weighted_by_hours() {
        let usage = by_project(
            vec![
                record("z", "p1", 0, None),
                record("a", "p1", 7200, Some(9000)),
                record("m", "p2", 0, Some(3600 + 1800)),
            ],
            3600,
            4 * 3600,
        );
        assert_eq!(usage.len(), 2);
        let p1 = &usage[0];
        assert_eq!(p1.project_id, "p1");
        assert_eq!(p1.total_hours, 3.5);
        assert_eq!(p1.vcpu_hours, 7.0);
        assert_eq!(p1.ram_mib_hours, 512.0 * 3.5);
        assert_eq!(p1.local_gib_hours, 35.0);
        let ids: Vec<&str> = p1.servers.iter().map(|(r, _)| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "z"]);
        assert_eq!(usage[1].total_hours, 0.5);
    }
}
