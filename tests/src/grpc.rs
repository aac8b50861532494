//! The gRPC echo service of the tests (`apm.test.Echo`, tests/servers/grpc_echo.py on grpcio
//! and tests/servers/grpc_echo.js on Node's @grpc/grpc-js: the same methods, outcomes and
//! command line), and the one test both implementations pass: a server and a client process
//! on one host, uninstrumented, every method's calls on ONE connection, one after the other,
//! then five Slow calls in flight together. Each method ends differently: OK with a message,
//! NOT_FOUND as a trailers-only response (one HEADERS frame carrying `grpc-status` and
//! END_STREAM), UNKNOWN from a handler that failed.
//!
//! The agent must count every call once, under its method and status name, in the RPC
//! duration histograms on both sides (and never as an HTTP request), leave its garbage
//! counters alone, and export one span per call and side with the RPC attributes, the span
//! status of the OpenTelemetry gRPC conventions, and the client span as the server span's
//! parent.
//!
//! Each process is named by the `OTEL_SERVICE_NAME` of its environment (the agent reads
//! `/proc/<pid>/environ`, which is what the process was started with): a unique name per
//! process and run, since without one both ends would get the same name (the interpreter's
//! script, `grpc_echo`).
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    agent::Agent,
    net::free_port,
    prom::Metrics,
    pyotlp::{PyReceiver, attr, id, kind, python, status_code},
    servers::{Proc, temp_dir},
    servers_dir, unique,
};

/// The tests' Node packages (@grpc/grpc-js), pinned: the ones `cargo xtask setup` /
/// `cargo xtask test` install (`TEST_NODE_DIR` in xtask/src/prereq.rs). Given to Node as
/// `NODE_PATH`.
pub const NODE_MODULES: &str = "/var/lib/apm-agent-tests/node/node_modules";
/// Node, from Debian's (or NodeSource's) `nodejs` package.
pub const NODE: &str = "/usr/bin/node";

/// `APM_TEST_NODE` when set, else [`NODE`].
pub fn node() -> PathBuf {
    std::env::var_os("APM_TEST_NODE").map_or_else(|| PathBuf::from(NODE), PathBuf::from)
}

/// An implementation of the echo service (server and client alike).
#[derive(Debug, Clone, Copy)]
pub enum Echo {
    /// `grpc_echo.py` with the tests' venv Python: grpcio, gRPC's C core.
    Python,
    /// `grpc_echo.js` with Node: @grpc/grpc-js over Node's http2 (nghttp2).
    Node,
}

impl Echo {
    /// The script, in tests/servers.
    fn script(self) -> &'static str {
        match self {
            Echo::Python => "grpc_echo.py",
            Echo::Node => "grpc_echo.js",
        }
    }

    /// Prefix of the service names of its processes.
    fn prefix(self) -> &'static str {
        match self {
            Echo::Python => "it-grpc",
            Echo::Node => "it-grpcjs",
        }
    }

    /// `script args...` under its interpreter, as service `service`.
    fn command(self, service: &str, args: &[String]) -> Result<Command> {
        let mut cmd = match self {
            Echo::Python => Command::new(python()),
            Echo::Node => {
                let modules = Path::new(NODE_MODULES);
                ensure!(
                    modules.join("@grpc/grpc-js/package.json").exists(),
                    "{} is missing: run `cargo xtask setup` (installs @grpc/grpc-js)",
                    modules.display()
                );
                let mut cmd = Command::new(node());
                cmd.env("NODE_PATH", modules);
                cmd
            }
        };
        cmd.arg(servers_dir().join(self.script()))
            .args(args)
            .env("OTEL_SERVICE_NAME", service);
        Ok(cmd)
    }
}

const WAIT: Duration = Duration::from_secs(30);
const SERVER: &str = "rpc_server_call_duration_seconds_count";
const CLIENT: &str = "rpc_client_call_duration_seconds_count";
const SERVICE: &str = "apm.test.Echo";

/// One method of the echo service: how many calls, the status name they end with, and
/// whether the server's span is an error (OpenTelemetry's gRPC conventions: on the server
/// only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS are;
/// on the client every status but OK is).
struct Method {
    name: &'static str,
    calls: usize,
    status: &'static str,
    server_error: bool,
}

const METHODS: [Method; 4] = [
    Method {
        name: "Say",
        calls: 7,
        status: "OK",
        server_error: false,
    },
    Method {
        name: "Missing",
        calls: 3,
        status: "NOT_FOUND",
        server_error: false,
    },
    Method {
        name: "Boom",
        calls: 2,
        status: "UNKNOWN",
        server_error: true,
    },
    Method {
        name: "Slow",
        calls: 5,
        status: "OK",
        server_error: false,
    },
];

impl Method {
    /// `rpc.method`, and the span name: `apm.test.Echo/Say` (the `:path` without its slash).
    fn rpc(&self) -> String {
        format!("{SERVICE}/{}", self.name)
    }
}

fn total_calls() -> usize {
    METHODS.iter().map(|m| m.calls).sum()
}

/// Starts `grpc_echo.* serve` of `echo` on `port` as service `service`, and waits for its
/// ready line. Its stderr goes to a file of `dir`.
fn start_server(echo: Echo, port: u16, service: &str, dir: &Path) -> Result<Proc> {
    let stderr = std::fs::File::create(dir.join("grpc_echo.stderr"))?;
    let mut cmd = echo.command(
        service,
        &["serve".into(), "--port".into(), port.to_string()],
    )?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("starting {:?} (cargo xtask setup)", cmd.get_program()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let proc = Proc::new(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).unwrap_or_default();
    if line.trim() != format!("ready port={port}") {
        bail!(
            "{} serve did not start (stdout {line:?}):\n{}",
            echo.script(),
            std::fs::read_to_string(dir.join("grpc_echo.stderr")).unwrap_or_default()
        );
    }
    Ok(proc)
}

/// Runs `grpc_echo.* call` of `echo` as service `service`: every method's calls on one
/// channel, the Slow ones concurrently. The client checks each status itself and that the
/// Slow calls overlapped at the server.
fn run_client(echo: Echo, port: u16, service: &str) -> Result<()> {
    let mut args = vec![
        "call".into(),
        "--port".into(),
        port.to_string(),
        "--concurrent".into(),
    ];
    for m in &METHODS {
        args.extend([format!("--{}", m.name.to_lowercase()), m.calls.to_string()]);
    }
    let out = echo
        .command(service, &args)?
        .output()
        .with_context(|| format!("running {} call", echo.script()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.starts_with("ok "),
        "{} call: {stdout}\n{}",
        echo.script(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("client: {}", stdout.trim());
    Ok(())
}

/// Counters that must not move: HTTP/2 bytes that did not parse, header blocks lost, and
/// connections no parser recognised.
fn garbage(m: &Metrics) -> (f64, f64, f64) {
    (
        m.sum("apm_parse_errors_total", &[("protocol", "http2")]),
        m.value("apm_http2_header_blocks_lost_total"),
        m.value("apm_connections_unclassified_total"),
    )
}

/// Exact call counts per method and status on both sides, nothing under any other method or
/// status, the client's series naming the server it called, and no HTTP series for them.
fn assert_metrics(agent: &Agent, port: u16, server: &str, client: &str) -> Result<()> {
    let port_s = port.to_string();
    let (mut server_seen, mut client_seen) = (0.0, 0.0);
    for m in &METHODS {
        let rpc = m.rpc();
        let labels = |service| {
            [
                ("service_name", service),
                ("rpc_system_name", "grpc"),
                ("rpc_method", rpc.as_str()),
                ("rpc_response_status_code", m.status),
            ]
        };
        let n = m.calls as f64;
        let s = agent.settle(n, WAIT, |x| x.sum(SERVER, &labels(server)))?;
        agent.assert_exact_or_counted(s, n, &format!("server's {rpc} {}", m.status))?;
        let mut client_labels = labels(client).to_vec();
        client_labels.push(("server_port", &port_s));
        let c = agent.settle(n, WAIT, |x| x.sum(CLIENT, &client_labels))?;
        agent.assert_exact_or_counted(c, n, &format!("client's {rpc} {}", m.status))?;
        server_seen += s;
        client_seen += c;
    }
    let m = agent.metrics()?;
    let server_all = m.sum(SERVER, &[("service_name", server)]);
    let client_all = m.sum(CLIENT, &[("service_name", client)]);
    ensure!(
        server_all == server_seen && client_all == client_seen,
        "calls under another method or status: server {server_all} (want {server_seen}), \
         client {client_all} (want {client_seen})"
    );
    let named = m.sum(
        CLIENT,
        &[
            ("service_name", client),
            ("server_address", "127.0.0.1"),
            ("server_port", &port_s),
        ],
    );
    ensure!(
        named == client_all,
        "client series without server_address 127.0.0.1 and server_port {port}: {:#?}",
        m.select(CLIENT, &[("service_name", client)])
            .collect::<Vec<_>>()
    );
    // gRPC calls are RPCs, not HTTP requests: no HTTP series of either process, none with
    // the service's paths.
    let http: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.name.starts_with("http_") && s.value != 0.0)
        .filter(|s| {
            let svc = s.labels.get("service_name").map(String::as_str);
            svc == Some(server)
                || svc == Some(client)
                || s.labels.values().any(|v| v.contains(SERVICE))
        })
        .collect();
    ensure!(http.is_empty(), "gRPC counted as HTTP: {http:#?}");
    ensure!(
        m.sum("apm_requests_total", &[("protocol", "http1")]) == 0.0,
        "HTTP/2 traffic counted as HTTP/1"
    );
    Ok(())
}

/// The count of the latest OTLP data point of `metric` from `service` for `rpc` (cumulative
/// histograms: the latest is the total), exponential or explicit.
fn otlp_count(receiver: &PyReceiver, service: &str, metric: &str, rpc: &str) -> Option<u64> {
    receiver
        .metrics()
        .into_iter()
        .filter(|(svc, _, m)| svc == service && m["name"] == metric)
        .flat_map(|(_, _, m)| {
            let h = if m["exponential_histogram"].is_object() {
                &m["exponential_histogram"]
            } else {
                &m["histogram"]
            };
            h["data_points"].as_array().cloned().unwrap_or_default()
        })
        .filter(|p| attr(p, "rpc.method").as_deref() == Some(rpc))
        .filter_map(|p| p["count"].as_str().and_then(|c| c.parse().ok()))
        .next_back()
}

/// One line per span, for failure messages.
fn brief(spans: &[Value]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {:<17} {:<22} {:<18} {:<9} trace={} span={} parent={}\n",
                kind(s),
                s["name"].as_str().unwrap_or_default(),
                status_code(s),
                attr(s, "rpc.response.status_code").unwrap_or_default(),
                id(s, "trace_id"),
                id(s, "span_id"),
                id(s, "parent_span_id"),
            )
        })
        .collect()
}

/// `spans` (all of one side) hold exactly each method's calls, with the RPC attributes and
/// the span status that side's convention gives.
fn assert_side(spans: &[Value], want_kind: &str, server_side: bool, dump: &str) -> Result<()> {
    ensure!(
        spans.len() == total_calls() && spans.iter().all(|s| kind(s) == want_kind),
        "{} {want_kind} spans, want {}:\n{dump}",
        spans.len(),
        total_calls()
    );
    for m in &METHODS {
        let rpc = m.rpc();
        let mine: Vec<&Value> = spans.iter().filter(|s| s["name"] == rpc.as_str()).collect();
        ensure!(
            mine.len() == m.calls,
            "{} {want_kind} spans named {rpc}, want {}:\n{dump}",
            mine.len(),
            m.calls
        );
        let error = if server_side {
            m.server_error
        } else {
            m.status != "OK"
        };
        let want_status = if error {
            "STATUS_CODE_ERROR"
        } else {
            "STATUS_CODE_UNSET"
        };
        for s in mine {
            ensure!(
                attr(s, "rpc.system.name").as_deref() == Some("grpc")
                    && attr(s, "rpc.method").as_deref() == Some(rpc.as_str())
                    && attr(s, "rpc.response.status_code").as_deref() == Some(m.status)
                    && status_code(s) == want_status,
                "{want_kind} span of {rpc}: want rpc.system.name grpc, rpc.method {rpc}, \
                 rpc.response.status_code {}, status {want_status}:\n{s:#}",
                m.status
            );
        }
    }
    Ok(())
}

/// Every Say server span is the child of the client span of the same call (same trace,
/// parent = the client's span id); any server span that has a client span as its parent
/// has the one of its own method and status (no cross-wiring of interleaved streams).
fn assert_parents(server: &[Value], client: &[Value], dump: &str) -> Result<()> {
    let by_id: BTreeMap<String, &Value> = client.iter().map(|s| (id(s, "span_id"), s)).collect();
    let mut parents = std::collections::BTreeSet::new();
    for s in server {
        let name = s["name"].as_str().unwrap_or_default();
        let Some(parent) = by_id.get(&id(s, "parent_span_id")) else {
            ensure!(
                !name.ends_with("/Say"),
                "a Say server span without its client span as parent:\n{s:#}\n{dump}"
            );
            continue;
        };
        ensure!(
            parent["name"] == name
                && id(parent, "trace_id") == id(s, "trace_id")
                && attr(parent, "rpc.response.status_code") == attr(s, "rpc.response.status_code"),
            "server span under the wrong client span:\n{s:#}\n{parent:#}"
        );
        ensure!(
            parents.insert(id(parent, "span_id")),
            "two server spans under one client span:\n{dump}"
        );
    }
    Ok(())
}

/// The test (see the module's documentation) with `echo`'s server and client.
pub fn calls_per_method_and_status_on_both_sides(echo: Echo) -> Result<()> {
    let port = free_port();
    let receiver = PyReceiver::start()?;
    // Only this port: other traffic on the host (the agent's own exports included) must not
    // move the counters compared below. OTLP over HTTP/1.1: exports that are not gRPC.
    let agent = Agent::start(&[
        "--include",
        &format!("port={port}"),
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &receiver.http_endpoint(),
        "--metric-export-interval-ms",
        "1000",
    ])?;
    let (server, client) = (
        unique(&format!("{}-server", echo.prefix())),
        unique(&format!("{}-client", echo.prefix())),
    );
    let dir = temp_dir("grpc-echo")?;
    let _server = start_server(echo, port, &server, &dir)?;
    let before = garbage(&agent.metrics()?);

    run_client(echo, port, &client)?;

    assert_metrics(&agent, port, &server, &client)?;
    let after = garbage(&agent.metrics()?);
    agent.assert_unmoved_or_counted(before.0, after.0, "HTTP/2 parse errors")?;
    agent.assert_unmoved_or_counted(before.1, after.1, "HTTP/2 header blocks lost")?;
    agent.assert_unmoved_or_counted(before.2, after.2, "unclassified connections")?;

    // Spans: one per call and side, then a pause so that a duplicate would show.
    receiver.wait_spans(&server, total_calls(), WAIT);
    receiver.wait_spans(&client, total_calls(), WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let server_spans = receiver.service_spans(&server);
    let client_spans = receiver.service_spans(&client);
    let dump = format!(
        "server spans:\n{}client spans:\n{}agent log:\n{}",
        brief(&server_spans),
        brief(&client_spans),
        agent.log()
    );
    assert_side(&server_spans, "SPAN_KIND_SERVER", true, &dump)?;
    assert_side(&client_spans, "SPAN_KIND_CLIENT", false, &dump)?;
    assert_parents(&server_spans, &client_spans, &dump)?;

    // The OTLP duration histograms count the same calls.
    let (say, says) = (METHODS[0].rpc(), METHODS[0].calls as u64);
    let deadline = Instant::now() + WAIT;
    for (service, metric) in [
        (&server, "rpc.server.call.duration"),
        (&client, "rpc.client.call.duration"),
    ] {
        while otlp_count(&receiver, service, metric, &say) != Some(says) {
            if Instant::now() > deadline {
                bail!(
                    "no OTLP {metric} point of {service}'s {say} counting {says}: {:#?}",
                    receiver.metrics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
