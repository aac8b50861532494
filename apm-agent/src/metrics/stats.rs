//! The aggregations' statistics on `/metrics` beyond RED's own budgets (rendered with RED):
//! the N+1 detector's table, the OTLP series budget, the runtime-metrics budget.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters};

counters! {
    /// What the aggregations count.
    pub struct MetricsStats {
        /// Server requests not followed by the N+1 detector (its table was full).
        pub n_plus_one_untracked: AtomicU64,
        /// OTLP metric points refused by the series budget.
        pub otlp_series_overflow: AtomicU64,
        /// Observed processes whose runtime metrics were not read (budget spent).
        pub process_metrics_overflow: AtomicU64,
    }
}

const N_PLUS_ONE_UNTRACKED: Family = Family::counter(
    "apm_db_n_plus_one_untracked_total",
    "Server requests the N+1 detector could not follow (its table was full).",
);

impl Stats for MetricsStats {
    fn render(&self, out: &mut Exposition) {
        out.add(
            &MAP_OVERFLOWS,
            "map=\"process_metrics\"",
            self.process_metrics_overflow.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"otlp_series\"",
            self.otlp_series_overflow.load(Relaxed),
        );
        out.add(
            &N_PLUS_ONE_UNTRACKED,
            "",
            self.n_plus_one_untracked.load(Relaxed),
        );
    }
}
