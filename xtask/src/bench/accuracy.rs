//! Does the agent count what happened? Three checks, one run:
//!
//! 1. **Counts** against wrk's own count, nginx serving a small file: at saturation (plain wrk,
//!    as in `bench overhead`) and at half of it, sent at a constant rate by the bench's own
//!    generator (`bench/loadgen.rs`: wrk has no rate control), which counts its requests too.
//! 2. **Loss** with the ring buffer made tiny (`--ring-buffer-bytes 4096`, wake-up batches of
//!    at most ring/8): the agent's `apm_events_lost_total` against the shortfall (requests sent
//!    minus requests reported), both sides of every exchange.
//! 3. **Durations** of a FastAPI app (tests/servers/fastapi_app.py with `APP_TIMING_LOG`: an ASGI
//!    timing middleware, `time.perf_counter()` per request) against its
//!    own measurement of each request, paired by the trace id of the `traceparent` each request
//!    carries (the agent's span joins that trace; the app logs the id with its duration).
use std::{
    collections::HashMap,
    io::{BufReader, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Args;
use tests::{
    agent::Agent,
    net::free_port,
    otlp::{Receiver, hex},
    prom::Metrics,
    servers::Nginx,
};

use super::{
    fastapi, loadgen,
    overhead::{median, pin_tree},
    sdk_compare::{pct, read_response, traced_client},
    wrk,
};
use crate::{prereq, util};

#[derive(Debug, Args)]
pub struct AccuracyArgs {
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections at saturation (keep-alive).
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Size of the static file served.
    #[arg(long, default_value_t = 1024)]
    file_bytes: usize,
    /// Fraction of saturation of the paced run.
    #[arg(long, default_value_t = 0.5)]
    pace_fraction: f64,
    /// Ring buffer of the loss runs (bytes, a power of two of at least 4096).
    #[arg(long, default_value_t = 4096)]
    tiny_ring_bytes: u32,
    /// Wake-up batch of the loss runs (the agent clamps it to ring/8).
    #[arg(long, default_value_t = 512)]
    tiny_wakeup_bytes: u32,
    /// Requests of the duration comparison.
    #[arg(long, default_value_t = 4000)]
    duration_requests: usize,
    /// Keep-alive connections (one thread each) of the duration comparison.
    #[arg(long, default_value_t = 2)]
    duration_connections: usize,
    /// Do not pin nginx to CPU 0 and wrk to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// Python venv with FastAPI and uvicorn (created when missing).
    #[arg(long, default_value = fastapi::DEFAULT_VENV)]
    venv: PathBuf,
}

/// One measured wrk run with the agent on.
#[derive(Debug, Clone, Copy)]
struct CountRun {
    wrk: wrk::WrkRun,
    connections: u32,
    /// Requests the agent recorded: nginx's side (server spans of the route) and wrk's
    /// (client side, by server port).
    server: f64,
    client: f64,
    lost: f64,
    unmatched: f64,
    incomplete: f64,
    /// Requests dropped from a connection's queue of requests awaiting a response (at most 64
    /// wait: `apm_map_overflows_total{map="pipelined_requests"}`).
    pending_overflow: f64,
    /// Mean server-side duration the agent recorded (histogram sum / count), us.
    server_mean_us: f64,
    cpu_ns: u64,
}

impl CountRun {
    fn server_error(&self) -> f64 {
        self.server - self.wrk.requests
    }

    fn client_error(&self) -> f64 {
        self.client - self.wrk.requests
    }

    /// Requests sent and not reported, both sides.
    fn shortfall(&self) -> f64 {
        (self.wrk.requests - self.server) + (self.wrk.requests - self.client)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests_sent": self.wrk.requests,
            "rps": self.wrk.rps,
            "connections": self.connections,
            "reported_server": self.server,
            "reported_client": self.client,
            "count_error_server": self.server_error(),
            "count_error_client": self.client_error(),
            "shortfall": self.shortfall(),
            "loss_counter": self.lost,
            "responses_unmatched": self.unmatched,
            "exchanges_incomplete": self.incomplete,
            "pending_overflow": self.pending_overflow,
            "server_mean_us": self.server_mean_us,
            "non_2xx": self.wrk.non_2xx,
            "socket_errors": self.wrk.socket_errors,
        })
    }
}

struct Setup {
    url: String,
    port: u16,
    route: String,
    wrk_cpu: Option<u32>,
}

pub fn run(args: &AccuracyArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "bench accuracy starts the agent: run it as root (sudo -E cargo xtask bench accuracy)"
        );
    }
    prereq::ensure(prereq::Scope::Test)?;
    let python = fastapi::ensure_venv(&args.venv)?;
    let agent_bin = util::build_release_agent()?;
    let port = free_port();
    // A file name of its own, so that no other nginx on the host adds to the route's count.
    let name = format!("{}.html", tests::unique("accuracy"));
    let body = vec![b'x'; args.file_bytes];
    let nginx = Nginx::start(port, &[(&name, &body)], 1)?;
    if !args.no_pin {
        pin_tree(nginx.proc.pid(), 0);
    }
    let setup = Setup {
        url: format!("http://127.0.0.1:{port}/{name}"),
        port,
        route: format!("/{name}"),
        wrk_cpu: (!args.no_pin).then_some(1),
    };
    eprintln!("warm-up");
    wrk::run(&setup.url, 1, args.connections, 2, setup.wrk_cpu)?;

    eprintln!("== saturation, agent off");
    let off = wrk::run(&setup.url, 1, args.connections, args.seconds, setup.wrk_cpu)?;
    eprintln!("{:.0} req/s, p99 {:.0} us", off.rps, off.p99_us);

    eprintln!("== agent on (defaults)");
    let agent = Agent::start_binary(&agent_bin, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let full = count_run(&agent, &setup, args, None)?;
    let target = full.wrk.rps * args.pace_fraction;
    let paced = loadgen::Load {
        port,
        path: setup.route.clone(),
        rate: target,
        connections: loadgen::connections_for(target),
        seconds: args.seconds,
        cpu: setup.wrk_cpu,
    };
    let half = count_run(&agent, &setup, args, Some(&paced))?;
    let peak_rss = agent.peak_rss_bytes();
    drop(agent);

    eprintln!(
        "== agent on, ring buffer {} B, wake-up {} B",
        args.tiny_ring_bytes, args.tiny_wakeup_bytes
    );
    let (ring, wakeup) = (
        args.tiny_ring_bytes.to_string(),
        args.tiny_wakeup_bytes.to_string(),
    );
    let tiny = Agent::start_binary(
        &agent_bin,
        &["--ring-buffer-bytes", &ring, "--wakeup-bytes", &wakeup],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let tiny_full = count_run(&tiny, &setup, args, None)?;
    let tiny_half = count_run(&tiny, &setup, args, Some(&paced))?;
    drop(tiny);
    drop(nginx);

    eprintln!("== durations: FastAPI against its own measurement");
    let durations = durations(&agent_bin, &python, args)?;

    report(
        args, &off, &full, &half, &tiny_full, &tiny_half, &durations, peak_rss,
    );
    Ok(())
}

/// Polls `f` until it reaches `want` or stops moving for 2 s (a lossy run never reaches it),
/// at most 60 s; returns the last value.
pub(super) fn drain(agent: &Agent, want: f64, f: impl Fn(&Metrics) -> f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = f(&agent.metrics()?);
    let mut still_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v = f(&agent.metrics()?);
        if v != last {
            last = v;
            still_since = Instant::now();
        }
        if v >= want || still_since.elapsed() > Duration::from_secs(2) || Instant::now() > deadline
        {
            break;
        }
    }
    // A little longer, so that over-counting would show.
    std::thread::sleep(Duration::from_millis(600));
    Ok(f(&agent.metrics()?))
}

/// One run (wrk at saturation, or the constant-rate generator when `paced` is given) and what
/// the agent recorded of it.
fn count_run(
    agent: &Agent,
    s: &Setup,
    args: &AccuracyArgs,
    paced: Option<&loadgen::Load>,
) -> Result<CountRun> {
    let connections = paced.map_or(args.connections, |l| l.connections);
    let server = |m: &Metrics| m.server_count("nginx", "GET", &s.route, "200");
    let client = |m: &Metrics| {
        m.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("server_port", &s.port.to_string()),
                ("http_route", &s.route),
            ],
        )
    };
    let unmatched = |m: &Metrics| m.sum("apm_responses_unmatched_total", &[("protocol", "http1")]);
    let incomplete =
        |m: &Metrics| m.sum("apm_exchanges_incomplete_total", &[("protocol", "http1")]);
    let pending = |m: &Metrics| m.sum("apm_map_overflows_total", &[("map", "pipelined_requests")]);
    let server_sum = |m: &Metrics| {
        m.sum(
            "http_server_request_duration_seconds_sum",
            &[("service_name", "nginx"), ("http_route", &s.route)],
        )
    };
    let before = agent.metrics()?;
    let cpu0 = agent.cpu_ns();
    let run = match paced {
        Some(load) => loadgen::run(load)?,
        None => wrk::run(&s.url, 1, connections, args.seconds, s.wrk_cpu)?,
    };
    let both = |m: &Metrics| server(m) + client(m);
    drain(agent, both(&before) + 2.0 * run.requests, both)?;
    let cpu1 = agent.cpu_ns();
    let after = agent.metrics()?;
    let r = CountRun {
        wrk: run,
        connections,
        server: server(&after) - server(&before),
        client: client(&after) - client(&before),
        lost: after.value("apm_events_lost_total") - before.value("apm_events_lost_total"),
        unmatched: unmatched(&after) - unmatched(&before),
        incomplete: incomplete(&after) - incomplete(&before),
        pending_overflow: pending(&after) - pending(&before),
        server_mean_us: (server_sum(&after) - server_sum(&before)) * 1e6
            / (server(&after) - server(&before)).max(1.0),
        cpu_ns: cpu1.saturating_sub(cpu0),
    };
    eprintln!(
        "wrk -c{connections}{}: {:.0} requests ({:.0}/s); agent: server {:.0} ({:+.0}), client {:.0} ({:+.0}), lost events {:.0}",
        if paced.is_some() {
            " constant rate"
        } else {
            ""
        },
        run.requests,
        run.rps,
        r.server,
        r.server_error(),
        r.client,
        r.client_error(),
        r.lost
    );
    Ok(r)
}

/// The duration comparison's figures.
#[derive(Debug, Default)]
struct Durations {
    sent: usize,
    paired: usize,
    app_logged: usize,
    agent_spans: usize,
    rps: f64,
    agent_p50_us: f64,
    app_p50_us: f64,
    client_p50_us: f64,
    diff_p50_us: f64,
    diff_p99_us: f64,
    diff_min_us: f64,
    diff_max_us: f64,
    /// Pairs where the agent's duration is above the client's round trip (impossible if both
    /// clocks mean what they say).
    agent_above_client: usize,
}

const APP_SERVICE: &str = "bench-accuracy-app";
const KIND_SERVER: i32 = 2;

/// The FastAPI app under keep-alive load from `--duration-connections` threads, every request with its
/// own `traceparent`; the agent exports spans to a local receiver.
fn durations(agent_bin: &Path, python: &Path, args: &AccuracyArgs) -> Result<Durations> {
    let rx = Receiver::start()?;
    let agent = Agent::start_binary(agent_bin, &["--otlp-endpoint", &rx.endpoint()])?;
    let port = free_port();
    let log = std::env::temp_dir().join(tests::unique("app-timing"));
    let app_log = std::env::temp_dir().join(tests::unique("accuracy-uvicorn"));
    let app = fastapi::start(
        python,
        port,
        &fastapi::AppOptions {
            service: APP_SERVICE,
            sdk_otlp: None,
            timing_log: Some(&log),
        },
        &app_log,
    )?;
    // The readiness probe above was a connection without a request; let the app settle.
    std::thread::sleep(Duration::from_millis(500));
    let per_thread = args
        .duration_requests
        .div_ceil(args.duration_connections.max(1));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..args.duration_connections.max(1))
        .map(|_| std::thread::spawn(move || send_traced(port, per_thread)))
        .collect();
    let mut sent: HashMap<String, f64> = HashMap::new();
    // (connection, request index) of each trace id, to say which requests went unpaired.
    let mut order: HashMap<String, (usize, usize)> = HashMap::new();
    for (c, t) in threads.into_iter().enumerate() {
        let part = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        for (i, (id, us)) in part.into_iter().enumerate() {
            order.insert(id.clone(), (c, i));
            sent.insert(id, us);
        }
    }
    let rps = sent.len() as f64 / t0.elapsed().as_secs_f64();
    // Spans wait 1 s in the agent before export, then go in batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent_durations = loop {
        let spans: HashMap<String, f64> = rx
            .spans()
            .into_iter()
            .filter(|(svc, s)| svc == APP_SERVICE && s.kind == KIND_SERVER)
            .map(|(_, s)| {
                (
                    hex(&s.trace_id),
                    s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e3,
                )
            })
            .filter(|(id, _)| sent.contains_key(id))
            .collect();
        if spans.len() >= sent.len() || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    drop(app);
    drop(agent);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let app_durations: HashMap<&str, f64> = text
        .lines()
        .filter_map(|l| {
            let (id, us) = l.split_once(' ')?;
            Some((id, us.trim().parse().ok()?))
        })
        .collect();
    let mut d = Durations {
        sent: sent.len(),
        app_logged: app_durations.len(),
        agent_spans: agent_durations.len(),
        rps,
        ..Durations::default()
    };
    let (mut diff, mut agent_us, mut app_us, mut client_us) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, client) in &sent {
        let (Some(a), Some(p)) = (agent_durations.get(id), app_durations.get(id.as_str())) else {
            continue;
        };
        diff.push(a - p);
        agent_us.push(*a);
        app_us.push(*p);
        client_us.push(*client);
        if a > client {
            d.agent_above_client += 1;
        }
    }
    d.paired = diff.len();
    let mut unpaired: Vec<(usize, usize, bool, bool)> = order
        .iter()
        .filter(|(id, _)| {
            !agent_durations.contains_key(*id) || !app_durations.contains_key(id.as_str())
        })
        .map(|(id, &(c, i))| {
            (
                c,
                i,
                agent_durations.contains_key(id),
                app_durations.contains_key(id.as_str()),
            )
        })
        .collect();
    unpaired.sort_unstable();
    if !unpaired.is_empty() {
        eprintln!(
            "unpaired requests (connection, index, agent span?, app log?): {:?}",
            &unpaired[..unpaired.len().min(20)]
        );
    }
    d.agent_p50_us = median(&agent_us);
    d.app_p50_us = median(&app_us);
    d.client_p50_us = median(&client_us);
    d.diff_p50_us = median(&diff);
    d.diff_p99_us = pct(&diff, 0.99);
    d.diff_min_us = diff.iter().copied().reduce(f64::min).unwrap_or(0.0);
    d.diff_max_us = diff.iter().copied().reduce(f64::max).unwrap_or(0.0);
    if d.paired == 0 {
        bail!(
            "no request paired (sent {}, app logged {}, agent spans {})",
            d.sent,
            d.app_logged,
            d.agent_spans
        );
    }
    Ok(d)
}

/// Sends `n` GETs on one keep-alive connection, each with a random `traceparent`; returns
/// trace id -> client round trip (us).
fn send_traced(port: u16, n: usize) -> Result<Vec<(String, f64)>> {
    let (random, stream) = traced_client(port, n)?;
    // One descriptor for reads and writes (no `try_clone`, which dup()s it).
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut out = Vec::with_capacity(n);
    for (i, ids) in random.chunks_exact(24).enumerate() {
        let trace_id = hex(&ids[..16]);
        let head = format!(
            "GET /users/{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ntraceparent: 00-{trace_id}-{}-01\r\n\r\n",
            hex(&ids[16..])
        );
        let t0 = Instant::now();
        writer.write_all(head.as_bytes())?;
        let status = read_response(&mut reader)?;
        if status != 200 {
            bail!("request {i}: status {status}");
        }
        out.push((trace_id, t0.elapsed().as_secs_f64() * 1e6));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &AccuracyArgs,
    off: &wrk::WrkRun,
    full: &CountRun,
    half: &CountRun,
    tiny_full: &CountRun,
    tiny_half: &CountRun,
    d: &Durations,
    peak_rss: u64,
) {
    println!(
        "\naccuracy: nginx (1 worker, {} B file) under wrk, {} s runs{}",
        args.file_bytes,
        args.seconds,
        if args.no_pin {
            ""
        } else {
            "; nginx pinned to CPU 0, wrk to CPU 1"
        }
    );
    println!(
        "saturation: {:.0} req/s agent off, {:.0} agent on (throughput ratio {:.3}, p99 {:.0} -> {:.0} us)",
        off.rps,
        full.wrk.rps,
        full.wrk.rps / off.rps,
        off.p99_us,
        full.wrk.p99_us
    );
    println!(
        "\n{:<26} {:>6} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "run",
        "conns",
        "sent",
        "req/s",
        "server",
        "srv err",
        "client",
        "cli err",
        "lost ev",
        "unmatch",
        "incompl",
        "pend ovf",
        "srv mean"
    );
    let pct_of_sat = |r: &CountRun| r.wrk.rps / full.wrk.rps * 100.0;
    let rows = [
        ("100% (default ring)".to_owned(), full),
        (
            format!("{:.0}% paced (default ring)", pct_of_sat(half)),
            half,
        ),
        (format!("100% (ring {} B)", args.tiny_ring_bytes), tiny_full),
        (
            format!(
                "{:.0}% paced (ring {} B)",
                pct_of_sat(tiny_half),
                args.tiny_ring_bytes
            ),
            tiny_half,
        ),
    ];
    for (name, r) in &rows {
        println!(
            "{:<26} {:>6} {:>10.0} {:>9.0} {:>10.0} {:>+10.0} {:>10.0} {:>+10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            name,
            r.connections,
            r.wrk.requests,
            r.wrk.rps,
            r.server,
            r.server_error(),
            r.client,
            r.client_error(),
            r.lost,
            r.unmatched,
            r.incomplete,
            r.pending_overflow,
            r.server_mean_us
        );
    }
    println!(
        "(server = nginx's side, client = wrk's side; err = agent - wrk; wrk does not count the\n \
         <= {} requests in flight when it stops, which nginx still serves: server err in [0, conns];\n \
         unmatch = responses with no request, incompl = requests written off unanswered, pend ovf =\n \
         requests dropped from a full queue of 64 awaiting a response, srv mean = agent's mean\n \
         nginx duration, us)",
        args.connections
    );
    let loss = tiny_full.lost + tiny_half.lost;
    let shortfall = tiny_full.shortfall() + tiny_half.shortfall();
    println!(
        "\ntiny ring: loss counter {loss:.0} events, shortfall {shortfall:.0} requests (both sides; {:.2} lost events per missing request); loss never silent: {}",
        if shortfall > 0.0 {
            loss / shortfall
        } else {
            0.0
        },
        if shortfall <= loss {
            "yes (shortfall <= lost events)"
        } else {
            "NO: more requests missing than events lost"
        }
    );
    println!(
        "\ndurations: FastAPI (uvicorn, h11), {} requests over {} keep-alive connections ({:.0} req/s); {} paired (app logged {}, agent spans {})",
        d.sent, args.duration_connections, d.rps, d.paired, d.app_logged, d.agent_spans
    );
    println!(
        "  median: agent {:.0} us, app {:.0} us, client round trip {:.0} us",
        d.agent_p50_us, d.app_p50_us, d.client_p50_us
    );
    println!(
        "  agent - app: p50 {:.0} us, p99 {:.0} us (min {:.0}, max {:.0}); agent above client round trip: {}",
        d.diff_p50_us, d.diff_p99_us, d.diff_min_us, d.diff_max_us, d.agent_above_client
    );
    let cpu_us = full.cpu_ns as f64 / 1e3 / full.wrk.requests.max(1.0);
    let count_error = full.client_error().abs().max(half.client_error().abs());
    let count_error_server = full.server_error().max(half.server_error());
    println!(
        "{}",
        serde_json::json!({
            "bench": "accuracy",
            "throughput_ratio": full.wrk.rps / off.rps,
            "p99_ratio": full.wrk.p99_us / off.p99_us,
            "agent_cpu_us_per_request": cpu_us,
            "events_lost": full.lost + half.lost,
            "agent_peak_rss_mb": peak_rss as f64 / (1024.0 * 1024.0),
            "count_error": count_error,
            "count_error_server": count_error_server,
            "loss_counter": loss,
            "shortfall": shortfall,
            "loss_never_silent": shortfall <= loss,
            "duration_diff_p50_us": d.diff_p50_us,
            "duration_diff_p99_us": d.diff_p99_us,
            "duration_pairs": d.paired,
            "saturation_rps_off": off.rps,
            "saturation_rps_on": full.wrk.rps,
            "paced_fraction": half.wrk.rps / full.wrk.rps,
            "runs": {
                "full": full.json(),
                "paced": half.json(),
                "tiny_ring_full": tiny_full.json(),
                "tiny_ring_paced": tiny_half.json(),
            },
        })
    );
}
