//! Overhead of the agent on database traffic: `pgbench -S` against PostgreSQL and
//! `redis-benchmark` (pipelined GET/SET) against Redis, rounds alternating agent off / on
//! (order flipped every round so drift cancels), same machine, same run.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tests::{
    agent::Agent,
    dbservers::{Postgres, Redis, run as run_command},
    prom::Metrics,
};

use super::overhead::median;
use crate::{prereq, util};

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

const PGBENCH: &str = "bench-pgbench";
const REDIS_BENCH: &str = "bench-redis-benchmark";

pub fn run(args: &DbArgs) -> Result<()> {
    prereq::ensure(prereq::Scope::Test)?;
    let agent_bin = util::build_release_agent()?;
    let pg = Postgres::start_with("bench-postgres", false)?;
    run_command(
        pg.client("pgbench", PGBENCH)
            .args(["-i", "-s", "4", "-q", "postgres"]),
    )?;
    let redis = Redis::start("bench-redis")?;
    eprintln!("warm-up");
    pgbench(&pg, args, 2)?;

    let mut results: [(Vec<Round>, Vec<Round>); 2] = Default::default();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for agent_on in order {
            for (w, slot) in results.iter_mut().enumerate() {
                let r = if agent_on {
                    on_round(&agent_bin, w, &pg, &redis, args)?
                } else {
                    workload(w, &pg, &redis, args)?
                };
                eprintln!(
                    "round {round} {} {:<15}: {:.0} ops/s{}",
                    if agent_on { "on " } else { "off" },
                    NAMES[w],
                    r.ops_per_s,
                    if agent_on {
                        format!(", agent {:.3} s CPU", r.cpu_ns as f64 / 1e9)
                    } else {
                        String::new()
                    }
                );
                if agent_on { &mut slot.1 } else { &mut slot.0 }.push(r);
            }
        }
    }

    println!(
        "\ndb: pgbench -S -c {} ({} s rounds) and redis-benchmark -P {} -t get,set ({} requests), {} rounds per side; medians of rounds",
        args.pg_clients, args.seconds, args.redis_pipeline, args.redis_requests, args.rounds
    );
    println!(
        "{:<16} {:>12} {:>12} {:>10} {:>12} {:>14} {:>8} {:>8}",
        "", "ops/s off", "ops/s on", "ratio", "CPU us/op", "CPU us/obs.op", "lost", "RSS MB"
    );
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), "db".into());
    for (w, (off, on)) in results.iter().enumerate() {
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
            "{:<16} {:>12.0} {:>12.0} {:>10.3} {:>12.2} {:>14.2} {:>8.0} {:>8.1}",
            NAMES[w], off_ops, on_ops, ratio, per_op, per_observed, lost, rss
        );
        json.insert(
            NAMES[w].replace('-', "_"),
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

const NAMES: [&str; 2] = ["pgbench-select", "redis-get-set"];

fn workload(w: usize, pg: &Postgres, redis: &Redis, args: &DbArgs) -> Result<Round> {
    match w {
        0 => pgbench(pg, args, args.seconds),
        _ => redis_benchmark(redis, args),
    }
}

/// `pgbench -S` (one primary-key SELECT per transaction, simple protocol).
fn pgbench(pg: &Postgres, args: &DbArgs, seconds: u32) -> Result<Round> {
    let out = run_command(pg.client("pgbench", PGBENCH).args([
        "-S",
        "-n",
        "-M",
        "simple",
        "-c",
        &args.pg_clients.to_string(),
        "-j",
        "1",
        "-T",
        &seconds.to_string(),
        "postgres",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let ops = field("number of transactions actually processed:")
        .with_context(|| format!("no transaction count in pgbench output:\n{text}"))?;
    let tps = field("tps =").with_context(|| format!("no tps in pgbench output:\n{text}"))?;
    Ok(Round {
        ops_per_s: tps,
        ops,
        ..Round::default()
    })
}

/// `redis-benchmark -t get,set` pipelined, one connection: total requests and the
/// mean of the two commands' rates.
fn redis_benchmark(redis: &Redis, args: &DbArgs) -> Result<Round> {
    let out = run_command(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
            .args(["-t", "get,set", "-c", "1", "--csv"])
            .args(["-n", &args.redis_requests.to_string()])
            .args(["-P", &args.redis_pipeline.to_string()])
            .env("OTEL_SERVICE_NAME", REDIS_BENCH),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms",...  then "SET","123456.79",...
    let rates: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .collect();
    if rates.len() != 2 {
        bail!("unexpected redis-benchmark output:\n{text}");
    }
    Ok(Round {
        ops_per_s: rates.iter().sum::<f64>() / 2.0,
        ops: 2.0 * f64::from(args.redis_requests),
        ..Round::default()
    })
}

/// Operations the agent observed for one workload: its client's, and its server's (by
/// system: a server started before the agent may have rewritten the environment that names
/// it, as redis-server and PostgreSQL do).
fn observed(m: &Metrics, w: usize) -> f64 {
    let (client, system) = match w {
        0 => (PGBENCH, "postgresql"),
        _ => (REDIS_BENCH, "redis"),
    };
    m.sum(
        "db_client_operation_duration_seconds_count",
        &[("service_name", client)],
    ) + m.sum(
        "db_server_operation_duration_seconds_count",
        &[("db_system_name", system)],
    )
}

fn on_round(
    agent_bin: &std::path::Path,
    w: usize,
    pg: &Postgres,
    redis: &Redis,
    args: &DbArgs,
) -> Result<Round> {
    let agent = Agent::start_binary(agent_bin, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.metrics()?;
    let cpu0 = agent.cpu_ns();
    let mut r = workload(w, pg, redis, args)?;
    // Let the agent drain what the round produced before reading its CPU time: every
    // operation is seen twice (client and server).
    let want = observed(&before, w) + 2.0 * r.ops;
    agent.settle(want, Duration::from_secs(30), |m| observed(m, w))?;
    let cpu1 = agent.cpu_ns();
    let after = agent.metrics()?;
    r.cpu_ns = cpu1.saturating_sub(cpu0);
    r.observed = observed(&after, w) - observed(&before, w);
    r.lost = after.value("apm_events_lost_total") - before.value("apm_events_lost_total");
    r.peak_rss = agent.peak_rss_bytes();
    Ok(r)
}
