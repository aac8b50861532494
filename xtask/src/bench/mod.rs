//! `cargo xtask bench <name>`: side-by-side measurements printed as a table and one JSON line.
//! Reports, not pass/fail: the machines are shared and noisy, so targets are printed next to
//! the figures instead of being asserted.
mod accuracy;
mod capacity;
mod db;
mod fastapi;
mod host_tax;
mod kernel_time;
mod loadgen;
mod memory;
mod overhead;
mod profiler;
mod sdk_compare;
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
    /// nginx serving a small file and a FastAPI app under wrk, at saturation and at 50% of it,
    /// agent off/on in alternating rounds.
    Overhead(overhead::OverheadArgs),
    /// pgbench -S, redis-benchmark, mariadb-slap and memcslap against real servers, agent
    /// off/on in alternating rounds: throughput ratio and agent CPU per database operation.
    Db(db::DbArgs),
    /// The agent's memory (RssAnon, VmHWM) under 10^5 distinct URL paths, 10^4 connections
    /// held open, and heavy process churn, with its budgets and overflow counters.
    Memory(memory::MemoryArgs),
    /// Counts against the load generator's at 50% and 100% of saturation, the loss counter
    /// against the shortfall with a tiny ring buffer, and server durations against the app's
    /// own measurement.
    Accuracy(accuracy::AccuracyArgs),
    /// The highest request rate the agent follows with zero lost events, and the loss curve
    /// above it (with no CPU limit, and with the agent's CPU capped by a cgroup quota).
    Capacity(capacity::CapacityArgs),
    /// A CPU-bound workload with no profiler, the agent's profiler, and perf record.
    Profiler(profiler::ProfilerArgs),
    /// A process that never touches a socket but makes millions of syscalls, timed with no
    /// agent and with the agent on each capture path.
    HostTax(host_tax::HostTaxArgs),
    /// A FastAPI app traced by the OpenTelemetry Python SDK and by the agent: span counts,
    /// routes, statuses and durations side by side, paired by trace id.
    SdkCompare(sdk_compare::SdkCompareArgs),
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Overhead(a) => overhead::run(a),
        Bench::Db(a) => db::run(a),
        Bench::Memory(a) => memory::run(a),
        Bench::Accuracy(a) => accuracy::run(a),
        Bench::Capacity(a) => capacity::run(a),
        Bench::Profiler(a) => profiler::run(a),
        Bench::SdkCompare(a) => sdk_compare::run(a),
        Bench::HostTax(a) => host_tax::run(a),
    }
}
