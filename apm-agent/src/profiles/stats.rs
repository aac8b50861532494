//! The continuous profiler's statistics on `/metrics`: the store, the symbolizer, the
//! process budget. The kernel's sampling counters join [`PROFILE_LOST`] from the
//! kernel-stats table.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters};

counters! {
    /// Bytes the continuous store holds and what it evicted and dropped; the collector's
    /// process budget; the symbolizer's figures.
    pub struct ProfileStats {
        pub store_bytes: AtomicU64,
        pub store_evicted: AtomicU64,
        pub store_dropped: AtomicU64,
        /// Processes refused by the collector's budget (their samples are not symbolized).
        pub processes_overflow: AtomicU64,
        pub unresolved_frames: AtomicU64,
        pub symbol_cache_entries: AtomicU64,
        pub symbol_cache_resets: AtomicU64,
        pub symbolize_ns: AtomicU64,
        /// Perf maps (JIT symbols) read, refused, and cut at their bound.
        pub perf_maps_read: AtomicU64,
        pub perf_maps_refused: AtomicU64,
        pub perf_maps_truncated: AtomicU64,
    }
}

/// Profiler samples or stacks lost, by reason (rows from the kernel and from the store).
pub const PROFILE_LOST: Family = Family::counter(
    "apm_profile_lost_total",
    "Profiler samples or stacks lost, by reason.",
);
const STORE_BYTES: Family = Family::gauge(
    "apm_profile_store_bytes",
    "Estimated memory of the continuous profile store (bounded by its budget).",
);
const STORE_EVICTED: Family = Family::counter(
    "apm_profile_store_evicted_total",
    "Time buckets evicted from the profile store to stay within its budget.",
);
const UNRESOLVED: Family = Family::counter(
    "apm_profile_unresolved_frames_total",
    "Distinct addresses that could not be symbolized (kept as module+offset).",
);
const CACHE_ENTRIES: Family = Family::gauge(
    "apm_profile_symbol_cache_entries",
    "Symbolized addresses cached (bounded; the cache is reset when full).",
);
const CACHE_RESETS: Family = Family::counter(
    "apm_profile_symbol_cache_resets_total",
    "Times a symbol cache reached its bound and was emptied.",
);
const PERF_MAPS: Family = Family::counter(
    "apm_profile_perf_maps_total",
    "Perf maps (/tmp/perf-<pid>.map, names of JIT code) read, refused (a link, or owned by \
     another user than the process) and truncated (beyond 32 MiB or 400000 functions).",
);
const SYMBOLIZE_SECONDS: Family = Family::counter(
    "apm_profile_symbolize_seconds_total",
    "CPU time the profiler spent symbolizing.",
);

impl Stats for ProfileStats {
    fn render(&self, out: &mut Exposition) {
        out.add(
            &PROFILE_LOST,
            "reason=\"store_full\"",
            self.store_dropped.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"profile_processes\"",
            self.processes_overflow.load(Relaxed),
        );
        out.add(&STORE_BYTES, "", self.store_bytes.load(Relaxed));
        out.add(&STORE_EVICTED, "", self.store_evicted.load(Relaxed));
        out.add(&UNRESOLVED, "", self.unresolved_frames.load(Relaxed));
        out.add(&CACHE_ENTRIES, "", self.symbol_cache_entries.load(Relaxed));
        out.add(&CACHE_RESETS, "", self.symbol_cache_resets.load(Relaxed));
        for (outcome, n) in [
            ("read", &self.perf_maps_read),
            ("refused", &self.perf_maps_refused),
            ("truncated", &self.perf_maps_truncated),
        ] {
            out.add(
                &PERF_MAPS,
                format!("outcome=\"{outcome}\""),
                n.load(Relaxed),
            );
        }
        out.add_f64(
            &SYMBOLIZE_SECONDS,
            self.symbolize_ns.load(Relaxed) as f64 / 1e9,
        );
    }
}
