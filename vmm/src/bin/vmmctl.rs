//! `vmmctl`: a small client for the VMM's control API.
//!
//! `vmmctl --socket PATH get /vm`, `vmmctl --socket PATH put /vm/state '{"state":"paused"}'`,
//! `vmmctl --socket PATH --tap tap1 post /vm/nets '{"mac": "52:54:00:00:00:02"}'`
//! (opens the tap here and sends its descriptor, as hostd does),
//! `vmmctl --socket PATH --disk FILE post /vm/disks '{"serial": "data1"}'`
//! (opens the file read-write here and sends it),
//! `vmmctl --socket PATH put /vm/devices/disk1/size '{"bytes": 21474836480}'` (grows a disk),
//! `vmmctl --socket PATH delete /vm/devices/net1`.
//! Prints the status code on stderr and the body on stdout; exits 0 on 2xx, 1 on
//! an HTTP error status, 2 when the VMM cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
}

#[derive(Parser)]
#[command(version, about = "Talks to a vmm's control API on its Unix socket.")]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    /// A tap to open and send with the request (one queue).
    #[arg(long)]
    tap: Option<String>,
    /// A disk image to open (read-write) and send with the request.
    #[arg(long)]
    disk: Option<PathBuf>,
    method: Method,
    /// e.g. /vm, /vm/state, /vm/actions/shutdown, /metrics
    path: String,
    /// JSON request body.
    body: Option<String>,
}

async fn call(args: &Args) -> Result<(u16, Vec<u8>), String> {
    let method = match args.method {
        Method::Get => hyper::Method::GET,
        Method::Put => hyper::Method::PUT,
        Method::Post => hyper::Method::POST,
        Method::Delete => hyper::Method::DELETE,
    };
    let tap = match &args.tap {
        Some(name) => Some(vmm::virtio::net::tap::Tap::open(name, 1).map_err(|e| e.to_string())?),
        None => None,
    };
    let disk = match &args.disk {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let fds: Vec<_> = tap
        .iter()
        .filter_map(|t| t.file(0))
        .chain(disk.iter())
        .map(std::os::fd::AsFd::as_fd)
        .collect();
    vmm::api_client::request_with_fds(&args.socket, method, &args.path, args.body.as_deref(), &fds)
        .await
        .map_err(|e| e.to_string())
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
