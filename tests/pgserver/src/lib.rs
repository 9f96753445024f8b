//! A throwaway PostgreSQL server from Debian's `postgresql` package: its own
//! data directory in a temp dir, trust auth, stopped (and removed) when
//! dropped. It listens on a Unix socket in that directory only, never on a
//! TCP port: a port picked free and bound later could be taken meanwhile by
//! another test's server (and was). The controller's store tests and the API
//! benchmark run against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")]
    NotInstalled,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0} failed")]
    Failed(&'static str),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> PgError {
    move |source| PgError::Io { what, source }
}

pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    /// The directory of its socket (`.s.PGSQL.5432`).
    socket_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// The port in the socket's name; no TCP port is opened.
const PORT: u16 = 5432;

impl PgServer {
    /// The newest installed server's bin directory.
    fn bin_dir() -> Option<PathBuf> {
        let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop()
    }

    pub fn installed() -> bool {
        Self::bin_dir().is_some()
    }

    /// initdb + pg_ctl start (waits until it accepts connections).
    pub fn start() -> Result<PgServer, PgError> {
        let bin = Self::bin_dir().ok_or(PgError::NotInstalled)?;
        let dir = tempfile::tempdir().map_err(io("temp dir"))?;
        let data = dir.path().join("data");
        // initdb refuses to run as root: the server runs as the package's user.
        if running_as_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .map_err(io("chown"))?;
            if !ok.success() {
                return Err(PgError::Failed("chown postgres"));
            }
        }
        let ok = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .status()
            .map_err(io("initdb"))?;
        if !ok.success() {
            return Err(PgError::Failed("initdb"));
        }
        let ok = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {PORT} -k {} -c listen_addresses=''",
                dir.path().display()
            ))
            .args(["-w", "start"])
            .status()
            .map_err(io("pg_ctl start"))?;
        if !ok.success() {
            return Err(PgError::Failed("pg_ctl start"));
        }
        Ok(PgServer {
            bin,
            data,
            socket_dir: dir.path().to_owned(),
            _dir: dir,
        })
    }

    /// A `postgres://` URL for the server's `postgres` database, through
    /// its Unix socket (`host=` names the socket's directory, as libpq and
    /// sqlx read it).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost:{PORT}/postgres?host={}",
            self.socket_dir.display()
        )
    }

    /// The server's socket.
    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{PORT}"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .status();
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program, run as the `postgres` user when we are root.
fn as_postgres(cmd: &Path) -> Command {
    let mut c = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.stdout(Stdio::null());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_accepts_connections_and_stops() {
        if !PgServer::installed() {
            assert!(
                std::env::var_os("VIRGA_REQUIRE_TOOLS").is_none(),
                "PostgreSQL is required but not installed"
            );
            return;
        }
        let pg = PgServer::start().expect("server starts");
        let socket = pg.socket();
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
        assert!(pg
            .url()
            .contains(&format!("host={}", socket.parent().unwrap().display())));
        drop(pg);
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "stopped when dropped"
        );
    }
}
