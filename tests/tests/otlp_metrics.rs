//! RED metrics over OTLP/HTTP to a receiver that decodes them with the official protobuf
//! definitions: `http.server.request.duration` / `http.client.request.duration` in seconds,
//! exact counts per route and status, semantic-convention attributes, one resource per
//! observed process with the agent's resource attributes below the process's own;
//! exponential + cumulative by default, explicit + delta on request.
use std::time::{Duration, Instant};

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    otlp::{Point, Receiver, str_attr},
    require_root,
    servers::{app_server, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(30);
const SERVER: &str = "http.server.request.duration";
const CLIENT: &str = "http.client.request.duration";

/// The points of `service`'s `metric` whose attributes match `attrs`, waiting until `done`
/// holds for them (or the timeout passes).
fn wait_points(
    receiver: &Receiver,
    service: &str,
    metric: &str,
    attrs: &[(&str, &str)],
    done: impl Fn(&[Point]) -> bool,
) -> Vec<Point> {
    let deadline = Instant::now() + WAIT;
    loop {
        let points: Vec<Point> = receiver
            .points(service, metric)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| {
                attrs
                    .iter()
                    .all(|(k, v)| str_attr(&p.attributes, k).as_deref() == Some(*v))
            })
            .collect();
        if done(&points) || Instant::now() > deadline {
            return points;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(url: &str) -> Result<()> {
    curl(&["-s", "-o", "/dev/null", url])?;
    Ok(())
}

#[test]
fn cumulative_exponential_durations_per_route_with_process_resources() -> Result<()> {
    if !require_root("cumulative_exponential_durations_per_route_with_process_resources") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--metric-export-interval-ms",
        "1000",
        "--resource-attributes",
        "deployment.environment=ci,service.namespace=agent-default",
    ])?;
    let port = free_port();
    let service = unique("it-otlpm");
    let app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");
    for i in 1..=5 {
        get(&format!("{base}/users/{i}?token=secret-{i}"))?;
    }
    for _ in 0..2 {
        get(&format!("{base}/error"))?;
    }
    let port_s = port.to_string();
    let users = wait_points(
        &receiver,
        &service,
        SERVER,
        &[("http.route", "/users/{id}")],
        |p| p.last().is_some_and(|p| p.count >= 5),
    );
    let errors = wait_points(
        &receiver,
        &service,
        SERVER,
        &[("http.route", "/error")],
        |p| p.last().is_some_and(|p| p.count >= 2),
    );
    let log = agent.log();
    let last = users
        .last()
        .unwrap_or_else(|| panic!("no /users/{{id}} point for {service}\n{log}"));
    assert_eq!(last.count, 5, "exactly the 5 requests: {users:#?}");
    assert_eq!(last.buckets_total, last.count, "buckets hold every request");
    assert!(last.exponential, "exponential by default");
    assert_eq!(last.temporality, 2, "cumulative by default");
    assert_eq!(last.unit, "s");
    assert!(
        last.sum > 0.0 && last.sum < 5.0,
        "durations in seconds: {}",
        last.sum
    );
    for (k, v) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("url.scheme", "http"),
        ("network.protocol.version", "1.1"),
        ("server.port", port_s.as_str()),
    ] {
        assert_eq!(
            str_attr(&last.attributes, k).as_deref(),
            Some(v),
            "{k}: {last:#?}"
        );
    }
    assert_eq!(str_attr(&last.attributes, "error.type"), None);
    // Cumulative: every point of the series starts at the same time, counts never go down.
    assert!(users.windows(2).all(|w| w[0].start == w[1].start));
    assert!(users.windows(2).all(|w| w[0].count <= w[1].count));
    assert!(users.iter().all(|p| p.time > p.start));

    let err = errors.last().expect("an /error point");
    assert_eq!(err.count, 2, "{errors:#?}");
    assert_eq!(
        str_attr(&err.attributes, "error.type").as_deref(),
        Some("500")
    );
    assert_eq!(
        str_attr(&err.attributes, "http.response.status_code").as_deref(),
        Some("500")
    );

    // One resource per process: the app's pid, host, instance, executable; the agent's
    // attributes added.
    let (res, _) = receiver
        .points(&service, SERVER)
        .into_iter()
        .next()
        .expect("a resource");
    let pid = app.pid().to_string();
    assert_eq!(str_attr(&res, "process.pid").as_deref(), Some(pid.as_str()));
    assert!(str_attr(&res, "host.name").is_some_and(|h| !h.is_empty()));
    assert!(str_attr(&res, "service.instance.id").is_some_and(|i| i.contains(&pid)));
    assert!(
        str_attr(&res, "process.executable.name").is_some_and(|e| e.starts_with("python")),
        "{res:?}"
    );
    assert_eq!(
        str_attr(&res, "deployment.environment").as_deref(),
        Some("ci")
    );

    // The client side: curl's calls, one curl process (resource) per call.
    let client: Vec<Point> = receiver
        .metrics()
        .into_iter()
        .filter(|(_, m)| m.name == CLIENT)
        .flat_map(|(attrs, _)| {
            receiver
                .points(
                    &str_attr(&attrs, "service.name").unwrap_or_default(),
                    CLIENT,
                )
                .into_iter()
                .map(|(_, p)| p)
        })
        .filter(|p| str_attr(&p.attributes, "server.port").as_deref() == Some(port_s.as_str()))
        .collect();
    assert!(
        client.iter().any(|p| {
            str_attr(&p.attributes, "server.address").as_deref() == Some("127.0.0.1")
                && str_attr(&p.attributes, "http.route").is_none()
        }),
        "client points name the server, not a route: {client:#?}"
    );
    for body in receiver.bodies() {
        assert!(
            !body.windows(7).any(|w| w == b"secret-"),
            "no query value in any payload"
        );
    }
    assert_eq!(receiver.decode_errors(), 0);
    Ok(())
}

#[test]
fn delta_explicit_points_add_up_and_the_default_service_name_applies() -> Result<()> {
    if !require_root("delta_explicit_points_add_up_and_the_default_service_name_applies") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let fallback = unique("it-default");
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--metric-export-interval-ms",
        "1000",
        "--metrics-temporality",
        "delta",
        "--metrics-histogram",
        "explicit",
        "--default-service-name",
        &fallback,
    ])?;
    let port = free_port();
    let service = unique("it-otlpd");
    let _app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");
    let total = |p: &[Point]| p.iter().map(|p| p.count).sum::<u64>();
    for i in 1..=3 {
        get(&format!("{base}/users/{i}"))?;
    }
    let first = wait_points(
        &receiver,
        &service,
        SERVER,
        &[("http.route", "/users/{id}")],
        |p| total(p) >= 3,
    );
    assert_eq!(total(&first), 3, "{first:#?}\n{}", agent.log());
    for i in 4..=5 {
        get(&format!("{base}/users/{i}"))?;
    }
    wait_points(
        &receiver,
        &service,
        SERVER,
        &[("http.route", "/users/{id}")],
        |p| total(p) >= 5,
    );
    // Let any further (wrong) point arrive before counting.
    std::thread::sleep(Duration::from_secs(2));
    let points: Vec<Point> = receiver
        .points(&service, SERVER)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| str_attr(&p.attributes, "http.route").as_deref() == Some("/users/{id}"))
        .collect();
    assert_eq!(total(&points), 5, "delta points add up: {points:#?}");
    assert!(points.len() >= 2, "two intervals, two points");
    for p in &points {
        assert_eq!(p.temporality, 1, "delta");
        assert!(!p.exponential);
        assert_eq!(p.buckets_total, p.count);
        assert_eq!(p.explicit_bounds.first().copied(), Some(0.005));
        assert_eq!(p.explicit_bounds.len(), 14, "the OTel HTTP duration advice");
    }
    // Consecutive delta points do not overlap.
    assert!(points.windows(2).all(|w| w[0].time <= w[1].start));
    // curl declares no service name: it gets the agent's default.
    let named = receiver.points(&fallback, CLIENT);
    assert!(
        named.iter().any(|(_, p)| {
            str_attr(&p.attributes, "server.port").as_deref() == Some(port.to_string().as_str())
        }),
        "curl's calls under {fallback}: {:#?}",
        receiver
            .metrics()
            .iter()
            .map(|(a, m)| (str_attr(a, "service.name"), m.name.clone()))
            .collect::<Vec<_>>()
    );
    Ok(())
}
