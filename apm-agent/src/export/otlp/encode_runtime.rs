//! Runtime readings of one process -> OTLP `process.*` metrics (semantic conventions):
//! `process.cpu.time` (`cpu.mode`), `process.memory.usage`, `process.memory.virtual`,
//! `process.thread.count`, `process.unix.file_descriptor.count`, `process.context_switches`
//! (`process.context_switch_type`).
//!
//! The counters are cumulative since the process started whatever the temporality
//! preference: that is how the kernel counts them, and a delta would need the previous
//! export's values kept per process for no information gained (backends convert).
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, Sum, metric::Data, number_data_point,
};

use super::encode_traces::key_value;
use crate::{metrics::process_runtime::Reading, traces::span::Value};

/// The metrics of one reading, taken at `now_unix_ns`.
pub fn metrics(r: &Reading, now_unix_ns: u64) -> Vec<Metric> {
    let s = &r.sample;
    let point =
        |attribute: Option<(&str, &str)>, value: number_data_point::Value| NumberDataPoint {
            attributes: attribute
                .map(|(k, v)| vec![key_value(k, &Value::Str(v.to_owned()))])
                .unwrap_or_default(),
            start_time_unix_nano: r.start_unix_ns,
            time_unix_nano: now_unix_ns,
            exemplars: Vec::new(),
            flags: 0,
            value: Some(value),
        };
    let int = |v: u64| number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX));
    let sum = |name: &str, description: &str, unit: &str, monotonic, data_points| Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: Some(Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
        })),
    };
    use number_data_point::Value::AsDouble;
    vec![
        sum(
            "process.cpu.time",
            "Total CPU seconds broken down by different CPU modes.",
            "s",
            true,
            vec![
                point(Some(("cpu.mode", "user")), AsDouble(s.user_s)),
                point(Some(("cpu.mode", "system")), AsDouble(s.system_s)),
            ],
        ),
        sum(
            "process.memory.usage",
            "The amount of physical memory in use.",
            "By",
            false,
            vec![point(None, int(s.rss_bytes))],
        ),
        sum(
            "process.memory.virtual",
            "The amount of committed virtual memory.",
            "By",
            false,
            vec![point(None, int(s.virtual_bytes))],
        ),
        sum(
            "process.thread.count",
            "Process threads count.",
            "{thread}",
            false,
            vec![point(None, int(s.threads))],
        ),
        sum(
            "process.unix.file_descriptor.count",
            "Number of unix file descriptors in use by the process.",
            "{file_descriptor}",
            false,
            vec![point(None, int(s.fds))],
        ),
        sum(
            "process.context_switches",
            "Number of times the process has been context switched.",
            "{context_switch}",
            true,
            vec![
                point(
                    Some(("process.context_switch_type", "voluntary")),
                    int(s.voluntary_switches),
                ),
                point(
                    Some(("process.context_switch_type", "involuntary")),
                    int(s.involuntary_switches),
                ),
            ],
        ),
    ]
}
