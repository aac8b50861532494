//! The hot path: decoded kernel events -> connections -> protocol parsers -> requests -> RED.
//!
//! Plain function calls on one thread; the RED lock is taken once per batch by the caller.
//! The pipeline never touches kernel maps itself: decisions about them (stop capturing a
//! connection, forget a dead process's sockets) are queued in [`KernelOps`] and applied by the
//! ring-buffer loop between batches.
use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed};

use apm_common::{ConnEvent, ProcEvent, SockKey};

use crate::{
    conn::{ConnState, ConnTable, Connection, Endpoints, peer_addr},
    discovery::processes::Processes,
    ebpf::decode::{DataEvent, Event, comm_str, kind_index},
    internal::Internal,
    metrics::red::{Red, split_host},
    protocols::{Detection, ParseStats, Parser, ParserOut, Segment},
    request::{Side, Trust},
    traces::{
        assembler::ConnRef,
        span::Span,
        tracer::{Tracer, TracerConfig},
    },
};
use crate::{
    metrics::otel::{Collected, OtelConfig, OtelMetrics},
    traces::span::Clock,
};

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Data segments tried before a connection is declared unclassified.
    pub detect_attempts: u8,
    /// A response whose end is unknowable is closed after this much silence.
    pub idle_timeout_ns: u64,
    pub max_connections: usize,
    pub max_processes: usize,
    /// Trace assembly, when spans are exported.
    pub tracing: Option<TracerConfig>,
    /// OTLP duration histograms, when metrics are exported.
    pub metrics: Option<OtelConfig>,
}

/// Consumers of completed requests beyond RED, present only when their export is on.
struct Sinks {
    tracer: Option<Tracer>,
    otel: Option<OtelMetrics>,
    clock: Clock,
}

/// Kernel socket-table changes decided by the pipeline.
#[derive(Debug, Default)]
pub struct KernelOps {
    /// Stop capturing these sockets (key, expected id; 0 = any).
    pub mute: Vec<(SockKey, u64)>,
    /// Remove these sockets from the kernel table (their process is gone).
    pub forget: Vec<SockKey>,
}

/// The pipeline's state.
pub struct Pipeline {
    cfg: PipelineConfig,
    conns: ConnTable,
    procs: Processes,
    /// Parser output, reused.
    out: ParserOut,
    stats: ParseStats,
    /// Events per kind and bytes captured since the last publish (counted locally: the hot
    /// path does no atomic operation per event).
    events: [u64; 6],
    bytes_captured: u64,
    ops: KernelOps,
    sinks: Sinks,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Self {
        Self {
            sinks: Sinks {
                tracer: cfg.tracing.clone().map(Tracer::new),
                otel: cfg.metrics.map(OtelMetrics::new),
                clock: Clock::now(),
            },
            conns: ConnTable::new(cfg.max_connections),
            procs: Processes::new(cfg.max_processes),
            cfg,
            out: ParserOut::default(),
            stats: ParseStats::default(),
            events: [0; 6],
            bytes_captured: 0,
            ops: KernelOps::default(),
        }
    }

    /// Handles one decoded event.
    pub fn handle(&mut self, event: Event<'_>, red: &mut Red, internal: &Internal) {
        self.events[kind_index(&event)] += 1;
        match event {
            Event::Data(d) => self.on_data(&d, red, internal),
            Event::ConnOpen(c) => self.on_open(&c, red, internal),
            Event::ConnClose(c) => self.on_close(&c, red),
            // The pid now runs another program: name it again, now, while /proc still has it
            // (a short-lived client may be gone by the time its first request is parsed).
            Event::ProcExec(p) => {
                self.procs.remove(p.tgid);
                self.procs.get_or_resolve(p.tgid, comm_str(&p.comm));
            }
            Event::ProcExit(p) => self.on_exit(&p, red),
            Event::ConnTuple(t) => {
                // Sent just before the connection's first data: for a connection opened
                // before the agent started, this creates its entry.
                let conn = self
                    .conns
                    .get_or_insert_with(t.tgid, t.fd, || Connection::new(0, None, [0; 16], 0));
                if let Ok(conn) = conn
                    && (conn.id == 0 || conn.id == t.id)
                {
                    conn.endpoints = Some(Endpoints::from_kernel(
                        t.local_addr,
                        t.local_port,
                        t.remote_addr,
                        t.remote_port,
                    ));
                }
            }
        }
    }

    fn on_data(&mut self, d: &DataEvent<'_>, red: &mut Red, internal: &Internal) {
        let h = &d.header;
        let now = h.ts_ns;
        self.bytes_captured += d.payload.len() as u64;
        let conn = match self
            .conns
            .get_or_insert_with(h.tgid, h.fd, || Connection::new(0, None, [0; 16], now))
        {
            Ok(conn) => conn,
            Err(_) => {
                internal.connections_overflow.fetch_add(1, Relaxed);
                self.ops.mute.push((key(h.tgid, h.fd), 0));
                return;
            }
        };
        conn.last_activity_ns = now;
        let seg = Segment {
            direction: d.direction,
            data: d.payload,
            total_len: h.total_len,
            ts_ns: h.ts_ns,
            tid: h.tid,
        };
        let give_up = match &mut conn.state {
            ConnState::Detecting { attempts } => match Parser::detect(&seg) {
                Detection::Match(mut parser) => {
                    parser.on_segment(&seg, &mut self.out, &mut self.stats);
                    conn.state = ConnState::Parsing(parser);
                    false
                }
                detection => {
                    *attempts = attempts.saturating_add(1);
                    // A connection seen from its open is decided on its first bytes; one first
                    // seen mid-stream (opened before the agent started: id 0) may start inside
                    // a message, so it gets a few segments to show a message start.
                    let allowed = if conn.id == 0 {
                        self.cfg.detect_attempts
                    } else {
                        1
                    };
                    let done = (matches!(detection, Detection::NoMatch) && *attempts >= allowed)
                        || *attempts >= self.cfg.detect_attempts;
                    if done {
                        internal.unclassified_connections.fetch_add(1, Relaxed);
                    }
                    done
                }
            },
            ConnState::Parsing(parser) => {
                parser.on_segment(&seg, &mut self.out, &mut self.stats);
                if parser.gave_up() {
                    parser.on_close(now, &mut self.out, &mut self.stats);
                    true
                } else {
                    false
                }
            }
            ConnState::Ignored => false,
        };
        if give_up {
            conn.state = ConnState::Ignored;
            self.ops.mute.push((key(h.tgid, h.fd), conn.id));
        }
        let cref = conn_ref(h.tgid, h.fd, conn);
        let (peer, comm) = (conn.peer, conn.comm);
        record(
            &mut self.procs,
            &mut self.stats,
            red,
            &mut self.sinks,
            &cref,
            peer,
            &comm,
            &mut self.out,
        );
    }

    fn on_open(&mut self, c: &ConnEvent, red: &mut Red, internal: &Internal) {
        let conn = Connection::new(c.id, peer_addr(c.family, c.port, &c.addr), c.comm, c.ts_ns);
        match self.conns.open(c.tgid, c.fd, conn) {
            Ok(None) => {}
            // The fd was reused and its close was missed: finish the old connection first.
            Ok(Some(old)) => self.finish(c.tgid, c.fd, old, c.ts_ns, red),
            Err(_) => {
                internal.connections_overflow.fetch_add(1, Relaxed);
                self.ops.mute.push((key(c.tgid, c.fd), c.id));
            }
        }
    }

    fn on_close(&mut self, c: &ConnEvent, red: &mut Red) {
        if let Some(conn) = self.conns.remove(c.tgid, c.fd) {
            self.finish(c.tgid, c.fd, conn, c.ts_ns, red);
        }
    }

    fn on_exit(&mut self, p: &ProcEvent, red: &mut Red) {
        // The kernel closes an exiting process's fds without close(): forget them here.
        for (fd, conn) in self.conns.remove_process(p.tgid) {
            self.ops.forget.push(key(p.tgid, fd));
            self.finish(p.tgid, fd, conn, p.ts_ns, red);
        }
        self.procs.remove(p.tgid);
    }

    /// A connection ended: flush its parser.
    fn finish(&mut self, tgid: u32, fd: u32, mut conn: Connection, ts_ns: u64, red: &mut Red) {
        let cref = conn_ref(tgid, fd, &conn);
        if let ConnState::Parsing(parser) = &mut conn.state {
            parser.on_close(ts_ns, &mut self.out, &mut self.stats);
            record(
                &mut self.procs,
                &mut self.stats,
                red,
                &mut self.sinks,
                &cref,
                conn.peer,
                &conn.comm,
                &mut self.out,
            );
        }
    }

    /// Finishes responses whose end can only be inferred once their connection went quiet.
    pub fn housekeeping(&mut self, now_ns: u64, red: &mut Red) {
        let idle = self.cfg.idle_timeout_ns;
        for (tgid, fd, conn) in self.conns.iter_mut() {
            let ConnState::Parsing(parser) = &mut conn.state else {
                continue;
            };
            if now_ns.saturating_sub(conn.last_activity_ns) < idle {
                continue;
            }
            parser.on_idle(&mut self.out);
            let cref = conn_ref(tgid, fd, conn);
            record(
                &mut self.procs,
                &mut self.stats,
                red,
                &mut self.sinks,
                &cref,
                conn.peer,
                &conn.comm,
                &mut self.out,
            );
        }
    }

    /// Drops processes that vanished without an exit event (lost events), with their
    /// connections. Returns their pids so the caller can clean the kernel table too.
    pub fn sweep_dead(&mut self, red: &mut Red) -> Vec<u32> {
        let mut dead: Vec<u32> = self
            .conns
            .processes()
            .chain(self.procs.tgids())
            .filter(|tgid| !std::path::Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        dead.sort_unstable();
        dead.dedup();
        for &tgid in &dead {
            self.on_exit(
                &ProcEvent {
                    tgid,
                    ..ProcEvent::default()
                },
                red,
            );
        }
        dead
    }

    /// Publishes gauges and parser counters gathered since the last call.
    pub fn publish(&mut self, internal: &Internal) {
        internal.http.add(&self.stats);
        if let Some(m) = &self.sinks.otel {
            internal.otlp_series_overflow.store(m.overflows(), Relaxed);
        }
        if let Some(t) = &self.sinks.tracer {
            let st = t.stats();
            internal
                .spans_sampled_out
                .store(st.hold.sampled_out, Relaxed);
            internal.spans_released_early.store(st.hold.early, Relaxed);
            internal
                .trace_context_overflow
                .store(st.assembler.open_overflow, Relaxed);
            internal.spans_paired.store(st.assembler.paired, Relaxed);
        }
        self.stats = ParseStats::default();
        for (counter, n) in internal.events_read.iter().zip(&mut self.events) {
            counter.fetch_add(std::mem::take(n), Relaxed);
        }
        internal
            .bytes_captured
            .fetch_add(std::mem::take(&mut self.bytes_captured), Relaxed);
        internal
            .connections_tracked
            .store(self.conns.len() as u64, Relaxed);
        internal
            .processes_tracked
            .store(self.procs.len() as u64, Relaxed);
        internal
            .processes_overflow
            .store(self.procs.overflowed(), Relaxed);
    }

    /// Spans whose hold time is up (sampled), for the exporter; None when not tracing.
    pub fn ready_spans(&mut self, now_ns: u64) -> Option<&mut Vec<Span>> {
        self.sinks.tracer.as_mut().map(|t| t.tick(now_ns))
    }

    /// The OTLP duration points of this interval, with the temporality they follow; None when
    /// metrics are not exported.
    pub fn collect_metrics(
        &mut self,
        now_monotonic_ns: u64,
    ) -> Option<(Vec<Collected>, OtelConfig, u64)> {
        let now = self.sinks.clock.to_unix(now_monotonic_ns);
        let m = self.sinks.otel.as_mut()?;
        Some((m.collect(now), m.config(), now))
    }

    /// Kernel table changes to apply.
    pub fn kernel_ops(&mut self) -> &mut KernelOps {
        &mut self.ops
    }
}

fn key(tgid: u32, fd: u32) -> SockKey {
    SockKey { tgid, fd }
}

/// The tracing view of a connection.
fn conn_ref(tgid: u32, fd: u32, conn: &Connection) -> ConnRef {
    ConnRef {
        tgid,
        fd,
        endpoints: conn.endpoints,
        from_open: conn.id != 0,
    }
}

/// Hands what the parser produced on: request starts to the tracer, completed requests to
/// RED (and to the tracer) under the service of the connection's process. Empties `out`.
#[allow(clippy::too_many_arguments)]
fn record(
    procs: &mut Processes,
    stats: &mut ParseStats,
    red: &mut Red,
    sinks: &mut Sinks,
    conn: &ConnRef,
    peer: Option<SocketAddr>,
    comm: &[u8; 16],
    out: &mut ParserOut,
) {
    match sinks.tracer.as_mut() {
        Some(t) => out.started.drain(..).for_each(|s| t.on_start(conn, &s)),
        None => out.started.clear(),
    }
    if out.done.is_empty() {
        return;
    }
    let tgid = conn.tgid;
    let entry = procs.get_or_resolve(tgid, comm_str(comm));
    let service = match entry.service_id {
        Some(id) => id,
        None => {
            let id = red.service_id(&entry.service);
            entry.service_id = Some(id);
            id
        }
    };
    let exporting = sinks.tracer.is_some() || sinks.otel.is_some();
    let resource = exporting.then(|| procs.resource(tgid)).flatten();
    let mut peer_ip: Option<String> = None;
    for req in out.done.drain(..) {
        stats.requests += 1;
        if req.trust.contains(Trust::END_INFERRED) {
            stats.end_inferred += 1;
        }
        if req.trust.contains(Trust::HEAD_TRUNCATED) {
            stats.head_truncated += 1;
        }
        let server = match (req.side, req.http.host.as_deref()) {
            (Side::Server, _) => None,
            // server.address/port of a client call: the Host header, else the peer address.
            (Side::Client, Some(host)) => {
                let (host, port) = split_host(host);
                Some((host, port.unwrap_or(80)))
            }
            (Side::Client, None) => peer.map(|p| {
                (
                    peer_ip.get_or_insert_with(|| p.ip().to_string()).as_str(),
                    p.port(),
                )
            }),
        };
        let series = red.record(service, server, &req);
        if let (Some(m), Some(resource)) = (sinks.otel.as_mut(), &resource) {
            let local_port = match req.side {
                Side::Server => conn.endpoints.map_or(0, |e| e.local.port()),
                Side::Client => 0,
            };
            m.record(
                resource,
                series,
                local_port,
                req.http.version_minor,
                req.duration_ns(),
                sinks.clock.to_unix(req.end_ns),
            );
        }
        if let (Some(t), Some(resource)) = (sinks.tracer.as_mut(), &resource) {
            let remote = peer.or(conn.endpoints.map(|e| SocketAddr::V4(e.remote)));
            let local = conn.endpoints.map(|e| SocketAddr::V4(e.local));
            // The route as RED interned it: templated once, and bounded like the metrics (span
            // names must stay low-cardinality too).
            let route = red.service(series.service).routes.name(series.route);
            t.on_done(conn, &req, route, (remote, local), resource);
        }
    }
}
