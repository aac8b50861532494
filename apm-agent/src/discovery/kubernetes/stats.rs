//! Kubernetes metadata's statistics on `/metrics`: the pod cache and its bounds, failed API
//! calls.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Exposition, Family, MAP_OVERFLOWS, Stats, counters};

/// Index of the pod watch's errors.
pub const K8S_WATCH: usize = 0;
/// Index of the ReplicaSet reads' errors.
pub const K8S_GET_REPLICASET: usize = 1;
const CALL_LABELS: [&str; 2] = ["call=\"watch_pods\"", "call=\"get_replicaset\""];

counters! {
    /// Pods not cached (`max_pods` reached), containers beyond the per-pod bound, times the
    /// ReplicaSet cache was full and emptied, failed API calls ([`K8S_WATCH`],
    /// [`K8S_GET_REPLICASET`]), and pods cached now.
    pub struct K8sStats {
        pub pods_overflow: AtomicU64,
        pub containers_overflow: AtomicU64,
        pub replicasets_overflow: AtomicU64,
        pub api_errors: [AtomicU64; 2],
        pub pods_cached: AtomicU64,
    }
}

const PODS_OVERFLOW: Family = Family::counter(
    "apm_k8s_pods_overflow_total",
    "Pods of this node not cached for Kubernetes metadata because max_pods was reached.",
);
const API_ERRORS: Family = Family::counter(
    "apm_k8s_api_errors_total",
    "Failed Kubernetes API calls (the watch is retried with backoff).",
);
const PODS_CACHED: Family = Family::gauge(
    "apm_k8s_pods_cached",
    "Pods of this node in the Kubernetes metadata cache.",
);

impl Stats for K8sStats {
    fn render(&self, out: &mut Exposition) {
        out.add(
            &MAP_OVERFLOWS,
            "map=\"k8s_containers\"",
            self.containers_overflow.load(Relaxed),
        );
        out.add(
            &MAP_OVERFLOWS,
            "map=\"k8s_replicasets\"",
            self.replicasets_overflow.load(Relaxed),
        );
        out.add(&PODS_OVERFLOW, "", self.pods_overflow.load(Relaxed));
        for (labels, c) in CALL_LABELS.iter().zip(&self.api_errors) {
            out.add(&API_ERRORS, *labels, c.load(Relaxed));
        }
        out.add(&PODS_CACHED, "", self.pods_cached.load(Relaxed));
    }
}
