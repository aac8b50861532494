//! The pods of this node the agent knows, by pod UID and by container id: bounded, kept up to
//! date by the watcher, read by the event thread when it names a process.
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustc_hash::{FxHashMap, FxHashSet};

use super::model::{ContainerMeta, PodInfo};

/// Containers (including init and ephemeral ones) kept per pod; beyond, counted.
pub const MAX_CONTAINERS_PER_POD: usize = 32;

/// A pod as the watcher hands it over: its description and its containers (id, name).
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub info: PodInfo,
    pub containers: Vec<(Box<str>, Arc<str>)>,
}

/// What storing a pod did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The pod was not kept: the pod budget is spent.
    pub pod_refused: bool,
    /// Containers of the pod not kept (more than [`MAX_CONTAINERS_PER_POD`]).
    pub containers_refused: usize,
}

/// A cached pod and the ids of its containers (to forget them with it).
#[derive(Debug)]
struct Cached {
    pod: Arc<PodInfo>,
    containers: Vec<Box<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: FxHashMap<Box<str>, Cached>,
    containers: FxHashMap<Box<str>, (Arc<PodInfo>, Arc<str>)>,
    /// During a re-list: the pods listed so far (at most the pods kept).
    relisted: Option<FxHashSet<Box<str>>>,
}

/// The cache. Readers (the event thread, once per new process) take a read lock that the
/// watcher holds only for map updates, never across I/O, so a lookup waits microseconds at
/// most; a dead API server leaves the cache as it was.
#[derive(Debug)]
pub struct Cache {
    inner: RwLock<Inner>,
    max_pods: usize,
}

impl Cache {
    pub fn new(max_pods: usize) -> Self {
        Self {
            inner: RwLock::default(),
            max_pods: max_pods.max(1),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The container with this id (64 hex digits), with its pod.
    pub fn by_container(&self, id: &str) -> Option<ContainerMeta> {
        let inner = self.read();
        let (pod, name) = inner.containers.get(id)?;
        Some(ContainerMeta {
            pod: pod.clone(),
            container: Some(name.clone()),
        })
    }

    /// The pod with this UID (its container unknown).
    pub fn by_pod(&self, uid: &str) -> Option<ContainerMeta> {
        let inner = self.read();
        let cached = inner.pods.get(uid)?;
        Some(ContainerMeta {
            pod: cached.pod.clone(),
            container: None,
        })
    }

    /// Adds or replaces a pod (its containers replace the previous ones).
    pub fn upsert(&self, entry: PodEntry) -> Stored {
        let mut stored = Stored::default();
        let mut inner = self.write();
        let uid: Box<str> = entry.info.uid.clone();
        let known = inner.pods.contains_key(&uid);
        if !known && inner.pods.len() >= self.max_pods {
            stored.pod_refused = true;
            return stored;
        }
        if let Some(relisted) = inner.relisted.as_mut() {
            relisted.insert(uid.clone());
        }
        remove_containers(&mut inner, &uid);
        let pod = Arc::new(entry.info);
        let mut ids = Vec::new();
        for (id, name) in entry.containers {
            if ids.len() >= MAX_CONTAINERS_PER_POD {
                stored.containers_refused += 1;
                continue;
            }
            inner.containers.insert(id.clone(), (pod.clone(), name));
            ids.push(id);
        }
        inner.pods.insert(
            uid,
            Cached {
                pod,
                containers: ids,
            },
        );
        stored
    }

    /// Forgets a pod and its containers.
    pub fn remove(&self, uid: &str) {
        let mut inner = self.write();
        remove_containers(&mut inner, uid);
        inner.pods.remove(uid);
    }

    /// A re-list starts (the watch was restarted): pods not listed again by
    /// [`Self::end_relist`] were deleted meanwhile.
    pub fn begin_relist(&self) {
        self.write().relisted = Some(FxHashSet::default());
    }

    /// The re-list is complete: forgets the pods it did not list.
    pub fn end_relist(&self) {
        let mut inner = self.write();
        let Some(relisted) = inner.relisted.take() else {
            return;
        };
        let gone: Vec<Box<str>> = inner
            .pods
            .keys()
            .filter(|uid| !relisted.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            remove_containers(&mut inner, &uid);
            inner.pods.remove(&uid);
        }
    }

    pub fn pods(&self) -> usize {
        self.read().pods.len()
    }

    #[cfg(test)]
    pub fn containers(&self) -> usize {
        self.read().containers.len()
    }
}

fn remove_containers(inner: &mut Inner, uid: &str) {
    if let Some(cached) = inner.pods.get_mut(uid) {
        for id in std::mem::take(&mut cached.containers) {
            inner.containers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str, containers: &[(&str, &str)]) -> PodEntry {
        PodEntry {
            info: PodInfo {
                uid: uid.into(),
                name: format!("pod-{uid}").into(),
                namespace: "ns".into(),
                node: "node-a".into(),
                owners: Vec::new(),
                labels: Vec::new(),
            },
            containers: containers
                .iter()
                .map(|(id, n)| (Box::from(*id), Arc::from(*n)))
                .collect(),
        }
    }

    #[test]
    fn pods_are_bounded_and_updates_replace_containers() {
        let cache = Cache::new(2);
        assert_eq!(
            cache.upsert(entry("a", &[("c1", "app")])),
            Stored::default()
        );
        assert_eq!(cache.upsert(entry("b", &[])), Stored::default());
        assert!(cache.upsert(entry("c", &[("c3", "x")])).pod_refused);
        assert_eq!(cache.pods(), 2);
        assert!(cache.by_container("c3").is_none());
        // An update of a known pod is not refused; its old container goes.
        let stored = cache.upsert(entry("a", &[("c2", "app")]));
        assert_eq!(stored, Stored::default());
        assert!(cache.by_container("c1").is_none());
        let found = cache.by_container("c2");
        assert_eq!(found.and_then(|m| m.container).as_deref(), Some("app"));
        cache.remove("a");
        assert!(cache.by_container("c2").is_none());
        assert!(cache.by_pod("a").is_none());
        assert_eq!(cache.containers(), 0);
    }

    #[test]
    fn containers_per_pod_are_bounded() {
        let cache = Cache::new(1);
        let ids: Vec<(String, String)> = (0..MAX_CONTAINERS_PER_POD + 3)
            .map(|i| (format!("id{i}"), format!("c{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let stored = cache.upsert(entry("a", &refs));
        assert_eq!(stored.containers_refused, 3);
        assert_eq!(cache.containers(), MAX_CONTAINERS_PER_POD);
    }

    #[test]
    fn a_relist_forgets_pods_deleted_meanwhile() {
        let cache = Cache::new(8);
        cache.upsert(entry("a", &[("ca", "app")]));
        cache.upsert(entry("b", &[("cb", "app")]));
        cache.begin_relist();
        cache.upsert(entry("b", &[("cb", "app")]));
        cache.end_relist();
        assert!(cache.by_pod("a").is_none());
        assert!(cache.by_container("ca").is_none());
        assert!(cache.by_container("cb").is_some());
    }
}
