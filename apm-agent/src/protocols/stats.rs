//! The parsers' statistics on `/metrics`: per protocol, what the parsers counted in
//! [`ParseStats`] while they worked, folded in by the pipeline after each batch.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::ParseStats;
use crate::{
    request::Protocol,
    telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters},
};

counters! {
    /// Counters of one protocol's parsers.
    pub struct ProtocolCounters {
        pub parse_errors: AtomicU64,
        pub incomplete: AtomicU64,
        pub unmatched_responses: AtomicU64,
        pub pipeline_overflow: AtomicU64,
        /// Connections reset after their records were lost.
        pub resyncs: AtomicU64,
        pub requests: AtomicU64,
        /// Requests whose response end was inferred (framing lost or unknowable).
        pub end_inferred: AtomicU64,
        /// Requests whose head ran past the captured bytes.
        pub head_truncated: AtomicU64,
        /// HTTP/2 header blocks that could not be read.
        pub header_blocks_lost: AtomicU64,
        /// HTTP/2 header blocks read in part, and used.
        pub header_blocks_partial: AtomicU64,
        /// HTTP/2 streams refused by the per-connection budget.
        pub streams_overflow: AtomicU64,
        /// HTTP/2 server pushes announced.
        pub push_promises: AtomicU64,
    }
}

impl ProtocolCounters {
    pub fn add(&self, s: &ParseStats) {
        self.requests.fetch_add(s.requests, Relaxed);
        self.end_inferred.fetch_add(s.end_inferred, Relaxed);
        self.head_truncated.fetch_add(s.head_truncated, Relaxed);
        self.parse_errors.fetch_add(s.parse_errors, Relaxed);
        self.incomplete.fetch_add(s.incomplete, Relaxed);
        self.unmatched_responses
            .fetch_add(s.unmatched_responses, Relaxed);
        self.pipeline_overflow
            .fetch_add(s.pipeline_overflow, Relaxed);
        self.resyncs.fetch_add(s.resyncs, Relaxed);
        self.header_blocks_lost
            .fetch_add(s.header_blocks_lost, Relaxed);
        self.header_blocks_partial
            .fetch_add(s.header_blocks_partial, Relaxed);
        self.streams_overflow.fetch_add(s.streams_overflow, Relaxed);
        self.push_promises.fetch_add(s.push_promises, Relaxed);
    }
}

counters! {
    /// Parser counters per protocol ([`Protocol::index`]).
    pub struct ProtocolStats {
        pub protocols: [ProtocolCounters; Protocol::ALL.len()],
    }
}

/// Which counter of a protocol's a family reads.
type Pick = fn(&ProtocolCounters) -> &AtomicU64;

/// The per-protocol families: name, help, and the counter each reads.
const PER_PROTOCOL: [(Family, Pick); 5] = [
    (
        Family::counter(
            "apm_parse_errors_total",
            "Bytes that did not parse where a message was expected.",
        ),
        |c| &c.parse_errors,
    ),
    (
        Family::counter(
            "apm_exchanges_incomplete_total",
            "Requests that never got a complete response (closed mid-exchange, or in flight when records of their connection were lost).",
        ),
        |c| &c.incomplete,
    ),
    (
        Family::counter(
            "apm_connection_resyncs_total",
            "Times a connection's parser was reset because some of its records were lost (ring buffer full): in-flight exchanges dropped, parsing resumed at the next message start.",
        ),
        |c| &c.resyncs,
    ),
    (
        Family::counter(
            "apm_responses_unmatched_total",
            "Responses without a request (sent before the agent started).",
        ),
        |c| &c.unmatched_responses,
    ),
    (
        Family::counter("apm_requests_total", "Completed exchanges observed."),
        |c| &c.requests,
    ),
];

/// HTTP/2 only: header blocks that could not be read.
const HEADER_BLOCKS_LOST: Family = Family::counter(
    "apm_http2_header_blocks_lost_total",
    "HTTP/2 header blocks whose headers could not be read (bytes past the capture or lost, undecodable, or decoded against an HPACK table in an unknown state); their streams are not reported.",
);

/// HTTP/2 only: header blocks read in part.
const HEADER_BLOCKS_PARTIAL: Family = Family::counter(
    "apm_http2_header_blocks_partial_total",
    "HTTP/2 header blocks that named HPACK table entries the agent could not know (a connection older than the agent, or after a loss), used because what they gave (method and path of a request that is not a POST, status of a response to a request known not to be gRPC) is all that is reported.",
);

/// HTTP/2 only: server pushes announced.
const PUSH_PROMISES: Family = Family::counter(
    "apm_http2_push_promises_total",
    "HTTP/2 server pushes announced (PUSH_PROMISE frames): counted, not reported as requests.",
);

const APPROXIMATE: Family = Family::counter(
    "apm_requests_approximate_total",
    "Completed exchanges recorded from partial information (see reason).",
);

impl Stats for ProtocolStats {
    fn render(&self, out: &mut Exposition) {
        for (family, counter) in &PER_PROTOCOL {
            for (p, c) in Protocol::ALL.iter().zip(&self.protocols) {
                let labels = format!("protocol=\"{}\"", p.as_str());
                out.add(family, labels, counter(c).load(Relaxed));
            }
        }
        for (p, c) in Protocol::ALL.iter().zip(&self.protocols) {
            for (reason, v) in [
                ("end_inferred", &c.end_inferred),
                ("head_truncated", &c.head_truncated),
            ] {
                let labels = format!("protocol=\"{}\",reason=\"{reason}\"", p.as_str());
                out.add(&APPROXIMATE, labels, v.load(Relaxed));
            }
        }
        let pipelined: u64 = self
            .protocols
            .iter()
            .map(|c| c.pipeline_overflow.load(Relaxed))
            .sum();
        out.add(&MAP_OVERFLOWS, "map=\"pipelined_requests\"", pipelined);
        // Only the HTTP/2 parser moves these: the sums are its counts.
        let sum =
            |pick: Pick| -> u64 { self.protocols.iter().map(|c| pick(c).load(Relaxed)).sum() };
        out.add(
            &MAP_OVERFLOWS,
            "map=\"http2_streams\"",
            sum(|c| &c.streams_overflow),
        );
        out.add(&HEADER_BLOCKS_LOST, "", sum(|c| &c.header_blocks_lost));
        out.add(
            &HEADER_BLOCKS_PARTIAL,
            "",
            sum(|c| &c.header_blocks_partial),
        );
        out.add(&PUSH_PROMISES, "", sum(|c| &c.push_promises));
    }
}
