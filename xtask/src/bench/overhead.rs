//! Overhead of the agent on real servers under wrk: nginx serving a static file and a FastAPI
//! app, each at saturation and at a fraction of it (paced, see [`super::pace`]). Rounds
//! alternate agent off / on (order flipped every round so drift cancels), same machine, same
//! run; figures are medians of rounds.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use tests::{agent::Agent, net::free_port, prom::Metrics, servers::Nginx};

use super::{fastapi, kernel_time, loadgen, wrk};
use crate::{prereq, util};

/// Service name the FastAPI app gets through `OTEL_SERVICE_NAME` (the agent reads it).
const FASTAPI_SERVICE: &str = "bench-overhead-app";
/// Service name of the Go HTTPS server.
const GO_SERVICE: &str = "bench-overhead-go";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum App {
    /// nginx, one worker, serving a static file.
    Nginx,
    /// A FastAPI app under uvicorn (one worker, h11), `GET /users/{id}` returning small JSON.
    Fastapi,
    /// A Go `net/http` server over HTTPS (Go's own `crypto/tls`: the Go uprobes), wrk as the
    /// client (OpenSSL), at saturation only (the paced generator speaks plain HTTP).
    GoHttps,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Fastapi => "fastapi",
            Self::GoHttps => "go-https",
        }
    }
}

#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Pairs of off/on rounds per case.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Servers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "nginx,fastapi")]
    apps: Vec<App>,
    /// Loads, in percent of the saturation rate measured with the agent off, comma-separated.
    /// 100 is plain wrk (saturation); below 100 the constant-rate generator of
    /// `bench/loadgen.rs` sends at that rate.
    #[arg(long, value_delimiter = ',', default_value = "100,50")]
    loads: Vec<u32>,
    /// wrk connections (keep-alive) at saturation.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// wrk threads at saturation.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// nginx worker processes.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Size of nginx's static file.
    #[arg(long, default_value_t = 1024)]
    file_bytes: usize,
    /// nginx serves HTTPS (self-signed certificate; wrk speaks TLS): measures the OpenSSL
    /// uprobes. Only with `--apps nginx`.
    #[arg(long)]
    tls: bool,
    /// Python venv with FastAPI and uvicorn (created when missing).
    #[arg(long, default_value = fastapi::DEFAULT_VENV)]
    venv: PathBuf,
    /// Extra arguments for the agent, split at whitespace: e.g. `--agent-args "--exclude
    /// exe=wrk"` leaves the load generator untraced, as on a server whose clients run
    /// elsewhere.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    agent_args: String,
    /// The agent binary to measure instead of this tree's release build: another commit's
    /// build, for a before/after comparison with the same harness on the same machine.
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Do not pin the server to CPU 0 and wrk to CPU 1 (pinning makes rounds comparable:
    /// unpinned, the two sometimes share a core).
    #[arg(long)]
    no_pin: bool,
    /// Skip the extra agent-on round per case that reads the time the agent's eBPF programs
    /// take in the traced processes (`kernel.bpf_stats_enabled`, see bench/kernel_time.rs).
    #[arg(long)]
    no_kernel_time: bool,
}

/// A server under test and how the agent's figures for it are read.
struct Target {
    url: String,
    port: u16,
    /// Path of `url`, for the constant-rate generator.
    path: String,
    /// `service.name` the agent gives the server.
    service: &'static str,
    wrk_cpu: Option<u32>,
}

impl Target {
    /// Requests the agent recorded on the server's side.
    fn served(&self, m: &Metrics) -> f64 {
        m.server_total(self.service)
    }

    /// Requests recorded on both sides (the server's, and wrk's as a client).
    fn observed(&self, m: &Metrics) -> f64 {
        self.served(m) + m.client_total(self.port)
    }
}

/// One app at one load: the medians of its rounds.
#[derive(Debug, Default)]
struct Case {
    app: &'static str,
    load_pct: u32,
    connections: u32,
    rps_off: f64,
    rps_on: f64,
    p50_off: f64,
    p50_on: f64,
    p99_off: f64,
    p99_on: f64,
    requests_on: f64,
    cpu_ns: u64,
    /// Of `cpu_ns`: the event path's thread (ring buffer, parsers, aggregation).
    events_cpu_ns: u64,
    /// Of `cpu_ns`: the profiler's thread (stack samples, symbolization).
    profiler_cpu_ns: u64,
    observed: f64,
    lost: f64,
    peak_rss: u64,
    on_seconds: f64,
    /// The agent's eBPF programs in the extra round, and the requests of that round.
    kernel: Option<(kernel_time::Runs, f64)>,
}

impl Case {
    fn cpu_us_per_request(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.requests_on.max(1.0)
    }

    fn events_cpu_us_per_request(&self) -> f64 {
        self.events_cpu_ns as f64 / 1e3 / self.requests_on.max(1.0)
    }

    fn profiler_cpu_pct(&self) -> f64 {
        self.profiler_cpu_ns as f64 / 1e9 / self.on_seconds.max(1e-9) * 100.0
    }

    fn cpu_us_per_exchange(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.observed.max(1.0)
    }

    fn cpu_pct(&self) -> f64 {
        self.cpu_ns as f64 / 1e9 / self.on_seconds.max(1e-9) * 100.0
    }

    /// Time in the agent's eBPF programs per request (µs), and program runs per request.
    fn kernel_per_request(&self) -> Option<(f64, f64)> {
        self.kernel.map(|(runs, requests)| {
            (
                runs.time_ns as f64 / 1e3 / requests.max(1.0),
                runs.count as f64 / requests.max(1.0),
            )
        })
    }

    fn peak_rss_mb(&self) -> f64 {
        self.peak_rss as f64 / (1024.0 * 1024.0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "load_pct": self.load_pct,
            "connections": self.connections,
            "throughput_ratio": self.rps_on / self.rps_off,
            "p50_ratio": self.p50_on / self.p50_off,
            "p99_ratio": self.p99_on / self.p99_off,
            "agent_cpu_us_per_request": self.cpu_us_per_request(),
            "agent_cpu_us_per_observed_exchange": self.cpu_us_per_exchange(),
            "agent_events_cpu_us_per_request": self.events_cpu_us_per_request(),
            "agent_profiler_cpu_pct": self.profiler_cpu_pct(),
            "agent_cpu_pct": self.cpu_pct(),
            "events_lost": self.lost,
            "agent_peak_rss_mb": self.peak_rss_mb(),
            "agent_kernel_us_per_request": self.kernel_per_request().map(|k| k.0),
            "agent_kernel_runs_per_request": self.kernel_per_request().map(|k| k.1),
            "rps_off": self.rps_off,
            "rps_on": self.rps_on,
            "p50_us_off": self.p50_off,
            "p50_us_on": self.p50_on,
            "p99_us_off": self.p99_off,
            "p99_us_on": self.p99_on,
        })
    }
}

pub fn run(args: &OverheadArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "bench overhead starts the agent: run it as root (sudo -E cargo xtask bench overhead)"
        );
    }
    if args.tls && args.apps.contains(&App::Fastapi) {
        bail!("--tls measures nginx over HTTPS: add --apps nginx");
    }
    if args.rounds == 0 || args.loads.is_empty() || args.loads.iter().any(|&l| l == 0 || l > 100) {
        bail!("--rounds must be at least 1 and --loads percentages in 1..=100");
    }
    prereq::ensure(prereq::Scope::Test)?;
    let python = if args.apps.contains(&App::Fastapi) {
        Some(fastapi::ensure_venv(&args.venv)?)
    } else {
        None
    };
    let agent_bin = match &args.agent_bin {
        Some(bin) if bin.is_file() => bin.clone(),
        Some(bin) => bail!("--agent-bin {}: no such file", bin.display()),
        None => util::build_release_agent()?,
    };
    eprintln!("agent measured: {}", agent_bin.display());
    let wrk_cpu = (!args.no_pin).then_some(1);
    let mut loads = args.loads.clone();
    let saturation_only = args.tls || args.apps.contains(&App::GoHttps);
    if saturation_only && loads.iter().any(|&l| l < 100) {
        // The constant-rate generator speaks plain HTTP only.
        eprintln!(
            "HTTPS: measuring at saturation only (wrk speaks TLS, the paced generator does not)"
        );
        loads.retain(|&l| l == 100);
    }
    // Saturation first: the paced loads are fractions of its rate.
    loads.sort_unstable_by(|a, b| b.cmp(a));
    loads.dedup();

    let mut cases = Vec::new();
    for &app in &args.apps {
        let port = free_port();
        let body = vec![b'x'; args.file_bytes];
        let cert_dir = tests::servers::temp_dir("bench-tls")?;
        let app_log = std::env::temp_dir().join(tests::unique("overhead-uvicorn"));
        // Held for the app's cases; dropping them stops the server.
        let (_nginx, _server, pid, target) = match app {
            App::Nginx => {
                let nginx = if args.tls {
                    let cert = tests::servers::SelfSigned::generate(&cert_dir)?;
                    Nginx::start_https(port, &[("bench.html", &body)], &cert)?
                } else {
                    Nginx::start(port, &[("bench.html", &body)], args.workers)?
                };
                let scheme = if args.tls { "https" } else { "http" };
                let pid = nginx.proc.pid();
                let target = Target {
                    url: format!("{scheme}://127.0.0.1:{port}/bench.html"),
                    port,
                    path: "/bench.html".to_owned(),
                    service: "nginx",
                    wrk_cpu,
                };
                (Some(nginx), None, pid, target)
            }
            App::Fastapi => {
                let Some(python) = &python else {
                    bail!("no venv for the FastAPI app");
                };
                let opts = fastapi::AppOptions {
                    service: FASTAPI_SERVICE,
                    sdk_otlp: None,
                    timing_log: None,
                };
                let uvicorn = fastapi::start(python, port, &opts, &app_log)?;
                let pid = uvicorn.pid();
                let target = Target {
                    url: format!("http://127.0.0.1:{port}/users/42"),
                    port,
                    path: "/users/42".to_owned(),
                    service: FASTAPI_SERVICE,
                    wrk_cpu,
                };
                (None, Some(uvicorn), pid, target)
            }
            App::GoHttps => {
                let go = go_https(port)?;
                let pid = go.pid();
                let target = Target {
                    url: format!("https://127.0.0.1:{port}/hello"),
                    port,
                    path: "/hello".to_owned(),
                    service: GO_SERVICE,
                    wrk_cpu,
                };
                (None, Some(go), pid, target)
            }
        };
        if !args.no_pin {
            pin_tree(pid, 0);
        }
        eprintln!("== {}: warm-up", app.name());
        wrk::run(&target.url, args.threads, args.connections, 2, wrk_cpu)?;
        let mut saturation = None;
        for &load in &loads {
            let sat = match saturation {
                Some(rps) => rps,
                None if load == 100 => 0.0,
                None => {
                    let r = wrk::run(&target.url, args.threads, args.connections, 5, wrk_cpu)?;
                    r.rps
                }
            };
            let case = measure_case(&agent_bin, &target, app, load, sat, args)?;
            if load == 100 {
                saturation = Some(case.rps_off);
            }
            cases.push(case);
        }
        let _ = std::fs::remove_file(&app_log);
    }
    report(args, &cases);
    Ok(())
}

/// Starts the Go HTTPS server of tests/servers/go_tls (built into the target directory) on
/// `port`, as [`GO_SERVICE`].
fn go_https(port: u16) -> Result<tests::servers::Proc> {
    let bin = util::build_go_tls()?;
    let child = Command::new(bin)
        .args(["server", &port.to_string()])
        .env("OTEL_SERVICE_NAME", GO_SERVICE)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let proc = tests::servers::Proc::new(child);
    tests::net::wait_port(port, Duration::from_secs(20))?;
    Ok(proc)
}

/// Alternating off/on rounds of one app at one load (`saturation` is the rate the paced loads
/// are fractions of; unused at 100%).
fn measure_case(
    agent_bin: &std::path::Path,
    target: &Target,
    app: App,
    load: u32,
    saturation: f64,
    args: &OverheadArgs,
) -> Result<Case> {
    // Below saturation: a constant rate, the same in both sides' rounds.
    let paced = (load < 100).then(|| {
        let rate = saturation * f64::from(load) / 100.0;
        loadgen::Load {
            port: target.port,
            path: target.path.clone(),
            rate,
            connections: loadgen::connections_for(rate),
            seconds: args.seconds,
            cpu: target.wrk_cpu,
        }
    });
    let connections = paced.as_ref().map_or(args.connections, |l| l.connections);
    let run_wrk = || match &paced {
        Some(load) => loadgen::run(load),
        None => wrk::run(
            &target.url,
            args.threads,
            args.connections,
            args.seconds,
            target.wrk_cpu,
        ),
    };
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut case = Case {
        app: app.name(),
        load_pct: load,
        connections,
        ..Case::default()
    };
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for agent_on in order {
            if !agent_on {
                let r = run_wrk()?;
                eprintln!(
                    "{} {load}% round {round} off: {:.0} req/s, p99 {:.0} us",
                    app.name(),
                    r.rps,
                    r.p99_us
                );
                off.push(r);
                continue;
            }
            let extra: Vec<&str> = args.agent_args.split_whitespace().collect();
            let agent = Agent::start_binary(agent_bin, &extra)?;
            std::thread::sleep(Duration::from_millis(500));
            let before = agent.metrics()?;
            let cpu0 = agent.cpu_ns();
            let threads0 = agent.cpu_ns_by_thread();
            let r = run_wrk()?;
            // Let the agent drain what the round produced before reading its CPU time.
            let want = target.served(&before) + r.requests;
            agent.settle(want, Duration::from_secs(30), |m| target.served(m))?;
            let cpu_ns = agent.cpu_ns().saturating_sub(cpu0);
            let threads1 = agent.cpu_ns_by_thread();
            let thread = |name: &str| {
                let at =
                    |m: &std::collections::BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
                at(&threads1).saturating_sub(at(&threads0))
            };
            case.events_cpu_ns += thread("apm-events");
            case.profiler_cpu_ns += thread("apm-profiler");
            let after = agent.metrics()?;
            case.cpu_ns += cpu_ns;
            case.requests_on += r.requests;
            case.on_seconds += f64::from(args.seconds);
            case.observed += target.observed(&after) - target.observed(&before);
            case.lost +=
                after.value("apm_events_lost_total") - before.value("apm_events_lost_total");
            case.peak_rss = case.peak_rss.max(agent.peak_rss_bytes());
            eprintln!(
                "{} {load}% round {round} on : {:.0} req/s, p99 {:.0} us, agent {:.3} s CPU",
                app.name(),
                r.rps,
                r.p99_us,
                cpu_ns as f64 / 1e9
            );
            on.push(r);
        }
    }
    if !args.no_kernel_time && kernel_time::available() {
        let extra: Vec<&str> = args.agent_args.split_whitespace().collect();
        let agent = Agent::start_binary(agent_bin, &extra)?;
        std::thread::sleep(Duration::from_millis(500));
        let accounting = kernel_time::Accounting::enable()?;
        let before = kernel_time::programs_of(agent.pid())?;
        let r = run_wrk()?;
        let runs = kernel_time::programs_of(agent.pid())?.since(&before);
        drop(accounting);
        eprintln!(
            "{} {load}% kernel round: {:.0} req/s, the agent's eBPF programs {:.2} us per request \
             ({:.1} runs of {:.0} ns)",
            app.name(),
            r.rps,
            runs.time_ns as f64 / 1e3 / r.requests.max(1.0),
            runs.count as f64 / r.requests.max(1.0),
            runs.time_ns as f64 / (runs.count.max(1)) as f64
        );
        case.kernel = Some((runs, r.requests));
    }
    let mid = |runs: &[wrk::WrkRun], f: fn(&wrk::WrkRun) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    case.rps_off = mid(&off, |r| r.rps);
    case.rps_on = mid(&on, |r| r.rps);
    case.p50_off = mid(&off, |r| r.p50_us);
    case.p50_on = mid(&on, |r| r.p50_us);
    case.p99_off = mid(&off, |r| r.p99_us);
    case.p99_on = mid(&on, |r| r.p99_us);
    Ok(case)
}

fn report(args: &OverheadArgs, cases: &[Case]) {
    println!(
        "\noverhead: {} x {} s rounds per side and case, medians of rounds; saturation: wrk -t{} -c{}; \
         loads below 100%: constant rate (bench/loadgen.rs){}{}{}{}",
        args.rounds,
        args.seconds,
        args.threads,
        args.connections,
        if args.tls { "; nginx over HTTPS" } else { "" },
        if args.agent_args.is_empty() {
            String::new()
        } else {
            format!("; agent arguments: {}", args.agent_args)
        },
        if args.no_pin {
            ""
        } else {
            "; server pinned to CPU 0, wrk to CPU 1"
        },
        args.agent_bin.as_ref().map_or(String::new(), |b| format!(
            "; agent binary: {}",
            b.display()
        ))
    );
    println!(
        "{:<14} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>8}",
        "case",
        "conns",
        "rps off",
        "rps on",
        "thr",
        "p50",
        "p99",
        "us/req",
        "us/exch",
        "evt/req",
        "kern/req",
        "cpu%",
        "prof%",
        "lost",
        "RSS MB"
    );
    for c in cases {
        println!(
            "{:<14} {:>5} {:>9.0} {:>9.0} {:>7.3} {:>7.2} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>6.1} {:>6.1} {:>6.0} {:>8.1}",
            format!("{} {}%", c.app, c.load_pct),
            c.connections,
            c.rps_off,
            c.rps_on,
            c.rps_on / c.rps_off,
            c.p50_on / c.p50_off,
            c.p99_on / c.p99_off,
            c.cpu_us_per_request(),
            c.cpu_us_per_exchange(),
            c.events_cpu_us_per_request(),
            c.kernel_per_request()
                .map_or("-".to_owned(), |k| format!("{:.2}", k.0)),
            c.cpu_pct(),
            c.profiler_cpu_pct(),
            c.lost,
            c.peak_rss_mb()
        );
    }
    println!(
        "targets: thr (throughput ratio on/off) >= 0.97; us/req (agent CPU per request) <= 2; \
         lost 0; RSS (peak, VmHWM) <= 40 MB. p50/p99 are latency ratios on/off; us/exch is \
         agent CPU per exchange observed (server side + client side); evt/req is the \
         event path's thread alone per request; kern/req is the time the agent's eBPF programs \
         took inside the traced processes' syscalls per request (an extra round with \
         kernel.bpf_stats_enabled; not in us/req, and not counted by any agent CPU figure); \
         cpu% is the agent's CPU in % of one core, prof% the profiler thread's share of it."
    );
    let mut json = serde_json::json!({
        "bench": "overhead",
        "tls": args.tls,
        "agent_args": args.agent_args,
        "rounds": args.rounds,
        "seconds": args.seconds,
    });
    for c in cases {
        json[format!("{}_{}pct", c.app, c.load_pct)] = c.json();
    }
    println!("{json}");
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
