//! The local listener: `/metrics`, `/healthz`, `/readyz`, `/api/routes`, `/api/alerts`,
//! `/api/slow-queries`, the profile pages, and an index page.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering::Relaxed},
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::{
    alerts::Alerts,
    export::prometheus,
    metrics::red::Red,
    os::{lock, unix_now},
    profiles::{flamegraph, folded, pprof, store::Store},
    telemetry::Registry,
    ui,
};

/// What the handlers read.
#[derive(Clone)]
pub struct Shared {
    pub red: Arc<Mutex<Red>>,
    /// Every stage's own statistics.
    pub stats: Registry,
    /// Set once every kernel program is attached.
    pub ready: Arc<AtomicBool>,
    pub window_secs: u64,
    /// Rows of each slow-query ranking.
    pub slow_queries_top: usize,
    /// The continuous profile store (`None` when profiling is off).
    pub profiles: Option<Arc<Mutex<Store>>>,
    /// The alert engine.
    pub alerts: Arc<Mutex<Alerts>>,
}

/// Serves until the listener fails or the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/routes", get(routes))
        .route("/api/alerts", get(alerts))
        .route("/api/slow-queries", get(slow_queries))
        .route("/profiles", get(profiles_page))
        .route("/profiles/flamegraph.svg", get(profile_svg))
        .route("/profiles/folded", get(profile_folded))
        .route("/profiles/pprof", get(profile_pprof))
        .route("/api/profiles/services", get(profile_services))
        .with_state(shared);
    axum::serve(listener, app).await
}

async fn metrics(State(s): State<Shared>) -> Response {
    let body = {
        let red = lock(&s.red);
        let alerts = lock(&s.alerts);
        prometheus::render(&red, Some(&alerts), &s.stats, s.slow_queries_top)
    };
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body).into_response()
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.ready.load(Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "kernel programs not attached yet\n",
        )
            .into_response()
    }
}

async fn routes(State(s): State<Shared>) -> Response {
    let body = {
        let red = lock(&s.red);
        serde_json::json!({
            "window_secs": s.window_secs,
            "routes": red.last_window(),
        })
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Pending and firing alerts (firing first), and the latest resolved ones.
async fn alerts(State(s): State<Shared>) -> Response {
    let body = {
        let alerts = lock(&s.alerts);
        serde_json::json!({
            "active": alerts.active(),
            "resolved": alerts.resolved().collect::<Vec<_>>(),
        })
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Per service, the statements with the most total time and the highest p99, since start.
async fn slow_queries(State(s): State<Shared>) -> Response {
    let body = {
        let red = lock(&s.red);
        let services: Vec<_> = red
            .db
            .slow_queries(s.slow_queries_top)
            .into_iter()
            .map(|q| {
                serde_json::json!({
                    "service": &*red.service(q.service).name,
                    "by_total_time": q.by_total_time,
                    "by_p99": q.by_p99,
                })
            })
            .collect();
        serde_json::json!({ "services": services })
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>apm-agent</title><h1>apm-agent</h1><ul>\
         <li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>\
         <li><a href=\"/api/routes\">/api/routes</a> (busiest routes, last window, JSON)</li>\
         <li><a href=\"/api/alerts\">/api/alerts</a> (alerts the agent evaluates, JSON)</li>\
         <li><a href=\"/api/slow-queries\">/api/slow-queries</a> (slowest statements per service, JSON)</li>\
         <li><a href=\"/profiles\">/profiles</a> (CPU flame graphs per service)</li>\
         <li><a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></li></ul>",
    )
}

/// Time range and service of a profile query: `minutes` back from now (default 5), or
/// `from`/`to` in Unix seconds.
#[derive(Debug, Deserialize)]
struct ProfileQuery {
    service: Option<String>,
    minutes: Option<u64>,
    from: Option<u64>,
    to: Option<u64>,
}

impl ProfileQuery {
    fn minutes(&self) -> u64 {
        self.minutes.unwrap_or(5).clamp(1, 1440)
    }

    fn range(&self) -> (u64, u64) {
        match (self.from, self.to) {
            (Some(from), Some(to)) if from <= to => (from, to),
            _ => {
                let now = unix_now();
                (now.saturating_sub(self.minutes() * 60), now)
            }
        }
    }
}

fn profiling_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "profiling is off (started with --no-profiling)\n",
    )
        .into_response()
}

async fn profiles_page(State(s): State<Shared>, Query(q): Query<ProfileQuery>) -> Response {
    let Some(store) = s.profiles else {
        return profiling_off();
    };
    let (from, to) = q.range();
    let (services, covered, frequency_hz) = {
        let store = lock(&store);
        (
            store.services(from, to),
            store.covered_secs(from, to),
            store.frequency_hz(),
        )
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Html(ui::profiles::render(&ui::profiles::ProfilesView {
        minutes: q.minutes(),
        covered_secs: covered as f64,
        frequency_hz,
        cpus,
        services: &services,
        selected: q.service.as_deref(),
    }))
    .into_response()
}

async fn profile_services(State(s): State<Shared>, Query(q): Query<ProfileQuery>) -> Response {
    let Some(store) = s.profiles else {
        return profiling_off();
    };
    let (from, to) = q.range();
    let body = {
        let store = lock(&store);
        serde_json::json!({
            "from": from,
            "to": to,
            "covered_secs": store.covered_secs(from, to),
            "frequency_hz": store.frequency_hz(),
            "services": store.services(from, to),
            "store": store.stats(),
        })
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Queries the store, then renders off the async runtime (big profiles take a while).
async fn render_profile(
    s: Shared,
    q: ProfileQuery,
    content_type: &'static str,
    render: fn(&crate::profiles::model::Profile, &str, &mut Vec<u8>) -> std::io::Result<()>,
) -> Response {
    let Some(store) = s.profiles else {
        return profiling_off();
    };
    let (from, to) = q.range();
    let profile = lock(&store).query(q.service.as_deref(), from, to);
    let title = match &q.service {
        Some(svc) => format!("{svc}: CPU, last {} min", q.minutes()),
        None => format!("all services: CPU, last {} min", q.minutes()),
    };
    let rendered = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        render(&profile, &title, &mut out).map(|()| out)
    })
    .await;
    match rendered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response(),
    }
}

async fn profile_svg(State(s): State<Shared>, Query(q): Query<ProfileQuery>) -> Response {
    render_profile(s, q, "image/svg+xml", |p, title, out| {
        flamegraph::write_svg(p, title, out)
    })
    .await
}

async fn profile_folded(State(s): State<Shared>, Query(q): Query<ProfileQuery>) -> Response {
    render_profile(s, q, "text/plain; charset=utf-8", |p, _, out| {
        folded::write(p, out)
    })
    .await
}

async fn profile_pprof(State(s): State<Shared>, Query(q): Query<ProfileQuery>) -> Response {
    render_profile(s, q, "application/octet-stream", |p, _, out| {
        pprof::write(p, out)
    })
    .await
}
