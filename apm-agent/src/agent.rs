//! `apm-agent run`: checks privileges, mounts tracefs, loads and attaches the kernel
//! programs, seeds pre-existing connections, then runs the event thread and the listener until
//! SIGINT/SIGTERM, and detaches cleanly.
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::mpsc;

use crate::{
    config::Config,
    console,
    discovery::{
        kubernetes,
        resource::{self, parse_resource_attributes},
        service_name,
    },
    ebpf::{
        LoadError, LoadOptions, Probes, ProfilerLoad, drain::Drain, drain::lock,
        profiler::SamplingOptions, seed, tracefs,
    },
    export::otlp::{
        metrics_task,
        settings::{Settings, metrics_config},
        traces_task,
        transport::Transport,
    },
    internal::Internal,
    metrics::db::DbConfig,
    metrics::process_runtime::Collector as ProcessRuntime,
    metrics::{
        otel::OtelConfig,
        red::{Red, RedConfig},
    },
    pipeline::{Pipeline, PipelineConfig},
    privileges,
    profiles::store::Store,
    profiling::{self, ProcessFilter, Sampler},
    server::{self, Shared},
    traces::{sampling::Sampler as TraceSampler, span::Span, tracer::TracerConfig},
};

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("insufficient privileges: missing {0}; run as root (sudo apm-agent run)")]
    Privileges(String),
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Tracefs(#[source] io::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("OTLP exporter: {0}")]
    Export(#[from] crate::export::otlp::transport::SendError),
    #[error("the event thread stopped abnormally")]
    EventThread,
}

/// Runs the agent until a termination signal.
pub fn run(cfg: Config) -> Result<(), AgentError> {
    let mut needed = privileges::REQUIRED.to_vec();
    if tracefs::find().is_none() {
        needed.push(privileges::MOUNT);
    }
    let missing = privileges::missing(privileges::effective(), &needed);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|n| format!("{} ({})", n.name, n.why))
            .collect();
        return Err(AgentError::Privileges(names.join(", ")));
    }
    if cfg.profiling && cfg.profile_kernel_stacks && !privileges::kernel_symbols_visible() {
        let n = privileges::KERNEL_SYMBOLS;
        log::warn!(
            "/proc/kallsyms hides kernel addresses: kernel frames in profiles stay unnamed \
             (grant {} to {})",
            n.name,
            n.why
        );
    }
    raise_memlock();
    apply_naming_defaults(&cfg);
    let (root, state) = tracefs::ensure().map_err(AgentError::Tracefs)?;
    if state == tracefs::TracefsState::MountedNow {
        log::info!("mounted tracefs at {}", root.display());
    }
    // Bind before loading anything: a busy port fails fast.
    let listener =
        std::net::TcpListener::bind(cfg.listen).map_err(|source| AgentError::Listen {
            addr: cfg.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AgentError::Listen {
            addr: cfg.listen,
            source,
        })?;

    let internal = Arc::new(Internal::default());
    let red = Arc::new(Mutex::new(Red::new(RedConfig {
        apdex_threshold_ns: cfg.apdex_threshold_ms.saturating_mul(1_000_000),
        max_services: cfg.max_services,
        max_routes_per_service: cfg.max_routes_per_service,
        max_series: cfg.max_series,
        max_peers: cfg.max_server_addresses,
        max_route_windows: cfg.max_route_windows,
        db: DbConfig {
            max_series: cfg.max_series,
            max_names: cfg.max_db_names,
            max_statements_per_service: cfg.max_statements_per_service,
        },
    })));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("apm-listener")
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    // Started early: the first list of the node's pods runs while the programs load.
    let mut kube = kubernetes::start(
        &kubernetes::Settings {
            mode: cfg.kubernetes,
            max_pods: cfg.kubernetes_max_pods,
        },
        &runtime,
        &internal,
    );
    let store = cfg.profiling.then(|| {
        Arc::new(Mutex::new(Store::new(
            cfg.profile_bucket_secs,
            cfg.profile_store_bytes,
            cfg.profile_frequency_hz,
        )))
    });
    let shared = Shared {
        red: red.clone(),
        internal: internal.clone(),
        window_secs: cfg.window_secs,
        slow_queries_top: cfg.slow_queries_top,
        profiles: store.clone(),
    };
    let listen = cfg.listen;
    runtime.spawn(async move {
        let result = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => server::serve(l, shared).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            log::error!("listener on {listen} stopped: {e}");
        }
    });

    let mut probes = Probes::load(&LoadOptions {
        agent_tgid: std::process::id(),
        capture_bytes: cfg.capture_bytes,
        ring_buffer_bytes: cfg.ring_buffer_bytes,
        wakeup_bytes: cfg.wakeup_bytes,
        max_sockets: cfg.max_kernel_sockets,
        listen: Some(cfg.listen),
        library_events: cfg.tls,
        profiler: cfg.profiling.then_some(ProfilerLoad {
            count_entries: cfg.profile_stack_entries.saturating_mul(2),
            stack_entries: cfg.profile_stack_entries,
            kernel_stacks: cfg.profile_kernel_stacks,
            pid_filter: !cfg.profile_pids.is_empty(),
        }),
    })?;
    // Attach before mapping the ring buffer: attaching parses the kernel BTF (several MB,
    // freed afterwards), and the two together would set the agent's peak memory.
    probes.attach_all()?;
    let profiler_maps = match &store {
        Some(_) => {
            let mut pmaps = probes.attach_profiler(SamplingOptions {
                frequency_hz: cfg.profile_frequency_hz,
                hardware_cycles: cfg.profile_hardware_cycles,
            })?;
            pmaps.set_pids(&cfg.profile_pids)?;
            Some(pmaps)
        }
        None => None,
    };
    let mut maps = probes.take_maps()?;
    let seeded = seed::seed_existing(&mut maps.sockets, std::process::id(), cfg.listen.port());
    internal
        .programs_attached
        .store(probes.attached().len() as u64, Relaxed);
    internal
        .seeded_connections
        .store(u64::from(seeded.seeded), Relaxed);
    log::info!(
        "attached {} kernel programs; {} existing connections seeded; metrics on http://{}/metrics",
        probes.attached().len(),
        seeded.seeded,
        cfg.listen
    );
    if seeded.table_full > 0 {
        log::warn!(
            "{} existing connections not seeded: kernel socket table full",
            seeded.table_full
        );
    }

    if let Some(kube) = kube.as_mut()
        && runtime.block_on(kube.wait_synced(KUBE_SYNC_WAIT)) == kubernetes::Sync::Pending
    {
        log::warn!(
            "Kubernetes: the node's pods are not listed yet; processes named before they are get no pod metadata"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The TLS thread takes the loaded object (hooking a library needs it) and hands it back
    // at the end.
    let holder = start_tls(&cfg, probes, &internal, &stop)?;
    // Ready once every program is loaded, the TLS ones included.
    internal.ready.store(true, Relaxed);
    let exports = start_export(&cfg, &runtime, &internal)?;
    let drain = Drain {
        maps,
        pipeline: Pipeline::new(PipelineConfig {
            detect_attempts: cfg.detect_attempts,
            idle_timeout_ns: cfg.response_idle_timeout_secs.saturating_mul(1_000_000_000),
            max_connections: cfg.max_connections,
            max_processes: cfg.max_processes,
            max_inventory_processes: cfg.max_inventory_processes,
            exec_names_per_sec: cfg.exec_names_per_sec,
            selectors: cfg
                .selectors()
                .map_err(|e| crate::config::ConfigError::Invalid {
                    key: "include/exclude",
                    reason: e.to_string(),
                })?,
            tracing: exports.tracing,
            metrics: exports.metrics_config,
            n_plus_one_threshold: cfg.n_plus_one_threshold,
        }),
        red: red.clone(),
        internal: internal.clone(),
        stop: stop.clone(),
        poll_interval: Duration::from_millis(cfg.poll_interval_ms),
        spans: exports.spans,
        metrics: exports.metrics,
        tls: holder.tls_requests(),
        runtime: (cfg.process_metrics_interval_secs > 0).then(|| {
            (
                ProcessRuntime::new(cfg.max_process_metrics),
                Duration::from_secs(cfg.process_metrics_interval_secs),
            )
        }),
    };
    let events = std::thread::Builder::new()
        .name("apm-events".to_owned())
        .spawn(move || drain.run())
        .map_err(AgentError::Runtime)?;
    let profiler = match (profiler_maps, store) {
        (Some(pmaps), Some(store)) => {
            let (internal, stop) = (internal.clone(), stop.clone());
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
                        let sampler = Sampler::new(pmaps, max_processes, filter, debug_info);
                        profiling::run_continuous(sampler, store, internal, stop, every);
                    })
                    .map_err(AgentError::Runtime)?,
            )
        }
        _ => None,
    };

    runtime.block_on(windows_until_signal(&cfg, &red));
    log::info!("stopping: detaching kernel programs");
    stop.store(true, Relaxed);
    let profiler_joined = profiler.map(std::thread::JoinHandle::join);
    let joined = events.join();
    holder.detach();
    // The event thread handed over what it still held; give the export tasks a moment.
    let flush = Duration::from_millis(cfg.otlp_timeout_ms).min(Duration::from_secs(5));
    runtime.block_on(async {
        for task in exports.tasks {
            let _ = tokio::time::timeout(flush, task).await;
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if matches!(profiler_joined, Some(Err(_))) {
        return Err(AgentError::EventThread);
    }
    joined.map_err(|_| AgentError::EventThread)
}

/// What the export setup gives the event thread.
struct Exports {
    tracing: Option<TracerConfig>,
    spans: Option<mpsc::Sender<Span>>,
    metrics_config: Option<OtelConfig>,
    metrics: Option<(mpsc::Sender<ExportMetricsServiceRequest>, Duration)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the span and metrics export tasks for the configured endpoints: the settings for
/// the pipeline and the queues it feeds.
fn start_export(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    internal: &Arc<Internal>,
) -> Result<Exports, AgentError> {
    let mut exports = Exports {
        tracing: None,
        spans: None,
        metrics_config: None,
        metrics: None,
        tasks: Vec::new(),
    };
    let Some(settings) = Settings::from_config(cfg)? else {
        return Ok(exports);
    };
    // A gRPC channel spawns its connection task when made: it needs the runtime's context.
    let _runtime = runtime.enter();
    if let Some(url) = &settings.metrics_url {
        let metrics_config = metrics_config(cfg)?;
        let transport = Transport::new(&settings, url)?;
        let (tx, rx) = mpsc::channel(metrics_task::QUEUE);
        exports
            .tasks
            .push(runtime.spawn(metrics_task::run(rx, transport, internal.clone())));
        let every = Duration::from_millis(cfg.metric_export_interval_ms.max(100));
        exports.metrics_config = Some(metrics_config);
        exports.metrics = Some((tx, every));
        log::info!(
            "exporting metrics to {url} ({:?}) every {every:?}",
            settings.protocol
        );
    }
    let Some(url) = settings.traces_url.clone() else {
        return Ok(exports);
    };
    let sampler = TraceSampler::parse(&cfg.traces_sampler, cfg.traces_sampler_arg.as_deref())
        .map_err(|e| crate::config::ConfigError::Invalid {
            key: "traces_sampler",
            reason: e.to_string(),
        })?;
    let transport = Transport::new(&settings, &url)?;
    let capacity = cfg.export_queue_spans.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    exports
        .tasks
        .push(runtime.spawn(traces_task::run(rx, transport, internal.clone())));
    log::info!("exporting spans to {url} ({:?})", settings.protocol);
    exports.tracing = Some(TracerConfig {
        sampler,
        slow_ns: cfg.traces_slow_ms.saturating_mul(1_000_000),
        max_open: cfg.max_connections,
        hold_ns: SPAN_HOLD_NS,
        max_held: capacity,
    });
    exports.spans = Some(tx);
    Ok(exports)
}

/// The agent's `OTEL_SERVICE_NAME` (or the `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`)
/// names processes that declare none; its other resource attributes go on every resource.
fn apply_naming_defaults(cfg: &Config) {
    let attributes = cfg.resource_attributes.as_deref().unwrap_or("");
    if !attributes.trim().is_empty() {
        resource::set_agent_attributes(attributes);
    }
    let from_attributes = parse_resource_attributes(attributes)
        .into_iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v);
    if let Some(name) = cfg.default_service_name.clone().or(from_attributes) {
        log::info!("processes that declare no service name are named {name:?}");
        service_name::set_default(&name);
    }
}

/// Longest wait for the first list of the node's pods before events are read: processes are
/// named (and their resource built) once, at their first request.
const KUBE_SYNC_WAIT: Duration = Duration::from_secs(3);

/// Finished spans wait this long for a late same-host pairing before export.
const SPAN_HOLD_NS: u64 = 1_000_000_000;

/// Rolls the percentile window (and prints the console table) until SIGINT or SIGTERM.
async fn windows_until_signal(cfg: &Config, red: &Mutex<Red>) {
    let period = Duration::from_secs(cfg.window_secs);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut started = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let elapsed = started.elapsed().as_secs_f64();
                started = Instant::now();
                let table = {
                    let mut red = lock(red);
                    let rows = red.roll_window(elapsed);
                    cfg.console.then(|| console::table(rows, cfg.console_rows, cfg.window_secs))
                };
                if let Some(table) = table {
                    print!("{table}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = async {
                match terminate.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => break,
        }
    }
}

/// BPF memory is charged to the cgroup on current kernels; older ones need RLIMIT_MEMLOCK.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels that charge BPF memory to cgroups",
            io::Error::last_os_error()
        );
    }
}

/// Who holds the loaded kernel object: this thread, or the TLS hooking thread (hooking a
/// library needs the object), which hands it back when it stops.
enum Holder {
    Here(Probes),
    Tls(crate::tls::TlsRequests, std::thread::JoinHandle<Probes>),
}

impl Holder {
    fn tls_requests(&self) -> Option<crate::tls::TlsRequests> {
        match self {
            Self::Here(_) => None,
            Self::Tls(requests, _) => Some(requests.clone()),
        }
    }

    /// Detaches everything (dropping the object does).
    fn detach(self) {
        match self {
            Self::Here(probes) => drop(probes),
            Self::Tls(_, thread) => drop(thread.join()),
        }
    }
}

/// Starts TLS hooking unless it is off or its programs cannot be loaded here (the agent then
/// runs on without TLS plaintext).
fn start_tls(
    cfg: &Config,
    mut probes: Probes,
    internal: &Arc<Internal>,
    stop: &Arc<AtomicBool>,
) -> Result<Holder, AgentError> {
    if !cfg.tls {
        return Ok(Holder::Here(probes));
    }
    if let Err(e) = probes.load_tls() {
        log::warn!("TLS plaintext unavailable (OpenSSL uprobes did not load): {e}");
        return Ok(Holder::Here(probes));
    }
    let (requests, thread) = crate::tls::start(
        probes,
        cfg.max_tls_libraries,
        internal.clone(),
        stop.clone(),
    )
    .map_err(AgentError::Runtime)?;
    Ok(Holder::Tls(requests, thread))
}
