//! `cargo xtask bench <name>`: side-by-side measurements printed as a table and one JSON line.
//! Reports, not pass/fail: the machines are shared and noisy, so targets are printed next to
//! the figures instead of being asserted.
mod overhead;
mod profiler;
mod wrk;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// nginx serving a small file under wrk at saturation, agent off/on in alternating rounds.
    Overhead(overhead::OverheadArgs),
    /// A CPU-bound workload with no profiler, the agent's profiler, and perf record.
    Profiler(profiler::ProfilerArgs),
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Overhead(a) => overhead::run(a),
        Bench::Profiler(a) => profiler::run(a),
    }
}
