//! The event loop, the agent's main loop on its own thread: waits on the ring buffer, drains
//! it in batches through the pipeline, applies the pipeline's kernel-table decisions,
//! refreshes the kernel counters, and on its schedule hands spans and metric points to the
//! export queues, reads the runtime metrics and sweeps dead processes.
use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use apm_common::{SockInfo, SockKey, sock_flags, stat};

use super::kernel_stats::KernelStats;
use crate::{
    ebpf::{
        KernelMaps,
        decode::{DecodeError, decode},
    },
    export::otlp::{
        encode_metrics, metrics_task,
        stats::{ExportStats, METRICS, TRACES},
    },
    metrics::{process_runtime::RuntimeCollector, red::Red, stats::MetricsStats},
    os::{lock, monotonic_ns, wait_readable},
    pipeline::Pipeline,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

/// Events handled before the RED lock is released once, so a scrape never waits long.
const EVENTS_PER_LOCK: usize = 4096;
/// `BPF_EXIST`: update only an existing entry.
const BPF_EXIST: u64 = 2;

/// Everything the event thread owns.
pub struct EventLoop {
    pub maps: KernelMaps,
    pub pipeline: Pipeline,
    pub red: Arc<Mutex<Red>>,
    /// The kernel side's counters (refreshed from the kernel's maps every second).
    pub kernel_stats: Arc<KernelStats>,
    /// Spans and points dropped at a full export queue are counted here.
    pub export_stats: Arc<ExportStats>,
    /// The runtime-metrics budget's overflow is published here.
    pub metrics_stats: Arc<MetricsStats>,
    pub stop: Arc<AtomicBool>,
    pub poll_interval: Duration,
    /// The span export queue, when traces are exported.
    pub spans: Option<tokio::sync::mpsc::Sender<crate::traces::span::Span>>,
    /// Where processes that loaded a library go for a TLS library look-up (None: TLS off).
    pub tls: Option<crate::tls::TlsRequests>,
    /// The metrics export queue and period, when metrics are exported.
    pub metrics: Option<(
        tokio::sync::mpsc::Sender<ExportMetricsServiceRequest>,
        Duration,
    )>,
    /// Runtime metrics of the observed processes and their period, when on.
    pub runtime: Option<(RuntimeCollector, Duration)>,
}

impl EventLoop {
    /// Runs until `stop` is set.
    pub fn run(mut self) {
        let fd = self.maps.events.as_raw_fd();
        let mut last_housekeeping = Instant::now();
        let mut last_sweep = Instant::now();
        let mut last_collect = Instant::now();
        let mut last_runtime = Instant::now();
        while !self.stop.load(Relaxed) {
            wait_readable(fd, self.poll_interval.min(Duration::from_secs(1)));
            self.drain_batch();
            self.apply_kernel_ops();
            self.export_spans(monotonic_ns());
            if let Some((_, every)) = &self.metrics
                && last_collect.elapsed() >= *every
            {
                last_collect = Instant::now();
                self.export_metrics();
            }
            if let Some((_, every)) = &self.runtime
                && last_runtime.elapsed() >= *every
            {
                last_runtime = Instant::now();
                self.refresh_runtime();
            }
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                last_housekeeping = Instant::now();
                self.read_kernel_stats();
                self.poll_catch_up();
                let mut red = lock(&self.red);
                self.pipeline.housekeeping(monotonic_ns(), &mut red);
            }
            if last_sweep.elapsed() >= Duration::from_secs(30) {
                last_sweep = Instant::now();
                self.sweep();
            }
        }
        // Whatever is still in the ring buffer, then everything held for export: the queues'
        // tasks get a last moment to send it after this thread ends.
        self.drain_batch();
        self.read_kernel_stats();
        self.export_spans(u64::MAX);
        if self.metrics.is_some() {
            self.export_metrics();
        }
    }

    fn drain_batch(&mut self) {
        let kernel = &*self.kernel_stats;
        let mut red = lock(&self.red);
        let mut handled = 0;
        while let Some(item) = self.maps.events.next() {
            match decode(&item) {
                Ok(event) => self.pipeline.handle(event, &mut red),
                Err(DecodeError::UnknownKind(_)) => {
                    kernel.unknown_kinds.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    kernel.decode_errors.fetch_add(1, Relaxed);
                }
            }
            handled += 1;
            if handled % EVENTS_PER_LOCK == 0 {
                drop(red);
                red = lock(&self.red);
            }
        }
        self.pipeline.end_batch(&mut red);
        drop(red);
        self.pipeline.publish();
    }

    /// Hands spans whose hold time is up to the export queue; a full queue drops them
    /// (counted): the event thread never waits for the exporter.
    fn export_spans(&mut self, now_ns: u64) {
        let Some(tx) = &self.spans else {
            return;
        };
        let Some(ready) = self.pipeline.ready_spans(now_ns) else {
            return;
        };
        let mut dropped = 0;
        for span in ready.drain(..) {
            if tx.try_send(span).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.export_stats.dropped[TRACES].fetch_add(dropped, Relaxed);
        }
    }

    /// Collects this interval's duration points and hands them to the export queue; a full
    /// queue (the endpoint is down and retries are pending) drops them, counted.
    fn export_metrics(&mut self) {
        // Fresh runtime readings go out with this interval's durations.
        if self.metrics.is_some() {
            self.refresh_runtime();
        }
        let Some((tx, _)) = &self.metrics else {
            return;
        };
        let Some((points, cfg, now)) = self.pipeline.collect_metrics(monotonic_ns()) else {
            return;
        };
        let request = {
            let red = lock(&self.red);
            encode_metrics::request(points, &red, cfg.temporality, now)
        };
        if let Some(request) = request {
            let n = metrics_task::points(&request);
            if tx.try_send(request).is_err() {
                self.export_stats.dropped[METRICS].fetch_add(n, Relaxed);
            }
        }
    }

    /// Reads the runtime metrics of the observed processes (/proc, outside the RED lock) and
    /// publishes them for /metrics and the next OTLP export.
    fn refresh_runtime(&mut self) {
        let Some((collector, _)) = &mut self.runtime else {
            return;
        };
        let readings = collector.collect(self.pipeline.runtime_targets());
        self.metrics_stats
            .process_metrics_overflow
            .store(collector.overflowed(), Relaxed);
        lock(&self.red).runtime = readings;
    }

    fn apply_kernel_ops(&mut self) {
        let ops = self.pipeline.kernel_ops();
        for (key, id) in ops.mute.drain(..) {
            // Mute only the connection the decision was about, not a newer one on the same fd.
            match self.maps.sockets.get(&key, 0) {
                Ok(info) if id == 0 || info.id == id => {
                    let muted = SockInfo {
                        flags: info.flags | sock_flags::MUTED,
                        ..info
                    };
                    if self.maps.sockets.insert(key, muted, BPF_EXIST).is_ok() {
                        self.kernel_stats.muted_connections.fetch_add(1, Relaxed);
                    } else {
                        self.kernel_stats.mute_failures.fetch_add(1, Relaxed);
                    }
                }
                _ => {}
            }
        }
        for key in ops.forget.drain(..) {
            let _ = self.maps.sockets.remove(&key);
        }
        for tgid in ops.tls_scan.drain(..) {
            if let Some(tls) = &self.tls {
                tls.scan(tgid);
            }
        }
    }

    /// Closes the `sockets-fexit` catch-up window when it is done (see `ebpf::catch_up`).
    fn poll_catch_up(&mut self) {
        let Some(catch_up) = &mut self.maps.catch_up else {
            return;
        };
        let report = catch_up.poll(Instant::now());
        if report.closed {
            self.maps.catch_up = None;
            self.kernel_stats.record_catch_up(report);
            log::info!(
                "sockets-fexit catch-up closed: {} threads still blocked (their calls unseen)",
                report.abandoned
            );
        }
    }

    fn read_kernel_stats(&self) {
        for i in 0..stat::COUNT {
            if let Ok(values) = self.maps.stats.get(&i, 0) {
                let sum: u64 = values.iter().sum();
                if let Some(counter) = self.kernel_stats.kernel.get(i as usize) {
                    counter.store(sum, Relaxed);
                }
            }
        }
        for (index, skipped) in self.maps.programs.missed() {
            if let Some(counter) = self.kernel_stats.program_runs_skipped.get(index) {
                counter.store(skipped, Relaxed);
            }
        }
    }

    /// Removes traces of processes that died without an exit event, in the agent and in the
    /// kernel socket table.
    fn sweep(&mut self) {
        {
            let mut red = lock(&self.red);
            self.pipeline.sweep_dead(&mut red);
        }
        let mut alive: HashMap<u32, bool> = HashMap::new();
        let dead: Vec<SockKey> = self
            .maps
            .sockets
            .keys()
            .flatten()
            .filter(|k| {
                !*alive
                    .entry(k.tgid)
                    .or_insert_with(|| std::path::Path::new(&format!("/proc/{}", k.tgid)).exists())
            })
            .collect();
        for key in dead {
            let _ = self.maps.sockets.remove(&key);
        }
    }
}
