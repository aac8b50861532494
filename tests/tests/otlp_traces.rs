//! Spans over OTLP/HTTP to a receiver that decodes them with the official protobuf
//! definitions: one server span per request with semantic-convention attributes and status,
//! W3C trace context joined, and no secret (Authorization, cookie, query value) in any payload.
use std::time::Duration;

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    otlp::{Receiver, hex, str_attr},
    require_root,
    servers::{app_server, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(20);
const CANARY: &str = "CANARY-7f3a9c";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[test]
fn one_span_per_request_with_semconv_context_and_no_secrets() -> Result<()> {
    if !require_root("one_span_per_request_with_semconv_context_and_no_secrets") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let agent = Agent::start(&["--otlp-endpoint", &receiver.endpoint()])?;
    let port = free_port();
    let service = unique("it-otlp");
    let _app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");

    let auth = format!("Authorization: Bearer {CANARY}");
    let cookie = format!("Cookie: session={CANARY}");
    for i in 1..=4 {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &auth,
            "-H",
            &cookie,
            &format!("{base}/users/{i}?token={CANARY}"),
        ])?;
    }
    curl(&["-s", "-o", "/dev/null", &format!("{base}/error")])?;
    let tp = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-H",
        &tp,
        "-H",
        "tracestate: vendor=abc",
        &format!("{base}/users/9"),
    ])?;

    receiver.wait_spans(&service, 6, WAIT);
    // Anything extra would have arrived by now too.
    std::thread::sleep(Duration::from_secs(2));
    let spans = receiver.wait_spans(&service, 7, Duration::ZERO);
    let log = agent.log();
    assert_eq!(
        spans.len(),
        6,
        "one server span per request: {spans:#?}\n{log}"
    );
    assert_eq!(receiver.decode_errors(), 0);
    for s in &spans {
        assert_eq!(s.kind, 2, "SERVER: {s:?}");
        assert!(s.end_time_unix_nano > s.start_time_unix_nano);
        let path = str_attr(&s.attributes, "url.path").unwrap_or_default();
        assert!(!path.contains('?'), "no query in url.path: {path}");
        assert_eq!(
            str_attr(&s.attributes, "http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(
            str_attr(&s.attributes, "url.scheme").as_deref(),
            Some("http")
        );
        assert_eq!(
            str_attr(&s.attributes, "network.protocol.version").as_deref(),
            Some("1.1")
        );
        assert_eq!(
            str_attr(&s.attributes, "client.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            str_attr(&s.attributes, "server.port"),
            Some(port.to_string())
        );
        assert!(
            str_attr(&s.attributes, "user_agent.original").is_some_and(|u| u.starts_with("curl/"))
        );
    }
    let users: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "GET /users/{id}")
        .collect();
    assert_eq!(users.len(), 5, "{spans:#?}");
    for s in &users {
        assert_eq!(
            str_attr(&s.attributes, "http.route").as_deref(),
            Some("/users/{id}")
        );
        assert_eq!(
            str_attr(&s.attributes, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_ne!(
            s.status.as_ref().map_or(0, |st| st.code),
            2,
            "200 is not an error"
        );
    }
    let error = spans
        .iter()
        .find(|s| s.name == "GET /error")
        .expect("the /error span");
    assert_eq!(
        error.status.as_ref().map(|st| st.code),
        Some(2),
        "5xx: status ERROR"
    );
    assert_eq!(
        str_attr(&error.attributes, "error.type").as_deref(),
        Some("500")
    );

    // The request with a traceparent joined that trace under the caller's span.
    let joined: Vec<_> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .collect();
    assert_eq!(joined.len(), 1, "{spans:#?}");
    assert_eq!(hex(&joined[0].parent_span_id), PARENT_ID);
    assert_eq!(joined[0].trace_state, "vendor=abc");
    // curl's own client spans arrive too, under curl's resource; both ends of each
    // connection are on this host, so every other server span is the child of curl's client
    // span, in its trace, with no header involved.
    let clients: Vec<_> = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == 3 && str_attr(&s.attributes, "server.port") == Some(port.to_string()))
        .collect();
    assert_eq!(clients.len(), 6, "{clients:#?}");
    for s in spans.iter().filter(|s| hex(&s.trace_id) != TRACE_ID) {
        let parent = clients.iter().find(|c| c.span_id == s.parent_span_id);
        let parent = parent.unwrap_or_else(|| panic!("no client parent for {s:#?}\n{clients:#?}"));
        assert_eq!(parent.trace_id, s.trace_id);
        assert!(parent.parent_span_id.is_empty(), "curl's span is the root");
        assert_eq!(
            parent.name, s.name,
            "client span named after the same route"
        );
    }

    for body in receiver.bodies() {
        assert!(
            !body.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "the canary secret left the host"
        );
    }
    Ok(())
}
