//! The metrics export task: sends each interval's `ExportMetricsServiceRequest` (built by the
//! event thread, which hands it over without waiting), with retries while the endpoint is
//! down. A request that cannot be delivered is dropped and its data points counted; with
//! cumulative temporality the next interval carries the totals again, so nothing is lost for
//! good, with delta the interval is.
use std::sync::{Arc, atomic::Ordering::Relaxed};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::mpsc;

use super::stats::{ExportStats, METRICS};
use super::{
    retry::{Outcome, send_with_retry},
    transport::Transport,
};

/// Requests waiting at most (the event thread drops, counted, beyond).
pub const QUEUE: usize = 2;

/// Data points in a request.
pub fn points(req: &ExportMetricsServiceRequest) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            _ => 0,
        } as u64)
        .sum()
}

/// Runs until the queue's sender is gone and the queue is empty.
pub async fn run(
    mut rx: mpsc::Receiver<ExportMetricsServiceRequest>,
    transport: Transport,
    stats: Arc<ExportStats>,
) {
    while let Some(request) = rx.recv().await {
        let n = points(&request);
        let outcome = send_with_retry(&stats.failures[METRICS], || {
            transport.send_metrics(request.clone())
        })
        .await;
        match outcome {
            Outcome::Sent => stats.sent[METRICS].fetch_add(n, Relaxed),
            Outcome::Dropped(e) => {
                log::warn!("dropping {n} metric points: {e}");
                stats.dropped[METRICS].fetch_add(n, Relaxed)
            }
        };
    }
}
