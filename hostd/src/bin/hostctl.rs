//! `hostctl`: a command-line client for hostd's API.
//!
//! `hostctl --socket /run/virga/hostd.sock --token-file T list`,
//! `hostctl --url http://127.0.0.1:8790 create spec.json`, `... stop ID --hard`,
//! `... console ID --tail 20 [--follow]`, `... request GET /host`.
//! `hostctl nbd-connect HOST:PORT EXPORT` connects a volume's NBD export to
//! a free `/dev/nbdN` as hostd does (and prints it); `hostctl
//! nbd-disconnect N` ends it: both on this host, without hostd.
//! The token may also come from `HOSTD_TOKEN`. Prints the response body; exits 0
//! on 2xx, 1 on an HTTP error (the error is printed on stderr), 2 when hostd
//! cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

#[derive(Parser)]
#[command(version, about = "Talks to hostd's API.")]
struct Args {
    /// hostd's Unix socket.
    #[arg(long, conflicts_with = "url")]
    socket: Option<PathBuf>,
    /// hostd's TCP address, as http://HOST:PORT.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token (or HOSTD_TOKEN, or --token-file).
    #[arg(long, env = "HOSTD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Host capacity and versions.
    Host,
    /// All instances.
    List,
    /// One instance.
    Show {
        id: String,
    },
    /// Create (and start) an instance from a JSON spec file.
    Create {
        spec: PathBuf,
        #[arg(long)]
        no_start: bool,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
        #[arg(long)]
        hard: bool,
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    Reboot {
        id: String,
        #[arg(long)]
        hard: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Delete {
        id: String,
    },
    /// The last lines of an instance's console; --follow keeps streaming.
    Console {
        id: String,
        #[arg(long, default_value_t = 100)]
        tail: usize,
        #[arg(long)]
        follow: bool,
    },
    /// The VMM's own metrics.
    Metrics {
        id: String,
    },
    /// Stream state changes.
    Events,
    /// Any request: METHOD PATH [BODY].
    Request {
        method: String,
        path: String,
        body: Option<String>,
    },
    /// Connects a volume's NBD export (storaged's) to a free /dev/nbdN on
    /// this host, as hostd does, and prints the device.
    NbdConnect {
        address: String,
        export: String,
    },
    /// Disconnects /dev/nbdN.
    NbdDisconnect {
        index: u32,
    },
}

enum Failure {
    Http(u16),
    Unreachable(String),
}

async fn call(args: &Args, method: &str, path: &str, body: Option<String>) -> Result<(), Failure> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| Failure::Unreachable(format!("{}: {e}", p.display())))?
            .trim()
            .to_owned(),
        (None, None) => String::new(),
    };
    let unreachable = |e: String| Failure::Unreachable(e);
    let (mut sender, host) = if let Some(socket) = &args.socket {
        let s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(format!("{}: {e}", socket.display())))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        (sender, "localhost".to_owned())
    } else {
        let url = args.url.as_deref().unwrap_or("http://127.0.0.1:8790");
        let authority = url
            .strip_prefix("http://")
            .map(|r| r.trim_end_matches('/'))
            .ok_or_else(|| unreachable(format!("{url}: expected http://HOST:PORT")))?;
        let s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(format!("{authority}: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        (sender, authority.to_owned())
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| unreachable(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let ok = (200..300).contains(&status);
    // Streamed as it arrives (console --follow, events).
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreachable(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            use std::io::Write;
            let mut out: Box<dyn Write> = if ok {
                Box::new(std::io::stdout())
            } else {
                Box::new(std::io::stderr())
            };
            let _ = out.write_all(data);
            let _ = out.flush();
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Http(status))
    }
}

fn request(cmd: &Cmd) -> Result<(String, String, Option<String>), String> {
    let action = |id: &str, action: &str, body: String| {
        (
            "POST".to_owned(),
            format!("/instances/{id}/actions/{action}"),
            Some(body),
        )
    };
    Ok(match cmd {
        Cmd::Host => ("GET".into(), "/host".into(), None),
        Cmd::List => ("GET".into(), "/instances".into(), None),
        Cmd::Show { id } => ("GET".into(), format!("/instances/{id}"), None),
        Cmd::Create { spec, no_start } => {
            let body =
                std::fs::read_to_string(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
            let q = if *no_start { "?start=false" } else { "" };
            ("POST".into(), format!("/instances{q}"), Some(body))
        }
        Cmd::Start { id } => action(id, "start", String::new()),
        Cmd::Stop {
            id,
            hard,
            timeout_ms,
        } => {
            let t = timeout_ms.map_or(String::new(), |t| format!(r#", "timeout_ms": {t}"#));
            action(id, "stop", format!(r#"{{"hard": {hard}{t}}}"#))
        }
        Cmd::Reboot { id, hard } => action(id, "reboot", format!(r#"{{"hard": {hard}}}"#)),
        Cmd::Pause { id } => action(id, "pause", String::new()),
        Cmd::Resume { id } => action(id, "resume", String::new()),
        Cmd::Delete { id } => ("DELETE".into(), format!("/instances/{id}"), None),
        Cmd::Console { id, tail, follow } => (
            "GET".into(),
            format!(
                "/instances/{id}/console?tail={tail}{}",
                if *follow { "&follow=true" } else { "" }
            ),
            None,
        ),
        Cmd::Metrics { id } => ("GET".into(), format!("/instances/{id}/metrics"), None),
        Cmd::Events => ("GET".into(), "/events".into(), None),
        Cmd::Request { method, path, body } => (method.to_uppercase(), path.clone(), body.clone()),
        Cmd::NbdConnect { .. } | Cmd::NbdDisconnect { .. } => {
            return Err("not a request to hostd".into())
        }
    })
}

/// The NBD commands, which run here rather than through hostd.
fn nbd(cmd: &Cmd) -> Option<ExitCode> {
    let done = match cmd {
        Cmd::NbdConnect { address, export } => {
            hostd::nbd::connect(address, export, "hostctl").map(|(i, e)| {
                println!("{} {} bytes", hostd::nbd::device(i).display(), e.size);
            })
        }
        Cmd::NbdDisconnect { index } => hostd::nbd::disconnect(*index),
        _ => return None,
    };
    Some(match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostctl: {e}");
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(code) = nbd(&args.command) {
        return code;
    }
    let (method, path, body) = match request(&args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostctl: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostctl: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(call(&args, &method, &path, body)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Http(code)) => {
            eprintln!("\nhostctl: HTTP {code}");
            ExitCode::FAILURE
        }
        Err(Failure::Unreachable(e)) => {
            eprintln!("hostctl: {e}");
            ExitCode::from(2)
        }
    }
}
