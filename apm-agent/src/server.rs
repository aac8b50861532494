//! The local listener: `/metrics`, `/healthz`, `/readyz`, `/api/routes`, and an index page.
use std::sync::{Arc, Mutex, atomic::Ordering::Relaxed};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};

use crate::{ebpf::drain::lock, export::prometheus, internal::Internal, metrics::red::Red};

/// What the handlers read.
#[derive(Clone)]
pub struct Shared {
    pub red: Arc<Mutex<Red>>,
    pub internal: Arc<Internal>,
    pub window_secs: u64,
}

/// Serves until the listener fails or the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/routes", get(routes))
        .with_state(shared);
    axum::serve(listener, app).await
}

async fn metrics(State(s): State<Shared>) -> Response {
    let body = {
        let red = lock(&s.red);
        prometheus::render(&red, &s.internal)
    };
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body).into_response()
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.internal.ready.load(Relaxed) {
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

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>apm-agent</title><h1>apm-agent</h1><ul>\
         <li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>\
         <li><a href=\"/api/routes\">/api/routes</a> (busiest routes, last window, JSON)</li>\
         <li><a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></li></ul>",
    )
}
