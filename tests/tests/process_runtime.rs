//! Runtime metrics of observed processes and the include/exclude selectors, with the real
//! agent, a real Python server and curl: the server's `process.*` metrics appear on /metrics
//! with plausible values and its CPU time grows under load; a process excluded by pid and a
//! connection excluded by port produce no series, and are counted.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value as N};
use tests::{
    agent::Agent,
    net::free_port,
    otlp::{Receiver, str_attr},
    prom::Metrics,
    require_root,
    servers::{app_server, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(30);

/// `curl` arguments fetching `n` pages in one process (one keep-alive connection).
fn pages(port: u16, n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            [
                "-o".to_owned(),
                "/dev/null".to_owned(),
                format!("http://127.0.0.1:{port}/users/{i}"),
            ]
        })
        .collect()
}

fn curl_pages(port: u16, n: usize) -> Result<()> {
    let args = pages(port, n);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args)?;
    Ok(())
}

/// Scrapes until `ok` holds (or `WAIT` passes: then the last scrape is returned).
fn poll(agent: &Agent, ok: impl Fn(&Metrics) -> bool) -> Result<Metrics> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = agent.metrics()?;
        if ok(&m) || Instant::now() > deadline {
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cpu_seconds(m: &Metrics, service: &str) -> f64 {
    m.sum(
        "process_cpu_time_seconds_total",
        &[("service_name", service)],
    )
}

#[test]
fn runtime_metrics_of_an_observed_server() -> Result<()> {
    if !require_root("runtime_metrics_of_an_observed_server") {
        return Ok(());
    }
    let agent = Agent::start(&["--process-metrics-interval-secs", "1"])?;
    let port = free_port();
    let service = unique("it-runtime");
    let app = app_server(port, &service)?;
    let pid = app.pid().to_string();
    curl_pages(port, 20)?;
    agent.settle(20.0, WAIT, |m| m.server_total(&service))?;

    let labels = [
        ("service_name", service.as_str()),
        ("process_pid", pid.as_str()),
    ];
    let m = poll(&agent, |m| {
        m.select("process_thread_count", &labels).count() == 1
    })?;
    let threads = m.sum("process_thread_count", &labels);
    let rss = m.sum("process_memory_usage_bytes", &labels);
    let virt = m.sum("process_memory_virtual_bytes", &labels);
    let fds = m.sum("process_unix_file_descriptor_count", &labels);
    let switches = m.sum("process_context_switches_total", &labels);
    assert!(threads >= 1.0, "threads {threads}");
    assert!(rss > 1e6, "rss {rss}");
    assert!(virt >= rss, "virtual {virt} < rss {rss}");
    assert!(fds >= 3.0, "fds {fds}");
    assert!(switches > 0.0, "context switches {switches}");
    for mode in ["user", "system"] {
        assert_eq!(
            m.select(
                "process_cpu_time_seconds_total",
                &[("service_name", &service), ("cpu_mode", mode)]
            )
            .count(),
            1,
            "cpu_mode={mode}"
        );
    }
    for kind in ["voluntary", "involuntary"] {
        assert_eq!(
            m.select(
                "process_context_switches_total",
                &[
                    ("service_name", &service),
                    ("process_context_switch_type", kind)
                ]
            )
            .count(),
            1,
            "process_context_switch_type={kind}"
        );
    }

    // CPU time grows while the server works.
    let before = cpu_seconds(&m, &service);
    let deadline = Instant::now() + WAIT;
    let mut after = before;
    while after <= before && Instant::now() < deadline {
        curl_pages(port, 300)?;
        std::thread::sleep(Duration::from_millis(1100));
        after = cpu_seconds(&agent.metrics()?, &service);
    }
    assert!(after > before, "cpu time did not grow: {before} -> {after}");

    // The process is gone: so are its runtime series.
    drop(app);
    let m = poll(&agent, |m| {
        m.select("process_thread_count", &labels).count() == 0
    })?;
    assert_eq!(
        m.select("process_thread_count", &labels).count(),
        0,
        "series of an exited process"
    );
    Ok(())
}

#[test]
fn excluded_processes_and_ports_produce_nothing() -> Result<()> {
    if !require_root("excluded_processes_and_ports_produce_nothing") {
        return Ok(());
    }
    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let (svc_a, svc_b, svc_c) = (
        unique("it-excl-pid"),
        unique("it-kept"),
        unique("it-excl-port"),
    );
    // A is running before the agent starts: excluded by its pid.
    let app_a = app_server(port_a, &svc_a)?;
    let agent = Agent::start(&[
        "--process-metrics-interval-secs",
        "1",
        "--exclude",
        &format!("pid={}", app_a.pid()),
        "--exclude",
        &format!("port={port_c}"),
    ])?;
    let _app_b = app_server(port_b, &svc_b)?;
    let _app_c = app_server(port_c, &svc_c)?;
    for port in [port_a, port_b, port_c] {
        curl_pages(port, 5)?;
    }
    agent.settle(5.0, WAIT, |m| m.server_total(&svc_b))?;
    let m = poll(&agent, |m| {
        m.select("process_thread_count", &[("service_name", &svc_b)])
            .count()
            == 1
    })?;
    assert_eq!(m.server_total(&svc_b), 5.0, "the kept server is counted");
    assert_eq!(m.server_total(&svc_a), 0.0, "excluded by pid");
    assert_eq!(m.server_total(&svc_c), 0.0, "excluded by port (local end)");
    // The client side: curl is not excluded, but its connection to port C is (remote end).
    assert_eq!(m.client_total(port_a), 5.0, "curl itself is observed");
    assert_eq!(m.client_total(port_c), 0.0, "excluded by port (remote end)");
    for svc in [&svc_a, &svc_c] {
        assert_eq!(
            m.select("process_thread_count", &[("service_name", svc)])
                .count(),
            0,
            "no runtime metrics for {svc}"
        );
    }
    assert!(m.value("apm_processes_excluded_total") >= 1.0);
    // A's connection, C's accepted one, curl's connection to C.
    let excluded = m.value("apm_connections_excluded_total");
    if excluded < 3.0 {
        bail!("apm_connections_excluded_total = {excluded}, want >= 3");
    }
    Ok(())
}

#[test]
fn runtime_metrics_over_otlp_under_the_process_resource() -> Result<()> {
    if !require_root("runtime_metrics_over_otlp_under_the_process_resource") {
        return Ok(());
    }
    let receiver = Receiver::start()?;
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--metric-export-interval-ms",
        "1000",
    ])?;
    let port = free_port();
    let service = unique("it-runtime-otlp");
    let app = app_server(port, &service)?;
    let pid = app.pid().to_string();
    curl_pages(port, 5)?;
    // The metrics of the app's resource (service.name and process.pid), once they came.
    let ours = |name: &str| {
        receiver
            .metrics()
            .into_iter()
            .filter(|(res, m)| {
                m.name == name
                    && str_attr(res, "service.name").as_deref() == Some(service.as_str())
                    && str_attr(res, "process.pid").as_deref() == Some(pid.as_str())
            })
            .map(|(_, m)| m)
            .next_back()
    };
    let deadline = Instant::now() + WAIT;
    while ours("process.context_switches").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let int = |name: &str| -> i64 {
        match ours(name).and_then(|m| m.data) {
            Some(Data::Sum(s)) => match s.data_points.first().and_then(|p| p.value) {
                Some(N::AsInt(v)) => v,
                other => panic!("{name}: int point expected, got {other:?}"),
            },
            other => panic!("{name}: sum expected, got {other:?}\n{}", agent.log()),
        }
    };
    assert!(int("process.thread.count") >= 1);
    assert!(int("process.memory.usage") > 1_000_000);
    assert!(int("process.memory.virtual") >= int("process.memory.usage"));
    assert!(int("process.unix.file_descriptor.count") >= 3);
    let Some(Data::Sum(cpu)) = ours("process.cpu.time").and_then(|m| m.data) else {
        panic!("process.cpu.time: sum expected");
    };
    assert!(cpu.is_monotonic);
    let modes: Vec<String> = cpu
        .data_points
        .iter()
        .filter_map(|p| str_attr(&p.attributes, "cpu.mode"))
        .collect();
    assert_eq!(modes, ["user", "system"]);
    assert!(
        cpu.data_points
            .iter()
            .all(|p| p.start_time_unix_nano > 0 && p.time_unix_nano > p.start_time_unix_nano),
        "counters start when the process started"
    );
    assert_eq!(
        ours("process.cpu.time").map(|m| m.unit).as_deref(),
        Some("s")
    );
    assert_eq!(receiver.decode_errors(), 0);
    Ok(())
}

#[test]
fn a_short_lived_client_excluded_by_executable_is_decided_at_exec() -> Result<()> {
    if !require_root("a_short_lived_client_excluded_by_executable_is_decided_at_exec") {
        return Ok(());
    }
    let agent = Agent::start(&["--exclude", "exe=cur?"])?;
    let port = free_port();
    let service = unique("it-excl-exe");
    let _app = app_server(port, &service)?;
    for _ in 0..5 {
        curl_pages(port, 1)?;
    }
    agent.settle(5.0, WAIT, |m| m.server_total(&service))?;
    let m = agent.metrics()?;
    assert_eq!(m.server_total(&service), 5.0, "the server is observed");
    assert_eq!(
        m.client_total(port),
        0.0,
        "curl is excluded by its executable"
    );
    assert!(m.value("apm_processes_excluded_total") >= 5.0);
    Ok(())
}
