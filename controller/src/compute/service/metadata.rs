//! What a guest is told about itself, in OpenStack's metadata format
//! (`openstack/latest/meta_data.json` and friends), as cloud-init reads it
//! from the config drive: its id, name and hostname, its key pair, its
//! metadata and user data.

use hostd_proto::instance::ConfigDrive;
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::compute::keypairs::Keypair;
use crate::compute::servers::Server;
use crate::network::model::Port;

/// The config drive's contents for `server`, with its key pair if it has one.
pub fn config_drive(server: &Server, keypair: Option<&Keypair>) -> ConfigDrive {
    let mut meta = Map::new();
    meta.insert("uuid".into(), json!(server.id));
    meta.insert("name".into(), json!(server.name));
    meta.insert("hostname".into(), json!(hostname(&server.name)));
    meta.insert("launch_index".into(), json!(0));
    meta.insert("availability_zone".into(), json!(server.availability_zone));
    meta.insert("project_id".into(), json!(server.project_id));
    meta.insert("meta".into(), json!(server.metadata));
    meta.insert("devices".into(), json!([]));
    if let Some(k) = keypair {
        meta.insert("public_keys".into(), json!({ &k.name: k.public_key }));
        meta.insert(
            "keys".into(),
            json!([{ "name": k.name, "type": k.key_type, "data": k.public_key }]),
        );
    }
    ConfigDrive {
        meta_data: meta,
        user_data: server.user_data.clone(),
        vendor_data: Map::new(),
        network_data: network_data(),
    }
}

/// What `server`'s guest is told, on its config drive and by the metadata
/// service alike: its key pair looked up, its NICs (`ports`) described.
pub async fn guest_metadata(
    app: &App,
    server: &Server,
    ports: &[Port],
) -> Result<ConfigDrive, String> {
    let keypair = match &server.key_name {
        Some(name) => app
            .keypairs
            .get(&server.user_id, name)
            .await
            .map_err(|e| e.to_string())?,
        None => None,
    };
    let mut drive = config_drive(server, keypair.as_ref());
    drive.network_data = app
        .network
        .network_data(ports)
        .await
        .map_err(|e| e.to_string())?;
    Ok(drive)
}

/// What the metadata service on `host` answers the guest behind `port_id`:
/// None unless the port is bound to that host and belongs to a server.
pub async fn for_port(app: &App, host: &str, port_id: &str) -> Result<Option<ConfigDrive>, String> {
    let Some(port) = app
        .network
        .store()
        .port(port_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    if port.host_id != host
        || port.device_id.is_empty()
        || !port.device_owner.starts_with("compute:")
    {
        return Ok(None);
    }
    let Some(server) = app
        .servers
        .get(&port.device_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let ports = app
        .network
        .server_ports(&server.id)
        .await
        .map_err(|e| e.to_string())?;
    guest_metadata(app, &server, &ports).await.map(Some)
}

/// No networks yet: an empty `network_data.json` (cloud-init then configures
/// none, instead of guessing with DHCP on every interface).
fn network_data() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("links".into(), json!([]));
    m.insert("networks".into(), json!([]));
    m.insert("services".into(), json!([]));
    m
}

/// The guest's hostname from the server's name, as Nova makes it: lower
/// case, runs of anything but letters, digits and '-' turned into one '-',
/// no leading or trailing '-' or '.', at most 63 characters; "server" if
/// nothing is left.
pub fn hostname(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches(['-', '.']).chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_owned();
    if trimmed.is_empty() {
        "server".into()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_made_from_names_as_nova_makes_them() {
        assert_eq!(hostname("vm1"), "vm1");
        assert_eq!(hostname("My Server_2"), "my-server-2");
        assert_eq!(hostname("--a..b--"), "a-b");
        assert_eq!(hostname("日本"), "server");
        assert_eq!(hostname(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn the_drive_carries_the_servers_key_and_user_data() {
        let server = Server {
            id: "7d5e6a1c-0000-4000-8000-000000000001".into(),
            name: "Web 1".into(),
            user_data: Some("IyEvYmluL3NoCg==".into()),
            ..Server::default()
        };
        let key = Keypair {
            name: "mykey".into(),
            public_key: "ssh-ed25519 AAAA me".into(),
            fingerprint: "f".into(),
            key_type: "ssh".into(),
            created_at: 0,
        };
        let d = config_drive(&server, Some(&key));
        assert_eq!(d.meta_data["uuid"], json!(server.id));
        assert_eq!(d.meta_data["hostname"], json!("web-1"));
        assert_eq!(
            d.meta_data["public_keys"]["mykey"],
            json!("ssh-ed25519 AAAA me")
        );
        assert_eq!(d.user_data.as_deref(), Some("IyEvYmluL3NoCg=="));
        let none = config_drive(&server, None);
        assert!(!none.meta_data.contains_key("public_keys"));
    }
}
