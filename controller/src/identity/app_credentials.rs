//! Application credentials: a secret a user makes so that a program can
//! act for them in one project with some of their roles there, without
//! their password. A token made with one carries only its roles (those the
//! user still holds), ends when it expires or is deleted, and, unless it is
//! `unrestricted`, cannot make further application credentials.

use base64::Engine;
use rand::RngCore;
use sqlx::Row as _;

use super::{now, password, Identity, IdentityError, Named};
use crate::store::{boolean, opt_text, text, StoreError, Value};

/// What a token made with an application credential remembers of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCredentialRef {
    pub id: String,
    pub name: String,
    pub restricted: bool,
}

/// One application credential, without its secret (shown once, at creation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCredential {
    pub id: String,
    pub user_id: String,
    pub project_id: String,
    pub name: String,
    pub description: Option<String>,
    /// Microseconds since the epoch, UTC.
    pub expires_us: Option<i64>,
    pub unrestricted: bool,
    pub roles: Vec<Named>,
}

/// What a user asks for.
#[derive(Clone, Debug, Default)]
pub struct NewAppCredential {
    pub name: String,
    pub description: Option<String>,
    /// None: one is made (and shown once).
    pub secret: Option<String>,
    pub expires_us: Option<i64>,
    pub unrestricted: bool,
    /// Roles by id or name; empty: every role the user holds in the project.
    pub roles: Vec<RoleRef>,
}

#[derive(Clone, Debug)]
pub enum RoleRef {
    Id(String),
    Name(String),
}

const NAME_MAX: usize = 255;
const COLUMNS: &str =
    "id, user_id, project_id, name, description, expires_us, unrestricted, roles, secret_hash";

fn from_row(row: &sqlx::any::AnyRow) -> Result<(AppCredential, String), IdentityError> {
    let roles: Vec<serde_json::Value> = serde_json::from_str(&text(row, "roles")?)
        .map_err(|e| IdentityError::Internal(format!("stored roles: {e}")))?;
    let roles = roles
        .iter()
        .filter_map(|r| {
            Some(Named {
                id: r.get("id")?.as_str()?.to_owned(),
                name: r.get("name")?.as_str()?.to_owned(),
            })
        })
        .collect();
    let expires_us = row
        .try_get::<Option<i64>, _>("expires_us")
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    Ok((
        AppCredential {
            id: text(row, "id")?,
            user_id: text(row, "user_id")?,
            project_id: text(row, "project_id")?,
            name: text(row, "name")?,
            description: opt_text(row, "description")?,
            expires_us,
            unrestricted: boolean(row, "unrestricted")?,
            roles,
        },
        text(row, "secret_hash")?,
    ))
}

/// 64 random bytes, URL-safe base64 without padding (Keystone's form).
fn new_secret() -> String {
    let mut bytes = [0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_us() -> i64 {
    now().saturating_mul(1_000_000)
}

impl AppCredential {
    pub fn expired(&self) -> bool {
        self.expires_us.is_some_and(|e| e <= now_us())
    }

    /// Of the roles its user holds now, those a token made with it carries.
    pub fn allowed(&self, held: Vec<Named>) -> Vec<Named> {
        held.into_iter()
            .filter(|h| self.roles.iter().any(|r| r.id == h.id))
            .collect()
    }
}

impl Identity {
    /// Makes an application credential for `user_id` in `project_id` (the
    /// project of the token asking). Returns it and its secret.
    pub async fn create_app_credential(
        &self,
        user_id: &str,
        project_id: &str,
        new: NewAppCredential,
    ) -> Result<(AppCredential, String), IdentityError> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > NAME_MAX {
            return Err(IdentityError::BadRequest(format!(
                "application_credential.name: 1 to {NAME_MAX} characters"
            )));
        }
        if new.secret.as_deref().is_some_and(str::is_empty) {
            return Err(IdentityError::BadRequest(
                "application_credential.secret: not empty".into(),
            ));
        }
        if new.expires_us.is_some_and(|e| e <= now_us()) {
            return Err(IdentityError::BadRequest(
                "application_credential.expires_at: in the past".into(),
            ));
        }
        let held = self.project_roles(user_id, project_id).await?;
        if held.is_empty() {
            return Err(IdentityError::Forbidden(format!(
                "user {user_id} has no role on project {project_id}"
            )));
        }
        let roles = if new.roles.is_empty() {
            held
        } else {
            let mut chosen: Vec<Named> = Vec::new();
            for r in &new.roles {
                let found = held.iter().find(|h| match r {
                    RoleRef::Id(id) => &h.id == id,
                    RoleRef::Name(n) => &h.name == n,
                });
                let Some(found) = found else {
                    let (RoleRef::Id(x) | RoleRef::Name(x)) = r;
                    return Err(IdentityError::BadRequest(format!(
                        "role {x} is not one the user holds on project {project_id}"
                    )));
                };
                if !chosen.contains(found) {
                    chosen.push(found.clone());
                }
            }
            chosen
        };
        let secret = new.secret.unwrap_or_else(new_secret);
        let hash = password::hash(&secret).map_err(IdentityError::Internal)?;
        let credential = AppCredential {
            id: super::new_id(),
            user_id: user_id.to_owned(),
            project_id: project_id.to_owned(),
            name: name.to_owned(),
            description: new.description,
            expires_us: new.expires_us,
            unrestricted: new.unrestricted,
            roles,
        };
        let roles_json = serde_json::Value::Array(
            credential
                .roles
                .iter()
                .map(|r| serde_json::json!({"id": r.id, "name": r.name}))
                .collect(),
        )
        .to_string();
        let inserted = self
            .store
            .execute(
                "INSERT INTO application_credentials (id, user_id, project_id, name, description, \
                 secret_hash, expires_us, unrestricted, roles, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    Value::Text(&credential.id),
                    Value::Text(user_id),
                    Value::Text(project_id),
                    Value::Text(&credential.name),
                    Value::OptText(credential.description.as_deref()),
                    Value::Text(&hash),
                    Value::OptInt(credential.expires_us),
                    Value::Bool(credential.unrestricted),
                    Value::Text(&roles_json),
                    Value::Int(now()),
                ],
            )
            .await;
        match inserted {
            Ok(_) => Ok((credential, secret)),
            Err(StoreError::Sql(sqlx::Error::Database(d))) if d.is_unique_violation() => {
                Err(IdentityError::Conflict(format!(
                    "Conflict occurred attempting to store application_credential - \
                 Duplicate entry found with name {}.",
                    credential.name
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `user_id`'s application credentials, by name if given.
    pub async fn list_app_credentials(
        &self,
        user_id: &str,
        name: Option<&str>,
    ) -> Result<Vec<AppCredential>, IdentityError> {
        let rows = match name {
            Some(n) => {
                self.store
                    .fetch_all(
                        &format!(
                            "SELECT {COLUMNS} FROM application_credentials \
                             WHERE user_id = $1 AND name = $2 ORDER BY created_at, id"
                        ),
                        &[Value::Text(user_id), Value::Text(n)],
                    )
                    .await?
            }
            None => {
                self.store
                    .fetch_all(
                        &format!(
                            "SELECT {COLUMNS} FROM application_credentials \
                             WHERE user_id = $1 ORDER BY created_at, id"
                        ),
                        &[Value::Text(user_id)],
                    )
                    .await?
            }
        };
        rows.iter().map(|r| from_row(r).map(|(c, _)| c)).collect()
    }

    /// `user_id`'s application credential `id`; None when it is not theirs.
    pub async fn get_app_credential(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<Option<AppCredential>, IdentityError> {
        Ok(self
            .fetch_app_credential(id)
            .await?
            .map(|(c, _)| c)
            .filter(|c| c.user_id == user_id))
    }

    async fn fetch_app_credential(
        &self,
        id: &str,
    ) -> Result<Option<(AppCredential, String)>, IdentityError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM application_credentials WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Deletes `user_id`'s application credential `id`, and with it every
    /// token made with it; false when there was none.
    pub async fn delete_app_credential(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<bool, IdentityError> {
        let n = self
            .store
            .execute(
                "DELETE FROM application_credentials WHERE id = $1 AND user_id = $2",
                &[Value::Text(id), Value::Text(user_id)],
            )
            .await?;
        if n > 0 {
            self.store
                .execute(
                    "UPDATE tokens SET revoked = $1 WHERE app_cred_id = $2",
                    &[Value::Bool(true), Value::Text(id)],
                )
                .await?;
        }
        Ok(n > 0)
    }

    /// The application credential a token request names (by id, or by name
    /// with its user), once its secret checks out and it has not expired.
    pub(super) async fn authenticate_app_credential(
        &self,
        by: &AppCredentialAuth,
    ) -> Result<AppCredential, IdentityError> {
        let found = match &by.credential {
            AppCredentialName::Id(id) => self.fetch_app_credential(id).await?,
            AppCredentialName::Name { name, user } => match self.find_user(user).await? {
                Some((u, _, _)) => {
                    let row = self
                        .store
                        .fetch_optional(
                            &format!(
                                "SELECT {COLUMNS} FROM application_credentials \
                                     WHERE user_id = $1 AND name = $2"
                            ),
                            &[Value::Text(&u.id), Value::Text(name)],
                        )
                        .await?;
                    row.as_ref().map(from_row).transpose()?
                }
                None => None,
            },
        };
        let Some((credential, hash)) = found else {
            let _ = password::verify(&by.secret, super::dummy_hash());
            return Err(IdentityError::Unauthorized);
        };
        if !password::verify(&by.secret, &hash) || credential.expired() {
            return Err(IdentityError::Unauthorized);
        }
        Ok(credential)
    }

    /// Application credential `id`, unless it is gone or expired: what a
    /// token made with it still stands on.
    pub(super) async fn live_app_credential(
        &self,
        id: &str,
    ) -> Result<Option<AppCredential>, IdentityError> {
        Ok(self
            .fetch_app_credential(id)
            .await?
            .map(|(c, _)| c)
            .filter(|c| !c.expired()))
    }
}

/// How a token request names an application credential.
#[derive(Clone, Debug)]
pub enum AppCredentialName {
    Id(String),
    Name { name: String, user: super::UserRef },
}

#[derive(Clone, Debug)]
pub struct AppCredentialAuth {
    pub credential: AppCredentialName,
    pub secret: String,
}

/// An `expires_at` as clients send it: RFC 3339, or a naive ISO 8601 time
/// in UTC (Python's `isoformat()`), seconds or microseconds.
pub fn parse_expiry(v: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(v, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1000).ok();
    }
    let naive = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let t = time::PrimitiveDateTime::parse(v.trim_end_matches('Z'), &naive).ok()?;
    i64::try_from(t.assume_utc().unix_timestamp_nanos() / 1000).ok()
}

/// An expiry as Keystone shows it: Python's `isoformat()` of a naive UTC
/// time (microseconds only when there are some).
pub fn format_expiry(us: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000) else {
        return String::new();
    };
    let seconds = t
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    match t.microsecond() {
        0 => seconds,
        m => format!("{seconds}.{m:06}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_round_trips_as_python_writes_it() {
        for s in [
            "2026-12-05T16:00:00.123456",
            "2026-12-05T16:00:00",
            "2030-01-01T00:00:00.000001",
        ] {
            assert_eq!(format_expiry(parse_expiry(s).unwrap()), s);
        }
        let z = parse_expiry("2026-12-05T16:00:00Z").unwrap();
        assert_eq!(parse_expiry("2026-12-05T17:00:00+01:00"), Some(z));
        assert_eq!(parse_expiry("2026-12-05T16:00:00.5Z"), Some(z + 500_000));
        assert_eq!(parse_expiry("tomorrow"), None);
        assert_eq!(parse_expiry("2026-13-05T16:00:00"), None);
    }

    #[test]
    fn secrets_are_long_and_url_safe() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 86);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
