//! TLS plaintext through the OpenSSL uprobes, against real servers and clients: nginx (Debian's,
//! `SSL_read`/`SSL_write`) under curl, and Python's ssl module (`SSL_read_ex`/`SSL_write_ex`) on
//! both sides. Counts per route must equal what was sent, on both sides, and the encrypted
//! bytes of the same connections must not be parsed as well (they would show as unclassified
//! connections or parse errors). A process that loads a libssl file the agent has not seen, after
//! the agent started, is hooked without a restart, and a one-request client on the system's
//! libssl, mapped by no process when the agent started, is seen from its first request.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tests::{
    agent::Agent,
    net::free_port,
    prom::Metrics,
    require_root,
    servers::{Nginx, Proc, SelfSigned, curl, python, temp_dir},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);

/// An agent that observes only the connections to or from `port`: the counters of garbage
/// compared below are the agent's totals, and other traffic on the host (a CI runner's own
/// connections, encrypted by a library not hooked) must not move them.
fn start_agent(port: u16) -> Result<Agent> {
    Agent::start(&["--include", &format!("port={port}")])
}

/// Waits until the agent has hooked at least `n` libssl files.
fn wait_hooked(agent: &Agent, n: f64) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while agent.metrics()?.value("apm_tls_libraries_hooked") < n {
        if Instant::now() > deadline {
            bail!("no libssl hooked after {WAIT:?}:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Counters that would move if encrypted bytes reached the parsers.
fn garbage(m: &Metrics) -> (f64, f64) {
    (
        m.value("apm_connections_unclassified_total"),
        m.sum("apm_parse_errors_total", &[("protocol", "http1")]),
    )
}

fn by_status(m: &Metrics, metric: &str, service: &str, status: &str) -> f64 {
    m.sum(
        metric,
        &[
            ("service_name", service),
            ("http_response_status_code", status),
        ],
    )
}

/// curl's requests to `port` that got `status`, every route.
fn curl_by_status(m: &Metrics, port: u16, status: &str) -> f64 {
    m.sum(
        CLIENT,
        &[
            ("service_name", "curl"),
            ("server_port", &port.to_string()),
            ("http_response_status_code", status),
        ],
    )
}

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";

#[test]
fn nginx_https_under_curl_counted_once_on_both_sides() -> Result<()> {
    if !require_root("nginx_https_under_curl_counted_once_on_both_sides") {
        return Ok(());
    }
    let port = free_port();
    let agent = start_agent(port)?;
    let dir = temp_dir("tls-nginx")?;
    let cert = SelfSigned::generate(&dir)?;
    let page = format!("{}.html", unique("tls-page"));
    let _nginx = Nginx::start_https(port, &[(&page, b"hello over tls\n")], &cert)?;
    wait_hooked(&agent, 1.0)?;
    let before = garbage(&agent.metrics()?);

    // Ten requests on one keep-alive connection, then five separate connections that get 404.
    let url = format!("https://127.0.0.1:{port}/{page}");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 10).collect();
    let mut args = vec!["-k", "-o", "/dev/null"];
    args.extend(urls.iter().flat_map(|u| ["-o", "/dev/null", *u]));
    curl(&args)?;
    let missing = format!("https://127.0.0.1:{port}/{}.html", unique("tls-missing"));
    for _ in 0..5 {
        curl(&["-k", "-o", "/dev/null", &missing])?;
    }

    let route = format!("/{page}");
    let server_ok = agent.settle(10.0, WAIT, |m| {
        m.server_count("nginx", "GET", &route, "200")
    })?;
    let client_ok = agent.settle(10.0, WAIT, |m| {
        m.client_count("curl", port, "GET", &route, "200")
    })?;
    let server_404 = agent.settle(5.0, WAIT, |m| by_status(m, SERVER, "nginx", "404"))?;
    let client_404 = agent.settle(5.0, WAIT, |m| curl_by_status(m, port, "404"))?;
    let m = agent.metrics()?;
    agent.assert_exact_or_counted(server_ok, 10.0, "nginx's 200s")?;
    agent.assert_exact_or_counted(client_ok, 10.0, "curl's 200s")?;
    agent.assert_exact_or_counted(server_404, 5.0, "nginx's 404s")?;
    agent.assert_exact_or_counted(client_404, 5.0, "curl's 404s")?;
    let after = garbage(&m);
    agent.assert_unmoved_or_counted(before.0, after.0, "unclassified connections")?;
    agent.assert_unmoved_or_counted(before.1, after.1, "HTTP/1 parse errors")?;
    assert!(m.value("apm_tls_plaintext_records_total") >= 30.0);
    // A skipped run of the program that ties a call to its socket leaves that call's
    // plaintext without a socket: dropped, and counted as such.
    let dropped = m.sum("apm_tls_plaintext_dropped_total", &[]);
    agent.assert_unmoved_or_counted(0.0, dropped, "plaintext dropped")?;
    Ok(())
}

/// Starts tests/servers/https_server.py as `service`, with `env`.
fn python_https(port: u16, service: &str, cert: &SelfSigned, env: &[(&str, &str)]) -> Result<Proc> {
    let script = servers_dir().join("https_server.py");
    let (script, c, k) = (
        script.to_string_lossy().into_owned(),
        cert.cert.to_string_lossy().into_owned(),
        cert.key.to_string_lossy().into_owned(),
    );
    let mut env = env.to_vec();
    env.push(("OTEL_SERVICE_NAME", service));
    let cwd = cert.cert.parent().unwrap_or(Path::new("/"));
    python(&[&script, &port.to_string(), &c, &k], &env, cwd, port)
}

/// Runs tests/servers/https_client.py; returns its `200=<n> 404=<m>` line.
fn python_client(port: u16, n: u32, service: &str) -> Result<String> {
    let out = Command::new("python3")
        .arg(servers_dir().join("https_client.py"))
        .args([port.to_string(), n.to_string()])
        .env("OTEL_SERVICE_NAME", service)
        .output()
        .context("running https_client.py")?;
    if !out.status.success() {
        bail!(
            "https_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Both ends in Python: the `_ex` variants, and a threaded server.
/// `server_ok_before`: the server's 200s before (requests of other clients).
fn check_python_pair(agent: &Agent, port: u16, server: &str, server_ok_before: f64) -> Result<()> {
    let before = garbage(&agent.metrics()?);
    let client = unique("it-tls-pyclient");
    let seen = python_client(port, 9, &client)?;
    assert_eq!(seen, "200=5 404=4", "the client's own count");
    for (status, want, earlier) in [("200", 5.0, server_ok_before), ("404", 4.0, 0.0)] {
        let s = agent.settle(want + earlier, WAIT, |m| {
            by_status(m, SERVER, server, status)
        })?;
        let c = agent.settle(want, WAIT, |m| by_status(m, CLIENT, &client, status))?;
        assert_eq!(s, want + earlier, "server {status}s\n{}", agent.log());
        assert_eq!(c, want, "client {status}s");
    }
    assert_eq!(
        garbage(&agent.metrics()?),
        before,
        "encrypted bytes reached the parsers"
    );
    Ok(())
}

#[test]
fn python_ssl_server_and_client_counted_on_both_sides() -> Result<()> {
    if !require_root("python_ssl_server_and_client_counted_on_both_sides") {
        return Ok(());
    }
    let port = free_port();
    let agent = start_agent(port)?;
    let dir = temp_dir("tls-python")?;
    let cert = SelfSigned::generate(&dir)?;
    let server = unique("it-tls-pyserver");
    let _srv = python_https(port, &server, &cert, &[])?;
    wait_hooked(&agent, 1.0)?;
    check_python_pair(&agent, port, &server, 0.0)
}

/// The system's libssl, as the dynamic loader finds it.
fn system_libssl() -> Result<PathBuf> {
    let out = Command::new("ldconfig").arg("-p").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("libssl.so.3") && l.contains("x86-64"))
        .find_map(|l| l.rsplit("=> ").next().map(|p| PathBuf::from(p.trim())))
        .context("no libssl.so.3 in the loader cache")
}

#[test]
fn libssl_loaded_after_start_is_hooked_without_restart() -> Result<()> {
    if !require_root("libssl_loaded_after_start_is_hooked_without_restart") {
        return Ok(());
    }
    // The certificate first: `openssl` maps the system's libssl, which must be mapped by no
    // process between the agent's start and the one-request curl below.
    let dir = temp_dir("tls-late")?;
    let cert = SelfSigned::generate(&dir)?;
    let port = free_port();
    let agent = start_agent(port)?;
    // A copy of the system's libssl is a file no process has mapped: whatever the agent
    // hooked at start-up, this one it can only find through the library-load events.
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir)?;
    let copy = lib_dir.join("libssl.so.3");
    std::fs::copy(system_libssl()?, &copy)?;
    std::thread::sleep(Duration::from_millis(500));
    let hooked_before = agent.metrics()?.value("apm_tls_libraries_hooked");

    let server = unique("it-tls-late");
    let lib_path = lib_dir.to_string_lossy().into_owned();
    let srv = python_https(port, &server, &cert, &[("LD_LIBRARY_PATH", &lib_path)])?;
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", srv.pid()))?;
    assert!(
        maps.contains(&copy.to_string_lossy().into_owned()),
        "the server does not map the copy: the test set-up is wrong"
    );
    // The copy itself, not some other libssl another process happened to load meanwhile.
    wait_hooked(&agent, hooked_before + 1.0)?;
    let copy_path = copy.to_string_lossy().into_owned();
    let deadline = Instant::now() + WAIT;
    while !agent.log().contains(&copy_path) {
        assert!(
            Instant::now() < deadline,
            "the copy was not hooked:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A one-request client on the system's libssl, which the test processes before it did not
    // map: hooked at the agent's start (the loader's search path), it is seen from its first
    // call. Hooked only once a process maps it, this curl's request was missed (5 runs of 5).
    let before = garbage(&agent.metrics()?);
    curl(&[
        "-k",
        "-o",
        "/dev/null",
        &format!("https://127.0.0.1:{port}/ok/first"),
    ])?;
    let client_ok = agent.settle(1.0, WAIT, |m| curl_by_status(m, port, "200"))?;
    assert_eq!(
        client_ok,
        1.0,
        "the short-lived curl's request\n{}",
        agent.log()
    );
    let server_ok = agent.settle(1.0, WAIT, |m| by_status(m, SERVER, &server, "200"))?;
    assert_eq!(server_ok, 1.0, "the server's side of curl's request");
    assert_eq!(
        garbage(&agent.metrics()?),
        before,
        "encrypted bytes reached the parsers"
    );
    check_python_pair(&agent, port, &server, 1.0)
}
