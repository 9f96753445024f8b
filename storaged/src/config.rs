//! storaged's configuration: a TOML file, checked completely before anything
//! starts.
//!
//! ```toml
//! host_id = "storage-1"                    # this storage host's name
//! listen = "0.0.0.0:8780"                  # the API the controller calls
//! advertise_url = "http://10.0.0.2:8780"   # how the controller reaches it
//!                                          # (default: the bound address;
//!                                          # port 0 binds any free port)
//! peer_url = "http://10.1.0.2:8780"        # how other hosts reach it for
//!                                          # image data (default: advertise_url)
//! data_dir = "/var/lib/virga/storaged"     # the volumes live under it
//! controller_url = "http://10.0.0.1:8774"
//! token_file = "/etc/virga/storaged.token" # or: token = "..." (the host's,
//!                                          # `controller host-token HOST`)
//! availability_zone = "nova"
//! heartbeat_secs = 10
//! s3_listen = "0.0.0.0:9000"               # the S3 API (none when absent)
//! s3_domain = "s3.example.com"             # virtual-host-style buckets
//! swift_listen = "0.0.0.0:8080"            # the Swift API (none when absent)
//! ```

use std::net::SocketAddr;
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
    pub listen: Option<SocketAddr>,
    pub advertise_url: Option<String>,
    pub peer_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub controller_url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub availability_zone: Option<String>,
    pub heartbeat_secs: Option<u64>,
    pub nbd_listen: Option<SocketAddr>,
    pub nbd_advertise: Option<String>,
    pub s3_listen: Option<SocketAddr>,
    pub s3_domain: Option<String>,
    pub swift_listen: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub host_id: String,
    pub listen: SocketAddr,
    /// None: the address the listener is bound to.
    pub advertise_url: Option<String>,
    /// Where other hosts (hostd, storaged) reach the API for image data,
    /// when not where the controller does (a storage network); None: the
    /// same URL.
    pub peer_url: Option<String>,
    pub data_dir: PathBuf,
    pub controller_url: String,
    pub token: String,
    pub availability_zone: String,
    pub heartbeat: Duration,
    /// Where other hosts reach volumes (NBD): `listen`'s address, port
    /// 10809, unless told.
    pub nbd_listen: SocketAddr,
    /// `HOST:PORT` other hosts connect to; None: the advertised URL's host
    /// (or the bound address) with the listener's port.
    pub nbd_advertise: Option<String>,
    /// Where the S3 API listens; None: no S3 API on this host.
    pub s3_listen: Option<SocketAddr>,
    /// The domain of virtual-host-style requests (`BUCKET.s3.example`);
    /// None: path-style only.
    pub s3_domain: Option<String>,
    /// Where the Swift API listens; None: no Swift API on this host.
    pub swift_listen: Option<SocketAddr>,
}

const MIN_TOKEN_LEN: usize = 16;

/// `http://HOST:PORT/PREFIX` as (`HOST:PORT`, `/PREFIX`).
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (!authority.is_empty()).then_some((authority, path))
}

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
            .filter(|h| !h.is_empty() && h.len() <= 255)
            .ok_or_else(|| invalid("host_id", "required, at most 255 characters"))?;
        let listen = file
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8780)));
        let advertise_url = file.advertise_url;
        if advertise_url
            .as_deref()
            .is_some_and(|u| split_url(u).is_none())
        {
            return Err(invalid("advertise_url", "an http://HOST:PORT URL"));
        }
        let peer_url = file.peer_url;
        if peer_url.as_deref().is_some_and(|u| split_url(u).is_none()) {
            return Err(invalid("peer_url", "an http://HOST:PORT URL"));
        }
        let data_dir = file
            .data_dir
            .ok_or_else(|| invalid("data_dir", "required"))?;
        if !data_dir.is_absolute() {
            return Err(invalid("data_dir", "an absolute path"));
        }
        let controller_url = file
            .controller_url
            .ok_or_else(|| invalid("controller_url", "required"))?;
        if split_url(&controller_url).is_none() {
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
        let availability_zone = file.availability_zone.unwrap_or_else(|| "nova".into());
        if availability_zone.is_empty() || availability_zone.len() > 255 {
            return Err(invalid("availability_zone", "1 to 255 characters"));
        }
        let heartbeat_secs = file.heartbeat_secs.unwrap_or(10);
        if !(1..=300).contains(&heartbeat_secs) {
            return Err(invalid("heartbeat_secs", "1 to 300"));
        }
        let nbd_listen = file
            .nbd_listen
            .unwrap_or_else(|| SocketAddr::new(listen.ip(), 10809));
        let s3_domain = file.s3_domain;
        if s3_domain
            .as_deref()
            .is_some_and(|d| d.is_empty() || d.contains(['/', ':', ' ']))
        {
            return Err(invalid("s3_domain", "a domain name, as s3.example.com"));
        }
        let nbd_advertise = file.nbd_advertise;
        if nbd_advertise
            .as_deref()
            .is_some_and(|a| a.parse::<SocketAddr>().is_err() && !a.contains(':'))
        {
            return Err(invalid("nbd_advertise", "HOST:PORT"));
        }
        Ok(Config {
            nbd_listen,
            nbd_advertise,
            s3_listen: file.s3_listen,
            s3_domain,
            swift_listen: file.swift_listen,
            host_id,
            listen,
            advertise_url,
            peer_url,
            data_dir,
            controller_url,
            token,
            availability_zone,
            heartbeat: Duration::from_secs(heartbeat_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ConfigFile {
        ConfigFile {
            host_id: Some("s1".into()),
            data_dir: Some("/var/lib/virga/storaged".into()),
            controller_url: Some("http://127.0.0.1:8774".into()),
            token: Some("0123456789abcdef".into()),
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
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8780)));
        assert_eq!(c.advertise_url, None);
        assert_eq!(c.availability_zone, "nova");
        assert_eq!(c.heartbeat, Duration::from_secs(10));
        assert_eq!(c.nbd_listen, SocketAddr::from(([127, 0, 0, 1], 10809)));
        assert_eq!(c.nbd_advertise, None);
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases: [(ConfigFile, &str); 8] = [
            (
                ConfigFile {
                    nbd_advertise: Some("storage-1".into()),
                    ..good()
                },
                "nbd_advertise",
            ),
            (
                ConfigFile {
                    host_id: Some(String::new()),
                    ..good()
                },
                "host_id",
            ),
            (
                ConfigFile {
                    data_dir: Some("relative".into()),
                    ..good()
                },
                "data_dir",
            ),
            (
                ConfigFile {
                    controller_url: Some("https://x".into()),
                    ..good()
                },
                "controller_url",
            ),
            (
                ConfigFile {
                    advertise_url: Some("10.0.0.1:8780".into()),
                    ..good()
                },
                "advertise_url",
            ),
            (
                ConfigFile {
                    token: Some("short".into()),
                    ..good()
                },
                "token",
            ),
            (
                ConfigFile {
                    token_file: Some("/nonexistent".into()),
                    ..good()
                },
                "token",
            ),
            (
                ConfigFile {
                    heartbeat_secs: Some(0),
                    ..good()
                },
                "heartbeat_secs",
            ),
        ];
        for (file, field) in cases {
            assert_eq!(refused(file), field);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("host_id = \"s\"\ndatadir = \"/x\"\n").is_err());
    }
}
