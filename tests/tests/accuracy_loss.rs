//! Loss is never silent. With the kernel ring buffer made tiny (4 KiB, wake-ups every 512
//! bytes), a burst of keep-alive requests to nginx overflows it: the agent must count the lost
//! records (`apm_events_lost_total`), and every request it does not report must be accounted for
//! by a counted loss, on both ends of the exchange.
//!
//! The bound: in this workload every request is one read and one write on each side (requests
//! of ~100 bytes; responses of a 2 KiB file, written by nginx with one `writev` and read by
//! the client with one `read`, both within the 4 KiB capture). Losing a request's read loses
//! that request (its response is then unmatched); losing a response's write leaves its
//! request waiting, to be written off as incomplete when the connection closes (the next
//! response is paired with it meanwhile: one request per lost record either way). So the
//! requests missing, both sides together, cannot exceed the records lost. A lost record that
//! went uncounted, or a parser that lost track of a connection after one missing record, shows
//! as a shortfall above the count. No timing is asserted: the waits only let the agent drain.
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

/// Sends `n` GETs for `path` on one keep-alive connection, reads every response whole and
/// checks its status; returns how many completed (all of them, or an error).
fn burst(port: u16, path: &str, n: usize) -> Result<usize> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // One descriptor for reads and writes (no `try_clone`, which dup()s it).
    let mut writer = &stream;
    let mut reader = BufReader::with_capacity(16 * 1024, &stream);
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    for i in 0..n {
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
    }
    Ok(n)
}

/// What the agent reported of the burst so far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    server: f64,
    client: f64,
    lost: f64,
}

fn seen(m: &Metrics, route: &str, port: u16) -> Seen {
    Seen {
        server: m.server_count("nginx", "GET", route, "200"),
        client: m.sum(
            "http_client_request_duration_seconds_count",
            &[("server_port", &port.to_string()), ("http_route", route)],
        ),
        lost: m.value("apm_events_lost_total"),
    }
}

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
    for t in threads {
        sent += t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
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
    let shortfall = (sent - server) + (sent - client);
    eprintln!(
        "sent {sent}, reported: server {server}, client {client}; shortfall {shortfall}, lost events {lost}"
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
    Ok(())
}
