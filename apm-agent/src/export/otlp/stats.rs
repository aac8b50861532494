//! The OTLP exporters' statistics on `/metrics`, per signal: sent, dropped, failed attempts.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, Stats, counters};

/// Index of the traces counters.
pub const TRACES: usize = 0;
/// Index of the metrics counters (data points).
pub const METRICS: usize = 1;
const SIGNAL_LABELS: [&str; 2] = ["signal=\"traces\"", "signal=\"metrics\""];

counters! {
    /// Per OTLP signal ([`TRACES`], [`METRICS`]): items exported, items dropped (queue full
    /// or retries exhausted), failed export attempts.
    pub struct ExportStats {
        pub sent: [AtomicU64; 2],
        pub dropped: [AtomicU64; 2],
        pub failures: [AtomicU64; 2],
    }
}

const SENT: Family = Family::counter(
    "apm_export_sent_total",
    "Spans and metric data points accepted by the OTLP endpoint.",
);
const DROPPED: Family = Family::counter(
    "apm_export_dropped_total",
    "Spans and metric data points dropped: export queue full, or retries exhausted.",
);
const FAILURES: Family = Family::counter(
    "apm_export_failures_total",
    "Failed OTLP export attempts (each retried while the retry budget lasts).",
);

impl Stats for ExportStats {
    fn render(&self, out: &mut Exposition) {
        for (family, counters) in [
            (&SENT, &self.sent),
            (&DROPPED, &self.dropped),
            (&FAILURES, &self.failures),
        ] {
            for (labels, c) in SIGNAL_LABELS.iter().zip(counters) {
                out.add(family, *labels, c.load(Relaxed));
            }
        }
    }
}
