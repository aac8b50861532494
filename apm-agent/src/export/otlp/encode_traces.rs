//! Spans -> an OTLP `ExportTraceServiceRequest`: one `ResourceSpans` per observed process,
//! one scope (the agent).
use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource as ProtoResource,
    trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan, Status, span, status},
};

use crate::traces::span::{Kind, Resource, Span, Value};

/// The instrumentation scope every span and metric is reported under.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "apm-agent".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

pub fn key_value(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.clone()),
        Value::Int(i) => any_value::Value::IntValue(*i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

pub fn resource(r: &Resource) -> ProtoResource {
    let mut attributes: Vec<KeyValue> = r.attributes.iter().map(|(k, v)| key_value(k, v)).collect();
    attributes.extend(
        r.extra
            .iter()
            .map(|(k, v)| key_value(k, &Value::Str(v.clone()))),
    );
    ProtoResource {
        attributes,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

/// Encodes `spans` (emptying the vector), grouped by resource.
pub fn request(spans: &mut Vec<Span>) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Arc<Resource>, Vec<ProtoSpan>)> = Vec::new();
    for s in spans.drain(..) {
        let proto = span(&s);
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &s.resource)) {
            Some((_, v)) => v.push(proto),
            None => groups.push((s.resource.clone(), vec![proto])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(resource(&r)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn span(s: &Span) -> ProtoSpan {
    ProtoSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone().unwrap_or_default(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: 0,
        name: s.name.clone(),
        kind: match s.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: s
            .links
            .iter()
            .map(|(t, sp)| span::Link {
                trace_id: t.to_vec(),
                span_id: sp.to_vec(),
                trace_state: String::new(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                flags: 0,
            })
            .collect(),
        dropped_links_count: 0,
        status: Some(Status {
            message: String::new(),
            code: if s.error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
        }),
    }
}
