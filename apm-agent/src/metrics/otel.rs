//! The OTLP view of request durations: `http.server.request.duration`,
//! `http.client.request.duration` and `db.client.operation.duration` per observed process (its OTLP resource) and per series of
//! the RED aggregator, as exponential (default) or explicit-bucket histograms, with delta or
//! cumulative temporality.
//!
//! Runs on the event thread next to [`super::red::Red`] and reuses its interned, budgeted
//! series identity (service, side, method, route, status, server address), so label
//! cardinality is bounded by the same budgets. Collected once per export interval.
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{
    db::{DB_BUCKETS_S, DbSeriesKey},
    exponential::ExpHistogram,
    red::{BUCKETS_S, SeriesKey},
};
use crate::{request::HttpVersion, traces::span::Resource};

/// How data points relate over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Totals since the series started (the OTel default).
    Cumulative,
    /// What happened since the previous export.
    Delta,
}

/// Which histogram aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Exponential,
    /// The OTel HTTP duration advice ([`BUCKETS_S`]).
    Explicit,
}

/// Settings.
#[derive(Debug, Clone, Copy)]
pub struct OtelConfig {
    pub temporality: Temporality,
    pub aggregation: Aggregation,
    /// Series (resource × RED series) kept at most.
    pub max_series: usize,
    /// A cumulative series not updated for this many collections is forgotten.
    pub stale_collections: u32,
}

/// Which aggregator series a point belongs to: its interned, budgeted identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesId {
    Http(SeriesKey),
    Db(DbSeriesKey),
}

impl SeriesId {
    /// Explicit bucket bounds advised for the metric (seconds).
    pub fn bounds(&self) -> &'static [f64] {
        match self {
            Self::Http(_) => &BUCKETS_S,
            Self::Db(_) => &DB_BUCKETS_S,
        }
    }
}

impl From<SeriesKey> for SeriesId {
    fn from(k: SeriesKey) -> Self {
        Self::Http(k)
    }
}

impl From<DbSeriesKey> for SeriesId {
    fn from(k: DbSeriesKey) -> Self {
        Self::Db(k)
    }
}

/// Identity of one OTLP data point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointKey {
    /// Address of the resource (kept alive by [`OtelMetrics::resources`]).
    resource: usize,
    pub series: SeriesId,
    /// Server side: the port served on (`server.port`), 0 when unknown.
    pub local_port: u16,
    /// HTTP version (`network.protocol.version` 1.0 / 1.1 / 2); None for database calls.
    pub version: Option<HttpVersion>,
}

/// Histogram data of one point.
#[derive(Debug, Clone)]
pub enum Buckets {
    Exponential(ExpHistogram),
    /// Per-bucket counts, one more than the series' bounds (the last is +Inf).
    Explicit(Vec<u64>),
}

/// One series' state.
#[derive(Debug, Clone)]
pub struct Point {
    pub count: u64,
    pub sum_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub buckets: Buckets,
    /// Start of the aggregation period (Unix ns).
    pub start_unix_ns: u64,
    /// Collections since the last update.
    idle: u32,
}

/// A collected data point, ready to encode.
#[derive(Debug, Clone)]
pub struct Collected {
    pub resource: Arc<Resource>,
    pub key: PointKey,
    pub point: Point,
}

/// The aggregator.
#[derive(Debug)]
pub struct OtelMetrics {
    cfg: OtelConfig,
    points: FxHashMap<PointKey, Point>,
    /// Resources by address, with the number of points using each.
    resources: FxHashMap<usize, (Arc<Resource>, usize)>,
    overflows: u64,
}

impl OtelMetrics {
    pub fn new(cfg: OtelConfig) -> Self {
        Self {
            cfg,
            points: FxHashMap::default(),
            resources: FxHashMap::default(),
            overflows: 0,
        }
    }

    pub fn config(&self) -> OtelConfig {
        self.cfg
    }

    /// Records one request of `duration_ns` under `series` for the process `resource`.
    pub fn record(
        &mut self,
        resource: &Arc<Resource>,
        series: impl Into<SeriesId>,
        local_port: u16,
        version: Option<HttpVersion>,
        duration_ns: u64,
        now_unix_ns: u64,
    ) {
        let series = series.into();
        let bounds = series.bounds();
        let key = PointKey {
            resource: Arc::as_ptr(resource) as usize,
            series,
            local_port,
            version,
        };
        let point = match self.points.get_mut(&key) {
            Some(p) => p,
            None => {
                if self.points.len() >= self.cfg.max_series {
                    self.overflows += 1;
                    return;
                }
                self.resources
                    .entry(key.resource)
                    .or_insert_with(|| (resource.clone(), 0))
                    .1 += 1;
                self.points.entry(key).or_insert_with(|| Point {
                    count: 0,
                    sum_s: 0.0,
                    min_s: f64::INFINITY,
                    max_s: 0.0,
                    buckets: match self.cfg.aggregation {
                        Aggregation::Exponential => Buckets::Exponential(ExpHistogram::default()),
                        Aggregation::Explicit => Buckets::Explicit(vec![0; bounds.len() + 1]),
                    },
                    start_unix_ns: now_unix_ns,
                    idle: 0,
                })
            }
        };
        let s = duration_ns as f64 / 1e9;
        point.count += 1;
        point.sum_s += s;
        point.min_s = point.min_s.min(s);
        point.max_s = point.max_s.max(s);
        point.idle = 0;
        match &mut point.buckets {
            Buckets::Exponential(h) => h.record(s),
            Buckets::Explicit(counts) => {
                let i = bounds.iter().position(|b| s <= *b).unwrap_or(bounds.len());
                if let Some(c) = counts.get_mut(i) {
                    *c += 1;
                }
            }
        }
    }

    /// The data points of this interval. Delta: the points updated since the last call, which
    /// then start afresh (and idle ones are forgotten). Cumulative: every live point; points
    /// idle for `stale_collections` collections are forgotten.
    pub fn collect(&mut self, now_unix_ns: u64) -> Vec<Collected> {
        let mut out = Vec::with_capacity(self.points.len());
        let delta = self.cfg.temporality == Temporality::Delta;
        let stale = if delta { 1 } else { self.cfg.stale_collections };
        let resources = &mut self.resources;
        self.points.retain(|key, point| {
            if point.idle >= stale {
                if let Some(r) = resources.get_mut(&key.resource) {
                    r.1 = r.1.saturating_sub(1);
                }
                return false;
            }
            let updated = point.idle == 0;
            point.idle = point.idle.saturating_add(1);
            if (updated || !delta)
                && let Some((resource, _)) = resources.get(&key.resource)
            {
                out.push(Collected {
                    resource: resource.clone(),
                    key: *key,
                    point: point.clone(),
                });
            }
            if delta {
                *point = Point {
                    count: 0,
                    sum_s: 0.0,
                    min_s: f64::INFINITY,
                    max_s: 0.0,
                    buckets: match &point.buckets {
                        Buckets::Exponential(_) => Buckets::Exponential(ExpHistogram::default()),
                        Buckets::Explicit(c) => Buckets::Explicit(vec![0; c.len()]),
                    },
                    start_unix_ns: now_unix_ns,
                    idle: point.idle,
                };
            }
            true
        });
        self.resources.retain(|_, (_, users)| *users > 0);
        out
    }

    /// Points refused because the series budget was spent.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Live points.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        request::{Method, Side},
        traces::span::Value,
    };

    fn resource(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            attributes: vec![("service.name", Value::Str(name.to_owned()))],
            extra: Vec::new(),
        })
    }

    fn series(status: u16) -> SeriesKey {
        SeriesKey {
            service: 1,
            side: Side::Server,
            method: Method::Get,
            route: 1,
            status,
            peer: 0,
            rpc: false,
        }
    }

    fn cfg(temporality: Temporality, aggregation: Aggregation) -> OtelConfig {
        OtelConfig {
            temporality,
            aggregation,
            max_series: 3,
            stale_collections: 2,
        }
    }

    #[test]
    fn cumulative_points_keep_totals_and_expire_when_idle() {
        let mut m = OtelMetrics::new(cfg(Temporality::Cumulative, Aggregation::Exponential));
        let a = resource("a");
        m.record(
            &a,
            series(200),
            80,
            Some(HttpVersion::Http11),
            2_000_000,
            10,
        );
        m.record(
            &a,
            series(200),
            80,
            Some(HttpVersion::Http11),
            8_000_000,
            20,
        );
        let first = m.collect(100);
        assert_eq!(first.len(), 1);
        let p = &first[0].point;
        assert_eq!(p.count, 2);
        assert!((p.sum_s - 0.010).abs() < 1e-12);
        assert!((p.min_s - 0.002).abs() < 1e-12 && (p.max_s - 0.008).abs() < 1e-12);
        assert_eq!(p.start_unix_ns, 10);
        m.record(
            &a,
            series(200),
            80,
            Some(HttpVersion::Http11),
            1_000_000,
            200,
        );
        let second = m.collect(300);
        assert_eq!(second[0].point.count, 3, "cumulative");
        assert_eq!(second[0].point.start_unix_ns, 10);
        // Idle for two collections: reported while live, then forgotten with its resource.
        assert_eq!(m.collect(400).len(), 1);
        assert_eq!(m.collect(500).len(), 0);
        assert_eq!(m.len(), 0);
        assert!(m.resources.is_empty());
    }

    #[test]
    fn delta_points_restart_each_interval() {
        let mut m = OtelMetrics::new(cfg(Temporality::Delta, Aggregation::Explicit));
        let a = resource("a");
        m.record(
            &a,
            series(200),
            80,
            Some(HttpVersion::Http11),
            3_000_000,
            10,
        );
        m.record(
            &a,
            series(500),
            80,
            Some(HttpVersion::Http11),
            300_000_000,
            10,
        );
        let first = m.collect(100);
        assert_eq!(first.len(), 2);
        let ok = first
            .iter()
            .find(|c| matches!(c.key.series, SeriesId::Http(k) if k.status == 200))
            .expect("200 point");
        match &ok.point.buckets {
            Buckets::Explicit(c) => {
                assert_eq!(c[0], 1, "3 ms <= 5 ms");
                assert_eq!(c.iter().sum::<u64>(), 1);
            }
            Buckets::Exponential(_) => panic!("explicit expected"),
        }
        m.record(
            &a,
            series(200),
            80,
            Some(HttpVersion::Http11),
            3_000_000,
            150,
        );
        let second = m.collect(200);
        assert_eq!(second.len(), 1, "only what changed");
        assert_eq!(second[0].point.count, 1);
        assert_eq!(second[0].point.start_unix_ns, 100);
        assert!(m.collect(300).is_empty());
    }

    #[test]
    fn series_budget_and_resources_are_bounded() {
        let mut m = OtelMetrics::new(cfg(Temporality::Cumulative, Aggregation::Exponential));
        let (a, b) = (resource("a"), resource("b"));
        for status in [200, 201, 202, 203] {
            m.record(&a, series(status), 80, Some(HttpVersion::Http11), 1_000, 1);
        }
        m.record(&b, series(200), 80, Some(HttpVersion::Http11), 1_000, 1);
        assert_eq!(m.len(), 3);
        assert_eq!(m.overflows(), 2);
        let points = m.collect(2);
        assert!(points.iter().all(|p| Arc::ptr_eq(&p.resource, &a)));
    }
}
