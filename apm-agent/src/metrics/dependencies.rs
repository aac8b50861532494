//! What a service's dependencies did over the last window, for the alert rules on them: the
//! p95 of its calls to each database operation and to each outgoing HTTP/gRPC destination.
//!
//! Taken from the exported histograms (the same series Prometheus sees), as the difference of
//! their buckets since the previous window, grouped the way the Prometheus rules group them
//! (`deploy/prometheus/apm-agent-rules.yaml`): database calls by service, system, operation
//! and server address; outgoing calls by service, server address and port. The p95 is read
//! from the grouped buckets as `histogram_quantile` does: linear within its bucket, so its
//! resolution is the buckets' (0.001, 0.005, 0.01, 0.05 s... for databases).
use std::collections::HashMap;

use rustc_hash::FxHashMap;

use super::{
    db::{DB_BUCKETS_S, DbSeriesKey},
    red::{BUCKETS_S, Red, SeriesKey},
};
use crate::request::Side;

/// Which kind of dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DependencyKind {
    Database,
    External,
}

/// One dependency of one service over the last window.
#[derive(Debug, Clone, PartialEq)]
pub struct DependencySummary {
    pub service: String,
    pub kind: DependencyKind,
    /// `db_system_name`, `db_operation_name`, `server_address` for a database operation;
    /// `server_address`, `server_port` for an outgoing destination (the rules' labels).
    pub labels: Vec<(&'static str, String)>,
    /// Calls in the window.
    pub calls: u64,
    pub p95_ms: f64,
}

impl DependencySummary {
    /// A short name: `postgresql SELECT @ db:5432`, `-> api.example:443`.
    pub fn name(&self) -> String {
        let value = |k: &str| {
            self.labels
                .iter()
                .find(|(l, _)| *l == k)
                .map_or("", |(_, v)| v.as_str())
        };
        match self.kind {
            DependencyKind::Database => format!(
                "{} {} @ {}",
                value("db_system_name"),
                value("db_operation_name"),
                value("server_address")
            ),
            DependencyKind::External => {
                format!("-> {}:{}", value("server_address"), value("server_port"))
            }
        }
    }
}

/// Grouping of database series: service, system, operation name id, peer host.
type DbGroup = (u32, &'static str, u32, String);
/// Grouping of outgoing HTTP/gRPC series: service, peer id.
type HttpGroup = (u32, u32);

/// The previous window's cumulative buckets of every client series.
#[derive(Debug, Default)]
pub struct DependencyWindows {
    http: FxHashMap<SeriesKey, Vec<u64>>,
    db: FxHashMap<DbSeriesKey, Vec<u64>>,
}

impl DependencyWindows {
    /// The window since the previous call (the first call sees everything since start).
    pub fn roll(&mut self, red: &Red) -> Vec<DependencySummary> {
        let mut out = Vec::new();

        let mut http: HashMap<HttpGroup, Vec<u64>> = HashMap::new();
        let mut seen = FxHashMap::default();
        for (key, series) in red.series() {
            if key.side != Side::Client {
                continue;
            }
            let sum = http.entry((key.service, key.peer)).or_default();
            let now = add_since(&series.buckets, series.count, self.http.get(key), sum);
            seen.insert(*key, now);
        }
        self.http = seen;
        for ((service, peer), buckets) in http {
            let calls: u64 = buckets.iter().sum();
            if calls == 0 {
                continue;
            }
            let (host, port) = red.peer(peer);
            out.push(DependencySummary {
                service: red.service(service).name.to_string(),
                kind: DependencyKind::External,
                labels: vec![
                    ("server_address", host.to_owned()),
                    ("server_port", port.to_string()),
                ],
                calls,
                p95_ms: quantile(&BUCKETS_S, &buckets, 0.95) * 1000.0,
            });
        }

        let mut db: HashMap<DbGroup, Vec<u64>> = HashMap::new();
        let mut seen = FxHashMap::default();
        for (key, series) in red.db.series() {
            if key.side != Side::Client {
                continue;
            }
            let host = red.peer(key.peer).0.to_owned();
            let sum = db
                .entry((key.service, key.system.as_str(), key.operation, host))
                .or_default();
            let now = add_since(&series.buckets, series.count, self.db.get(key), sum);
            seen.insert(*key, now);
        }
        self.db = seen;
        for ((service, system, operation, host), buckets) in db {
            let calls: u64 = buckets.iter().sum();
            if calls == 0 {
                continue;
            }
            out.push(DependencySummary {
                service: red.service(service).name.to_string(),
                kind: DependencyKind::Database,
                labels: vec![
                    ("db_system_name", system.to_owned()),
                    (
                        "db_operation_name",
                        red.db.name(operation).unwrap_or("").to_owned(),
                    ),
                    ("server_address", host),
                ],
                calls,
                p95_ms: quantile(&DB_BUCKETS_S, &buckets, 0.95) * 1000.0,
            });
        }
        out
    }
}

/// Adds one series' calls per bucket since `prev` (its counts at the previous window) into
/// `sum`, and returns its counts now: per bucket, then the calls above every bound (`count`
/// minus the buckets).
fn add_since(buckets: &[u64], count: u64, prev: Option<&Vec<u64>>, sum: &mut Vec<u64>) -> Vec<u64> {
    let mut now = buckets.to_vec();
    now.push(count.saturating_sub(buckets.iter().sum::<u64>()));
    sum.resize(now.len(), 0);
    for (i, (s, n)) in sum.iter_mut().zip(&now).enumerate() {
        let p = prev.and_then(|p| p.get(i)).copied().unwrap_or(0);
        *s += n.saturating_sub(p);
    }
    now
}

/// The `q` quantile (seconds) of per-bucket counts over upper `bounds` (plus one slot above
/// the last bound), linear within its bucket as Prometheus's `histogram_quantile`: the first
/// bucket starts at 0, and a quantile in the open last bucket is the last bound.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied().unwrap_or(0.0);
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return lower + (upper - lower) * (rank - below as f64) / n as f64;
        }
        below += n;
    }
    bounds.last().copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_its_bucket() {
        let bounds = [0.001, 0.005, 0.01];
        // 100 calls: 90 in (0, 1 ms], 10 in (5, 10 ms].
        let counts = [90, 0, 10, 0];
        // Rank 95: the 5th of the 10 in (5, 10] ms.
        let p95 = quantile(&bounds, &counts, 0.95);
        assert!((p95 - 0.0075).abs() < 1e-9, "{p95}");
        let p50 = quantile(&bounds, &counts, 0.5);
        assert!((p50 - 0.001 * 50.0 / 90.0).abs() < 1e-9, "{p50}");
        assert_eq!(
            quantile(&bounds, &[0, 0, 0, 5], 0.95),
            0.01,
            "open last bucket"
        );
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.95), 0.0);
    }

    #[test]
    fn windows_are_the_difference_since_the_last_one() {
        let mut sum = Vec::new();
        // 10 calls: 4 in the first bucket, 5 in the second, 1 above every bound.
        let now = add_since(&[4, 5], 10, None, &mut sum);
        assert_eq!(now, [4, 5, 1]);
        assert_eq!(sum, [4, 5, 1]);
        let mut sum = vec![0, 0, 0];
        let later = add_since(&[6, 5], 13, Some(&now), &mut sum);
        assert_eq!(later, [6, 5, 2]);
        assert_eq!(sum, [2, 0, 1]);
    }
}
