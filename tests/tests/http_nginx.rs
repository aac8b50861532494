//! The agent against Debian's nginx: wrk with keep-alive at full speed (the agent's count of
//! wrk's requests equals wrk's own count), pipelined requests sent in one write, and response
//! bodies sent with sendfile (nginx as Debian configures it) or splice.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use tests::{
    agent::Agent,
    net::free_port,
    require_root,
    servers::{Nginx, NginxTuning, app_server, python},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);

/// Runs wrk (one thread, `connections` keep-alive connections, 2 s) against `url`; returns
/// its own count of completed requests ("N requests in ..."), at least 100 of them.
fn run_wrk(connections: u32, url: &str) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), "-d2s", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let sent: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no count in wrk output:\n{text}"))?;
    if sent <= 100.0 {
        bail!("wrk made only {sent} requests:\n{text}");
    }
    Ok(sent)
}

#[test]
fn wrk_keepalive_counts_match_wrk() -> Result<()> {
    if !require_root("wrk_keepalive_counts_match_wrk") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let file = format!("{}.html", unique("page"));
    let _nginx = Nginx::start(port, &[(&file, &[b'n'; 2048][..])], 1)?;
    let connections = 4;
    let wakeups_before = agent.metrics()?.value("apm_ring_wakeups_total");
    let started = std::time::Instant::now();
    let sent = run_wrk(connections, &format!("http://127.0.0.1:{port}/{file}"))?;
    let route = format!("/{file}");
    let client = agent.settle(sent, WAIT, |m| {
        m.client_count("wrk", port, "GET", &route, "200")
    })?;
    let server = agent.settle(sent, WAIT, |m| {
        m.server_count("nginx", "GET", &route, "200")
    })?;
    let m = agent.metrics()?;
    assert_eq!(
        m.value("apm_events_lost_total"),
        0.0,
        "ring buffer overflowed"
    );
    assert_eq!(client, sent, "agent's count of wrk's requests");
    // Forced wake-ups are limited to one per millisecond (plus one per exec, and the host may
    // start a few processes meanwhile): once a batch waited, every record used to force one.
    let wakeups = m.value("apm_ring_wakeups_total") - wakeups_before;
    let limit = started.elapsed().as_millis() as f64 + 1000.0;
    eprintln!("{wakeups} forced wake-ups for {sent} requests (limit {limit})");
    assert!(
        wakeups <= limit,
        "{wakeups} forced wake-ups in {:?} for {sent} requests",
        started.elapsed()
    );
    // nginx also answered the requests in flight when wrk stopped (at most one per connection).
    assert!(
        server >= sent && server <= sent + f64::from(connections),
        "nginx served {server}, wrk completed {sent}"
    );
    Ok(())
}

#[test]
fn pipelined_requests_in_one_write() -> Result<()> {
    if !require_root("pipelined_requests_in_one_write") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let app_port = free_port();
    let app_service = unique("it-pipe-app");
    let _app = app_server(app_port, &app_service)?;
    let nginx_port = free_port();
    let _nginx = Nginx::start(nginx_port, &[("index.html", b"hi")], 1)?;
    let client_service = unique("it-pipe-client");
    for (port, n) in [(app_port, 5), (nginx_port, 7)] {
        let out = Command::new("python3")
            .arg(servers_dir().join("pipeline_client.py"))
            .args([&port.to_string(), &n.to_string(), "/users/"])
            .env("OTEL_SERVICE_NAME", &client_service)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // app.py answers 200, nginx 404 (no such files).
    let app = agent.settle(5.0, WAIT, |m| {
        m.server_count(&app_service, "GET", "/users/{id}", "200")
    })?;
    let ngx = agent.settle(7.0, WAIT, |m| {
        m.server_count("nginx", "GET", "/users/{id}", "404")
    })?;
    let c_app = agent.settle(5.0, WAIT, |m| {
        m.client_count(&client_service, app_port, "GET", "/users/{id}", "200")
    })?;
    let c_ngx = agent.settle(7.0, WAIT, |m| {
        m.client_count(&client_service, nginx_port, "GET", "/users/{id}", "404")
    })?;
    assert_eq!((app, ngx, c_app, c_ngx), (5.0, 7.0, 5.0, 7.0));
    Ok(())
}

/// Bodies that never pass through the server's memory: nginx with `sendfile on` (Debian's
/// nginx.conf, and the official image's, have it) sends the head with `writev` and the file
/// with `sendfile`, and a server that splices its bodies from a pipe (proxies, Go's
/// `io.Copy` between connections). The agent sees their byte counts only; without them the
/// server's parser takes the next response head for the body it still waits for, and the
/// server's counts come out a fraction of the client's. Keep-alive connections mix a small
/// body (one send) with a large one (many), so each response must end exactly where its
/// body does.
#[test]
fn sendfile_and_splice_bodies_counted_exactly() -> Result<()> {
    if !require_root("sendfile_and_splice_bodies_counted_exactly") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let tag = unique("sf");
    let (small, large) = (format!("{tag}-small.html"), format!("{tag}-large.bin"));
    let tuning = NginxTuning {
        server_extra: "sendfile on; tcp_nopush on;".to_owned(),
        ..NginxTuning::default()
    };
    let large_body = vec![b'L'; 1 << 20];
    let _nginx = Nginx::start_tuned(
        port,
        &[(&small, &[b's'; 1024][..]), (&large, &large_body)],
        &tuning,
    )?;
    let splice_port = free_port();
    let splice_service = unique("it-splice");
    let _splice = python(
        &["splice_http.py", &splice_port.to_string()],
        &[("OTEL_SERVICE_NAME", &splice_service)],
        &servers_dir(),
        splice_port,
    )?;

    // One curl, one connection per server: large and small bodies alternate.
    let rounds = 10;
    for (p, paths) in [
        (port, [format!("/{large}"), format!("/{small}")]),
        (splice_port, ["/large".to_owned(), "/small".to_owned()]),
    ] {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--fail"]);
        for _ in 0..rounds {
            for path in &paths {
                curl.args(["-o", "/dev/null", &format!("http://127.0.0.1:{p}{path}")]);
            }
        }
        let out = curl.output().context("running curl")?;
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // wrk at full speed on the small file: every response one writev and one sendfile.
    let connections = 4;
    let sent = run_wrk(connections, &format!("http://127.0.0.1:{port}/{small}"))?;

    let n = f64::from(rounds);
    let small_route = format!("/{small}");
    let large_route = format!("/{large}");
    let server_large = agent.settle(n, WAIT, |m| {
        m.server_count("nginx", "GET", &large_route, "200")
    })?;
    let client_large = agent.settle(n, WAIT, |m| {
        m.client_count("curl", port, "GET", &large_route, "200")
    })?;
    let client_small = agent.settle(n, WAIT, |m| {
        m.client_count("curl", port, "GET", &small_route, "200")
    })?;
    let wrk = agent.settle(sent, WAIT, |m| {
        m.client_count("wrk", port, "GET", &small_route, "200")
    })?;
    let server_small = agent.settle(n + sent, WAIT, |m| {
        m.server_count("nginx", "GET", &small_route, "200")
    })?;
    let spliced = [
        agent.settle(n, WAIT, |m| {
            m.server_count(&splice_service, "GET", "/large", "200")
        })?,
        agent.settle(n, WAIT, |m| {
            m.server_count(&splice_service, "GET", "/small", "200")
        })?,
        agent.settle(n, WAIT, |m| {
            m.client_count("curl", splice_port, "GET", "/large", "200")
        })?,
        agent.settle(n, WAIT, |m| {
            m.client_count("curl", splice_port, "GET", "/small", "200")
        })?,
    ];
    let m = agent.metrics()?;
    // Kernels whose tracing programs run preemptibly (7.x) skip or drop some runs under wrk:
    // each is counted, and then the counts may fall short by at most that many.
    let counted_losses = m.value("apm_events_lost_total")
        + m.value("apm_capture_scratch_busy_total")
        + m.sum("apm_kernel_program_runs_skipped_total", &[]);
    if counted_losses > 0.0 {
        let short = [
            n - server_large,
            n - client_large,
            n - client_small,
            sent - wrk,
        ];
        let total: f64 = short.iter().sum();
        assert!(
            short.iter().all(|s| *s >= 0.0) && total <= counted_losses,
            "counts short by {short:?}, more than the {counted_losses} losses counted"
        );
        return Ok(());
    }
    assert_eq!(
        (server_large, client_large, client_small, wrk),
        (n, n, n, sent),
        "nginx's large bodies (server, client), curl's small ones, wrk's"
    );
    // nginx also answered the requests in flight when wrk stopped (at most one per connection).
    assert!(
        server_small >= n + sent && server_small <= n + sent + f64::from(connections),
        "nginx served {server_small} small files, curl and wrk completed {}",
        n + sent
    );
    assert_eq!(
        spliced, [n; 4],
        "spliced bodies: server large, small; client large, small"
    );
    Ok(())
}
