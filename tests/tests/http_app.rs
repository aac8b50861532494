//! The agent against a real Python HTTP/1.1 server (tests/servers/app.py) and real curl
//! clients: exact counts per service, route, method and status on both sides, for keep-alive,
//! large, chunked, bodiless, 100-continue, HTTP/1.0 and Connection: close exchanges; and
//! durations checked against the server's sleep and the client's own measurement.
use std::time::Duration;

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    require_root,
    servers::{app_server, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(20);

/// `curl` arguments fetching every path in one process (so on one keep-alive connection).
fn many(base: &str, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .flat_map(|p| {
            [
                "-o".to_owned(),
                "/dev/null".to_owned(),
                format!("{base}{p}"),
            ]
        })
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn exact_counts_per_route_on_both_sides() -> Result<()> {
    if !require_root("exact_counts_per_route_on_both_sides") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-app");
    let _app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");

    // Keep-alive: one connection, many exchanges, including a 1.5 MB response followed by
    // another request on the same connection, a chunked one, a 204, 404s and 500s.
    let a = many(
        &base,
        &[
            "/users/1",
            "/users/2",
            "/big",
            "/users/3",
            "/chunked",
            "/chunked",
            "/error",
            "/error",
            "/nocontent",
            "/missing",
            "/missing?token=secret",
            "/users/4",
        ],
    );
    curl(&strs(&a))?;
    // HEAD, HTTP/1.0, Connection: close, POST with a body, POST with Expect: 100-continue.
    curl(&["-I", "-o", "/dev/null", &format!("{base}/users/9")])?;
    curl(&["--http1.0", "-o", "/dev/null", &format!("{base}/users/10")])?;
    curl(&["-o", "/dev/null", &format!("{base}/close")])?;
    curl(&["-o", "/dev/null", "-d", "hello=1", &format!("{base}/echo")])?;
    let body_file = std::env::temp_dir().join(unique("body"));
    std::fs::write(&body_file, "y".repeat(200_000))?;
    let big_body = format!("@{}", body_file.display());
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &big_body,
        &format!("{base}/echo"),
    ])?;
    let _ = std::fs::remove_file(&body_file);
    // A request to a missing page, on its own connection.
    curl(&["-o", "/dev/null", &format!("{base}/missing")])?;

    let expected: &[(&str, &str, &str, f64)] = &[
        ("GET", "/users/{id}", "200", 5.0),
        ("HEAD", "/users/{id}", "200", 1.0),
        ("GET", "/big", "200", 1.0),
        ("GET", "/chunked", "200", 2.0),
        ("GET", "/error", "500", 2.0),
        ("GET", "/nocontent", "204", 1.0),
        ("GET", "/missing", "404", 3.0),
        ("GET", "/close", "200", 1.0),
        ("POST", "/echo", "201", 2.0),
    ];
    let total: f64 = expected.iter().map(|e| e.3).sum();
    agent.settle(total, WAIT, |m| m.server_total(&service))?;
    agent.settle(total, WAIT, |m| m.client_total(port))?;
    let m = agent.metrics()?;
    for &(method, route, status, n) in expected {
        assert_eq!(
            m.server_count(&service, method, route, status),
            n,
            "server {method} {route} {status}"
        );
        assert_eq!(
            m.client_count("curl", port, method, route, status),
            n,
            "client {method} {route} {status}"
        );
    }
    assert_eq!(m.server_total(&service), total, "no other server series");
    assert_eq!(m.client_total(port), total, "no other client series");
    // Query strings never reach a label.
    assert!(
        !m.samples
            .iter()
            .any(|s| s.labels.values().any(|v| v.contains("secret")))
    );
    // The HTTP/1.0 and Connection: close exchanges ended without leaving incomplete ones.
    assert_eq!(
        m.sum("apm_exchanges_incomplete_total", &[]),
        0.0,
        "{}",
        agent.log()
    );
    assert_eq!(m.value("apm_events_lost_total"), 0.0);
    Ok(())
}

#[test]
fn durations_are_positive_and_within_what_the_client_measured() -> Result<()> {
    if !require_root("durations_are_positive_and_within_what_the_client_measured") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-slow");
    let _app = app_server(port, &service)?;
    let mut measured = Vec::new();
    for (route, ms) in [("/slow/a", 80u64), ("/slow/b", 150)] {
        let out = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            &format!("http://127.0.0.1:{port}{route}?ms={ms}"),
        ])?;
        let total: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        measured.push((route, ms, total));
    }
    agent.settle(2.0, WAIT, |m| m.server_total(&service))?;
    agent.settle(2.0, WAIT, |m| m.client_total(port))?;
    let m = agent.metrics()?;
    let port_s = port.to_string();
    for (route, ms, curl_total) in measured {
        let server = m.sum(
            "http_server_request_duration_seconds_sum",
            &[("service_name", &service), ("http_route", route)],
        );
        let client = m.sum(
            "http_client_request_duration_seconds_sum",
            &[("server_port", &port_s), ("http_route", route)],
        );
        let slept = ms as f64 / 1000.0;
        assert!(
            server >= slept,
            "{route}: server {server} s < slept {slept} s"
        );
        assert!(
            server <= client,
            "{route}: server {server} s > client {client} s"
        );
        assert!(
            client <= curl_total,
            "{route}: agent's client {client} s > curl's {curl_total} s"
        );
        // The histogram puts it in the right bucket.
        let le = if ms <= 100 { "0.1" } else { "0.25" };
        let below = if ms <= 100 { "0.075" } else { "0.1" };
        let at = |le: &str| {
            m.sum(
                "http_server_request_duration_seconds_bucket",
                &[
                    ("service_name", &service),
                    ("http_route", route),
                    ("le", le),
                ],
            )
        };
        assert_eq!((at(below), at(le)), (0.0, 1.0), "{route}: bucket");
    }
    Ok(())
}

#[test]
fn stock_python_http_server_named_from_its_command_line() -> Result<()> {
    if !require_root("stock_python_http_server_named_from_its_command_line") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let dir = tests::servers::temp_dir("www")?;
    std::fs::write(dir.join("a.txt"), "a")?;
    std::fs::write(dir.join("b.txt"), "bb")?;
    // No OTEL_SERVICE_NAME: the service is named from `python3 -m http.server`. HTTP/1.0, one
    // connection per request, Content-Length bodies.
    let _server = tests::servers::python(
        &[
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ],
        &[],
        &dir,
        port,
    )?;
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/a.txt", "/a.txt", "/b.txt", "/nope.txt"] {
        curl(&["-o", "/dev/null", &format!("{base}{path}")])?;
    }
    let service = "http.server";
    agent.settle(4.0, WAIT, |m| m.server_total(service))?;
    let m = agent.metrics()?;
    assert_eq!(
        m.server_count(service, "GET", "/a.txt", "200"),
        2.0,
        "{}",
        agent.log()
    );
    assert_eq!(m.server_count(service, "GET", "/b.txt", "200"), 1.0);
    assert_eq!(m.server_count(service, "GET", "/nope.txt", "404"), 1.0);
    assert_eq!(m.client_count("curl", port, "GET", "/a.txt", "200"), 2.0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
