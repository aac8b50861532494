//! Loss is never silent. With the kernel ring buffer made tiny (4 KiB, wake-ups every 512
//! bytes), a burst of keep-alive requests to nginx overflows it: the agent must count the lost
//! records (`apm_events_lost_total`), and every request it does not report must be accounted for
//! by a counted loss, on both ends of the exchange.
//!
//! The bound: in this workload every request is one read and one write on each side (requests
//! of ~100 bytes; responses of a 2 KiB file, written by nginx with one `writev` and read by
//! the client with one `read`, both within the 4 KiB capture). Losing a request's read loses
//! that request (its response is then unmatched); losing a response's write leaves its
//! request waiting until the connection's next record shows the gap in the kernel's record
//! numbers, when it is written off as incomplete: one request per lost record either way. So
//! the requests missing, both sides together, cannot exceed the records lost. A lost record
//! that went uncounted, or a parser that lost track of a connection after one missing record,
//! shows as a shortfall above the count.
//!
//! Loss must not distort durations either. Were the stale request of a lost response left
//! waiting, every later response on the connection would pair with the request before its
//! own: counts right, durations growing with each loss. A server exchange lasts from nginx's
//! read of the request to its write of the response, inside the client's own measure of the
//! same request; so no server duration may exceed the client's longest, and their sum cannot
//! exceed the sum of the client's. Every reset after a loss is counted
//! (`apm_connection_resyncs_total`), never more often than records were lost (one thread per
//! connection: no reordering). The waits only let the agent drain.
use std::{
    io::{BufRead, BufReader, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tests::{agent::Agent, net::free_port, prom::Metrics, require_root, servers::Nginx, unique};

/// Client threads, each with one keep-alive connection, and the requests each makes.
const CONNECTIONS: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 5_000;
const BODY_BYTES: usize = 2048;

/// What one client connection measured.
#[derive(Debug, Default, Clone, Copy)]
struct Burst {
    requests: usize,
    /// Longest and summed latency, from before the request's write to after its response's
    /// last byte was read.
    max_latency: Duration,
    total_latency: Duration,
}

/// Sends `n` GETs for `path` on one keep-alive connection, reads every response whole and
/// checks its status; returns how many completed (all of them, or an error) and how long
/// they took.
fn burst(port: u16, path: &str, n: usize) -> Result<Burst> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // One descriptor for reads and writes (no `try_clone`, which dup()s it).
    let mut writer = &stream;
    let mut reader = BufReader::with_capacity(16 * 1024, &stream);
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut b = Burst::default();
    for i in 0..n {
        let t0 = Instant::now();
        writer.write_all(head.as_bytes())?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("request {i}: status line {line:?}");
        }
        let mut len = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = Some(v.trim().parse::<u64>()?);
            }
        }
        let len = len.context("no Content-Length")?;
        std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
        let latency = t0.elapsed();
        b.max_latency = b.max_latency.max(latency);
        b.total_latency += latency;
    }
    b.requests = n;
    Ok(b)
}

/// What the agent reported of the burst so far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    server: f64,
    client: f64,
    lost: f64,
    resyncs: f64,
    /// For the log: where the missing requests went.
    incomplete: f64,
    unmatched: f64,
}

fn seen(m: &Metrics, route: &str, port: u16) -> Seen {
    Seen {
        server: m.server_count("nginx", "GET", route, "200"),
        client: m.sum(
            "http_client_request_duration_seconds_count",
            &[("server_port", &port.to_string()), ("http_route", route)],
        ),
        lost: m.value("apm_events_lost_total"),
        resyncs: m.sum("apm_connection_resyncs_total", &[("protocol", "http1")]),
        incomplete: m.sum("apm_exchanges_incomplete_total", &[("protocol", "http1")]),
        unmatched: m.sum("apm_responses_unmatched_total", &[("protocol", "http1")]),
    }
}

/// The server series of the burst's route (new with this test: no earlier observations).
fn server_series(route: &str) -> [(&str, &str); 4] {
    [
        ("service_name", "nginx"),
        ("http_request_method", "GET"),
        ("http_route", route),
        ("http_response_status_code", "200"),
    ]
}

/// Server observations of the route above `bound` seconds (a bucket bound of the exposition).
fn server_above(m: &Metrics, route: &str, bound: f64) -> f64 {
    let series = server_series(route);
    let le = bound.to_string();
    let mut within = series.to_vec();
    within.push(("le", &le));
    m.sum("http_server_request_duration_seconds_count", &series)
        - m.sum("http_server_request_duration_seconds_bucket", &within)
}

/// The exposition's duration bucket bounds (seconds), as `apm-agent/src/metrics/red.rs` has
/// them.
const BUCKETS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[test]
fn every_request_not_reported_is_a_counted_loss() -> Result<()> {
    if !require_root("every_request_not_reported_is_a_counted_loss") {
        return Ok(());
    }
    let agent = Agent::start(&[
        "--ring-buffer-bytes",
        "4096",
        "--wakeup-bytes",
        "512",
        "--no-profiling",
    ])?;
    let port = free_port();
    let name = format!("{}.html", unique("loss"));
    let route = format!("/{name}");
    let _nginx = Nginx::start(port, &[(&name, &[b'l'; BODY_BYTES][..])], 1)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = seen(&agent.metrics()?, &route, port);

    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let route = route.clone();
            std::thread::spawn(move || burst(port, &route, REQUESTS_PER_CONNECTION))
        })
        .collect();
    let mut sent = 0usize;
    let mut client_max = Duration::ZERO;
    let mut client_total = Duration::ZERO;
    for t in threads {
        let b = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        sent += b.requests;
        client_max = client_max.max(b.max_latency);
        client_total += b.total_latency;
    }
    // The connections are closed: requests still waiting for a response are written off.
    let sent = sent as f64;

    // Drain: until nothing moves for 3 s (at most 90 s). Not an assertion, a wait.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = seen(&agent.metrics()?, &route, port);
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = seen(&agent.metrics()?, &route, port);
        if now != last {
            last = now;
            still = Instant::now();
        }
    }
    let server = last.server - before.server;
    let client = last.client - before.client;
    let lost = last.lost - before.lost;
    let resyncs = last.resyncs - before.resyncs;
    let shortfall = (sent - server) + (sent - client);
    let m = agent.metrics()?;
    let server_sum = m.sum(
        "http_server_request_duration_seconds_sum",
        &server_series(&route),
    );
    eprintln!(
        "sent {sent}, reported: server {server}, client {client}; shortfall {shortfall}, lost \
         events {lost}, resyncs {resyncs} (incomplete {}, unmatched {}); client latency max \
         {client_max:?} total {client_total:?}, server durations total {server_sum:.6} s",
        last.incomplete - before.incomplete,
        last.unmatched - before.unmatched,
    );

    assert!(
        lost > 0.0,
        "a burst of {sent} requests through a 4 KiB ring buffer lost nothing: the test proves \
         nothing (server {server}, client {client})"
    );
    assert!(
        server <= sent && client <= sent,
        "more requests reported than sent: server {server}, client {client}, sent {sent}"
    );
    assert!(
        server + client > 0.0,
        "nothing reported at all (lost {lost}): the agent is not draining"
    );
    assert!(
        shortfall <= lost,
        "silent loss: {shortfall} requests missing (sent {sent} on each side, reported server \
         {server}, client {client}) but only {lost} lost records counted"
    );
    assert!(
        resyncs > 0.0 && resyncs <= lost,
        "{lost} records lost on keep-alive connections but {resyncs} connection resets counted"
    );
    // Durations: every server exchange lies within the client's measure of it. The bucket
    // bound just above the client's longest request must hold every server observation.
    if let Some(&bound) = BUCKETS_S.iter().find(|&&b| b >= client_max.as_secs_f64()) {
        let above = server_above(&m, &route, bound);
        assert!(
            above == 0.0,
            "{above} server durations above {bound} s, while the client's longest request \
             took {client_max:?}: responses paired with earlier requests"
        );
    }
    // The sum, much finer: a response paired with the request before its own adds a whole
    // round trip. A small slack for the server's write returning after the client's read.
    let client_sum = client_total.as_secs_f64();
    assert!(
        server_sum <= client_sum * 1.01 + 0.001,
        "server durations sum to {server_sum:.6} s, more than the client's {client_sum:.6} s \
         for the same requests: responses paired with earlier requests"
    );
    Ok(())
}
