//! The hot path: decoded kernel events -> connections -> protocol parsers -> requests -> RED.
//!
//! Plain function calls on one thread; the RED lock is taken once per batch by the caller.
//! The pipeline never touches kernel maps itself: decisions about them (stop capturing a
//! connection, forget a dead process's sockets) are queued in [`KernelOps`] and applied by the
//! ring-buffer loop between batches.
use std::sync::atomic::Ordering::Relaxed;

use apm_common::{ConnEvent, ProcEvent, SockKey, role};

use crate::{
    conn::{ConnState, ConnTable, Connection, Endpoints, HeldRecord, peer_addr},
    discovery::{
        inventory::Inventory, processes::Processes, selection::Selection, selectors::Selectors,
        service_name,
    },
    ebpf::decode::{DataEvent, Event, KIND_NAMES, comm_str, kind_index},
    metrics::{
        n_plus_one::NPlusOne,
        otel::{Collected, OtelConfig, OtelMetrics},
        red::Red,
    },
    protocols::{ParseStats, ParserOut},
    request::Protocol,
    traces::{
        assembler::ConnRef,
        span::{Clock, Span},
        tracer::{Tracer, TracerConfig},
    },
};
use record::{Consumers, Origin};
use stats::Published;

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
    consumers: Consumers,
    /// Connections holding a record back, released at the end of the batch at the latest.
    holding: Vec<SockKey>,
    /// The statistics of the stages the pipeline runs, published after each batch.
    published: Published,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, published: Published) -> Self {
        Self {
            published,
            consumers: Consumers {
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
    pub fn handle(&mut self, event: Event<'_>, red: &mut Red) {
        self.events[kind_index(&event)] += 1;
        match event {
            Event::Data(d) => self.on_data(&d, red),
            Event::ConnOpen(c) => self.on_open(&c, red),
            Event::ConnClose(c) => self.on_close(&c, red),
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
                // Its executable may be a Go program with its own TLS (static: no library
                // load follows).
                self.queue_tls_scan(p.tgid);
            }
            Event::ProcExit(p) => self.on_exit(&p, red),
            Event::ProcExecMap(p) => self.queue_tls_scan(p.tgid),
            Event::ConnTuple(t) => {
                // Sent just before the connection's first data: for a connection opened
                // before the agent started, this creates its entry.
                let conn = self
                    .conns
                    .get_or_insert_with(t.tgid, t.fd, || Connection::new(0, None, [0; 16], 0));
                if let Ok(conn) = conn
                    && (conn.id == 0 || conn.id == t.id)
                {
                    conn.endpoints = Endpoints::from_kernel(&t);
                }
            }
        }
    }

    /// Asks for `tgid`'s executable and libraries to be looked at for TLS: a process start
    /// maps several libraries, so one look per process and batch.
    fn queue_tls_scan(&mut self, tgid: u32) {
        if self.ops.tls_scan.contains(&tgid) {
            return;
        }
        if self.ops.tls_scan.len() < MAX_TLS_SCANS {
            self.ops.tls_scan.push(tgid);
        } else {
            self.published.tls.scans_dropped.fetch_add(1, Relaxed);
        }
    }

    /// A data record: put in order with its connection's others by its number (see
    /// `Connection::admit`), then fed.
    fn on_data(&mut self, d: &DataEvent<'_>, red: &mut Red) {
        let h = &d.header;
        // Off unless `RUST_LOG=apm_agent::pipeline=trace`: then every record, for following a
        // connection's stream by hand.
        log::trace!(
            "data tgid={} tid={} fd={} seq={} {:?} syscall={} total={} captured={} {:?}",
            h.tgid,
            h.tid,
            h.fd,
            h.seq,
            d.direction,
            h.syscall,
            h.total_len,
            h.captured_len,
            String::from_utf8_lossy(&d.payload[..d.payload.len().min(40)])
        );
        self.bytes_captured += d.payload.len() as u64;
        let conn = match self
            .conns
            .get_or_insert_with(h.tgid, h.fd, || Connection::new(0, None, [0; 16], h.ts_ns))
        {
            Ok(conn) => conn,
            Err(_) => {
                self.published
                    .pipeline
                    .connections_overflow
                    .fetch_add(1, Relaxed);
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
            self.feed(&held.event(), red);
        }
        if admission.reset {
            self.reset(h.tgid, h.fd);
        }
        if !admission.hold && !admission.skip {
            self.feed(d, red);
        }
        if let Some(held) = admission.then {
            self.feed(&held.event(), red);
        }
    }

    /// Records of a connection were lost (see `Connection::records_lost`).
    fn reset(&mut self, tgid: u32, fd: u32) {
        if let Some(conn) = self.conns.get_mut(tgid, fd) {
            conn.records_lost(&mut self.stats);
        }
    }

    /// Feeds the record a connection holds back, if any: the record before it was lost.
    fn release_held(&mut self, tgid: u32, fd: u32, red: &mut Red) {
        let Some(held) = self.conns.get_mut(tgid, fd).and_then(|c| c.held.take()) else {
            return;
        };
        self.reset(tgid, fd);
        self.feed(&held.event(), red);
    }

    /// The batch of ring-buffer records is consumed: a record still held back will not see
    /// the one before it any more (the two could only have been swapped within moments).
    pub fn end_batch(&mut self, red: &mut Red) {
        let mut holding = std::mem::take(&mut self.holding);
        for k in holding.drain(..) {
            self.release_held(k.tgid, k.fd, red);
        }
        // Keep the allocation for the next batch.
        self.holding = holding;
    }

    fn on_open(&mut self, c: &ConnEvent, red: &mut Red) {
        log::trace!(
            "open tgid={} tid={} fd={} role={} family={} port={} parent={} id={}",
            c.tgid,
            c.tid,
            c.fd,
            c.role,
            c.family,
            c.port,
            c.parent_tgid,
            c.id
        );
        let excluded = self
            .selection
            .process_excluded(&mut self.procs, c.tgid, &c.comm);
        if excluded {
            // Muted before its first data where the batch allows; kept as ignored so the
            // bytes already on their way are dropped without another decision.
            let mut conn = Connection::new(c.id, None, c.comm, c.ts_ns);
            conn.state = ConnState::Ignored;
            self.release_held(c.tgid, c.fd, red);
            if let Ok(Some(old)) = self.conns.open(c.tgid, c.fd, conn) {
                self.finish(c.tgid, c.fd, old, c.ts_ns, red);
            }
            self.selection.excluded_connections += 1;
            self.ops.mute.push((key(c.tgid, c.fd), c.id));
            return;
        }
        if c.role == role::UNKNOWN || c.parent_tgid != 0 {
            // A socket adopted at its first data (inherited across fork, duplicated), or
            // taken in at its first data by a forked process (the socket-layer capture path):
            // name its process now, after its parent unless it exec'd.
            self.procs.adopted(c.tgid, comm_str(&c.comm), c.parent_tgid);
        }
        let mut conn = Connection::new(c.id, peer_addr(c.family, c.port, &c.addr), c.comm, c.ts_ns);
        // An adopted socket is taken to be seen from its start: inherited sockets are handed
        // over before they carry data (pre-fork servers, PostgreSQL backends), so its
        // exchanges can be numbered like the other end's.
        conn.whole = conn.whole || c.role == role::UNKNOWN;
        self.release_held(c.tgid, c.fd, red);
        match self.conns.open(c.tgid, c.fd, conn) {
            Ok(None) => {}
            // The fd was reused and its close was missed: finish the old connection first.
            Ok(Some(old)) => self.finish(c.tgid, c.fd, old, c.ts_ns, red),
            Err(_) => {
                self.published
                    .pipeline
                    .connections_overflow
                    .fetch_add(1, Relaxed);
                self.ops.mute.push((key(c.tgid, c.fd), c.id));
            }
        }
    }

    fn on_close(&mut self, c: &ConnEvent, red: &mut Red) {
        log::trace!(
            "close tgid={} tid={} fd={} id={}",
            c.tgid,
            c.tid,
            c.fd,
            c.id
        );
        self.release_held(c.tgid, c.fd, red);
        if let Some(conn) = self.conns.remove(c.tgid, c.fd) {
            self.finish(c.tgid, c.fd, conn, c.ts_ns, red);
        }
    }

    fn on_exit(&mut self, p: &ProcEvent, red: &mut Red) {
        while let Some(i) = self.holding.iter().position(|k| k.tgid == p.tgid) {
            let k = self.holding.swap_remove(i);
            self.release_held(k.tgid, k.fd, red);
        }
        // The kernel closes an exiting process's fds without close(): forget them here.
        for (fd, conn) in self.conns.remove_process(p.tgid) {
            self.ops.forget.push(key(p.tgid, fd));
            self.finish(p.tgid, fd, conn, p.ts_ns, red);
        }
        self.consumers.n_plus_one.forget_process(p.tgid);
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
            self.consumers.record(
                &mut self.procs,
                &mut self.stats,
                red,
                &Origin {
                    conn: &cref,
                    peer: conn.peer,
                    comm: &conn.comm,
                },
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
            self.consumers.record(
                &mut self.procs,
                &mut self.stats,
                red,
                &Origin {
                    conn: &cref,
                    peer: conn.peer,
                    comm: &conn.comm,
                },
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
        self.procs.inventory.sweep();
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

    /// The observed processes whose runtime metrics are read, with their resources when
    /// metrics are exported over OTLP.
    pub fn runtime_targets(&mut self) -> Vec<crate::metrics::process_runtime::Target> {
        let with_resource = self.consumers.otel.is_some();
        self.procs.runtime_targets(with_resource)
    }

    /// Spans whose hold time is up (sampled), for the exporter; None when not tracing.
    pub fn ready_spans(&mut self, now_ns: u64) -> Option<&mut Vec<Span>> {
        self.consumers.tracer.as_mut().map(|t| t.tick(now_ns))
    }

    /// The OTLP duration points of this interval, with the temporality they follow; None when
    /// metrics are not exported.
    pub fn collect_metrics(
        &mut self,
        now_monotonic_ns: u64,
    ) -> Option<(Vec<Collected>, OtelConfig, u64)> {
        let now = self.consumers.clock.to_unix(now_monotonic_ns);
        let m = self.consumers.otel.as_mut()?;
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

mod feed;
mod record;
pub mod stats;

#[cfg(test)]
mod tests;
