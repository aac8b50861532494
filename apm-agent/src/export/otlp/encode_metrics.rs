//! Collected duration points -> an OTLP `ExportMetricsServiceRequest`: one `ResourceMetrics`
//! per observed process, `http.server.request.duration` and `http.client.request.duration`
//! (unit `s`) with the HTTP semantic-convention attributes.
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
        otel::{Buckets, Collected, Temporality},
        red::{BUCKETS_S, Red},
    },
    request::{Method, Side},
    routes,
    traces::{
        build::error_type,
        span::{Resource, Value},
    },
};

const SERVER_METRIC: &str = "http.server.request.duration";
const CLIENT_METRIC: &str = "http.client.request.duration";

/// Encodes `points` collected at `now_unix_ns`; names (routes, server addresses) come from
/// the RED aggregator whose series ids the points carry. None when there is nothing to send.
pub fn request(
    points: Vec<Collected>,
    red: &Red,
    temporality: Temporality,
    now_unix_ns: u64,
) -> Option<ExportMetricsServiceRequest> {
    if points.is_empty() {
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
                exponential: [Vec::new(), Vec::new()],
                explicit: [Vec::new(), Vec::new()],
            });
            groups.len() - 1
        });
        let group = &mut groups[i];
        let side = usize::from(c.key.series.side == Side::Client);
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
                explicit_bounds: BUCKETS_S.to_vec(),
                exemplars: Vec::new(),
                flags: 0,
                min,
                max,
            }),
        }
    }
    let names = [
        (SERVER_METRIC, "Duration of HTTP server requests."),
        (CLIENT_METRIC, "Duration of HTTP client requests."),
    ];
    Some(ExportMetricsServiceRequest {
        resource_metrics: groups
            .into_iter()
            .map(|g| {
                let mut metrics = Vec::new();
                let sides = g.exponential.into_iter().zip(g.explicit);
                for ((name, description), (exp, hist)) in names.into_iter().zip(sides) {
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

/// The points of one process, per side (0 server, 1 client).
struct Group {
    resource: Arc<Resource>,
    exponential: [Vec<ExponentialHistogramDataPoint>; 2],
    explicit: [Vec<HistogramDataPoint>; 2],
}

/// Semantic-convention attributes of one point.
fn attributes(c: &Collected, red: &Red) -> Vec<KeyValue> {
    let s = &c.key.series;
    let mut out = Vec::with_capacity(8);
    let mut put = |k: &str, v: Value| out.push(key_value(k, &v));
    put(
        "http.request.method",
        Value::Str(s.method.as_str().to_owned()),
    );
    put("url.scheme", Value::Str("http".to_owned()));
    put(
        "network.protocol.version",
        Value::Str(
            if c.key.version_minor == 0 {
                "1.0"
            } else {
                "1.1"
            }
            .to_owned(),
        ),
    );
    if s.status != 0 {
        put("http.response.status_code", Value::Int(i64::from(s.status)));
    }
    // The catch-all series of a spent budget merges every status into 0: not an error.
    let catch_all = s.method == Method::Other && s.route == routes::OVERFLOW_ID && s.status == 0;
    if let Some(kind) = error_type(s.side, s.status).filter(|_| !catch_all) {
        put("error.type", Value::Str(kind));
    }
    match s.side {
        Side::Server => {
            put(
                "http.route",
                Value::Str(red.service(s.service).routes.name(s.route).to_owned()),
            );
            if c.key.local_port != 0 {
                put("server.port", Value::Int(i64::from(c.key.local_port)));
            }
        }
        Side::Client => {
            let (host, port) = red.peer(s.peer);
            if !host.is_empty() {
                put("server.address", Value::Str(host.to_owned()));
                put("server.port", Value::Int(i64::from(port)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{
            otel::{Aggregation, OtelConfig, OtelMetrics},
            red::RedConfig,
        },
        request::{HttpInfo, Protocol, Request, Trust},
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
            http: HttpInfo {
                method: Method::Get,
                path: path.to_owned(),
                status,
                version_minor: 1,
                host: host.map(str::to_owned),
                user_agent: None,
                traceparent: None,
                tracestate: None,
            },
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

    #[test]
    fn server_and_client_points_carry_semconv_attributes() {
        let mut red = Red::new(RedConfig {
            apdex_threshold_ns: 1,
            max_services: 10,
            max_routes_per_service: 10,
            max_series: 100,
            max_peers: 10,
            max_route_windows: 10,
        });
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
            let key = red.record(svc, peer, &r);
            m.record(&resource, key, 9000, 1, r.duration_ns(), 5);
        }
        let out = request(m.collect(10), &red, Temporality::Cumulative, 10).expect("points");
        assert_eq!(out.resource_metrics.len(), 1);
        let metrics = &out.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, [SERVER_METRIC, CLIENT_METRIC]);
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
}
