//! Overhead of the agent on nginx at saturation: rounds alternate agent off / on (order
//! flipped every round so drift cancels), same machine, same run.
use std::{process::Command, time::Duration};

use anyhow::Result;
use clap::Args;
use tests::{agent::Agent, net::free_port, servers::Nginx};

use super::wrk;
use crate::{prereq, util};

#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Pairs of off/on rounds.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections (keep-alive).
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// nginx worker processes.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Size of the static file served.
    #[arg(long, default_value_t = 1024)]
    file_bytes: usize,
    /// Serve HTTPS (self-signed certificate; wrk speaks TLS): measures the OpenSSL uprobes.
    #[arg(long)]
    tls: bool,
    /// Do not pin nginx to CPU 0 and wrk to CPU 1 (pinning makes rounds comparable: unpinned,
    /// the two sometimes share a core).
    #[arg(long)]
    no_pin: bool,
}

#[derive(Debug, Default)]
struct OnRound {
    wrk: Option<wrk::WrkRun>,
    cpu_ns: u64,
    observed: f64,
    lost: f64,
    peak_rss: u64,
}

pub fn run(args: &OverheadArgs) -> Result<()> {
    prereq::ensure(prereq::Scope::Test)?;
    let agent_bin = util::build_release_agent()?;
    let port = free_port();
    let body = vec![b'x'; args.file_bytes];
    let cert_dir = tests::servers::temp_dir("bench-tls")?;
    let nginx = if args.tls {
        let cert = tests::servers::SelfSigned::generate(&cert_dir)?;
        Nginx::start_https(port, &[("bench.html", &body)], &cert)?
    } else {
        Nginx::start(port, &[("bench.html", &body)], args.workers)?
    };
    if !args.no_pin {
        pin_tree(nginx.proc.pid(), 0);
    }
    let wrk_cpu = (!args.no_pin).then_some(1);
    let scheme = if args.tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/bench.html");
    eprintln!("warm-up");
    wrk::run(&url, args.threads, args.connections, 2, wrk_cpu)?;

    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for agent_on in order {
            if agent_on {
                let r = on_round(&agent_bin, &url, args, wrk_cpu)?;
                eprintln!(
                    "round {round} on : {:.0} req/s, p99 {:.0} us, agent {:.3} s CPU",
                    r.wrk.map_or(0.0, |w| w.rps),
                    r.wrk.map_or(0.0, |w| w.p99_us),
                    r.cpu_ns as f64 / 1e9
                );
                on.push(r);
            } else {
                let r = wrk::run(&url, args.threads, args.connections, args.seconds, wrk_cpu)?;
                eprintln!(
                    "round {round} off: {:.0} req/s, p99 {:.0} us",
                    r.rps, r.p99_us
                );
                off.push(r);
            }
        }
    }

    // Medians: one round disturbed by a noisy neighbour must not move the result.
    let mid = |v: &[f64]| median(v);
    let on_wrk: Vec<wrk::WrkRun> = on.iter().filter_map(|r| r.wrk).collect();
    let rps_off = mid(&off.iter().map(|r| r.rps).collect::<Vec<_>>());
    let rps_on = mid(&on_wrk.iter().map(|r| r.rps).collect::<Vec<_>>());
    let p50_off = mid(&off.iter().map(|r| r.p50_us).collect::<Vec<_>>());
    let p50_on = mid(&on_wrk.iter().map(|r| r.p50_us).collect::<Vec<_>>());
    let p99_off = mid(&off.iter().map(|r| r.p99_us).collect::<Vec<_>>());
    let p99_on = mid(&on_wrk.iter().map(|r| r.p99_us).collect::<Vec<_>>());
    let requests_on: f64 = on_wrk.iter().map(|r| r.requests).sum();
    let cpu_ns: u64 = on.iter().map(|r| r.cpu_ns).sum();
    let observed: f64 = on.iter().map(|r| r.observed).sum();
    let lost: f64 = on.iter().map(|r| r.lost).sum();
    let peak_rss_mb = on.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let cpu_us_per_request = cpu_ns as f64 / 1e3 / requests_on.max(1.0);
    let cpu_us_per_exchange = cpu_ns as f64 / 1e3 / observed.max(1.0);
    let agent_cpu_pct = cpu_ns as f64 / 1e9 / (f64::from(args.seconds) * on.len() as f64) * 100.0;

    println!(
        "\noverhead: nginx{} ({} worker, {} B file) under wrk -t{} -c{}, {} x {} s rounds per side; medians of rounds{}",
        if args.tls { " over HTTPS" } else { "" },
        args.workers,
        args.file_bytes,
        args.threads,
        args.connections,
        args.rounds,
        args.seconds,
        if args.no_pin {
            ""
        } else {
            "; nginx pinned to CPU 0, wrk to CPU 1"
        }
    );
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "", "agent off", "agent on", "target"
    );
    println!("{:<34} {:>14.0} {:>14.0}", "requests/s", rps_off, rps_on);
    println!(
        "{:<34} {:>14.1} {:>14.1}",
        "p50 latency (us)", p50_off, p50_on
    );
    println!(
        "{:<34} {:>14.1} {:>14.1}",
        "p99 latency (us)", p99_off, p99_on
    );
    println!(
        "{:<34} {:>29.3} {:>10}",
        "throughput ratio (on/off)",
        rps_on / rps_off,
        ">= 0.97"
    );
    println!("{:<34} {:>29.3}", "p99 ratio (on/off)", p99_on / p99_off);
    println!(
        "{:<34} {:>29.2} {:>10}",
        "agent CPU us per request", cpu_us_per_request, "<= 2"
    );
    println!(
        "{:<34} {:>29.2}",
        "agent CPU us per observed exchange", cpu_us_per_exchange
    );
    println!(
        "{:<34} {:>29.1}",
        "agent CPU (% of one core)", agent_cpu_pct
    );
    println!("{:<34} {:>29.0} {:>10}", "events lost", lost, "0");
    println!(
        "{:<34} {:>29.1} {:>10}",
        "agent peak RSS (MB)", peak_rss_mb, "<= 40"
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "overhead",
            "tls": args.tls,
            "throughput_ratio": rps_on / rps_off,
            "p50_ratio": p50_on / p50_off,
            "p99_ratio": p99_on / p99_off,
            "agent_cpu_us_per_request": cpu_us_per_request,
            "agent_cpu_us_per_observed_exchange": cpu_us_per_exchange,
            "agent_cpu_pct": agent_cpu_pct,
            "events_lost": lost,
            "agent_peak_rss_mb": peak_rss_mb,
            "rps_off": rps_off,
            "rps_on": rps_on,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
        })
    );
    Ok(())
}

/// Median of a non-empty list (0 for an empty one).
pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Pins a process and its children (nginx master and workers) to `cpu`.
pub(super) fn pin_tree(pid: u32, cpu: u32) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output();
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pin_tree(child, cpu);
        }
    }
}

fn on_round(
    agent_bin: &std::path::Path,
    url: &str,
    args: &OverheadArgs,
    wrk_cpu: Option<u32>,
) -> Result<OnRound> {
    let agent = Agent::start_binary(agent_bin, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.metrics()?;
    let route = "/bench.html";
    let cpu0 = agent.cpu_ns();
    let run = wrk::run(url, args.threads, args.connections, args.seconds, wrk_cpu)?;
    // Let the agent drain what the round produced before reading its CPU time.
    let served = |m: &tests::prom::Metrics| m.server_count("nginx", "GET", route, "200");
    let want = served(&before) + run.requests;
    agent.settle(want, Duration::from_secs(30), served)?;
    let cpu1 = agent.cpu_ns();
    let after = agent.metrics()?;
    Ok(OnRound {
        wrk: Some(run),
        cpu_ns: cpu1.saturating_sub(cpu0),
        observed: (served(&after) - served(&before))
            + (after.sum(
                "http_client_request_duration_seconds_count",
                &[("http_route", route)],
            ) - before.sum(
                "http_client_request_duration_seconds_count",
                &[("http_route", route)],
            )),
        lost: after.value("apm_events_lost_total") - before.value("apm_events_lost_total"),
        peak_rss: agent.peak_rss_bytes(),
    })
}
