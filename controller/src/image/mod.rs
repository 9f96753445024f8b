//! Images (the Glance v2 subset): records in the database, bytes on a
//! storage host (`location`, its storaged's image store), or in the
//! controller's own image directory when no storage host is registered (and
//! for images uploaded before one was). An upload is streamed on with its
//! MD5 and SHA-512 computed on the way (clients verify downloads against
//! them); a qcow2 image also gets a raw copy, which is what the VMM boots.

pub mod data;
pub mod members;
pub mod schemas;
pub mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::store::{boolean, int, opt_text, text, Store, StoreError, Value};

pub const DISK_FORMATS: &[&str] = &["raw", "qcow2", "aki", "ari", "ami"];
pub const CONTAINER_FORMATS: &[&str] = &["bare", "aki", "ari", "ami"];
pub const VISIBILITIES: &[&str] = &["public", "private", "shared", "community"];

#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub status: String,
    pub visibility: String,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<i64>,
    pub virtual_size: Option<i64>,
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub min_disk: i64,
    pub min_ram: i64,
    pub protected: bool,
    pub properties: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The storage host holding the data; None: the controller's directory.
    pub location: Option<String>,
}

impl Image {
    /// Whether a project may see this image.
    pub fn visible_to(&self, project: &str, admin: bool) -> bool {
        admin || self.owner == project || matches!(self.visibility.as_str(), "public" | "community")
    }

    /// Glance's JSON: fixed fields, then the free-form properties at top level.
    pub fn to_json(&self) -> Json {
        let iso = crate::identity::iso_seconds;
        let mut v = json!({
            "id": self.id, "name": self.name, "status": self.status,
            "visibility": self.visibility, "protected": self.protected, "os_hidden": false,
            "disk_format": self.disk_format, "container_format": self.container_format,
            "size": self.size, "virtual_size": self.virtual_size, "checksum": self.checksum,
            "os_hash_algo": self.os_hash_algo, "os_hash_value": self.os_hash_value,
            "min_disk": self.min_disk, "min_ram": self.min_ram, "owner": self.owner,
            "tags": self.tags, "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "self": format!("/v2/images/{}", self.id), "file": format!("/v2/images/{}/file", self.id),
            "schema": "/v2/schemas/image",
        });
        for (k, val) in &self.properties {
            if v.get(k).is_none() {
                v[k] = json!(val);
            }
        }
        v
    }
}

/// One field or property of an image, by its name in [`Image::to_json`],
/// for list filters and sorting without building the JSON.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field<'a> {
    /// Not set (and the names of nothing): sorts first, as NULL does in
    /// Glance's database.
    Unset,
    Bool(bool),
    Int(i64),
    Text(&'a str),
}

impl Image {
    pub fn field<'a>(&'a self, key: &str) -> Field<'a> {
        use Field::{Bool, Int, Text, Unset};
        let text = |v: &'a Option<String>| v.as_deref().map_or(Unset, Text);
        let int = |v: Option<i64>| v.map_or(Unset, Int);
        match key {
            "id" => Text(&self.id),
            "name" => Text(&self.name),
            "owner" => Text(&self.owner),
            "status" => Text(&self.status),
            "visibility" => Text(&self.visibility),
            "protected" => Bool(self.protected),
            "os_hidden" => Bool(false),
            "disk_format" => text(&self.disk_format),
            "container_format" => text(&self.container_format),
            "checksum" => text(&self.checksum),
            "os_hash_algo" => text(&self.os_hash_algo),
            "os_hash_value" => text(&self.os_hash_value),
            "size" => int(self.size),
            "virtual_size" => int(self.virtual_size),
            "min_disk" => Int(self.min_disk),
            "min_ram" => Int(self.min_ram),
            "created_at" => Int(self.created_at),
            "updated_at" => Int(self.updated_at),
            property => self.properties.get(property).map_or(Unset, |v| Text(v)),
        }
    }
}

const COLUMNS: &str = "id, name, owner, status, visibility, disk_format, container_format, size, \
    virtual_size, checksum, os_hash_algo, os_hash_value, min_disk, min_ram, protected, properties, \
    tags, created_at, updated_at, location";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Image, StoreError> {
    let opt_int = |c: &str| -> Result<Option<i64>, StoreError> {
        Ok(sqlx::Row::try_get::<Option<i64>, _>(r, c)?)
    };
    Ok(Image {
        id: text(r, "id")?,
        name: text(r, "name")?,
        owner: text(r, "owner")?,
        status: text(r, "status")?,
        visibility: text(r, "visibility")?,
        disk_format: opt_text(r, "disk_format")?,
        container_format: opt_text(r, "container_format")?,
        size: opt_int("size")?,
        virtual_size: opt_int("virtual_size")?,
        checksum: opt_text(r, "checksum")?,
        os_hash_algo: opt_text(r, "os_hash_algo")?,
        os_hash_value: opt_text(r, "os_hash_value")?,
        min_disk: int(r, "min_disk")?,
        min_ram: int(r, "min_ram")?,
        protected: boolean(r, "protected")?,
        properties: serde_json::from_str(&text(r, "properties")?).unwrap_or_default(),
        tags: serde_json::from_str(&text(r, "tags")?).unwrap_or_default(),
        created_at: int(r, "created_at")?,
        updated_at: int(r, "updated_at")?,
        location: opt_text(r, "location")?,
    })
}

pub struct Images {
    store: Store,
    dir: PathBuf,
}

impl Images {
    pub fn new(store: Store, dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Images { store, dir })
    }

    /// Where an image's bytes live, as uploaded.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The raw file the VMM boots: the upload itself, or its raw conversion.
    pub fn raw_path(&self, image: &Image) -> PathBuf {
        if image.disk_format.as_deref() == Some("qcow2") {
            self.dir.join(format!("{}.raw", image.id))
        } else {
            self.data_path(&image.id)
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn get(&self, id: &str) -> Result<Option<Image>, StoreError> {
        self.store
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM images WHERE id = $1"),
                &[Value::Text(id)],
            )
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    pub async fn list(&self) -> Result<Vec<Image>, StoreError> {
        self.store
            .fetch_all(
                &format!("SELECT {COLUMNS} FROM images ORDER BY created_at, id"),
                &[],
            )
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    pub async fn insert(&self, i: &Image) -> Result<(), StoreError> {
        if self.get(&i.id).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "Image with identifier {} already exists",
                i.id
            )));
        }
        self.store
            .execute(
                &format!(
                    "INSERT INTO images ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
                ),
                &self.values(i, &serde_json::to_string(&i.properties).unwrap_or_default(), &serde_json::to_string(&i.tags).unwrap_or_default()),
            )
            .await?;
        Ok(())
    }

    fn values<'a>(&self, i: &'a Image, props: &'a str, tags: &'a str) -> Vec<Value<'a>> {
        let opt_int = |v: Option<i64>| match v {
            Some(n) => Value::OptInt(Some(n)),
            None => Value::OptInt(None),
        };
        vec![
            Value::Text(&i.id),
            Value::Text(&i.name),
            Value::Text(&i.owner),
            Value::Text(&i.status),
            Value::Text(&i.visibility),
            Value::OptText(i.disk_format.as_deref()),
            Value::OptText(i.container_format.as_deref()),
            opt_int(i.size),
            opt_int(i.virtual_size),
            Value::OptText(i.checksum.as_deref()),
            Value::OptText(i.os_hash_algo.as_deref()),
            Value::OptText(i.os_hash_value.as_deref()),
            Value::Int(i.min_disk),
            Value::Int(i.min_ram),
            Value::Bool(i.protected),
            Value::Text(props),
            Value::Text(tags),
            Value::Int(i.created_at),
            Value::Int(i.updated_at),
            Value::OptText(i.location.as_deref()),
        ]
    }

    /// Writes every field of `i` back (the id is the key).
    pub async fn save(&self, i: &Image) -> Result<(), StoreError> {
        let props = serde_json::to_string(&i.properties).unwrap_or_default();
        let tags = serde_json::to_string(&i.tags).unwrap_or_default();
        let mut values = self.values(i, &props, &tags);
        let id = values.remove(0);
        values.push(id);
        self.store
            .execute(
                "UPDATE images SET name = $1, owner = $2, status = $3, visibility = $4, disk_format = $5, \
                 container_format = $6, size = $7, virtual_size = $8, checksum = $9, os_hash_algo = $10, \
                 os_hash_value = $11, min_disk = $12, min_ram = $13, protected = $14, properties = $15, \
                 tags = $16, created_at = $17, updated_at = $18, location = $19 WHERE id = $20",
                &values,
            )
            .await?;
        Ok(())
    }

    /// Moves an image from `from` to `to` status; false when it was not in `from`
    /// (someone else got there first).
    pub async fn transition(&self, id: &str, from: &str, to: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE images SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
                &[
                    Value::Text(to),
                    Value::Int(crate::identity::now()),
                    Value::Text(id),
                    Value::Text(from),
                ],
            )
            .await?
            > 0)
    }

    /// Uploads a stopped controller left half done: their images go back to
    /// queued (the upload can be made again, as after a failed one) and their
    /// bytes, whole or partial, converted or not, are removed. Returns them.
    pub async fn recover_interrupted_uploads(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .store
            .fetch_all("SELECT id FROM images WHERE status = 'saving'", &[])
            .await?;
        let mut recovered = Vec::new();
        for row in &rows {
            let id = crate::store::text(row, "id")?;
            if self.transition(&id, "saving", "queued").await? {
                for name in [
                    id.clone(),
                    format!("{id}.part"),
                    format!("{id}.raw"),
                    format!("{id}.raw-part"),
                ] {
                    let _ = std::fs::remove_file(self.dir.join(name));
                }
                recovered.push(id);
            }
        }
        Ok(recovered)
    }

    /// Removes the record and its members (its bytes are
    /// [`data::remove`]d first).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .execute(
                "DELETE FROM image_members WHERE image_id = $1",
                &[Value::Text(id)],
            )
            .await?;
        self.store
            .execute("DELETE FROM images WHERE id = $1", &[Value::Text(id)])
            .await?;
        Ok(())
    }

    /// Whether project `project` may see image `i`: its own, public or
    /// community, an admin, or a member of a shared image.
    pub async fn visible_to(
        &self,
        i: &Image,
        project: &str,
        admin: bool,
    ) -> Result<bool, StoreError> {
        if i.visible_to(project, admin) {
            return Ok(true);
        }
        Ok(i.visibility == "shared"
            && self
                .members(&i.id)
                .await?
                .iter()
                .any(|m| m.member_id == project))
    }

    /// An image's members, in the order they were added.
    pub async fn members(&self, image_id: &str) -> Result<Vec<members::Member>, StoreError> {
        self.store
            .fetch_all(
                "SELECT image_id, member_id, status, created_at, updated_at FROM image_members \
                 WHERE image_id = $1 ORDER BY created_at, member_id",
                &[Value::Text(image_id)],
            )
            .await?
            .iter()
            .map(members::Member::from_row)
            .collect()
    }

    /// The images shared with project `member_id`, with its answer to each.
    pub async fn memberships(
        &self,
        member_id: &str,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.store
            .fetch_all(
                "SELECT image_id, status FROM image_members WHERE member_id = $1",
                &[Value::Text(member_id)],
            )
            .await?
            .iter()
            .map(|r| Ok((text(r, "image_id")?, text(r, "status")?)))
            .collect()
    }

    /// Adds a member (pending); a conflict when it is one already.
    pub async fn add_member(&self, m: &members::Member) -> Result<(), StoreError> {
        let taken = self
            .store
            .fetch_optional(
                "SELECT 1 AS one FROM image_members WHERE image_id = $1 AND member_id = $2",
                &[Value::Text(&m.image_id), Value::Text(&m.member_id)],
            )
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "{} is already a member of image {}",
                m.member_id, m.image_id
            )));
        }
        self.store
            .execute(
                "INSERT INTO image_members (image_id, member_id, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    Value::Text(&m.image_id),
                    Value::Text(&m.member_id),
                    Value::Text(&m.status),
                    Value::Int(m.created_at),
                    Value::Int(m.updated_at),
                ],
            )
            .await?;
        Ok(())
    }

    /// Sets a member's answer; false when it is not a member.
    pub async fn set_member_status(
        &self,
        image_id: &str,
        member_id: &str,
        status: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "UPDATE image_members SET status = $1, updated_at = $2 WHERE image_id = $3 AND member_id = $4",
                &[Value::Text(status), Value::Int(at), Value::Text(image_id), Value::Text(member_id)],
            )
            .await?
            > 0)
    }

    /// Removes a member; false when it was not one.
    pub async fn remove_member(&self, image_id: &str, member_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .execute(
                "DELETE FROM image_members WHERE image_id = $1 AND member_id = $2",
                &[Value::Text(image_id), Value::Text(member_id)],
            )
            .await?
            > 0)
    }

    /// Removes an image's bytes from the controller's directory.
    pub fn remove_local(&self, id: &str) {
        for p in [self.data_path(id), self.dir.join(format!("{id}.raw"))] {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `field` names what `to_json` shows, with the same values, so that a
    /// list filtered on a name finds what the client reads under it.
    #[test]
    fn fields_agree_with_the_json() {
        let image = Image {
            id: "i1".into(),
            name: "n".into(),
            owner: "p".into(),
            status: "active".into(),
            visibility: "private".into(),
            disk_format: Some("raw".into()),
            container_format: None,
            size: Some(42),
            virtual_size: None,
            checksum: Some("c".into()),
            os_hash_algo: None,
            os_hash_value: None,
            min_disk: 1,
            min_ram: 0,
            protected: true,
            properties: [("image_type".to_owned(), "backup".to_owned())].into(),
            tags: vec!["t".into()],
            created_at: 5,
            updated_at: 6,
            location: None,
        };
        let json = image.to_json();
        for (key, value) in json.as_object().unwrap() {
            let field = image.field(key);
            match (value, field) {
                (Json::String(s), Field::Text(t)) => assert_eq!(s, t, "{key}"),
                (Json::Bool(b), Field::Bool(f)) => assert_eq!(*b, f, "{key}"),
                (Json::Number(n), Field::Int(i)) => assert_eq!(n.as_i64(), Some(i), "{key}"),
                (Json::Null, Field::Unset) => {}
                // Timestamps: seconds here, ISO text there.
                (Json::String(_), Field::Int(_)) if key.ends_with("_at") => {}
                // Links and lists are not filtered on.
                (_, Field::Unset) if ["self", "file", "schema", "tags"].contains(&key.as_str()) => {
                }
                (v, f) => panic!("{key}: {v} against {f:?}"),
            }
        }
        assert_eq!(image.field("nope"), Field::Unset);
    }
}
