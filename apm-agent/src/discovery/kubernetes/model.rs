//! What the agent keeps about a pod, and how it becomes resource attributes and a service
//! name (OpenTelemetry semantic conventions, `k8s.*`).
use std::sync::Arc;

/// Kinds of workload that own pods, each with its `k8s.<kind>.name` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
}

impl OwnerKind {
    /// The owner kinds in the order their name is preferred as a service name: the most
    /// stable, user-facing object first (a Deployment outlives its ReplicaSets, a CronJob its
    /// Jobs). A ReplicaSet comes last: one that no Deployment owns is a workload of its own.
    pub const SERVICE_ORDER: [OwnerKind; 6] = [
        OwnerKind::Deployment,
        OwnerKind::StatefulSet,
        OwnerKind::DaemonSet,
        OwnerKind::CronJob,
        OwnerKind::Job,
        OwnerKind::ReplicaSet,
    ];

    /// The kind as written in an `ownerReference` (`apps/v1` and `batch/v1`).
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Deployment" => Self::Deployment,
            "ReplicaSet" => Self::ReplicaSet,
            "StatefulSet" => Self::StatefulSet,
            "DaemonSet" => Self::DaemonSet,
            "CronJob" => Self::CronJob,
            "Job" => Self::Job,
            _ => return None,
        })
    }

    pub fn attribute(self) -> &'static str {
        match self {
            Self::Deployment => "k8s.deployment.name",
            Self::ReplicaSet => "k8s.replicaset.name",
            Self::StatefulSet => "k8s.statefulset.name",
            Self::DaemonSet => "k8s.daemonset.name",
            Self::CronJob => "k8s.cronjob.name",
            Self::Job => "k8s.job.name",
        }
    }
}

/// One pod of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: Box<str>,
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub node: Box<str>,
    /// Its controller and that controller's owner, resolved: at most two (ReplicaSet and
    /// Deployment, Job and CronJob).
    pub owners: Vec<(OwnerKind, Box<str>)>,
    /// Its labels (at most [`MAX_LABELS`]), for `k8s.pod.label.<key>` attributes: what
    /// selectors such as `k8s.pod.label.app=checkout` match.
    pub labels: Vec<(Box<str>, Box<str>)>,
}

/// Labels kept per pod; more are left out (labels are metadata, not secrets, but a pod can
/// carry many).
pub const MAX_LABELS: usize = 16;

impl PodInfo {
    /// The name of the workload the pod belongs to, if it has an owner.
    pub fn workload(&self) -> Option<&str> {
        OwnerKind::SERVICE_ORDER
            .iter()
            .find_map(|kind| self.owner(*kind))
    }

    pub fn owner(&self, kind: OwnerKind) -> Option<&str> {
        self.owners
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, name)| &**name)
    }
}

/// What a lookup finds for a process: its pod and, when the process was found by its
/// container id, the container's name (by pod UID alone, the container is not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    pub pod: Arc<PodInfo>,
    pub container: Option<Arc<str>>,
}

impl ContainerMeta {
    /// The service name Kubernetes gives the process: its workload's name, else its pod's,
    /// else its container's.
    pub fn service_name(&self) -> Option<&str> {
        self.pod
            .workload()
            .or(Some(&*self.pod.name).filter(|n| !n.is_empty()))
            .or(self.container.as_deref())
    }

    /// `k8s.pod.label.<key>` attributes (keys are dynamic: they go with the resource's
    /// other dynamic attributes).
    pub fn label_attributes(&self) -> Vec<(String, String)> {
        self.pod
            .labels
            .iter()
            .map(|(k, v)| (format!("k8s.pod.label.{k}"), v.to_string()))
            .collect()
    }

    /// The `k8s.*` resource attributes.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let pod = &self.pod;
        let mut out = vec![
            ("k8s.pod.name", pod.name.to_string()),
            ("k8s.pod.uid", pod.uid.to_string()),
            ("k8s.namespace.name", pod.namespace.to_string()),
            ("k8s.node.name", pod.node.to_string()),
        ];
        if let Some(container) = &self.container {
            out.push(("k8s.container.name", container.to_string()));
        }
        out.extend(
            pod.owners
                .iter()
                .map(|(kind, name)| (kind.attribute(), name.to_string())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(owners: &[(OwnerKind, &str)]) -> PodInfo {
        PodInfo {
            uid: "u".into(),
            name: "checkout-7d9f8b6c5d-x2x7q".into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            owners: owners.iter().map(|(k, n)| (*k, (*n).into())).collect(),
            labels: vec![("app".into(), "checkout".into())],
        }
    }

    #[test]
    fn service_name_prefers_the_top_level_workload() {
        let meta = |owners: &[(OwnerKind, &str)], container: Option<&str>| ContainerMeta {
            pod: Arc::new(pod(owners)),
            container: container.map(Into::into),
        };
        let m = meta(
            &[
                (OwnerKind::ReplicaSet, "checkout-7d9f8b6c5d"),
                (OwnerKind::Deployment, "checkout"),
            ],
            Some("app"),
        );
        assert_eq!(m.service_name(), Some("checkout"));
        let m = meta(
            &[
                (OwnerKind::Job, "report-29000000"),
                (OwnerKind::CronJob, "report"),
            ],
            None,
        );
        assert_eq!(m.service_name(), Some("report"));
        let m = meta(&[(OwnerKind::ReplicaSet, "bare-rs")], None);
        assert_eq!(m.service_name(), Some("bare-rs"));
        let m = meta(&[], Some("app"));
        assert_eq!(m.service_name(), Some("checkout-7d9f8b6c5d-x2x7q"));
        let mut nameless = pod(&[]);
        nameless.name = "".into();
        let m = ContainerMeta {
            pod: Arc::new(nameless),
            container: Some("app".into()),
        };
        assert_eq!(m.service_name(), Some("app"));
    }

    #[test]
    fn attributes_follow_the_conventions() {
        let m = ContainerMeta {
            pod: Arc::new(pod(&[
                (OwnerKind::ReplicaSet, "checkout-7d9f8b6c5d"),
                (OwnerKind::Deployment, "checkout"),
            ])),
            container: Some("app".into()),
        };
        let attrs = m.attributes();
        for (k, v) in [
            ("k8s.pod.name", "checkout-7d9f8b6c5d-x2x7q"),
            ("k8s.pod.uid", "u"),
            ("k8s.namespace.name", "shop"),
            ("k8s.node.name", "node-a"),
            ("k8s.container.name", "app"),
            ("k8s.replicaset.name", "checkout-7d9f8b6c5d"),
            ("k8s.deployment.name", "checkout"),
        ] {
            assert!(attrs.contains(&(k, v.to_owned())), "{k} in {attrs:?}");
        }
        assert_eq!(attrs.len(), 7);
        assert_eq!(
            m.label_attributes(),
            vec![("k8s.pod.label.app".to_owned(), "checkout".to_owned())]
        );
    }
}
