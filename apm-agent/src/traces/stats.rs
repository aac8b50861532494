//! Span assembly's statistics on `/metrics`: sampling, trace-context tracking, the hold
//! buffer, same-host pairing. Published by the pipeline, which owns the tracer.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, Stats, counters};

counters! {
    /// What span assembly counts.
    pub struct TraceStats {
        /// Spans not exported because the head sampler said no (and they were neither
        /// errors nor slow).
        pub spans_sampled_out: AtomicU64,
        /// Requests whose trace context could not be tracked (table full): exported as roots.
        pub trace_context_overflow: AtomicU64,
        /// Spans released before their hold time because the hold buffer was full.
        pub spans_released_early: AtomicU64,
        /// Server spans parented to a same-host client span.
        pub spans_paired: AtomicU64,
    }
}

const SAMPLED_OUT: Family = Family::counter(
    "apm_spans_sampled_out_total",
    "Spans the head sampler did not keep (errors and slow requests are always kept).",
);
const CONTEXT_OVERFLOW: Family = Family::counter(
    "apm_trace_context_overflow_total",
    "Requests whose trace context could not be tracked (table full), exported as new traces.",
);
const RELEASED_EARLY: Family = Family::counter(
    "apm_spans_released_early_total",
    "Spans released before their hold time (buffer full): late links cannot apply.",
);
const PAIRED: Family = Family::counter(
    "apm_spans_paired_total",
    "Server spans made children of a client span observed on the same host.",
);

impl Stats for TraceStats {
    fn render(&self, out: &mut Exposition) {
        out.add(&SAMPLED_OUT, "", self.spans_sampled_out.load(Relaxed));
        out.add(
            &CONTEXT_OVERFLOW,
            "",
            self.trace_context_overflow.load(Relaxed),
        );
        out.add(&RELEASED_EARLY, "", self.spans_released_early.load(Relaxed));
        out.add(&PAIRED, "", self.spans_paired.load(Relaxed));
    }
}
