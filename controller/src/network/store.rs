//! The network service's SQL. Resources are stored as their documents
//! (`model`), with the columns that constraints and lookups need beside
//! them (`migrations/0015_networks.sql`). Every change that must hold
//! together (a port and its addresses, a group and its rules, a delete and
//! its in-use check) is one transaction; an update names the revision it
//! read and loses to a concurrent one rather than overwriting it.

use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::{
    Network, NetworkQuota, Port, SecurityGroup, SecurityGroupRule, Standard, Subnet,
};
use crate::store::{int, text, Step, Store, StoreError, Value};

mod l3;

pub struct NetworkStore {
    store: Store,
}

/// Whether an error is a unique constraint refusing a row.
pub fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sql(sqlx::Error::Database(d)) if d.is_unique_violation())
}

fn doc<T: DeserializeOwned>(row: &sqlx::any::AnyRow) -> Result<T, StoreError> {
    let body = text(row, "body")?;
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("a network record: {e}")))
}

fn body<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// What became of a delete that checks its resource is unused.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    InUse,
    NotFound,
}

impl NetworkStore {
    pub fn new(store: Store) -> Self {
        NetworkStore { store }
    }

    async fn docs<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Vec<T>, StoreError> {
        self.store
            .fetch_all(sql, args)
            .await?
            .iter()
            .map(doc)
            .collect()
    }

    async fn one<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Option<T>, StoreError> {
        self.store
            .fetch_optional(sql, args)
            .await?
            .as_ref()
            .map(doc)
            .transpose()
    }

    async fn count(&self, sql: &str, args: &[Value<'_>]) -> Result<i64, StoreError> {
        match self.store.fetch_optional(sql, args).await? {
            Some(row) => int(&row, "n"),
            None => Ok(0),
        }
    }

    /// Replaces the document of `table`'s row `std.id` if its revision is
    /// still `read` (the one the update was made from); false if not.
    async fn replace<T: Serialize>(
        &self,
        table: &str,
        std: &Standard,
        value: &T,
        read: i64,
    ) -> Result<bool, StoreError> {
        let doc = body(value)?;
        let sql =
            format!("UPDATE {table} SET body = $1, revision = $2 WHERE id = $3 AND revision = $4");
        self.store
            .atomically(&[Step {
                sql: &sql,
                args: &[
                    Value::Text(&doc),
                    Value::Int(std.revision_number),
                    Value::Text(&std.id),
                    Value::Int(read),
                ],
                rows: Some(1),
            }])
            .await
    }

    // --- networks

    /// Stores a new network under the lowest free VXLAN id from `first_vni`.
    pub async fn create_network(
        &self,
        net: &mut Network,
        first_vni: i64,
    ) -> Result<(), StoreError> {
        for _ in 0..16 {
            let row = self
                .store
                .fetch_optional("SELECT MAX(vni) AS n FROM networks", &[])
                .await?;
            let highest = row
                .and_then(|r| sqlx::Row::try_get::<Option<i64>, _>(&r, "n").ok().flatten())
                .unwrap_or(first_vni - 1);
            net.vni = highest.max(first_vni - 1) + 1;
            let doc = body(net)?;
            match self
                .store
                .execute(
                    "INSERT INTO networks (id, project_id, vni, revision, body) VALUES ($1, $2, $3, $4, $5)",
                    &[
                        Value::Text(&net.std.id),
                        Value::Text(&net.std.project_id),
                        Value::Int(net.vni),
                        Value::Int(net.std.revision_number),
                        Value::Text(&doc),
                    ],
                )
                .await
            {
                // Another create took this id: take the next.
                Err(e) if is_unique_violation(&e) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(StoreError::Conflict(
            "too many concurrent network creates; try again".into(),
        ))
    }

    pub async fn network(&self, id: &str) -> Result<Option<Network>, StoreError> {
        self.one(
            "SELECT body FROM networks WHERE id = $1",
            &[Value::Text(id)],
        )
        .await
    }

    pub async fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.docs("SELECT body FROM networks ORDER BY vni", &[])
            .await
    }

    /// Replaces a network read at revision `read`; false if it changed since.
    pub async fn update_network(&self, net: &Network, read: i64) -> Result<bool, StoreError> {
        self.replace("networks", &net.std, net, read).await
    }

    /// Deletes a network and its subnets, unless a port is still on it.
    pub async fn delete_network(&self, id: &str) -> Result<Deleted, StoreError> {
        let args = [Value::Text(id)];
        let done = self
            .store
            .atomically(&[
                Step {
                    sql: "DELETE FROM subnets WHERE network_id = $1 \
                          AND NOT EXISTS (SELECT 1 FROM ports WHERE network_id = $1)",
                    args: &args,
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM networks WHERE id = $1 \
                          AND NOT EXISTS (SELECT 1 FROM ports WHERE network_id = $1)",
                    args: &args,
                    rows: Some(1),
                },
            ])
            .await?;
        Ok(match done {
            true => Deleted::Yes,
            false if self.network(id).await?.is_some() => Deleted::InUse,
            false => Deleted::NotFound,
        })
    }

    // --- subnets

    pub async fn create_subnet(&self, subnet: &Subnet) -> Result<(), StoreError> {
        let doc = body(subnet)?;
        self.store
            .execute(
                "INSERT INTO subnets (id, network_id, project_id, revision, body) VALUES ($1, $2, $3, $4, $5)",
                &[
                    Value::Text(&subnet.std.id),
                    Value::Text(&subnet.network_id),
                    Value::Text(&subnet.std.project_id),
                    Value::Int(subnet.std.revision_number),
                    Value::Text(&doc),
                ],
            )
            .await
            .map(|_| ())
    }

    pub async fn subnet(&self, id: &str) -> Result<Option<Subnet>, StoreError> {
        self.one("SELECT body FROM subnets WHERE id = $1", &[Value::Text(id)])
            .await
    }

    pub async fn subnets(&self) -> Result<Vec<Subnet>, StoreError> {
        self.docs("SELECT body FROM subnets ORDER BY id", &[]).await
    }

    pub async fn subnets_of(&self, network_id: &str) -> Result<Vec<Subnet>, StoreError> {
        self.docs(
            "SELECT body FROM subnets WHERE network_id = $1 ORDER BY id",
            &[Value::Text(network_id)],
        )
        .await
    }

    pub async fn update_subnet(&self, subnet: &Subnet, read: i64) -> Result<bool, StoreError> {
        self.replace("subnets", &subnet.std, subnet, read).await
    }

    /// Deletes a subnet unless a port still has an address on it.
    pub async fn delete_subnet(&self, id: &str) -> Result<Deleted, StoreError> {
        let done = self
            .store
            .atomically(&[Step {
                sql: "DELETE FROM subnets WHERE id = $1 \
                      AND NOT EXISTS (SELECT 1 FROM ip_allocations WHERE subnet_id = $1)",
                args: &[Value::Text(id)],
                rows: Some(1),
            }])
            .await?;
        Ok(match done {
            true => Deleted::Yes,
            false if self.subnet(id).await?.is_some() => Deleted::InUse,
            false => Deleted::NotFound,
        })
    }

    /// The addresses ports hold on a subnet.
    pub async fn allocated(&self, subnet_id: &str) -> Result<Vec<Ipv4Addr>, StoreError> {
        self.store
            .fetch_all(
                "SELECT ip_address FROM ip_allocations WHERE subnet_id = $1",
                &[Value::Text(subnet_id)],
            )
            .await?
            .iter()
            .map(|r| {
                text(r, "ip_address")?
                    .parse()
                    .map_err(|_| StoreError::Corrupt("an allocated address".into()))
            })
            .collect()
    }

    // --- ports

    /// Stores a new port with its addresses and groups. A unique violation
    /// (an address or MAC taken meanwhile) comes back as the error, for the
    /// caller to choose again.
    pub async fn create_port(&self, port: &Port) -> Result<(), StoreError> {
        let doc = body(port)?;
        let rev = port.std.revision_number;
        let mut steps = vec![Step {
            sql: "INSERT INTO ports (id, network_id, project_id, mac_address, device_id, host_id, revision, body, device_owner) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            args: &[],
            rows: Some(1),
        }];
        let port_args = [
            Value::Text(&port.std.id),
            Value::Text(&port.network_id),
            Value::Text(&port.std.project_id),
            Value::Text(&port.mac_address),
            Value::Text(&port.device_id),
            Value::Text(&port.host_id),
            Value::Int(rev),
            Value::Text(&doc),
            Value::Text(&port.device_owner),
        ];
        steps[0].args = &port_args;
        let ips: Vec<String> = port
            .fixed_ips
            .iter()
            .map(|f| f.ip_address.to_string())
            .collect();
        let ip_args: Vec<[Value; 4]> = port
            .fixed_ips
            .iter()
            .zip(&ips)
            .map(|(f, ip)| {
                [
                    Value::Text(&f.subnet_id),
                    Value::Text(ip),
                    Value::Text(&port.std.id),
                    Value::Text(&port.network_id),
                ]
            })
            .collect();
        for a in &ip_args {
            steps.push(Step {
                sql: "INSERT INTO ip_allocations (subnet_id, ip_address, port_id, network_id) VALUES ($1, $2, $3, $4)",
                args: a,
                rows: Some(1),
            });
        }
        let sg_args: Vec<[Value; 2]> = port
            .security_groups
            .iter()
            .map(|g| [Value::Text(&port.std.id), Value::Text(g)])
            .collect();
        for a in &sg_args {
            steps.push(Step {
                sql:
                    "INSERT INTO port_security_groups (port_id, security_group_id) VALUES ($1, $2)",
                args: a,
                rows: Some(1),
            });
        }
        // Every step's row count holds unless an insert errs.
        self.store.atomically(&steps).await.map(|_| ())
    }

    pub async fn port(&self, id: &str) -> Result<Option<Port>, StoreError> {
        self.one("SELECT body FROM ports WHERE id = $1", &[Value::Text(id)])
            .await
    }

    pub async fn ports(&self) -> Result<Vec<Port>, StoreError> {
        self.docs("SELECT body FROM ports ORDER BY id", &[]).await
    }

    pub async fn ports_of_device(&self, device_id: &str) -> Result<Vec<Port>, StoreError> {
        self.docs(
            "SELECT body FROM ports WHERE device_id = $1 ORDER BY id",
            &[Value::Text(device_id)],
        )
        .await
    }

    /// Replaces a port read at revision `read` (`old`), moving its addresses
    /// and groups to the new ones; false if it changed since. A unique
    /// violation means an address was taken meanwhile.
    pub async fn update_port(&self, port: &Port, old: &Port) -> Result<bool, StoreError> {
        let doc = body(port)?;
        let id = port.std.id.as_str();
        let head = [
            Value::Text(&doc),
            Value::Int(port.std.revision_number),
            Value::Text(&port.device_id),
            Value::Text(&port.host_id),
            Value::Text(id),
            Value::Int(old.std.revision_number),
            Value::Text(&port.device_owner),
        ];
        let mut steps = vec![Step {
            sql: "UPDATE ports SET body = $1, revision = $2, device_id = $3, host_id = $4, device_owner = $7 \
                  WHERE id = $5 AND revision = $6",
            args: &head,
            rows: Some(1),
        }];
        let ids = [Value::Text(id)];
        let addresses_change = port.fixed_ips != old.fixed_ips;
        let ips: Vec<String> = port
            .fixed_ips
            .iter()
            .map(|f| f.ip_address.to_string())
            .collect();
        let ip_args: Vec<[Value; 4]> = port
            .fixed_ips
            .iter()
            .zip(&ips)
            .map(|(f, ip)| {
                [
                    Value::Text(&f.subnet_id),
                    Value::Text(ip),
                    Value::Text(id),
                    Value::Text(&port.network_id),
                ]
            })
            .collect();
        if addresses_change {
            steps.push(Step {
                sql: "DELETE FROM ip_allocations WHERE port_id = $1",
                args: &ids,
                rows: None,
            });
            for a in &ip_args {
                steps.push(Step {
                    sql: "INSERT INTO ip_allocations (subnet_id, ip_address, port_id, network_id) VALUES ($1, $2, $3, $4)",
                    args: a,
                    rows: Some(1),
                });
            }
        }
        let sg_args: Vec<[Value; 2]> = port
            .security_groups
            .iter()
            .map(|g| [Value::Text(id), Value::Text(g)])
            .collect();
        if port.security_groups != old.security_groups {
            steps.push(Step {
                sql: "DELETE FROM port_security_groups WHERE port_id = $1",
                args: &ids,
                rows: None,
            });
            for a in &sg_args {
                steps.push(Step {
                    sql: "INSERT INTO port_security_groups (port_id, security_group_id) VALUES ($1, $2)",
                    args: a,
                    rows: Some(1),
                });
            }
        }
        self.store.atomically(&steps).await
    }

    pub async fn delete_port(&self, id: &str) -> Result<bool, StoreError> {
        let args = [Value::Text(id)];
        self.store
            .atomically(&[
                Step {
                    sql: "DELETE FROM ip_allocations WHERE port_id = $1",
                    args: &args,
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM port_security_groups WHERE port_id = $1",
                    args: &args,
                    rows: None,
                },
                // Neutron disassociates a deleted port's floating IPs.
                Step {
                    sql: "UPDATE floating_ips SET port_id = NULL, fixed_ip_address = NULL, \
                          router_id = NULL, status = 'DOWN' WHERE port_id = $1",
                    args: &args,
                    rows: None,
                },
                Step {
                    sql: "DELETE FROM ports WHERE id = $1",
                    args: &args,
                    rows: Some(1),
                },
            ])
            .await
    }

    /// The ports bound to a host.
    pub async fn ports_on_host(&self, host_id: &str) -> Result<Vec<Port>, StoreError> {
        self.docs(
            "SELECT body FROM ports WHERE host_id = $1 ORDER BY id",
            &[Value::Text(host_id)],
        )
        .await
    }

    /// The ports of a network that are bound to some host.
    pub async fn bound_ports_of_network(&self, network_id: &str) -> Result<Vec<Port>, StoreError> {
        self.docs(
            "SELECT body FROM ports WHERE network_id = $1 AND host_id <> '' ORDER BY id",
            &[Value::Text(network_id)],
        )
        .await
    }

    /// The ports in a security group.
    pub async fn ports_in_group(&self, group_id: &str) -> Result<Vec<Port>, StoreError> {
        self.docs(
            "SELECT p.body FROM ports p JOIN port_security_groups g ON g.port_id = p.id \
             WHERE g.security_group_id = $1 ORDER BY p.id",
            &[Value::Text(group_id)],
        )
        .await
    }

    // --- network agents (each host's netd)

    /// Records a host's tunnel endpoint as of `now`.
    pub async fn record_agent(
        &self,
        host_id: &str,
        vtep: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.store
            .execute(
                "INSERT INTO network_agents (host_id, vtep, last_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (host_id) DO UPDATE SET vtep = excluded.vtep, last_seen = excluded.last_seen",
                &[Value::Text(host_id), Value::Text(vtep), Value::Int(now)],
            )
            .await
            .map(|_| ())
    }

    /// Every host's tunnel endpoint, as (host, VTEP).
    pub async fn agents(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.store
            .fetch_all(
                "SELECT host_id, vtep FROM network_agents ORDER BY host_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((text(r, "host_id")?, text(r, "vtep")?)))
            .collect()
    }

    // --- security groups

    /// Stores a group with its first rules; `default_for` names the project
    /// whose default group it is (a second default loses to the first).
    pub async fn create_security_group(
        &self,
        group: &SecurityGroup,
        default_for: Option<&str>,
        rules: &[SecurityGroupRule],
    ) -> Result<(), StoreError> {
        let doc = body(group)?;
        let head = [
            Value::Text(&group.std.id),
            Value::Text(&group.std.project_id),
            Value::OptText(default_for),
            Value::Int(group.std.revision_number),
            Value::Text(&doc),
        ];
        let mut steps = vec![Step {
            sql: "INSERT INTO security_groups (id, project_id, default_for, revision, body) VALUES ($1, $2, $3, $4, $5)",
            args: &head,
            rows: Some(1),
        }];
        let rule_rows = rule_rows(rules)?;
        let rule_args: Vec<[Value; 6]> = rule_rows.iter().map(RuleRow::args).collect();
        for a in &rule_args {
            steps.push(Step {
                sql: INSERT_RULE,
                args: a,
                rows: Some(1),
            });
        }
        self.store.atomically(&steps).await.map(|_| ())
    }

    pub async fn security_group(&self, id: &str) -> Result<Option<SecurityGroup>, StoreError> {
        self.one(
            "SELECT body FROM security_groups WHERE id = $1",
            &[Value::Text(id)],
        )
        .await
    }

    pub async fn security_groups(&self) -> Result<Vec<SecurityGroup>, StoreError> {
        self.docs("SELECT body FROM security_groups ORDER BY id", &[])
            .await
    }

    pub async fn default_security_group(
        &self,
        project: &str,
    ) -> Result<Option<SecurityGroup>, StoreError> {
        self.one(
            "SELECT body FROM security_groups WHERE default_for = $1",
            &[Value::Text(project)],
        )
        .await
    }

    pub async fn update_security_group(
        &self,
        group: &SecurityGroup,
        read: i64,
    ) -> Result<bool, StoreError> {
        self.replace("security_groups", &group.std, group, read)
            .await
    }

    /// Deletes a group, its rules and the rules of other groups naming it as
    /// their remote (as Neutron cascades them), unless a port uses it.
    pub async fn delete_security_group(&self, id: &str) -> Result<Deleted, StoreError> {
        let args = [Value::Text(id)];
        let unused = "NOT EXISTS (SELECT 1 FROM port_security_groups WHERE security_group_id = $1)";
        let rules = format!(
            "DELETE FROM security_group_rules WHERE (security_group_id = $1 OR remote_group_id = $1) AND {unused}"
        );
        let group = format!("DELETE FROM security_groups WHERE id = $1 AND {unused}");
        let done = self
            .store
            .atomically(&[
                Step {
                    sql: &rules,
                    args: &args,
                    rows: None,
                },
                Step {
                    sql: &group,
                    args: &args,
                    rows: Some(1),
                },
            ])
            .await?;
        Ok(match done {
            true => Deleted::Yes,
            false if self.security_group(id).await?.is_some() => Deleted::InUse,
            false => Deleted::NotFound,
        })
    }

    // --- security group rules

    /// Stores a rule; a unique violation means the same rule exists.
    pub async fn create_rule(&self, rule: &SecurityGroupRule) -> Result<(), StoreError> {
        let rows = rule_rows(std::slice::from_ref(rule))?;
        let args: Vec<[Value; 6]> = rows.iter().map(RuleRow::args).collect();
        for a in &args {
            self.store.execute(INSERT_RULE, a).await?;
        }
        Ok(())
    }

    /// The rule of `group` that is the same as `rule`, if one exists.
    pub async fn same_rule(
        &self,
        rule: &SecurityGroupRule,
    ) -> Result<Option<SecurityGroupRule>, StoreError> {
        self.one(
            "SELECT body FROM security_group_rules WHERE security_group_id = $1 AND fingerprint = $2",
            &[
                Value::Text(&rule.security_group_id),
                Value::Text(&rule.fingerprint()),
            ],
        )
        .await
    }

    pub async fn rule(&self, id: &str) -> Result<Option<SecurityGroupRule>, StoreError> {
        self.one(
            "SELECT body FROM security_group_rules WHERE id = $1",
            &[Value::Text(id)],
        )
        .await
    }

    pub async fn rules(&self) -> Result<Vec<SecurityGroupRule>, StoreError> {
        self.docs(
            "SELECT body FROM security_group_rules ORDER BY security_group_id, id",
            &[],
        )
        .await
    }

    pub async fn rules_of(&self, group: &str) -> Result<Vec<SecurityGroupRule>, StoreError> {
        self.docs(
            "SELECT body FROM security_group_rules WHERE security_group_id = $1 ORDER BY id",
            &[Value::Text(group)],
        )
        .await
    }

    pub async fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM security_group_rules WHERE id = $1",
                &[Value::Text(id)],
            )
            .await?
            > 0)
    }

    // --- quotas and usage

    pub async fn quota(&self, project: &str) -> Result<Option<NetworkQuota>, StoreError> {
        self.one(
            "SELECT body FROM network_quotas WHERE project_id = $1",
            &[Value::Text(project)],
        )
        .await
    }

    pub async fn quotas(&self) -> Result<Vec<(String, NetworkQuota)>, StoreError> {
        self.store
            .fetch_all(
                "SELECT project_id, body FROM network_quotas ORDER BY project_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((text(r, "project_id")?, doc(r)?)))
            .collect()
    }

    pub async fn set_quota(&self, project: &str, q: &NetworkQuota) -> Result<(), StoreError> {
        let doc = body(q)?;
        self.store
            .atomically(&[
                Step {
                    sql: "DELETE FROM network_quotas WHERE project_id = $1",
                    args: &[Value::Text(project)],
                    rows: None,
                },
                Step {
                    sql: "INSERT INTO network_quotas (project_id, body) VALUES ($1, $2)",
                    args: &[Value::Text(project), Value::Text(&doc)],
                    rows: Some(1),
                },
            ])
            .await
            .map(|_| ())
    }

    pub async fn delete_quota(&self, project: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "DELETE FROM network_quotas WHERE project_id = $1",
                &[Value::Text(project)],
            )
            .await
            .map(|_| ())
    }

    /// How many of `resource` a project has.
    pub async fn usage(&self, project: &str, resource: &str) -> Result<i64, StoreError> {
        let table = match resource {
            "network" => "networks",
            "subnet" => "subnets",
            "port" => "ports",
            "security_group" => "security_groups",
            "security_group_rule" => "security_group_rules",
            "router" => "routers",
            "floatingip" => "floating_ips",
            _ => return Ok(0),
        };
        self.count(
            &format!("SELECT COUNT(*) AS n FROM {table} WHERE project_id = $1"),
            &[Value::Text(project)],
        )
        .await
    }
}

const INSERT_RULE: &str = "INSERT INTO security_group_rules \
    (id, security_group_id, project_id, fingerprint, remote_group_id, body) VALUES ($1, $2, $3, $4, $5, $6)";

/// A rule's row, its text owned so the arguments can borrow it.
struct RuleRow<'a> {
    rule: &'a SecurityGroupRule,
    fingerprint: String,
    body: String,
}

impl RuleRow<'_> {
    fn args(&self) -> [Value<'_>; 6] {
        [
            Value::Text(&self.rule.id),
            Value::Text(&self.rule.security_group_id),
            Value::Text(&self.rule.project_id),
            Value::Text(&self.fingerprint),
            Value::OptText(self.rule.remote_group_id.as_deref()),
            Value::Text(&self.body),
        ]
    }
}

fn rule_rows(rules: &[SecurityGroupRule]) -> Result<Vec<RuleRow<'_>>, StoreError> {
    rules
        .iter()
        .map(|rule| {
            Ok(RuleRow {
                rule,
                fingerprint: rule.fingerprint(),
                body: body(rule)?,
            })
        })
        .collect()
}
