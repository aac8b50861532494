//! Discovery's statistics on `/metrics`: the process table, the inventory, the naming
//! budget and the selectors' verdicts. Published by the pipeline, which owns the tables.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters};

counters! {
    /// What discovery counts.
    pub struct DiscoveryStats {
        pub processes_tracked: AtomicU64,
        pub processes_overflow: AtomicU64,
        /// Live processes in the inventory, and those refused by its budget.
        pub inventory_processes: AtomicU64,
        pub inventory_overflow: AtomicU64,
        /// Execs not named at once (naming budget spent): named at their first request.
        pub process_names_deferred: AtomicU64,
        /// Processes and connections left out by the include/exclude selectors.
        pub processes_excluded: AtomicU64,
        pub connections_excluded: AtomicU64,
    }
}

const PROCESSES_TRACKED: Family =
    Family::gauge("apm_processes_tracked", "Processes in the agent's table.");
const INVENTORY: Family = Family::gauge(
    "apm_process_inventory_entries",
    "Live processes in the agent's inventory (one /proc scan at start, then exec and exit events).",
);
const NAMES_DEFERRED: Family = Family::counter(
    "apm_process_names_deferred_total",
    "Execs not named at once (per-second naming budget spent): named at their first request.",
);
const PROCESSES_EXCLUDED: Family = Family::counter(
    "apm_processes_excluded_total",
    "Processes left out by the include/exclude selectors.",
);
const CONNECTIONS_EXCLUDED: Family = Family::counter(
    "apm_connections_excluded_total",
    "Connections muted in the kernel because a selector left them (or their process) out.",
);

impl Stats for DiscoveryStats {
    fn render(&self, out: &mut Exposition) {
        out.add(
            &MAP_OVERFLOWS,
            "map=\"processes\"",
            self.processes_overflow.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"process_inventory\"",
            self.inventory_overflow.load(Relaxed),
        );
        out.add(&PROCESSES_TRACKED, "", self.processes_tracked.load(Relaxed));
        out.add(&INVENTORY, "", self.inventory_processes.load(Relaxed));
        out.add(
            &NAMES_DEFERRED,
            "",
            self.process_names_deferred.load(Relaxed),
        );
        out.add(
            &PROCESSES_EXCLUDED,
            "",
            self.processes_excluded.load(Relaxed),
        );
        out.add(
            &CONNECTIONS_EXCLUDED,
            "",
            self.connections_excluded.load(Relaxed),
        );
    }
}
