//! Finished spans wait here a short while before export, so that a late same-host pairing
//! (see the assembler) can still move them into the trace they belong to; then the sampling
//! decision is applied: head decision, or always keep errors and slow requests.
use std::collections::VecDeque;

use super::{assembler::Assembler, span::Span};

/// One held span.
#[derive(Debug)]
struct Held {
    ready_ns: u64,
    span: Span,
    sampled: bool,
    /// Error or slow: exported whatever the head decision.
    keep: bool,
}

/// Counters for the agent's own metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// Spans exported (head-sampled, error or slow).
    pub kept: u64,
    /// Spans not sampled.
    pub sampled_out: u64,
    /// Spans released early because the buffer was full.
    pub early: u64,
}

/// The bounded hold buffer.
#[derive(Debug)]
pub struct Hold {
    spans: VecDeque<Held>,
    hold_ns: u64,
    capacity: usize,
    stats: HoldStats,
}

impl Hold {
    pub fn new(hold_ns: u64, capacity: usize) -> Self {
        Self {
            spans: VecDeque::new(),
            hold_ns,
            capacity: capacity.max(1),
            stats: HoldStats::default(),
        }
    }

    /// Holds a finished span until `now_ns + hold`.
    pub fn push(
        &mut self,
        now_ns: u64,
        span: Span,
        sampled: bool,
        keep: bool,
        asm: &Assembler,
        out: &mut Vec<Span>,
    ) {
        if self.spans.len() >= self.capacity {
            self.stats.early += 1;
            if let Some(held) = self.spans.pop_front() {
                self.release(held, asm, out);
            }
        }
        self.spans.push_back(Held {
            ready_ns: now_ns.saturating_add(self.hold_ns),
            span,
            sampled,
            keep,
        });
    }

    /// Releases the spans whose time is up into `out` (those the sampling keeps).
    pub fn flush(&mut self, now_ns: u64, asm: &Assembler, out: &mut Vec<Span>) {
        while self.spans.front().is_some_and(|h| h.ready_ns <= now_ns) {
            if let Some(held) = self.spans.pop_front() {
                self.release(held, asm, out);
            }
        }
    }

    fn release(&mut self, mut held: Held, asm: &Assembler, out: &mut Vec<Span>) {
        if let Some((trace_id, sampled)) = asm.resolve(held.span.trace_id) {
            held.span.trace_id = trace_id;
            held.sampled = sampled;
        }
        if held.sampled || held.keep {
            self.stats.kept += 1;
            out.push(held.span);
        } else {
            self.stats.sampled_out += 1;
        }
    }

    pub fn stats(&self) -> HoldStats {
        self.stats
    }
}
