//! What a server's owner changes on it without its host: the name, access
//! addresses, disk config label and description (`PUT /servers/{id}`), and
//! its metadata (`/servers/{id}/metadata`). Each change is a read, an edit
//! and a write conditional on nothing having changed in between, repeated
//! when something did (the build and state sync write to servers often).

use std::collections::BTreeMap;

use super::{visible, ComputeError};
use crate::app::App;
use crate::compute::servers::Server;
use crate::context::RequestContext;

/// Nova's default `metadata_items` quota, which Virga keeps for every project.
pub const MAX_METADATA_ITEMS: usize = 128;

/// How many times an edit is tried against concurrent writes.
const ATTEMPTS: usize = 20;

/// Applies `edit` to the server and stores it; returns it as stored.
pub async fn update(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    edit: impl Fn(&mut Server) -> Result<(), ComputeError>,
) -> Result<Server, ComputeError> {
    for _ in 0..ATTEMPTS {
        let mut server = visible(app, ctx, id).await?;
        edit(&mut server)?;
        if server.metadata.len() > MAX_METADATA_ITEMS {
            return Err(ComputeError::Forbidden(format!(
                "Quota exceeded for metadata_items: at most {MAX_METADATA_ITEMS} metadata items"
            )));
        }
        if app.servers.update_attributes(&server).await? {
            server.generation += 1;
            return Ok(server);
        }
    }
    Err(ComputeError::Conflict(format!(
        "Instance {id} changed during the update {ATTEMPTS} times; try again"
    )))
}

/// Changes the server's metadata with `edit`, in the states Nova allows it
/// (not while building or during a task, not locked); returns all of it.
pub async fn metadata(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    edit: impl Fn(&mut BTreeMap<String, String>) -> Result<(), ComputeError>,
) -> Result<BTreeMap<String, String>, ComputeError> {
    let server = settled(app, ctx, id, "update metadata", |s| edit(&mut s.metadata)).await?;
    Ok(server.metadata)
}

/// Nova's limits on server tags.
pub const MAX_TAGS: usize = 50;
const MAX_TAG_LEN: usize = 60;

/// A tag as Nova takes one: 1 to 60 characters, no `/` or `,`.
pub fn valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG_LEN).contains(&tag.chars().count()) && !tag.contains(['/', ','])
}

/// Changes the server's tags with `edit` (at most 50, kept sorted and each
/// once), in the states metadata may change in; returns them.
pub async fn tags(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    edit: impl Fn(&mut Vec<String>) -> Result<(), ComputeError>,
) -> Result<Vec<String>, ComputeError> {
    let server = settled(app, ctx, id, "update tags", |s| {
        edit(&mut s.tags)?;
        s.tags.sort();
        s.tags.dedup();
        if s.tags.len() > MAX_TAGS {
            return Err(ComputeError::BadRequest(format!(
                "The number of tags exceeded the per-server limit {MAX_TAGS}"
            )));
        }
        Ok(())
    })
    .await?;
    Ok(server.tags)
}

/// [`update`] in the states Nova allows owners' changes in: not while
/// building or during a task, not when locked (for all but admins).
async fn settled(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    what: &str,
    edit: impl Fn(&mut Server) -> Result<(), ComputeError>,
) -> Result<Server, ComputeError> {
    update(app, ctx, id, |s| {
        if s.locked && !ctx.is_admin() {
            return Err(ComputeError::Conflict(format!("Instance {id} is locked")));
        }
        let settled = matches!(
            s.vm_state.as_str(),
            "active" | "paused" | "suspended" | "stopped"
        ) && s.task_state.is_none();
        if !settled {
            let why = match &s.task_state {
                Some(t) => format!("task_state {t}"),
                None => format!("vm_state {}", s.vm_state),
            };
            return Err(ComputeError::Conflict(format!(
                "Cannot '{what}' instance {id} while it is in {why}"
            )));
        }
        edit(s)
    })
    .await
}
