//! A small OTLP/HTTP receiver for the tests: accepts `POST /v1/traces` and `POST /v1/metrics`
//! (protobuf), keeps the raw bodies (to search them for secrets) and decodes them with the
//! official OTLP protobuf definitions (`opentelemetry-proto`).
use std::{
    io::{BufReader, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::net::read_post;
use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{Metric, metric::Data},
    trace::v1::Span,
};
use prost::Message;

/// Everything received so far.
#[derive(Debug, Default)]
pub struct Received {
    pub bodies: Vec<Vec<u8>>,
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub decode_errors: usize,
}

/// The running receiver (a thread; it lives as long as the test process).
#[derive(Debug, Clone)]
pub struct Receiver {
    pub port: u16,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &sink);
                });
            }
        });
        Ok(Self { port, received })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received, with the `service.name` of its resource.
    pub fn spans(&self) -> Vec<(String, Span)> {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for req in &r.traces {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|res| str_attr(&res.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
                }
            }
        }
        out
    }

    /// Every span received, with its resource's attributes.
    pub fn resource_spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for req in &r.traces {
            for rs in &req.resource_spans {
                let attrs = rs
                    .resource
                    .as_ref()
                    .map(|res| res.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (attrs.clone(), s.clone())));
                }
            }
        }
        out
    }

    /// Spans of `service` once at least `n` arrived (or the timeout passed).
    pub fn wait_spans(&self, service: &str, n: usize, timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let mine: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|(s, _)| s == service)
                .map(|(_, s)| s)
                .collect();
            if mine.len() >= n || Instant::now() > deadline {
                return mine;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every metric received, in arrival order, with its resource's attributes.
    pub fn metrics(&self) -> Vec<(Vec<KeyValue>, Metric)> {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for req in &r.metrics {
            for rm in &req.resource_metrics {
                let attrs = rm
                    .resource
                    .as_ref()
                    .map(|res| res.attributes.clone())
                    .unwrap_or_default();
                for sm in &rm.scope_metrics {
                    out.extend(sm.metrics.iter().map(|m| (attrs.clone(), m.clone())));
                }
            }
        }
        out
    }

    /// Data points of metric `name` from resources named `service`, in arrival order, as
    /// (resource attributes, point).
    pub fn points(&self, service: &str, name: &str) -> Vec<(Vec<KeyValue>, Point)> {
        let mut out = Vec::new();
        for (attrs, m) in self.metrics() {
            if m.name != name || str_attr(&attrs, "service.name").as_deref() != Some(service) {
                continue;
            }
            let points: Vec<Point> = match m.data {
                Some(Data::ExponentialHistogram(h)) => h
                    .data_points
                    .into_iter()
                    .map(|p| Point {
                        temporality: h.aggregation_temporality,
                        unit: m.unit.clone(),
                        attributes: p.attributes.clone(),
                        start: p.start_time_unix_nano,
                        time: p.time_unix_nano,
                        count: p.count,
                        sum: p.sum.unwrap_or(0.0),
                        buckets_total: p.zero_count
                            + p.positive
                                .as_ref()
                                .map_or(0, |b| b.bucket_counts.iter().sum::<u64>()),
                        exponential: true,
                        explicit_bounds: Vec::new(),
                    })
                    .collect(),
                Some(Data::Histogram(h)) => h
                    .data_points
                    .into_iter()
                    .map(|p| Point {
                        temporality: h.aggregation_temporality,
                        unit: m.unit.clone(),
                        attributes: p.attributes.clone(),
                        start: p.start_time_unix_nano,
                        time: p.time_unix_nano,
                        count: p.count,
                        sum: p.sum.unwrap_or(0.0),
                        buckets_total: p.bucket_counts.iter().sum(),
                        exponential: false,
                        explicit_bounds: p.explicit_bounds.clone(),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            out.extend(points.into_iter().map(|p| (attrs.clone(), p)));
        }
        out
    }

    /// Raw bodies, for searching.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        r.bodies.clone()
    }

    pub fn decode_errors(&self) -> usize {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        r.decode_errors
    }
}

/// Serves one keep-alive connection.
fn serve(stream: std::net::TcpStream, sink: &Mutex<Received>) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some((path, body)) = read_post(&mut reader)? {
        {
            let mut r = sink.lock().unwrap_or_else(|e| e.into_inner());
            if path == "/v1/traces" {
                match ExportTraceServiceRequest::decode(body.as_slice()) {
                    Ok(req) => r.traces.push(req),
                    Err(_) => r.decode_errors += 1,
                }
            } else if path == "/v1/metrics" {
                match ExportMetricsServiceRequest::decode(body.as_slice()) {
                    Ok(req) => r.metrics.push(req),
                    Err(_) => r.decode_errors += 1,
                }
            }
            r.bodies.push(body);
        }
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
    Ok(())
}

/// One histogram data point, exponential or explicit, reduced to what tests check.
#[derive(Debug, Clone)]
pub struct Point {
    /// 1 delta, 2 cumulative.
    pub temporality: i32,
    pub unit: String,
    pub attributes: Vec<KeyValue>,
    pub start: u64,
    pub time: u64,
    pub count: u64,
    pub sum: f64,
    /// Sum of every bucket count (and the zero bucket): must equal `count`.
    pub buckets_total: u64,
    pub exponential: bool,
    pub explicit_bounds: Vec<f64>,
}

fn value_str(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An attribute's value as text (strings and integers).
pub fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| value_str(&kv.value))
}

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
