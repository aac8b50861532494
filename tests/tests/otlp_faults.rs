//! The OTLP endpoint misbehaves mid-export (a fault-injecting front, `tests/src/faulty.rs`, in
//! front of a real receiver): it dies in the middle of reading a request body, answers half a
//! response and closes, goes down, or accepts and never answers. The agent must not crash, keep
//! its memory bounded, count every failed attempt (`apm_export_failures_total`) and every span
//! it gives up on (`apm_export_dropped_total`), bound a hung export by `--otlp-timeout-ms`
//! while still serving `/metrics`, and resume exporting once the endpoint behaves: spans of
//! new requests arrive, and spans queued meanwhile arrive at most once or are counted dropped.
//!
//! The agent observes only this test's own application servers (`--include service=...`), so
//! its counters are not moved by other traffic on the host.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::Result;
use tests::{
    agent::Agent,
    faulty::{Fault, FaultyFront},
    net::{free_port, http_get},
    otlp::{Receiver, hex},
    prom::Metrics,
    pyotlp::{PyReceiver, id, kind, rss_anon_bytes},
    require_root,
    servers::{app_server, curl},
    unique,
};

/// Requests before the faults, and after the endpoint is back.
const N: usize = 10;
const WAIT: Duration = Duration::from_secs(20);
/// A batch retried with backoff (0.5 s doubling to 8 s) is sent within 8 s of the endpoint's
/// return, and fresh spans follow it.
const RESUME: Duration = Duration::from_secs(30);
/// The agent's own (anonymous) resident memory, whatever it queued meanwhile.
const MAX_ANON: u64 = 100 * 1024 * 1024;

fn signal(m: &Metrics, name: &str, signal: &str) -> f64 {
    m.sum(name, &[("signal", signal)])
}

fn failures(m: &Metrics) -> f64 {
    signal(m, "apm_export_failures_total", "traces")
}

/// Polls `f` until it holds or `timeout` passes.
fn wait_for(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` requests to the app on `port`, on one keep-alive connection.
fn requests(port: u16, n: usize) -> Result<()> {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{port}/users/{i}"))
        .collect();
    let mut args = Vec::new();
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    curl(&args)?;
    Ok(())
}

fn assert_anon_bounded(agent: &Agent, when: &str) -> u64 {
    let anon = rss_anon_bytes(agent.pid());
    assert!(
        anon > 0 && anon < MAX_ANON,
        "agent RssAnon {anon} bytes {when}"
    );
    anon
}

#[test]
fn http_export_survives_a_receiver_dying_mid_body_and_half_answering() -> Result<()> {
    if !require_root("http_export_survives_a_receiver_dying_mid_body_and_half_answering") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let front = FaultyFront::start(receiver.port, Fault::DieMidBody)?;
    let prefix = unique("it-otlpfault");
    let mut agent = Agent::start(&[
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &front.endpoint(),
        "--otlp-timeout-ms",
        "2000",
        "--include",
        &format!("service={prefix}-*"),
    ])?;
    let anon_start = assert_anon_bounded(&agent, "at start");

    let early = format!("{prefix}-early");
    let port = free_port();
    let app = app_server(port, &early)?;
    requests(port, N)?;

    // The receiver dies in the middle of reading the first export's body.
    assert!(
        wait_for(WAIT, || front.died_mid_body() >= 1),
        "no export reached the receiver (accepted {})\n{}",
        front.accepted(),
        agent.log()
    );
    let f1 = agent.settle(1.0, WAIT, failures)?;
    assert!(
        f1 >= 1.0,
        "the broken export is not counted\n{}",
        agent.log()
    );
    agent.check_healthy()?;

    // Then it reads whole requests but answers half a response head and closes.
    front.set(Fault::HalfResponse);
    assert!(
        wait_for(WAIT, || front.half_responses() >= 1),
        "no retry reached the half-answering receiver\n{}",
        agent.log()
    );
    let f2 = agent.settle(f1 + 1.0, WAIT, failures)?;
    assert!(f2 > f1, "half a response is not a failure? {f1} -> {f2}");
    assert_eq!(
        signal(&agent.metrics()?, "apm_export_sent_total", "traces"),
        0.0,
        "nothing was delivered yet"
    );
    agent.check_healthy()?;
    let anon_faults = assert_anon_bounded(&agent, "during the faults");

    // Then it is down a moment (refused), and comes back on the same port.
    front.down();
    std::thread::sleep(Duration::from_secs(1));
    front.set(Fault::Forward);
    front.up();
    drop(app);

    let late = format!("{prefix}-late");
    let port = free_port();
    let _app = app_server(port, &late)?;
    requests(port, N)?;
    receiver.wait_spans(&late, N, RESUME);
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    let fresh = receiver.wait_spans(&late, N, Duration::ZERO);
    assert_eq!(fresh.len(), N, "export resumed: {fresh:#?}\n{log}");
    assert!(fresh.iter().all(|s| s.kind == 2), "server spans");

    // What was queued during the faults: delivered at most once each, the rest counted dropped.
    let queued = receiver.wait_spans(&early, 0, Duration::ZERO);
    let ids: BTreeSet<String> = queued.iter().map(|s| hex(&s.span_id)).collect();
    assert_eq!(ids.len(), queued.len(), "a span was delivered twice");
    assert!(queued.len() <= N, "{} early spans > {N}", queued.len());
    let m = agent.metrics()?;
    let dropped = signal(&m, "apm_export_dropped_total", "traces");
    assert!(
        dropped >= (N - queued.len()) as f64,
        "{} of {N} early spans arrived but only {dropped} counted dropped\n{log}",
        queued.len()
    );
    assert!(signal(&m, "apm_export_sent_total", "traces") >= (N + queued.len()) as f64);
    assert_eq!(receiver.decode_errors(), 0);
    agent.check_healthy()?;
    let anon_end = assert_anon_bounded(&agent, "at the end");
    eprintln!(
        "agent RssAnon KiB: start {}, faults {}, end {}; front: accepted {}, died mid-body {}, \
         half answers {}, forwarded {}; failures {}, {} early spans delivered, {dropped} dropped",
        anon_start / 1024,
        anon_faults / 1024,
        anon_end / 1024,
        front.accepted(),
        front.died_mid_body(),
        front.half_responses(),
        front.forwarded(),
        failures(&m),
        queued.len(),
    );
    Ok(())
}

/// The endpoint accepts and never answers: every attempt ends at the timeout (1 s here, the
/// default is 10 s), is counted, and the connection is given up; `/metrics` keeps answering;
/// the metrics queue fills and its overflow is counted. Then it answers again.
fn hung_endpoint_is_bounded_by_the_timeout(protocol: &str) -> Result<()> {
    let receiver = PyReceiver::start()?;
    let target = if protocol == "grpc" {
        receiver.grpc_port
    } else {
        receiver.http_port
    };
    let front = FaultyFront::start(target, Fault::Hang)?;
    let prefix = unique("it-otlphang");
    let mut agent = Agent::start(&[
        "--otlp-protocol",
        protocol,
        "--otlp-endpoint",
        &front.endpoint(),
        "--otlp-timeout-ms",
        "1000",
        "--metric-export-interval-ms",
        "1000",
        "--include",
        &format!("service={prefix}-*"),
    ])?;
    let anon_start = assert_anon_bounded(&agent, "at start");

    let early = format!("{prefix}-early");
    let port = free_port();
    let app = app_server(port, &early)?;
    requests(port, N)?;

    // Three failed span exports within 15 s: with the attempts unbounded (or bounded by the
    // 10 s default) there would be one at most. Meanwhile /metrics answers promptly.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut scrapes = 0;
    let mut m = agent.metrics()?;
    while failures(&m) < 3.0 && start.elapsed() < Duration::from_secs(15) {
        let t = Instant::now();
        m = agent.metrics()?;
        slowest = slowest.max(t.elapsed());
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    assert!(
        failures(&m) >= 3.0,
        "{} failed span exports in {:?} against a hung endpoint (front: accepted {}, hung {}, \
         still open {})\n{log}",
        failures(&m),
        start.elapsed(),
        front.accepted(),
        front.hung(),
        front.hung_open()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/metrics took {slowest:?} while exports hang"
    );
    assert!(front.hung() >= 1, "the front saw no export");
    let metric_failures = agent.settle(2.0, WAIT, |m| {
        signal(m, "apm_export_failures_total", "metrics")
    })?;
    assert!(metric_failures >= 2.0, "metric exports time out as well");
    // One request is retried at a time; one more per second queues, two at most: the rest is
    // dropped and counted.
    let metric_drops = agent.settle(1.0, WAIT, |m| {
        signal(m, "apm_export_dropped_total", "metrics")
    })?;
    assert!(metric_drops >= 1.0, "metrics queue overflow not counted");
    // Each timed-out attempt gives its connection up: they do not pile up.
    std::thread::sleep(Duration::from_millis(500));
    let open = front.hung_open();
    assert!(
        open <= 3,
        "{open} hung connections still open after {} attempts (accepted {})",
        front.hung(),
        front.accepted()
    );
    agent.check_healthy()?;
    assert!(matches!(http_get(agent.port, "/healthz"), Ok((200, _))));
    let anon_hung = assert_anon_bounded(&agent, "while the endpoint hangs");

    // It answers again.
    front.set(Fault::Forward);
    drop(app);
    let late = format!("{prefix}-late");
    let port = free_port();
    let _app = app_server(port, &late)?;
    requests(port, N)?;
    receiver.wait_spans(&late, N, RESUME);
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    let fresh = receiver.service_spans(&late);
    assert_eq!(
        fresh.len(),
        N,
        "export resumed (front: accepted {}, forwarded {}): {fresh:#?}\n{log}",
        front.accepted(),
        front.forwarded()
    );
    assert!(fresh.iter().all(|s| kind(s) == "SPAN_KIND_SERVER"));
    let queued = receiver.service_spans(&early);
    let ids: BTreeSet<String> = queued.iter().map(|s| id(s, "span_id")).collect();
    assert_eq!(ids.len(), queued.len(), "a span was delivered twice");
    assert!(queued.len() <= N);
    let m = agent.metrics()?;
    let dropped = signal(&m, "apm_export_dropped_total", "traces");
    assert!(
        dropped >= (N - queued.len()) as f64,
        "{} of {N} early spans arrived but only {dropped} counted dropped\n{log}",
        queued.len()
    );
    assert!(receiver.decode_errors().is_empty());
    agent.check_healthy()?;
    let anon_end = assert_anon_bounded(&agent, "at the end");
    eprintln!(
        "{protocol}: agent RssAnon KiB: start {}, hung {}, end {}; front: accepted {}, hung {}, \
         forwarded {}; span failures {}, metric failures {metric_failures}, metric drops \
         {metric_drops}; {scrapes} scrapes, slowest {slowest:?}; {} early spans delivered, \
         {dropped} dropped",
        anon_start / 1024,
        anon_hung / 1024,
        anon_end / 1024,
        front.accepted(),
        front.hung(),
        front.forwarded(),
        failures(&m),
        queued.len()
    );
    Ok(())
}

#[test]
fn http_export_to_a_hung_endpoint_is_bounded_by_the_timeout() -> Result<()> {
    if !require_root("http_export_to_a_hung_endpoint_is_bounded_by_the_timeout") {
        return Ok(());
    }
    hung_endpoint_is_bounded_by_the_timeout("http/protobuf")
}

#[test]
fn grpc_export_to_a_hung_endpoint_is_bounded_by_the_timeout() -> Result<()> {
    if !require_root("grpc_export_to_a_hung_endpoint_is_bounded_by_the_timeout") {
        return Ok(());
    }
    hung_endpoint_is_bounded_by_the_timeout("grpc")
}
