//! The pipeline's own statistics on `/metrics`: records read per kind, bytes captured, the
//! connection table. Counted locally on the hot path and published after each batch.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use super::Pipeline;
use crate::{
    discovery::stats::DiscoveryStats,
    ebpf::decode::KIND_NAMES,
    metrics::stats::MetricsStats,
    protocols::stats::ProtocolStats,
    telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters},
    tls::stats::TlsStats,
    traces::stats::TraceStats,
};

counters! {
    /// What the pipeline counts.
    pub struct PipelineStats {
        pub events_read: [AtomicU64; KIND_NAMES.len()],
        pub bytes_captured: AtomicU64,
        pub unclassified_connections: AtomicU64,
        pub connections_overflow: AtomicU64,
        pub connections_tracked: AtomicU64,
    }
}

const EVENTS_READ: Family = Family::counter(
    "apm_events_read_total",
    "Kernel events read from the ring buffer.",
);
const BYTES_CAPTURED: Family = Family::counter(
    "apm_bytes_captured_total",
    "Payload bytes copied from socket syscalls.",
);
const UNCLASSIFIED: Family = Family::counter(
    "apm_connections_unclassified_total",
    "Connections whose traffic matched no supported protocol (capture stopped).",
);
const CONNECTIONS_TRACKED: Family = Family::gauge(
    "apm_connections_tracked",
    "Connections in the agent's table.",
);

impl Stats for PipelineStats {
    fn render(&self, out: &mut Exposition) {
        for (kind, v) in KIND_NAMES.iter().zip(&self.events_read) {
            out.add(&EVENTS_READ, format!("kind=\"{kind}\""), v.load(Relaxed));
        }
        out.add(&BYTES_CAPTURED, "", self.bytes_captured.load(Relaxed));
        out.add(
            &UNCLASSIFIED,
            "",
            self.unclassified_connections.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"connections\"",
            self.connections_overflow.load(Relaxed),
        );
        out.add(
            &CONNECTIONS_TRACKED,
            "",
            self.connections_tracked.load(Relaxed),
        );
    }
}

/// The statistics of the stages the pipeline runs (the pipeline's own, the parsers',
/// discovery's, span assembly's, the aggregations', TLS look-ups'), each the stage's own
/// handle; the pipeline counts on the hot path without atomics and publishes here after each
/// batch.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub pipeline: Arc<PipelineStats>,
    pub protocols: Arc<ProtocolStats>,
    pub discovery: Arc<DiscoveryStats>,
    pub traces: Arc<TraceStats>,
    pub metrics: Arc<MetricsStats>,
    pub tls: Arc<TlsStats>,
}

impl Pipeline {
    /// Publishes gauges and parser counters gathered since the last call.
    pub fn publish(&mut self) {
        let p = &self.published;
        for (counters, stats) in p.protocols.protocols.iter().zip(&self.stats) {
            counters.add(stats);
        }
        self.stats = Default::default();
        p.metrics
            .n_plus_one_untracked
            .store(self.consumers.n_plus_one.overflows(), Relaxed);
        if let Some(m) = &self.consumers.otel {
            p.metrics.otlp_series_overflow.store(m.overflows(), Relaxed);
        }
        if let Some(t) = &self.consumers.tracer {
            let st = t.stats();
            p.traces
                .spans_sampled_out
                .store(st.hold.sampled_out, Relaxed);
            p.traces.spans_released_early.store(st.hold.early, Relaxed);
            p.traces
                .trace_context_overflow
                .store(st.assembler.open_overflow, Relaxed);
            p.traces.spans_paired.store(st.assembler.paired, Relaxed);
        }
        for (counter, n) in p.pipeline.events_read.iter().zip(&mut self.events) {
            counter.fetch_add(std::mem::take(n), Relaxed);
        }
        p.pipeline
            .bytes_captured
            .fetch_add(std::mem::take(&mut self.bytes_captured), Relaxed);
        p.pipeline
            .connections_tracked
            .store(self.conns.len() as u64, Relaxed);
        let d = &p.discovery;
        d.processes_tracked.store(self.procs.len() as u64, Relaxed);
        d.processes_overflow.store(self.procs.overflowed(), Relaxed);
        let inv = &self.procs.inventory;
        d.inventory_processes.store(inv.len() as u64, Relaxed);
        d.inventory_overflow.store(inv.overflowed(), Relaxed);
        d.process_names_deferred
            .store(inv.names_deferred(), Relaxed);
        d.processes_excluded
            .store(self.selection.excluded_processes, Relaxed);
        d.connections_excluded
            .store(self.selection.excluded_connections, Relaxed);
    }
}
