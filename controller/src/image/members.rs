//! Glance image members: the owner of a `shared` image names other projects
//! as its members; each member accepts, rejects or leaves it pending. A
//! member sees the image (listings show it once accepted, as Glance's do)
//! and boots it; only the owner adds and removes members, only the member
//! answers for itself.

use serde_json::{json, Value as Json};

use super::service::{owned, visible, ImageError};
use crate::app::App;
use crate::identity::{now, Auth};
use crate::store::{int, text, StoreError};

pub const STATUSES: &[&str] = &["pending", "accepted", "rejected"];
/// The most members an image has (Glance's `image_member_quota`).
const MAX_MEMBERS: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub image_id: String,
    /// A project id.
    pub member_id: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Member {
    pub(super) fn from_row(r: &sqlx::any::AnyRow) -> Result<Member, StoreError> {
        Ok(Member {
            image_id: text(r, "image_id")?,
            member_id: text(r, "member_id")?,
            status: text(r, "status")?,
            created_at: int(r, "created_at")?,
            updated_at: int(r, "updated_at")?,
        })
    }

    pub fn to_json(&self) -> Json {
        let iso = crate::identity::iso_seconds;
        json!({"image_id": self.image_id, "member_id": self.member_id, "status": self.status,
               "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
               "schema": "/v2/schemas/member"})
    }
}

fn not_member(id: &str, member: &str) -> ImageError {
    ImageError::NotFound(format!("{member} is not a member of image {id}"))
}

/// `POST /v2/images/{id}/members`: the owner shares a `shared` image.
pub async fn add(app: &App, auth: &Auth, id: &str, member_id: &str) -> Result<Member, ImageError> {
    let image = owned(app, auth, id).await?;
    if image.visibility != "shared" {
        return Err(ImageError::Forbidden(format!(
            "Only shared images have members: image {id} is {}",
            image.visibility
        )));
    }
    if member_id.is_empty() || member_id.len() > 255 {
        return Err(ImageError::BadRequest("member: a project id".into()));
    }
    if app.images.members(id).await?.len() >= MAX_MEMBERS {
        return Err(ImageError::TooLarge(format!(
            "an image has at most {MAX_MEMBERS} members"
        )));
    }
    let t = now();
    let member = Member {
        image_id: id.to_owned(),
        member_id: member_id.to_owned(),
        status: "pending".into(),
        created_at: t,
        updated_at: t,
    };
    app.images.add_member(&member).await?;
    Ok(member)
}

/// `GET /v2/images/{id}/members`: all of them to the owner, its own entry
/// to a member.
pub async fn list(app: &App, auth: &Auth, id: &str) -> Result<Vec<Member>, ImageError> {
    let image = visible(app, auth, id).await?;
    let project = auth.project_id().unwrap_or_default();
    let members = app.images.members(id).await?;
    if image.owner == project || auth.is_admin() {
        return Ok(members);
    }
    Ok(members
        .into_iter()
        .filter(|m| m.member_id == project)
        .collect())
}

/// `GET /v2/images/{id}/members/{member}`: to the owner, or to that member.
pub async fn get(app: &App, auth: &Auth, id: &str, member_id: &str) -> Result<Member, ImageError> {
    list(app, auth, id)
        .await?
        .into_iter()
        .find(|m| m.member_id == member_id)
        .ok_or_else(|| not_member(id, member_id))
}

/// `PUT /v2/images/{id}/members/{member}`: the member answers for itself.
pub async fn answer(
    app: &App,
    auth: &Auth,
    id: &str,
    member_id: &str,
    status: &str,
) -> Result<Member, ImageError> {
    if !STATUSES.contains(&status) {
        return Err(ImageError::BadRequest(format!(
            "status: one of {}",
            STATUSES.join(", ")
        )));
    }
    let member = get(app, auth, id, member_id).await?;
    if auth.project_id() != Some(member_id) {
        return Err(ImageError::Forbidden(
            "Only the member itself accepts or rejects an image shared with it".into(),
        ));
    }
    let t = now();
    if !app
        .images
        .set_member_status(id, member_id, status, t)
        .await?
    {
        return Err(not_member(id, member_id));
    }
    Ok(Member {
        status: status.to_owned(),
        updated_at: t,
        ..member
    })
}

/// `DELETE /v2/images/{id}/members/{member}`: the owner stops sharing.
pub async fn remove(app: &App, auth: &Auth, id: &str, member_id: &str) -> Result<(), ImageError> {
    owned(app, auth, id).await?;
    if app.images.remove_member(id, member_id).await? {
        Ok(())
    } else {
        Err(not_member(id, member_id))
    }
}

/// Glance's schemas of a member and of a list of them.
pub fn schema(many: bool) -> Json {
    let member = json!({
        "name": "member",
        "properties": {
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "status": {"type": "string", "enum": STATUSES, "description": "The status of this image member"},
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": true},
        },
    });
    if !many {
        return member;
    }
    json!({
        "name": "members",
        "properties": {
            "members": {"type": "array", "items": member},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "describedby", "href": "{schema}"}],
    })
}
