//! A pod's workload: Pod -> ReplicaSet -> Deployment, Pod -> StatefulSet / DaemonSet,
//! Pod -> Job -> CronJob.
//!
//! Only pods and ReplicaSets are read from the API server (RBAC: get/list/watch pods, get
//! replicasets). A Deployment is found in its ReplicaSet's `ownerReferences` (one GET per
//! ReplicaSet, cached). A Job's CronJob is not read: the CronJob controller names its Jobs
//! `<cronjob>-<scheduled time in minutes since the epoch>`, and that name is enough, so the
//! agent needs no access to jobs. A Job created by hand with such a name would be taken for a
//! CronJob's.
use k8s_openapi::{
    api::{apps::v1::ReplicaSet, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Api, Client};
use rustc_hash::FxHashMap;

use super::model::OwnerKind;

/// The object that controls `refs`' owner: the reference marked `controller`, else the first
/// of a known kind.
pub fn controller(refs: &[OwnerReference]) -> Option<(OwnerKind, &str)> {
    let known = |r: &&OwnerReference| OwnerKind::from_kind(&r.kind).is_some();
    let r = refs
        .iter()
        .filter(known)
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.iter().find(known))?;
    Some((OwnerKind::from_kind(&r.kind)?, r.name.as_str()))
}

/// Digits of the scheduled time in a CronJob's Job names: minutes since the epoch have had 8
/// since 1984, and requiring them keeps `migrate-2` from being read as a CronJob's Job.
const MIN_SCHEDULE_DIGITS: usize = 8;

/// The CronJob that made the Job named `job` (`<cronjob>-<minutes>`), by its name.
pub fn cronjob_of_job(job: &str) -> Option<&str> {
    let (cronjob, minutes) = job.rsplit_once('-')?;
    (!cronjob.is_empty()
        && minutes.len() >= MIN_SCHEDULE_DIGITS
        && minutes.bytes().all(|b| b.is_ascii_digit()))
    .then_some(cronjob)
}

/// The Deployment a ReplicaSet belongs to, from the ReplicaSet's name alone
/// (`<deployment>-<pod-template-hash>`, the hash being a label of its pods): used when the
/// ReplicaSet cannot be read.
pub fn deployment_of_replicaset_name<'a>(
    replicaset: &'a str,
    hash: Option<&str>,
) -> Option<&'a str> {
    let deployment = replicaset.strip_suffix(hash?)?.strip_suffix('-')?;
    (!deployment.is_empty()).then_some(deployment)
}

/// Longest wait for one ReplicaSet.
const GET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A ReplicaSet: (namespace, name).
type ReplicaSetKey = (Box<str>, Box<str>);

/// ReplicaSet -> Deployment, cached: a ReplicaSet never changes owner, and the pods of one
/// ReplicaSet (and every update of each) need the answer again.
pub struct ReplicaSets {
    client: Client,
    /// (namespace, name) -> its Deployment (`None`: owned by none).
    cache: FxHashMap<ReplicaSetKey, Option<Box<str>>>,
    budget: usize,
}

/// What resolving a ReplicaSet cost, for the agent's counters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// The API call failed (the name-based guess was used).
    pub api_error: bool,
    /// The cache was full and emptied.
    pub cache_reset: bool,
}

impl ReplicaSets {
    /// A cache of at most `budget` ReplicaSets. Every Deployment rollout makes a new one, so a
    /// full cache is emptied (and counted) rather than left to refuse the newest.
    pub fn new(client: Client, budget: usize) -> Self {
        Self {
            client,
            cache: FxHashMap::default(),
            budget: budget.max(1),
        }
    }

    /// The owners of `pod` (its controller, and that controller's owner), reading the
    /// ReplicaSet when the pod has one and it is not cached.
    pub async fn owners(&mut self, pod: &Pod, cost: &mut Cost) -> Vec<(OwnerKind, Box<str>)> {
        let meta = &pod.metadata;
        let Some((kind, name)) = meta.owner_references.as_deref().and_then(controller) else {
            return Vec::new();
        };
        let mut owners = vec![(kind, Box::from(name))];
        match kind {
            OwnerKind::ReplicaSet => {
                let hash = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"))
                    .map(String::as_str);
                let namespace = meta.namespace.as_deref().unwrap_or("default");
                if let Some(d) = self.deployment(namespace, name, hash, cost).await {
                    owners.push((OwnerKind::Deployment, d));
                }
            }
            OwnerKind::Job => {
                if let Some(c) = cronjob_of_job(name) {
                    owners.push((OwnerKind::CronJob, c.into()));
                }
            }
            _ => {}
        }
        owners
    }

    async fn deployment(
        &mut self,
        namespace: &str,
        name: &str,
        hash: Option<&str>,
        cost: &mut Cost,
    ) -> Option<Box<str>> {
        let key = (Box::from(namespace), Box::from(name));
        if let Some(found) = self.cache.get(&key) {
            return found.clone();
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        // Bounded: the pod events wait meanwhile.
        let got = tokio::time::timeout(GET_TIMEOUT, api.get(name)).await;
        let found = match got {
            Ok(Ok(rs)) => rs
                .metadata
                .owner_references
                .as_deref()
                .and_then(controller)
                .filter(|(kind, _)| *kind == OwnerKind::Deployment)
                .map(|(_, d)| Box::from(d)),
            failed => {
                cost.api_error = true;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer in {GET_TIMEOUT:?}"),
                };
                log::debug!(
                    "reading ReplicaSet {namespace}/{name}: {why}; owner guessed from its name"
                );
                deployment_of_replicaset_name(name, hash).map(Box::from)
            }
        };
        if self.cache.len() >= self.budget {
            self.cache.clear();
            cost.cache_reset = true;
        }
        self.cache.insert(key, found.clone());
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: "u".to_owned(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn the_controller_reference_wins() {
        let refs = [
            reference("ConfigMap", "cm", None),
            reference("StatefulSet", "other", Some(false)),
            reference("StatefulSet", "db", Some(true)),
        ];
        assert_eq!(controller(&refs), Some((OwnerKind::StatefulSet, "db")));
        let refs = [
            reference("Node", "n", Some(true)),
            reference("DaemonSet", "ds", None),
        ];
        assert_eq!(controller(&refs), Some((OwnerKind::DaemonSet, "ds")));
        assert_eq!(controller(&[reference("Node", "n", Some(true))]), None);
        assert_eq!(controller(&[]), None);
    }

    #[test]
    fn cronjobs_from_job_names() {
        assert_eq!(
            cronjob_of_job("nightly-report-29354400"),
            Some("nightly-report")
        );
        assert_eq!(cronjob_of_job("migrate-2"), None);
        assert_eq!(cronjob_of_job("backup-manual-x"), None);
        assert_eq!(cronjob_of_job("-29354400"), None);
        assert_eq!(cronjob_of_job("29354400"), None);
    }

    #[test]
    fn deployments_from_replicaset_names() {
        assert_eq!(
            deployment_of_replicaset_name("checkout-7d9f8b6c5d", Some("7d9f8b6c5d")),
            Some("checkout")
        );
        assert_eq!(
            deployment_of_replicaset_name("checkout-7d9f8b6c5d", None),
            None
        );
        assert_eq!(
            deployment_of_replicaset_name("checkout-abc", Some("7d9f8b6c5d")),
            None
        );
        assert_eq!(deployment_of_replicaset_name("-7d9f", Some("7d9f")), None);
    }
}
