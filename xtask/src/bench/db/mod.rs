//! Overhead of the agent on database traffic: real servers driven by their own load
//! generators (`pgbench -S` against PostgreSQL, `redis-benchmark` against Redis,
//! `mariadb-slap` against MariaDB, `memcslap` against memcached), rounds alternating agent
//! off / on (order flipped every round so drift cancels), same machine, same run.
//!
//! One file per workload: each starts its server, prepares its data and runs its load
//! generator once per round ([`Load`]); this file runs the rounds, reads the agent's figures
//! and prints the table and the JSON line.
mod mariadb;
mod memcached;
mod pgbench;
mod redis;

use std::{path::Path, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use tests::{agent::Agent, prom::Metrics};

use super::overhead::median;
use crate::{prereq, util};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// `pgbench -S` against PostgreSQL.
    Pgbench,
    /// `redis-benchmark -t get,set` against Redis.
    Redis,
    /// `mariadb-slap` point SELECTs against MariaDB.
    Mariadb,
    /// `memcslap --test=get` (sets, then gets) against memcached.
    Memcached,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// Pairs of off/on rounds.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Seconds of pgbench per round.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// pgbench clients (connections).
    #[arg(long, default_value_t = 4)]
    pg_clients: u32,
    /// redis-benchmark requests per command and round.
    #[arg(long, default_value_t = 400_000)]
    redis_requests: u32,
    /// redis-benchmark pipeline depth.
    #[arg(long, default_value_t = 16)]
    redis_pipeline: u32,
    /// mariadb-slap clients (connections).
    #[arg(long, default_value_t = 4)]
    mariadb_clients: u32,
    /// mariadb-slap queries per round, all clients together (the tool runs a fixed count,
    /// not a duration: about 8 s at the 60 000 queries/s of a 2-core VM).
    #[arg(long, default_value_t = 500_000)]
    mariadb_queries: u32,
    /// memcslap threads (one connection each) of the get phase.
    #[arg(long, default_value_t = 2)]
    memcached_threads: u32,
    /// memcslap keys per round: set once each, then each thread gets as many (with 2
    /// threads, 300 000 operations: about 9 s at the 33 000 operations/s of a 2-core VM).
    #[arg(long, default_value_t = 100_000)]
    memcached_keys: u32,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pgbench,redis,mariadb,memcached"
    )]
    workloads: Vec<Workload>,
}

/// One workload's figures in one round.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    /// Operations per second as the load generator measured them.
    ops_per_s: f64,
    /// Operations the load generator completed.
    ops: f64,
    /// Agent on: CPU the agent used during the round, operations it observed (client and
    /// server sides), events lost.
    cpu_ns: u64,
    observed: f64,
    lost: f64,
    peak_rss: u64,
}

/// A running server and its load generator.
trait Load {
    /// Row of the table, and (with `_` for `-`) key of the JSON line.
    fn name(&self) -> &'static str;
    /// What one round runs, for the table's header.
    fn describe(&self) -> String;
    /// `OTEL_SERVICE_NAME` of the load generator, and the server's `db_system_name`: what
    /// the agent's operation counts of this workload are selected by.
    fn labels(&self) -> (&'static str, &'static str);
    /// Runs once before the first round, so that the first round does not pay for cold
    /// caches.
    fn warm_up(&self) -> Result<()> {
        Ok(())
    }
    /// One run of the load generator: its own operation count and rate.
    fn run(&self) -> Result<Round>;
}

/// Starts the workload's server and prepares its data.
fn start(w: Workload, args: &DbArgs) -> Result<Box<dyn Load>> {
    Ok(match w {
        Workload::Pgbench => Box::new(pgbench::Pgbench::start(args)?),
        Workload::Redis => Box::new(redis::RedisBenchmark::start(args)?),
        Workload::Mariadb => Box::new(mariadb::MariaDbSlap::start(args)?),
        Workload::Memcached => Box::new(memcached::Memcslap::start(args)?),
    })
}

pub fn run(args: &DbArgs) -> Result<()> {
    let mut selected: Vec<Workload> = Vec::new();
    for &w in &args.workloads {
        if !selected.contains(&w) {
            selected.push(w);
        }
    }
    if selected.is_empty() {
        bail!("no workload selected");
    }
    prereq::ensure(prereq::Scope::Test)?;
    let agent_bin = util::build_release_agent()?;
    let loads = selected
        .iter()
        .map(|&w| start(w, args))
        .collect::<Result<Vec<_>>>()?;
    eprintln!("warm-up");
    for load in &loads {
        load.warm_up()?;
    }

    let mut results: Vec<(Vec<Round>, Vec<Round>)> = vec![Default::default(); loads.len()];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for agent_on in order {
            for (load, slot) in loads.iter().zip(results.iter_mut()) {
                let r = if agent_on {
                    on_round(&agent_bin, load.as_ref())?
                } else {
                    load.run()?
                };
                eprintln!(
                    "round {round} {} {:<17}: {:.0} ops/s{}",
                    if agent_on { "on " } else { "off" },
                    load.name(),
                    r.ops_per_s,
                    if agent_on {
                        format!(
                            ", agent {:.3} s CPU, observed {:.0} of 2 x {:.0}",
                            r.cpu_ns as f64 / 1e9,
                            r.observed,
                            r.ops
                        )
                    } else {
                        String::new()
                    }
                );
                if agent_on { &mut slot.1 } else { &mut slot.0 }.push(r);
            }
        }
    }

    println!("\ndb: {} rounds per side; medians of rounds", args.rounds);
    for load in &loads {
        println!("  {:<17} {}", load.name(), load.describe());
    }
    println!(
        "{:<18} {:>12} {:>12} {:>10} {:>12} {:>14} {:>8} {:>8}",
        "", "ops/s off", "ops/s on", "ratio", "CPU us/op", "CPU us/obs.op", "lost", "RSS MB"
    );
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), "db".into());
    for (load, (off, on)) in loads.iter().zip(&results) {
        let off_ops = median(&off.iter().map(|r| r.ops_per_s).collect::<Vec<_>>());
        let on_ops = median(&on.iter().map(|r| r.ops_per_s).collect::<Vec<_>>());
        let cpu_ns: u64 = on.iter().map(|r| r.cpu_ns).sum();
        let ops: f64 = on.iter().map(|r| r.ops).sum();
        let observed: f64 = on.iter().map(|r| r.observed).sum();
        let lost: f64 = on.iter().map(|r| r.lost).sum();
        let rss = on.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64 / (1024.0 * 1024.0);
        let ratio = on_ops / off_ops;
        let per_op = cpu_ns as f64 / 1e3 / ops.max(1.0);
        let per_observed = cpu_ns as f64 / 1e3 / observed.max(1.0);
        println!(
            "{:<18} {:>12.0} {:>12.0} {:>10.3} {:>12.2} {:>14.2} {:>8.0} {:>8.1}",
            load.name(),
            off_ops,
            on_ops,
            ratio,
            per_op,
            per_observed,
            lost,
            rss
        );
        json.insert(
            load.name().replace('-', "_"),
            serde_json::json!({
                "throughput_ratio": ratio,
                "agent_cpu_us_per_operation": per_op,
                "agent_cpu_us_per_observed_operation": per_observed,
                "events_lost": lost,
                "agent_peak_rss_mb": rss,
                "ops_per_s_off": off_ops,
                "ops_per_s_on": on_ops,
            }),
        );
    }
    println!("targets: throughput ratio >= 0.97, agent CPU <= 2 us per operation, 0 lost");
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}

/// Operations the agent observed for one workload: its client's, and its server's (by
/// system: a server started before the agent may have rewritten the environment that names
/// it, as redis-server and PostgreSQL do).
fn observed(m: &Metrics, load: &dyn Load) -> f64 {
    let (client, system) = load.labels();
    m.sum(
        "db_client_operation_duration_seconds_count",
        &[("service_name", client)],
    ) + m.sum(
        "db_server_operation_duration_seconds_count",
        &[("db_system_name", system)],
    )
}

/// One round with a fresh agent: the load generator's figures, and the agent's CPU, observed
/// operations, lost events and peak RSS over the round.
fn on_round(agent_bin: &Path, load: &dyn Load) -> Result<Round> {
    let agent = Agent::start_binary(agent_bin, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.metrics()?;
    let cpu0 = agent.cpu_ns();
    let mut r = load.run()?;
    // Let the agent drain what the round produced before reading its CPU time: every
    // operation is seen twice (client and server).
    let want = observed(&before, load) + 2.0 * r.ops;
    agent.settle(want, Duration::from_secs(30), |m| observed(m, load))?;
    let cpu1 = agent.cpu_ns();
    let after = agent.metrics()?;
    r.cpu_ns = cpu1.saturating_sub(cpu0);
    r.observed = observed(&after, load) - observed(&before, load);
    r.lost = after.value("apm_events_lost_total") - before.value("apm_events_lost_total");
    r.peak_rss = agent.peak_rss_bytes();
    Ok(r)
}

/// The number in `text` right after `prefix` (on one of its lines, leading blanks ignored),
/// e.g. `tps = 1234.5 (without ...)`; an error naming the tool and quoting its output when
/// there is none.
fn number_after(tool: &str, text: &str, prefix: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no `{prefix}` figure in {tool}'s output:\n{text}"))
}
