//! The hot path: decoded kernel events -> connections -> protocol parsers -> requests -> RED.
//!
//! Plain function calls on one thread; the RED lock is taken once per batch by the caller.
//! The pipeline never touches kernel maps itself: decisions about them (stop capturing a
//! connection, forget a dead process's sockets) are queued in [`KernelOps`] and applied by the
//! ring-buffer loop between batches.
use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed};

use apm_common::{ConnEvent, ProcEvent, SockKey, role};

use crate::{
    conn::{ConnState, ConnTable, Connection, Endpoints, HeldRecord, Prefix, peer_addr},
    discovery::{
        inventory::Inventory, processes::Processes, selection::Selection, selectors::Selectors,
        service_name,
    },
    ebpf::decode::{DataEvent, Event, KIND_NAMES, comm_str, kind_index},
    internal::Internal,
    metrics::{
        db::NPlusOneKey,
        n_plus_one::{Flagged, NPlusOne},
        red::{Red, SeriesKey, split_host},
    },
    protocols::{Detection, ParseStats, Parser, ParserOut, Segment},
    request::{Detail, Protocol, Request, Side, Trust},
    traces::{
        assembler::ConnRef,
        span::Span,
        tracer::{Tracer, TracerConfig},
    },
};
use crate::{
    metrics::otel::{Collected, OtelConfig, OtelMetrics},
    traces::span::{Attributes, Clock, Value},
};

/// Undecided first bytes kept for joining with the next segment, at most.
const MAX_DETECT_PREFIX: usize = 512;
/// Connections that may hold a record back at once (each at most one, of at most
/// `MAX_CAPTURE` bytes, until the end of the batch; see `Connection::admit`). Beyond, a
/// record after a one-record gap resets its connection at once, as a wider gap does.
const MAX_HELD: usize = 256;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Data segments tried before a connection is declared unclassified.
    pub detect_attempts: u8,
    /// A response whose end is unknowable is closed after this much silence.
    pub idle_timeout_ns: u64,
    pub max_connections: usize,
    pub max_processes: usize,
    /// Live processes kept in the inventory.
    pub max_inventory_processes: usize,
    /// Processes named at exec per second; beyond, named at their first request.
    pub exec_names_per_sec: u32,
    /// Which processes and connections are observed.
    pub selectors: Selectors,
    /// Trace assembly, when spans are exported.
    pub tracing: Option<TracerConfig>,
    /// OTLP duration histograms, when metrics are exported.
    pub metrics: Option<OtelConfig>,
    /// Executions of one statement within one server request that flag an N+1.
    pub n_plus_one_threshold: u32,
}

/// Consumers of completed requests beyond RED: the exporters' views, present only when their
/// export is on, and the N+1 detector.
struct Sinks {
    tracer: Option<Tracer>,
    otel: Option<OtelMetrics>,
    clock: Clock,
    n_plus_one: NPlusOne,
    /// N+1 findings of the request being recorded, reused.
    flagged: Vec<Flagged>,
}

/// Kernel socket-table changes decided by the pipeline.
#[derive(Debug, Default)]
pub struct KernelOps {
    /// Stop capturing these sockets (key, expected id; 0 = any).
    pub mute: Vec<(SockKey, u64)>,
    /// Remove these sockets from the kernel table (their process is gone).
    pub forget: Vec<SockKey>,
    /// Look for TLS libraries in these processes' maps (they loaded a library).
    pub tls_scan: Vec<u32>,
}

/// Processes queued for a TLS library look-up per batch (a fork storm is not worth more).
const MAX_TLS_SCANS: usize = 1024;

/// The pipeline's state.
pub struct Pipeline {
    cfg: PipelineConfig,
    conns: ConnTable,
    procs: Processes,
    selection: Selection,
    /// Parser output, reused.
    out: ParserOut,
    /// Parser counters per protocol ([`Protocol::index`]).
    stats: [ParseStats; Protocol::ALL.len()],
    /// Events per kind and bytes captured since the last publish (counted locally: the hot
    /// path does no atomic operation per event).
    events: [u64; KIND_NAMES.len()],
    bytes_captured: u64,
    ops: KernelOps,
    sinks: Sinks,
    /// Connections holding a record back, released at the end of the batch at the latest.
    holding: Vec<SockKey>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Self {
        Self {
            sinks: Sinks {
                tracer: cfg.tracing.clone().map(Tracer::new),
                otel: cfg.metrics.map(OtelMetrics::new),
                clock: Clock::now(),
                // One in-flight request per serving thread: bounded like the connections.
                n_plus_one: NPlusOne::new(cfg.n_plus_one_threshold, cfg.max_connections),
                flagged: Vec::new(),
            },
            conns: ConnTable::new(cfg.max_connections),
            procs: Processes::new(cfg.max_processes, {
                // One /proc scan at start; exec and exit events keep it current after.
                let mut inventory =
                    Inventory::new(cfg.max_inventory_processes, cfg.exec_names_per_sec);
                inventory.scan();
                inventory
            }),
            selection: Selection::new(cfg.selectors.clone()),
            cfg,
            out: ParserOut::default(),
            stats: Default::default(),
            events: [0; KIND_NAMES.len()],
            bytes_captured: 0,
            ops: KernelOps::default(),
            holding: Vec::new(),
        }
    }

    /// Handles one decoded event.
    pub fn handle(&mut self, event: Event<'_>, red: &mut Red, internal: &Internal) {
        self.events[kind_index(&event)] += 1;
        match event {
            Event::Data(d) => self.on_data(&d, red, internal),
            Event::ConnOpen(c) => self.on_open(&c, red, internal),
            Event::ConnClose(c) => self.on_close(&c, red, internal),
            // The pid now runs another program: forget its old name and verdict; name it
            // now, while /proc surely has it (a short-lived client may be gone by the time
            // its first request is parsed), as long as the per-second naming budget lasts
            // (a fork-heavy host would otherwise pay three /proc reads per exec). Past it,
            // the name is read at the process's first request.
            Event::ProcExec(p) => {
                self.procs.remove(p.tgid);
                if self.procs.inventory.exec(p.tgid, p.comm, p.ts_ns) {
                    let name = service_name::resolve(p.tgid, comm_str(&p.comm));
                    self.procs.inventory.set_name(p.tgid, name.into_boxed_str());
                    // With selectors, decide it too while its executable is there to see.
                    self.selection
                        .decide_at_exec(&mut self.procs, p.tgid, &p.comm);
                }
            }
            Event::ProcExit(p) => self.on_exit(&p, red, internal),
            Event::ProcExecMap(p) => {
                // A process start maps several libraries: one look per process and batch.
                if !self.ops.tls_scan.contains(&p.tgid) {
                    if self.ops.tls_scan.len() < MAX_TLS_SCANS {
                        self.ops.tls_scan.push(p.tgid);
                    } else {
                        internal.tls_scans_dropped.fetch_add(1, Relaxed);
                    }
                }
            }
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

    /// A data record: put in order with its connection's others by its number (see
    /// `Connection::admit`), then fed.
    fn on_data(&mut self, d: &DataEvent<'_>, red: &mut Red, internal: &Internal) {
        let h = &d.header;
        self.bytes_captured += d.payload.len() as u64;
        let conn = match self
            .conns
            .get_or_insert_with(h.tgid, h.fd, || Connection::new(0, None, [0; 16], h.ts_ns))
        {
            Ok(conn) => conn,
            Err(_) => {
                internal.connections_overflow.fetch_add(1, Relaxed);
                self.ops.mute.push((key(h.tgid, h.fd), 0));
                return;
            }
        };
        let admission = conn.admit(h.seq, self.holding.len() < MAX_HELD);
        if admission.hold {
            conn.held = Some(HeldRecord::new(d));
            if admission.release.is_none() {
                self.holding.push(key(h.tgid, h.fd));
            }
        }
        if let Some(held) = admission.release {
            self.reset(h.tgid, h.fd);
            self.feed(&held.event(), red, internal);
        }
        if admission.reset {
            self.reset(h.tgid, h.fd);
        }
        if !admission.hold && !admission.skip {
            self.feed(d, red, internal);
        }
        if let Some(held) = admission.then {
            self.feed(&held.event(), red, internal);
        }
    }

    /// Records of a connection were lost (see `Connection::records_lost`).
    fn reset(&mut self, tgid: u32, fd: u32) {
        if let Some(conn) = self.conns.get_mut(tgid, fd) {
            conn.records_lost(&mut self.stats);
        }
    }

    /// Feeds the record a connection holds back, if any: the record before it was lost.
    fn release_held(&mut self, tgid: u32, fd: u32, red: &mut Red, internal: &Internal) {
        let Some(held) = self.conns.get_mut(tgid, fd).and_then(|c| c.held.take()) else {
            return;
        };
        self.reset(tgid, fd);
        self.feed(&held.event(), red, internal);
    }

    /// The batch of ring-buffer records is consumed: a record still held back will not see
    /// the one before it any more (the two could only have been swapped within moments).
    pub fn end_batch(&mut self, red: &mut Red, internal: &Internal) {
        let mut holding = std::mem::take(&mut self.holding);
        for k in holding.drain(..) {
            self.release_held(k.tgid, k.fd, red, internal);
        }
        // Keep the allocation for the next batch.
        self.holding = holding;
    }

    /// Feeds one data record, in order, to its connection: detection, then its parser.
    fn feed(&mut self, d: &DataEvent<'_>, red: &mut Red, internal: &Internal) {
        let h = &d.header;
        let now = h.ts_ns;
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
        if matches!(conn.state, ConnState::Detecting { attempts: 0, .. }) {
            // A connection's first data: its endpoints are known now (the tuple event came
            // just before), so the selectors can decide it.
            let ports = match conn.endpoints {
                Some(e) => [e.local.port(), e.remote.port()],
                None => [0, conn.peer.map_or(0, |p| p.port())],
            };
            if !self
                .selection
                .connection_observed(&mut self.procs, h.tgid, &conn.comm, ports)
            {
                conn.state = ConnState::Ignored;
                self.ops.mute.push((key(h.tgid, h.fd), conn.id));
                return;
            }
        }
        let seg = Segment {
            direction: d.direction.into(),
            data: d.payload,
            total_len: h.total_len,
            ts_ns: h.ts_ns,
            tid: h.tid,
        };
        if matches!(conn.state, ConnState::Detecting { attempts: 0, .. }) {
            // A connection's first data: name its process now, while it surely runs (a
            // forked child serving one inherited connection may be gone by the time its
            // first exchange completes, and it never exec'd, so no exec event named it).
            self.procs.get_or_resolve(h.tgid, comm_str(&conn.comm));
        }
        let give_up = match &mut conn.state {
            ConnState::Detecting { attempts, prefix } => {
                // Bytes an earlier segment left undecided, read or written the same way, are
                // joined to this one: a client that reads a message's header apart from its
                // body (MySQL clients read 4 bytes, then the rest) is recognised all the same.
                let joined = match prefix.take() {
                    Some(p) if p.direction == seg.direction => {
                        let mut bytes = p.bytes;
                        bytes.extend_from_slice(seg.data);
                        Some((bytes, p.ts_ns, p.tid))
                    }
                    _ => None,
                };
                let joined_seg = joined.as_ref().map(|(bytes, ts_ns, tid)| Segment {
                    direction: seg.direction,
                    data: bytes,
                    total_len: (bytes.len() - seg.data.len()) as u64 + seg.total_len,
                    ts_ns: *ts_ns,
                    tid: *tid,
                });
                let seg = joined_seg.as_ref().unwrap_or(&seg);
                match Parser::detect(seg) {
                    Detection::Match(mut parser) => {
                        parser.on_segment(
                            seg,
                            &mut self.out,
                            &mut self.stats[parser.protocol().index()],
                        );
                        conn.state = ConnState::Parsing(parser);
                        false
                    }
                    detection => {
                        *attempts = attempts.saturating_add(1);
                        if matches!(detection, Detection::Undecided)
                            && !seg.is_truncated()
                            && seg.data.len() <= MAX_DETECT_PREFIX
                        {
                            *prefix = Some(Box::new(Prefix {
                                direction: seg.direction,
                                bytes: seg.data.to_vec(),
                                ts_ns: seg.ts_ns,
                                tid: seg.tid,
                            }));
                        }
                        // A connection seen from its open is decided on its first bytes; one
                        // first seen mid-stream (opened before the agent started: id 0, or its
                        // first records lost) may start inside a message, so it gets a few
                        // segments to show a message start.
                        let allowed = if conn.id == 0 || !conn.whole {
                            self.cfg.detect_attempts
                        } else {
                            1
                        };
                        let done = (matches!(detection, Detection::NoMatch)
                            && *attempts >= allowed)
                            || *attempts >= self.cfg.detect_attempts;
                        if done {
                            internal.unclassified_connections.fetch_add(1, Relaxed);
                        }
                        done
                    }
                }
            }
            ConnState::Parsing(parser) => {
                parser.on_segment(
                    &seg,
                    &mut self.out,
                    &mut self.stats[parser.protocol().index()],
                );
                if parser.gave_up() {
                    parser.on_close(
                        now,
                        &mut self.out,
                        &mut self.stats[parser.protocol().index()],
                    );
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
        let excluded = self
            .selection
            .process_excluded(&mut self.procs, c.tgid, &c.comm);
        if excluded {
            // Muted before its first data where the batch allows; kept as ignored so the
            // bytes already on their way are dropped without another decision.
            let mut conn = Connection::new(c.id, None, c.comm, c.ts_ns);
            conn.state = ConnState::Ignored;
            self.release_held(c.tgid, c.fd, red, internal);
            if let Ok(Some(old)) = self.conns.open(c.tgid, c.fd, conn) {
                self.finish(c.tgid, c.fd, old, c.ts_ns, red);
            }
            self.selection.excluded_connections += 1;
            self.ops.mute.push((key(c.tgid, c.fd), c.id));
            return;
        }
        if c.role == role::UNKNOWN {
            // A socket adopted at its first data (inherited across fork, duplicated): name
            // its process now, after its parent if it is already gone.
            self.procs.adopted(c.tgid, comm_str(&c.comm), c.parent_tgid);
        }
        let mut conn = Connection::new(c.id, peer_addr(c.family, c.port, &c.addr), c.comm, c.ts_ns);
        // An adopted socket is taken to be seen from its start: inherited sockets are handed
        // over before they carry data (pre-fork servers, PostgreSQL backends), so its
        // exchanges can be numbered like the other end's.
        conn.whole = conn.whole || c.role == role::UNKNOWN;
        self.release_held(c.tgid, c.fd, red, internal);
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

    fn on_close(&mut self, c: &ConnEvent, red: &mut Red, internal: &Internal) {
        self.release_held(c.tgid, c.fd, red, internal);
        if let Some(conn) = self.conns.remove(c.tgid, c.fd) {
            self.finish(c.tgid, c.fd, conn, c.ts_ns, red);
        }
    }

    fn on_exit(&mut self, p: &ProcEvent, red: &mut Red, internal: &Internal) {
        while let Some(i) = self.holding.iter().position(|k| k.tgid == p.tgid) {
            let k = self.holding.swap_remove(i);
            self.release_held(k.tgid, k.fd, red, internal);
        }
        // The kernel closes an exiting process's fds without close(): forget them here.
        for (fd, conn) in self.conns.remove_process(p.tgid) {
            self.ops.forget.push(key(p.tgid, fd));
            self.finish(p.tgid, fd, conn, p.ts_ns, red);
        }
        self.sinks.n_plus_one.forget_process(p.tgid);
        self.procs.remove(p.tgid);
        self.procs.inventory.exit(p.tgid);
    }

    /// A connection ended: flush its parser.
    fn finish(&mut self, tgid: u32, fd: u32, mut conn: Connection, ts_ns: u64, red: &mut Red) {
        let cref = conn_ref(tgid, fd, &conn);
        if let ConnState::Parsing(parser) = &mut conn.state {
            parser.on_close(
                ts_ns,
                &mut self.out,
                &mut self.stats[parser.protocol().index()],
            );
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
    pub fn sweep_dead(&mut self, red: &mut Red, internal: &Internal) -> Vec<u32> {
        let mut dead: Vec<u32> = self
            .conns
            .processes()
            .chain(self.procs.tgids())
            .filter(|tgid| !std::path::Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        dead.sort_unstable();
        dead.dedup();
        self.procs.inventory.sweep();
        for &tgid in &dead {
            self.on_exit(
                &ProcEvent {
                    tgid,
                    ..ProcEvent::default()
                },
                red,
                internal,
            );
        }
        dead
    }

    /// Publishes gauges and parser counters gathered since the last call.
    pub fn publish(&mut self, internal: &Internal) {
        for (counters, stats) in internal.protocols.iter().zip(&self.stats) {
            counters.add(stats);
        }
        internal
            .n_plus_one_untracked
            .store(self.sinks.n_plus_one.overflows(), Relaxed);
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
        self.stats = Default::default();
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
        let inv = &self.procs.inventory;
        internal
            .inventory_processes
            .store(inv.len() as u64, Relaxed);
        internal.inventory_overflow.store(inv.overflowed(), Relaxed);
        internal
            .process_names_deferred
            .store(inv.names_deferred(), Relaxed);
        internal
            .processes_excluded
            .store(self.selection.excluded_processes, Relaxed);
        internal
            .connections_excluded
            .store(self.selection.excluded_connections, Relaxed);
    }

    /// The observed processes whose runtime metrics are read, with their resources when
    /// metrics are exported over OTLP.
    pub fn runtime_targets(&mut self) -> Vec<crate::metrics::process_runtime::Target> {
        let with_resource = self.sinks.otel.is_some();
        self.procs.runtime_targets(with_resource)
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
        from_open: conn.whole,
    }
}

/// Hands what the parser produced on: request starts to the tracer, completed requests to
/// RED (and to the tracer) under the service of the connection's process. Empties `out`.
#[allow(clippy::too_many_arguments)]
fn record(
    procs: &mut Processes,
    stats: &mut [ParseStats; Protocol::ALL.len()],
    red: &mut Red,
    sinks: &mut Sinks,
    conn: &ConnRef,
    peer: Option<SocketAddr>,
    comm: &[u8; 16],
    out: &mut ParserOut,
) {
    for s in out.started.drain(..) {
        if s.side == Side::Server {
            sinks
                .n_plus_one
                .on_server_start(conn.tgid, s.tid, conn.fd, s.seq);
        }
        if let Some(t) = sinks.tracer.as_mut() {
            t.on_start(conn, &s);
        }
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
        let stats = &mut stats[req.protocol.index()];
        stats.requests += 1;
        if req.trust.contains(Trust::END_INFERRED) {
            stats.end_inferred += 1;
        }
        if req.trust.contains(Trust::HEAD_TRUNCATED) {
            stats.head_truncated += 1;
        }
        let remote = peer.or(conn.endpoints.map(|e| SocketAddr::V4(e.remote)));
        let local = conn.endpoints.map(|e| SocketAddr::V4(e.local));
        match &req.detail {
            Detail::Http(http) => {
                let server = match (req.side, http.host.as_deref()) {
                    (Side::Server, _) => None,
                    // server.address/port of a client call: the Host header, else the peer
                    // address.
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
                let series = red.record(service, server, &req, http);
                if let (Some(m), Some(resource)) = (sinks.otel.as_mut(), &resource) {
                    let local_port = match req.side {
                        Side::Server => conn.endpoints.map_or(0, |e| e.local.port()),
                        Side::Client => 0,
                    };
                    m.record(
                        resource,
                        series,
                        local_port,
                        http.version_minor,
                        req.duration_ns(),
                        sinks.clock.to_unix(req.end_ns),
                    );
                }
                let mut extra = Vec::new();
                if req.side == Side::Server {
                    n_plus_one(red, sinks, conn, &req, series, &mut extra);
                }
                if let (Some(t), Some(resource)) = (sinks.tracer.as_mut(), &resource) {
                    // The route as RED interned it: templated once, and bounded like the
                    // metrics (span names must stay low-cardinality too).
                    let route = red.service(series.service).routes.name(series.route);
                    t.on_done(conn, &req, route, (remote, local), resource, extra);
                }
            }
            Detail::Db(db) => {
                // server.address/port of a database call: the peer address.
                let server = match req.side {
                    Side::Client => peer.map_or(0, |p| {
                        let ip = peer_ip.get_or_insert_with(|| p.ip().to_string());
                        red.peer_id(ip, p.port())
                    }),
                    Side::Server => 0,
                };
                let (series, statement) =
                    red.db
                        .record(service, req.side, server, db, req.duration_ns());
                if let (Some(m), Some(resource)) = (sinks.otel.as_mut(), &resource) {
                    m.record(
                        resource,
                        series,
                        0,
                        0,
                        req.duration_ns(),
                        sinks.clock.to_unix(req.end_ns),
                    );
                }
                if req.side == Side::Client {
                    sinks
                        .n_plus_one
                        .on_statement(tgid, req.tid, service, statement);
                }
                if let (Some(t), Some(resource)) = (sinks.tracer.as_mut(), &resource) {
                    t.on_done(conn, &req, "", (remote, local), resource, Vec::new());
                }
            }
        }
    }
}

/// A server request completed: counts the statements it ran in a loop, and names the worst
/// one on its span.
fn n_plus_one(
    red: &mut Red,
    sinks: &mut Sinks,
    conn: &ConnRef,
    req: &Request,
    series: SeriesKey,
    span_attributes: &mut Attributes,
) {
    sinks.flagged.clear();
    sinks
        .n_plus_one
        .on_server_done(conn.tgid, req.tid, conn.fd, req.seq, &mut sinks.flagged);
    for f in &sinks.flagged {
        red.db.record_n_plus_one(NPlusOneKey {
            service: f.service,
            route: series.route,
            statement: f.statement,
        });
    }
    if let Some(worst) = sinks.flagged.iter().max_by_key(|f| f.count) {
        span_attributes.push((
            "apm.db.n_plus_one.query.text",
            Value::Str(red.db.statement(worst.service, worst.statement).to_owned()),
        ));
        span_attributes.push((
            "apm.db.n_plus_one.count",
            Value::Int(i64::from(worst.count)),
        ));
    }
}

#[cfg(test)]
mod tests;
