//! The agent's own telemetry: every counter the agent keeps about itself, in one place, with
//! the metric names it is exported under (`apm_<name>_total`, bounded label values).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use apm_common::stat;

use crate::{ebpf::decode::KIND_NAMES, protocols::ParseStats, request::Protocol};

/// Counters of one protocol's parsers.
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    pub parse_errors: AtomicU64,
    pub incomplete: AtomicU64,
    pub unmatched_responses: AtomicU64,
    pub pipeline_overflow: AtomicU64,
    /// Connections reset after their records were lost.
    pub resyncs: AtomicU64,
    pub requests: AtomicU64,
    /// Requests whose response end was inferred (framing lost or unknowable).
    pub end_inferred: AtomicU64,
    /// Requests whose head ran past the captured bytes.
    pub head_truncated: AtomicU64,
}

impl ProtocolCounters {
    pub fn add(&self, s: &ParseStats) {
        self.requests.fetch_add(s.requests, Relaxed);
        self.end_inferred.fetch_add(s.end_inferred, Relaxed);
        self.head_truncated.fetch_add(s.head_truncated, Relaxed);
        self.parse_errors.fetch_add(s.parse_errors, Relaxed);
        self.incomplete.fetch_add(s.incomplete, Relaxed);
        self.unmatched_responses
            .fetch_add(s.unmatched_responses, Relaxed);
        self.pipeline_overflow
            .fetch_add(s.pipeline_overflow, Relaxed);
        self.resyncs.fetch_add(s.resyncs, Relaxed);
    }
}

const SIGNAL_LABELS: [&str; 2] = ["signal=\"traces\"", "signal=\"metrics\""];
/// Index of the traces counters.
pub const TRACES: usize = 0;
/// Index of the metrics counters (data points).
pub const METRICS: usize = 1;

const K8S_CALL_LABELS: [&str; 2] = ["call=\"watch_pods\"", "call=\"get_replicaset\""];
/// Index of the Kubernetes pod watch's errors.
pub const K8S_WATCH: usize = 0;
/// Index of the Kubernetes ReplicaSet reads' errors.
pub const K8S_GET_REPLICASET: usize = 1;

/// All of the agent's own counters. Shared between the event thread and the listener.
#[derive(Debug, Default)]
pub struct Internal {
    pub events_read: [AtomicU64; KIND_NAMES.len()],
    pub decode_errors: AtomicU64,
    pub unknown_kinds: AtomicU64,
    pub bytes_captured: AtomicU64,
    /// Sums over CPUs of the kernel counters (`apm_common::stat`), refreshed every second.
    pub kernel: [AtomicU64; stat::COUNT as usize],
    pub unclassified_connections: AtomicU64,
    pub muted_connections: AtomicU64,
    pub mute_failures: AtomicU64,
    /// Parser counters per protocol ([`Protocol::index`]).
    pub protocols: [ProtocolCounters; Protocol::ALL.len()],
    pub connections_overflow: AtomicU64,
    pub processes_overflow: AtomicU64,
    pub connections_tracked: AtomicU64,
    pub processes_tracked: AtomicU64,
    pub seeded_connections: AtomicU64,
    pub programs_attached: AtomicU64,
    /// TLS: library files hooked, files that could not be, files beyond the budget, and
    /// look-ups dropped because the hooking thread's queue was full.
    pub tls_libraries_hooked: AtomicU64,
    pub tls_hook_failures: AtomicU64,
    pub tls_libraries_overflow: AtomicU64,
    pub tls_scans_dropped: AtomicU64,
    pub ready: AtomicBool,
    /// Profiler: bytes the continuous store holds, and what it evicted and dropped.
    pub profile_store_bytes: AtomicU64,
    pub profile_store_evicted: AtomicU64,
    pub profile_store_dropped: AtomicU64,
    pub profile_processes_overflow: AtomicU64,
    pub profile_unresolved_frames: AtomicU64,
    pub profile_symbol_cache_entries: AtomicU64,
    pub profile_symbol_cache_resets: AtomicU64,
    pub profile_symbolize_ns: AtomicU64,
    /// Per OTLP signal (traces, metrics): items exported, items dropped (queue full or retries
    /// exhausted), failed export attempts.
    pub export_sent: [AtomicU64; 2],
    pub export_dropped: [AtomicU64; 2],
    pub export_failures: [AtomicU64; 2],
    /// OTLP metric points refused by the series budget.
    pub otlp_series_overflow: AtomicU64,
    /// Spans not exported because the head sampler said no (and they were neither errors
    /// nor slow).
    pub spans_sampled_out: AtomicU64,
    /// Requests whose trace context could not be tracked (table full): exported as roots.
    pub trace_context_overflow: AtomicU64,
    /// Spans released before their hold time because the hold buffer was full.
    pub spans_released_early: AtomicU64,
    /// Server spans parented to a same-host client span.
    pub spans_paired: AtomicU64,
    /// Server requests not followed by the N+1 detector (its table was full).
    pub n_plus_one_untracked: AtomicU64,
    /// Live processes in the inventory, and those refused by its budget.
    pub inventory_processes: AtomicU64,
    pub inventory_overflow: AtomicU64,
    /// Execs not named at once (naming budget spent): named at their first request.
    pub process_names_deferred: AtomicU64,
    /// Processes and connections left out by the include/exclude selectors.
    pub processes_excluded: AtomicU64,
    pub connections_excluded: AtomicU64,
    /// Observed processes whose runtime metrics were not read (budget spent).
    pub process_metrics_overflow: AtomicU64,
    /// Kubernetes metadata: pods not cached (`max_pods` reached), containers beyond the
    /// per-pod bound, times the ReplicaSet cache was full and emptied, failed API calls
    /// ([`K8S_WATCH`], [`K8S_GET_REPLICASET`]), and pods cached now.
    pub k8s_pods_overflow: AtomicU64,
    pub k8s_containers_overflow: AtomicU64,
    pub k8s_replicasets_overflow: AtomicU64,
    pub k8s_api_errors: [AtomicU64; 2],
    pub k8s_pods_cached: AtomicU64,
}

impl Internal {
    /// Takes the profiler's own figures.
    pub fn publish_profiler(
        &self,
        store: &crate::profiles::store::StoreStats,
        sampler: &crate::run::stack_sampler::StackSampler,
    ) {
        self.profile_store_bytes.store(store.bytes as u64, Relaxed);
        self.profile_store_evicted
            .store(store.evicted_buckets, Relaxed);
        self.profile_store_dropped
            .store(store.dropped_samples, Relaxed);
        self.profile_processes_overflow
            .store(sampler.processes_overflowed(), Relaxed);
        let sym = sampler.symbolizer_stats();
        self.profile_unresolved_frames
            .store(sym.unresolved, Relaxed);
        self.profile_symbol_cache_entries
            .store(sym.cached_addresses as u64, Relaxed);
        self.profile_symbol_cache_resets
            .store(sym.cache_resets, Relaxed);
        self.profile_symbolize_ns
            .store(sampler.symbolize_ns, Relaxed);
    }

    /// Renders every counter in Prometheus text format. `red_overflows` are the RED
    /// aggregator's budget overflows, exported in the same `apm_map_overflows_total` family.
    pub fn render(&self, red_overflows: &[(&str, u64)], out: &mut String) {
        let k = |i: u32| self.kernel[i as usize].load(Relaxed);
        let kinds: Vec<String> = KIND_NAMES.iter().map(|k| format!("kind=\"{k}\"")).collect();
        let by_kind: Vec<(&str, u64)> = kinds
            .iter()
            .zip(&self.events_read)
            .map(|(l, v)| (l.as_str(), v.load(Relaxed)))
            .collect();
        family(
            out,
            "apm_events_read_total",
            "counter",
            "Kernel events read from the ring buffer.",
            &by_kind,
        );
        family(
            out,
            "apm_events_lost_total",
            "counter",
            "Events the kernel could not write because the ring buffer was full.",
            &[("", k(stat::EVENTS_LOST))],
        );
        family(
            out,
            "apm_events_invalid_total",
            "counter",
            "Ring-buffer records that could not be decoded.",
            &[
                ("reason=\"unknown_kind\"", self.unknown_kinds.load(Relaxed)),
                ("reason=\"malformed\"", self.decode_errors.load(Relaxed)),
            ],
        );
        family(
            out,
            "apm_bytes_captured_total",
            "counter",
            "Payload bytes copied from socket syscalls.",
            &[("", self.bytes_captured.load(Relaxed))],
        );
        family(
            out,
            "apm_capture_partial_total",
            "counter",
            "Syscalls whose captured bytes are fewer than they could be.",
            &[
                ("reason=\"iovec_limit\"", k(stat::IOV_TRUNCATED)),
                ("reason=\"read_user_failed\"", k(stat::READ_USER_FAILED)),
            ],
        );
        family(
            out,
            "apm_connections_unclassified_total",
            "counter",
            "Connections whose traffic matched no supported protocol (capture stopped).",
            &[("", self.unclassified_connections.load(Relaxed))],
        );
        family(
            out,
            "apm_connections_muted_total",
            "counter",
            "Connections the kernel was told to stop capturing.",
            &[("", self.muted_connections.load(Relaxed))],
        );
        family(
            out,
            "apm_mute_failures_total",
            "counter",
            "Kernel socket-table updates that failed.",
            &[("", self.mute_failures.load(Relaxed))],
        );
        family(
            out,
            "apm_connections_seeded_total",
            "counter",
            "Connections found in /proc at start-up.",
            &[("", self.seeded_connections.load(Relaxed))],
        );
        family(
            out,
            "apm_ring_wakeups_total",
            "counter",
            "Wake-ups of the agent forced by the kernel programs: when a batch waits in the ring buffer (at most one per millisecond) and at each exec.",
            &[("", k(stat::RING_WAKEUPS))],
        );
        family(
            out,
            "apm_connections_adopted_total",
            "counter",
            "Sockets followed from their first data: inherited across fork, duplicated, or received over a unix socket.",
            &[("", k(stat::SOCK_ADOPTED))],
        );
        family(
            out,
            "apm_tls_libraries_hooked",
            "gauge",
            "OpenSSL library files whose SSL_read/SSL_write functions carry the agent's uprobes.",
            &[("", self.tls_libraries_hooked.load(Relaxed))],
        );
        family(
            out,
            "apm_tls_hook_failures_total",
            "counter",
            "TLS library files that could not be hooked (see the log).",
            &[("", self.tls_hook_failures.load(Relaxed))],
        );
        family(
            out,
            "apm_tls_plaintext_records_total",
            "counter",
            "Plaintext records read from OpenSSL calls.",
            &[("", k(stat::TLS_RECORDS))],
        );
        family(
            out,
            "apm_tls_plaintext_dropped_total",
            "counter",
            "OpenSSL plaintext not reported: its socket was unknown, the in-flight call table was full, or the library look-up queue was full.",
            &[
                ("reason=\"unknown_socket\"", k(stat::TLS_NO_SOCKET)),
                ("reason=\"calls_table_full\"", k(stat::TLS_CALLS_FULL)),
                (
                    "reason=\"scan_queue_full\"",
                    self.tls_scans_dropped.load(Relaxed),
                ),
            ],
        );
        // Per protocol: the label, and a counter read off each protocol's counters.
        let per_protocol = |f: fn(&ProtocolCounters) -> &AtomicU64| -> Vec<(String, u64)> {
            Protocol::ALL
                .iter()
                .zip(&self.protocols)
                .map(|(p, c)| (format!("protocol=\"{}\"", p.as_str()), f(c).load(Relaxed)))
                .collect()
        };
        for (name, help, f) in [
            (
                "apm_parse_errors_total",
                "Bytes that did not parse where a message was expected.",
                (|c| &c.parse_errors) as fn(&ProtocolCounters) -> &AtomicU64,
            ),
            (
                "apm_exchanges_incomplete_total",
                "Requests that never got a complete response (closed mid-exchange, or in flight when records of their connection were lost).",
                |c| &c.incomplete,
            ),
            (
                "apm_connection_resyncs_total",
                "Times a connection's parser was reset because some of its records were lost (ring buffer full): in-flight exchanges dropped, parsing resumed at the next message start.",
                |c| &c.resyncs,
            ),
            (
                "apm_responses_unmatched_total",
                "Responses without a request (sent before the agent started).",
                |c| &c.unmatched_responses,
            ),
            ("apm_requests_total", "Completed exchanges observed.", |c| {
                &c.requests
            }),
        ] {
            let values = per_protocol(f);
            let rows: Vec<(&str, u64)> = values.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            family(out, name, "counter", help, &rows);
        }
        let mut approximate: Vec<(String, u64)> = Vec::new();
        for (p, c) in Protocol::ALL.iter().zip(&self.protocols) {
            for (reason, v) in [
                ("end_inferred", c.end_inferred.load(Relaxed)),
                ("head_truncated", c.head_truncated.load(Relaxed)),
            ] {
                approximate.push((
                    format!("protocol=\"{}\",reason=\"{reason}\"", p.as_str()),
                    v,
                ));
            }
        }
        let rows: Vec<(&str, u64)> = approximate.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            out,
            "apm_requests_approximate_total",
            "counter",
            "Completed exchanges recorded from partial information (see reason).",
            &rows,
        );
        let pipeline_overflow: u64 = self
            .protocols
            .iter()
            .map(|c| c.pipeline_overflow.load(Relaxed))
            .sum();
        let mut maps: Vec<(String, u64)> = vec![
            ("kernel_sockets".to_owned(), k(stat::SOCK_MAP_FULL)),
            (
                "connections".to_owned(),
                self.connections_overflow.load(Relaxed),
            ),
            (
                "processes".to_owned(),
                self.processes_overflow.load(Relaxed),
            ),
            (
                "process_inventory".to_owned(),
                self.inventory_overflow.load(Relaxed),
            ),
            (
                "process_metrics".to_owned(),
                self.process_metrics_overflow.load(Relaxed),
            ),
            ("pipelined_requests".to_owned(), pipeline_overflow),
            (
                "tls_libraries".to_owned(),
                self.tls_libraries_overflow.load(Relaxed),
            ),
            (
                "otlp_series".to_owned(),
                self.otlp_series_overflow.load(Relaxed),
            ),
            (
                "k8s_containers".to_owned(),
                self.k8s_containers_overflow.load(Relaxed),
            ),
            (
                "k8s_replicasets".to_owned(),
                self.k8s_replicasets_overflow.load(Relaxed),
            ),
        ];
        maps.extend(red_overflows.iter().map(|(m, v)| ((*m).to_owned(), *v)));
        let maps: Vec<(String, u64)> = maps
            .into_iter()
            .map(|(m, v)| (format!("map=\"{m}\""), v))
            .collect();
        let maps: Vec<(&str, u64)> = maps.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            out,
            "apm_map_overflows_total",
            "counter",
            "Entries refused because a table's budget was spent.",
            &maps,
        );
        family(
            out,
            "apm_profile_samples_total",
            "counter",
            "CPU profiler samples: of threads, and of idle CPUs (not attributed).",
            &[
                ("state=\"busy\"", k(stat::PROFILE_SAMPLES)),
                ("state=\"idle\"", k(stat::PROFILE_IDLE)),
            ],
        );
        family(
            out,
            "apm_profile_lost_total",
            "counter",
            "Profiler samples or stacks lost, by reason.",
            &[
                (
                    "reason=\"stack_collision\"",
                    k(stat::PROFILE_STACK_COLLISIONS),
                ),
                ("reason=\"stack_error\"", k(stat::PROFILE_STACK_ERRORS)),
                ("reason=\"counts_full\"", k(stat::PROFILE_COUNTS_FULL)),
                ("reason=\"known_full\"", k(stat::PROFILE_KNOWN_FULL)),
                ("reason=\"events_full\"", k(stat::PROFILE_EVENTS_LOST)),
                (
                    "reason=\"store_full\"",
                    self.profile_store_dropped.load(Relaxed),
                ),
            ],
        );
        family(
            out,
            "apm_profile_store_bytes",
            "gauge",
            "Estimated memory of the continuous profile store (bounded by its budget).",
            &[("", self.profile_store_bytes.load(Relaxed))],
        );
        family(
            out,
            "apm_profile_store_evicted_total",
            "counter",
            "Time buckets evicted from the profile store to stay within its budget.",
            &[("", self.profile_store_evicted.load(Relaxed))],
        );
        family(
            out,
            "apm_profile_unresolved_frames_total",
            "counter",
            "Distinct addresses that could not be symbolized (kept as module+offset).",
            &[("", self.profile_unresolved_frames.load(Relaxed))],
        );
        family(
            out,
            "apm_profile_symbol_cache_entries",
            "gauge",
            "Symbolized addresses cached (bounded; the cache is reset when full).",
            &[("", self.profile_symbol_cache_entries.load(Relaxed))],
        );
        family(
            out,
            "apm_profile_symbol_cache_resets_total",
            "counter",
            "Times a symbol cache reached its bound and was emptied.",
            &[("", self.profile_symbol_cache_resets.load(Relaxed))],
        );
        family_f64(
            out,
            "apm_profile_symbolize_seconds_total",
            "counter",
            "CPU time the profiler spent symbolizing.",
            self.profile_symbolize_ns.load(Relaxed) as f64 / 1e9,
        );
        let per_signal = |counters: &[AtomicU64; 2]| -> Vec<(&str, u64)> {
            SIGNAL_LABELS
                .iter()
                .zip(counters)
                .map(|(l, c)| (*l, c.load(Relaxed)))
                .collect()
        };
        family(
            out,
            "apm_export_sent_total",
            "counter",
            "Spans and metric data points accepted by the OTLP endpoint.",
            &per_signal(&self.export_sent),
        );
        family(
            out,
            "apm_export_dropped_total",
            "counter",
            "Spans and metric data points dropped: export queue full, or retries exhausted.",
            &per_signal(&self.export_dropped),
        );
        family(
            out,
            "apm_export_failures_total",
            "counter",
            "Failed OTLP export attempts (each retried while the retry budget lasts).",
            &per_signal(&self.export_failures),
        );
        family(
            out,
            "apm_spans_sampled_out_total",
            "counter",
            "Spans the head sampler did not keep (errors and slow requests are always kept).",
            &[("", self.spans_sampled_out.load(Relaxed))],
        );
        family(
            out,
            "apm_trace_context_overflow_total",
            "counter",
            "Requests whose trace context could not be tracked (table full), exported as new traces.",
            &[("", self.trace_context_overflow.load(Relaxed))],
        );
        family(
            out,
            "apm_db_n_plus_one_untracked_total",
            "counter",
            "Server requests the N+1 detector could not follow (its table was full).",
            &[("", self.n_plus_one_untracked.load(Relaxed))],
        );
        family(
            out,
            "apm_spans_released_early_total",
            "counter",
            "Spans released before their hold time (buffer full): late links cannot apply.",
            &[("", self.spans_released_early.load(Relaxed))],
        );
        family(
            out,
            "apm_spans_paired_total",
            "counter",
            "Server spans made children of a client span observed on the same host.",
            &[("", self.spans_paired.load(Relaxed))],
        );
        family(
            out,
            "apm_k8s_pods_overflow_total",
            "counter",
            "Pods of this node not cached for Kubernetes metadata because max_pods was reached.",
            &[("", self.k8s_pods_overflow.load(Relaxed))],
        );
        let k8s_errors: Vec<(&str, u64)> = K8S_CALL_LABELS
            .iter()
            .zip(&self.k8s_api_errors)
            .map(|(l, c)| (*l, c.load(Relaxed)))
            .collect();
        family(
            out,
            "apm_k8s_api_errors_total",
            "counter",
            "Failed Kubernetes API calls (the watch is retried with backoff).",
            &k8s_errors,
        );
        family(
            out,
            "apm_k8s_pods_cached",
            "gauge",
            "Pods of this node in the Kubernetes metadata cache.",
            &[("", self.k8s_pods_cached.load(Relaxed))],
        );
        family(
            out,
            "apm_connections_tracked",
            "gauge",
            "Connections in the agent's table.",
            &[("", self.connections_tracked.load(Relaxed))],
        );
        family(
            out,
            "apm_processes_tracked",
            "gauge",
            "Processes in the agent's table.",
            &[("", self.processes_tracked.load(Relaxed))],
        );
        family(
            out,
            "apm_process_inventory_entries",
            "gauge",
            "Live processes in the agent's inventory (one /proc scan at start, then exec and exit events).",
            &[("", self.inventory_processes.load(Relaxed))],
        );
        family(
            out,
            "apm_process_names_deferred_total",
            "counter",
            "Execs not named at once (per-second naming budget spent): named at their first request.",
            &[("", self.process_names_deferred.load(Relaxed))],
        );
        family(
            out,
            "apm_processes_excluded_total",
            "counter",
            "Processes left out by the include/exclude selectors.",
            &[("", self.processes_excluded.load(Relaxed))],
        );
        family(
            out,
            "apm_connections_excluded_total",
            "counter",
            "Connections muted in the kernel because a selector left them (or their process) out.",
            &[("", self.connections_excluded.load(Relaxed))],
        );
        family(
            out,
            "apm_programs_attached",
            "gauge",
            "Kernel programs attached.",
            &[("", self.programs_attached.load(Relaxed))],
        );
    }
}

/// Writes an unlabelled metric family with a fractional value.
fn family_f64(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Writes one metric family: HELP, TYPE, then its samples (`labels` without braces).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}
