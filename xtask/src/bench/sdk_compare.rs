//! The agent's server spans next to the OpenTelemetry Python SDK's own, for the same requests.
//!
//! A FastAPI app (`tests/servers/fastapi_app.py`) runs under uvicorn, traced by the SDK
//! (`FastAPIInstrumentor` + `BatchSpanProcessor` + OTLP/HTTP) into receiver A, while the agent
//! observes the same process from the kernel and exports into receiver B. Every request carries
//! its own W3C `traceparent`, so both sides' server spans join that trace under that parent:
//! the trace id pairs them across the receivers without relying on timing. What the SDK reports
//! is the reference the issue asks the agent to be held against (span counts, route names,
//! statuses, and how far the durations differ).
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tests::{
    agent::Agent,
    net::free_port,
    otlp::{Receiver, hex, str_attr},
};

use super::fastapi;
use crate::{prereq, util};

/// Service name of the app, given to it through `OTEL_SERVICE_NAME`: the SDK's resource and
/// the agent (which reads the variable from the process's environment) both use it.
const SERVICE: &str = "sdk-compare-app";

/// OTLP span kinds (`opentelemetry.proto.trace.v1.Span.SpanKind`).
const KIND_INTERNAL: i32 = 1;
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;
/// OTLP status code ERROR.
const STATUS_ERROR: i32 = 2;

#[derive(Debug, Args)]
pub struct SdkCompareArgs {
    /// Requests sent, one keep-alive connection, each with its own trace.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Python venv with FastAPI, uvicorn and the OpenTelemetry SDK (created when missing).
    #[arg(long, default_value = fastapi::DEFAULT_VENV)]
    venv: PathBuf,
    /// Longest wait, in seconds, for both receivers after the last request (the SDK's batch
    /// processor exports every 5 s; the agent holds spans 1 s).
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// Also write every matched pair as a JSON line to this file (request index, route,
    /// both durations and the start/end offsets), to look at outliers.
    #[arg(long)]
    pairs_out: Option<PathBuf>,
}

/// One request as sent, and what came back.
#[derive(Debug, Clone)]
struct Sent {
    trace_id: String,
    parent_span_id: String,
    /// The app's route template (what the SDK should report).
    route: &'static str,
    status: u16,
    /// Round trip seen by the client: head written to response read, in microseconds.
    client_us: f64,
}

/// The fields of a span this comparison uses.
#[derive(Debug, Clone)]
struct SpanView {
    service: String,
    kind: i32,
    trace_id: String,
    parent_span_id: String,
    name: String,
    route: String,
    status: Option<u16>,
    error: bool,
    start_ns: u64,
    end_ns: u64,
}

impl SpanView {
    fn duration_us(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e3
    }
}

/// Every span `rx` received, reduced to a [`SpanView`].
fn views(rx: &Receiver) -> Vec<SpanView> {
    rx.spans()
        .into_iter()
        .map(|(service, s)| {
            let status = str_attr(&s.attributes, "http.response.status_code")
                // Older HTTP semantic conventions, in case the instrumentation emits those.
                .or_else(|| str_attr(&s.attributes, "http.status_code"))
                .and_then(|v| v.parse().ok());
            SpanView {
                service,
                kind: s.kind,
                trace_id: hex(&s.trace_id),
                parent_span_id: hex(&s.parent_span_id),
                name: s.name.clone(),
                route: str_attr(&s.attributes, "http.route").unwrap_or_else(|| "(none)".to_owned()),
                status,
                error: s.status.as_ref().is_some_and(|st| st.code == STATUS_ERROR),
                start_ns: s.start_time_unix_nano,
                end_ns: s.end_time_unix_nano,
            }
        })
        .collect()
}

pub fn run(args: &SdkCompareArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "sdk-compare starts the agent: run it as root (sudo -E cargo xtask bench sdk-compare)"
        );
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    prereq::ensure(prereq::Scope::Build)?;
    let python = fastapi::ensure_venv(&args.venv)?;
    let agent_bin = util::build_release_agent()?;

    // Two receivers so that neither side's spans can be mistaken for the other's.
    let sdk_rx = Receiver::start()?;
    let agent_rx = Receiver::start()?;

    // The agent first: it then sees the app start and every connection from its opening.
    // The profiler is off: it is not what is compared, and it only adds noise on 2 vCPUs.
    eprintln!("starting the agent (OTLP to {})", agent_rx.endpoint());
    let mut agent = Agent::start_binary(
        &agent_bin,
        &["--otlp-endpoint", &agent_rx.endpoint(), "--no-profiling"],
    )?;

    let port = free_port();
    let log = std::env::temp_dir().join(tests::unique("sdk-compare-uvicorn"));
    let app = fastapi::start(
        &python,
        port,
        &fastapi::AppOptions {
            service: SERVICE,
            sdk_otlp: Some(&sdk_rx.endpoint()),
            timing_log: None,
        },
        &log,
    )?;
    eprintln!("uvicorn + FastAPI (SDK-instrumented) on 127.0.0.1:{port}");

    let t0 = Instant::now();
    let sent = send_requests(port, args.requests)?;
    let send_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "sent {} requests in {send_secs:.1} s; waiting for both receivers",
        sent.len()
    );

    let ids: HashMap<&str, &Sent> = sent.iter().map(|s| (s.trace_id.as_str(), s)).collect();
    let in_sent = |spans: &[SpanView]| {
        spans
            .iter()
            .filter(|s| {
                s.service == SERVICE
                    && s.kind == KIND_SERVER
                    && ids.contains_key(s.trace_id.as_str())
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let sdk_n = in_sent(&views(&sdk_rx));
        let agent_n = in_sent(&views(&agent_rx));
        if (sdk_n >= sent.len() && agent_n >= sent.len()) || Instant::now() > deadline {
            eprintln!(
                "receivers after {:.1} s: SDK {sdk_n}, agent {agent_n} server spans of the sent traces",
                t0.elapsed().as_secs_f64() - send_secs
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // A little longer, so that duplicates would show.
    std::thread::sleep(Duration::from_millis(1500));

    // Clean up before reading the final state: SIGTERM to the agent (it flushes what it
    // holds), SIGTERM to uvicorn (the SDK flushes its batch at exit).
    let agent_exit = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    drop(app);
    std::thread::sleep(Duration::from_millis(500));
    let app_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    match &agent_exit {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: agent exited with {status}"),
        Err(e) => eprintln!("warning: agent did not stop on SIGTERM: {e:#}"),
    }

    let report = compare(&sent, &views(&sdk_rx), &views(&agent_rx));
    report.print(args.requests, send_secs);
    if let Some(path) = &args.pairs_out {
        let lines: Vec<String> = report.pairs.iter().map(ToString::to_string).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("pairs written to {}", path.display());
    }
    if report.matched == 0 {
        eprintln!("uvicorn log:\n{app_log}\nagent log:\n{}", agent.log());
        bail!("no span pairs: nothing to compare");
    }
    Ok(())
}

/// The request mix: half `/users/{id}` with varying ids, 30 % `/items/{id}/detail`, 10 %
/// `/error` (500) and 10 % `/sleep/20` (a 20 ms await, where the event loop is idle).
fn pick(i: usize) -> (String, &'static str) {
    match i % 10 {
        0..=4 => (
            format!("/users/{}", (i * 7919) % 100_000 + 1),
            "/users/{user_id}",
        ),
        5..=7 => (
            format!("/items/{}/detail", i + 1),
            "/items/{item_id}/detail",
        ),
        8 => ("/error".to_owned(), "/error"),
        _ => ("/sleep/20".to_owned(), "/sleep/{ms}"),
    }
}

/// For `n` traced requests on one keep-alive connection: 24 random bytes per request (a trace
/// id and a parent span id) and the connection, no Nagle delay, 30 s read timeout.
pub(super) fn traced_client(port: u16, n: usize) -> Result<(Vec<u8>, TcpStream)> {
    let mut random = vec![0u8; 24 * n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom")?;
    let stream =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connect :{port}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok((random, stream))
}

/// Sends `n` GETs in sequence on one keep-alive connection (as a client library would), each
/// with a fresh random `traceparent` (sampled flag set).
fn send_requests(port: u16, n: usize) -> Result<Vec<Sent>> {
    let (random, stream) = traced_client(port, n)?;
    // Reads and writes on the one descriptor (no `try_clone`, which dup()s it): the agent
    // follows the descriptor the connection was made on.
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut sent = Vec::with_capacity(n);
    for (i, ids) in random.chunks_exact(24).enumerate() {
        let (path, route) = pick(i);
        let trace_id = hex(&ids[..16]);
        let parent_span_id = hex(&ids[16..]);
        // One write per request: the whole head in one segment.
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: apm-sdk-compare\r\n\
             Accept: */*\r\ntraceparent: 00-{trace_id}-{parent_span_id}-01\r\n\r\n"
        );
        let t0 = Instant::now();
        writer.write_all(head.as_bytes())?;
        let status = read_response(&mut reader).with_context(|| format!("request {i} ({path})"))?;
        let client_us = t0.elapsed().as_secs_f64() * 1e6;
        sent.push(Sent {
            trace_id,
            parent_span_id,
            route,
            status,
            client_us,
        });
    }
    Ok(sent)
}

/// Reads one response (Content-Length or chunked body) and returns its status.
pub(super) fn read_response(r: &mut impl BufRead) -> Result<u16> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed by the server");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().context("content-length")?;
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    if !chunked {
        std::io::copy(&mut r.take(len as u64), &mut std::io::sink())?;
        return Ok(status);
    }
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                    return Ok(status);
                }
            }
        }
        std::io::copy(&mut r.take(n as u64 + 2), &mut std::io::sink())?;
    }
}

/// Nearest-rank percentile (`p` in 0..=1) of an unsorted list; 0 for an empty one.
pub(super) fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::max).unwrap_or(0.0)
}

/// Durations of matched pairs, per sent route template.
#[derive(Debug, Default)]
struct RouteDurations {
    sdk_us: Vec<f64>,
    agent_us: Vec<f64>,
    diff_us: Vec<f64>,
}

/// Both sides' spans for the sent traces, side by side.
#[derive(Debug, Default)]
struct Report {
    requests: usize,
    client_status: BTreeMap<u16, usize>,
    /// SERVER spans of [`SERVICE`], whatever their trace.
    sdk_server_spans: usize,
    /// INTERNAL spans of [`SERVICE`] (the ASGI instrumentation's `http send` / `http receive`).
    sdk_internal_spans: usize,
    sdk_other_spans: usize,
    /// Sent traces with at least one SDK server span.
    sdk_traces: usize,
    /// Server spans beyond the first in a sent trace.
    sdk_duplicates: usize,
    /// SDK server spans in no sent trace.
    sdk_foreign: usize,
    /// SDK server spans whose parent is the `traceparent`'s span id.
    sdk_parent_ok: usize,
    agent_server_spans: usize,
    agent_client_spans: usize,
    agent_other_spans: usize,
    agent_traces: usize,
    agent_duplicates: usize,
    agent_foreign: usize,
    agent_parent_ok: usize,
    /// Agent spans of other services: the agent sees the whole host, so anything else running
    /// (another test, the bench's own process) shows here, by service name.
    agent_spans_other_services: BTreeMap<String, usize>,
    matched: usize,
    route_exact_match: usize,
    route_pairs: BTreeMap<(String, String), usize>,
    /// Routes equal once every `{name}` placeholder is reduced to `{}`: the same template
    /// with other parameter names.
    route_shape_match: usize,
    name_exact_match: usize,
    status_match: usize,
    status_pairs_mismatched: BTreeMap<(String, String), usize>,
    /// Agent status equal to what the client received.
    agent_status_client_match: usize,
    error_flag_match: usize,
    sdk_us: Vec<f64>,
    agent_us: Vec<f64>,
    diff_us: Vec<f64>,
    ratio: Vec<f64>,
    /// Client round trip minus each side's duration.
    client_minus_sdk_us: Vec<f64>,
    client_minus_agent_us: Vec<f64>,
    start_offset_us: Vec<f64>,
    end_offset_us: Vec<f64>,
    by_route: BTreeMap<&'static str, RouteDurations>,
    /// Every matched pair, in request order, for `--pairs-out`.
    pairs: Vec<serde_json::Value>,
}

/// Index of the SERVER spans of [`SERVICE`] by trace, with the side's counts filled in.
struct Side<'a> {
    by_trace: HashMap<&'a str, &'a SpanView>,
    server: usize,
    internal: usize,
    client: usize,
    other: usize,
    traces: usize,
    duplicates: usize,
    foreign: usize,
    parent_ok: usize,
}

fn side<'a>(spans: &'a [SpanView], sent: &HashMap<&str, &Sent>) -> Side<'a> {
    let mut s = Side {
        by_trace: HashMap::new(),
        server: 0,
        internal: 0,
        client: 0,
        other: 0,
        traces: 0,
        duplicates: 0,
        foreign: 0,
        parent_ok: 0,
    };
    for span in spans.iter().filter(|v| v.service == SERVICE) {
        match span.kind {
            KIND_SERVER => s.server += 1,
            KIND_INTERNAL => {
                s.internal += 1;
                continue;
            }
            KIND_CLIENT => {
                s.client += 1;
                continue;
            }
            _ => {
                s.other += 1;
                continue;
            }
        }
        let Some(req) = sent.get(span.trace_id.as_str()) else {
            s.foreign += 1;
            continue;
        };
        if span.parent_span_id == req.parent_span_id {
            s.parent_ok += 1;
        }
        if s.by_trace.insert(span.trace_id.as_str(), span).is_some() {
            s.duplicates += 1;
        } else {
            s.traces += 1;
        }
    }
    s
}

/// A route template with its placeholders' names dropped: `/users/{user_id}` -> `/users/{}`.
fn route_shape(route: &str) -> String {
    route
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn status_text(s: Option<u16>) -> String {
    s.map_or_else(|| "(none)".to_owned(), |s| s.to_string())
}

fn compare(sent: &[Sent], sdk: &[SpanView], agent: &[SpanView]) -> Report {
    let ids: HashMap<&str, &Sent> = sent.iter().map(|s| (s.trace_id.as_str(), s)).collect();
    let a = side(sdk, &ids);
    let b = side(agent, &ids);
    let mut r = Report {
        requests: sent.len(),
        sdk_server_spans: a.server,
        sdk_internal_spans: a.internal,
        sdk_other_spans: a.client + a.other,
        sdk_traces: a.traces,
        sdk_duplicates: a.duplicates,
        sdk_foreign: a.foreign,
        sdk_parent_ok: a.parent_ok,
        agent_server_spans: b.server,
        agent_client_spans: b.client,
        agent_other_spans: b.internal + b.other,
        agent_traces: b.traces,
        agent_duplicates: b.duplicates,
        agent_foreign: b.foreign,
        agent_parent_ok: b.parent_ok,
        agent_spans_other_services: agent.iter().filter(|v| v.service != SERVICE).fold(
            BTreeMap::new(),
            |mut m, v| {
                *m.entry(v.service.clone()).or_default() += 1;
                m
            },
        ),
        ..Report::default()
    };
    for (i, req) in sent.iter().enumerate() {
        *r.client_status.entry(req.status).or_default() += 1;
        let (Some(s), Some(g)) = (
            a.by_trace.get(req.trace_id.as_str()),
            b.by_trace.get(req.trace_id.as_str()),
        ) else {
            continue;
        };
        r.matched += 1;
        if s.route == g.route {
            r.route_exact_match += 1;
        }
        *r.route_pairs
            .entry((s.route.clone(), g.route.clone()))
            .or_default() += 1;
        if route_shape(&s.route) == route_shape(&g.route) {
            r.route_shape_match += 1;
        }
        if s.name == g.name {
            r.name_exact_match += 1;
        }
        if s.status.is_some() && s.status == g.status {
            r.status_match += 1;
        } else {
            *r.status_pairs_mismatched
                .entry((status_text(s.status), status_text(g.status)))
                .or_default() += 1;
        }
        if g.status == Some(req.status) {
            r.agent_status_client_match += 1;
        }
        if s.error == g.error {
            r.error_flag_match += 1;
        }
        let (sd, gd) = (s.duration_us(), g.duration_us());
        r.sdk_us.push(sd);
        r.agent_us.push(gd);
        r.diff_us.push(gd - sd);
        if sd > 0.0 {
            r.ratio.push(gd / sd);
        }
        r.client_minus_sdk_us.push(req.client_us - sd);
        r.client_minus_agent_us.push(req.client_us - gd);
        r.start_offset_us
            .push((g.start_ns as f64 - s.start_ns as f64) / 1e3);
        r.end_offset_us
            .push((g.end_ns as f64 - s.end_ns as f64) / 1e3);
        r.pairs.push(serde_json::json!({
            "request": i,
            "trace_id": req.trace_id,
            "route": req.route,
            "status": req.status,
            "sdk_route": s.route,
            "agent_route": g.route,
            "client_us": req.client_us,
            "sdk_us": sd,
            "agent_us": gd,
            "diff_us": gd - sd,
            "start_offset_us": (g.start_ns as f64 - s.start_ns as f64) / 1e3,
            "end_offset_us": (g.end_ns as f64 - s.end_ns as f64) / 1e3,
        }));
        let route = r.by_route.entry(req.route).or_default();
        route.sdk_us.push(sd);
        route.agent_us.push(gd);
        route.diff_us.push(gd - sd);
    }
    r
}

impl Report {
    fn print(&self, requests: usize, send_secs: f64) {
        println!(
            "\nsdk-compare: FastAPI under uvicorn (h11, 1 worker) traced by the OpenTelemetry \
             Python SDK vs the agent; {requests} requests on one keep-alive connection in \
             {send_secs:.1} s, each with its own traceparent; service {SERVICE}"
        );
        let statuses: Vec<String> = self
            .client_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        println!("client saw: {}", statuses.join(", "));
        println!("{:<46} {:>10} {:>10}", "", "SDK", "agent");
        let row = |label: &str, sdk: String, agent: String| {
            println!("{label:<46} {sdk:>10} {agent:>10}");
        };
        let dash = || "-".to_owned();
        row(
            "server spans",
            self.sdk_server_spans.to_string(),
            self.agent_server_spans.to_string(),
        );
        row(
            "  sent traces with a server span",
            self.sdk_traces.to_string(),
            self.agent_traces.to_string(),
        );
        row(
            "  extra server spans in a sent trace",
            self.sdk_duplicates.to_string(),
            self.agent_duplicates.to_string(),
        );
        row(
            "  server spans in no sent trace",
            self.sdk_foreign.to_string(),
            self.agent_foreign.to_string(),
        );
        row(
            "  parent = traceparent's span id",
            self.sdk_parent_ok.to_string(),
            self.agent_parent_ok.to_string(),
        );
        row(
            "internal spans (ASGI http send/receive)",
            self.sdk_internal_spans.to_string(),
            self.agent_other_spans.to_string(),
        );
        row(
            "client spans (SDK: other kinds)",
            self.sdk_other_spans.to_string(),
            self.agent_client_spans.to_string(),
        );
        row(
            "spans of other services (host-wide)",
            dash(),
            self.agent_spans_other_services
                .values()
                .sum::<usize>()
                .to_string(),
        );
        for (service, n) in &self.agent_spans_other_services {
            row(&format!("  {service}"), dash(), n.to_string());
        }
        row(
            "server duration p50 (us)",
            format!("{:.0}", pct(&self.sdk_us, 0.5)),
            format!("{:.0}", pct(&self.agent_us, 0.5)),
        );
        row(
            "server duration p99 (us)",
            format!("{:.0}", pct(&self.sdk_us, 0.99)),
            format!("{:.0}", pct(&self.agent_us, 0.99)),
        );
        let m = self.matched.max(1) as f64;
        let of = |n: usize| format!("{n} ({:.1} %)", n as f64 / m * 100.0);
        println!(
            "{:<46} {:>21}",
            "matched pairs (same trace id)", self.matched
        );
        println!(
            "{:<46} {:>21}",
            "route exact match",
            of(self.route_exact_match)
        );
        println!(
            "{:<46} {:>21}",
            "route same template, other parameter names",
            of(self.route_shape_match)
        );
        println!(
            "{:<46} {:>21}",
            "span name exact match",
            of(self.name_exact_match)
        );
        println!("{:<46} {:>21}", "HTTP status match", of(self.status_match));
        println!(
            "{:<46} {:>21}",
            "agent status = status the client saw",
            of(self.agent_status_client_match)
        );
        println!(
            "{:<46} {:>21}",
            "span status ERROR match",
            of(self.error_flag_match)
        );
        println!(
            "{:<46} {:>21}",
            "duration agent - SDK (us) p50 / p99",
            format!(
                "{:.0} / {:.0}",
                pct(&self.diff_us, 0.5),
                pct(&self.diff_us, 0.99)
            )
        );
        println!(
            "{:<46} {:>21}",
            "duration agent - SDK (us) min / max",
            format!("{:.0} / {:.0}", min(&self.diff_us), max(&self.diff_us))
        );
        println!(
            "{:<46} {:>21.3}",
            "duration agent / SDK, median of ratios",
            pct(&self.ratio, 0.5)
        );
        println!(
            "{:<46} {:>21}",
            "start / end agent - SDK (us), medians",
            format!(
                "{:.0} / {:.0}",
                pct(&self.start_offset_us, 0.5),
                pct(&self.end_offset_us, 0.5)
            )
        );
        println!(
            "{:<46} {:>21}",
            "client round trip - SDK / - agent (us), p50",
            format!(
                "{:.0} / {:.0}",
                pct(&self.client_minus_sdk_us, 0.5),
                pct(&self.client_minus_agent_us, 0.5)
            )
        );
        println!(
            "{:<46} {:>21}",
            "client round trip - SDK / - agent (us), p99",
            format!(
                "{:.0} / {:.0}",
                pct(&self.client_minus_sdk_us, 0.99),
                pct(&self.client_minus_agent_us, 0.99)
            )
        );
        println!("route pairs (SDK http.route -> agent http.route):");
        for ((s, g), n) in &self.route_pairs {
            let same = if s == g { "same" } else { "differs" };
            println!("  {s:<28} -> {g:<28} {n:>6}  {same}");
        }
        if !self.status_pairs_mismatched.is_empty() {
            println!("status mismatches (SDK -> agent):");
            for ((s, g), n) in &self.status_pairs_mismatched {
                println!("  {s} -> {g}: {n}");
            }
        }
        println!(
            "{:<28} {:>6} {:>12} {:>12} {:>14} {:>14}",
            "by sent route", "pairs", "SDK p50 us", "agent p50 us", "diff p50 us", "diff p99 us"
        );
        for (route, d) in &self.by_route {
            println!(
                "{route:<28} {:>6} {:>12.0} {:>12.0} {:>14.0} {:>14.0}",
                d.diff_us.len(),
                pct(&d.sdk_us, 0.5),
                pct(&d.agent_us, 0.5),
                pct(&d.diff_us, 0.5),
                pct(&d.diff_us, 0.99)
            );
        }
        let route_pairs: Vec<serde_json::Value> = self
            .route_pairs
            .iter()
            .map(|((s, g), n)| serde_json::json!({ "sdk": s, "agent": g, "count": n }))
            .collect();
        let by_route: serde_json::Map<String, serde_json::Value> = self
            .by_route
            .iter()
            .map(|(route, d)| {
                (
                    (*route).to_owned(),
                    serde_json::json!({
                        "pairs": d.diff_us.len(),
                        "sdk_duration_us_p50": pct(&d.sdk_us, 0.5),
                        "agent_duration_us_p50": pct(&d.agent_us, 0.5),
                        "duration_diff_us_p50": pct(&d.diff_us, 0.5),
                        "duration_diff_us_p99": pct(&d.diff_us, 0.99),
                    }),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "bench": "sdk-compare",
                "requests": self.requests,
                "sdk_server_spans": self.sdk_server_spans,
                "sdk_internal_spans": self.sdk_internal_spans,
                "sdk_traces": self.sdk_traces,
                "sdk_parent_ok": self.sdk_parent_ok,
                "agent_server_spans": self.agent_server_spans,
                "agent_client_spans": self.agent_client_spans,
                "agent_traces": self.agent_traces,
                "agent_spans_other_services": self.agent_spans_other_services,
                "agent_duplicates": self.agent_duplicates,
                "agent_foreign": self.agent_foreign,
                "agent_parent_ok": self.agent_parent_ok,
                "matched": self.matched,
                "route_exact_match": self.route_exact_match,
                "route_shape_match": self.route_shape_match,
                "route_pairs": route_pairs,
                "name_exact_match": self.name_exact_match,
                "status_match": self.status_match,
                "agent_status_client_match": self.agent_status_client_match,
                "error_flag_match": self.error_flag_match,
                "sdk_duration_us_p50": pct(&self.sdk_us, 0.5),
                "agent_duration_us_p50": pct(&self.agent_us, 0.5),
                "duration_diff_us_p50": pct(&self.diff_us, 0.5),
                "duration_diff_us_p99": pct(&self.diff_us, 0.99),
                "duration_diff_us_min": min(&self.diff_us),
                "duration_diff_us_max": max(&self.diff_us),
                "duration_ratio_p50": pct(&self.ratio, 0.5),
                "client_minus_sdk_us_p50": pct(&self.client_minus_sdk_us, 0.5),
                "client_minus_sdk_us_p99": pct(&self.client_minus_sdk_us, 0.99),
                "client_minus_agent_us_p50": pct(&self.client_minus_agent_us, 0.5),
                "client_minus_agent_us_p99": pct(&self.client_minus_agent_us, 0.99),
                "start_offset_us_p50": pct(&self.start_offset_us, 0.5),
                "end_offset_us_p50": pct(&self.end_offset_us, 0.5),
                "by_route": by_route,
            })
        );
    }
}
