//! Database and cache operations: per (service, side, system, operation, collection,
//! namespace, server, status) a count and a duration histogram (`db.client.operation.duration`
//! and its server-side twin), and per service a table of normalized statements with their
//! totals and percentiles: the slow-query list.
//!
//! Every table is keyed by outside input (statement text, table names, error codes) and has a
//! budget: names interned once (overflow `_OTHER`), series capped (overflow into a per-service
//! catch-all), statements capped per service (overflow statement `{overflow}`), all counted.
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    request::{DbInfo, DbSystem, Side},
    routes::{OVERFLOW_ID, RouteTable},
};

/// Histogram bucket bounds in seconds: the OpenTelemetry advice for
/// `db.client.operation.duration`.
pub const DB_BUCKETS_S: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
const DB_BUCKETS_NS: [u64; 9] = [
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Name of a value that found its budget spent.
pub const OVERFLOW_NAME: &str = "_OTHER";
/// Statement text of the per-service catch-all.
pub const OVERFLOW_STATEMENT: &str = "{overflow}";
/// Durations above this are clamped before entering a statement histogram (µs).
const MAX_TRACKED_US: u64 = 600_000_000;
/// Interned id meaning "not set".
const NONE: u32 = u32::MAX;

/// Budgets.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Distinct (service, operation, collection, ...) series.
    pub max_series: usize,
    /// Distinct operation/collection/namespace/status names, all services together.
    pub max_names: usize,
    /// Distinct normalized statements per service.
    pub max_statements_per_service: usize,
}

/// What overflowed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct DbOverflows {
    pub series: u64,
    pub names: u64,
    pub statements: u64,
    /// N+1 findings not counted because their table was full.
    pub n_plus_one: u64,
}

/// Identity of an N+1 counter: a statement run in a loop by one route of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NPlusOneKey {
    pub service: u32,
    /// Route id in the service's route table.
    pub route: u32,
    /// Statement id in the service's statement table.
    pub statement: u32,
}

/// Identity of one exported series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbSeriesKey {
    pub service: u32,
    pub side: Side,
    pub system: DbSystem,
    /// Interned names ([`DbStats::name`]); `NONE` when absent.
    pub operation: u32,
    pub collection: u32,
    pub namespace: u32,
    /// `db.response.status_code` of a failed operation; `NONE` when it succeeded.
    pub status: u32,
    /// Server address id in the RED peer table (client side), 0 when not applicable.
    pub peer: u32,
}

/// Count, sum and per-bucket counts of one series.
#[derive(Debug, Default, Clone)]
pub struct DbSeries {
    pub count: u64,
    pub sum_ns: u128,
    pub buckets: [u64; DB_BUCKETS_S.len()],
}

/// One normalized statement of one service.
#[derive(Debug)]
struct StatementStats {
    system: DbSystem,
    operation: u32,
    count: u64,
    errors: u64,
    sum_ns: u128,
    max_ns: u64,
    /// Microseconds, one significant digit (6 % resolution, ~1.4 KB): enough to rank.
    hist: Option<Histogram<u32>>,
}

/// The statements of one service.
#[derive(Debug)]
struct Statements {
    texts: RouteTable,
    stats: Vec<StatementStats>,
}

/// One line of the slow-query list.
#[derive(Debug, Clone, Serialize)]
pub struct SlowQuery {
    pub db_system_name: &'static str,
    pub db_operation_name: String,
    pub db_query_text: String,
    pub calls: u64,
    pub errors: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A service's slow queries, ranked two ways.
#[derive(Debug, Clone, Serialize)]
pub struct SlowQueries {
    pub service: u32,
    pub by_total_time: Vec<SlowQuery>,
    pub by_p99: Vec<SlowQuery>,
}

/// The database aggregator (held by [`super::red::Red`], which owns the service and
/// server-address tables it shares).
#[derive(Debug)]
pub struct DbStats {
    cfg: DbConfig,
    names: RouteTable,
    series: FxHashMap<DbSeriesKey, DbSeries>,
    /// Indexed by service id.
    statements: Vec<Statements>,
    /// Server requests flagged as N+1, per (service, route, statement).
    n_plus_one: FxHashMap<NPlusOneKey, u64>,
    overflows: DbOverflows,
}

impl DbStats {
    pub fn new(cfg: DbConfig) -> Self {
        Self {
            names: RouteTable::with_overflow_name(cfg.max_names, OVERFLOW_NAME),
            cfg,
            series: FxHashMap::default(),
            statements: Vec::new(),
            n_plus_one: FxHashMap::default(),
            overflows: DbOverflows::default(),
        }
    }

    /// Counts one server request of `key.route` that ran `key.statement` in a loop.
    pub fn record_n_plus_one(&mut self, key: NPlusOneKey) {
        if !self.n_plus_one.contains_key(&key) && self.n_plus_one.len() >= self.cfg.max_series {
            self.overflows.n_plus_one += 1;
            return;
        }
        *self.n_plus_one.entry(key).or_default() += 1;
    }

    /// N+1 counters, sorted.
    pub fn n_plus_one(&self) -> Vec<(NPlusOneKey, u64)> {
        let mut all: Vec<_> = self.n_plus_one.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        all
    }

    fn intern(&mut self, name: Option<&str>) -> u32 {
        match name {
            None => NONE,
            Some(n) => {
                let id = self.names.intern(n);
                if id == OVERFLOW_ID && n != OVERFLOW_NAME {
                    self.overflows.names += 1;
                }
                id
            }
        }
    }

    /// The interned name `id`, None for "not set".
    pub fn name(&self, id: u32) -> Option<&str> {
        (id != NONE).then(|| self.names.name(id))
    }

    /// Records one operation of `service` that took `ns`; `peer` is the interned server
    /// address (client side). Returns its series and the id of its statement in the
    /// service's statement table.
    pub fn record(
        &mut self,
        service: u32,
        side: Side,
        peer: u32,
        db: &DbInfo,
        ns: u64,
    ) -> (DbSeriesKey, u32) {
        let operation = self.intern(Some(&db.operation));
        let collection = self.intern(db.collection.as_deref());
        let namespace = self.intern(db.namespace.as_deref());
        let status = if db.error {
            self.intern(Some(db.status_code.as_deref().unwrap_or(OVERFLOW_NAME)))
        } else {
            NONE
        };
        let mut key = DbSeriesKey {
            service,
            side,
            system: db.system,
            operation,
            collection,
            namespace,
            status,
            peer,
        };
        if !self.series.contains_key(&key) && self.series.len() >= self.cfg.max_series {
            self.overflows.series += 1;
            key = DbSeriesKey {
                operation: OVERFLOW_ID,
                collection: NONE,
                namespace: NONE,
                status: if db.error { OVERFLOW_ID } else { NONE },
                peer: 0,
                ..key
            };
        }
        let series = self.series.entry(key).or_default();
        series.count += 1;
        series.sum_ns += u128::from(ns);
        let bucket = DB_BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(DB_BUCKETS_NS.len());
        if let Some(b) = series.buckets.get_mut(bucket) {
            *b += 1;
        }
        let statement = self.record_statement(service, operation, db, ns);
        (key, statement)
    }

    fn record_statement(&mut self, service: u32, operation: u32, db: &DbInfo, ns: u64) -> u32 {
        let budget = self.cfg.max_statements_per_service;
        let idx = service as usize;
        if self.statements.len() <= idx {
            self.statements.resize_with(idx + 1, || Statements {
                texts: RouteTable::with_overflow_name(budget, OVERFLOW_STATEMENT),
                stats: Vec::new(),
            });
        }
        let Some(table) = self.statements.get_mut(idx) else {
            return OVERFLOW_ID;
        };
        let before = table.texts.overflowed();
        let id = table.texts.intern(&db.query);
        if table.texts.overflowed() > before {
            self.overflows.statements += 1;
        }
        let i = id as usize;
        if table.stats.len() <= i {
            table.stats.resize_with(i + 1, || StatementStats {
                system: db.system,
                operation: OVERFLOW_ID,
                count: 0,
                errors: 0,
                sum_ns: 0,
                max_ns: 0,
                hist: None,
            });
        }
        let Some(st) = table.stats.get_mut(i) else {
            return id;
        };
        if st.count == 0 {
            st.system = db.system;
            st.operation = if id == OVERFLOW_ID {
                OVERFLOW_ID
            } else {
                operation
            };
        }
        st.count += 1;
        st.errors += u64::from(db.error);
        st.sum_ns += u128::from(ns);
        st.max_ns = st.max_ns.max(ns);
        let hist = st.hist.get_or_insert_with(new_hist);
        // A saturated u32 bucket is the only failure; the ranking survives it.
        let _ = hist.record((ns / 1000).clamp(1, MAX_TRACKED_US));
        id
    }

    /// The normalized text of statement `id` of `service`.
    pub fn statement(&self, service: u32, id: u32) -> &str {
        self.statements
            .get(service as usize)
            .map_or(OVERFLOW_STATEMENT, |t| t.texts.name(id))
    }

    pub fn series(&self) -> &FxHashMap<DbSeriesKey, DbSeries> {
        &self.series
    }

    pub fn overflows(&self) -> DbOverflows {
        self.overflows
    }

    /// Per service that ran statements: the `top` statements by total time and by p99.
    pub fn slow_queries(&self, top: usize) -> Vec<SlowQueries> {
        let mut out = Vec::new();
        for (service, table) in self.statements.iter().enumerate() {
            let mut all: Vec<SlowQuery> = table
                .stats
                .iter()
                .enumerate()
                .filter(|(_, st)| st.count > 0)
                .map(|(id, st)| self.slow_query(table, id as u32, st))
                .collect();
            if all.is_empty() {
                continue;
            }
            all.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
            let by_total_time = all.iter().take(top).cloned().collect();
            all.sort_by(|a, b| b.p99_ms.total_cmp(&a.p99_ms));
            all.truncate(top);
            out.push(SlowQueries {
                service: service as u32,
                by_total_time,
                by_p99: all,
            });
        }
        out
    }

    fn slow_query(&self, table: &Statements, id: u32, st: &StatementStats) -> SlowQuery {
        let total_ms = st.sum_ns as f64 / 1e6;
        SlowQuery {
            db_system_name: st.system.as_str(),
            db_operation_name: self.names.name(st.operation).to_owned(),
            db_query_text: table.texts.name(id).to_owned(),
            calls: st.count,
            errors: st.errors,
            total_ms,
            mean_ms: total_ms / st.count.max(1) as f64,
            p99_ms: st
                .hist
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0),
            max_ms: st.max_ns as f64 / 1e6,
        }
    }
}

fn new_hist() -> Histogram<u32> {
    match Histogram::<u32>::new_with_bounds(1, MAX_TRACKED_US, 1) {
        Ok(h) => h,
        // Only invalid bounds fail, and these are constants.
        Err(_) => std::process::abort(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DbConfig {
        DbConfig {
            max_series: 4,
            max_names: 6,
            max_statements_per_service: 2,
        }
    }

    fn info(query: &str, error: Option<&str>) -> DbInfo {
        DbInfo {
            system: DbSystem::Postgresql,
            operation: query.split(' ').next().unwrap_or("").to_owned(),
            query: query.to_owned(),
            collection: Some("t".to_owned()),
            namespace: Some("app".to_owned()),
            status_code: error.map(str::to_owned),
            error: error.is_some(),
        }
    }

    #[test]
    fn series_and_statements_are_counted() {
        let mut db = DbStats::new(cfg());
        let ok = info("SELECT * FROM t WHERE id = ?", None);
        for ms in [1, 2, 30] {
            db.record(1, Side::Client, 2, &ok, ms * 1_000_000);
        }
        let (key, stmt) = db.record(
            1,
            Side::Client,
            2,
            &info("DELETE FROM t", Some("42P01")),
            500_000,
        );
        assert_ne!(key.status, NONE);
        assert_eq!(db.name(key.status), Some("42P01"));
        assert_eq!(db.statement(1, stmt), "DELETE FROM t");
        let select = db.names.intern("SELECT");
        let s = &db.series()[&DbSeriesKey {
            status: NONE,
            operation: select,
            ..key
        }];
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], 1); // <= 1 ms
        assert_eq!(s.buckets[1], 1); // <= 5 ms
        assert_eq!(s.buckets[3], 1); // <= 50 ms
        let slow = db.slow_queries(10);
        assert_eq!(slow.len(), 1);
        let top = &slow[0].by_total_time[0];
        assert_eq!(top.db_query_text, "SELECT * FROM t WHERE id = ?");
        assert_eq!((top.calls, top.errors), (3, 0));
        assert!((top.total_ms - 33.0).abs() < 1e-9);
        assert!(top.p99_ms >= 28.0 && top.p99_ms <= 32.0, "{}", top.p99_ms);
        assert_eq!(slow[0].by_total_time[1].errors, 1);
    }

    #[test]
    fn budgets_overflow_and_count() {
        let mut db = DbStats::new(cfg());
        for i in 0..5 {
            db.record(
                0,
                Side::Client,
                0,
                &info(&format!("SELECT {i}"), None),
                1000,
            );
        }
        // Two statements fit; the other three share the overflow statement.
        let slow = db.slow_queries(10);
        let texts: Vec<_> = slow[0]
            .by_total_time
            .iter()
            .map(|q| (q.db_query_text.as_str(), q.calls))
            .collect();
        assert!(texts.contains(&(OVERFLOW_STATEMENT, 3)), "{texts:?}");
        assert_eq!(db.overflows().statements, 3);
        // Series: one per distinct failing status until the budget (4) is spent.
        for code in ["A", "B", "C", "D", "E"] {
            db.record(0, Side::Client, 0, &info("SELECT 0", Some(code)), 1000);
        }
        assert_eq!(db.series().len(), 5);
        assert!(db.overflows().series > 0);
        assert!(db.overflows().names > 0);
        let total: u64 = db.series().values().map(|s| s.count).sum();
        assert_eq!(total, 10);
    }
}
