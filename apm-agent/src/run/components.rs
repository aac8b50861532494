//! Building the components of `apm-agent run` from the checked configuration, before
//! anything is loaded into the kernel: the shared aggregations, the runtime with the
//! listener and the export tasks, the Kubernetes watch, the profile store.
use std::{
    net::TcpListener,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::mpsc;

use super::{RunError, stats::StageStats};
use crate::{
    alerts::{Alerts, webhook},
    config::Checked,
    discovery::kubernetes,
    export::otlp::{metrics_task, stats::ExportStats, traces_task, transport::Transport},
    metrics::{
        db::DbConfig,
        otel::OtelConfig,
        red::{Red, RedConfig},
    },
    profiles::store::Store,
    server::{self, Shared},
    traces::{span::Span, tracer::TracerConfig},
};

/// Finished spans wait this long for a late same-host pairing before export.
const SPAN_HOLD_NS: u64 = 1_000_000_000;

/// What the later steps share.
pub struct Components {
    /// Every stage's statistics.
    pub stats: StageStats,
    /// Set once every kernel program is attached (`/readyz`).
    pub ready: Arc<AtomicBool>,
    pub red: Arc<Mutex<Red>>,
    /// The alert engine, fed each window.
    pub alerts: Arc<Mutex<Alerts>>,
    /// The listener's and the exporters' runtime.
    pub runtime: tokio::runtime::Runtime,
    pub kube: Option<kubernetes::Started>,
    /// The continuous profiler's store, when profiling is on.
    pub store: Option<Arc<Mutex<Store>>>,
    pub exports: Exports,
}

/// What the export setup gives the event loop.
pub struct Exports {
    pub tracing: Option<TracerConfig>,
    pub spans: Option<mpsc::Sender<Span>>,
    pub metrics_config: Option<OtelConfig>,
    pub metrics: Option<(mpsc::Sender<ExportMetricsServiceRequest>, Duration)>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Components {
    /// Builds them and starts the listener on `listener` and the export tasks.
    pub fn build(checked: &Checked, listener: TcpListener) -> Result<Self, RunError> {
        let cfg = &checked.cfg;
        let stats = StageStats::default();
        let ready = Arc::new(AtomicBool::new(false));
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
            .map_err(RunError::Runtime)?;
        // Started early: the first list of the node's pods runs while the programs load.
        let kube = kubernetes::start(
            &kubernetes::Settings {
                mode: cfg.kubernetes,
                max_pods: cfg.kubernetes_max_pods,
            },
            &runtime,
            &stats.k8s,
        );
        let store = cfg.profiling.then(|| {
            Arc::new(Mutex::new(Store::new(
                cfg.profile_bucket_secs,
                cfg.profile_store_bytes,
                cfg.profile_frequency_hz,
            )))
        });
        let alerts = Arc::new(Mutex::new(Alerts::new(cfg.alerts.clone())));
        // Runs for the agent's life; ended with the runtime.
        let _webhook = webhook::start(
            &cfg.alerts.webhook,
            alerts.clone(),
            format!("http://{}", cfg.listen),
            &runtime,
        )?;
        let shared = Shared {
            alerts: alerts.clone(),
            red: red.clone(),
            stats: stats.registry(),
            ready: ready.clone(),
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
        let exports = start_export(checked, &runtime, &stats.export)?;
        Ok(Self {
            stats,
            ready,
            red,
            alerts,
            runtime,
            kube,
            store,
            exports,
        })
    }
}

/// Starts the span and metrics export tasks for the configured endpoints: the settings for
/// the pipeline and the queues it feeds. The tasks wait on their queues until the event loop
/// runs.
fn start_export(
    checked: &Checked,
    runtime: &tokio::runtime::Runtime,
    stats: &Arc<ExportStats>,
) -> Result<Exports, RunError> {
    let cfg = &checked.cfg;
    let mut exports = Exports {
        tracing: None,
        spans: None,
        metrics_config: None,
        metrics: None,
        tasks: Vec::new(),
    };
    let Some(settings) = &checked.otlp else {
        return Ok(exports);
    };
    // A gRPC channel spawns its connection task when made: it needs the runtime's context.
    let _runtime = runtime.enter();
    if let Some(url) = &settings.metrics_url {
        let transport = Transport::new(settings, url)?;
        let (tx, rx) = mpsc::channel(metrics_task::QUEUE);
        exports
            .tasks
            .push(runtime.spawn(metrics_task::run(rx, transport, stats.clone())));
        let every = Duration::from_millis(cfg.metric_export_interval_ms.max(100));
        exports.metrics_config = Some(checked.otel_metrics);
        exports.metrics = Some((tx, every));
        log::info!(
            "exporting metrics to {url} ({:?}) every {every:?}",
            settings.protocol
        );
    }
    let Some(url) = &settings.traces_url else {
        return Ok(exports);
    };
    let transport = Transport::new(settings, url)?;
    let capacity = cfg.export_queue_spans.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    exports
        .tasks
        .push(runtime.spawn(traces_task::run(rx, transport, stats.clone())));
    log::info!("exporting spans to {url} ({:?})", settings.protocol);
    exports.tracing = Some(TracerConfig {
        sampler: checked.trace_sampler,
        slow_ns: cfg.traces_slow_ms.saturating_mul(1_000_000),
        max_open: cfg.max_connections,
        hold_ns: SPAN_HOLD_NS,
        max_held: capacity,
    });
    exports.spans = Some(tx);
    Ok(exports)
}
