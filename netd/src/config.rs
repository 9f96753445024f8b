//! netd's configuration: a TOML file, checked completely before anything
//! starts.
//!
//! ```toml
//! host_id = "compute-1"                    # the host, as hostd registers it
//! controller_url = "http://10.0.0.1:8774"
//! token_file = "/etc/virga/hostd.token"    # or: token = "..." (the host's)
//! vtep = "172.16.0.11"                     # this host's underlay address
//! underlay_dev = "eth1"                    # optional: send VXLAN through it
//! sync_ms = 1000                           # how often to report and converge
//! gateway = true                           # optional: routers may live here
//! external_gateway_on_host = true          # optional: this host is the
//!                                          # external subnets' gateway
//! ```
//!
//! A gateway host reaches the external networks: routers are placed on it,
//! their gateways and floating IPs on its external bridges. With
//! `external_gateway_on_host` (an all-in-one, as devstack's `br-ex`), the
//! host itself takes each external subnet's gateway address on its bridge
//! and forwards and masquerades what the routers send out.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub host_id: Option<String>,
    pub controller_url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub vtep: Option<Ipv4Addr>,
    pub underlay_dev: Option<String>,
    pub sync_ms: Option<u64>,
    pub gateway: Option<bool>,
    pub external_gateway_on_host: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub host_id: String,
    pub controller_url: String,
    pub token: String,
    pub vtep: Ipv4Addr,
    pub underlay_dev: Option<String>,
    pub sync: Duration,
    pub gateway: bool,
    pub external_gateway_on_host: bool,
}

const MIN_TOKEN_LEN: usize = 16;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        Config::validate(file)
    }

    pub fn validate(file: ConfigFile) -> Result<Config, ConfigError> {
        let host_id = file
            .host_id
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("host_id", "required"))?;
        let controller_url = file
            .controller_url
            .ok_or_else(|| invalid("controller_url", "required"))?;
        if crate::controller::split_url(&controller_url).is_none() {
            return Err(invalid("controller_url", "an http://HOST:PORT URL"));
        }
        let token = match (file.token, &file.token_file) {
            (Some(t), None) => t,
            (None, Some(p)) => std::fs::read_to_string(p)
                .map_err(|e| invalid("token_file", format!("{}: {e}", p.display())))?
                .trim()
                .to_owned(),
            _ => return Err(invalid("token", "exactly one of token or token_file")),
        };
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "token",
                format!("at least {MIN_TOKEN_LEN} printable characters, no spaces"),
            ));
        }
        let vtep = file.vtep.ok_or_else(|| invalid("vtep", "required"))?;
        if vtep.is_unspecified() || vtep.is_multicast() || vtep.is_broadcast() {
            return Err(invalid("vtep", "a unicast address of this host"));
        }
        if let Some(dev) = &file.underlay_dev {
            if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ']) {
                return Err(invalid("underlay_dev", "an interface name"));
            }
        }
        let sync_ms = file.sync_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&sync_ms) {
            return Err(invalid("sync_ms", "100 to 60000"));
        }
        let gateway = file.gateway.unwrap_or(false);
        let external_gateway_on_host = file.external_gateway_on_host.unwrap_or(false);
        if external_gateway_on_host && !gateway {
            return Err(invalid(
                "external_gateway_on_host",
                "only on a gateway host (gateway = true)",
            ));
        }
        Ok(Config {
            host_id,
            controller_url,
            token,
            vtep,
            underlay_dev: file.underlay_dev,
            sync: Duration::from_millis(sync_ms),
            gateway,
            external_gateway_on_host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ConfigFile {
        ConfigFile {
            host_id: Some("h1".into()),
            controller_url: Some("http://127.0.0.1:8774".into()),
            token: Some("0123456789abcdef".into()),
            vtep: Some(Ipv4Addr::new(172, 16, 0, 1)),
            ..ConfigFile::default()
        }
    }

    fn refused(file: ConfigFile) -> &'static str {
        match Config::validate(file) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("accepted or failed otherwise: {other:?}"),
        }
    }

    #[test]
    fn a_complete_file_is_taken_with_defaults() {
        let c = Config::validate(good()).expect("valid");
        assert_eq!(c.sync, Duration::from_secs(1));
        assert_eq!(c.underlay_dev, None);
    }

    #[test]
    fn bad_files_name_the_field() {
        assert_eq!(
            refused(ConfigFile {
                host_id: None,
                ..good()
            }),
            "host_id"
        );
        assert_eq!(
            refused(ConfigFile {
                controller_url: Some("https://x".into()),
                ..good()
            }),
            "controller_url"
        );
        assert_eq!(
            refused(ConfigFile {
                token: Some("short".into()),
                ..good()
            }),
            "token"
        );
        assert_eq!(
            refused(ConfigFile {
                token_file: Some("/nonexistent".into()),
                ..good()
            }),
            "token"
        );
        assert_eq!(
            refused(ConfigFile {
                vtep: Some(Ipv4Addr::UNSPECIFIED),
                ..good()
            }),
            "vtep"
        );
        assert_eq!(
            refused(ConfigFile {
                underlay_dev: Some("a-name-far-too-long".into()),
                ..good()
            }),
            "underlay_dev"
        );
        assert_eq!(
            refused(ConfigFile {
                sync_ms: Some(5),
                ..good()
            }),
            "sync_ms"
        );
        assert_eq!(
            refused(ConfigFile {
                external_gateway_on_host: Some(true),
                ..good()
            }),
            "external_gateway_on_host"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("host_id = \"h\"\nvtap = \"1.2.3.4\"\n").is_err());
    }
}
