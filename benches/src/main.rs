//! `virga-bench`: Virga's benchmarks. Each runs our system and its peers in the
//! same testbed boot (or natively), prints a table of medians and ratios, and
//! writes `target/bench/<bench>.json`.
//!
//! - `boot [--runs N] [--check]`: VMM process start to the guest's marker line, and
//!   the VMM's memory, for virga (vmlinux, bzImage) against QEMU microvm and pc.
//! - `measure ...`: the in-testbed probe `boot` uses.

mod boot;
mod measure;
mod report;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Virga benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot time and VMM memory against QEMU.
    Boot {
        /// Runs per system.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Fail when virga's boot time regressed past the stored tolerance.
        #[arg(long)]
        check: bool,
    },
    /// Time one VMM run to its marker line (used inside the testbed).
    Measure {
        #[arg(long)]
        system: String,
        #[arg(long)]
        marker: String,
        #[arg(long)]
        guest_mib: u64,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Boot { runs, check } => boot::run(runs, check),
        Cmd::Measure {
            system,
            marker,
            guest_mib,
            command,
        } => measure::run(&system, &marker, guest_mib, &command),
    }
}
