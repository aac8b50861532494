//! Spans exported over OTLP gRPC and OTLP/HTTP protobuf reach an independent receiver (the
//! official Python `grpcio` + `opentelemetry-proto` packages) that decodes every request:
//! exactly one server span per request, with its route name and semantic-convention
//! attributes, under the app's resource; and the duration metrics over the same transport,
//! an exponential histogram counting exactly those requests.
use std::{collections::BTreeSet, time::Duration};

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    pyotlp::{PyReceiver, attr, id, kind, nanos, status_code},
    require_root,
    servers::{app_server, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(20);
const N: usize = 8;
const CANARY: &str = "CANARY-py-5e1d";

fn export_over(protocol: &str) -> Result<()> {
    let receiver = PyReceiver::start()?;
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let agent = Agent::start(&[
        "--otlp-protocol",
        protocol,
        "--otlp-endpoint",
        &endpoint,
        "--metric-export-interval-ms",
        "1000",
    ])?;
    let port = free_port();
    let service = unique("it-pyotlp");
    let app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");
    let auth = format!("Authorization: Bearer {CANARY}");
    for i in 1..=N {
        curl(&[
            "-o",
            "/dev/null",
            "-H",
            &auth,
            &format!("{base}/users/{i}?token={CANARY}"),
        ])?;
    }
    curl(&["-o", "/dev/null", &format!("{base}/error")])?;

    receiver.wait_spans(&service, N + 1, WAIT);
    // Anything extra (a duplicate) would have arrived by now too.
    std::thread::sleep(Duration::from_secs(2));
    let all = receiver.spans_with_resource();
    let spans: Vec<_> = all
        .iter()
        .filter(|(r, _)| r.get("service.name") == Some(&service))
        .collect();
    let dump = || format!("{spans:#?}\nagent log:\n{}", agent.log());
    assert_eq!(spans.len(), N + 1, "one span per request: {}", dump());
    assert!(
        receiver.decode_errors().is_empty(),
        "{:?}",
        receiver.decode_errors()
    );
    let transports: BTreeSet<String> = receiver.transports("traces").into_iter().collect();
    let want = if protocol == "grpc" { "grpc" } else { "http" };
    assert_eq!(
        transports,
        BTreeSet::from([want.to_owned()]),
        "every export over {protocol}"
    );

    let mut ids = BTreeSet::new();
    for (res, s) in &spans {
        assert_eq!(
            res.get("process.pid"),
            Some(&app.pid().to_string()),
            "{res:?}"
        );
        assert_eq!(kind(s), "SPAN_KIND_SERVER", "{s:#}");
        let (trace, span) = (id(s, "trace_id"), id(s, "span_id"));
        assert_eq!(trace.len(), 32, "{s:#}");
        assert_eq!(span.len(), 16, "{s:#}");
        assert_ne!(trace, "0".repeat(32));
        assert!(ids.insert(span), "span ids are unique: {s:#}");
        assert!(
            nanos(s, "end_time_unix_nano") > nanos(s, "start_time_unix_nano"),
            "{s:#}"
        );
        assert_eq!(attr(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(s, "url.scheme").as_deref(), Some("http"));
        assert_eq!(attr(s, "server.port"), Some(port.to_string()));
        assert_eq!(attr(s, "client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("1.1"));
        let path = attr(s, "url.path").unwrap_or_default();
        assert!(!path.contains('?'), "no query in url.path: {path}");
    }
    let users: Vec<_> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s["name"] == "GET /users/{id}")
        .collect();
    assert_eq!(users.len(), N, "{}", dump());
    let mut paths = BTreeSet::new();
    for s in &users {
        assert_eq!(attr(s, "http.route").as_deref(), Some("/users/{id}"));
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(status_code(s), "STATUS_CODE_UNSET", "{s:#}");
        paths.insert(attr(s, "url.path").unwrap_or_default());
    }
    let want_paths: BTreeSet<String> = (1..=N).map(|i| format!("/users/{i}")).collect();
    assert_eq!(paths, want_paths);
    let error: Vec<_> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s["name"] == "GET /error")
        .collect();
    assert_eq!(error.len(), 1, "{}", dump());
    assert_eq!(status_code(error[0]), "STATUS_CODE_ERROR");
    assert_eq!(
        attr(error[0], "http.response.status_code").as_deref(),
        Some("500")
    );
    assert_eq!(attr(error[0], "error.type").as_deref(), Some("500"));
    assert!(
        !receiver.raw_contains(CANARY.as_bytes()),
        "the canary secret left the host"
    );

    // Metrics: cumulative exponential histograms; the latest /users/{id} point counts N.
    let users_count = || -> Option<u64> {
        receiver
            .metrics()
            .into_iter()
            .filter(|(svc, _, m)| *svc == service && m["name"] == "http.server.request.duration")
            .flat_map(|(_, _, m)| {
                m["exponential_histogram"]["data_points"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|p| attr(p, "http.route").as_deref() == Some("/users/{id}"))
            .filter_map(|p| p["count"].as_str().and_then(|c| c.parse().ok()))
            .next_back()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while users_count() != Some(N as u64) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        users_count(),
        Some(N as u64),
        "exponential histogram of /users/{{id}} over {protocol}: {:#?}",
        receiver.metrics()
    );
    let transports: BTreeSet<String> = receiver.transports("metrics").into_iter().collect();
    assert_eq!(transports, BTreeSet::from([want.to_owned()]));
    Ok(())
}

#[test]
fn spans_over_grpc_decode_in_an_independent_receiver() -> Result<()> {
    if !require_root("spans_over_grpc_decode_in_an_independent_receiver") {
        return Ok(());
    }
    export_over("grpc")
}

#[test]
fn spans_over_http_protobuf_decode_in_an_independent_receiver() -> Result<()> {
    if !require_root("spans_over_http_protobuf_decode_in_an_independent_receiver") {
        return Ok(());
    }
    export_over("http/protobuf")
}
