//! IPv6: the test application server (tests/servers/app.py) listening on `[::1]` only (no
//! IPv4 listener), curl clients connecting to `[::1]`. The accept and connect hooks read
//! AF_INET6 addresses; every exchange is counted exactly, per route, on both sides, and the
//! client side names its peer `::1`.
use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port6,
    require_root,
    servers::{app_server_at, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn ipv6_loopback_exact_counts_on_both_sides() -> Result<()> {
    if !require_root("ipv6_loopback_exact_counts_on_both_sides") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port6();
    let service = unique("it-ipv6");
    let _app = app_server_at(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), &service)?;
    // Only IPv6: nothing answers on 127.0.0.1.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server also listens on IPv4"
    );
    let base = format!("http://[::1]:{port}");
    let url = |p: &str| format!("{base}{p}");

    // One keep-alive connection, many exchanges (`-g`: the brackets are no glob).
    let mut keepalive = vec!["-g".to_owned()];
    for p in [
        "/users/1",
        "/users/2",
        "/error",
        "/users/3",
        "/chunked",
        "/nocontent",
        "/missing",
    ] {
        keepalive.extend(["-o".to_owned(), "/dev/null".to_owned(), url(p)]);
    }
    curl(&keepalive.iter().map(String::as_str).collect::<Vec<_>>())?;
    // A POST with a body, and a Connection: close, each on its own connection.
    curl(&["-g", "-o", "/dev/null", "-d", "hello=1", &url("/echo")])?;
    curl(&["-g", "-o", "/dev/null", &url("/close")])?;

    let expected: &[(&str, &str, &str, f64)] = &[
        ("GET", "/users/{id}", "200", 3.0),
        ("GET", "/error", "500", 1.0),
        ("GET", "/chunked", "200", 1.0),
        ("GET", "/nocontent", "204", 1.0),
        ("GET", "/missing", "404", 1.0),
        ("POST", "/echo", "201", 1.0),
        ("GET", "/close", "200", 1.0),
    ];
    let total: f64 = expected.iter().map(|e| e.3).sum();
    let server = agent.settle(total, WAIT, |m| m.server_total(&service))?;
    let client = agent.settle(total, WAIT, |m| m.client_total(port))?;
    agent.assert_exact_or_counted(server, total, "server exchanges over IPv6")?;
    agent.assert_exact_or_counted(client, total, "client exchanges over IPv6")?;
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
    // The client's peer is the IPv6 loopback, read from its connect().
    let port_s = port.to_string();
    let peers: Vec<_> = m
        .select(
            "http_client_request_duration_seconds_count",
            &[("server_port", &port_s)],
        )
        .map(|s| s.labels.get("server_address").cloned().unwrap_or_default())
        .collect();
    assert!(!peers.is_empty());
    assert!(
        peers.iter().all(|a| a == "::1"),
        "client peer addresses: {peers:?}"
    );
    assert_eq!(m.value("apm_events_lost_total"), 0.0);
    Ok(())
}
