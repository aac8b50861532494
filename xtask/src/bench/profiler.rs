//! Overhead of the continuous profiler on a CPU-bound workload: rounds rotate between no
//! profiler, the agent's profiler (99 Hz, every CPU) and `perf record -F 99 -a -g`, in one run.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;
use tests::{agent::Agent, workloads};

use crate::{prereq, util};

#[derive(Debug, Args)]
pub struct ProfilerArgs {
    /// Rounds of each mode.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Seconds per round.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Workload threads (default: one per CPU).
    #[arg(long)]
    threads: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Agent,
    Perf,
}

#[derive(Debug, Default)]
struct AgentRound {
    units: f64,
    cpu_ns: u64,
    symbolize_s: f64,
    samples: f64,
    peak_rss: u64,
}

pub fn run(args: &ProfilerArgs) -> Result<()> {
    prereq::ensure(prereq::Scope::Test)?;
    let agent_bin = util::build_release_agent()?;
    let w = workloads::workload()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let seconds = f64::from(args.seconds);
    eprintln!("warm-up");
    workloads::spin(&w.binary, 2.0, threads)?;

    let mut off = Vec::new();
    let mut perf = Vec::new();
    let mut perf_cpu = Vec::new();
    let mut agent = Vec::new();
    let orders = [
        [Mode::Off, Mode::Agent, Mode::Perf],
        [Mode::Agent, Mode::Perf, Mode::Off],
        [Mode::Perf, Mode::Off, Mode::Agent],
    ];
    for round in 0..args.rounds {
        for mode in orders[round as usize % orders.len()] {
            match mode {
                Mode::Off => {
                    let u = workloads::spin(&w.binary, seconds, threads)? as f64;
                    eprintln!("round {round} off  : {u:.0} units");
                    off.push(u);
                }
                Mode::Agent => {
                    let r = agent_round(&agent_bin, &w.binary, seconds, threads)?;
                    eprintln!(
                        "round {round} agent: {:.0} units, agent {:.3} s CPU, {:.0} samples",
                        r.units,
                        r.cpu_ns as f64 / 1e9,
                        r.samples
                    );
                    agent.push(r);
                }
                Mode::Perf => {
                    let dir = tests::servers::temp_dir("perf")?;
                    let data = dir.join("perf.data");
                    let mut rec = start_perf(&data)?;
                    std::thread::sleep(Duration::from_millis(500));
                    let cpu0 = process_cpu_ns(rec.id());
                    let u = workloads::spin(&w.binary, seconds, threads)? as f64;
                    let cpu1 = process_cpu_ns(rec.id());
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
                    let _ = rec.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    eprintln!(
                        "round {round} perf : {u:.0} units, perf {:.3} s CPU",
                        (cpu1 - cpu0) as f64 / 1e9
                    );
                    perf.push(u);
                    perf_cpu.push((cpu1 - cpu0) as f64);
                }
            }
        }
    }

    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let base = med(&off);
    let on = med(&agent.iter().map(|r| r.units).collect::<Vec<_>>());
    let with_perf = med(&perf);
    // Paired ratios: each round's three modes ran back to back, so a slow spell of the shared
    // machine hits all three; the median of per-round ratios is robust to those spells.
    let agent_ratio = med(&agent
        .iter()
        .zip(&off)
        .map(|(a, o)| a.units / o)
        .collect::<Vec<_>>());
    let perf_ratio = med(&perf
        .iter()
        .zip(&off)
        .map(|(p, o)| p / o)
        .collect::<Vec<_>>());
    let spread = {
        let lo = off.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = off.iter().copied().fold(0.0, f64::max);
        (hi - lo) / base * 100.0
    };
    let window = seconds + 2.5;
    let agent_cpu_per_s = med(&agent
        .iter()
        .map(|r| r.cpu_ns as f64 / 1e9 / window)
        .collect::<Vec<_>>());
    let perf_cpu_per_s = med(&perf_cpu
        .iter()
        .map(|ns| ns / 1e9 / seconds)
        .collect::<Vec<_>>());
    let symbolize_per_s = med(&agent
        .iter()
        .map(|r| r.symbolize_s / window)
        .collect::<Vec<_>>());
    let rss_mb = agent.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let overhead = (1.0 - agent_ratio) * 100.0;
    let perf_overhead = (1.0 - perf_ratio) * 100.0;

    println!(
        "\nprofiler: CPU-bound workload on {threads} threads, {} x {} s rounds per mode; overheads are medians of per-round paired ratios",
        args.rounds, args.seconds
    );
    println!("{:<40} {:>14} {:>12}", "", "value", "target");
    println!(
        "{:<40} {:>14.0}",
        "throughput, no profiler (units/s)",
        base / seconds
    );
    println!(
        "{:<40} {:>14.0}",
        "throughput, agent profiler (units/s)",
        on / seconds
    );
    println!(
        "{:<40} {:>14.0}",
        "throughput, perf record -F 99 -a -g",
        with_perf / seconds
    );
    println!(
        "{:<40} {:>13.1}%",
        "spread of no-profiler rounds (noise)", spread
    );
    println!(
        "{:<40} {:>13.2}% {:>12}",
        "agent profiler overhead", overhead, "<= 0.5%"
    );
    println!(
        "{:<40} {:>13.2}% {:>12}",
        "perf record overhead", perf_overhead, "agent lower"
    );
    println!(
        "{:<40} {:>14.4}",
        "agent CPU (cores: drain + symbolize)", agent_cpu_per_s
    );
    println!(
        "{:<40} {:>14.4}",
        "  of which symbolizing (cores)", symbolize_per_s
    );
    println!("{:<40} {:>14.4}", "perf record CPU (cores)", perf_cpu_per_s);
    println!("{:<40} {:>14.1}", "agent peak RSS (MB)", rss_mb);
    println!(
        "{}",
        serde_json::json!({
            "bench": "profiler",
            "overhead_pct": overhead,
            "perf_overhead_pct": perf_overhead,
            "throughput_ratio": agent_ratio,
            "perf_throughput_ratio": perf_ratio,
            "noise_spread_pct": spread,
            "agent_cpu_cores": agent_cpu_per_s,
            "agent_symbolize_cores": symbolize_per_s,
            "perf_cpu_cores": perf_cpu_per_s,
            "agent_peak_rss_mb": rss_mb,
            "threads": threads,
            "rounds": args.rounds,
            "seconds": args.seconds,
        })
    );
    Ok(())
}

fn agent_round(
    agent_bin: &std::path::Path,
    workload: &std::path::Path,
    seconds: f64,
    threads: u32,
) -> Result<AgentRound> {
    let agent = Agent::start_binary(agent_bin, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let m0 = agent.metrics()?;
    let cpu0 = agent.cpu_ns();
    let units = workloads::spin(workload, seconds, threads)? as f64;
    // One more drain so the round's samples are counted; the agent's CPU and its
    // symbolizing time are taken over the same window (the round plus this drain).
    std::thread::sleep(Duration::from_millis(2500));
    let cpu1 = agent.cpu_ns();
    let m1 = agent.metrics()?;
    let delta = |name: &str, filter: &[(&str, &str)]| m1.sum(name, filter) - m0.sum(name, filter);
    Ok(AgentRound {
        units,
        cpu_ns: cpu1.saturating_sub(cpu0),
        symbolize_s: delta("apm_profile_symbolize_seconds_total", &[]),
        samples: delta("apm_profile_samples_total", &[("state", "busy")]),
        peak_rss: agent.peak_rss_bytes(),
    })
}

fn start_perf(data: &std::path::Path) -> Result<Child> {
    Command::new("perf")
        .args(["record", "-F", "99", "-a", "-g", "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (apt-get install linux-perf)")
}

/// CPU time of a process's threads, in nanoseconds (schedstat).
fn process_cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .sum()
        })
        .unwrap_or(0)
}
