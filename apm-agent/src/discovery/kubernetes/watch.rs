//! The pod watcher: one list-then-watch of this node's pods (`spec.nodeName=<node>`), kept
//! up to date by the API server's events instead of polling, feeding the cache.
//!
//! Errors (API server down, token refused) are counted and logged once per outage; the
//! watcher retries after a pause ([`super::backoff`]: 0.8 s doubling to 30 s, with jitter)
//! and resumes from the last resource version it saw. The cache keeps what it had meanwhile.
use std::sync::{Arc, atomic::Ordering::Relaxed};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, runtime::watcher};

use super::stats::{K8S_GET_REPLICASET, K8S_WATCH, K8sStats};
use super::{
    backoff::Backoff,
    cache::Cache,
    owners::{Cost, ReplicaSets},
    pod,
};

/// What the watcher needs.
pub struct Watch {
    pub client: Client,
    /// This node's name: only its pods are watched.
    pub node: String,
    pub cache: Arc<Cache>,
    pub stats: Arc<K8sStats>,
    /// Set to true once the first complete list is in the cache.
    pub synced: tokio::sync::watch::Sender<bool>,
    /// ReplicaSets remembered (their Deployment).
    pub max_replicasets: usize,
}

/// The field selector that restricts the watch to the pods scheduled on `node`.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Runs until the runtime stops.
pub async fn run(w: Watch) {
    let api: Api<Pod> = Api::all(w.client.clone());
    let config = watcher::Config::default().fields(&node_selector(&w.node));
    let mut replicasets = ReplicaSets::new(w.client.clone(), w.max_replicasets);
    let mut stream = std::pin::pin!(watcher(api, config));
    let mut backoff = Backoff::default();
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                // `Init` comes before every list attempt: it is no sign of a working server.
                if !matches!(event, watcher::Event::Init) {
                    backoff.reset();
                    if failing {
                        log::info!("Kubernetes: watching the pods of node {} again", w.node);
                        failing = false;
                    }
                }
                handle(&w, &mut replicasets, event).await;
            }
            Err(e) => {
                w.stats.api_errors[K8S_WATCH].fetch_add(1, Relaxed);
                if failing {
                    log::debug!("Kubernetes: watching pods: {e}");
                } else {
                    log::warn!(
                        "Kubernetes: watching the pods of node {}: {e}; retrying with backoff, pod metadata may be stale",
                        w.node
                    );
                    failing = true;
                }
                // The watcher retries when polled again: pausing here is the backoff.
                tokio::time::sleep(backoff.pause()).await;
            }
        }
    }
}

async fn handle(w: &Watch, replicasets: &mut ReplicaSets, event: watcher::Event<Pod>) {
    match event {
        watcher::Event::Init => w.cache.begin_relist(),
        watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
            apply(w, replicasets, &p).await;
        }
        watcher::Event::InitDone => {
            w.cache.end_relist();
            w.synced.send_replace(true);
        }
        watcher::Event::Delete(p) => {
            if let Some(uid) = pod::uid(&p) {
                w.cache.remove(uid);
            }
        }
    }
    w.stats.pods_cached.store(w.cache.pods() as u64, Relaxed);
}

async fn apply(w: &Watch, replicasets: &mut ReplicaSets, p: &Pod) {
    if pod::finished(p) {
        if let Some(uid) = pod::uid(p) {
            w.cache.remove(uid);
        }
        return;
    }
    let mut cost = Cost::default();
    let owners = replicasets.owners(p, &mut cost).await;
    if cost.api_error {
        w.stats.api_errors[K8S_GET_REPLICASET].fetch_add(1, Relaxed);
    }
    if cost.cache_reset {
        w.stats.replicasets_overflow.fetch_add(1, Relaxed);
    }
    let Some(entry) = pod::entry(p, owners, &w.node) else {
        return;
    };
    let stored = w.cache.upsert(entry);
    if stored.pod_refused {
        w.stats.pods_overflow.fetch_add(1, Relaxed);
    }
    w.stats
        .containers_overflow
        .fetch_add(stored.containers_refused as u64, Relaxed);
}
