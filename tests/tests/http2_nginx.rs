//! HTTP/2 against Debian's nginx (`--with-http_v2_module`) under curl (with nghttp2): in
//! cleartext with prior knowledge (`listen ... http2`, `curl --http2-prior-knowledge`), and
//! over TLS with ALPN h2 (`listen ... ssl http2`, `curl --http2 -k`) through the OpenSSL
//! uprobes. Several URLs in one curl command share one connection, and `--parallel` puts
//! several streams in flight on it at once. Counts per route and status must equal what was
//! sent, on both sides (nginx the server, curl the client), and the series must say
//! `network.protocol.version` "2".
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use tests::{
    agent::Agent,
    net::free_port,
    otlp::{Receiver, str_attr},
    prom::Metrics,
    require_root,
    servers::{Nginx, SelfSigned, curl, temp_dir},
};

const WAIT: Duration = Duration::from_secs(30);
const SERVER: &str = "http_server_request_duration_seconds_count";

/// nginx's documents: a small page; one whose single DATA frame (nginx sends up to 8 KiB a
/// frame) runs past the 4096 captured bytes of the write and must be skipped by length; and
/// one of many frames, whose frame headers past the capture cannot be read.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("index.html", b"hello over h2\n".to_vec()),
        ("mid.html", vec![b'm'; 6000]),
        ("big.html", vec![b'b'; 100_000]),
    ]
}

/// Runs curl with `flags` on `urls` (one connection: curl reuses it for every URL) and
/// checks that every transfer used HTTP/2.
fn curl_h2(flags: &[&str], urls: &[String]) -> Result<()> {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["-w", "%{http_version}\\n"]);
    for u in urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let out = curl(&args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let versions: Vec<&str> = text.lines().collect();
    ensure!(
        versions.len() == urls.len() && versions.iter().all(|v| *v == "2"),
        "curl did not use HTTP/2 for every transfer: {versions:?}"
    );
    Ok(())
}

fn urls(base: &str, path: &str, n: usize) -> Vec<String> {
    std::iter::repeat_n(format!("{base}{path}"), n).collect()
}

/// Counters that must not move: HTTP/2 bytes that did not parse, header blocks lost, and
/// connections no parser recognised (a server that writes first, as nginx does over TLS,
/// must still be recognised).
fn garbage(m: &Metrics) -> (f64, f64, f64) {
    (
        m.sum("apm_parse_errors_total", &[("protocol", "http2")]),
        m.value("apm_http2_header_blocks_lost_total"),
        m.value("apm_connections_unclassified_total"),
    )
}

/// Exact counts per route and status on both sides: `want` is (route, status, count).
fn assert_counts(agent: &Agent, port: u16, want: &[(&str, &str, f64)]) -> Result<()> {
    for &(route, status, n) in want {
        let server = agent.settle(n, WAIT, |m| m.server_count("nginx", "GET", route, status))?;
        let client = agent.settle(n, WAIT, |m| {
            m.client_count("curl", port, "GET", route, status)
        })?;
        agent.assert_exact_or_counted(server, n, &format!("nginx's {route} {status}"))?;
        agent.assert_exact_or_counted(client, n, &format!("curl's {route} {status}"))?;
    }
    // Nothing else was counted on either side.
    let total: f64 = want.iter().map(|w| w.2).sum();
    let m = agent.metrics()?;
    let server_all = m.sum(SERVER, &[("service_name", "nginx")]);
    ensure!(
        server_all <= total,
        "nginx: {server_all} requests counted, {total} sent"
    );
    ensure!(
        m.client_total(port) <= total,
        "curl: {} requests counted, {total} sent",
        m.client_total(port)
    );
    Ok(())
}

/// Waits until the agent has hooked at least one libssl file.
fn wait_hooked(agent: &Agent) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while agent.metrics()?.value("apm_tls_libraries_hooked") < 1.0 {
        if Instant::now() > deadline {
            bail!("no libssl hooked after {WAIT:?}:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// curl's flags for streams in flight at once on one connection.
const PARALLEL: [&str; 3] = ["--parallel", "--parallel-max", "4"];

#[test]
fn h2c_prior_knowledge_counts_per_route_on_both_sides() -> Result<()> {
    if !require_root("h2c_prior_knowledge_counts_per_route_on_both_sides") {
        return Ok(());
    }
    let port = free_port();
    let receiver = Receiver::start()?;
    // Only this port: other traffic on the host must not move the counters compared below.
    let agent = Agent::start(&[
        "--include",
        &format!("port={port}"),
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--metric-export-interval-ms",
        "1000",
    ])?;
    let files = files();
    let docs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    let _nginx = Nginx::start_http2(port, &docs, None)?;
    let before = garbage(&agent.metrics()?);
    let base = format!("http://127.0.0.1:{port}");

    // curl 7.88 fails a second transfer on a prior-knowledge connection ("Error in the
    // HTTP2 framing layer", without the agent too): one transfer per curl.
    for path in ["/index.html", "/mid.html", "/missing.html"] {
        curl_h2(&["--http2-prior-knowledge"], &[format!("{base}{path}")])?;
    }
    // h2load: one connection, one stream after the other, the URLs in turn: 2 of each.
    let out = Command::new("h2load")
        .args(["-n", "6", "-c", "1", "-m", "1"])
        .args(["/index.html", "/mid.html", "/missing.html"].map(|p| format!("{base}{p}")))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("6 done") && text.contains("4 2xx"),
        "h2load:\n{text}"
    );
    // nghttp: one connection, every request sent at once, each URL 4 times (-m): 8 streams
    // in flight together, their frames interleaved.
    let out = Command::new("nghttp")
        .args(["-n", "-s", "-m", "4"])
        .args(["/index.html", "/missing.html"].map(|p| format!("{base}{p}")))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.matches(" 200 ").count() == 4,
        "nghttp:\n{text}"
    );

    // Server side: all of it.
    for (route, status, n) in [
        ("/index.html", "200", 7.0),
        ("/mid.html", "200", 3.0),
        ("/missing.html", "404", 7.0),
    ] {
        let got = agent.settle(n, WAIT, |m| m.server_count("nginx", "GET", route, status))?;
        agent.assert_exact_or_counted(got, n, &format!("nginx's {route} {status}"))?;
    }
    // Client side: each client its own.
    for (client, route, status, n) in [
        ("curl", "/index.html", "200", 1.0),
        ("curl", "/mid.html", "200", 1.0),
        ("curl", "/missing.html", "404", 1.0),
        ("h2load", "/index.html", "200", 2.0),
        ("h2load", "/mid.html", "200", 2.0),
        ("h2load", "/missing.html", "404", 2.0),
        ("nghttp", "/index.html", "200", 4.0),
        ("nghttp", "/missing.html", "404", 4.0),
    ] {
        let got = agent.settle(n, WAIT, |m| {
            m.client_count(client, port, "GET", route, status)
        })?;
        agent.assert_exact_or_counted(got, n, &format!("{client}'s {route} {status}"))?;
    }
    let m = agent.metrics()?;
    ensure!(
        m.sum(SERVER, &[("service_name", "nginx")]) == 17.0 && m.client_total(port) == 17.0,
        "requests counted twice or under another route or status"
    );
    let m = agent.metrics()?;
    let after = garbage(&m);
    agent.assert_unmoved_or_counted(before.0, after.0, "HTTP/2 parse errors")?;
    agent.assert_unmoved_or_counted(before.1, after.1, "HTTP/2 header blocks lost")?;
    agent.assert_unmoved_or_counted(before.2, after.2, "unclassified connections")?;
    ensure!(
        m.sum("apm_requests_total", &[("protocol", "http1")]) == 0.0,
        "HTTP/2 traffic counted as HTTP/1"
    );

    // The OTLP series carry the HTTP version.
    let deadline = Instant::now() + WAIT;
    loop {
        let points = receiver.points("nginx", "http.server.request.duration");
        let index = points.iter().rev().map(|(_, p)| p).find(|p| {
            str_attr(&p.attributes, "http.route").as_deref() == Some("/index.html") && p.count == 7
        });
        if let Some(p) = index {
            assert_eq!(
                str_attr(&p.attributes, "network.protocol.version").as_deref(),
                Some("2"),
                "{p:#?}"
            );
            assert_eq!(
                str_attr(&p.attributes, "http.response.status_code").as_deref(),
                Some("200")
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no OTLP point of nginx's /index.html with 7 requests: {points:#?}\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let client = receiver.points("curl", "http.client.request.duration");
    ensure!(
        !client.is_empty()
            && client.iter().all(|(_, p)| {
                str_attr(&p.attributes, "network.protocol.version").as_deref() == Some("2")
            }),
        "curl's points: {client:#?}"
    );

    // Bodies of many frames in one write: the frame headers past the capture are lost, so
    // some streams' ends may go by unseen. Never counted twice nor under another route or
    // status, and every shortfall is counted (incomplete at the close, or a header block
    // lost).
    let lost = |m: &Metrics| {
        m.sum("apm_exchanges_incomplete_total", &[("protocol", "http2")])
            + m.value("apm_http2_header_blocks_lost_total")
    };
    let lost_before = lost(&agent.metrics()?);
    let out = Command::new("nghttp")
        .args(["-n", "-m", "4", &format!("{base}/big.html")])
        .output()?;
    ensure!(out.status.success(), "nghttp: {out:?}");
    let big = agent.settle(4.0, WAIT, |m| {
        m.server_count("nginx", "GET", "/big.html", "200")
    })?;
    let big_client = agent.settle(4.0, WAIT, |m| {
        m.client_count("nghttp", port, "GET", "/big.html", "200")
    })?;
    let m = agent.metrics()?;
    let counted = lost(&m) - lost_before;
    eprintln!("big bodies: nginx {big}, nghttp {big_client} of 4; counted losses {counted}");
    ensure!(
        big <= 4.0 && big_client <= 4.0,
        "over-counted: {big}, {big_client}"
    );
    ensure!(
        (4.0 - big) + (4.0 - big_client) <= counted,
        "a shortfall not counted: nginx {big}, curl {big_client}, counted {counted}"
    );
    ensure!(
        m.sum(SERVER, &[("service_name", "nginx")]) == 17.0 + big,
        "a request under another route or status"
    );
    Ok(())
}

#[test]
fn h2_over_tls_counts_per_route_on_both_sides() -> Result<()> {
    if !require_root("h2_over_tls_counts_per_route_on_both_sides") {
        return Ok(());
    }
    let port = free_port();
    let agent = Agent::start(&["--include", &format!("port={port}")])?;
    let dir = temp_dir("h2-tls")?;
    let cert = SelfSigned::generate(&dir)?;
    let files = files();
    let docs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    let _nginx = Nginx::start_http2(port, &docs, Some(&cert))?;
    wait_hooked(&agent)?;
    let before = garbage(&agent.metrics()?);
    let base = format!("https://127.0.0.1:{port}");
    let h2 = ["--http2", "-k"];
    let h2_parallel = [&h2[..], &PARALLEL[..]].concat();

    let mut seq = urls(&base, "/index.html", 4);
    seq.extend(urls(&base, "/mid.html", 2));
    seq.extend(urls(&base, "/missing.html", 2));
    curl_h2(&h2, &seq)?;
    curl_h2(&h2_parallel, &urls(&base, "/index.html", 6))?;

    assert_counts(
        &agent,
        port,
        &[
            ("/index.html", "200", 10.0),
            ("/mid.html", "200", 2.0),
            ("/missing.html", "404", 2.0),
        ],
    )?;
    let m = agent.metrics()?;
    let after = garbage(&m);
    agent.assert_unmoved_or_counted(before.0, after.0, "HTTP/2 parse errors")?;
    agent.assert_unmoved_or_counted(before.1, after.1, "HTTP/2 header blocks lost")?;
    agent.assert_unmoved_or_counted(before.2, after.2, "unclassified connections")?;
    ensure!(
        m.value("apm_tls_plaintext_records_total") > 0.0,
        "no TLS plaintext seen"
    );
    Ok(())
}

/// A connection opened before the agent started (an HTTP/2 client keeps one for hours): no
/// preface to see, and both HPACK tables hold entries the agent never saw. The client
/// (Python's `h2`, which indexes what it sends) made a request with an `x-trace` header
/// before the agent, and names it from its table in every later request (with new paths:
/// a path requested before the agent would be named from the table too, and not counted).
/// Those requests are read in part (method and path are known), counted exactly on both
/// sides, and counted as read in part; nothing is counted as parse errors or unclassified.
#[test]
fn connection_opened_before_the_agent_is_counted_from_its_next_request() -> Result<()> {
    if !require_root("connection_opened_before_the_agent_is_counted_from_its_next_request") {
        return Ok(());
    }
    use std::io::{BufRead as _, BufReader, Write as _};
    let port = free_port();
    let files = files();
    let docs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    let _nginx = Nginx::start_http2(port, &docs, None)?;
    let service = tests::unique("it-h2-held");
    let paths = [
        "/index.html",
        "/mid.html",
        "/index.html",
        "/missing.html",
        "/index.html",
    ];
    let mut child = Command::new(tests::pyotlp::python())
        .arg(tests::servers_dir().join("h2_held_client.py"))
        .arg(port.to_string())
        .arg("/before.html")
        .args(paths)
        .env("OTEL_SERVICE_NAME", &service)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    ensure!(line.trim() == "ready 404", "h2_held_client.py: {line:?}");

    let agent = Agent::start(&["--include", &format!("port={port}")])?;
    let before = garbage(&agent.metrics()?);
    writeln!(child.stdin.as_mut().expect("piped"), "go")?;
    line.clear();
    stdout.read_line(&mut line)?;
    ensure!(
        line.trim() == "done 200 200 200 404 200",
        "h2_held_client.py: {line:?}"
    );

    for (route, status, n) in [
        ("/index.html", "200", 3.0),
        ("/mid.html", "200", 1.0),
        ("/missing.html", "404", 1.0),
    ] {
        let server = agent.settle(n, WAIT, |m| m.server_count("nginx", "GET", route, status))?;
        let client = agent.settle(n, WAIT, |m| {
            m.client_count(&service, port, "GET", route, status)
        })?;
        agent.assert_exact_or_counted(server, n, &format!("nginx's {route} {status}"))?;
        agent.assert_exact_or_counted(client, n, &format!("the client's {route} {status}"))?;
    }
    writeln!(child.stdin.as_mut().expect("piped"), "close")?;
    let _ = child.wait();
    let m = agent.metrics()?;
    // The request before the agent is not counted, on either side. (Its path is in the
    // client's table: requested again, it would be named from there, and not counted.)
    ensure!(m.server_count("nginx", "GET", "/before.html", "404") == 0.0);
    // Each request named x-trace from the table: read in part, at both ends.
    let partial = m.value("apm_http2_header_blocks_partial_total");
    ensure!(
        partial == 10.0,
        "{partial} header blocks read in part, 10 expected"
    );
    let after = garbage(&m);
    agent.assert_unmoved_or_counted(before.0, after.0, "HTTP/2 parse errors")?;
    agent.assert_unmoved_or_counted(before.1, after.1, "HTTP/2 header blocks lost")?;
    agent.assert_unmoved_or_counted(before.2, after.2, "unclassified connections")?;
    Ok(())
}
