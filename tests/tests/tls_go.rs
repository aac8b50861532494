//! TLS plaintext from Go's own `crypto/tls` (no libssl): a Go HTTPS server and Go clients
//! (tests/servers/go_tls), built here with the machine's Go. The agent must find the Go
//! executable at its exec, hook `(*Conn).Read`/`Write` in it, and count every request on both
//! sides, over HTTP/1.1 and HTTP/2 (ALPN), without parsing the encrypted bytes as well; also
//! in a binary built without symbol table (`-ldflags=-s -w`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tests::{
    agent::Agent,
    net::{free_port, wait_port},
    prom::Metrics,
    require_root,
    servers::{Proc, temp_dir},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);

/// The Go program, built once per test binary (or built already: `APM_GO_TLS_BIN`, as the
/// kernel matrix does on the host, a Go build under emulation taking minutes).
fn go_tls() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("APM_GO_TLS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BUILT, &[])
}

/// The same program without symbol table nor DWARF (`-ldflags=-s -w`, as container images
/// often ship Go): only Go's own function table says where `crypto/tls` is.
fn go_tls_stripped() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BUILT, &["-ldflags=-s -w"])
}

fn built(cell: &OnceLock<Result<PathBuf, String>>, flags: &[&str]) -> Result<PathBuf> {
    cell.get_or_init(|| build(flags).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build(flags: &[&str]) -> Result<PathBuf> {
    let dir = temp_dir("go-tls-build")?;
    let out = dir.join("go_tls");
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg("main.go")
        .current_dir(servers_dir().join("go_tls"))
        .env("HOME", &dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .status()
        .context("running go build")?;
    if !status.success() {
        bail!("go build failed: {status}");
    }
    let symbols = Command::new("readelf").arg("-S").arg(&out).output()?;
    let has_symtab = String::from_utf8_lossy(&symbols.stdout).contains(".symtab");
    if has_symtab == flags.contains(&"-ldflags=-s -w") {
        bail!(
            "{}: .symtab present: {has_symtab}, with flags {flags:?}",
            out.display()
        );
    }
    Ok(out)
}

fn server(bin: &Path, port: u16, service: &str) -> Result<Proc> {
    let child = Command::new(bin)
        .args(["server", &port.to_string()])
        .env("OTEL_SERVICE_NAME", service)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the Go server")?;
    let proc = Proc::new(child);
    wait_port(port, WAIT)?;
    Ok(proc)
}

/// `n` requests of `path` on one connection, over `proto` (`h1` or `h2`), as `service`;
/// checks that each got `status` over the protocol asked for.
fn client(
    bin: &Path,
    port: u16,
    path: &str,
    n: u32,
    proto: &str,
    service: &str,
    status: u16,
) -> Result<()> {
    let out = Command::new(bin)
        .args(["client", &format!("https://127.0.0.1:{port}{path}")])
        .args([&n.to_string(), proto])
        .env("OTEL_SERVICE_NAME", service)
        .output()
        .context("running the Go client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "Go client failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let want = format!(
        "{status} {}",
        if proto == "h2" {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        }
    );
    let got = text.lines().filter(|l| *l == want).count();
    if got != n as usize {
        bail!("the Go client expected {n} × {want:?}, printed:\n{text}");
    }
    Ok(())
}

/// Waits until the agent has hooked a Go executable (at the server's exec, before its first
/// connection).
fn wait_hooked(agent: &Agent) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while agent.metrics()?.value("apm_tls_go_binaries_hooked") < 1.0 {
        if Instant::now() > deadline {
            bail!("the Go executable was not hooked:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Counters that would move if encrypted bytes reached the parsers.
fn garbage(m: &Metrics) -> [f64; 3] {
    [
        m.value("apm_connections_unclassified_total"),
        m.sum("apm_parse_errors_total", &[("protocol", "http1")]),
        m.sum("apm_parse_errors_total", &[("protocol", "http2")]),
    ]
}

#[test]
fn go_crypto_tls_server_and_clients_counted_on_both_sides_over_h1_and_h2() -> Result<()> {
    if !require_root("go_crypto_tls_server_and_clients_counted_on_both_sides_over_h1_and_h2") {
        return Ok(());
    }
    let bin = go_tls()?;
    let port = free_port();
    // Only this test's connections: the counters of garbage are the agent's totals.
    let agent = Agent::start(&["--include", &format!("port={port}")])?;
    let before = garbage(&agent.metrics()?);
    let srv = unique("go-tls-server");
    let _server = server(&bin, port, &srv)?;
    wait_hooked(&agent)?;

    let (h1, h2) = (unique("go-tls-h1"), unique("go-tls-h2"));
    client(&bin, port, "/hello", 10, "h1", &h1, 200)?;
    client(&bin, port, "/missing", 3, "h1", &h1, 404)?;
    client(&bin, port, "/hello", 10, "h2", &h2, 200)?;
    client(&bin, port, "/missing", 3, "h2", &h2, 404)?;

    let server_ok = agent.settle(20.0, WAIT, |m| m.server_count(&srv, "GET", "/hello", "200"))?;
    let server_404 = agent.settle(6.0, WAIT, |m| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("service_name", srv.as_str()),
                ("http_response_status_code", "404"),
            ],
        )
    })?;
    let mut clients = Vec::new();
    for service in [&h1, &h2] {
        let ok = agent.settle(10.0, WAIT, |m| {
            m.client_count(service, port, "GET", "/hello", "200")
        })?;
        let missing = agent.settle(3.0, WAIT, |m| {
            m.client_count(service, port, "GET", "/missing", "404")
        })?;
        clients.push((service, ok, missing));
    }
    let m = agent.metrics()?;
    agent.assert_exact_or_counted(server_ok, 20.0, "the Go server's 200s")?;
    agent.assert_exact_or_counted(server_404, 6.0, "the Go server's 404s")?;
    for (service, ok, missing) in clients {
        agent.assert_exact_or_counted(ok, 10.0, &format!("{service}'s 200s"))?;
        agent.assert_exact_or_counted(missing, 3.0, &format!("{service}'s 404s"))?;
    }
    // Each version parsed as itself: 13 requests per version, seen from both ends.
    for protocol in ["http1", "http2"] {
        let parsed = m.sum("apm_requests_total", &[("protocol", protocol)]);
        agent.assert_exact_or_counted(parsed, 26.0, &format!("{protocol} requests parsed"))?;
    }
    let after = garbage(&m);
    for (i, what) in [
        "unclassified connections",
        "HTTP/1 parse errors",
        "HTTP/2 parse errors",
    ]
    .iter()
    .enumerate()
    {
        agent.assert_unmoved_or_counted(before[i], after[i], what)?;
    }
    let dropped = m.sum("apm_tls_plaintext_dropped_total", &[]);
    agent.assert_unmoved_or_counted(0.0, dropped, "plaintext dropped")?;
    Ok(())
}

#[test]
fn stripped_go_binary_is_hooked_through_its_function_table() -> Result<()> {
    if !require_root("stripped_go_binary_is_hooked_through_its_function_table") {
        return Ok(());
    }
    let bin = go_tls_stripped()?;
    let port = free_port();
    let agent = Agent::start(&["--include", &format!("port={port}")])?;
    let srv = unique("go-tls-stripped");
    let _server = server(&bin, port, &srv)?;
    wait_hooked(&agent)?;
    let cli = unique("go-tls-stripped-client");
    client(&bin, port, "/hello", 5, "h1", &cli, 200)?;
    client(&bin, port, "/hello", 5, "h2", &cli, 200)?;
    let server_ok = agent.settle(10.0, WAIT, |m| m.server_count(&srv, "GET", "/hello", "200"))?;
    let client_ok = agent.settle(10.0, WAIT, |m| {
        m.client_count(&cli, port, "GET", "/hello", "200")
    })?;
    agent.assert_exact_or_counted(server_ok, 10.0, "the stripped Go server's 200s")?;
    agent.assert_exact_or_counted(client_ok, 10.0, "the stripped Go client's 200s")?;
    Ok(())
}
