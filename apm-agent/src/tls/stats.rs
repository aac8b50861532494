//! TLS hooking's statistics on `/metrics`: libraries and Go executables hooked, failures, the library budget,
//! look-ups dropped. The kernel's plaintext counters join [`PLAINTEXT_DROPPED`] from the
//! kernel-stats table.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters};

counters! {
    /// Library files hooked, files that could not be, files beyond the budget, and
    /// look-ups dropped (the per-batch bound of the pipeline, or the hooking thread's full
    /// queue).
    pub struct TlsStats {
        pub libraries_hooked: AtomicU64,
        /// Go executables whose `crypto/tls` carries the agent's uprobes.
        pub go_binaries_hooked: AtomicU64,
        /// Executable files looked at for Go's `crypto/tls` beyond the budget.
        pub executables_overflow: AtomicU64,
        /// Dynamic loaders carrying the library-load hook (the `sockets` capture path).
        pub loaders_hooked: AtomicU64,
        pub hook_failures: AtomicU64,
        pub libraries_overflow: AtomicU64,
        pub scans_dropped: AtomicU64,
    }
}

/// OpenSSL plaintext not reported, by reason (rows from the kernel and from this stage).
pub const PLAINTEXT_DROPPED: Family = Family::counter(
    "apm_tls_plaintext_dropped_total",
    "TLS plaintext (OpenSSL, Go crypto/tls) not reported: its socket was unknown, the in-flight call table was full, or the library look-up queue was full.",
);
const HOOKED: Family = Family::gauge(
    "apm_tls_libraries_hooked",
    "OpenSSL library files whose SSL_read/SSL_write functions carry the agent's uprobes.",
);
const GO_HOOKED: Family = Family::gauge(
    "apm_tls_go_binaries_hooked",
    "Go executables whose crypto/tls (*Conn).Read/Write carry the agent's uprobes.",
);
const LOADERS_HOOKED: Family = Family::gauge(
    "apm_tls_loaders_hooked",
    "Dynamic loader files whose _dl_debug_state carries the agent's library-load uprobe (the sockets capture path).",
);
const HOOK_FAILURES: Family = Family::counter(
    "apm_tls_hook_failures_total",
    "TLS library, Go executable and dynamic loader files that could not be hooked (see the log).",
);

impl Stats for TlsStats {
    fn render(&self, out: &mut Exposition) {
        out.add(&HOOKED, "", self.libraries_hooked.load(Relaxed));
        out.add(&GO_HOOKED, "", self.go_binaries_hooked.load(Relaxed));
        out.add(&LOADERS_HOOKED, "", self.loaders_hooked.load(Relaxed));
        out.add(&HOOK_FAILURES, "", self.hook_failures.load(Relaxed));
        out.add(
            &PLAINTEXT_DROPPED,
            "reason=\"scan_queue_full\"",
            self.scans_dropped.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"tls_libraries\"",
            self.libraries_overflow.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"tls_executables\"",
            self.executables_overflow.load(Relaxed),
        );
    }
}
