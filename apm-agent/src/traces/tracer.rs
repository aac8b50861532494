//! The event thread's tracing front: request starts and completions in, sampled spans out.
//! Runs only when a traces endpoint is configured; costs nothing otherwise.
use std::sync::Arc;

use super::{
    assembler::{Assembler, AssemblerConfig, AssemblerStats, ConnRef},
    build::{self, Peer},
    hold::{Hold, HoldStats},
    sampling::TraceSampler,
    span::{Attributes, Clock, Resource, Span},
};
use crate::request::{Request, Started};

/// Settings.
#[derive(Debug, Clone)]
pub struct TracerConfig {
    pub sampler: TraceSampler,
    /// Requests at least this slow are exported whatever the head decision.
    pub slow_ns: u64,
    /// Requests in flight tracked at once.
    pub max_open: usize,
    /// How long finished spans wait for late links.
    pub hold_ns: u64,
    /// Spans held at once.
    pub max_held: usize,
}

/// Counters for the agent's own metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TracerStats {
    pub assembler: AssemblerStats,
    pub hold: HoldStats,
}

/// Trace assembly for the event thread.
#[derive(Debug)]
pub struct Tracer {
    asm: Assembler,
    hold: Hold,
    clock: Clock,
    slow_ns: u64,
    ready: Vec<Span>,
    last_expire_ns: u64,
}

impl Tracer {
    pub fn new(cfg: TracerConfig) -> Self {
        Self {
            asm: Assembler::new(AssemblerConfig {
                sampler: cfg.sampler,
                max_open: cfg.max_open,
                hold_ns: cfg.hold_ns,
            }),
            hold: Hold::new(cfg.hold_ns, cfg.max_held),
            clock: Clock::now(),
            slow_ns: cfg.slow_ns,
            ready: Vec::new(),
            last_expire_ns: 0,
        }
    }

    pub fn on_start(&mut self, conn: &ConnRef, started: &Started) {
        self.asm.on_start(conn, started);
    }

    /// A request completed on `conn`: its span, with `extra` attributes (findings about the
    /// request, such as an N+1), enters the hold buffer.
    pub fn on_done(
        &mut self,
        conn: &ConnRef,
        req: &Request,
        route: &str,
        peer: (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>),
        resource: &Arc<Resource>,
        extra: Attributes,
    ) {
        let ctx = match self.asm.on_done(conn, req.side, req.seq, req.tid) {
            Some(ctx) => ctx,
            None => self.asm.root(),
        };
        let mut span = build::span(
            req,
            &ctx,
            &Peer {
                remote: peer.0,
                local: peer.1,
                route,
            },
            resource.clone(),
            self.clock,
        );
        span.attributes.extend(extra);
        let keep = span.error || req.duration_ns() >= self.slow_ns;
        self.hold.push(
            req.end_ns,
            span,
            ctx.sampled,
            keep,
            &self.asm,
            &mut self.ready,
        );
    }

    /// Releases held spans whose time is up; returns the spans ready for export.
    pub fn tick(&mut self, now_ns: u64) -> &mut Vec<Span> {
        self.hold.flush(now_ns, &self.asm, &mut self.ready);
        if now_ns.saturating_sub(self.last_expire_ns) >= 1_000_000_000 {
            self.last_expire_ns = now_ns;
            self.asm.expire(now_ns);
        }
        &mut self.ready
    }

    pub fn stats(&self) -> TracerStats {
        TracerStats {
            assembler: self.asm.stats(),
            hold: self.hold.stats(),
        }
    }
}
