//! `vmmctl`: a small client for the VMM's control API.
//!
//! `vmmctl --socket PATH get /vm`, `vmmctl --socket PATH put /vm/state '{"state":"paused"}'`.
//! Prints the status code on stderr and the body on stdout; exits 0 on 2xx, 1 on
//! an HTTP error status, 2 when the VMM cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    Get,
    Put,
}

#[derive(Parser)]
#[command(version, about = "Talks to a vmm's control API on its Unix socket.")]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    method: Method,
    /// e.g. /vm, /vm/state, /vm/actions/shutdown, /metrics
    path: String,
    /// JSON request body.
    body: Option<String>,
}

async fn call(args: &Args) -> Result<(u16, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(&args.socket)
        .await
        .map_err(|e| format!("{}: {e}", args.socket.display()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let method = match args.method {
        Method::Get => hyper::Method::GET,
        Method::Put => hyper::Method::PUT,
    };
    let body = args.body.clone().unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(&args.path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmmctl: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(call(&args)) {
        Ok((status, body)) => {
            eprintln!("{status}");
            println!("{}", String::from_utf8_lossy(&body));
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vmmctl: {e}");
            ExitCode::from(2)
        }
    }
}
