//! Two uninstrumented services on one host, A calling B from the thread serving the request,
//! with no trace header anywhere: the agent alone assembles one trace per request — A's
//! server span, A's client span under it (same thread), B's server span under A's client span
//! (both ends of the connection seen on this host) — and the independent receiver reads it.
//! Over IPv4 and over IPv6 only (`[::1]`): the two ends are paired by their sockets'
//! addresses, whichever family.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Result;
use serde_json::Value;
use tests::{
    agent::Agent,
    net::{free_port, free_port6},
    pyotlp::{PyReceiver, attr, id, kind},
    require_root,
    servers::{curl, python_at},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
const K: usize = 6;

#[test]
fn two_services_one_trace_without_headers() -> Result<()> {
    if !require_root("two_services_one_trace_without_headers") {
        return Ok(());
    }
    chain(Ipv4Addr::LOCALHOST.into())
}

#[test]
fn two_services_one_trace_without_headers_over_ipv6() -> Result<()> {
    if !require_root("two_services_one_trace_without_headers_over_ipv6") {
        return Ok(());
    }
    chain(Ipv6Addr::LOCALHOST.into())
}

/// The chain with both services listening on `host` only, A calling B there.
fn chain(host: IpAddr) -> Result<()> {
    let receiver = PyReceiver::start()?;
    let agent = Agent::start(&["--otlp-endpoint", &receiver.http_endpoint()])?;
    let port = || {
        if host.is_ipv6() {
            free_port6()
        } else {
            free_port()
        }
    };
    let (port_a, port_b) = (port(), port());
    let (svc_a, svc_b) = (unique("it-chain-a"), unique("it-chain-b"));
    let dir = servers_dir();
    let host_env = host.to_string();
    let _b = python_at(
        &["chain.py", &port_b.to_string()],
        &[("OTEL_SERVICE_NAME", &svc_b), ("CHAIN_HOST", &host_env)],
        &dir,
        SocketAddr::new(host, port_b),
    )?;
    let _a = python_at(
        &["chain.py", &port_a.to_string(), &port_b.to_string()],
        &[("OTEL_SERVICE_NAME", &svc_a), ("CHAIN_HOST", &host_env)],
        &dir,
        SocketAddr::new(host, port_a),
    )?;
    let front = SocketAddr::new(host, port_a);
    for i in 1..=K {
        let out = curl(&["-g", &format!("http://{front}/front/{i}")])?;
        assert_eq!(out.stdout, b"front:back", "the chain answered");
    }

    // Per request: A server + A client (to B) under service A, B server under service B.
    receiver.wait_spans(&svc_a, 2 * K, WAIT);
    receiver.wait_spans(&svc_b, K, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let a = receiver.service_spans(&svc_a);
    let b = receiver.service_spans(&svc_b);
    let dump = || {
        format!(
            "service A spans:\n{}\nservice B spans:\n{}\nagent log:\n{}",
            brief(&a),
            brief(&b),
            agent.log()
        )
    };
    let a_server: Vec<&Value> = a.iter().filter(|s| kind(s) == "SPAN_KIND_SERVER").collect();
    let a_client: Vec<&Value> = a.iter().filter(|s| kind(s) == "SPAN_KIND_CLIENT").collect();
    assert_eq!(a.len(), 2 * K, "{}", dump());
    assert_eq!(a_server.len(), K, "{}", dump());
    assert_eq!(a_client.len(), K, "{}", dump());
    assert_eq!(b.len(), K, "{}", dump());
    assert!(
        b.iter().all(|s| kind(s) == "SPAN_KIND_SERVER"),
        "{}",
        dump()
    );

    let by_span: BTreeMap<String, &Value> = a.iter().map(|s| (id(s, "span_id"), s)).collect();
    let mut traces = std::collections::BTreeSet::new();
    for bs in &b {
        assert_eq!(attr(bs, "server.port"), Some(port_b.to_string()), "{bs:#}");
        // B's server span: child of A's client span, in its trace.
        let parent = by_span
            .get(&id(bs, "parent_span_id"))
            .copied()
            .unwrap_or_else(|| panic!("B's server span has no parent in A:\n{bs:#}\n{}", dump()));
        assert_eq!(kind(parent), "SPAN_KIND_CLIENT", "{}", dump());
        assert_eq!(id(parent, "trace_id"), id(bs, "trace_id"), "{}", dump());
        assert_eq!(
            attr(parent, "server.port"),
            Some(port_b.to_string()),
            "A's client span is the call to B: {parent:#}"
        );
        // A's client span: child of A's server span (the same thread), in its trace.
        let server = by_span
            .get(&id(parent, "parent_span_id"))
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "A's client span has no parent in A:\n{parent:#}\n{}",
                    dump()
                )
            });
        assert_eq!(kind(server), "SPAN_KIND_SERVER", "{}", dump());
        assert_eq!(id(server, "trace_id"), id(bs, "trace_id"), "{}", dump());
        assert_eq!(attr(server, "server.port"), Some(port_a.to_string()));
        let name = server["name"].as_str().unwrap_or_default();
        assert!(name.starts_with("GET /front"), "{server:#}");
        // The call happened inside the request it serves.
        let t = |s: &Value, f: &str| tests::pyotlp::nanos(s, f);
        assert!(t(parent, "start_time_unix_nano") >= t(server, "start_time_unix_nano"));
        assert!(t(parent, "end_time_unix_nano") <= t(server, "end_time_unix_nano"));
        assert!(
            traces.insert(id(bs, "trace_id")),
            "one trace per request: {}",
            dump()
        );
    }
    assert_eq!(traces.len(), K);
    Ok(())
}

/// One line per span: kind, name, trace, span, parent, port.
fn brief(spans: &[Value]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {:<18} {:<20} trace={} span={} parent={} server.port={:?} client.port={:?}\n",
                kind(s),
                s["name"].as_str().unwrap_or_default(),
                id(s, "trace_id"),
                id(s, "span_id"),
                id(s, "parent_span_id"),
                attr(s, "server.port"),
                attr(s, "client.port"),
            )
        })
        .collect()
}
