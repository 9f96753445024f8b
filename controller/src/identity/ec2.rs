//! EC2-style credentials (Keystone's `OS-EC2`): an access key and a secret
//! for one user in one project, made by the user. S3 clients sign requests
//! with them; storaged verifies a signature by asking for the one key it
//! names ([`Identity::ec2_signer`]), so no service holds every secret.

use rand::RngCore;

use super::{now, Identity, IdentityError};
use crate::store::{text, Value};

/// One credential as its owner sees it (the secret included: Keystone
/// shows it on every read to its owner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Credential {
    pub access: String,
    pub secret: String,
    pub user_id: String,
    pub project_id: String,
}

/// Who signs with an access key, for a service verifying a signature:
/// the credential, if its user may still act in its project.
pub type Ec2Signer = Ec2Credential;

/// 32 hex digits from the OS's CSPRNG (what Keystone's keys look like).
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const COLUMNS: &str = "access, secret, user_id, project_id";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Ec2Credential, IdentityError> {
    Ok(Ec2Credential {
        access: text(row, "access")?,
        secret: text(row, "secret")?,
        user_id: text(row, "user_id")?,
        project_id: text(row, "project_id")?,
    })
}

impl Identity {
    /// Makes a credential for `user_id` in `project_id`, where the user
    /// holds a role (Keystone refuses one elsewhere).
    pub async fn create_ec2(
        &self,
        user_id: &str,
        project_id: &str,
    ) -> Result<Ec2Credential, IdentityError> {
        if self.project_roles(user_id, project_id).await?.is_empty() {
            return Err(IdentityError::Forbidden(format!(
                "user {user_id} has no role on project {project_id}"
            )));
        }
        let credential = Ec2Credential {
            access: random_hex(),
            secret: random_hex(),
            user_id: user_id.to_owned(),
            project_id: project_id.to_owned(),
        };
        self.store
            .execute(
                "INSERT INTO ec2_credentials (access, secret, user_id, project_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    Value::Text(&credential.access),
                    Value::Text(&credential.secret),
                    Value::Text(user_id),
                    Value::Text(project_id),
                    Value::Int(now()),
                ],
            )
            .await?;
        Ok(credential)
    }

    pub async fn list_ec2(&self, user_id: &str) -> Result<Vec<Ec2Credential>, IdentityError> {
        self.store
            .fetch_all(
                &format!(
                    "SELECT {COLUMNS} FROM ec2_credentials WHERE user_id = $1 ORDER BY created_at, access"
                ),
                &[Value::Text(user_id)],
            )
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// `user_id`'s credential `access`; None when it is someone else's.
    pub async fn get_ec2(
        &self,
        user_id: &str,
        access: &str,
    ) -> Result<Option<Ec2Credential>, IdentityError> {
        self.store
            .fetch_optional(
                &format!(
                    "SELECT {COLUMNS} FROM ec2_credentials WHERE access = $1 AND user_id = $2"
                ),
                &[Value::Text(access), Value::Text(user_id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Deletes `user_id`'s credential `access`; false when there was none.
    pub async fn delete_ec2(&self, user_id: &str, access: &str) -> Result<bool, IdentityError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM ec2_credentials WHERE access = $1 AND user_id = $2",
                &[Value::Text(access), Value::Text(user_id)],
            )
            .await?
            > 0)
    }

    /// The credential behind access key `access`, for verifying a
    /// signature made with it: only while its user is enabled, its project
    /// is enabled and the user still holds a role there (a revoked role
    /// ends S3 access as it ends tokens).
    pub async fn ec2_signer(&self, access: &str) -> Result<Option<Ec2Signer>, IdentityError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT c.access, c.secret, c.user_id, c.project_id FROM ec2_credentials c \
                 JOIN users u ON u.id = c.user_id \
                 JOIN projects p ON p.id = c.project_id \
                 WHERE c.access = $1 AND u.enabled = $2 AND p.enabled = $2",
                &[Value::Text(access), Value::Bool(true)],
            )
            .await?;
        let Some(credential) = row.as_ref().map(from_row).transpose()? else {
            return Ok(None);
        };
        if self
            .project_roles(&credential.user_id, &credential.project_id)
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        Ok(Some(credential))
    }
}
