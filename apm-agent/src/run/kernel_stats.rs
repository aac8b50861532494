//! The kernel side's statistics on `/metrics`: the kernel programs' per-CPU counters
//! (`apm_common::stat`, summed and refreshed every second by the event loop), and what the
//! agent counts about the kernel adapter itself (programs attached, connections seeded,
//! records that did not decode, socket-table updates).
//!
//! A kernel counter is added in one place: one row of [`KERNEL_STATS`] (its index, its
//! family, its labels), with a new [`Family`] beside it when it starts a family of its own.
//! The test below fails while an index of `apm_common::stat` has no row.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use apm_common::stat;

use crate::ebpf::{capture_path::CapturePath, catch_up::CatchUpReport, program_runs::TRACKED};

use crate::{
    profiles::stats::PROFILE_LOST,
    telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters},
    tls::stats::PLAINTEXT_DROPPED,
};

counters! {
    /// The kernel counters and the adapter's own.
    pub struct KernelStats {
        /// Sums over CPUs of the kernel counters, by `apm_common::stat` index.
        pub kernel: [AtomicU64; stat::COUNT as usize],
        pub programs_attached: AtomicU64,
        pub seeded_connections: AtomicU64,
        pub decode_errors: AtomicU64,
        pub unknown_kinds: AtomicU64,
        pub muted_connections: AtomicU64,
        pub mute_failures: AtomicU64,
        /// The capture path in use, as its [`CapturePath::index`] (0 before attaching).
        pub capture_path: AtomicU64,
        /// Skipped runs of each program of `program_runs::TRACKED`.
        pub program_runs_skipped: [AtomicU64; TRACKED.len()],
        /// The `sockets-fexit` catch-up window (`ebpf::catch_up`): threads listed, found
        /// but not listed (the kernel's list was full), still blocked at its close.
        pub catch_up_listed: AtomicU64,
        pub catch_up_not_listed: AtomicU64,
        pub catch_up_abandoned: AtomicU64,
    }
}

impl KernelStats {
    /// Adds what one look at the catch-up window found.
    pub fn record_catch_up(&self, report: CatchUpReport) {
        self.catch_up_listed.fetch_add(report.listed, Relaxed);
        self.catch_up_not_listed
            .fetch_add(report.not_listed, Relaxed);
        self.catch_up_abandoned.fetch_add(report.abandoned, Relaxed);
    }
}

const EVENTS_LOST: Family = Family::counter(
    "apm_events_lost_total",
    "Events the kernel could not write because the ring buffer was full.",
);
const SCRATCH_BUSY: Family = Family::counter(
    "apm_capture_scratch_busy_total",
    "Data records not written because their CPU's scratch area was held by a preempted program (kernels with full or lazy preemption): each is an event lost, never a corrupted one.",
);
const CAPTURE_PARTIAL: Family = Family::counter(
    "apm_capture_partial_total",
    "Syscalls whose captured bytes are fewer than they could be.",
);
const RING_WAKEUPS: Family = Family::counter(
    "apm_ring_wakeups_total",
    "Wake-ups of the agent forced by the kernel programs: when a batch waits in the ring buffer (at most one per millisecond) and at each exec.",
);
const CONNECTIONS_ADOPTED: Family = Family::counter(
    "apm_connections_adopted_total",
    "Sockets followed from their first data: inherited across fork, duplicated, or received over a unix socket.",
);
const TLS_PLAINTEXT_RECORDS: Family = Family::counter(
    "apm_tls_plaintext_records_total",
    "Plaintext records read from OpenSSL and Go crypto/tls calls.",
);
const CAPTURE_SKIPPED: Family = Family::counter(
    "apm_capture_skipped_total",
    "Socket sends and receives not copied: outside a read/write-family, sendfile or splice syscall (io_uring, kernel sockets).",
);
const BLOCKED_AT_ATTACH: Family = Family::counter(
    "apm_capture_blocked_at_attach_total",
    "Threads blocked in a socket send or receive when the sockets-fexit programs were attached, by outcome: listed for the catch-up at syscall exit, seen_at_exit (their call copied), not_listed (the kernel's list was full) and abandoned (still blocked when the catch-up closed): the calls of the last two are not seen.",
);
const PROFILE_SAMPLES: Family = Family::counter(
    "apm_profile_samples_total",
    "CPU profiler samples: of threads, and of idle CPUs (not attributed).",
);

/// Every kernel counter: its `apm_common::stat` index, the family it is exported in, and its
/// labels there.
pub const KERNEL_STATS: [(u32, &Family, &str); stat::COUNT as usize] = [
    (stat::EVENTS_LOST, &EVENTS_LOST, ""),
    (
        stat::IOV_TRUNCATED,
        &CAPTURE_PARTIAL,
        "reason=\"iovec_limit\"",
    ),
    (
        stat::READ_USER_FAILED,
        &CAPTURE_PARTIAL,
        "reason=\"read_user_failed\"",
    ),
    (stat::RING_WAKEUPS, &RING_WAKEUPS, ""),
    (
        stat::SOCKET_CALL_OTHER,
        &CAPTURE_SKIPPED,
        "reason=\"not_a_data_syscall\"",
    ),
    (stat::SCRATCH_BUSY, &SCRATCH_BUSY, ""),
    (
        stat::CAUGHT_UP,
        &BLOCKED_AT_ATTACH,
        "outcome=\"seen_at_exit\"",
    ),
    (stat::SOCK_ADOPTED, &CONNECTIONS_ADOPTED, ""),
    (stat::TLS_RECORDS, &TLS_PLAINTEXT_RECORDS, ""),
    (
        stat::TLS_NO_SOCKET,
        &PLAINTEXT_DROPPED,
        "reason=\"unknown_socket\"",
    ),
    (
        stat::TLS_CALLS_FULL,
        &PLAINTEXT_DROPPED,
        "reason=\"calls_table_full\"",
    ),
    (
        stat::SOCK_MAP_FULL,
        &MAP_OVERFLOWS,
        "map=\"kernel_sockets\"",
    ),
    (stat::PROFILE_SAMPLES, &PROFILE_SAMPLES, "state=\"busy\""),
    (stat::PROFILE_IDLE, &PROFILE_SAMPLES, "state=\"idle\""),
    (
        stat::PROFILE_STACK_COLLISIONS,
        &PROFILE_LOST,
        "reason=\"stack_collision\"",
    ),
    (
        stat::PROFILE_STACK_ERRORS,
        &PROFILE_LOST,
        "reason=\"stack_error\"",
    ),
    (
        stat::PROFILE_COUNTS_FULL,
        &PROFILE_LOST,
        "reason=\"counts_full\"",
    ),
    (
        stat::PROFILE_KNOWN_FULL,
        &PROFILE_LOST,
        "reason=\"known_full\"",
    ),
    (
        stat::PROFILE_EVENTS_LOST,
        &PROFILE_LOST,
        "reason=\"events_full\"",
    ),
];

const EVENTS_INVALID: Family = Family::counter(
    "apm_events_invalid_total",
    "Ring-buffer records that could not be decoded.",
);
const CONNECTIONS_MUTED: Family = Family::counter(
    "apm_connections_muted_total",
    "Connections the kernel was told to stop capturing.",
);
const MUTE_FAILURES: Family = Family::counter(
    "apm_mute_failures_total",
    "Kernel socket-table updates that failed.",
);
const CONNECTIONS_SEEDED: Family = Family::counter(
    "apm_connections_seeded_total",
    "Connections found in /proc at start-up.",
);
const PROGRAM_RUNS_SKIPPED: Family = Family::counter(
    "apm_kernel_program_runs_skipped_total",
    "Runs of a kernel program the kernel skipped because it was already running on that CPU (preempted mid-run, on kernels whose syscall tracepoints are preemptible): each skipped run of a data program may be an event lost.",
);
const CAPTURE_PATH: Family = Family::gauge(
    "apm_capture_path",
    "The capture path in use (1) and the others (0): sockets (programs at the socket layer only, on its tracepoints), sockets-fexit (the same, on fexit of the per-family sendmsg/recvmsg) or syscalls (a program on every syscall).",
);
const PROGRAMS_ATTACHED: Family =
    Family::gauge("apm_programs_attached", "Kernel programs attached.");

impl Stats for KernelStats {
    fn render(&self, out: &mut Exposition) {
        for (index, family, labels) in &KERNEL_STATS {
            let value = self
                .kernel
                .get(*index as usize)
                .map_or(0, |v| v.load(Relaxed));
            out.add(family, *labels, value);
        }
        out.add(
            &EVENTS_INVALID,
            "reason=\"unknown_kind\"",
            self.unknown_kinds.load(Relaxed),
        );
        out.add(
            &EVENTS_INVALID,
            "reason=\"malformed\"",
            self.decode_errors.load(Relaxed),
        );
        for (outcome, counter) in [
            ("listed", &self.catch_up_listed),
            ("not_listed", &self.catch_up_not_listed),
            ("abandoned", &self.catch_up_abandoned),
        ] {
            out.add(
                &BLOCKED_AT_ATTACH,
                format!("outcome=\"{outcome}\""),
                counter.load(Relaxed),
            );
        }
        out.add(&CONNECTIONS_MUTED, "", self.muted_connections.load(Relaxed));
        out.add(&MUTE_FAILURES, "", self.mute_failures.load(Relaxed));
        out.add(
            &CONNECTIONS_SEEDED,
            "",
            self.seeded_connections.load(Relaxed),
        );
        out.add(&PROGRAMS_ATTACHED, "", self.programs_attached.load(Relaxed));
        // (Only `run::kernel` stores it, from `CapturePath::index`: nothing is beyond the last.)
        let last = CapturePath::ALL.len() as u64 - 1;
        let in_use = self.capture_path.load(Relaxed).min(last);
        for path in &CapturePath::ALL[1..] {
            out.add(
                &CAPTURE_PATH,
                format!("path=\"{path}\""),
                u64::from(path.index() as u64 == in_use),
            );
        }
        for (program, skipped) in TRACKED.iter().zip(&self.program_runs_skipped) {
            out.add(
                &PROGRAM_RUNS_SKIPPED,
                format!("program=\"{program}\""),
                skipped.load(Relaxed),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_counter_has_one_row() {
        let mut indices: Vec<u32> = KERNEL_STATS.iter().map(|(i, _, _)| *i).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..stat::COUNT).collect::<Vec<_>>());
        let mut rows: Vec<(&str, &str)> = KERNEL_STATS
            .iter()
            .map(|(_, f, labels)| (f.name, *labels))
            .collect();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), KERNEL_STATS.len(), "a family and labels twice");
    }
}
