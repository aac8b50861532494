//! The watcher against a local stand-in for the API server: plain HTTP on 127.0.0.1 serving
//! the list-then-watch protocol for pods (a `PodList` with its resourceVersion, then
//! newline-delimited `WatchEvent`s) and single ReplicaSets, from the objects under
//! `apm-agent/tests/fixtures/k8s/` (in the shape `kubectl get -o json` prints them).
use std::{
    convert::Infallible,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::stats::{K8S_GET_REPLICASET, K8S_WATCH, K8sStats};
use super::{
    cache::Cache,
    find,
    model::{ContainerMeta, OwnerKind},
    watch::{Watch, run},
};

const POD_DEPLOYMENT: &str = include_str!("../../../tests/fixtures/k8s/pod-deployment.json");
const REPLICASET: &str = include_str!("../../../tests/fixtures/k8s/replicaset-checkout.json");
const POD_STATEFULSET: &str = include_str!("../../../tests/fixtures/k8s/pod-statefulset.json");
const POD_DAEMONSET: &str = include_str!("../../../tests/fixtures/k8s/pod-daemonset.json");
const POD_CRONJOB: &str = include_str!("../../../tests/fixtures/k8s/pod-cronjob.json");
const POD_BARE: &str = include_str!("../../../tests/fixtures/k8s/pod-bare.json");

/// Container ids in the fixtures' `containerStatuses` (`containerd://<id>`).
const CHECKOUT_APP: &str = "c605080ad54e3c1e2ada78e25329342b2839c2cedc7d07e443db7faab0b8177c";
const CHECKOUT_LOGS: &str = "c829ed64d8c32a595965a14ede8537451d989fec3f14fae5a6c4d5b58ca237dd";
const CHECKOUT_INIT: &str = "7569c94dc14d53da778be2cb2a29719f5fb203fa7719a7880d0a88a6bd6f2e8e";
const POSTGRES: &str = "720d3fd9deec5c8a6c55c3cf195841390fc3c212a74c54701a02ae1ef322345f";
const NODE_EXPORTER: &str = "34da2721f95716a07563b122e2270407e8812fae8ddb478d764a4a10f5e7d55d";
const REPORT: &str = "89ce2c16d73fdbd74d888a62ef25ee358565e992b7d004ff53d540bde61799a2";
const SHELL: &str = "f4525d7ac6b89b57df466d074e2cd72007e4c15ff7401576e5bf7292fc93028e";
const CHECKOUT_UID: &str = "8d5b7c2e-1f3a-4b6c-9d8e-7f6a5b4c3d2e";
const BARE_UID: &str = "f0e1d2c3-b4a5-4968-8776-655443322110";
const CRONJOB_UID: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

/// Resource version of the list; events carry later ones.
const LIST_RV: u64 = 50_000;

/// The stand-in API server's state.
struct Fake {
    pods: Vec<Value>,
    replicasets: Vec<Value>,
    /// Watch events `(resourceVersion, line)`, appended by the test while watches stream.
    events: tokio::sync::watch::Sender<Vec<(u64, String)>>,
    /// Every request, `path?query`.
    requests: Mutex<Vec<String>>,
}

impl Fake {
    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn log(&self, request: String) {
        match self.requests.lock() {
            Ok(mut r) => r.push(request),
            Err(e) => e.into_inner().push(request),
        }
    }

    /// Appends a watch event (`ADDED`, `MODIFIED`, `DELETED`) for `pod`.
    fn push(&self, kind: &str, mut pod: Value) {
        self.events.send_modify(|events| {
            let rv = LIST_RV + 1 + events.len() as u64;
            pod["metadata"]["resourceVersion"] = json!(rv.to_string());
            let line = json!({"type": kind, "object": pod}).to_string() + "\n";
            events.push((rv, line));
        });
    }
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn pods(State(fake): State<Arc<Fake>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    fake.log(format!("/api/v1/pods?{query}"));
    if query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1") {
        let from: u64 = query_param(&query, "resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        return watch_stream(&fake, from);
    }
    // Items of a list carry no kind or apiVersion, as the API server sends them.
    let items: Vec<Value> = fake
        .pods
        .iter()
        .cloned()
        .map(|mut p| {
            if let Some(o) = p.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            p
        })
        .collect();
    let list = json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": LIST_RV.to_string()},
        "items": items,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
        .into_response()
}

/// Streams the events after `from`, then every event appended later, until the client
/// goes away.
fn watch_stream(fake: &Arc<Fake>, from: u64) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let mut events = fake.events.subscribe();
    tokio::spawn(async move {
        let mut sent = from;
        loop {
            let pending: Vec<(u64, String)> = events
                .borrow_and_update()
                .iter()
                .filter(|(rv, _)| *rv > sent)
                .cloned()
                .collect();
            for (rv, line) in pending {
                if tx.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
                sent = rv;
            }
            tokio::select! {
                changed = events.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn replicaset(
    State(fake): State<Arc<Fake>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    fake.log(format!(
        "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}"
    ));
    let found = fake.replicasets.iter().find(|rs| {
        rs["metadata"]["namespace"] == json!(namespace) && rs["metadata"]["name"] == json!(name)
    });
    match found {
        Some(rs) => ([(header::CONTENT_TYPE, "application/json")], rs.to_string()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("replicasets.apps \"{name}\" not found"),
                "reason": "NotFound",
                "details": {"name": name, "group": "apps", "kind": "replicasets"},
                "code": 404
            })
            .to_string(),
        )
            .into_response(),
    }
}

/// Serves `fake` on 127.0.0.1; returns a kube client for it.
async fn serve(fake: Arc<Fake>) -> kube::Client {
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route(
            "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
            get(replicaset),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
    let Ok(listener) = listener else {
        panic!("cannot bind the stand-in API server");
    };
    let addr = listener.local_addr().ok();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    client_for(&format!(
        "http://{}",
        addr.map(|a| a.to_string()).unwrap_or_default()
    ))
}

fn client_for(url: &str) -> kube::Client {
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => panic!("{url}: {e}"),
    };
    match kube::Client::try_from(kube::Config::new(uri)) {
        Ok(c) => c,
        Err(e) => panic!("client for {url}: {e}"),
    }
}

/// The watcher over `client` with a cache of `max_pods`, running on the test's runtime.
fn start(
    client: kube::Client,
    max_pods: usize,
) -> (
    Arc<Cache>,
    Arc<K8sStats>,
    tokio::sync::watch::Receiver<bool>,
) {
    let cache = Arc::new(Cache::new(max_pods));
    let stats = Arc::new(K8sStats::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(run(Watch {
        client,
        node: "node-a".to_owned(),
        cache: cache.clone(),
        stats: stats.clone(),
        synced: tx,
        max_replicasets: max_pods,
    }));
    (cache, stats, rx)
}

/// Waits (10 s at most) for `cond`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn synced(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let done = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s)).await;
    assert!(matches!(done, Ok(Ok(_))), "the first list never completed");
}

fn container(cache: &Cache, id: &str) -> ContainerMeta {
    match cache.by_container(id) {
        Some(m) => m,
        None => panic!("container {id} not cached"),
    }
}

fn owners(m: &ContainerMeta) -> Vec<(OwnerKind, &str)> {
    m.pod.owners.iter().map(|(k, n)| (*k, &**n)).collect()
}

fn fake(pods: Vec<Value>) -> Arc<Fake> {
    Arc::new(Fake {
        pods,
        replicasets: vec![fixture(REPLICASET)],
        events: tokio::sync::watch::channel(Vec::new()).0,
        requests: Mutex::new(Vec::new()),
    })
}

/// A Deployment's pod whose ReplicaSet the API server does not have (as when RBAC refuses
/// it): the Deployment is read from the ReplicaSet's name.
fn orphaned_deployment_pod() -> Value {
    let mut p = fixture(POD_DEPLOYMENT);
    p["metadata"]["name"] = json!("cart-5c6d7e8f9a-abcde");
    p["metadata"]["uid"] = json!("11111111-2222-4333-8444-555555555555");
    p["metadata"]["labels"]["pod-template-hash"] = json!("5c6d7e8f9a");
    p["metadata"]["ownerReferences"][0]["name"] = json!("cart-5c6d7e8f9a");
    p["status"]["containerStatuses"] = json!([]);
    p["status"]["initContainerStatuses"] = json!([]);
    p
}

#[tokio::test]
async fn pods_of_the_node_with_their_workloads() {
    let fake = fake(vec![
        fixture(POD_DEPLOYMENT),
        fixture(POD_STATEFULSET),
        fixture(POD_DAEMONSET),
        fixture(POD_CRONJOB),
        fixture(POD_BARE),
        orphaned_deployment_pod(),
    ]);
    let client = serve(fake.clone()).await;
    let (cache, stats, mut rx) = start(client, 64);
    synced(&mut rx).await;

    // Pod -> ReplicaSet -> Deployment, and each container by its id.
    let app = container(&cache, CHECKOUT_APP);
    assert_eq!(&*app.pod.name, "checkout-7d9f8b6c5d-x2x7q");
    assert_eq!(&*app.pod.namespace, "shop");
    assert_eq!(&*app.pod.node, "node-a");
    assert_eq!(app.container.as_deref(), Some("app"));
    assert_eq!(
        owners(&app),
        [
            (OwnerKind::ReplicaSet, "checkout-7d9f8b6c5d"),
            (OwnerKind::Deployment, "checkout")
        ]
    );
    assert_eq!(app.service_name(), Some("checkout"));
    let attributes = app.attributes();
    for (k, v) in [
        ("k8s.pod.name", "checkout-7d9f8b6c5d-x2x7q"),
        ("k8s.pod.uid", CHECKOUT_UID),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", "node-a"),
        ("k8s.container.name", "app"),
        ("k8s.replicaset.name", "checkout-7d9f8b6c5d"),
        ("k8s.deployment.name", "checkout"),
    ] {
        assert!(attributes.contains(&(k, v.to_owned())), "{k}={v}");
    }
    // Labels, for `k8s.pod.label.<key>=...` selectors.
    let labels = app.label_attributes();
    assert!(
        labels.contains(&("k8s.pod.label.app".to_owned(), "checkout".to_owned())),
        "{labels:?}"
    );
    let logs = container(&cache, CHECKOUT_LOGS);
    assert_eq!(logs.container.as_deref(), Some("log-shipper"));
    assert_eq!(
        container(&cache, CHECKOUT_INIT).container.as_deref(),
        Some("migrate")
    );

    // StatefulSet, DaemonSet: the pod's owner directly.
    let pg = container(&cache, POSTGRES);
    assert_eq!(owners(&pg), [(OwnerKind::StatefulSet, "postgres")]);
    assert_eq!(pg.service_name(), Some("postgres"));
    let ne = container(&cache, NODE_EXPORTER);
    assert_eq!(owners(&ne), [(OwnerKind::DaemonSet, "node-exporter")]);
    assert_eq!(ne.service_name(), Some("node-exporter"));

    // Pod -> Job -> CronJob (from the Job's name).
    let report = container(&cache, REPORT);
    assert_eq!(
        owners(&report),
        [
            (OwnerKind::Job, "nightly-report-29354400"),
            (OwnerKind::CronJob, "nightly-report")
        ]
    );
    assert_eq!(report.service_name(), Some("nightly-report"));
    assert!(
        report
            .attributes()
            .contains(&("k8s.cronjob.name", "nightly-report".to_owned()))
    );

    // A bare pod is named after itself.
    let shell = container(&cache, SHELL);
    assert!(shell.pod.owners.is_empty());
    assert_eq!(shell.service_name(), Some("debug-shell"));

    // The ReplicaSet that could not be read: the Deployment from its name, the error counted.
    let cart = cache.by_pod("11111111-2222-4333-8444-555555555555");
    let cart = cart.map(|m| m.pod.owners.clone()).unwrap_or_default();
    assert_eq!(
        cart,
        [
            (OwnerKind::ReplicaSet, "cart-5c6d7e8f9a".into()),
            (OwnerKind::Deployment, "cart".into())
        ]
    );
    assert_eq!(stats.api_errors[K8S_GET_REPLICASET].load(Relaxed), 1);

    // Processes are found from their cgroup: by container id, else by pod UID.
    let uid_ = CHECKOUT_UID.replace('-', "_");
    let cgroup = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CHECKOUT_LOGS}.scope\n"
    );
    let found = find(&cache, &cgroup);
    assert_eq!(
        found.and_then(|m| m.container).as_deref(),
        Some("log-shipper")
    );
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let cgroup = format!("0::/kubepods/besteffort/pod{CHECKOUT_UID}/{unknown}\n");
    let found = find(&cache, &cgroup);
    assert_eq!(
        found
            .as_ref()
            .map(|m| (&*m.pod.name, m.container.is_none())),
        Some(("checkout-7d9f8b6c5d-x2x7q", true))
    );
    assert!(find(&cache, "0::/user.slice/user-0.slice/session-1.scope\n").is_none());

    // Both the list and the watch asked for this node's pods only.
    eventually("a watch request", || {
        fake.requests().iter().any(|r| r.contains("watch=true"))
    })
    .await;
    let pod_requests: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/api/v1/pods"))
        .collect();
    assert!(pod_requests.len() >= 2, "{pod_requests:?}");
    for r in &pod_requests {
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{r}");
    }
    assert!(
        pod_requests
            .iter()
            .any(|r| r.contains(&format!("resourceVersion={LIST_RV}")) && r.contains("watch=true")),
        "the watch resumes from the list: {pod_requests:?}"
    );
    assert_eq!(stats.pods_cached.load(Relaxed), 6);

    // DELETED removes the pod and its containers.
    fake.push("DELETED", fixture(POD_BARE));
    eventually("the deleted pod gone", || cache.by_pod(BARE_UID).is_none()).await;
    assert!(cache.by_container(SHELL).is_none());

    // MODIFIED replaces the containers; the ReplicaSet is not read again (cached).
    let mut restarted = fixture(POD_DEPLOYMENT);
    let new_id = "00000000000000000000000000000000000000000000000000000000000000aa";
    restarted["status"]["containerStatuses"][0]["containerID"] =
        json!(format!("containerd://{new_id}"));
    fake.push("MODIFIED", restarted);
    eventually("the restarted container", || {
        cache.by_container(new_id).is_some()
    })
    .await;
    assert!(cache.by_container(CHECKOUT_APP).is_none());
    let rs_reads = fake
        .requests()
        .iter()
        .filter(|r| r.ends_with("/replicasets/checkout-7d9f8b6c5d"))
        .count();
    assert_eq!(rs_reads, 1);

    // A finished pod (a Job's, Succeeded) leaves the cache.
    let mut done = fixture(POD_CRONJOB);
    done["status"]["phase"] = json!("Succeeded");
    fake.push("MODIFIED", done);
    eventually("the finished pod gone", || {
        cache.by_pod(CRONJOB_UID).is_none()
    })
    .await;
    // A new pod arrives by ADDED.
    let mut added = fixture(POD_BARE);
    added["metadata"]["uid"] = json!("99999999-2222-4333-8444-555555555555");
    fake.push("ADDED", added);
    eventually("the added pod", || {
        cache
            .by_pod("99999999-2222-4333-8444-555555555555")
            .is_some()
    })
    .await;
    assert_eq!(stats.api_errors[K8S_WATCH].load(Relaxed), 0);
    assert_eq!(stats.pods_overflow.load(Relaxed), 0);
}

/// A bare pod with its own UID, name and container id.
fn numbered_pod(i: usize) -> Value {
    let mut p = fixture(POD_BARE);
    p["metadata"]["name"] = json!(format!("worker-{i}"));
    p["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
    p["status"]["containerStatuses"][0]["containerID"] = json!(format!("containerd://{i:064x}"));
    p
}

#[tokio::test]
async fn the_pod_budget_holds() {
    let fake = fake((0..8).map(numbered_pod).collect());
    let client = serve(fake.clone()).await;
    let (cache, stats, mut rx) = start(client, 3);
    synced(&mut rx).await;
    assert_eq!(cache.pods(), 3);
    assert_eq!(cache.containers(), 3);
    assert_eq!(stats.pods_overflow.load(Relaxed), 5);
    assert_eq!(stats.pods_cached.load(Relaxed), 3);

    // Still full: a new pod is refused and counted.
    fake.push("ADDED", numbered_pod(8));
    eventually("the refused pod counted", || {
        stats.pods_overflow.load(Relaxed) == 6
    })
    .await;
    assert_eq!(cache.pods(), 3);
    // A deletion makes room for the next one.
    fake.push("DELETED", numbered_pod(0));
    fake.push("ADDED", numbered_pod(9));
    eventually("the next pod admitted", || {
        cache.by_container(&format!("{:064x}", 9)).is_some()
    })
    .await;
    assert_eq!(cache.pods(), 3);
    assert_eq!(stats.pods_overflow.load(Relaxed), 6);
}

#[tokio::test]
async fn a_dead_api_server_is_counted_not_fatal() {
    // A port nothing listens on.
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("{e}"),
    };
    let client = client_for(&format!("http://127.0.0.1:{port}"));
    let cache = Arc::new(Cache::new(4));
    let stats = Arc::new(K8sStats::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(Watch {
        client,
        node: "node-a".to_owned(),
        cache: cache.clone(),
        stats: stats.clone(),
        synced: tx,
        max_replicasets: 4,
    }));
    eventually("watch errors counted", || {
        stats.api_errors[K8S_WATCH].load(Relaxed) >= 2
    })
    .await;
    assert!(!task.is_finished(), "the watcher keeps retrying");
    assert!(!*rx.borrow());
    assert_eq!(cache.pods(), 0);
    task.abort();
}
