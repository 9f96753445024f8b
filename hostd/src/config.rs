//! hostd's configuration: a TOML file, checked completely before anything starts.
//!
//! ```toml
//! token_file = "/etc/virga/hostd.token"   # or: token = "..."
//! listen = "0.0.0.0:8790"                 # TCP; optional
//! socket = "/run/virga/hostd.sock"        # Unix socket; optional
//! state_dir = "/var/lib/virga/hostd"
//! vmm_binary = "/usr/libexec/virga/vmm"
//! bootpick_binary = "/usr/libexec/virga/virga-bootpick" # next to hostd by default
//! jail = true                             # VMMs jailed, each as its own user
//! vmm_uid_base = 2000000                  # those users: uid = gid = base + N
//! cgroup_root = "/sys/fs/cgroup/virga"    # "" disables cgroups
//! controller_url = "http://10.0.0.1:8774" # optional: register and heartbeat
//! unused_image_secs = 86400               # a cached image no instance uses goes after this; 0 keeps it
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

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub vmm_binary: Option<PathBuf>,
    pub bootpick_binary: Option<PathBuf>,
    /// Jail every VMM (the default; needs hostd to run as root).
    pub jail: Option<bool>,
    pub vmm_uid_base: Option<u32>,
    pub cgroup_root: Option<PathBuf>,
    pub controller_url: Option<String>,
    pub controller_token: Option<String>,
    pub host_id: Option<String>,
    /// The URL the controller should use to reach this hostd.
    pub advertise_url: Option<String>,
    pub heartbeat_secs: Option<u64>,
    /// Host memory kept out of instances' reach.
    pub reserved_memory_mib: Option<u64>,
    /// Memory a VMM may use beyond its guest's RAM (its cgroup's memory.max).
    pub vmm_overhead_mib: Option<u64>,
    /// How long a graceful stop waits before stopping the VM hard.
    pub stop_timeout_ms: Option<u64>,
    /// How long a cached image no instance uses stays; 0 keeps it.
    pub unused_image_secs: Option<u64>,
}

/// Where hostd registers itself.
#[derive(Clone, Debug)]
pub struct Controller {
    pub url: String,
    pub token: Option<String>,
    pub advertise_url: String,
    pub heartbeat: Duration,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub token: String,
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub vmm_binary: PathBuf,
    /// Reads root disks' `/boot` (instances booted from a disk image); only
    /// needed by those, so checked when one starts.
    pub bootpick_binary: PathBuf,
    /// The first of the users jailed VMMs run as (one per instance); None
    /// runs VMMs unjailed, as hostd's own user.
    pub vmm_uid_base: Option<u32>,
    pub cgroup_root: Option<PathBuf>,
    pub host_id: String,
    pub controller: Option<Controller>,
    pub reserved_memory_mib: u64,
    pub vmm_overhead_mib: u64,
    pub stop_timeout: Duration,
    /// How long a cached image no instance uses stays; None keeps it.
    pub unused_image_for: Option<Duration>,
}

/// As Nova's `remove_unused_original_minimum_age_seconds`.
pub const DEFAULT_UNUSED_IMAGE_SECS: u64 = 86_400;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/virga/hostd";
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup/virga";
/// Jailed VMMs run as uid = gid = this plus a number no other instance holds:
/// far above the ranges distributions hand out to people and services.
pub const DEFAULT_VMM_UID_BASE: u32 = 2_000_000;
/// How many users the jail may use, so at most this many instances per host.
pub const MAX_JAILED_VMMS: u32 = 65_536;
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
        if file.listen.is_none() && file.socket.is_none() {
            return Err(invalid(
                "listen",
                "give listen (TCP), socket (Unix), or both",
            ));
        }
        let vmm_binary = match file.vmm_binary {
            Some(p) => p,
            None => default_vmm_binary()
                .ok_or_else(|| invalid("vmm_binary", "not set, and no vmm next to hostd"))?,
        };
        if !is_executable(&vmm_binary) {
            return Err(invalid(
                "vmm_binary",
                format!("{} is not an executable file", vmm_binary.display()),
            ));
        }
        let bootpick_binary = file.bootpick_binary.unwrap_or_else(|| {
            std::env::current_exe()
                .map(|p| p.with_file_name("virga-bootpick"))
                .unwrap_or_else(|_| PathBuf::from("virga-bootpick"))
        });
        let vmm_uid_base = match file.jail.unwrap_or(true) {
            false => None,
            true => {
                let base = file.vmm_uid_base.unwrap_or(DEFAULT_VMM_UID_BASE);
                if base == 0 || base.checked_add(MAX_JAILED_VMMS).is_none() {
                    return Err(invalid(
                        "vmm_uid_base",
                        format!("between 1 and {}", u32::MAX - MAX_JAILED_VMMS),
                    ));
                }
                // SAFETY: geteuid has no arguments and cannot fail.
                if unsafe { libc::geteuid() } != 0 {
                    return Err(invalid(
                        "jail",
                        "jailing VMMs needs hostd to run as root (or set jail = false)",
                    ));
                }
                Some(base)
            }
        };
        let cgroup_root = match file.cgroup_root {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) if !p.is_absolute() => {
                return Err(invalid("cgroup_root", "must be an absolute path (or \"\")"))
            }
            Some(p) => Some(p),
            None => Some(PathBuf::from(DEFAULT_CGROUP_ROOT)),
        };
        let host_id = file.host_id.unwrap_or_else(hostname);
        if !crate::instance::valid_id(&host_id) {
            return Err(invalid(
                "host_id",
                format!("{host_id:?}: 1-63 of a-z, 0-9, '-', starting with a letter or digit"),
            ));
        }
        let heartbeat = Duration::from_secs(file.heartbeat_secs.unwrap_or(10));
        if heartbeat.is_zero() || heartbeat > Duration::from_secs(3600) {
            return Err(invalid("heartbeat_secs", "between 1 and 3600"));
        }
        let controller = match file.controller_url {
            Some(url) => {
                if !url.starts_with("http://") {
                    return Err(invalid("controller_url", "must be an http:// URL"));
                }
                let advertise_url = match (file.advertise_url, file.listen) {
                    (Some(u), _) => u,
                    (None, Some(addr)) if !addr.ip().is_unspecified() => format!("http://{addr}"),
                    _ => {
                        return Err(invalid(
                            "advertise_url",
                            "needed with controller_url unless listen names a specific address",
                        ))
                    }
                };
                Some(Controller {
                    url: url.trim_end_matches('/').to_owned(),
                    token: file.controller_token,
                    advertise_url,
                    heartbeat,
                })
            }
            None => None,
        };
        let stop_timeout = Duration::from_millis(file.stop_timeout_ms.unwrap_or(30_000));
        if stop_timeout > Duration::from_secs(600) {
            return Err(invalid("stop_timeout_ms", "at most 600000"));
        }
        let unused_image_for = match file.unused_image_secs {
            Some(0) => None,
            Some(secs) if secs > 10 * 365 * 86_400 => {
                return Err(invalid(
                    "unused_image_secs",
                    "at most ten years (0 keeps images for ever)",
                ))
            }
            secs => Some(Duration::from_secs(
                secs.unwrap_or(DEFAULT_UNUSED_IMAGE_SECS),
            )),
        };
        Ok(Config {
            token,
            listen: file.listen,
            socket: file.socket,
            state_dir: file
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            vmm_binary,
            bootpick_binary,
            vmm_uid_base,
            cgroup_root,
            host_id,
            controller,
            reserved_memory_mib: file.reserved_memory_mib.unwrap_or(512),
            vmm_overhead_mib: file.vmm_overhead_mib.unwrap_or(64),
            stop_timeout,
            unused_image_for,
        })
    }
}

/// `vmm` in the directory hostd runs from.
fn default_vmm_binary() -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.with_file_name("vmm");
    p.exists().then_some(p)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConfigFile {
        ConfigFile {
            token: Some("0123456789abcdef".into()),
            socket: Some("/tmp/hostd.sock".into()),
            vmm_binary: Some("/bin/sh".into()),
            host_id: Some("host-1".into()),
            ..ConfigFile::default()
        }
    }

    fn field(r: Result<Config, ConfigError>) -> &'static str {
        match r {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = Config::validate(ConfigFile {
            jail: Some(false),
            ..base()
        })
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.cgroup_root, Some(PathBuf::from(DEFAULT_CGROUP_ROOT)));
        assert_eq!(c.stop_timeout, Duration::from_secs(30));
        assert_eq!(c.unused_image_for, Some(Duration::from_secs(86_400)));
        let kept = Config::validate(ConfigFile {
            jail: Some(false),
            unused_image_secs: Some(0),
            ..base()
        });
        assert_eq!(kept.unwrap().unused_image_for, None, "0 keeps images");
        assert!(c.controller.is_none());
        assert_eq!(c.vmm_uid_base, None);
        // VMMs are jailed by default, which needs hostd to run as root.
        let jailed = Config::validate(base());
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(jailed.unwrap().vmm_uid_base, Some(DEFAULT_VMM_UID_BASE));
        } else {
            assert_eq!(field(jailed), "jail");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(ConfigFile, &str)> = vec![
            (
                ConfigFile {
                    token: Some("short".into()),
                    ..base()
                },
                "token",
            ),
            (
                ConfigFile {
                    token: None,
                    ..base()
                },
                "token",
            ),
            (
                ConfigFile {
                    token_file: Some("/nonexistent".into()),
                    token: None,
                    ..base()
                },
                "token_file",
            ),
            (
                ConfigFile {
                    socket: None,
                    ..base()
                },
                "listen",
            ),
            (
                ConfigFile {
                    vmm_binary: Some("/nonexistent/vmm".into()),
                    ..base()
                },
                "vmm_binary",
            ),
            (
                ConfigFile {
                    vmm_uid_base: Some(u32::MAX - 10),
                    ..base()
                },
                "vmm_uid_base",
            ),
            (
                ConfigFile {
                    cgroup_root: Some("relative".into()),
                    ..base()
                },
                "cgroup_root",
            ),
            (
                ConfigFile {
                    host_id: Some("Bad Host".into()),
                    ..base()
                },
                "host_id",
            ),
            (
                ConfigFile {
                    controller_url: Some("ftp://x".into()),
                    ..base()
                },
                "controller_url",
            ),
            (
                ConfigFile {
                    controller_url: Some("http://c:1".into()),
                    ..base()
                },
                "advertise_url",
            ),
            (
                ConfigFile {
                    heartbeat_secs: Some(0),
                    ..base()
                },
                "heartbeat_secs",
            ),
            (
                ConfigFile {
                    stop_timeout_ms: Some(10_000_000),
                    ..base()
                },
                "stop_timeout_ms",
            ),
            (
                ConfigFile {
                    unused_image_secs: Some(u64::MAX),
                    ..base()
                },
                "unused_image_secs",
            ),
        ];
        for (file, expected) in cases {
            assert_eq!(field(Config::validate(file)), expected);
        }
    }

    #[test]
    fn toml_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hostd.toml");
        std::fs::write(&p, "tokn = \"x\"\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("unknown field `tokn`"), "{e}");
        std::fs::write(&p, "listen = \"not an address\"\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
        assert!(matches!(
            Config::load(&dir.path().join("missing.toml")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn the_shipped_example_parses() {
        let file: ConfigFile = toml::from_str(include_str!("../dist/hostd.toml")).unwrap();
        assert_eq!(file.socket, Some(PathBuf::from("/run/virga/hostd.sock")));
        assert_eq!(file.stop_timeout_ms, Some(30_000));
    }

    #[test]
    fn controller_registration() {
        let c = Config::validate(ConfigFile {
            controller_url: Some("http://ctl:8774/".into()),
            listen: Some("10.0.0.5:8790".parse().unwrap()),
            ..base()
        })
        .unwrap();
        let ctl = c.controller.unwrap();
        assert_eq!(ctl.url, "http://ctl:8774");
        assert_eq!(ctl.advertise_url, "http://10.0.0.5:8790");
    }
}
