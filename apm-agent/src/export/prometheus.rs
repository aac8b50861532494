//! Prometheus text exposition of the RED series and the agent's own metrics.
//!
//! Metric and label names are the OpenTelemetry semantic-convention names translated the way
//! the OTel Prometheus exporter does it: dots become underscores and the unit is a suffix
//! (`http.server.request.duration` in `s` -> `http_server_request_duration_seconds`).
use std::fmt::Write as _;

use crate::{
    alerts::Alerts,
    metrics::{
        db::{DB_BUCKETS_S, DbSeriesKey},
        process_runtime::Sample,
        red::{BUCKETS_S, Red, SeriesKey},
    },
    request::{GrpcCode, Side, rpc_method},
    telemetry::{Exposition, MAP_OVERFLOWS, Registry},
};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders everything: the RED series, then every stage's own statistics (`stats`), with
/// RED's budget overflows among the other tables' in `apm_map_overflows_total`.
pub fn render(
    red: &Red,
    alerts: Option<&Alerts>,
    stats: &Registry,
    slow_queries_top: usize,
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    render_red(red, &mut out);
    render_db(red, &mut out);
    render_slow_queries(red, slow_queries_top, &mut out);
    render_runtime(red, &mut out);
    let o = red.overflows();
    let d = red.db.overflows();
    let mut own = Exposition::default();
    stats.render(&mut own);
    if let Some(a) = alerts {
        a.render(&mut own);
    }
    for (map, value) in [
        ("services", o.services),
        ("series", o.series),
        ("server_addresses", o.peers),
        ("route_windows", o.route_windows),
        ("db_series", d.series),
        ("db_names", d.names),
        ("db_statements", d.statements),
        ("n_plus_one", d.n_plus_one),
    ] {
        own.add(&MAP_OVERFLOWS, format!("map=\"{map}\""), value);
    }
    own.write(&mut out);
    out
}

/// `db.client.operation.duration` (and its server-side twin, an agent extension: the
/// conventions define only the client metric) per interned series.
fn render_db(red: &Red, out: &mut String) {
    let db = &red.db;
    let mut keys: Vec<&DbSeriesKey> = db.series().keys().collect();
    keys.sort();
    let mut labels = String::new();
    for (side, name, help) in [
        (
            Side::Client,
            "db_client_operation_duration_seconds",
            "Duration of database client operations.",
        ),
        (
            Side::Server,
            "db_server_operation_duration_seconds",
            "Duration of operations served by database servers (agent extension).",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for key in keys.iter().filter(|k| k.side == side) {
            let Some(series) = db.series().get(*key) else {
                continue;
            };
            labels.clear();
            label(&mut labels, "service_name", &red.service(key.service).name);
            label(&mut labels, "db_system_name", key.system.as_str());
            for (l, id) in [
                ("db_operation_name", key.operation),
                ("db_collection_name", key.collection),
                ("db_namespace", key.namespace),
            ] {
                if let Some(v) = db.name(id) {
                    label(&mut labels, l, v);
                }
            }
            if let Some(code) = db.name(key.status) {
                label(&mut labels, "db_response_status_code", code);
                label(&mut labels, "error_type", code);
            }
            if side == Side::Client && key.peer != 0 {
                let (host, port) = red.peer(key.peer);
                label(&mut labels, "server_address", host);
                let port = port.to_string();
                label(&mut labels, "server_port", &port);
            }
            let mut cumulative = 0;
            for (i, bound) in DB_BUCKETS_S.iter().enumerate() {
                cumulative += series.buckets[i];
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", series.sum_ns as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", series.count);
        }
    }
    let name = "apm_db_n_plus_one_total";
    let _ = writeln!(
        out,
        "# HELP {name} Server requests that ran the same statement at least the N+1 threshold times.\n# TYPE {name} counter"
    );
    for (key, count) in db.n_plus_one() {
        let service = red.service(key.service);
        labels.clear();
        label(&mut labels, "service_name", &service.name);
        label(&mut labels, "http_route", service.routes.name(key.route));
        label(
            &mut labels,
            "db_query_text",
            db.statement(key.service, key.statement),
        );
        let _ = writeln!(out, "{name}{{{labels}}} {count}");
    }
}

/// The slow-query ranking by total time, as gauges: only the top statements of each service
/// are labelled, so cardinality stays at services x top.
fn render_slow_queries(red: &Red, top: usize, out: &mut String) {
    let mut labels = String::new();
    let slow = red.db.slow_queries(top);
    for (name, help, kind) in [
        (
            "apm_db_slow_query_duration_seconds_total",
            "Total time of a service's slowest statements (top by total time).",
            0,
        ),
        (
            "apm_db_slow_query_calls_total",
            "Executions of a service's slowest statements (top by total time).",
            1,
        ),
        (
            "apm_db_slow_query_errors_total",
            "Failed executions of a service's slowest statements (top by total time).",
            2,
        ),
        (
            "apm_db_slow_query_p99_seconds",
            "p99 duration of a service's slowest statements (top by total time).",
            3,
        ),
    ] {
        let kind_name = if kind == 3 { "gauge" } else { "counter" };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind_name}");
        for s in &slow {
            for q in &s.by_total_time {
                labels.clear();
                label(&mut labels, "service_name", &red.service(s.service).name);
                label(&mut labels, "db_system_name", q.db_system_name);
                label(&mut labels, "db_operation_name", &q.db_operation_name);
                label(&mut labels, "db_query_text", &q.db_query_text);
                let v = match kind {
                    0 => q.total_ms / 1e3,
                    1 => q.calls as f64,
                    2 => q.errors as f64,
                    _ => q.p99_ms / 1e3,
                };
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    }
}

fn render_red(red: &Red, out: &mut String) {
    let mut keys: Vec<&SeriesKey> = red.series().keys().collect();
    keys.sort();
    for (side, rpc, name, help) in [
        (
            Side::Server,
            false,
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
        ),
        (
            Side::Client,
            false,
            "http_client_request_duration_seconds",
            "Duration of HTTP client requests.",
        ),
        (
            Side::Server,
            true,
            "rpc_server_call_duration_seconds",
            "Duration of gRPC calls served.",
        ),
        (
            Side::Client,
            true,
            "rpc_client_call_duration_seconds",
            "Duration of gRPC calls made.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut labels = String::new();
        for key in keys.iter().filter(|k| k.side == side && k.rpc == rpc) {
            let Some(series) = red.series().get(*key) else {
                continue;
            };
            let service = red.service(key.service);
            labels.clear();
            label(&mut labels, "service_name", &service.name);
            let route = service.routes.name(key.route);
            if rpc {
                label(&mut labels, "rpc_system_name", "grpc");
                label(&mut labels, "rpc_method", rpc_method(route));
                let code = GrpcCode(u8::try_from(key.status).unwrap_or(u8::MAX));
                label(&mut labels, "rpc_response_status_code", code.as_str());
            } else {
                label(&mut labels, "http_request_method", key.method.as_str());
                label(&mut labels, "http_route", route);
                let status = key.status.to_string();
                label(&mut labels, "http_response_status_code", &status);
            }
            if side == Side::Client {
                let (host, port) = red.peer(key.peer);
                label(&mut labels, "server_address", host);
                let port = port.to_string();
                label(&mut labels, "server_port", &port);
            }
            let mut cumulative = 0;
            for (i, bound) in BUCKETS_S.iter().enumerate() {
                cumulative += series.buckets[i];
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", series.sum_ns as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", series.count);
        }
    }

    let name = "apm_http_server_apdex_total";
    let _ = writeln!(
        out,
        "# HELP {name} Server requests per Apdex zone (satisfied <= T < tolerating <= 4T < frustrated; 5xx are frustrated).\n# TYPE {name} counter"
    );
    let mut apdex: Vec<_> = red.apdex().collect();
    apdex.sort_by_key(|(k, _)| (k.service, k.route, k.method));
    let mut labels = String::new();
    for (key, a) in apdex {
        let service = red.service(key.service);
        labels.clear();
        label(&mut labels, "service_name", &service.name);
        label(&mut labels, "http_request_method", key.method.as_str());
        label(&mut labels, "http_route", service.routes.name(key.route));
        for (zone, v) in [
            ("satisfied", a.satisfied),
            ("tolerating", a.tolerating),
            ("frustrated", a.frustrated),
        ] {
            let _ = writeln!(out, "{name}{{{labels},apdex_zone=\"{zone}\"}} {v}");
        }
    }

    let name = "apm_route_overflows_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests put in the overflow route because the service's route budget was spent.\n# TYPE {name} counter"
    );
    for service in red.services().iter().filter(|s| s.routes.overflowed() > 0) {
        labels.clear();
        label(&mut labels, "service_name", &service.name);
        let _ = writeln!(out, "{name}{{{labels}}} {}", service.routes.overflowed());
    }
}

/// Runtime metrics of the observed processes (OTel `process.*`), per process: labelled
/// `service_name` and `process_pid`, bounded by the runtime-metrics budget.
fn render_runtime(red: &Red, out: &mut String) {
    type Values = fn(&Sample) -> Vec<(Option<&'static str>, f64)>;
    let families: [(&str, &str, &str, Option<&str>, Values); 6] = [
        (
            "process_cpu_time_seconds_total",
            "counter",
            "Total CPU seconds of the process, by mode.",
            Some("cpu_mode"),
            |s| vec![(Some("user"), s.user_s), (Some("system"), s.system_s)],
        ),
        (
            "process_memory_usage_bytes",
            "gauge",
            "Resident memory of the process (RSS).",
            None,
            |s| vec![(None, s.rss_bytes as f64)],
        ),
        (
            "process_memory_virtual_bytes",
            "gauge",
            "Virtual memory of the process.",
            None,
            |s| vec![(None, s.virtual_bytes as f64)],
        ),
        (
            "process_thread_count",
            "gauge",
            "Threads of the process.",
            None,
            |s| vec![(None, s.threads as f64)],
        ),
        (
            "process_unix_file_descriptor_count",
            "gauge",
            "Open file descriptors of the process.",
            None,
            |s| vec![(None, s.fds as f64)],
        ),
        (
            "process_context_switches_total",
            "counter",
            "Context switches of the process, by type.",
            Some("process_context_switch_type"),
            |s| {
                vec![
                    (Some("voluntary"), s.voluntary_switches as f64),
                    (Some("involuntary"), s.involuntary_switches as f64),
                ]
            },
        ),
    ];
    let mut labels = String::new();
    for (name, kind, help, attribute, values) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &red.runtime {
            labels.clear();
            label(&mut labels, "service_name", &r.service);
            label(&mut labels, "process_pid", &r.pid.to_string());
            for (value_label, v) in values(&r.sample) {
                match (attribute, value_label) {
                    (Some(a), Some(l)) => {
                        let _ = writeln!(out, "{name}{{{labels},{a}=\"{l}\"}} {v}");
                    }
                    _ => {
                        let _ = writeln!(out, "{name}{{{labels}}} {v}");
                    }
                }
            }
        }
    }
}

/// Appends `name="value"` (escaped) to a label list.
fn label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::red::record_http;
    use crate::{
        metrics::red::RedConfig,
        request::{Detail, GrpcCode, HttpInfo, Method, Protocol, Request, Trust},
    };

    /// A RED aggregator with small budgets.
    fn small_red() -> Red {
        Red::new(RedConfig {
            apdex_threshold_ns: 500_000_000,
            max_services: 10,
            max_routes_per_service: 10,
            max_series: 10,
            max_peers: 10,
            max_route_windows: 10,
            db: crate::metrics::db::DbConfig {
                max_series: 100,
                max_names: 100,
                max_statements_per_service: 100,
            },
        })
    }

    #[test]
    fn exposition_has_semconv_names_and_escaped_labels() {
        let mut red = small_red();
        let svc = red.service_id("web\"1");
        let mut req = Request {
            protocol: Protocol::Http1,
            side: Side::Server,
            start_ns: 0,
            end_ns: 7_000_000,
            tid: 1,
            seq: 0,
            trust: Trust::default(),
            detail: Detail::Http(HttpInfo {
                method: Method::Get,
                path: "/a\\b".to_owned(),
                status: 404,
                version: crate::request::HttpVersion::Http11,
                host: None,
                user_agent: None,
                traceparent: None,
                tracestate: None,
                grpc: None,
            }),
        };
        record_http(&mut red, svc, None, &req);
        req.side = Side::Client;
        record_http(&mut red, svc, Some(("10.0.0.1", 8080)), &req);
        let text = render(
            &red,
            None,
            &crate::run::stats::StageStats::default().registry(),
            10,
        );
        let server = "http_server_request_duration_seconds_bucket{service_name=\"web\\\"1\",http_request_method=\"GET\",http_route=\"/a\\\\b\",http_response_status_code=\"404\",le=\"0.01\"} 1";
        assert!(text.contains(server), "{text}");
        assert!(text.contains("http_server_request_duration_seconds_bucket{service_name=\"web\\\"1\",http_request_method=\"GET\",http_route=\"/a\\\\b\",http_response_status_code=\"404\",le=\"0.005\"} 0"));
        assert!(text.contains("server_address=\"10.0.0.1\",server_port=\"8080\",le=\"+Inf\"} 1"));
        assert!(text.contains("http_server_request_duration_seconds_sum{service_name=\"web\\\"1\",http_request_method=\"GET\",http_route=\"/a\\\\b\",http_response_status_code=\"404\"} 0.007"));
        assert!(text.contains("apm_events_lost_total 0"));
        assert!(text.contains("apdex_zone=\"satisfied\"} 1"));
    }

    /// gRPC calls are RPC series (`rpc_*_call_duration_seconds`, the code by name, the
    /// method without its slash), not HTTP ones; in RED their errors split by the code's
    /// class (NOT_FOUND the caller's, INTERNAL the server's).
    #[test]
    fn grpc_calls_are_rpc_series() {
        let mut red = small_red();
        let svc = red.service_id("echo");
        for (side, code, peer) in [
            (Side::Server, 5, None),
            (Side::Server, 13, None),
            (Side::Client, 0, Some(("127.0.0.1", 50051))),
        ] {
            let req = Request {
                protocol: Protocol::Http2,
                side,
                start_ns: 0,
                end_ns: 2_000_000,
                tid: 1,
                seq: 0,
                trust: Trust::default(),
                detail: Detail::Http(HttpInfo {
                    method: Method::Post,
                    path: "/apm.test.Echo/Say".to_owned(),
                    status: 200,
                    version: crate::request::HttpVersion::Http2,
                    host: None,
                    user_agent: None,
                    traceparent: None,
                    tracestate: None,
                    grpc: Some(GrpcCode(code)),
                }),
            };
            record_http(&mut red, svc, peer, &req);
        }
        let text = render(
            &red,
            None,
            &crate::run::stats::StageStats::default().registry(),
            10,
        );
        for want in [
            "rpc_server_call_duration_seconds_count{service_name=\"echo\",rpc_system_name=\"grpc\",rpc_method=\"apm.test.Echo/Say\",rpc_response_status_code=\"NOT_FOUND\"} 1",
            "rpc_server_call_duration_seconds_count{service_name=\"echo\",rpc_system_name=\"grpc\",rpc_method=\"apm.test.Echo/Say\",rpc_response_status_code=\"INTERNAL\"} 1",
            "rpc_client_call_duration_seconds_count{service_name=\"echo\",rpc_system_name=\"grpc\",rpc_method=\"apm.test.Echo/Say\",rpc_response_status_code=\"OK\",server_address=\"127.0.0.1\",server_port=\"50051\"} 1",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(
            !text.contains("http_server_request_duration_seconds_count"),
            "{text}"
        );
        let window = red.roll_window(1.0);
        let server = window.iter().find(|r| r.side == "server").expect("server");
        assert_eq!(
            (server.requests, server.errors_4xx, server.errors_5xx),
            (2, 1, 1)
        );
    }

    #[test]
    fn runtime_metrics_per_process() {
        let mut red = small_red();
        red.runtime.push(crate::metrics::process_runtime::Reading {
            pid: 42,
            service: "shop".into(),
            resource: None,
            sample: Sample {
                user_s: 1.5,
                system_s: 0.25,
                rss_bytes: 20 << 20,
                virtual_bytes: 100 << 20,
                threads: 3,
                fds: 7,
                voluntary_switches: 10,
                involuntary_switches: 2,
                start_ticks: 0,
            },
            start_unix_ns: 0,
        });
        let text = render(
            &red,
            None,
            &crate::run::stats::StageStats::default().registry(),
            10,
        );
        for line in [
            "# TYPE process_cpu_time_seconds_total counter",
            "process_cpu_time_seconds_total{service_name=\"shop\",process_pid=\"42\",cpu_mode=\"user\"} 1.5",
            "process_cpu_time_seconds_total{service_name=\"shop\",process_pid=\"42\",cpu_mode=\"system\"} 0.25",
            "process_memory_usage_bytes{service_name=\"shop\",process_pid=\"42\"} 20971520",
            "process_memory_virtual_bytes{service_name=\"shop\",process_pid=\"42\"} 104857600",
            "process_thread_count{service_name=\"shop\",process_pid=\"42\"} 3",
            "process_unix_file_descriptor_count{service_name=\"shop\",process_pid=\"42\"} 7",
            "process_context_switches_total{service_name=\"shop\",process_pid=\"42\",process_context_switch_type=\"involuntary\"} 2",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
