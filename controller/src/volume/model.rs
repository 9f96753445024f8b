//! A volume as the controller keeps it, and as Cinder's API shows it.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

/// The one volume type, as Cinder names its default.
pub const DEFAULT_TYPE: &str = "__DEFAULT__";
/// Its id (Cinder's default type has a UUID; clients only echo it).
pub const DEFAULT_TYPE_ID: &str = "3f9a8c1e-2b7d-4e5f-9a0b-1c2d3e4f5a6b";

/// Statuses a request may leave a volume in until the reconciler finishes
/// the work (or records why it could not).
pub const TRANSIENT: &[&str] = &[
    "creating",
    "extending",
    "deleting",
    "reserved",
    "attaching",
    "detaching",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub size_gib: i64,
    /// What an extend grows it to, while it is `extending`.
    pub target_size_gib: Option<i64>,
    pub status: String,
    pub volume_type: String,
    pub availability_zone: String,
    /// The storage host holding it (None when none could take it).
    pub storage_host: Option<String>,
    pub bootable: bool,
    pub metadata: BTreeMap<String, String>,
    /// Why it ended in an error status.
    pub fault: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Its attachment, from `reserved` to `detaching`.
    pub attachment: Option<Attachment>,
    /// The snapshot it was made from.
    pub snapshot_id: Option<String>,
    /// The volume it was made from.
    pub source_volid: Option<String>,
    /// The image it was made from, as Cinder shows it
    /// (`volume_image_metadata`: `image_id`, `image_name`, formats, ...).
    pub image_metadata: Option<BTreeMap<String, String>>,
    /// The server that boots from it (from the server's create on).
    pub root_of: Option<String>,
    /// Whether it is deleted with that server.
    pub delete_on_termination: bool,
}

/// Statuses a snapshot request may leave it in until the reconciler is done.
pub const SNAPSHOT_TRANSIENT: &[&str] = &["creating", "deleting"];

/// A volume's snapshot: its data at one moment, kept on the volume's
/// storage host.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub volume_id: String,
    pub storage_host: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub size_gib: i64,
    pub status: String,
    pub metadata: BTreeMap<String, String>,
    pub fault: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Snapshot {
    /// As Cinder shows one (list, detail, show, create alike).
    pub fn detail(&self) -> Json {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "volume_id": self.volume_id,
            "status": self.status,
            "size": self.size_gib,
            "metadata": self.metadata,
            "created_at": time(self.created_at),
            "updated_at": time(self.updated_at),
            "user_id": self.user_id,
            "group_snapshot_id": null,
            "os-extended-snapshot-attributes:project_id": self.project_id,
            "os-extended-snapshot-attributes:progress":
                if self.status == "available" { "100%" } else { "0%" },
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    pub id: String,
    pub server_id: String,
    /// Where it was plugged, once it was.
    pub host: Option<String>,
    pub attached_at: Option<i64>,
    /// Made through Cinder's API (attachments, os-attach) for someone else
    /// to attach, rather than by our compute service: bookkeeping only.
    /// `server_id` is then the instance the caller named ("" for none).
    pub external: bool,
    /// `rw` or `ro`.
    pub mode: String,
    /// The attacher's connector (API-made attachments).
    pub connector: Option<serde_json::Value>,
}

impl Volume {
    /// The name of its disk in the VMM (and hostd): the id without dashes.
    pub fn device_id(&self) -> String {
        self.id.replace('-', "")
    }
}

/// A storage host's last heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageHost {
    pub host_id: String,
    pub url: String,
    /// Where other hosts reach it (image data), when not at `url`.
    pub peer_url: Option<String>,
    pub availability_zone: String,
    pub total_bytes: i64,
    pub free_bytes: i64,
    pub last_seen: i64,
}

fn time(t: i64) -> String {
    crate::api::http::iso_micros(t).replace('Z', "")
}

impl Volume {
    /// Links to it under `base` (`.../volume/v3/{project}`).
    fn links(&self, base: &str) -> Json {
        json!([
            {"rel": "self", "href": format!("{base}/volumes/{}", self.id)},
            {"rel": "bookmark", "href": format!("{base}/volumes/{}", self.id)},
        ])
    }

    /// The short form of a list.
    pub fn summary(&self, base: &str) -> Json {
        json!({"id": self.id, "name": self.name, "links": self.links(base)})
    }

    /// The form a create or an update answers with: Cinder's extensions
    /// (the owner, the host, image metadata) extend show and detail only.
    pub fn created(&self, base: &str) -> Json {
        let mut v = self.detail(base, false);
        if let Some(fields) = v.as_object_mut() {
            fields.remove("os-vol-tenant-attr:tenant_id");
            fields.remove("volume_image_metadata");
        }
        v
    }

    /// The full form (show, detail); `admin` adds the host it is on.
    pub fn detail(&self, base: &str, admin: bool) -> Json {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "size": self.size_gib,
            "status": self.status,
            "volume_type": self.volume_type,
            "availability_zone": self.availability_zone,
            "bootable": if self.bootable { "true" } else { "false" },
            "encrypted": false,
            "multiattach": false,
            "attachments": self.attachment.iter().filter(|a| a.attached_at.is_some()).map(|a| json!({
                "id": self.id, "attachment_id": a.id, "volume_id": self.id,
                "server_id": (!a.server_id.is_empty()).then_some(&a.server_id),
                "host_name": a.host, "device": null,
                "attached_at": a.attached_at.map(time),
            })).collect::<Vec<_>>(),
            "metadata": self.metadata,
            "created_at": time(self.created_at),
            "updated_at": time(self.updated_at),
            "user_id": self.user_id,
            "os-vol-tenant-attr:tenant_id": self.project_id,
            "snapshot_id": self.snapshot_id,
            "source_volid": self.source_volid,
            "consistencygroup_id": null,
            "replication_status": null,
            "group_id": null,
            "links": self.links(base),
        });
        if let Some(image) = &self.image_metadata {
            v["volume_image_metadata"] = json!(image);
        }
        if admin {
            v["os-vol-host-attr:host"] =
                json!(self.storage_host.as_ref().map(|h| format!("{h}@file#file")));
            v["os-vol-mig-status-attr:migstat"] = Json::Null;
            v["os-vol-mig-status-attr:name_id"] = Json::Null;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume() -> Volume {
        Volume {
            id: "v1".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            name: Some("data".into()),
            description: None,
            size_gib: 2,
            target_size_gib: None,
            status: "available".into(),
            volume_type: DEFAULT_TYPE.into(),
            availability_zone: "nova".into(),
            storage_host: Some("s1".into()),
            bootable: false,
            metadata: BTreeMap::new(),
            fault: None,
            created_at: 0,
            updated_at: 0,
            attachment: None,
            snapshot_id: None,
            source_volid: None,
            image_metadata: None,
            root_of: None,
            delete_on_termination: false,
        }
    }

    #[test]
    fn the_detail_is_cinders_and_the_host_only_an_admins() {
        let v = volume();
        let shown = v.detail("http://c/volume/v3/p", false);
        assert_eq!(shown["size"], 2);
        assert_eq!(shown["bootable"], "false");
        assert_eq!(shown["attachments"], json!([]));
        assert_eq!(shown["created_at"], "1970-01-01T00:00:00.000000");
        assert_eq!(shown["links"][0]["href"], "http://c/volume/v3/p/volumes/v1");
        assert!(shown.get("os-vol-host-attr:host").is_none());
        let admin = v.detail("b", true);
        assert_eq!(admin["os-vol-host-attr:host"], "s1@file#file");
        assert_eq!(
            v.summary("b"),
            json!({"id": "v1", "name": "data", "links": v.links("b")})
        );
    }
}
