//! Virga controller: the OpenStack-compatible control API, scheduler and state.
//!
//! Placeholder: this service has no implementation yet. It exists so that the
//! workspace shows the architecture; it answers `--help` and `--version` and
//! refuses to run rather than pretend.

use clap::Parser;

#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _args = Args::parse();
    eprintln!("{}: not implemented yet", env!("CARGO_PKG_NAME"));
    std::process::ExitCode::FAILURE
}
