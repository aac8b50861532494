//! A server that serves each connection on a `dup2`'d copy of the accepted socket
//! (tests/servers/dup2_http.py): accept gives fd A, `dup2(A, 100)`, `close(A)`, and every
//! request is read and answered on fd 100; `GET /move` moves the connection once more
//! (`dup2(100, 101)`, `close(100)`), in the middle of its keep-alive exchanges. The fd the
//! data moves on was never accepted: the kernel side adopts it at its first data, after the
//! close of the accepted fd ended the tracked one. Every exchange is counted exactly once, on
//! the server side and on the client side.
use std::time::{Duration, Instant};

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    require_root,
    servers::{curl, python, temp_dir},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);

/// `curl` arguments fetching every path on one keep-alive connection.
fn one_connection(port: u16, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .flat_map(|p| {
            [
                "-o".to_owned(),
                "/dev/null".to_owned(),
                format!("http://127.0.0.1:{port}{p}"),
            ]
        })
        .collect()
}

#[test]
fn dup2_sockets_are_followed() -> Result<()> {
    if !require_root("dup2_sockets_are_followed") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-dup2");
    let dir = temp_dir("dup2")?;
    let log = dir.join("connections.log");
    let script = servers_dir().join("dup2_http.py");
    let _server = python(
        &[
            &script.to_string_lossy(),
            &port.to_string(),
            &log.to_string_lossy(),
        ],
        &[("OTEL_SERVICE_NAME", &service)],
        &servers_dir(),
        port,
    )?;

    // Connection 1: served on fd 100, then (after /move) 101, then 102.
    let first = one_connection(
        port,
        &[
            "/users/1", "/users/2", "/error", "/move", "/users/3", "/missing", "/move", "/users/4",
        ],
    );
    curl(&first.iter().map(String::as_str).collect::<Vec<_>>())?;
    // Connection 2: fd 100 again, a new connection under a number that served another.
    let second = one_connection(port, &["/users/5", "/error"]);
    curl(&second.iter().map(String::as_str).collect::<Vec<_>>())?;

    let expected: &[(&str, &str, f64)] = &[
        ("/users/{id}", "200", 5.0),
        ("/error", "500", 2.0),
        ("/move", "200", 2.0),
        ("/missing", "404", 1.0),
    ];
    // The server did what this test is about: it logs each connection once the client
    // closed it (the readiness probe's connection, without requests, is logged too).
    let served = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.ends_with("requests=0"))
            .map(|l| l.split_once(" fds=").map_or("", |(_, f)| f).to_owned())
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while served().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        served(),
        ["100,101,102 requests=8", "100 requests=2"],
        "connections served by the server"
    );

    let total: f64 = expected.iter().map(|e| e.2).sum();
    let server = agent.settle(total, WAIT, |m| m.server_total(&service))?;
    let client = agent.settle(total, WAIT, |m| m.client_total(port))?;

    agent.assert_exact_or_counted(server, total, "server exchanges on dup2'd fds")?;
    agent.assert_exact_or_counted(client, total, "client exchanges")?;
    let m = agent.metrics()?;
    for &(route, status, n) in expected {
        assert_eq!(
            m.server_count(&service, "GET", route, status),
            n,
            "server GET {route} {status}\n{}",
            agent.log()
        );
        assert_eq!(
            m.client_count("curl", port, "GET", route, status),
            n,
            "client GET {route} {status}"
        );
    }
    assert_eq!(m.value("apm_events_lost_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
