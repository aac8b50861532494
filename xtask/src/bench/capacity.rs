//! How fast can traffic be before the agent loses events? nginx serving a small file is driven
//! at rising rates (fractions of its saturation rate with the agent off, sent at a constant
//! rate by [`super::loadgen`], then plain wrk at saturation), with one agent running through
//! all steps;
//! each step reports the rate wrk achieved, the agent's lost-event counter and the shortfall
//! (requests sent minus requests reported, both sides of every exchange).
//!
//! On a machine where the load generator and the server already use every CPU, an agent with
//! no CPU limit may follow even saturation: the capacity is then "not reached", bounded by the
//! machine. A second pass runs the same steps with the agent's CPU capped by a cgroup quota (as
//! `resources.limits.cpu` caps a DaemonSet's pod), which shows where loss begins and how it
//! grows above that rate.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tests::{agent::Agent, net::free_port, prom::Metrics, servers::Nginx};

use super::{accuracy::drain, loadgen, overhead::pin_tree, wrk};
use crate::{prereq, util};

#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Steps, in percent of the saturation rate measured with the agent off, comma-separated;
    /// 100 is plain wrk.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,30,40,50,60,70,80,90,100"
    )]
    steps: Vec<u32>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// CPU limits of the agent to measure, in millicores of one CPU (cgroup v1 CFS quota per
    /// 100 ms period), comma-separated; 0 means no limit.
    #[arg(long, value_delimiter = ',', default_value = "0,100,50,25")]
    cpu_limits: Vec<u32>,
    /// Ring buffer of the agent, bytes (default: the agent's own default).
    #[arg(long)]
    ring_buffer_bytes: Option<u32>,
    /// wrk connections (keep-alive) at saturation.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Size of nginx's static file.
    #[arg(long, default_value_t = 1024)]
    file_bytes: usize,
    /// Do not pin nginx to CPU 0 and wrk to CPU 1.
    #[arg(long)]
    no_pin: bool,
}

/// One step's figures.
#[derive(Debug, Clone, Copy)]
struct Step {
    load_pct: u32,
    connections: u32,
    requests: f64,
    rps: f64,
    /// Records the kernel could not put in the ring buffer.
    lost: f64,
    /// Requests sent and not reported, both sides (server and client) counted.
    shortfall: f64,
    cpu_ns: u64,
}

impl Step {
    /// Fraction of the exchanges (two per request) the agent did not report.
    fn loss_fraction(&self) -> f64 {
        self.shortfall / (2.0 * self.requests).max(1.0)
    }

    /// The criterion is the kernel's loss counter. The shortfall is reported beside it, not
    /// used: at saturation, requests in flight when wrk stops are answered and seen by the
    /// agent but not counted by wrk (a shortfall of up to minus the connections).
    fn lossless(&self) -> bool {
        self.lost == 0.0
    }
}

/// The agent in a CPU cgroup of its own, with a CFS quota. The cgroup is removed on drop
/// (after the agent, which is dropped first: it is declared later).
struct CpuLimit {
    dir: PathBuf,
}

impl CpuLimit {
    const ROOT: &'static str = "/sys/fs/cgroup/cpu";

    fn new(millicores: u32) -> Result<Self> {
        let dir = Path::new(Self::ROOT).join(tests::unique("apm-bench-capacity"));
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "creating {} (the bench needs the cgroup v1 cpu controller)",
                dir.display()
            )
        })?;
        let limit = Self { dir };
        limit.write("cpu.cfs_period_us", "100000")?;
        limit.write(
            "cpu.cfs_quota_us",
            &(u64::from(millicores) * 100).to_string(),
        )?;
        Ok(limit)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("writing {value} to {}/{file}", self.dir.display()))
    }

    /// Moves a process, all its threads and its future threads into the cgroup.
    fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Times the quota stopped the agent, and for how long in total (ns).
    fn throttled(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        (field("nr_throttled "), field("throttled_time "))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The agent has exited by now; a cgroup with no task in it can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// One pass over the steps with one agent (limited to `millicores`, 0: no limit).
struct Pass {
    millicores: u32,
    steps: Vec<Step>,
    throttled: (u64, u64),
    peak_rss: u64,
}

impl Pass {
    /// The highest rate of the lossless steps below the first lossy one.
    fn capacity(&self) -> Option<&Step> {
        self.steps.iter().take_while(|s| s.lossless()).last()
    }

    fn first_loss(&self) -> Option<&Step> {
        self.steps.iter().find(|s| !s.lossless())
    }
}

pub fn run(args: &CapacityArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "bench capacity starts the agent: run it as root (sudo -E cargo xtask bench capacity)"
        );
    }
    let mut steps = args.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() || steps.iter().any(|&s| s == 0 || s > 100) {
        bail!("--steps are percentages in 1..=100");
    }
    prereq::ensure(prereq::Scope::Test)?;
    let agent_bin = util::build_release_agent()?;
    let port = free_port();
    let body = vec![b'x'; args.file_bytes];
    let nginx = Nginx::start(port, &[("bench.html", &body)], 1)?;
    if !args.no_pin {
        pin_tree(nginx.proc.pid(), 0);
    }
    let wrk_cpu = (!args.no_pin).then_some(1);
    let url = format!("http://127.0.0.1:{port}/bench.html");
    eprintln!("warm-up");
    wrk::run(&url, 1, args.connections, 2, wrk_cpu)?;
    let saturation = wrk::run(&url, 1, args.connections, args.seconds, wrk_cpu)?;
    eprintln!("saturation, agent off: {:.0} req/s", saturation.rps);

    // The same offered rates in every pass (the rate achieved is what each step reports).
    let plan: Vec<(u32, Option<loadgen::Load>)> = steps
        .iter()
        .map(|&pct| {
            let load = (pct < 100).then(|| {
                let rate = saturation.rps * f64::from(pct) / 100.0;
                loadgen::Load {
                    port,
                    path: "/bench.html".to_owned(),
                    rate,
                    connections: loadgen::connections_for(rate),
                    seconds: args.seconds,
                    cpu: wrk_cpu,
                }
            });
            (pct, load)
        })
        .collect();

    let mut passes = Vec::new();
    for &millicores in &args.cpu_limits {
        passes.push(pass(
            &agent_bin, &url, port, &plan, millicores, wrk_cpu, args,
        )?);
    }
    drop(nginx);
    report(args, saturation.rps, &passes);
    Ok(())
}

fn pass(
    agent_bin: &Path,
    url: &str,
    port: u16,
    plan: &[(u32, Option<loadgen::Load>)],
    millicores: u32,
    wrk_cpu: Option<u32>,
    args: &CapacityArgs,
) -> Result<Pass> {
    let limit = if millicores > 0 {
        Some(CpuLimit::new(millicores)?)
    } else {
        None
    };
    let ring = args.ring_buffer_bytes.map(|b| b.to_string());
    let mut agent_args = Vec::new();
    if let Some(ring) = &ring {
        agent_args.extend(["--ring-buffer-bytes", ring.as_str()]);
    }
    let agent = Agent::start_binary(agent_bin, &agent_args)?;
    if let Some(limit) = &limit {
        limit.add(agent.pid())?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let label = if millicores > 0 {
        format!("agent limited to {millicores}m CPU")
    } else {
        "agent without CPU limit".to_owned()
    };
    eprintln!("== {label}");
    let both = |m: &Metrics| m.server_total("nginx") + m.client_total(port);
    let mut steps = Vec::new();
    for (pct, load) in plan {
        let pct = *pct;
        let before = agent.metrics()?;
        let cpu0 = agent.cpu_ns();
        let (conns, r) = match load {
            Some(load) => (load.connections, loadgen::run(load)?),
            None => (
                args.connections,
                wrk::run(url, 1, args.connections, args.seconds, wrk_cpu)?,
            ),
        };
        let reported = drain(&agent, both(&before) + 2.0 * r.requests, both)? - both(&before);
        let after = agent.metrics()?;
        let step = Step {
            load_pct: pct,
            connections: conns,
            requests: r.requests,
            rps: r.rps,
            lost: after.value("apm_events_lost_total") - before.value("apm_events_lost_total"),
            shortfall: 2.0 * r.requests - reported,
            cpu_ns: agent.cpu_ns().saturating_sub(cpu0),
        };
        eprintln!(
            "{pct:>3}% ({} {conns} connections): {:.0} req/s, lost events {:.0}, shortfall {:.0} ({:.2}%), agent {:.3} s CPU",
            if load.is_some() {
                "constant rate,"
            } else {
                "wrk,"
            },
            step.rps,
            step.lost,
            step.shortfall,
            step.loss_fraction() * 100.0,
            step.cpu_ns as f64 / 1e9
        );
        steps.push(step);
    }
    let throttled = limit.as_ref().map_or((0, 0), CpuLimit::throttled);
    let peak_rss = agent.peak_rss_bytes();
    drop(agent);
    drop(limit);
    Ok(Pass {
        millicores,
        steps,
        throttled,
        peak_rss,
    })
}

fn report(args: &CapacityArgs, saturation_rps: f64, passes: &[Pass]) {
    println!(
        "\ncapacity: nginx (1 worker, {} B file) under wrk, {} s per step, one agent per pass{}; \
         saturation with the agent off: {saturation_rps:.0} req/s{}",
        args.file_bytes,
        args.seconds,
        args.ring_buffer_bytes
            .map_or(String::new(), |b| format!(", ring buffer {b} B")),
        if args.no_pin {
            ""
        } else {
            "; nginx pinned to CPU 0, wrk to CPU 1"
        }
    );
    let mut json = serde_json::json!({
        "bench": "capacity",
        "saturation_rps_agent_off": saturation_rps,
        "seconds": args.seconds,
    });
    for p in passes {
        let label = if p.millicores > 0 {
            format!("agent CPU limit {}m", p.millicores)
        } else {
            "no CPU limit".to_owned()
        };
        println!("\n{label}:");
        println!(
            "{:>6} {:>6} {:>10} {:>12} {:>12} {:>8} {:>9}",
            "load", "conns", "req/s", "lost events", "shortfall", "loss %", "us/req"
        );
        for s in &p.steps {
            println!(
                "{:>5}% {:>6} {:>10.0} {:>12.0} {:>12.0} {:>8.3} {:>9.2}",
                s.load_pct,
                s.connections,
                s.rps,
                s.lost,
                s.shortfall,
                s.loss_fraction() * 100.0,
                s.cpu_ns as f64 / 1e3 / s.requests.max(1.0)
            );
        }
        let capacity = p.capacity().map_or(0.0, |s| s.rps);
        match p.first_loss() {
            None => println!(
                "highest rate with zero loss: >= {capacity:.0} req/s (no step lost anything: \
                 not reached on this machine)"
            ),
            Some(first) => println!(
                "highest rate with zero loss: {capacity:.0} req/s; loss from {:.0} req/s on",
                first.rps
            ),
        }
        if p.millicores > 0 {
            println!(
                "throttled by the quota {} times, {:.2} s in all",
                p.throttled.0,
                p.throttled.1 as f64 / 1e9
            );
        }
        let key = if p.millicores > 0 {
            format!("cpu_limit_{}m", p.millicores)
        } else {
            "no_cpu_limit".to_owned()
        };
        json[key] = serde_json::json!({
            "zero_loss_rps": capacity,
            "capacity_reached": p.first_loss().is_some(),
            "first_loss_rps": p.first_loss().map(|s| s.rps),
            "agent_peak_rss_mb": p.peak_rss as f64 / (1024.0 * 1024.0),
            "throttled_count": p.throttled.0,
            "loss_curve": p.steps.iter().map(|s| serde_json::json!({
                "load_pct": s.load_pct,
                "rps": s.rps,
                "events_lost": s.lost,
                "shortfall": s.shortfall,
                "loss_fraction": s.loss_fraction(),
                "agent_cpu_us_per_request": s.cpu_ns as f64 / 1e3 / s.requests.max(1.0),
            })).collect::<Vec<_>>(),
        });
    }
    println!("{json}");
}
