//! Cleartext HTTP/2 reached by `Upgrade: h2c` (RFC 7540 §3.2), the way `curl --http2` asks
//! for it on an http:// URL: the first request goes as HTTP/1.1 with the upgrade, the server
//! answers 101 and then that request's response as HTTP/2 on stream 1; the connection's
//! later requests are HTTP/2 streams. The server is tests/servers/h2c_upgrade.py (Python's
//! `h2`; nginx speaks h2c with prior knowledge only). The agent must count every request once
//! on both sides, the upgraded one under its route and final status (never as a 101), and
//! leave its garbage and incomplete counters alone.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    net::{free_port, wait_port},
    pyotlp::python,
    require_root,
    servers::Proc,
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn upgraded_connection_counted_as_http2_on_both_sides() -> Result<()> {
    if !require_root("upgraded_connection_counted_as_http2_on_both_sides") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-h2c");
    let child = Command::new(python())
        .arg(servers_dir().join("h2c_upgrade.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", &service)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting h2c_upgrade.py (cargo xtask setup installs h2)")?;
    let _server = Proc::new(child);
    wait_port(port, WAIT)?;
    let before = agent.metrics()?;

    // Two connections: each upgrades with its first request, then multiplexes the rest.
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    for _ in 0..2 {
        let out = Command::new("curl")
            .args(["-sS", "--http2", "-o", "/dev/null", &url("/hello")])
            .args(["-o", "/dev/null", &url("/missing")])
            .args(["-o", "/dev/null", &url("/hello")])
            .args(["-w", "%{http_version} "])
            .output()
            .context("running curl")?;
        let versions = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(versions.trim(), "2 2 2", "curl did not upgrade to HTTP/2");
    }

    let server_ok = agent.settle(4.0, WAIT, |m| {
        m.server_count(&service, "GET", "/hello", "200")
    })?;
    let server_404 = agent.settle(2.0, WAIT, |m| {
        m.server_count(&service, "GET", "/missing", "404")
    })?;
    let client_ok = agent.settle(4.0, WAIT, |m| {
        m.client_count("curl", port, "GET", "/hello", "200")
    })?;
    let client_404 = agent.settle(2.0, WAIT, |m| {
        m.client_count("curl", port, "GET", "/missing", "404")
    })?;
    let m = agent.metrics()?;
    assert_eq!(
        (server_ok, server_404, client_ok, client_404),
        (4.0, 2.0, 4.0, 2.0),
        "per route and status: server /hello, /missing; client /hello, /missing"
    );
    assert_eq!(
        m.server_total(&service),
        6.0,
        "no other server series (no 101)"
    );
    assert_eq!(m.client_total(port), 6.0, "no other client series (no 101)");
    for counter in ["apm_parse_errors_total", "apm_exchanges_incomplete_total"] {
        let added = m.sum(counter, &[]) - before.sum(counter, &[]);
        assert_eq!(added, 0.0, "{counter} grew:\n{}", agent.log());
    }
    Ok(())
}
