//! Each stage's statistics, made once at start-up: every stage gets its own handle, and the
//! listener gets the list of them ([`Registry`]) to render on `/metrics`.
use std::sync::Arc;

use super::kernel_stats::KernelStats;
use crate::{
    discovery::{kubernetes::stats::K8sStats, stats::DiscoveryStats},
    export::otlp::stats::ExportStats,
    metrics::stats::MetricsStats,
    pipeline::stats::PipelineStats,
    profiles::stats::ProfileStats,
    protocols::stats::ProtocolStats,
    telemetry::Registry,
    tls::stats::TlsStats,
    traces::stats::TraceStats,
};

/// The handles, one per stage, for wiring.
#[derive(Debug, Clone, Default)]
pub struct StageStats {
    pub kernel: Arc<KernelStats>,
    pub pipeline: Arc<PipelineStats>,
    pub protocols: Arc<ProtocolStats>,
    pub discovery: Arc<DiscoveryStats>,
    pub traces: Arc<TraceStats>,
    pub metrics: Arc<MetricsStats>,
    pub export: Arc<ExportStats>,
    pub tls: Arc<TlsStats>,
    pub profiles: Arc<ProfileStats>,
    pub k8s: Arc<K8sStats>,
}

impl StageStats {
    /// Every stage, in the order of the data flow, for the listener.
    pub fn registry(&self) -> Registry {
        Registry::default()
            .with("kernel", self.kernel.clone())
            .with("pipeline", self.pipeline.clone())
            .with("protocols", self.protocols.clone())
            .with("discovery", self.discovery.clone())
            .with("tls", self.tls.clone())
            .with("metrics", self.metrics.clone())
            .with("traces", self.traces.clone())
            .with("export", self.export.clone())
            .with("profiles", self.profiles.clone())
            .with("k8s", self.k8s.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::{
        export::prometheus,
        metrics::{
            db::DbConfig,
            red::{Red, RedConfig},
        },
    };

    /// Moving any one counter of any stage changes what `/metrics` shows: none is kept and
    /// never exported.
    #[test]
    fn every_counter_of_every_stage_is_exported() {
        let stats = StageStats::default();
        let registry = stats.registry();
        let red = Red::new(RedConfig {
            apdex_threshold_ns: 1,
            max_services: 1,
            max_routes_per_service: 1,
            max_series: 1,
            max_peers: 1,
            max_route_windows: 1,
            db: DbConfig {
                max_series: 1,
                max_names: 1,
                max_statements_per_service: 1,
            },
        });
        let render = || prometheus::render(&red, None, &registry, 1);
        let base = render();
        let counters = registry.atomics();
        assert!(counters.len() >= 100, "{} counters", counters.len());
        let mut missing = Vec::new();
        for (name, counter) in &counters {
            counter.store(1_234_567, Relaxed);
            if render() == base {
                missing.push(name.clone());
            }
            counter.store(0, Relaxed);
        }
        assert!(missing.is_empty(), "not on /metrics: {missing:?}");
        // The one that never was.
        stats.profiles.processes_overflow.store(7, Relaxed);
        assert!(render().contains("apm_map_overflows_total{map=\"profile_processes\"} 7"));
    }

    /// One HELP and TYPE per family, however many stages add rows to it.
    #[test]
    fn each_family_is_written_once() {
        let text = prometheus::render(
            &Red::new(RedConfig {
                apdex_threshold_ns: 1,
                max_services: 1,
                max_routes_per_service: 1,
                max_series: 1,
                max_peers: 1,
                max_route_windows: 1,
                db: DbConfig {
                    max_series: 1,
                    max_names: 1,
                    max_statements_per_service: 1,
                },
            }),
            Some(&crate::alerts::Alerts::new(Default::default())),
            &StageStats::default().registry(),
            1,
        );
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "{text}");
        assert!(text.contains("apm_map_overflows_total{map=\"kernel_sockets\"} 0"));
        assert!(text.contains("apm_map_overflows_total{map=\"db_statements\"} 0"));
    }
}
