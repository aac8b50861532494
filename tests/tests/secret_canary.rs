//! The secret canary: one agent, one run, a canary string in every place a secret travels —
//! an Authorization header, a cookie, a query string, a JSON body (plain HTTP and HTTPS through
//! the OpenSSL uprobes), SQL literals (one in a statement PostgreSQL rejects, whose error
//! message quotes it) and a Redis `AUTH` — and the canary must appear in no OTLP payload, no
//! `/metrics` line, no local API or UI response and no agent log line. The traffic is checked
//! to have been observed, so the test cannot pass by seeing nothing.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tests::{
    agent::Agent,
    dbservers::{Postgres, Redis, run},
    net::{free_port, http_get_bytes},
    otlp::Receiver,
    require_root,
    servers::{Nginx, SelfSigned, app_server, curl, temp_dir},
    unique,
};

const CANARY: &str = "CANARY-5d1e0b7a";
const WAIT: Duration = Duration::from_secs(30);

/// Polls until `f` holds.
fn wait_for(what: &str, agent: &Agent, f: impl Fn() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !f()? {
        if Instant::now() > deadline {
            bail!("{what} not seen after {WAIT:?}:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn canary_leaves_no_trace_anywhere() -> Result<()> {
    if !require_root("canary_leaves_no_trace_anywhere") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--metric-export-interval-ms",
        "1000",
    ])?;

    // Plain HTTP: header, cookie, query string, JSON body.
    let app_port = free_port();
    let app = unique("it-canary-app");
    let _app = app_server(app_port, &app)?;
    let auth = format!("Authorization: Bearer {CANARY}");
    let cookie = format!("Cookie: session={CANARY}");
    let body = format!("{{\"user\":\"alice\",\"password\":\"{CANARY}\"}}");
    let base = format!("http://127.0.0.1:{app_port}");
    curl(&["-o", "/dev/null", &format!("{base}/users/1?token={CANARY}")])?;
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &auth,
        "-H",
        &cookie,
        &format!("{base}/users/2?api_key={CANARY}&x=1"),
    ])?;
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("{base}/echo"),
    ])?;

    // HTTPS: the same secrets, seen in plaintext by the OpenSSL uprobes.
    let dir = temp_dir("canary-tls")?;
    let cert = SelfSigned::generate(&dir)?;
    let tls_port = free_port();
    let _nginx = Nginx::start_https(tls_port, &[("index.html", b"hi\n")], &cert)?;
    wait_for("a hooked libssl", &agent, || {
        Ok(agent.metrics()?.value("apm_tls_libraries_hooked") >= 1.0)
    })?;
    curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-H",
        &auth,
        "-H",
        &cookie,
        "-d",
        &body,
        &format!("https://127.0.0.1:{tls_port}/index.html?session={CANARY}"),
    ])?;

    // SQL literals, one in a statement the server rejects with a message quoting it.
    let pg = Postgres::start(&unique("it-canary-pg"))?;
    let pg_client = unique("it-canary-psql");
    run(pg
        .client("psql", &pg_client)
        .args(["-d", "postgres", "-c"])
        .arg(format!("SELECT '{CANARY}' AS secret, 42 AS answer")))?;
    let rejected = pg
        .client("psql", &pg_client)
        .args(["-d", "postgres", "-c"])
        .arg(format!("SELECT * FROM users WHERE password = '{CANARY}"))
        .output()?;
    assert!(!rejected.status.success(), "the broken statement failed");

    // Redis AUTH (refused: no password is configured) and a value.
    let redis = Redis::start(&unique("it-canary-redis"))?;
    let redis_client = unique("it-canary-rcli");
    let _ = redis.cli(&redis_client).args(["AUTH", CANARY]).output()?;
    run(redis.cli(&redis_client).args(["SET", "session", CANARY]))?;

    // Everything above was observed...
    let m = || agent.metrics();
    wait_for("the app's requests", &agent, || {
        Ok(m()?.server_total(&app) >= 3.0)
    })?;
    wait_for("the HTTPS request", &agent, || {
        Ok(m()?.server_total("nginx") >= 1.0)
    })?;
    wait_for("the SQL statements", &agent, || {
        Ok(m()?.sum(
            "db_client_operation_duration_seconds_count",
            &[("service_name", &pg_client)],
        ) >= 2.0)
    })?;
    wait_for("the Redis commands", &agent, || {
        Ok(m()?.sum(
            "db_client_operation_duration_seconds_count",
            &[("service_name", &redis_client)],
        ) >= 2.0)
    })?;
    wait_for("spans and metrics over OTLP", &agent, || {
        let spans = receiver.spans();
        Ok(spans.iter().any(|(s, _)| *s == app)
            && spans.iter().any(|(s, _)| *s == pg_client)
            && spans.iter().any(|(s, _)| *s == redis_client)
            && !receiver.metrics().is_empty())
    })?;
    // ...and one more export period has passed.
    std::thread::sleep(Duration::from_millis(2500));

    // ...and the canary is nowhere.
    let needle = CANARY.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let bodies = receiver.bodies();
    assert!(!bodies.is_empty());
    for (i, b) in bodies.iter().enumerate() {
        assert!(!contains(b), "OTLP payload {i} carries the canary");
    }
    for path in [
        "/metrics",
        "/",
        "/api/routes",
        "/api/slow-queries",
        "/api/profiles/services",
        "/profiles",
        "/profiles/folded",
    ] {
        let (status, body) = http_get_bytes(agent.port, path)?;
        assert!(
            !contains(&body),
            "{path} (status {status}) carries the canary"
        );
    }
    let log = agent.log();
    assert!(
        !log.contains(CANARY),
        "the agent's log carries the canary:\n{log}"
    );
    Ok(())
}
