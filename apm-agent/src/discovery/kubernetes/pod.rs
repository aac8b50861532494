//! A Pod object from the API server, reduced to what the cache keeps.
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::{
    cache::PodEntry,
    model::{MAX_LABELS, OwnerKind, PodInfo},
};

/// Longest name kept (Kubernetes names are at most 253 bytes).
const MAX_NAME: usize = 253;

/// The pod's UID, if it has a usable one.
pub fn uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty() && u.len() <= MAX_NAME)
}

/// Whether the pod's containers have all ended for good (`Succeeded`, `Failed`): its
/// processes are gone, so it need not use the budget any more.
pub fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// The cache entry of `pod`, with its resolved `owners`; `None` for an object without UID or
/// name. `node` is used when the pod does not name its node (not scheduled yet: the field
/// selector lets none of those through).
pub fn entry(pod: &Pod, owners: Vec<(OwnerKind, Box<str>)>, node: &str) -> Option<PodEntry> {
    let meta = &pod.metadata;
    let bounded = |s: Option<&str>| {
        s.filter(|s| !s.is_empty() && s.len() <= MAX_NAME)
            .map(Box::from)
    };
    let info = PodInfo {
        uid: bounded(meta.uid.as_deref())?,
        name: bounded(meta.name.as_deref())?,
        namespace: bounded(meta.namespace.as_deref()).unwrap_or_else(|| "default".into()),
        node: bounded(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()))
            .unwrap_or_else(|| node.into()),
        owners,
        labels: meta
            .labels
            .iter()
            .flatten()
            .filter(|(_, v)| v.len() <= MAX_NAME)
            .filter_map(|(k, v)| Some((bounded(Some(k))?, Box::<str>::from(v.as_str()))))
            .take(MAX_LABELS)
            .collect(),
    };
    let status = pod.status.as_ref();
    let containers = [
        status.and_then(|s| s.container_statuses.as_deref()),
        status.and_then(|s| s.init_container_statuses.as_deref()),
        status.and_then(|s| s.ephemeral_container_statuses.as_deref()),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| {
        let id = container_id(c.container_id.as_deref()?)?;
        let name = bounded(Some(&c.name))?;
        Some((Box::from(id), Arc::from(name)))
    })
    .collect();
    Some(PodEntry { info, containers })
}

/// The id in a status's `containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`), when it is the 64-hex-digit id found in cgroup paths.
pub fn container_id(status_id: &str) -> Option<&str> {
    let (_, id) = status_id.split_once("://")?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_of_every_runtime() {
        let id = "3f4e2c1b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
        for s in [
            format!("containerd://{id}"),
            format!("cri-o://{id}"),
            format!("docker://{id}"),
        ] {
            assert_eq!(container_id(&s), Some(id));
        }
        assert_eq!(container_id(id), None);
        assert_eq!(container_id("containerd://abc"), None);
    }
}
