//! What existed before the agent started is still seen: a keep-alive connection (its sockets
//! are seeded from /proc into the kernel table), and a server that was blocked in accept().
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    net::free_port,
    require_root,
    servers::{Proc, app_server, curl, python},
    servers_dir, unique,
};

#[test]
fn connection_opened_before_start_is_seen() -> Result<()> {
    if !require_root("connection_opened_before_start_is_seen") {
        return Ok(());
    }
    let port = free_port();
    let service = unique("it-seed-app");
    let client_service = unique("it-seed-client");
    let _app = app_server(port, &service)?;
    let child = Command::new("python3")
        .arg(servers_dir().join("keepalive_client.py"))
        .args([&port.to_string(), "4"])
        .env("OTEL_SERVICE_NAME", &client_service)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut client = Proc::new(child);
    let child = client.child().context("client")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    assert_eq!(lines.next().transpose()?.as_deref(), Some("ready"));

    // The connection exists (one request done); only now does the agent start.
    let agent = Agent::start(&[])?;
    writeln!(stdin)?;
    assert_eq!(lines.next().transpose()?.as_deref(), Some("done"));

    let wait = Duration::from_secs(20);
    let server = agent.settle(4.0, wait, |m| {
        m.server_count(&service, "GET", "/users/{id}", "200")
    })?;
    let client = agent.settle(4.0, wait, |m| {
        m.client_count(&client_service, port, "GET", "/users/{id}", "200")
    })?;
    agent.assert_exact_or_counted(server, 4.0, "server requests")?;
    agent.assert_exact_or_counted(client, 4.0, "client requests")?;
    let m = agent.metrics()?;
    assert!(m.value("apm_connections_seeded_total") >= 2.0);
    if m.sum("apm_capture_path", &[("path", "sockets-fexit")]) == 1.0 {
        // The server's thread was blocked in its receive when the fexit programs were
        // attached: the catch-up program saw that call's exit.
        let outcome = |o: &str| m.sum("apm_capture_blocked_at_attach_total", &[("outcome", o)]);
        assert!(outcome("listed") >= 1.0, "{}", agent.log());
        assert!(outcome("seen_at_exit") >= 1.0, "{}", agent.log());
    }
    Ok(())
}

#[test]
fn server_blocked_in_accept_at_start_is_seen() -> Result<()> {
    if !require_root("server_blocked_in_accept_at_start_is_seen") {
        return Ok(());
    }
    let port = free_port();
    let service = unique("it-blocking");
    let script = servers_dir().join("blocking_http.py");
    let script = script.to_string_lossy().into_owned();
    let _server = python(
        &[&script, &port.to_string()],
        &[("OTEL_SERVICE_NAME", &service)],
        &servers_dir(),
        port,
    )?;
    // wait_port's probe connection was accepted and closed: the server is back in accept().
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start(&[])?;
    let url = format!("http://127.0.0.1:{port}/first");
    curl(&["-o", "/dev/null", &url, "-o", "/dev/null", &url])?;
    let n = agent.settle(2.0, Duration::from_secs(20), |m| {
        m.server_count(&service, "GET", "/first", "200")
    })?;
    assert_eq!(n, 2.0, "{}", agent.log());
    Ok(())
}
