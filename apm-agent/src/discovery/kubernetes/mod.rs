//! Kubernetes metadata: which pod, container and workload a process belongs to.
//!
//! When the agent runs in Kubernetes (a DaemonSet), a task on the agent's runtime watches the
//! pods of its node (see [`watch`]) into a bounded cache (see [`cache`]). The event thread
//! finds a process there by the container id in its cgroup path, or by its pod UID while the
//! pod's status does not list the container yet (see [`super::cgroup`]), when it names the
//! process ([`super::service_name`]) and builds its OTLP resource ([`super::resource`]).
//!
//! The cache is reached through one process-wide handle, set once at start-up, so that the
//! process table needs no change: without Kubernetes the handle stays empty and a lookup
//! costs nothing (not even reading the cgroup file).
pub mod backoff;
pub mod cache;
pub mod model;
pub mod owners;
pub mod pod;
pub mod stats;
pub mod watch;

#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use model::ContainerMeta;

use stats::K8sStats;

/// Whether to look for Kubernetes metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// When the agent runs in a pod (`KUBERNETES_SERVICE_HOST` is set).
    #[default]
    Auto,
    /// Always (the API server from the in-cluster settings or a kubeconfig).
    On,
    /// Never.
    Off,
}

/// Why Kubernetes metadata is not available.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes client configuration (in-cluster service account or kubeconfig): {0}")]
    Client(#[source] kube::Error),
}

/// The watcher's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// Pods kept at most (the node's pods: a few hundred on the largest nodes).
    pub max_pods: usize,
}

impl Settings {
    /// Whether the watcher should run, given the agent's environment.
    pub fn enabled(&self, in_cluster: bool) -> bool {
        match self.mode {
            Mode::Auto => in_cluster,
            Mode::On => true,
            Mode::Off => false,
        }
    }
}

/// The cache the lookups read, set once when the watcher starts.
static CACHE: OnceLock<Arc<cache::Cache>> = OnceLock::new();

/// What the cache knows about the process whose `/proc/<pid>/cgroup` reads `cgroup`:
/// by container id first (it names the container), else by pod UID.
pub fn lookup_cgroup(cgroup: &str) -> Option<ContainerMeta> {
    let cache = CACHE.get()?;
    find(cache, cgroup)
}

/// [`lookup_cgroup`] for `pid`; reads nothing when Kubernetes metadata is off.
pub fn lookup_pid(pid: u32) -> Option<ContainerMeta> {
    let cache = CACHE.get()?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    find(cache, &cgroup)
}

fn find(cache: &cache::Cache, cgroup: &str) -> Option<ContainerMeta> {
    super::cgroup::container_id(cgroup)
        .and_then(|id| cache.by_container(&id))
        .or_else(|| super::cgroup::pod_uid(cgroup).and_then(|uid| cache.by_pod(&uid)))
}

/// This node's name: `K8S_NODE_NAME` (set by the DaemonSet from `spec.nodeName` through the
/// Downward API), else the host name (which the node name usually is).
pub fn node_name() -> String {
    std::env::var("K8S_NODE_NAME")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(super::host::host_name)
}

/// A started watcher.
pub struct Started {
    synced: tokio::sync::watch::Receiver<bool>,
}

/// Where the first list of the node's pods stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// In the cache.
    Listed,
    /// Not complete yet (the API server is slow or down; the watcher keeps trying).
    Pending,
    /// The watcher stopped (no client configuration; it logged why).
    Stopped,
}

impl Started {
    /// Waits, at most `limit`, for the first complete list of the node's pods, so that the
    /// processes named at start-up get their pod's names. Never fails: without the list the
    /// agent goes on and names processes without Kubernetes.
    pub async fn wait_synced(&mut self, limit: Duration) -> Sync {
        match tokio::time::timeout(limit, self.synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Sync::Listed,
            Ok(Err(_)) => Sync::Stopped,
            Err(_) => Sync::Pending,
        }
    }
}

/// Starts the pod watcher on `runtime` when `settings` say so; lookups find its pods from
/// then on. `None` when Kubernetes metadata is off or already started.
pub fn start(
    settings: &Settings,
    runtime: &tokio::runtime::Runtime,
    stats: &Arc<K8sStats>,
) -> Option<Started> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if !settings.enabled(in_cluster) {
        return None;
    }
    let cache = Arc::new(cache::Cache::new(settings.max_pods));
    CACHE.set(cache.clone()).ok()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let node = node_name();
    let stats = stats.clone();
    let max_pods = settings.max_pods;
    runtime.spawn(async move {
        let client = match kube::Client::try_default().await.map_err(KubeError::Client) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("Kubernetes metadata off: {e}");
                return;
            }
        };
        log::info!("Kubernetes: watching the pods of node {node}");
        watch::run(watch::Watch {
            client,
            node,
            cache,
            stats,
            synced: tx,
            max_replicasets: max_pods,
        })
        .await;
    });
    Some(Started { synced: rx })
}
