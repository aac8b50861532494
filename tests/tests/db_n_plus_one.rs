//! N+1 detection: a Python HTTP service (tests/servers/n_plus_one_app.py) whose `/orders`
//! runs the same PostgreSQL statement 10 times per request (pg8000, extended protocol) and
//! whose `/single` runs it once. Only `/orders` requests are N+1s. The same run checks the
//! database spans over OTLP: each call a CLIENT span under the HTTP request that made it,
//! each execution in the PostgreSQL backend a SERVER span under that call.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    dbservers::{Postgres, assert_no_lost_events, client_ops, run, server_ops},
    net::{free_port, http_get, wait_port},
    otlp::{Receiver, str_attr},
    pyotlp, require_root,
    servers::Proc,
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
const PG: &str = "postgresql";
const N_PLUS_ONE: &str = "apm_db_n_plus_one_total";

#[test]
fn n_plus_one_counted_per_request() -> Result<()> {
    if !require_root("n_plus_one_counted_per_request") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let agent = Agent::start(&["--otlp-endpoint", &receiver.endpoint()])?;
    let server = unique("it-n1-pg");
    let pg = Postgres::start(&server)?;
    run(pg.client("psql", &unique("it-n1-setup")).args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL, total integer NOT NULL); \
         INSERT INTO orders SELECT g, 1 + g % 10, g * 3 FROM generate_series(1, 100) g;",
        "postgres",
    ]))?;

    let app = unique("it-n1-app");
    let port = free_port();
    let child = Command::new(pyotlp::python())
        .arg(servers_dir().join("n_plus_one_app.py"))
        .args([&port.to_string(), &pg.port.to_string()])
        .env("OTEL_SERVICE_NAME", &app)
        .spawn()
        .context("starting n_plus_one_app.py")?;
    let _app = Proc::new(child);
    wait_port(port, Duration::from_secs(20))?;

    for path in [
        "/orders", "/single", "/orders", "/single", "/orders", "/single",
    ] {
        let (status, body) = http_get(port, path)?;
        assert_eq!(status, 200, "{path}: {body}");
        // 100 orders over 10 customers: 10 rows each.
        let rows = if path == "/orders" { 100 } else { 10 };
        assert_eq!(body, format!("{{\"rows\": {rows}}}"), "{path}");
    }
    // The server's own count: 3 x 10 + 3 x 1 executions of the statement.
    assert_eq!(
        pg.logged("SELECT id, total FROM orders WHERE customer_id = $1"),
        33
    );

    let orders = [("service_name", app.as_str()), ("http_route", "/orders")];
    let n1 = agent.settle(3.0, WAIT, |m| m.sum(N_PLUS_ONE, &orders))?;
    // The last request (a /single) may be recorded a moment after the last /orders.
    agent.settle(3.0, WAIT, |m| m.server_count(&app, "GET", "/single", "200"))?;
    let m = agent.metrics()?;
    assert_eq!(n1, 3.0, "one N+1 per /orders request");
    assert_eq!(
        m.sum(
            N_PLUS_ONE,
            &[("service_name", &app), ("http_route", "/single")]
        ),
        0.0,
        "/single runs the statement once"
    );
    assert_eq!(m.sum(N_PLUS_ONE, &[("service_name", &app)]), 3.0);
    let texts: Vec<&str> = m
        .select(N_PLUS_ONE, &orders)
        .filter_map(|s| s.labels.get("db_query_text").map(String::as_str))
        .collect();
    assert_eq!(texts.len(), 1, "one statement: {texts:?}");
    assert!(
        texts[0].starts_with("SELECT id, total FROM orders WHERE customer_id = "),
        "{texts:?}"
    );
    let on_orders = [("db_collection_name", "orders")];
    assert_eq!(client_ops(&m, &app, PG, "SELECT", &on_orders), 33.0);
    assert_eq!(
        agent.settle(33.0, WAIT, |m| server_ops(
            m, &server, PG, "SELECT", &on_orders
        ))?,
        33.0
    );
    assert_eq!(m.server_count(&app, "GET", "/orders", "200"), 3.0);
    assert_eq!(m.server_count(&app, "GET", "/single", "200"), 3.0);
    assert_no_lost_events(&agent)?;
    check_spans(&receiver, &app, &server)
}

/// Spans: 6 HTTP SERVER spans of the app, 33 database CLIENT spans under them (10 per
/// `/orders`, 1 per `/single`), with the normalized statement and no literal; the `/orders`
/// spans carry the N+1 finding; each execution in the backend is a SERVER span under its call.
fn check_spans(receiver: &Receiver, app: &str, server: &str) -> Result<()> {
    const TEXT: &str = "SELECT id, total FROM orders WHERE customer_id = $1";
    let spans = receiver.wait_spans(app, 6 + 33, WAIT);
    let db = |s: &&opentelemetry_proto::tonic::trace::v1::Span| {
        str_attr(&s.attributes, "db.system.name").as_deref() == Some(PG)
    };
    let requests: Vec<_> = spans.iter().filter(|s| s.kind == 2).collect();
    let calls: Vec<_> = spans.iter().filter(|s| s.kind == 3).filter(db).collect();
    assert_eq!((requests.len(), calls.len()), (6, 33), "{spans:#?}");
    for c in &calls {
        assert_eq!(c.name, "SELECT orders");
        assert_eq!(
            str_attr(&c.attributes, "db.query.text").as_deref(),
            Some(TEXT)
        );
        assert_eq!(
            str_attr(&c.attributes, "db.collection.name").as_deref(),
            Some("orders")
        );
        assert_eq!(
            str_attr(&c.attributes, "db.namespace").as_deref(),
            Some("postgres")
        );
        let parent = requests
            .iter()
            .find(|r| r.span_id == c.parent_span_id)
            .with_context(|| format!("no HTTP parent for {c:?}"))?;
        assert_eq!(parent.trace_id, c.trace_id);
    }
    for r in &requests {
        let children = calls
            .iter()
            .filter(|c| c.parent_span_id == r.span_id)
            .count();
        let n_plus_one = str_attr(&r.attributes, "apm.db.n_plus_one.count");
        match str_attr(&r.attributes, "http.route").as_deref() {
            Some("/orders") => {
                assert_eq!(children, 10);
                assert_eq!(n_plus_one.as_deref(), Some("10"));
                assert_eq!(
                    str_attr(&r.attributes, "apm.db.n_plus_one.query.text").as_deref(),
                    Some(TEXT)
                );
            }
            Some("/single") => {
                assert_eq!(children, 1);
                assert_eq!(n_plus_one, None);
            }
            other => panic!("unexpected route {other:?}"),
        }
    }
    // The backend's side: same-host pairing puts each execution under the call.
    let backend: Vec<_> = receiver
        .wait_spans(server, 33, WAIT)
        .into_iter()
        .filter(|s| str_attr(&s.attributes, "db.query.text").as_deref() == Some(TEXT))
        .collect();
    assert_eq!(backend.len(), 33);
    for b in &backend {
        assert_eq!(b.kind, 2, "SERVER: {b:?}");
        assert!(
            calls
                .iter()
                .any(|c| c.span_id == b.parent_span_id && c.trace_id == b.trace_id),
            "backend span not under its call: {b:?}"
        );
    }
    Ok(())
}
