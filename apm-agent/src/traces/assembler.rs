//! Trace context for requests as they start, and spans when they complete.
//!
//! Rules, in order, when a request starts:
//! - server side: a valid `traceparent` joins that trace; else, when the connection's other end
//!   is a client request observed on this host (same endpoints mirrored, same sequence number),
//!   the server span becomes its child; else a new trace;
//! - client side: a call made by a thread while it serves a request is a child of that server
//!   span; a call that carries its own `traceparent` (an instrumented app) is linked to it;
//!   else a new trace.
//!
//! The two ends of a same-host connection can reach the agent in either order (the server's
//! read may return before the client's write does), so a server request that found no client
//! waits in `unpaired` and is re-parented when the client shows up; finished spans are held a
//! short while ([`AssemblerConfig::hold_ns`]) so such late links still apply.
//!
//! Every table is keyed by outside input (pids, fds, threads, tuples) and bounded; overflows
//! are counted and the request falls back to a new trace.
use rustc_hash::FxHashMap;

use super::{sampling::TraceSampler, span::Ids};
use crate::{
    conn::Endpoints,
    request::{Side, Started},
};

/// Settings.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    pub sampler: TraceSampler,
    /// Requests in flight tracked at once.
    pub max_open: usize,
    /// Finished spans held for late links before they are handed on.
    pub hold_ns: u64,
}

/// Trace identity of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    /// Head decision (errors and slow requests are kept regardless).
    pub sampled: bool,
    /// An instrumented caller's own span, linked rather than parented.
    pub link: Option<([u8; 16], [u8; 8])>,
    /// When the request started (kernel monotonic ns): entries of requests that never
    /// complete expire after [`MAX_OPEN_NS`].
    pub start_ns: u64,
}

/// Requests still open after this long are forgotten (their completion, if it ever comes,
/// starts a new trace).
pub const MAX_OPEN_NS: u64 = 300_000_000_000;

/// The connection a request travels on.
#[derive(Debug, Clone, Copy)]
pub struct ConnRef {
    pub tgid: u32,
    pub fd: u32,
    /// Both endpoints, when the kernel sent them.
    pub endpoints: Option<Endpoints>,
    /// Seen from its open: its sequence numbers count from its first request, so they can be
    /// compared with the other end's.
    pub from_open: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct OpenKey {
    tgid: u32,
    fd: u32,
    side: Side,
    seq: u64,
}

/// Counters for the agent's own metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Requests whose context could not be tracked (table full): exported as new traces.
    pub open_overflow: u64,
    /// Server spans made children of a same-host client span.
    pub paired: u64,
}

/// The trace-context state of the event thread.
#[derive(Debug)]
pub struct Assembler {
    cfg: AssemblerConfig,
    ids: Ids,
    open: FxHashMap<OpenKey, Ctx>,
    /// The server request each thread (tgid, tid) is serving.
    serving: FxHashMap<(u32, u32), Ctx>,
    /// Client requests on same-host-pairable connections, by (endpoints, seq).
    clients: FxHashMap<(Endpoints, u64), Ctx>,
    /// Server requests on pairable connections that found no client yet, by the client's
    /// view of the connection and seq: (server's key, its provisional trace).
    unpaired: FxHashMap<(Endpoints, u64), (OpenKey, u32)>,
    /// Provisional trace ids replaced by a late pairing -> the trace they joined.
    remap: FxHashMap<[u8; 16], Remapped>,
    stats: AssemblerStats,
}

/// Where a provisional trace went.
#[derive(Debug, Clone, Copy)]
struct Remapped {
    trace_id: [u8; 16],
    sampled: bool,
    /// Forgotten after this (kernel monotonic ns).
    until_ns: u64,
}

impl Assembler {
    pub fn new(cfg: AssemblerConfig) -> Self {
        Self {
            cfg,
            ids: Ids::new(),
            open: FxHashMap::default(),
            serving: FxHashMap::default(),
            clients: FxHashMap::default(),
            unpaired: FxHashMap::default(),
            remap: FxHashMap::default(),
            stats: AssemblerStats::default(),
        }
    }

    /// A request's head was parsed: give it its trace context.
    pub fn on_start(&mut self, conn: &ConnRef, s: &Started) {
        let mut ctx = match s.side {
            Side::Server => self.server_ctx(conn, s),
            Side::Client => self.client_ctx(conn, s),
        };
        ctx.start_ns = s.start_ns;
        if self.open.len() >= self.cfg.max_open {
            self.stats.open_overflow += 1;
            return;
        }
        self.open.insert(
            OpenKey {
                tgid: conn.tgid,
                fd: conn.fd,
                side: s.side,
                seq: s.seq,
            },
            ctx,
        );
        let key = OpenKey {
            tgid: conn.tgid,
            fd: conn.fd,
            side: s.side,
            seq: s.seq,
        };
        let pairable = conn.endpoints.filter(|_| conn.from_open);
        match s.side {
            Side::Server => {
                let max = self.cfg.max_open;
                bounded_insert(
                    &mut self.serving,
                    (conn.tgid, s.tid),
                    ctx,
                    max,
                    &mut self.stats,
                );
                if let Some(ep) = pairable
                    && ctx.parent.is_none()
                {
                    let max = self.cfg.max_open;
                    let v = (key, s.tid);
                    bounded_insert(
                        &mut self.unpaired,
                        (ep.mirrored(), s.seq),
                        v,
                        max,
                        &mut self.stats,
                    );
                }
            }
            Side::Client => {
                if let Some(ep) = pairable {
                    match self.unpaired.remove(&(ep, s.seq)) {
                        Some((server, tid)) => self.pair_late(server, tid, &ctx, s.start_ns),
                        None => {
                            let max = self.cfg.max_open;
                            bounded_insert(
                                &mut self.clients,
                                (ep, s.seq),
                                ctx,
                                max,
                                &mut self.stats,
                            );
                        }
                    }
                }
            }
        }
    }

    /// The client end of a server request that already started arrived: the server span
    /// (a provisional root) becomes its child, and its provisional trace joins the client's.
    fn pair_late(&mut self, server: OpenKey, tid: u32, client: &Ctx, now_ns: u64) {
        let Some(ctx) = self.open.get_mut(&server) else {
            return;
        };
        let provisional = ctx.trace_id;
        ctx.trace_id = client.trace_id;
        ctx.parent = Some(client.span_id);
        ctx.sampled = client.sampled;
        let joined = *ctx;
        if let Some(serving) = self.serving.get_mut(&(server.tgid, tid))
            && serving.span_id == joined.span_id
        {
            *serving = joined;
        }
        if self.remap.len() >= self.cfg.max_open {
            self.stats.open_overflow += 1;
            return;
        }
        self.remap.insert(
            provisional,
            Remapped {
                trace_id: client.trace_id,
                sampled: client.sampled,
                until_ns: now_ns.saturating_add(self.cfg.hold_ns.saturating_mul(4)),
            },
        );
        self.stats.paired += 1;
    }

    /// A request completed: its final context (None when it was never tracked).
    pub fn on_done(&mut self, conn: &ConnRef, side: Side, seq: u64, tid: u32) -> Option<Ctx> {
        let key = OpenKey {
            tgid: conn.tgid,
            fd: conn.fd,
            side,
            seq,
        };
        let mut ctx = self.open.remove(&key)?;
        match side {
            Side::Server => {
                if self
                    .serving
                    .get(&(conn.tgid, tid))
                    .is_some_and(|c| c.span_id == ctx.span_id)
                {
                    self.serving.remove(&(conn.tgid, tid));
                }
                if let Some(ep) = conn.endpoints {
                    self.unpaired.remove(&(ep.mirrored(), seq));
                }
            }
            Side::Client => {
                if let Some(ep) = conn.endpoints
                    && self
                        .clients
                        .get(&(ep, seq))
                        .is_some_and(|c| c.span_id == ctx.span_id)
                {
                    self.clients.remove(&(ep, seq));
                }
            }
        }
        if let Some(r) = self.remap.get(&ctx.trace_id) {
            ctx.trace_id = r.trace_id;
            ctx.sampled = r.sampled;
        }
        Some(ctx)
    }

    /// The final trace of a span finished earlier (late pairings apply to held spans).
    pub fn resolve(&self, trace_id: [u8; 16]) -> Option<([u8; 16], bool)> {
        self.remap.get(&trace_id).map(|r| (r.trace_id, r.sampled))
    }

    /// Forgets expired remaps; called about once a second.
    pub fn expire(&mut self, now_ns: u64) {
        self.remap.retain(|_, r| r.until_ns > now_ns);
        let live = |c: &Ctx| c.start_ns.saturating_add(MAX_OPEN_NS) > now_ns;
        self.open.retain(|_, c| live(c));
        self.serving.retain(|_, c| live(c));
        self.clients.retain(|_, c| live(c));
        let open = &self.open;
        self.unpaired.retain(|_, (key, _)| open.contains_key(key));
    }

    fn server_ctx(&mut self, conn: &ConnRef, s: &Started) -> Ctx {
        if let Some(tp) = s.traceparent {
            return Ctx {
                trace_id: tp.trace_id,
                span_id: self.ids.span_id(),
                parent: Some(tp.span_id),
                sampled: self
                    .cfg
                    .sampler
                    .decide(&tp.trace_id, Some(tp.flags & 1 == 1)),
                link: None,
                start_ns: 0,
            };
        }
        if let (Some(ep), true) = (conn.endpoints, conn.from_open)
            && let Some(client) = self.clients.remove(&(ep.mirrored(), s.seq))
        {
            self.stats.paired += 1;
            return Ctx {
                trace_id: client.trace_id,
                span_id: self.ids.span_id(),
                parent: Some(client.span_id),
                sampled: client.sampled,
                link: None,
                start_ns: 0,
            };
        }
        self.root()
    }

    fn client_ctx(&mut self, conn: &ConnRef, s: &Started) -> Ctx {
        let link = s.traceparent.map(|tp| (tp.trace_id, tp.span_id));
        if let Some(parent) = self.serving.get(&(conn.tgid, s.tid)).copied() {
            return Ctx {
                trace_id: parent.trace_id,
                span_id: self.ids.span_id(),
                parent: Some(parent.span_id),
                sampled: parent.sampled,
                link,
                start_ns: 0,
            };
        }
        Ctx {
            link,
            ..self.root()
        }
    }

    /// A new trace (a request whose start was not tracked gets one too).
    pub fn root(&mut self) -> Ctx {
        let trace_id = self.ids.trace_id();
        Ctx {
            trace_id,
            span_id: self.ids.span_id(),
            parent: None,
            sampled: self.cfg.sampler.decide(&trace_id, None),
            link: None,
            start_ns: 0,
        }
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }
}

/// Inserts unless the table is at its budget (an existing key is always replaced); a
/// refused insert is counted with the other context overflows.
fn bounded_insert<K: std::hash::Hash + Eq, V>(
    map: &mut FxHashMap<K, V>,
    key: K,
    value: V,
    max: usize,
    stats: &mut AssemblerStats,
) {
    if map.len() >= max && !map.contains_key(&key) {
        stats.open_overflow += 1;
        return;
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::{request::TraceParent, traces::sampling::Root};

    fn asm() -> Assembler {
        Assembler::new(AssemblerConfig {
            sampler: TraceSampler::ParentBased(Root::AlwaysOn),
            max_open: 100,
            hold_ns: 1_000_000_000,
        })
    }

    fn started(side: Side, seq: u64, tid: u32, tp: Option<TraceParent>) -> Started {
        Started {
            side,
            seq,
            tid,
            start_ns: 1,
            traceparent: tp,
        }
    }

    fn ep(local: u16, remote: u16) -> Endpoints {
        let lo = Ipv4Addr::LOCALHOST;
        Endpoints {
            local: SocketAddr::new(lo.into(), local),
            remote: SocketAddr::new(lo.into(), remote),
        }
    }

    fn conn(tgid: u32, fd: u32, endpoints: Option<Endpoints>) -> ConnRef {
        ConnRef {
            tgid,
            fd,
            endpoints,
            from_open: true,
        }
    }

    #[test]
    fn client_calls_of_a_serving_thread_are_its_children_and_same_host_servers_theirs() {
        let mut a = asm();
        // Service A (pid 10) serves on fd 3 and, on the same thread, calls B (pid 20).
        let a_in = conn(10, 3, Some(ep(8000, 50000)));
        let a_out = conn(10, 4, Some(ep(40000, 9000)));
        let b_in = conn(20, 5, Some(ep(9000, 40000)));
        a.on_start(&a_in, &started(Side::Server, 0, 11, None));
        a.on_start(&a_out, &started(Side::Client, 0, 11, None));
        a.on_start(&b_in, &started(Side::Server, 0, 21, None));
        let b = a.on_done(&b_in, Side::Server, 0, 21).expect("tracked");
        let call = a.on_done(&a_out, Side::Client, 0, 11).expect("tracked");
        let root = a.on_done(&a_in, Side::Server, 0, 11).expect("tracked");
        assert_eq!(root.parent, None);
        assert_eq!(call.trace_id, root.trace_id);
        assert_eq!(call.parent, Some(root.span_id));
        assert_eq!(b.trace_id, root.trace_id);
        assert_eq!(b.parent, Some(call.span_id));
        assert_eq!(a.stats().paired, 1);
    }

    #[test]
    fn a_server_seen_before_its_client_is_re_parented_late() {
        let mut a = asm();
        let a_in = conn(10, 3, Some(ep(8000, 50000)));
        let a_out = conn(10, 4, Some(ep(40000, 9000)));
        let b_in = conn(20, 5, Some(ep(9000, 40000)));
        a.on_start(&a_in, &started(Side::Server, 0, 11, None));
        // B's read returned before A's write did.
        a.on_start(&b_in, &started(Side::Server, 0, 21, None));
        a.on_start(&a_out, &started(Side::Client, 0, 11, None));
        let call = a.on_done(&a_out, Side::Client, 0, 11).expect("tracked");
        let b = a.on_done(&b_in, Side::Server, 0, 21).expect("tracked");
        assert_eq!(b.trace_id, call.trace_id);
        assert_eq!(b.parent, Some(call.span_id));
    }

    #[test]
    fn traceparent_joins_on_servers_and_links_on_clients() {
        let mut a = asm();
        let tp = TraceParent {
            trace_id: [9; 16],
            span_id: [8; 8],
            flags: 1,
        };
        let c = conn(10, 3, None);
        a.on_start(&c, &started(Side::Server, 0, 1, Some(tp)));
        let s = a.on_done(&c, Side::Server, 0, 1).expect("tracked");
        assert_eq!(
            (s.trace_id, s.parent, s.sampled),
            ([9; 16], Some([8; 8]), true)
        );
        let out = conn(30, 4, None);
        a.on_start(&out, &started(Side::Client, 0, 2, Some(tp)));
        let cl = a.on_done(&out, Side::Client, 0, 2).expect("tracked");
        assert_eq!(cl.link, Some(([9; 16], [8; 8])));
        assert_ne!(
            cl.trace_id, [9; 16],
            "a new trace, linked to the app's own span"
        );
        // Sequence numbers keep pipelined requests apart; unknown ones yield nothing.
        assert!(a.on_done(&out, Side::Client, 7, 2).is_none());
    }

    #[test]
    fn requests_that_never_complete_expire_and_tables_stay_bounded() {
        let mut a = Assembler::new(AssemblerConfig {
            sampler: TraceSampler::AlwaysOn,
            max_open: 2,
            hold_ns: 1,
        });
        for fd in 0..5 {
            a.on_start(&conn(1, fd, None), &started(Side::Server, 0, fd, None));
        }
        assert_eq!(a.open.len(), 2);
        assert_eq!(a.serving.len(), 2);
        assert_eq!(a.stats().open_overflow, 3, "refused before any other table");
        a.expire(MAX_OPEN_NS + 2);
        assert!(a.open.is_empty() && a.serving.is_empty());
        assert!(a.on_done(&conn(1, 0, None), Side::Server, 0, 0).is_none());
    }
}
