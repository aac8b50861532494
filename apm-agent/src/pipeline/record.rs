//! Where completed requests go: RED under the service of the connection's process, and the
//! consumers beyond it that are on (the tracer and the OTLP duration histograms, present only
//! when their export is on) and the N+1 detector.
use std::net::SocketAddr;

use crate::{
    discovery::processes::Processes,
    ebpf::decode::comm_str,
    metrics::{
        db::NPlusOneKey,
        n_plus_one::{Flagged, NPlusOne},
        otel::OtelMetrics,
        red::{Red, SeriesKey, split_host},
    },
    protocols::{ParseStats, ParserOut},
    request::{Detail, Protocol, Request, Side, Trust},
    traces::{
        assembler::ConnRef,
        span::{Attributes, Clock, Value},
        tracer::Tracer,
    },
};

/// Consumers of completed requests beyond RED: the exporters' views, present only when their
/// export is on, and the N+1 detector. (Not the sinks of `export/`: these feed them.)
pub(super) struct Consumers {
    pub(super) tracer: Option<Tracer>,
    pub(super) otel: Option<OtelMetrics>,
    pub(super) clock: Clock,
    pub(super) n_plus_one: NPlusOne,
    /// N+1 findings of the request being recorded, reused.
    pub(super) flagged: Vec<Flagged>,
}

/// The connection a parser's output came from.
#[derive(Clone, Copy)]
pub(super) struct Origin<'a> {
    pub(super) conn: &'a ConnRef,
    pub(super) peer: Option<SocketAddr>,
    pub(super) comm: &'a [u8; 16],
}

impl Consumers {
    /// Hands what the parser produced on: request starts to the tracer, completed requests to
    /// RED (and to the tracer) under the service of the connection's process. Empties `out`.
    pub(super) fn record(
        &mut self,
        procs: &mut Processes,
        stats: &mut [ParseStats; Protocol::ALL.len()],
        red: &mut Red,
        origin: &Origin<'_>,
        out: &mut ParserOut,
    ) {
        let Origin { conn, peer, comm } = *origin;
        for s in out.started.drain(..) {
            if s.side == Side::Server {
                self.n_plus_one
                    .on_server_start(conn.tgid, s.tid, conn.fd, s.seq);
            }
            if let Some(t) = self.tracer.as_mut() {
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
        let exporting = self.tracer.is_some() || self.otel.is_some();
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
            let remote = peer.or(conn.endpoints.map(|e| e.remote));
            let local = conn.endpoints.map(|e| e.local);
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
                        // A connection seeded at start has no open event, hence no peer:
                        // its endpoints are read from the socket.
                        (Side::Client, None) => remote.map(|p| {
                            (
                                peer_ip.get_or_insert_with(|| p.ip().to_string()).as_str(),
                                p.port(),
                            )
                        }),
                    };
                    let series = red.record(service, server, &req, http);
                    if let (Some(m), Some(resource)) = (self.otel.as_mut(), &resource) {
                        let local_port = match req.side {
                            Side::Server => conn.endpoints.map_or(0, |e| e.local.port()),
                            Side::Client => 0,
                        };
                        m.record(
                            resource,
                            series,
                            local_port,
                            Some(http.version),
                            req.duration_ns(),
                            self.clock.to_unix(req.end_ns),
                        );
                    }
                    let mut extra = Vec::new();
                    if req.side == Side::Server {
                        self.server_done(red, conn, &req, series, &mut extra);
                    }
                    if let (Some(t), Some(resource)) = (self.tracer.as_mut(), &resource) {
                        // The route as RED interned it: templated once, and bounded like the
                        // metrics (span names must stay low-cardinality too).
                        let route = red.service(series.service).routes.name(series.route);
                        t.on_done(conn, &req, route, (remote, local), resource, extra);
                    }
                }
                Detail::Db(db) => {
                    // server.address/port of a database call: the peer address.
                    let server = match req.side {
                        Side::Client => remote.map_or(0, |p| {
                            let ip = peer_ip.get_or_insert_with(|| p.ip().to_string());
                            red.peer_id(ip, p.port())
                        }),
                        Side::Server => 0,
                    };
                    let (series, statement) =
                        red.db
                            .record(service, req.side, server, db, req.duration_ns());
                    if let (Some(m), Some(resource)) = (self.otel.as_mut(), &resource) {
                        m.record(
                            resource,
                            series,
                            0,
                            None,
                            req.duration_ns(),
                            self.clock.to_unix(req.end_ns),
                        );
                    }
                    if req.side == Side::Client {
                        self.n_plus_one
                            .on_statement(tgid, req.tid, service, statement);
                    }
                    if let (Some(t), Some(resource)) = (self.tracer.as_mut(), &resource) {
                        t.on_done(conn, &req, "", (remote, local), resource, Vec::new());
                    }
                }
            }
        }
    }

    /// A server request completed: counts the statements it ran in a loop, and names the worst
    /// one on its span.
    fn server_done(
        &mut self,
        red: &mut Red,
        conn: &ConnRef,
        req: &Request,
        series: SeriesKey,
        span_attributes: &mut Attributes,
    ) {
        self.flagged.clear();
        self.n_plus_one
            .on_server_done(conn.tgid, req.tid, conn.fd, req.seq, &mut self.flagged);
        for f in &self.flagged {
            red.db.record_n_plus_one(NPlusOneKey {
                service: f.service,
                route: series.route,
                statement: f.statement,
            });
        }
        if let Some(worst) = self.flagged.iter().max_by_key(|f| f.count) {
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
}
