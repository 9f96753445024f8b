//! The controller's configuration: a TOML file, checked before anything starts.
//!
//! ```toml
//! listen = "127.0.0.1:8774"
//! public_url = "http://127.0.0.1:8774"     # what the service catalog advertises
//! object_store_url = "http://10.0.0.2:8080" # storaged's Swift API (catalog: object-store)
//! database_url = "sqlite:///var/lib/virga/controller.db"  # or postgres://...
//! region = "RegionOne"
//! token_ttl_secs = 3600
//! hostd_secret_file = "/etc/virga/hostd.secret"  # hosts' tokens derive from it
//!
//! [compute]
//! force_config_drive = false                # a config drive for every server
//!
//! [bootstrap]                               # created on first start
//! admin_user = "admin"
//! admin_password_file = "/etc/virga/admin-password"
//! admin_project = "admin"
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
    pub listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    /// Where storaged's Swift API is (`http://HOST:PORT`): the catalog's
    /// `object-store` entry, `{url}/v1/AUTH_{project}`. None: no entry.
    pub object_store_url: Option<String>,
    pub database_url: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub region: Option<String>,
    pub token_ttl_secs: Option<u64>,
    /// Each host's token is derived from it (`controller host-token HOST`):
    /// hostd authenticates its heartbeats with its token, and the controller
    /// calls that hostd with it. It never leaves the controller.
    pub hostd_secret: Option<String>,
    pub hostd_secret_file: Option<PathBuf>,
    /// Largest image upload, in MiB (default 64 GiB).
    pub max_image_mib: Option<u64>,
    pub scheduler: Option<SchedulerFile>,
    pub compute: Option<ComputeFile>,
    pub bootstrap: Option<BootstrapFile>,
}

/// `[compute]`: what every server gets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeFile {
    /// A config drive for every server, asked for or not (Nova's option of
    /// that name). Otherwise a server gets one when its create asks
    /// (`config_drive`) or its image says `img_config_drive=mandatory`, and
    /// learns who it is from the metadata service.
    pub force_config_drive: Option<bool>,
}

/// `[scheduler]`: overcommit ratios and placement preference.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerFile {
    pub cpu_allocation_ratio: Option<f64>,
    pub ram_allocation_ratio: Option<f64>,
    /// "spread" (default) or "pack".
    pub weigher: Option<String>,
    pub heartbeat_timeout_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    pub admin_password_file: Option<PathBuf>,
    pub admin_project: Option<String>,
}

/// The admin identity created on first start.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub admin_user: String,
    pub admin_password: String,
    pub admin_project: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Base URL clients reach the controller at, without a trailing slash.
    pub public_url: String,
    pub object_store_url: Option<String>,
    pub database_url: String,
    pub state_dir: PathBuf,
    pub region: String,
    pub token_ttl: Duration,
    /// None: no host can register (the internal API answers 401).
    pub hostd_secret: Option<String>,
    pub max_image_bytes: u64,
    pub scheduler: crate::compute::scheduler::Policy,
    /// `[compute] force_config_drive`.
    pub force_config_drive: bool,
    pub bootstrap: Bootstrap,
}

const MIN_PASSWORD_LEN: usize = 8;

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
        let listen = file
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8774)));
        let public_url = file
            .public_url
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let object_store_url = file
            .object_store_url
            .map(|u| u.trim_end_matches('/').to_owned());
        if object_store_url
            .as_deref()
            .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(invalid(
                "object_store_url",
                "must be an http:// or https:// URL",
            ));
        }
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(invalid("public_url", "must be an http:// or https:// URL"));
        }
        let state_dir = file
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/virga/controller"));
        let database_url = file.database_url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                state_dir.join("controller.db").display()
            )
        });
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "sqlite:PATH or postgres://USER@HOST/DB",
            ));
        }
        let region = file.region.unwrap_or_else(|| "RegionOne".into());
        if region.is_empty() || region.len() > 64 {
            return Err(invalid("region", "1 to 64 characters"));
        }
        let ttl = file.token_ttl_secs.unwrap_or(3600);
        if !(60..=7 * 86400).contains(&ttl) {
            return Err(invalid("token_ttl_secs", "between 60 and 604800"));
        }
        let hostd_secret = match (file.hostd_secret, &file.hostd_secret_file) {
            (Some(t), None) => Some(t),
            (None, Some(p)) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| invalid("hostd_secret_file", format!("{}: {e}", p.display())))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "hostd_secret",
                    "only one of hostd_secret and hostd_secret_file",
                ))
            }
        };
        if hostd_secret
            .as_ref()
            .is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "hostd_secret",
                "at least 16 printable characters, no spaces",
            ));
        }
        let sched = file.scheduler.unwrap_or_default();
        let defaults = crate::compute::scheduler::Policy::default();
        let ratio = |field: &'static str, v: Option<f64>, default: f64| match v {
            None => Ok(default),
            Some(r) if r > 0.0 && r <= 64.0 => Ok(r),
            Some(_) => Err(invalid(field, "between 0 (exclusive) and 64")),
        };
        let scheduler = crate::compute::scheduler::Policy {
            cpu_allocation_ratio: ratio(
                "scheduler.cpu_allocation_ratio",
                sched.cpu_allocation_ratio,
                defaults.cpu_allocation_ratio,
            )?,
            ram_allocation_ratio: ratio(
                "scheduler.ram_allocation_ratio",
                sched.ram_allocation_ratio,
                defaults.ram_allocation_ratio,
            )?,
            weigher: match sched.weigher.as_deref() {
                None | Some("spread") => crate::compute::scheduler::Weigher::Spread,
                Some("pack") => crate::compute::scheduler::Weigher::Pack,
                Some(other) => {
                    return Err(invalid(
                        "scheduler.weigher",
                        format!("\"spread\" or \"pack\", not {other:?}"),
                    ))
                }
            },
            heartbeat_timeout_secs: match sched.heartbeat_timeout_secs {
                None => defaults.heartbeat_timeout_secs,
                Some(t) if (1..=3600).contains(&t) => t,
                Some(_) => {
                    return Err(invalid(
                        "scheduler.heartbeat_timeout_secs",
                        "between 1 and 3600",
                    ))
                }
            },
        };
        let b = file.bootstrap.unwrap_or_default();
        let admin_password = match (b.admin_password, &b.admin_password_file) {
            (Some(p), None) => p,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    invalid(
                        "bootstrap.admin_password_file",
                        format!("{}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(invalid(
                    "bootstrap.admin_password",
                    "set admin_password or admin_password_file",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "bootstrap.admin_password",
                    "only one of admin_password and admin_password_file",
                ))
            }
        };
        if admin_password.len() < MIN_PASSWORD_LEN {
            return Err(invalid(
                "bootstrap.admin_password",
                format!("at least {MIN_PASSWORD_LEN} characters"),
            ));
        }
        Ok(Config {
            listen,
            public_url,
            object_store_url,
            database_url,
            state_dir,
            region,
            token_ttl: Duration::from_secs(ttl),
            hostd_secret,
            max_image_bytes: file.max_image_mib.unwrap_or(64 << 10) << 20,
            scheduler,
            force_config_drive: file
                .compute
                .and_then(|c| c.force_config_drive)
                .unwrap_or(false),
            bootstrap: Bootstrap {
                admin_user: b.admin_user.unwrap_or_else(|| "admin".into()),
                admin_password,
                admin_project: b.admin_project.unwrap_or_else(|| "admin".into()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConfigFile {
        ConfigFile {
            bootstrap: Some(BootstrapFile {
                admin_password: Some("secret-pw".into()),
                ..BootstrapFile::default()
            }),
            ..ConfigFile::default()
        }
    }

    #[test]
    fn defaults() {
        let c = Config::validate(base()).unwrap();
        assert_eq!(c.public_url, "http://127.0.0.1:8774");
        assert!(c
            .database_url
            .starts_with("sqlite:///var/lib/virga/controller/controller.db"));
        assert_eq!(c.bootstrap.admin_user, "admin");
        assert_eq!(c.token_ttl, Duration::from_secs(3600));
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |f: ConfigFile| match Config::validate(f) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(ConfigFile {
                public_url: Some("ftp://x".into()),
                ..base()
            }),
            "public_url"
        );
        assert_eq!(
            field(ConfigFile {
                database_url: Some("mysql://x".into()),
                ..base()
            }),
            "database_url"
        );
        assert_eq!(
            field(ConfigFile {
                token_ttl_secs: Some(1),
                ..base()
            }),
            "token_ttl_secs"
        );
        assert_eq!(
            field(ConfigFile {
                region: Some(String::new()),
                ..base()
            }),
            "region"
        );
        assert_eq!(
            field(ConfigFile {
                bootstrap: None,
                ..base()
            }),
            "bootstrap.admin_password"
        );
        let short = ConfigFile {
            bootstrap: Some(BootstrapFile {
                admin_password: Some("short".into()),
                ..BootstrapFile::default()
            }),
            ..base()
        };
        assert_eq!(field(short), "bootstrap.admin_password");
    }
}
