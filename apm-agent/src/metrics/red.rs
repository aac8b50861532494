//! RED aggregation: per (service, side, method, route, status[, server address]) a count and
//! a duration histogram (the Prometheus/OTel series), and per (service, side, method, route)
//! a window of exact percentiles (hdrhistogram), 4xx/5xx counts and Apdex.
//!
//! Everything keyed by outside input has a budget: services, routes per service, series,
//! server addresses, percentile windows. Overflows are counted and exported.
use std::collections::HashMap;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::db::{DbConfig, DbStats};
use crate::{
    request::{HttpInfo, Method, Request, Side},
    routes::{self, RouteTable},
};

/// Histogram bucket bounds in seconds: the OpenTelemetry advice for HTTP durations.
pub const BUCKETS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const BUCKETS_NS: [u64; 14] = {
    let mut ns = [0u64; 14];
    let ms = [
        5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
    ];
    let mut i = 0;
    while i < 14 {
        ns[i] = ms[i] * 1_000_000;
        i += 1;
    }
    ns
};
/// Durations above this are clamped before entering a percentile histogram (bounds its size).
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Name of the service that collects processes once the service budget is spent.
pub const OVERFLOW_SERVICE: &str = "{overflow}";
/// Server address given once the address budget is spent.
pub const OVERFLOW_PEER: &str = "{overflow}";

/// Budgets and thresholds.
#[derive(Debug, Clone)]
pub struct RedConfig {
    pub apdex_threshold_ns: u64,
    pub max_services: usize,
    pub max_routes_per_service: usize,
    pub max_series: usize,
    pub max_peers: usize,
    pub max_route_windows: usize,
    /// Budgets of the database operations table.
    pub db: DbConfig,
}

/// What overflowed, for the agent's own metrics.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Overflows {
    pub services: u64,
    pub series: u64,
    pub peers: u64,
    pub route_windows: u64,
}

/// A service and its routes.
#[derive(Debug)]
pub struct Service {
    pub name: Box<str>,
    pub routes: RouteTable,
}

/// Identity of one exported series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub service: u32,
    pub side: Side,
    pub method: Method,
    pub route: u32,
    /// HTTP status, or the gRPC status code of a gRPC call.
    pub status: u16,
    /// Server address id (client side), 0 when not applicable.
    pub peer: u32,
    /// A gRPC call: exported as `rpc.*.call.duration`, `route` is its `/Service/Method`.
    pub rpc: bool,
}

/// Count, sum and bucket counts (per bucket, not cumulative) of one series.
#[derive(Debug, Default, Clone)]
pub struct Series {
    pub count: u64,
    pub sum_ns: u128,
    pub buckets: [u64; BUCKETS_S.len()],
}

/// Identity of a route, all statuses together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub service: u32,
    pub side: Side,
    pub method: Method,
    pub route: u32,
}

/// Apdex zones of one server route since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Apdex {
    pub satisfied: u64,
    pub tolerating: u64,
    pub frustrated: u64,
}

#[derive(Debug)]
struct RouteWindow {
    hist: Option<Histogram<u32>>,
    count: u64,
    client_errors: u64,
    server_errors: u64,
    apdex_window: Apdex,
    apdex_total: Apdex,
}

/// One route over the last completed window (console table, `/api/routes`).
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub service: String,
    pub side: &'static str,
    pub method: &'static str,
    pub route: String,
    pub requests: u64,
    pub rate_per_s: f64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Server side only.
    pub apdex: Option<f64>,
    /// Server requests answered within the Apdex threshold T, and not with a 5xx (Apdex's
    /// satisfied zone): the good events of a latency objective.
    #[serde(skip)]
    pub satisfied: u64,
}

/// The RED aggregator.
#[derive(Debug)]
pub struct Red {
    cfg: RedConfig,
    services: Vec<Service>,
    service_ids: HashMap<Box<str>, u32>,
    /// Server addresses: id -> (host, port); id 0 is "none", id 1 the overflow.
    peers: Vec<(Box<str>, u16)>,
    peer_ids: HashMap<u16, HashMap<Box<str>, u32>>,
    // Keyed by interned ids (small integers): the fast Fx hash is safe. Tables keyed by
    // strings from the outside (service names, hosts, routes) keep the keyed default hash.
    series: FxHashMap<SeriesKey, Series>,
    routes: FxHashMap<RouteKey, RouteWindow>,
    last_window: Vec<RouteSummary>,
    overflows: Overflows,
    scratch: String,
    /// Database and cache operations of the same services.
    pub db: DbStats,
    /// Latest runtime readings of the observed processes (refreshed on a timer by the
    /// event thread; rendered on /metrics and exported over OTLP).
    pub runtime: Vec<super::process_runtime::Reading>,
}

impl Red {
    pub fn new(cfg: RedConfig) -> Self {
        let overflow = Service {
            name: OVERFLOW_SERVICE.into(),
            routes: RouteTable::new(0),
        };
        Self {
            db: DbStats::new(cfg.db.clone()),
            runtime: Vec::new(),
            cfg,
            services: vec![overflow],
            service_ids: HashMap::new(),
            peers: vec![("".into(), 0), (OVERFLOW_PEER.into(), 0)],
            peer_ids: HashMap::new(),
            series: FxHashMap::default(),
            routes: FxHashMap::default(),
            last_window: Vec::new(),
            overflows: Overflows::default(),
            scratch: String::new(),
        }
    }

    /// Id of the service called `name` (created while the budget lasts).
    pub fn service_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.service_ids.get(name) {
            return id;
        }
        if self.service_ids.len() >= self.cfg.max_services {
            self.overflows.services += 1;
            return 0;
        }
        let id = self.services.len() as u32;
        self.services.push(Service {
            name: name.into(),
            routes: RouteTable::new(self.cfg.max_routes_per_service),
        });
        self.service_ids.insert(name.into(), id);
        id
    }

    /// Id of the server address (host, port), while the budget lasts (1: the overflow).
    pub fn peer_id(&mut self, host: &str, port: u16) -> u32 {
        let by_port = self.peer_ids.entry(port).or_default();
        if let Some(&id) = by_port.get(host) {
            return id;
        }
        if self.peers.len() - 2 >= self.cfg.max_peers {
            self.overflows.peers += 1;
            return 1;
        }
        let id = self.peers.len() as u32;
        self.peers.push((host.into(), port));
        by_port.insert(host.into(), id);
        id
    }

    /// Records one request of service `service`. `peer` is the server (host, port) of a
    /// client-side request. Returns the series it was counted in (interned ids other views,
    /// such as the OTLP metrics, reuse so their cardinality obeys the same budgets).
    pub fn record(
        &mut self,
        service: u32,
        peer: Option<(&str, u16)>,
        req: &Request,
        http: &HttpInfo,
    ) -> SeriesKey {
        let service = if (service as usize) < self.services.len() {
            service
        } else {
            0
        };
        let routes = &mut self.services[service as usize].routes;
        let route = if http.grpc.is_some() {
            // `/package.Service/Method` names an RPC, not a resource: no ids to template.
            routes.intern(&http.path)
        } else {
            let mut scratch = std::mem::take(&mut self.scratch);
            routes::template_into(&http.path, &mut scratch);
            let route = routes.intern(&scratch);
            self.scratch = scratch;
            route
        };
        let peer = match (req.side, peer) {
            (Side::Client, Some((host, port))) => self.peer_id(host, port),
            _ => 0,
        };
        // A gRPC call counts in RED by the class of its code (a server's own failure as a
        // 5xx, the caller's as a 4xx), and is keyed by the code itself.
        let (status, class) = match http.grpc {
            Some(code) => (u16::from(code.0), code.http_class()),
            None => (http.status, http.status),
        };
        let mut key = SeriesKey {
            service,
            side: req.side,
            method: http.method,
            route,
            status,
            peer,
            rpc: http.grpc.is_some(),
        };
        if !self.series.contains_key(&key) && self.series.len() >= self.cfg.max_series {
            self.overflows.series += 1;
            // Keep the count in a per-service catch-all series.
            key = SeriesKey {
                service,
                side: req.side,
                method: Method::Other,
                route: routes::OVERFLOW_ID,
                status: 0,
                peer: 0,
                rpc: false,
            };
        }
        let ns = req.duration_ns();
        let series = self.series.entry(key).or_default();
        series.count += 1;
        series.sum_ns += u128::from(ns);
        let bucket = BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(BUCKETS_NS.len());
        if let Some(b) = series.buckets.get_mut(bucket) {
            *b += 1;
        }
        self.record_window(
            RouteKey {
                service: key.service,
                side: key.side,
                method: key.method,
                route: key.route,
            },
            class,
            ns,
        );
        key
    }

    fn record_window(&mut self, key: RouteKey, status: u16, ns: u64) {
        let full = self.routes.len() >= self.cfg.max_route_windows;
        let window = match self.routes.get_mut(&key) {
            Some(w) => w,
            None if full => {
                self.overflows.route_windows += 1;
                return;
            }
            None => self.routes.entry(key).or_insert(RouteWindow {
                hist: None,
                count: 0,
                client_errors: 0,
                server_errors: 0,
                apdex_window: Apdex::default(),
                apdex_total: Apdex::default(),
            }),
        };
        window.count += 1;
        match status {
            400..=499 => window.client_errors += 1,
            500..=599 => window.server_errors += 1,
            _ => {}
        }
        if key.side == Side::Server {
            let t = self.cfg.apdex_threshold_ns;
            let zone = if status >= 500 || ns > 4 * t {
                2
            } else if ns > t {
                1
            } else {
                0
            };
            for a in [&mut window.apdex_window, &mut window.apdex_total] {
                match zone {
                    0 => a.satisfied += 1,
                    1 => a.tolerating += 1,
                    _ => a.frustrated += 1,
                }
            }
        }
        let hist = window.hist.get_or_insert_with(|| {
            let mut h = Histogram::<u32>::new(2).unwrap_or_else(|_| unreachable_hist());
            h.auto(true);
            h
        });
        let us = (ns / 1000).clamp(1, MAX_TRACKED_US);
        // Saturation of a u32 bucket within one window is the only failure: ignore it.
        let _ = hist.record(us);
    }

    /// Closes the current window of `elapsed_s` seconds: summarises every route that saw
    /// traffic and frees the histograms of idle routes.
    pub fn roll_window(&mut self, elapsed_s: f64) -> &[RouteSummary] {
        let mut summaries = Vec::new();
        for (key, w) in &mut self.routes {
            if w.count == 0 {
                w.hist = None;
                continue;
            }
            let q = |hist: &Option<Histogram<u32>>, q: f64| {
                hist.as_ref()
                    .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
            };
            let a = w.apdex_window;
            let apdex_n = a.satisfied + a.tolerating + a.frustrated;
            let service = &self.services[key.service as usize];
            summaries.push(RouteSummary {
                service: service.name.to_string(),
                side: key.side.as_str(),
                method: key.method.as_str(),
                route: service.routes.name(key.route).to_owned(),
                requests: w.count,
                rate_per_s: if elapsed_s > 0.0 {
                    w.count as f64 / elapsed_s
                } else {
                    0.0
                },
                errors_4xx: w.client_errors,
                errors_5xx: w.server_errors,
                p50_ms: q(&w.hist, 0.50),
                p95_ms: q(&w.hist, 0.95),
                p99_ms: q(&w.hist, 0.99),
                apdex: (key.side == Side::Server && apdex_n > 0)
                    .then(|| (a.satisfied as f64 + a.tolerating as f64 / 2.0) / apdex_n as f64),
                satisfied: a.satisfied,
            });
            w.count = 0;
            w.client_errors = 0;
            w.server_errors = 0;
            w.apdex_window = Apdex::default();
            if let Some(h) = w.hist.as_mut() {
                h.reset();
            }
        }
        summaries.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.route.cmp(&b.route))
        });
        self.last_window = summaries;
        &self.last_window
    }

    /// The last completed window.
    pub fn last_window(&self) -> &[RouteSummary] {
        &self.last_window
    }

    pub fn series(&self) -> &FxHashMap<SeriesKey, Series> {
        &self.series
    }

    /// Apdex zones since start, per server route.
    pub fn apdex(&self) -> impl Iterator<Item = (&RouteKey, &Apdex)> {
        self.routes
            .iter()
            .filter(|(k, _)| k.side == Side::Server)
            .map(|(k, w)| (k, &w.apdex_total))
    }

    pub fn service(&self, id: u32) -> &Service {
        self.services.get(id as usize).unwrap_or(&self.services[0])
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn peer(&self, id: u32) -> (&str, u16) {
        self.peers
            .get(id as usize)
            .map_or(("", 0), |(h, p)| (h, *p))
    }

    pub fn overflows(&self) -> Overflows {
        self.overflows
    }
}

/// Test shorthand: records an HTTP request.
#[cfg(test)]
pub fn record_http(
    red: &mut Red,
    service: u32,
    peer: Option<(&str, u16)>,
    req: &Request,
) -> SeriesKey {
    match req.http() {
        Some(http) => red.record(service, peer, req, http),
        None => panic!("not an HTTP request"),
    }
}

/// `Histogram::new(2)` only fails for sigfig > 5; this is never reached.
fn unreachable_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 2, 1).unwrap_or_else(|_| std::process::abort())
}

/// Splits a `Host` header into host and port (`[::1]:8080`, `example.com`, `a:80`).
pub fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, after)) = rest.split_once(']')
    {
        return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Detail, HttpInfo, Protocol, Trust};

    fn cfg() -> RedConfig {
        RedConfig {
            apdex_threshold_ns: 100_000_000,
            max_services: 3,
            max_routes_per_service: 100,
            max_series: 1000,
            max_peers: 10,
            max_route_windows: 1000,
            db: crate::metrics::db::DbConfig {
                max_series: 100,
                max_names: 100,
                max_statements_per_service: 100,
            },
        }
    }

    fn req(side: Side, path: &str, status: u16, ms: u64) -> Request {
        Request {
            protocol: Protocol::Http1,
            side,
            start_ns: 1_000,
            end_ns: 1_000 + ms * 1_000_000,
            tid: 1,
            seq: 0,
            trust: Trust::default(),
            detail: Detail::Http(HttpInfo {
                method: Method::Get,
                path: path.to_owned(),
                status,
                version: crate::request::HttpVersion::Http11,
                host: None,
                user_agent: None,
                traceparent: None,
                tracestate: None,
                grpc: None,
            }),
        }
    }

    #[test]
    fn series_counts_buckets_and_templates() {
        let mut red = Red::new(cfg());
        let svc = red.service_id("shop");
        record_http(&mut red, svc, None, &req(Side::Server, "/users/1", 200, 3));
        record_http(&mut red, svc, None, &req(Side::Server, "/users/2", 200, 30));
        record_http(
            &mut red,
            svc,
            None,
            &req(Side::Server, "/users/3", 500, 3000),
        );
        let ok: Vec<_> = red
            .series()
            .iter()
            .filter(|(k, _)| k.status == 200)
            .collect();
        assert_eq!(ok.len(), 1);
        let (key, s) = ok[0];
        assert_eq!(
            red.service(key.service).routes.name(key.route),
            "/users/{id}"
        );
        assert_eq!(s.count, 2);
        assert_eq!(s.buckets[0], 1); // 3 ms <= 5 ms
        assert_eq!(s.buckets[3], 1); // 30 ms <= 50 ms
        assert_eq!(s.sum_ns, 33_000_000);
        let window = red.roll_window(2.0).to_vec();
        assert_eq!(window.len(), 1);
        let w = &window[0];
        assert_eq!((w.requests, w.errors_5xx, w.errors_4xx), (3, 1, 0));
        assert!((w.rate_per_s - 1.5).abs() < 1e-9);
        // 3 ms satisfied, 30 ms satisfied, 5xx frustrated: (2 + 0/2) / 3.
        assert!((w.apdex.unwrap_or(0.0) - 2.0 / 3.0).abs() < 1e-9);
        assert!(w.p50_ms >= 29.0 && w.p50_ms <= 31.0, "p50 {}", w.p50_ms);
        assert!(w.p99_ms >= 2900.0 && w.p99_ms <= 3100.0, "p99 {}", w.p99_ms);
        // The next window starts empty.
        assert!(red.roll_window(1.0).is_empty());
    }

    #[test]
    fn budgets_overflow_and_count() {
        let mut red = Red::new(cfg());
        let ids: Vec<u32> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| red.service_id(n))
            .collect();
        assert_eq!(&ids[3..], &[0, 0]);
        assert_eq!(red.overflows().services, 2);
        assert_eq!(red.service(0).name.as_ref(), OVERFLOW_SERVICE);

        let mut cfg = cfg();
        cfg.max_series = 2;
        let mut red = Red::new(cfg);
        let svc = red.service_id("api");
        for i in 0..5 {
            record_http(
                &mut red,
                svc,
                None,
                &req(Side::Server, &format!("/r{i}"), 200, 1),
            );
        }
        assert_eq!(red.overflows().series, 3);
        let total: u64 = red.series().values().map(|s| s.count).sum();
        assert_eq!(total, 5, "overflowed requests are still counted");
    }

    #[test]
    fn client_side_peers_are_bounded() {
        let mut cfg = cfg();
        cfg.max_peers = 1;
        let mut red = Red::new(cfg);
        let svc = red.service_id("curl");
        record_http(
            &mut red,
            svc,
            Some(("a.local", 80)),
            &req(Side::Client, "/", 200, 1),
        );
        record_http(
            &mut red,
            svc,
            Some(("b.local", 80)),
            &req(Side::Client, "/", 200, 1),
        );
        let peers: Vec<_> = red
            .series()
            .keys()
            .map(|k| red.peer(k.peer).0.to_owned())
            .collect();
        assert!(peers.contains(&"a.local".to_owned()));
        assert!(peers.contains(&OVERFLOW_PEER.to_owned()));
        assert_eq!(red.overflows().peers, 1);
    }

    #[test]
    fn host_header_splitting() {
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("127.0.0.1:8080"), ("127.0.0.1", Some(8080)));
        assert_eq!(split_host("[::1]:9000"), ("::1", Some(9000)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("::1"), ("::1", None));
        assert_eq!(split_host("a:notaport"), ("a", None));
    }
}
