//! Spawning the threads of `apm-agent run` once the kernel programs are attached: TLS
//! hooking, the event loop, the continuous profiler.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{
    RunError,
    components::Components,
    cpu_profiler,
    event_loop::EventLoop,
    kernel::Kernel,
    stack_sampler::{ProcessFilter, StackSampler},
};
use crate::{
    config::Checked,
    discovery::kubernetes,
    ebpf::Probes,
    metrics::process_runtime::RuntimeCollector,
    pipeline::{Pipeline, PipelineConfig, stats::Published},
    tls::{TlsRequests, stats::TlsStats},
};

/// Longest wait for the first list of the node's pods before events are read: processes are
/// named (and their resource built) once, at their first request.
const KUBE_SYNC_WAIT: Duration = Duration::from_secs(3);

/// The agent's threads, running.
pub struct Running {
    pub stop: Arc<AtomicBool>,
    pub events: JoinHandle<()>,
    pub profiler: Option<JoinHandle<()>>,
    pub holder: Holder,
}

/// Starts the threads; the agent is ready when this returns.
pub fn start(
    checked: &Checked,
    components: &mut Components,
    kernel: Kernel,
) -> Result<Running, RunError> {
    let cfg = &checked.cfg;
    let stats = &components.stats;
    if let Some(kube) = components.kube.as_mut()
        && components
            .runtime
            .block_on(kube.wait_synced(KUBE_SYNC_WAIT))
            == kubernetes::Sync::Pending
    {
        log::warn!(
            "Kubernetes: the node's pods are not listed yet; processes named before they are get no pod metadata"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The TLS thread takes the loaded object (hooking a library needs it) and hands it back
    // at the end.
    let holder = start_tls(checked, kernel.probes, &stats.tls, &stop)?;
    // Ready once every program is loaded, the TLS ones included.
    components.ready.store(true, Relaxed);
    let exports = &mut components.exports;
    let event_loop = EventLoop {
        maps: kernel.maps,
        pipeline: Pipeline::new(
            PipelineConfig {
                detect_attempts: cfg.detect_attempts,
                idle_timeout_ns: cfg.response_idle_timeout_secs.saturating_mul(1_000_000_000),
                max_connections: cfg.max_connections,
                max_processes: cfg.max_processes,
                max_inventory_processes: cfg.max_inventory_processes,
                exec_names_per_sec: cfg.exec_names_per_sec,
                selectors: checked.selectors.clone(),
                tracing: exports.tracing.take(),
                metrics: exports.metrics_config.take(),
                n_plus_one_threshold: cfg.n_plus_one_threshold,
            },
            Published {
                pipeline: stats.pipeline.clone(),
                protocols: stats.protocols.clone(),
                discovery: stats.discovery.clone(),
                traces: stats.traces.clone(),
                metrics: stats.metrics.clone(),
                tls: stats.tls.clone(),
            },
        ),
        red: components.red.clone(),
        kernel_stats: stats.kernel.clone(),
        export_stats: stats.export.clone(),
        metrics_stats: stats.metrics.clone(),
        stop: stop.clone(),
        poll_interval: Duration::from_millis(cfg.poll_interval_ms),
        spans: exports.spans.take(),
        metrics: exports.metrics.take(),
        tls: holder.tls_requests(),
        runtime: (cfg.process_metrics_interval_secs > 0).then(|| {
            (
                RuntimeCollector::new(cfg.max_process_metrics),
                Duration::from_secs(cfg.process_metrics_interval_secs),
            )
        }),
    };
    let events = std::thread::Builder::new()
        .name("apm-events".to_owned())
        .spawn(move || event_loop.run())
        .map_err(RunError::Runtime)?;
    let profiler = match (kernel.profiler, components.store.clone()) {
        (Some(pmaps), Some(store)) => {
            let (profile_stats, stop) = (stats.profiles.clone(), stop.clone());
            let every = Duration::from_secs(cfg.profile_drain_secs);
            let max_processes = cfg.max_processes;
            let debug_info = cfg.profile_debug_info;
            let filter = ProcessFilter {
                pids: cfg.profile_pids.clone(),
                executables: cfg.profile_executables.clone(),
                services: cfg.profile_services.clone(),
            };
            Some(
                std::thread::Builder::new()
                    .name("apm-profiler".to_owned())
                    .spawn(move || {
                        // The symbolizer is not Send: it is made here, in its thread.
                        let sampler = StackSampler::new(pmaps, max_processes, filter, debug_info);
                        cpu_profiler::run_continuous(sampler, store, profile_stats, stop, every);
                    })
                    .map_err(RunError::Runtime)?,
            )
        }
        _ => None,
    };
    Ok(Running {
        stop,
        events,
        profiler,
        holder,
    })
}

/// Who holds the loaded kernel object: this thread, or the TLS hooking thread (hooking a
/// library needs the object), which hands it back when it stops.
pub enum Holder {
    Here(Probes),
    Tls(TlsRequests, JoinHandle<Probes>),
}

impl Holder {
    fn tls_requests(&self) -> Option<TlsRequests> {
        match self {
            Self::Here(_) => None,
            Self::Tls(requests, _) => Some(requests.clone()),
        }
    }

    /// Detaches everything (dropping the object does).
    pub fn detach(self) {
        match self {
            Self::Here(probes) => drop(probes),
            Self::Tls(_, thread) => drop(thread.join()),
        }
    }
}

/// Starts TLS hooking unless it is off or its programs cannot be loaded here (the agent then
/// runs on without TLS plaintext).
fn start_tls(
    checked: &Checked,
    mut probes: Probes,
    stats: &Arc<TlsStats>,
    stop: &Arc<AtomicBool>,
) -> Result<Holder, RunError> {
    if !checked.cfg.tls {
        return Ok(Holder::Here(probes));
    }
    if let Err(e) = probes.load_tls() {
        log::warn!("TLS plaintext unavailable (OpenSSL uprobes did not load): {e}");
        return Ok(Holder::Here(probes));
    }
    let (requests, thread) = crate::tls::start(
        probes,
        checked.cfg.max_tls_libraries,
        stats.clone(),
        stop.clone(),
    )
    .map_err(RunError::Runtime)?;
    Ok(Holder::Tls(requests, thread))
}
