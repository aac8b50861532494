//! Collected duration points -> an OTLP `ExportMetricsServiceRequest`: one `ResourceMetrics`
//! per observed process, `http.server.request.duration`, `http.client.request.duration` and
//! `db.client.operation.duration` (unit `s`) with the HTTP and database semantic-convention
//! attributes, and the process's runtime metrics ([`super::encode_runtime`]) under the same
//! resource.
use std::sync::Arc;

use rustc_hash::FxHashMap;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Histogram,
        HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
        exponential_histogram_data_point::Buckets as ExpBuckets, metric::Data,
    },
};

use super::encode_traces::{key_value, resource, scope};
use crate::{
    metrics::{
        db::DbSeriesKey,
        otel::{Buckets, Collected, SeriesId, Temporality},
        red::{Red, SeriesKey},
    },
    request::{GrpcCode, Method, Side, rpc_method},
    routes,
    traces::{
        build::{error_type, grpc_error_type},
        span::{Resource, Value},
    },
};

/// The metrics, in the order of a [`Group`]'s slots.
const METRICS: [(&str, &str); SLOTS] = [
    (
        "http.server.request.duration",
        "Duration of HTTP server requests.",
    ),
    (
        "http.client.request.duration",
        "Duration of HTTP client requests.",
    ),
    (
        "db.client.operation.duration",
        "Duration of database client operations.",
    ),
    // Not in the semantic conventions (they define the client side only): the same
    // measurement taken at the database server process.
    (
        "db.server.operation.duration",
        "Duration of operations served by database servers.",
    ),
    ("rpc.server.call.duration", "Duration of gRPC calls served."),
    ("rpc.client.call.duration", "Duration of gRPC calls made."),
];
const SLOTS: usize = 6;

/// The slot of a point's metric.
fn slot(series: &SeriesId) -> usize {
    match series {
        SeriesId::Http(k) if k.rpc => 4 + usize::from(k.side == Side::Client),
        SeriesId::Http(k) => usize::from(k.side == Side::Client),
        SeriesId::Db(k) => 2 + usize::from(k.side == Side::Server),
    }
}

/// Encodes `points` collected at `now_unix_ns`; names (routes, server addresses) come from
/// the RED aggregator whose series ids the points carry. None when there is nothing to send.
pub fn request(
    points: Vec<Collected>,
    red: &Red,
    temporality: Temporality,
    now_unix_ns: u64,
) -> Option<ExportMetricsServiceRequest> {
    let runtime = red.runtime.iter().filter(|r| r.resource.is_some());
    if points.is_empty() && runtime.clone().next().is_none() {
        return None;
    }
    let temporality = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative,
        Temporality::Delta => AggregationTemporality::Delta,
    } as i32;
    // Per resource, per side (server, client): the points of either aggregation.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: FxHashMap<*const Resource, usize> = FxHashMap::default();
    for c in points {
        let attributes = attributes(&c, red);
        let p = &c.point;
        let (min, max, sum) = (Some(p.min_s), Some(p.max_s), Some(p.sum_s));
        let i = *index.entry(Arc::as_ptr(&c.resource)).or_insert_with(|| {
            groups.push(Group {
                resource: c.resource.clone(),
                exponential: Default::default(),
                explicit: Default::default(),
                runtime: Vec::new(),
            });
            groups.len() - 1
        });
        let group = &mut groups[i];
        let side = slot(&c.key.series);
        match &p.buckets {
            Buckets::Exponential(h) => {
                group.exponential[side].push(ExponentialHistogramDataPoint {
                    attributes,
                    start_time_unix_nano: p.start_unix_ns,
                    time_unix_nano: now_unix_ns,
                    count: p.count,
                    sum,
                    scale: h.scale(),
                    zero_count: h.zero_count(),
                    positive: Some(ExpBuckets {
                        offset: h.offset(),
                        bucket_counts: h.counts().to_vec(),
                    }),
                    negative: None,
                    flags: 0,
                    exemplars: Vec::new(),
                    min,
                    max,
                    zero_threshold: 0.0,
                })
            }
            Buckets::Explicit(counts) => group.explicit[side].push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: p.start_unix_ns,
                time_unix_nano: now_unix_ns,
                count: p.count,
                sum,
                bucket_counts: counts.clone(),
                explicit_bounds: c.key.series.bounds().to_vec(),
                exemplars: Vec::new(),
                flags: 0,
                min,
                max,
            }),
        }
    }
    for r in runtime {
        let Some(resource) = &r.resource else {
            continue;
        };
        let i = *index.entry(Arc::as_ptr(resource)).or_insert_with(|| {
            groups.push(Group {
                resource: resource.clone(),
                exponential: Default::default(),
                explicit: Default::default(),
                runtime: Vec::new(),
            });
            groups.len() - 1
        });
        groups[i].runtime = super::encode_runtime::metrics(r, now_unix_ns);
    }
    Some(ExportMetricsServiceRequest {
        resource_metrics: groups
            .into_iter()
            .map(|g| {
                let mut metrics = Vec::new();
                let sides = g.exponential.into_iter().zip(g.explicit);
                for ((name, description), (exp, hist)) in METRICS.into_iter().zip(sides) {
                    let metric = |data| Metric {
                        name: name.to_owned(),
                        description: description.to_owned(),
                        unit: "s".to_owned(),
                        metadata: Vec::new(),
                        data: Some(data),
                    };
                    if !exp.is_empty() {
                        metrics.push(metric(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: exp,
                            aggregation_temporality: temporality,
                        })));
                    }
                    if !hist.is_empty() {
                        metrics.push(metric(Data::Histogram(Histogram {
                            data_points: hist,
                            aggregation_temporality: temporality,
                        })));
                    }
                }
                metrics.extend(g.runtime);
                ResourceMetrics {
                    resource: Some(resource(&g.resource)),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope()),
                        metrics,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }
            })
            .collect(),
    })
}

/// The points of one process, per metric ([`METRICS`]).
struct Group {
    resource: Arc<Resource>,
    exponential: [Vec<ExponentialHistogramDataPoint>; SLOTS],
    explicit: [Vec<HistogramDataPoint>; SLOTS],
    /// The process's runtime metrics, when read.
    runtime: Vec<Metric>,
}

/// Semantic-convention attributes of one point.
fn attributes(c: &Collected, red: &Red) -> Vec<KeyValue> {
    match &c.key.series {
        SeriesId::Http(s) if s.rpc => rpc_attributes(c, s, red),
        SeriesId::Http(s) => http_attributes(c, s, red),
        SeriesId::Db(s) => db_attributes(s, red),
    }
}

/// Database attributes: names interned by the database aggregator.
fn db_attributes(s: &DbSeriesKey, red: &Red) -> Vec<KeyValue> {
    let db = &red.db;
    let mut out = Vec::with_capacity(8);
    let mut put = |k: &str, v: Value| out.push(key_value(k, &v));
    put("db.system.name", Value::Str(s.system.as_str().to_owned()));
    for (k, id) in [
        ("db.operation.name", s.operation),
        ("db.collection.name", s.collection),
        ("db.namespace", s.namespace),
    ] {
        if let Some(v) = db.name(id) {
            put(k, Value::Str(v.to_owned()));
        }
    }
    if let Some(code) = db.name(s.status) {
        put("db.response.status_code", Value::Str(code.to_owned()));
        put("error.type", Value::Str(code.to_owned()));
    }
    if s.side == Side::Client && s.peer != 0 {
        let (host, port) = red.peer(s.peer);
        put("server.address", Value::Str(host.to_owned()));
        put("server.port", Value::Int(i64::from(port)));
    }
    out
}

/// gRPC attributes (the RPC conventions): the method, the status code by name, and an
/// `error.type` where the conventions call the code an error on this side.
fn rpc_attributes(c: &Collected, s: &SeriesKey, red: &Red) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(7);
    let mut put = |k: &str, v: Value| out.push(key_value(k, &v));
    put("rpc.system.name", Value::Str("grpc".to_owned()));
    let route = red.service(s.service).routes.name(s.route);
    put("rpc.method", Value::Str(rpc_method(route).to_owned()));
    let code = GrpcCode(u8::try_from(s.status).unwrap_or(u8::MAX));
    put(
        "rpc.response.status_code",
        Value::Str(code.as_str().to_owned()),
    );
    if let Some(kind) = grpc_error_type(s.side, code) {
        put("error.type", Value::Str(kind.to_owned()));
    }
    server(&mut put, c, s, red);
    out
}

/// `server.port` of a server-side point (the port served on), `server.address`/`server.port`
/// of a client-side one (the server called).
fn server(put: &mut impl FnMut(&str, Value), c: &Collected, s: &SeriesKey, red: &Red) {
    match s.side {
        Side::Server if c.key.local_port != 0 => {
            put("server.port", Value::Int(i64::from(c.key.local_port)));
        }
        Side::Server => {}
        Side::Client => {
            let (host, port) = red.peer(s.peer);
            if !host.is_empty() {
                put("server.address", Value::Str(host.to_owned()));
                put("server.port", Value::Int(i64::from(port)));
            }
        }
    }
}

/// HTTP attributes.
fn http_attributes(c: &Collected, s: &SeriesKey, red: &Red) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(8);
    let mut put = |k: &str, v: Value| out.push(key_value(k, &v));
    put(
        "http.request.method",
        Value::Str(s.method.as_str().to_owned()),
    );
    put("url.scheme", Value::Str("http".to_owned()));
    if let Some(version) = c.key.version {
        put(
            "network.protocol.version",
            Value::Str(version.as_str().to_owned()),
        );
    }
    if s.status != 0 {
        put("http.response.status_code", Value::Int(i64::from(s.status)));
    }
    // The catch-all series of a spent budget merges every status into 0: not an error.
    let catch_all = s.method == Method::Other && s.route == routes::OVERFLOW_ID && s.status == 0;
    if let Some(kind) = error_type(s.side, s.status).filter(|_| !catch_all) {
        put("error.type", Value::Str(kind));
    }
    if s.side == Side::Server {
        put(
            "http.route",
            Value::Str(red.service(s.service).routes.name(s.route).to_owned()),
        );
    }
    server(&mut put, c, s, red);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::red::record_http;
    use crate::{
        metrics::{
            otel::{Aggregation, OtelConfig, OtelMetrics},
            red::RedConfig,
        },
        request::{Detail, HttpInfo, Protocol, Request, Trust},
    };
    use opentelemetry_proto::tonic::common::v1::any_value;

    fn req(side: Side, path: &str, status: u16, host: Option<&str>) -> Request {
        Request {
            protocol: Protocol::Http1,
            side,
            start_ns: 0,
            end_ns: 4_000_000,
            tid: 1,
            seq: 0,
            trust: Trust::default(),
            detail: Detail::Http(HttpInfo {
                method: Method::Get,
                path: path.to_owned(),
                status,
                version: crate::request::HttpVersion::Http11,
                host: host.map(str::to_owned),
                user_agent: None,
                traceparent: None,
                tracestate: None,
                grpc: None,
            }),
        }
    }

    fn attr(kvs: &[KeyValue], key: &str) -> Option<String> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }

    /// A RED aggregator with small budgets.
    fn small_red() -> Red {
        Red::new(RedConfig {
            apdex_threshold_ns: 1,
            max_services: 10,
            max_routes_per_service: 10,
            max_series: 100,
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
    fn server_and_client_points_carry_semconv_attributes() {
        let mut red = small_red();
        let mut m = OtelMetrics::new(OtelConfig {
            temporality: Temporality::Cumulative,
            aggregation: Aggregation::Exponential,
            max_series: 100,
            stale_collections: 10,
        });
        let resource = Arc::new(Resource {
            attributes: vec![("service.name", Value::Str("shop".to_owned()))],
            extra: Vec::new(),
        });
        let svc = red.service_id("shop");
        for (r, peer) in [
            (req(Side::Server, "/users/7", 503, None), None),
            (
                req(Side::Client, "/x?secret=1", 200, Some("api.local:8080")),
                Some(("api.local", 8080)),
            ),
        ] {
            let key = record_http(&mut red, svc, peer, &r);
            m.record(
                &resource,
                key,
                9000,
                Some(crate::request::HttpVersion::Http11),
                r.duration_ns(),
                5,
            );
        }
        let out = request(m.collect(10), &red, Temporality::Cumulative, 10).expect("points");
        assert_eq!(out.resource_metrics.len(), 1);
        let metrics = &out.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, [METRICS[0].0, METRICS[1].0]);
        let point = |i: usize| match &metrics[i].data {
            Some(Data::ExponentialHistogram(h)) => {
                assert_eq!(
                    h.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                h.data_points[0].clone()
            }
            other => panic!("exponential histogram expected: {other:?}"),
        };
        let server = point(0);
        assert_eq!(metrics[0].unit, "s");
        assert_eq!(server.count, 1);
        assert_eq!(server.sum, Some(0.004));
        assert_eq!(
            server
                .positive
                .as_ref()
                .map(|b| b.bucket_counts.iter().sum::<u64>()),
            Some(1)
        );
        let a = &server.attributes;
        assert_eq!(attr(a, "http.route").as_deref(), Some("/users/{id}"));
        assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("503"));
        assert_eq!(attr(a, "error.type").as_deref(), Some("503"));
        assert_eq!(attr(a, "server.port").as_deref(), Some("9000"));
        assert_eq!(attr(a, "network.protocol.version").as_deref(), Some("1.1"));
        let client = point(1);
        let a = &client.attributes;
        assert_eq!(attr(a, "server.address").as_deref(), Some("api.local"));
        assert_eq!(attr(a, "server.port").as_deref(), Some("8080"));
        assert_eq!(attr(a, "error.type"), None);
        assert_eq!(attr(a, "http.route"), None, "no route on client metrics");
        assert!(
            !format!("{out:?}").contains("secret"),
            "no query value leaves"
        );
    }

    #[test]
    fn database_points_carry_db_attributes_and_db_buckets() {
        use crate::request::{DbInfo, DbSystem};
        let mut red = small_red();
        let mut m = OtelMetrics::new(OtelConfig {
            temporality: Temporality::Delta,
            aggregation: Aggregation::Explicit,
            max_series: 100,
            stale_collections: 10,
        });
        let resource = Arc::new(Resource {
            attributes: vec![("service.name", Value::Str("shop".to_owned()))],
            extra: Vec::new(),
        });
        let svc = red.service_id("shop");
        let peer = red.peer_id("10.0.0.5", 5432);
        let info = DbInfo {
            system: DbSystem::Postgresql,
            operation: "SELECT".to_owned(),
            query: "SELECT * FROM users WHERE id = ?".to_owned(),
            collection: Some("users".to_owned()),
            namespace: Some("shop".to_owned()),
            status_code: Some("42P01".to_owned()),
            error: true,
        };
        let (key, _) = red.db.record(svc, Side::Client, peer, &info, 2_000_000);
        m.record(&resource, key, 0, None, 2_000_000, 5);
        let out = request(m.collect(10), &red, Temporality::Delta, 10).expect("points");
        let metrics = &out.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].name, "db.client.operation.duration");
        let Some(Data::Histogram(h)) = &metrics[0].data else {
            panic!("explicit histogram expected");
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, crate::metrics::db::DB_BUCKETS_S.to_vec());
        // 2 ms falls in (1 ms, 5 ms].
        assert_eq!(p.bucket_counts[1], 1);
        let a = &p.attributes;
        for (k, v) in [
            ("db.system.name", "postgresql"),
            ("db.operation.name", "SELECT"),
            ("db.collection.name", "users"),
            ("db.namespace", "shop"),
            ("db.response.status_code", "42P01"),
            ("error.type", "42P01"),
            ("server.address", "10.0.0.5"),
            ("server.port", "5432"),
        ] {
            assert_eq!(attr(a, k).as_deref(), Some(v), "{k}");
        }
        assert_eq!(
            attr(a, "db.query.text"),
            None,
            "statements stay off metrics"
        );
    }

    #[test]
    fn runtime_metrics_follow_process_semconv() {
        use crate::metrics::process_runtime::{Reading, Sample};
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
        let mut red = small_red();
        assert!(request(Vec::new(), &red, Temporality::Delta, 10).is_none());
        let resource = Arc::new(Resource {
            attributes: vec![("service.name", Value::Str("shop".to_owned()))],
            extra: Vec::new(),
        });
        red.runtime.push(Reading {
            pid: 42,
            service: "shop".into(),
            resource: Some(resource),
            sample: Sample {
                user_s: 1.5,
                system_s: 0.5,
                rss_bytes: 1 << 20,
                virtual_bytes: 4 << 20,
                threads: 2,
                fds: 5,
                voluntary_switches: 9,
                involuntary_switches: 1,
                start_ticks: 0,
            },
            start_unix_ns: 3,
        });
        let out = request(Vec::new(), &red, Temporality::Delta, 10).expect("runtime points");
        assert_eq!(out.resource_metrics.len(), 1);
        let metrics = &out.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "process.cpu.time",
                "process.memory.usage",
                "process.memory.virtual",
                "process.thread.count",
                "process.unix.file_descriptor.count",
                "process.context_switches"
            ]
        );
        let Some(Data::Sum(cpu)) = &metrics[0].data else {
            panic!("sum expected");
        };
        assert!(cpu.is_monotonic);
        assert_eq!(
            cpu.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            attr(&cpu.data_points[1].attributes, "cpu.mode").as_deref(),
            Some("system")
        );
        assert_eq!(cpu.data_points[1].value, Some(N::AsDouble(0.5)));
        assert_eq!(cpu.data_points[0].start_time_unix_nano, 3);
        let Some(Data::Sum(fds)) = &metrics[4].data else {
            panic!("sum expected");
        };
        assert!(!fds.is_monotonic);
        assert_eq!(fds.data_points[0].value, Some(N::AsInt(5)));
        assert_eq!(metrics_task_points(&out), 8);
    }

    fn metrics_task_points(r: &ExportMetricsServiceRequest) -> u64 {
        crate::export::otlp::metrics_task::points(r)
    }
}
