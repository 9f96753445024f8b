//! Identity: domains, projects, users, roles and tokens (the Keystone v3 subset
//! clients use). Other APIs validate tokens here directly, not over HTTP.

pub mod app_credentials;
pub mod ec2;
pub mod password;
pub mod token;

use std::time::Duration;

use crate::store::{boolean, int, opt_text, text, Store, StoreError, Value};

pub const DEFAULT_DOMAIN_ID: &str = "default";
pub const DEFAULT_DOMAIN_NAME: &str = "Default";
/// The roles every deployment has, as `keystone-manage bootstrap` makes
/// them: immutable (the policy tables name them).
pub const ROLES: &[&str] = &["admin", "manager", "member", "reader"];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Wrong user, password, project or scope: one answer for all, so that a
    /// caller learns nothing about which part was wrong.
    #[error("The request you have made requires authentication.")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// Something a request names is not there (Keystone's 404).
    #[error("{0}")]
    NotFound(String),
    /// Allowed to no one but its owner or an admin, or not in that project.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

/// Whether `name` is one of the bootstrap [`ROLES`].
pub fn is_immutable_role(name: &str) -> bool {
    ROLES.contains(&name)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub id: String,
    pub name: String,
}

/// The identity tables the admin API lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Domains,
    Projects,
    Users,
    Roles,
}

impl Table {
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Table::Domains => ("id, name, enabled, description", "domains"),
            Table::Projects => ("id, name, domain_id, enabled, description", "projects"),
            Table::Users => ("id, name, domain_id, enabled", "users"),
            Table::Roles => ("id, name, description", "roles"),
        }
    }
}

/// What a PATCH of a project or user changes (None: unchanged).
#[derive(Clone, Debug, Default)]
pub struct EntityChange {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    /// Not users'.
    pub description: Option<String>,
    /// Users only.
    pub password: Option<String>,
}

/// A domain, project, user or role as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entity {
    pub id: String,
    pub name: String,
    pub domain_id: Option<String>,
    pub enabled: bool,
    pub description: String,
}

impl Entity {
    fn from_row(table: Table, r: &sqlx::any::AnyRow) -> Result<Entity, IdentityError> {
        Ok(Entity {
            id: text(r, "id")?,
            name: text(r, "name")?,
            domain_id: match table {
                Table::Projects | Table::Users => Some(text(r, "domain_id")?),
                _ => None,
            },
            enabled: match table {
                Table::Roles => true,
                _ => boolean(r, "enabled")?,
            },
            description: match table {
                Table::Users => String::new(),
                _ => text(r, "description")?,
            },
        })
    }
}

/// Who a token speaks for.
#[derive(Clone, Debug)]
pub struct Auth {
    pub user: Named,
    pub user_domain: Named,
    pub project: Option<(Named, Named)>,
    pub roles: Vec<Named>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub audit_id: String,
    /// The application credential the token was made with, if any.
    pub app_credential: Option<app_credentials::AppCredentialRef>,
}

impl Auth {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r.name == "admin")
    }

    pub fn project_id(&self) -> Option<&str> {
        self.project.as_ref().map(|(p, _)| p.id.as_str())
    }
}

/// How a password request names its user.
#[derive(Debug, Clone)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

#[derive(Debug, Clone)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

#[derive(Debug, Clone)]
pub enum ProjectRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A Unix time as OpenStack's APIs write it to the second: `2026-12-03T10:00:00Z`.
pub fn iso_seconds(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub struct Identity {
    store: Store,
    ttl: Duration,
}

impl Identity {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Identity { store, ttl }
    }

    /// Creates the default domain, the roles, and the admin user and project,
    /// unless the admin user exists already. Safe to run on every start.
    pub async fn bootstrap(&self, b: &crate::config::Bootstrap) -> Result<(), IdentityError> {
        let s = &self.store;
        if s.fetch_optional(
            "SELECT id FROM domains WHERE id = $1",
            &[Value::Text(DEFAULT_DOMAIN_ID)],
        )
        .await?
        .is_none()
        {
            s.execute(
                "INSERT INTO domains (id, name, enabled) VALUES ($1, $2, $3)",
                &[
                    Value::Text(DEFAULT_DOMAIN_ID),
                    Value::Text(DEFAULT_DOMAIN_NAME),
                    Value::Bool(true),
                ],
            )
            .await?;
        }
        for role in ROLES {
            if s.fetch_optional("SELECT id FROM roles WHERE name = $1", &[Value::Text(role)])
                .await?
                .is_none()
            {
                s.execute(
                    "INSERT INTO roles (id, name) VALUES ($1, $2)",
                    &[Value::Text(&new_id()), Value::Text(role)],
                )
                .await?;
            }
        }
        if self
            .find_user(&UserRef::Name {
                name: b.admin_user.clone(),
                domain: DomainRef::Id(DEFAULT_DOMAIN_ID.into()),
            })
            .await?
            .is_some()
        {
            return Ok(());
        }
        let project = self
            .create_project(&b.admin_project, DEFAULT_DOMAIN_ID)
            .await?;
        let user = self
            .create_user(&b.admin_user, DEFAULT_DOMAIN_ID, &b.admin_password)
            .await?;
        self.assign_role(&user, &project, "admin").await?;
        tracing::info!(user = %b.admin_user, project = %b.admin_project, "bootstrapped the admin identity");
        Ok(())
    }

    pub async fn create_project(
        &self,
        name: &str,
        domain_id: &str,
    ) -> Result<String, IdentityError> {
        self.create_project_with(name, domain_id, "").await
    }

    /// A new project or user needs an existing domain and a name not yet
    /// taken in it.
    async fn check_new_name(
        &self,
        table: &'static str,
        kind: &str,
        name: &str,
        domain_id: &str,
    ) -> Result<(), IdentityError> {
        if self
            .domain(&DomainRef::Id(domain_id.to_owned()))
            .await?
            .is_none()
        {
            return Err(IdentityError::NotFound(format!(
                "Could not find domain: {domain_id}."
            )));
        }
        let taken = self
            .store
            .fetch_optional(
                &format!("SELECT id FROM {table} WHERE name = $1 AND domain_id = $2"),
                &[Value::Text(name), Value::Text(domain_id)],
            )
            .await?;
        if taken.is_some() {
            return Err(IdentityError::Conflict(format!(
                "a {kind} named {name:?} exists in this domain"
            )));
        }
        Ok(())
    }

    pub async fn create_project_with(
        &self,
        name: &str,
        domain_id: &str,
        description: &str,
    ) -> Result<String, IdentityError> {
        self.check_new_name("projects", "project", name, domain_id)
            .await?;
        let id = new_id();
        self.store
            .execute(
                "INSERT INTO projects (id, name, domain_id, description, enabled) VALUES ($1, $2, $3, $4, $5)",
                &[Value::Text(&id), Value::Text(name), Value::Text(domain_id), Value::Text(description), Value::Bool(true)],
            )
            .await?;
        Ok(id)
    }

    pub async fn create_user(
        &self,
        name: &str,
        domain_id: &str,
        password: &str,
    ) -> Result<String, IdentityError> {
        self.check_new_name("users", "user", name, domain_id)
            .await?;
        let id = new_id();
        let hash = password::hash(password).map_err(IdentityError::Internal)?;
        self.store
            .execute(
                "INSERT INTO users (id, name, domain_id, password_hash, enabled) VALUES ($1, $2, $3, $4, $5)",
                &[Value::Text(&id), Value::Text(name), Value::Text(domain_id), Value::Text(&hash), Value::Bool(true)],
            )
            .await?;
        Ok(id)
    }

    /// A new role (Keystone's `POST /v3/roles`): names are unique.
    pub async fn create_role(
        &self,
        name: &str,
        description: &str,
    ) -> Result<String, IdentityError> {
        self.check_unique_name("role", name).await?;
        let id = new_id();
        self.store
            .execute(
                "INSERT INTO roles (id, name, description) VALUES ($1, $2, $3)",
                &[
                    Value::Text(&id),
                    Value::Text(name),
                    Value::Text(description),
                ],
            )
            .await?;
        Ok(id)
    }

    /// Role and domain names are unique across the deployment (`kind`:
    /// `role` or `domain`, also its table's name without the `s`).
    async fn check_unique_name(&self, kind: &str, name: &str) -> Result<(), IdentityError> {
        let taken = self
            .store
            .fetch_optional(
                &format!("SELECT id FROM {kind}s WHERE name = $1"),
                &[Value::Text(name)],
            )
            .await?;
        match taken {
            Some(_) => Err(IdentityError::Conflict(format!(
                "Conflict occurred attempting to store {kind} - Duplicate entry found with name {name}."
            ))),
            None => Ok(()),
        }
    }

    /// A new domain (Keystone's `POST /v3/domains`): names are unique.
    pub async fn create_domain(
        &self,
        name: &str,
        description: &str,
        enabled: bool,
    ) -> Result<String, IdentityError> {
        self.check_unique_name("domain", name).await?;
        let id = new_id();
        self.store
            .execute(
                "INSERT INTO domains (id, name, description, enabled) VALUES ($1, $2, $3, $4)",
                &[
                    Value::Text(&id),
                    Value::Text(name),
                    Value::Text(description),
                    Value::Bool(enabled),
                ],
            )
            .await?;
        Ok(id)
    }

    /// A domain's name, description or enabled flag; the default domain
    /// stays enabled (the bootstrap admin lives there). Disabling one ends
    /// its users' and projects' tokens at once: validation looks the domain
    /// up.
    async fn update_domain(
        &self,
        domain: &Entity,
        change: &EntityChange,
    ) -> Result<(), IdentityError> {
        if domain.id == DEFAULT_DOMAIN_ID && change.enabled == Some(false) {
            return Err(IdentityError::Forbidden(
                "You are not authorized to perform the requested action: disable the default domain."
                    .into(),
            ));
        }
        if let Some(name) = change.name.as_deref().filter(|n| *n != domain.name) {
            self.check_unique_name("domain", name).await?;
        }
        self.store
            .execute(
                "UPDATE domains SET name = $1, description = $2, enabled = $3 WHERE id = $4",
                &[
                    Value::Text(change.name.as_deref().unwrap_or(&domain.name)),
                    Value::Text(change.description.as_deref().unwrap_or(&domain.description)),
                    Value::Bool(change.enabled.unwrap_or(domain.enabled)),
                    Value::Text(&domain.id),
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes a disabled domain with its projects and users, as Keystone
    /// does (an enabled one, or the default, is refused: 403).
    async fn delete_domain(&self, id: &str) -> Result<bool, IdentityError> {
        let Some(domain) = self.get(Table::Domains, id).await? else {
            return Ok(false);
        };
        if domain.id == DEFAULT_DOMAIN_ID || domain.enabled {
            return Err(IdentityError::Forbidden(
                if domain.id == DEFAULT_DOMAIN_ID {
                    "You are not authorized to perform the requested action: delete the default domain."
                    .into()
                } else {
                    "Cannot delete a domain that is enabled, please disable it first.".into()
                },
            ));
        }
        for (table, t) in [(Table::Projects, "projects"), (Table::Users, "users")] {
            let rows = self
                .store
                .fetch_all(
                    &format!("SELECT id FROM {t} WHERE domain_id = $1"),
                    &[Value::Text(id)],
                )
                .await?;
            for r in &rows {
                Box::pin(self.delete(table, &text(r, "id")?)).await?;
            }
        }
        Ok(self
            .store
            .execute("DELETE FROM domains WHERE id = $1", &[Value::Text(id)])
            .await?
            > 0)
    }

    /// The bootstrap roles cannot be renamed or deleted: the policy tables
    /// name them (Keystone marks them `immutable`).
    fn check_mutable(&self, role: &Entity) -> Result<(), IdentityError> {
        if is_immutable_role(&role.name) {
            return Err(IdentityError::Forbidden(format!(
                "You are not authorized to perform the requested action: role {} is immutable.",
                role.name
            )));
        }
        Ok(())
    }

    /// Rows of `table`, filtered by name when given.
    pub async fn list(
        &self,
        table: Table,
        name: Option<&str>,
    ) -> Result<Vec<Entity>, IdentityError> {
        let (cols, t) = table.columns();
        let rows = match name {
            Some(n) => {
                self.store
                    .fetch_all(
                        &format!("SELECT {cols} FROM {t} WHERE name = $1 ORDER BY name"),
                        &[Value::Text(n)],
                    )
                    .await?
            }
            None => {
                self.store
                    .fetch_all(&format!("SELECT {cols} FROM {t} ORDER BY name"), &[])
                    .await?
            }
        };
        rows.iter().map(|r| Entity::from_row(table, r)).collect()
    }

    pub async fn get(&self, table: Table, id: &str) -> Result<Option<Entity>, IdentityError> {
        let (cols, t) = table.columns();
        self.store
            .fetch_optional(
                &format!("SELECT {cols} FROM {t} WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(|r| Entity::from_row(table, r))
            .transpose()
    }

    /// The enabled projects where `user_id` holds a role.
    pub async fn user_projects(&self, user_id: &str) -> Result<Vec<Entity>, IdentityError> {
        let (cols, _) = Table::Projects.columns();
        let cols: Vec<String> = cols.split(", ").map(|c| format!("p.{c}")).collect();
        self.store
            .fetch_all(
                &format!(
                    "SELECT DISTINCT {} FROM projects p JOIN role_assignments a ON a.project_id = p.id \
                     WHERE a.user_id = $1 AND p.enabled = $2 ORDER BY p.name",
                    cols.join(", ")
                ),
                &[Value::Text(user_id), Value::Bool(true)],
            )
            .await?
            .iter()
            .map(|r| Entity::from_row(Table::Projects, r))
            .collect()
    }

    /// Changes a project or user (Keystone's PATCH); false when there is
    /// none. A user whose password changes or who is disabled loses their
    /// tokens, as in Keystone.
    pub async fn update(
        &self,
        table: Table,
        id: &str,
        change: &EntityChange,
    ) -> Result<bool, IdentityError> {
        let Some(current) = self.get(table, id).await? else {
            return Ok(false);
        };
        let t = match table {
            Table::Projects => "projects",
            Table::Users => "users",
            Table::Roles => return self.update_role(&current, change).await.map(|()| true),
            Table::Domains => return self.update_domain(&current, change).await.map(|()| true),
        };
        if let Some(name) = change.name.as_deref().filter(|n| *n != current.name) {
            let kind = if table == Table::Users {
                "user"
            } else {
                "project"
            };
            let domain = current.domain_id.as_deref().unwrap_or(DEFAULT_DOMAIN_ID);
            self.check_new_name(t, kind, name, domain).await?;
        }
        let name = change.name.as_deref().unwrap_or(&current.name);
        let enabled = change.enabled.unwrap_or(current.enabled);
        self.store
            .execute(
                &format!("UPDATE {t} SET name = $1, enabled = $2 WHERE id = $3"),
                &[Value::Text(name), Value::Bool(enabled), Value::Text(id)],
            )
            .await?;
        if let (Table::Projects, Some(description)) = (table, &change.description) {
            self.store
                .execute(
                    "UPDATE projects SET description = $1 WHERE id = $2",
                    &[Value::Text(description), Value::Text(id)],
                )
                .await?;
        }
        let mut revoke = table == Table::Users && !enabled;
        if let (Table::Users, Some(password)) = (table, &change.password) {
            let hash = password::hash(password).map_err(IdentityError::Internal)?;
            self.store
                .execute(
                    "UPDATE users SET password_hash = $1 WHERE id = $2",
                    &[Value::Text(&hash), Value::Text(id)],
                )
                .await?;
            revoke = true;
        }
        if revoke {
            self.store
                .execute("DELETE FROM tokens WHERE user_id = $1", &[Value::Text(id)])
                .await?;
        }
        Ok(true)
    }

    async fn update_role(&self, role: &Entity, change: &EntityChange) -> Result<(), IdentityError> {
        self.check_mutable(role)?;
        if let Some(name) = change.name.as_deref().filter(|n| *n != role.name) {
            self.check_unique_name("role", name).await?;
        }
        self.store
            .execute(
                "UPDATE roles SET name = $1, description = $2 WHERE id = $3",
                &[
                    Value::Text(change.name.as_deref().unwrap_or(&role.name)),
                    Value::Text(change.description.as_deref().unwrap_or(&role.description)),
                    Value::Text(&role.id),
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes a project, user, role or domain with what depends on it
    /// (role assignments, a project's or user's tokens and credentials, a
    /// domain's projects and users); false when there was none.
    pub async fn delete(&self, table: Table, id: &str) -> Result<bool, IdentityError> {
        let (column, dependents): (&str, &[&str]) = match table {
            Table::Projects => (
                "project_id",
                &[
                    "role_assignments",
                    "tokens",
                    "ec2_credentials",
                    "application_credentials",
                ],
            ),
            Table::Users => (
                "user_id",
                &[
                    "role_assignments",
                    "tokens",
                    "ec2_credentials",
                    "application_credentials",
                ],
            ),
            Table::Roles => {
                let Some(role) = self.get(table, id).await? else {
                    return Ok(false);
                };
                self.check_mutable(&role)?;
                // Tokens carry no roles: they are read at validation, so a
                // deleted role's holders lose it at once.
                ("role_id", &["role_assignments"])
            }
            Table::Domains => return self.delete_domain(id).await,
        };
        // Explicit rather than ON DELETE CASCADE, which SQLite honours only
        // with its foreign-key pragma on.
        for dependent in dependents {
            self.store
                .execute(
                    &format!("DELETE FROM {dependent} WHERE {column} = $1"),
                    &[Value::Text(id)],
                )
                .await?;
        }
        let (_, t) = table.columns();
        Ok(self
            .store
            .execute(
                &format!("DELETE FROM {t} WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            > 0)
    }

    /// Grants a role (by id); granting it twice is not an error.
    pub async fn grant(
        &self,
        user_id: &str,
        project_id: &str,
        role_id: &str,
    ) -> Result<(), IdentityError> {
        if self
            .roles(user_id, project_id)
            .await?
            .iter()
            .any(|r| r.id == role_id)
        {
            return Ok(());
        }
        self.store
            .execute(
                "INSERT INTO role_assignments (user_id, project_id, role_id) VALUES ($1, $2, $3)",
                &[
                    Value::Text(user_id),
                    Value::Text(project_id),
                    Value::Text(role_id),
                ],
            )
            .await?;
        Ok(())
    }

    /// Removes a role grant; false when there was none.
    pub async fn ungrant(
        &self,
        user_id: &str,
        project_id: &str,
        role_id: &str,
    ) -> Result<bool, IdentityError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM role_assignments WHERE user_id = $1 AND project_id = $2 AND role_id = $3",
                &[Value::Text(user_id), Value::Text(project_id), Value::Text(role_id)],
            )
            .await?
            > 0)
    }

    /// The roles a user holds on a project.
    pub async fn project_roles(
        &self,
        user_id: &str,
        project_id: &str,
    ) -> Result<Vec<Named>, IdentityError> {
        self.roles(user_id, project_id).await
    }

    pub async fn assign_role(
        &self,
        user_id: &str,
        project_id: &str,
        role: &str,
    ) -> Result<(), IdentityError> {
        let row = self
            .store
            .fetch_optional("SELECT id FROM roles WHERE name = $1", &[Value::Text(role)])
            .await?
            .ok_or_else(|| IdentityError::BadRequest(format!("no role {role:?}")))?;
        let role_id = text(&row, "id")?;
        self.store
            .execute(
                "INSERT INTO role_assignments (user_id, project_id, role_id) VALUES ($1, $2, $3)",
                &[
                    Value::Text(user_id),
                    Value::Text(project_id),
                    Value::Text(&role_id),
                ],
            )
            .await?;
        Ok(())
    }

    async fn domain(&self, d: &DomainRef) -> Result<Option<Named>, IdentityError> {
        let row = match d {
            DomainRef::Id(id) => {
                self.store
                    .fetch_optional(
                        "SELECT id, name, enabled FROM domains WHERE id = $1",
                        &[Value::Text(id)],
                    )
                    .await?
            }
            DomainRef::Name(name) => {
                self.store
                    .fetch_optional(
                        "SELECT id, name, enabled FROM domains WHERE name = $1",
                        &[Value::Text(name)],
                    )
                    .await?
            }
        };
        match row {
            Some(r) if boolean(&r, "enabled")? => Ok(Some(Named {
                id: text(&r, "id")?,
                name: text(&r, "name")?,
            })),
            _ => Ok(None),
        }
    }

    /// (user, domain, password hash) of an enabled user in an enabled domain.
    async fn find_user(
        &self,
        u: &UserRef,
    ) -> Result<Option<(Named, Named, String)>, IdentityError> {
        let row = match u {
            UserRef::Id(id) => self
                .store
                .fetch_optional(
                    "SELECT id, name, domain_id, password_hash, enabled FROM users WHERE id = $1",
                    &[Value::Text(id)],
                )
                .await?,
            UserRef::Name { name, domain } => {
                let Some(d) = self.domain(domain).await? else {
                    return Ok(None);
                };
                self.store
                    .fetch_optional(
                        "SELECT id, name, domain_id, password_hash, enabled FROM users WHERE name = $1 AND domain_id = $2",
                        &[Value::Text(name), Value::Text(&d.id)],
                    )
                    .await?
            }
        };
        let Some(r) = row.filter(|r| boolean(r, "enabled").unwrap_or(false)) else {
            return Ok(None);
        };
        let Some(domain) = self.domain(&DomainRef::Id(text(&r, "domain_id")?)).await? else {
            return Ok(None);
        };
        Ok(Some((
            Named {
                id: text(&r, "id")?,
                name: text(&r, "name")?,
            },
            domain,
            text(&r, "password_hash")?,
        )))
    }

    async fn find_project(&self, p: &ProjectRef) -> Result<Option<(Named, Named)>, IdentityError> {
        let row = match p {
            ProjectRef::Id(id) => {
                self.store
                    .fetch_optional(
                        "SELECT id, name, domain_id, enabled FROM projects WHERE id = $1",
                        &[Value::Text(id)],
                    )
                    .await?
            }
            ProjectRef::Name { name, domain } => {
                let Some(d) = self.domain(domain).await? else {
                    return Ok(None);
                };
                self.store
                    .fetch_optional(
                        "SELECT id, name, domain_id, enabled FROM projects WHERE name = $1 AND domain_id = $2",
                        &[Value::Text(name), Value::Text(&d.id)],
                    )
                    .await?
            }
        };
        let Some(r) = row.filter(|r| boolean(r, "enabled").unwrap_or(false)) else {
            return Ok(None);
        };
        let Some(domain) = self.domain(&DomainRef::Id(text(&r, "domain_id")?)).await? else {
            return Ok(None);
        };
        Ok(Some((
            Named {
                id: text(&r, "id")?,
                name: text(&r, "name")?,
            },
            domain,
        )))
    }

    async fn roles(&self, user_id: &str, project_id: &str) -> Result<Vec<Named>, IdentityError> {
        let rows = self
            .store
            .fetch_all(
                "SELECT r.id AS id, r.name AS name FROM role_assignments a JOIN roles r ON r.id = a.role_id \
                 WHERE a.user_id = $1 AND a.project_id = $2 ORDER BY r.name",
                &[Value::Text(user_id), Value::Text(project_id)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Named {
                    id: text(r, "id")?,
                    name: text(r, "name")?,
                })
            })
            .collect()
    }

    /// Password authentication, optionally scoped to a project the user has a
    /// role on. Returns the new token and what it speaks for.
    pub async fn issue(
        &self,
        user: &UserRef,
        password: &str,
        project: Option<&ProjectRef>,
    ) -> Result<(String, Auth), IdentityError> {
        let Some((user, user_domain, hash)) = self.find_user(user).await? else {
            // Spend the time a hash check would, so timing does not reveal users.
            let _ = password::verify(password, dummy_hash());
            return Err(IdentityError::Unauthorized);
        };
        if !password::verify(password, &hash) {
            return Err(IdentityError::Unauthorized);
        }
        let (project, roles) = match project {
            Some(p) => {
                let Some(found) = self.find_project(p).await? else {
                    return Err(IdentityError::Unauthorized);
                };
                let roles = self.roles(&user.id, &found.0.id).await?;
                if roles.is_empty() {
                    return Err(IdentityError::Unauthorized);
                }
                (Some(found), roles)
            }
            None => (None, Vec::new()),
        };
        self.mint(
            Auth {
                user,
                user_domain,
                project,
                roles,
                issued_at: 0,
                expires_at: 0,
                audit_id: String::new(),
                app_credential: None,
            },
            None,
        )
        .await
    }

    /// Application-credential authentication: a token scoped to the
    /// credential's project with its roles (those the user still holds),
    /// ending no later than the credential.
    pub async fn issue_with_app_credential(
        &self,
        by: &app_credentials::AppCredentialAuth,
    ) -> Result<(String, Auth), IdentityError> {
        let credential = self.authenticate_app_credential(by).await?;
        let Some((user, user_domain, _)) = self
            .find_user(&UserRef::Id(credential.user_id.clone()))
            .await?
        else {
            return Err(IdentityError::Unauthorized);
        };
        let Some(project) = self
            .find_project(&ProjectRef::Id(credential.project_id.clone()))
            .await?
        else {
            return Err(IdentityError::Unauthorized);
        };
        let roles = credential.allowed(self.roles(&user.id, &project.0.id).await?);
        if roles.is_empty() {
            return Err(IdentityError::Unauthorized);
        }
        let until = credential.expires_us.map(|us| us / 1_000_000);
        self.mint(
            Auth {
                user,
                user_domain,
                project: Some(project),
                roles,
                issued_at: 0,
                expires_at: 0,
                audit_id: String::new(),
                app_credential: Some(app_credentials::AppCredentialRef {
                    id: credential.id,
                    name: credential.name,
                    restricted: !credential.unrestricted,
                }),
            },
            until,
        )
        .await
    }

    /// Stores a new token for `auth` (its times and audit id set here),
    /// expiring after the TTL or at `until`, whichever comes first.
    async fn mint(
        &self,
        mut auth: Auth,
        until: Option<i64>,
    ) -> Result<(String, Auth), IdentityError> {
        let token = token::generate();
        auth.issued_at = now();
        auth.expires_at = auth.issued_at + self.ttl.as_secs() as i64;
        if let Some(until) = until {
            auth.expires_at = auth.expires_at.min(until);
        }
        auth.audit_id = token::audit_id();
        self.store
            .execute(
                "INSERT INTO tokens (hash, user_id, project_id, issued_at, expires_at, audit_id, revoked, app_cred_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    Value::Text(&token::digest(&token)),
                    Value::Text(&auth.user.id),
                    Value::OptText(auth.project_id()),
                    Value::Int(auth.issued_at),
                    Value::Int(auth.expires_at),
                    Value::Text(&auth.audit_id),
                    Value::Bool(false),
                    Value::OptText(auth.app_credential.as_ref().map(|a| a.id.as_str())),
                ],
            )
            .await?;
        Ok((token, auth))
    }

    /// What a live token speaks for; None for unknown, expired or revoked ones
    /// (and for tokens whose user, project or role was removed since).
    pub async fn validate(&self, token: &str) -> Result<Option<Auth>, IdentityError> {
        let Some(r) = self
            .store
            .fetch_optional(
                "SELECT user_id, project_id, issued_at, expires_at, audit_id, revoked, app_cred_id FROM tokens WHERE hash = $1",
                &[Value::Text(&token::digest(token))],
            )
            .await?
        else {
            return Ok(None);
        };
        if boolean(&r, "revoked")? || int(&r, "expires_at")? <= now() {
            return Ok(None);
        }
        let Some((user, user_domain, _)) =
            self.find_user(&UserRef::Id(text(&r, "user_id")?)).await?
        else {
            return Ok(None);
        };
        let (project, roles) = match opt_text(&r, "project_id")? {
            Some(pid) => {
                let Some(found) = self.find_project(&ProjectRef::Id(pid)).await? else {
                    return Ok(None);
                };
                let roles = self.roles(&user.id, &found.0.id).await?;
                if roles.is_empty() {
                    return Ok(None);
                }
                (Some(found), roles)
            }
            None => (None, Vec::new()),
        };
        // A token made with an application credential carries only its
        // roles, and ends with it.
        let (roles, app_credential) = match opt_text(&r, "app_cred_id")? {
            None => (roles, None),
            Some(id) => {
                let Some(credential) = self.live_app_credential(&id).await? else {
                    return Ok(None);
                };
                let roles = credential.allowed(roles);
                if roles.is_empty() {
                    return Ok(None);
                }
                let reference = app_credentials::AppCredentialRef {
                    id: credential.id,
                    name: credential.name,
                    restricted: !credential.unrestricted,
                };
                (roles, Some(reference))
            }
        };
        Ok(Some(Auth {
            user,
            user_domain,
            project,
            roles,
            issued_at: int(&r, "issued_at")?,
            expires_at: int(&r, "expires_at")?,
            audit_id: text(&r, "audit_id")?,
            app_credential,
        }))
    }

    /// Revokes a token; false when there was no such live token.
    pub async fn revoke(&self, token: &str) -> Result<bool, IdentityError> {
        let n = self
            .store
            .execute(
                "UPDATE tokens SET revoked = $1 WHERE hash = $2 AND revoked = $3",
                &[
                    Value::Bool(true),
                    Value::Text(&token::digest(token)),
                    Value::Bool(false),
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// Forgets tokens that expired more than a day ago.
    pub async fn purge_expired(&self) -> Result<u64, IdentityError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM tokens WHERE expires_at < $1",
                &[Value::Int(now() - 86_400)],
            )
            .await?)
    }
}

/// A real argon2 hash, checked against for unknown users.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| password::hash(&token::generate()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bootstrap;

    async fn identity() -> (Identity, tempfile::TempDir) {
        let (dir, store) = crate::store::temp_sqlite().await;
        let id = Identity::new(store, Duration::from_secs(3600));
        id.bootstrap(&Bootstrap {
            admin_user: "admin".into(),
            admin_password: "admin-secret".into(),
            admin_project: "admin".into(),
        })
        .await
        .unwrap();
        (id, dir)
    }

    fn admin() -> UserRef {
        UserRef::Name {
            name: "admin".into(),
            domain: DomainRef::Name("Default".into()),
        }
    }

    fn admin_project() -> ProjectRef {
        ProjectRef::Name {
            name: "admin".into(),
            domain: DomainRef::Id("default".into()),
        }
    }

    #[tokio::test]
    async fn issue_validate_revoke() {
        let (id, _dir) = identity().await;
        let (token, auth) = id
            .issue(&admin(), "admin-secret", Some(&admin_project()))
            .await
            .unwrap();
        assert!(auth.is_admin());
        assert_eq!(auth.project.as_ref().unwrap().0.name, "admin");
        let seen = id.validate(&token).await.unwrap().unwrap();
        assert_eq!(seen.user.id, auth.user.id);
        assert_eq!(seen.roles, auth.roles);
        assert!(id.revoke(&token).await.unwrap());
        assert!(id.validate(&token).await.unwrap().is_none());
        assert!(!id.revoke(&token).await.unwrap());
        assert!(id.validate("made-up").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wrong_credentials_and_scopes_are_refused_alike() {
        let (id, _dir) = identity().await;
        for (user, pw, project) in [
            (admin(), "wrong", Some(admin_project())),
            (
                UserRef::Name {
                    name: "nobody".into(),
                    domain: DomainRef::Name("Default".into()),
                },
                "admin-secret",
                None,
            ),
            (
                UserRef::Name {
                    name: "admin".into(),
                    domain: DomainRef::Name("Elsewhere".into()),
                },
                "admin-secret",
                None,
            ),
            (admin(), "admin-secret", Some(ProjectRef::Id("nope".into()))),
        ] {
            assert!(matches!(
                id.issue(&user, pw, project.as_ref()).await,
                Err(IdentityError::Unauthorized)
            ));
        }
        // A project the user has no role on.
        let other = id.create_project("other", DEFAULT_DOMAIN_ID).await.unwrap();
        assert!(matches!(
            id.issue(&admin(), "admin-secret", Some(&ProjectRef::Id(other)))
                .await,
            Err(IdentityError::Unauthorized)
        ));
        // Unscoped works and carries no roles.
        let (_, auth) = id.issue(&admin(), "admin-secret", None).await.unwrap();
        assert!(auth.project.is_none() && auth.roles.is_empty());
    }

    #[tokio::test]
    async fn bootstrap_is_idempotent() {
        let (id, _dir) = identity().await;
        id.bootstrap(&Bootstrap {
            admin_user: "admin".into(),
            admin_password: "a-different-password".into(),
            admin_project: "admin".into(),
        })
        .await
        .unwrap();
        // The first password still holds: bootstrap does not reset it.
        assert!(id.issue(&admin(), "admin-secret", None).await.is_ok());
    }
}
