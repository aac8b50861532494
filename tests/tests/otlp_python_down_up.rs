//! The receiver is down when the agent starts: export attempts fail (counted), the agent
//! stays up with bounded memory; once the receiver is back on the same port, export resumes.
//! Spans queued while it was down are either delivered once or counted as dropped.
use std::{collections::BTreeSet, time::Duration};

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    pyotlp::{PyReceiver, id, kind, rss_anon_bytes, rss_bytes},
    require_root,
    servers::{app_server, curl},
    unique,
};

/// Requests sent while the receiver is down, and after it is back.
const DOWN: usize = 30;
const UP: usize = 10;
/// The agent retries a batch for 30 s (backoff 0.5 s doubling to 8 s), so a batch in flight
/// when the receiver returns is sent within 8 s and fresh spans follow it.
const RESUME: Duration = Duration::from_secs(40);
/// Generous: the agent's own (anonymous) resident memory, whatever it queued meanwhile.
/// VmRSS is reported, not bounded: it counts the binaries of observed processes the agent
/// maps (shared page cache), which grow with whatever else runs on the host.
const MAX_ANON: u64 = 100 * 1024 * 1024;

fn traces(agent: &Agent, name: &str) -> Result<f64> {
    Ok(agent.metrics()?.sum(name, &[("signal", "traces")]))
}

/// Longer than a batch's retry budget: the batch in flight is dropped (and counted).
const PAST_BUDGET: Duration = Duration::from_secs(35);

/// The receiver is down from the agent's start until `down_for` after the first failed
/// export.
fn down_then_up(protocol: &str, down_for: Duration) -> Result<()> {
    let mut receiver = PyReceiver::start()?;
    receiver.stop();
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let agent = Agent::start(&["--otlp-protocol", protocol, "--otlp-endpoint", &endpoint])?;
    let mem = |pid| (rss_bytes(pid), rss_anon_bytes(pid));
    let rss_start = mem(agent.pid());

    let port = free_port();
    let early = unique("it-pydown");
    let app = app_server(port, &early)?;
    for i in 0..DOWN {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/users/{i}"),
        ])?;
    }
    // Failures are counted and keep growing while the agent retries.
    let since = std::time::Instant::now();
    let first = agent.settle(1.0, Duration::from_secs(15), |m| {
        m.sum("apm_export_failures_total", &[("signal", "traces")])
    })?;
    assert!(first >= 1.0, "no failed export counted:\n{}", agent.log());
    let grown = agent.settle(first + 1.0, Duration::from_secs(15), |m| {
        m.sum("apm_export_failures_total", &[("signal", "traces")])
    })?;
    assert!(
        grown > first,
        "failures stay at {first}: no retry?\n{}",
        agent.log()
    );
    assert_eq!(
        traces(&agent, "apm_export_sent_total")?,
        0.0,
        "nothing can be sent while the receiver is down"
    );
    let rss_down = mem(agent.pid());
    assert!(rss_down.1 > 0, "the agent is alive");
    drop(app);
    std::thread::sleep(down_for.saturating_sub(since.elapsed()));

    receiver.restart()?;
    let late = unique("it-pyup");
    let port = free_port();
    let _app = app_server(port, &late)?;
    for i in 0..UP {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/users/{i}"),
        ])?;
    }
    receiver.wait_spans(&late, UP, RESUME);
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    let fresh = receiver.service_spans(&late);
    assert_eq!(fresh.len(), UP, "export resumed: {fresh:#?}\n{log}");
    assert!(fresh.iter().all(|s| kind(s) == "SPAN_KIND_SERVER"));

    // What was queued while down: each span delivered at most once, the rest dropped and
    // counted (the queue is in order, so its fate is settled once the fresh spans are in).
    let queued = receiver.service_spans(&early);
    let ids: BTreeSet<String> = queued.iter().map(|s| id(s, "span_id")).collect();
    assert_eq!(ids.len(), queued.len(), "no span delivered twice");
    assert!(queued.len() <= DOWN, "{} > {DOWN}", queued.len());
    let dropped = traces(&agent, "apm_export_dropped_total")?;
    assert!(
        dropped >= (DOWN - queued.len()) as f64,
        "{} of {DOWN} spans queued while down arrived, but only {dropped} counted as dropped\n{log}",
        queued.len()
    );
    if down_for >= PAST_BUDGET {
        assert!(
            dropped > 0.0,
            "down past the retry budget: a batch is dropped\n{log}"
        );
    }
    assert!(traces(&agent, "apm_export_sent_total")? >= UP as f64);
    assert!(receiver.decode_errors().is_empty());

    let rss_end = mem(agent.pid());
    let failures = traces(&agent, "apm_export_failures_total")?;
    eprintln!(
        "{protocol}: agent VmRSS/RssAnon KiB: start {}/{}, while down {}/{}, end {}/{}; \
         {} of {DOWN} early spans delivered, {dropped} spans dropped, {failures} failed attempts",
        rss_start.0 / 1024,
        rss_start.1 / 1024,
        rss_down.0 / 1024,
        rss_down.1 / 1024,
        rss_end.0 / 1024,
        rss_end.1 / 1024,
        queued.len()
    );
    for (_, anon) in [rss_start, rss_down, rss_end] {
        assert!(anon > 0 && anon < MAX_ANON, "agent RssAnon {anon} bytes");
    }
    Ok(())
}

#[test]
fn grpc_export_resumes_after_the_receiver_returns() -> Result<()> {
    if !require_root("grpc_export_resumes_after_the_receiver_returns") {
        return Ok(());
    }
    down_then_up("grpc", Duration::ZERO)
}

#[test]
fn http_export_resumes_after_the_receiver_returns() -> Result<()> {
    if !require_root("http_export_resumes_after_the_receiver_returns") {
        return Ok(());
    }
    down_then_up("http/protobuf", Duration::ZERO)
}

#[test]
fn http_export_drops_and_counts_past_the_retry_budget_then_resumes() -> Result<()> {
    if !require_root("http_export_drops_and_counts_past_the_retry_budget_then_resumes") {
        return Ok(());
    }
    down_then_up("http/protobuf", PAST_BUDGET)
}
