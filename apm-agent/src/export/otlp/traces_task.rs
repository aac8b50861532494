//! The span export task: takes spans from the bounded queue the event thread fills, sends
//! them in batches, retries with backoff while the endpoint is down or overloaded, and drops
//! (counted) what it cannot deliver. The event thread never waits for it: when the queue is
//! full it drops the span and counts it.
use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::sync::mpsc;

use super::stats::{ExportStats, TRACES};
use super::{
    encode_traces,
    retry::{Outcome, send_with_retry},
    transport::Transport,
};
use crate::traces::span::Span;

/// Spans per export request at most.
pub const MAX_BATCH: usize = 512;
/// A batch leaves at least this often when spans trickle in.
const BATCH_WINDOW: Duration = Duration::from_millis(500);

/// Runs until the queue's senders are gone and the queue is empty.
pub async fn run(mut rx: mpsc::Receiver<Span>, transport: Transport, stats: Arc<ExportStats>) {
    let mut batch: Vec<Span> = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // Let a batch fill a little before sending it.
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let request = encode_traces::request(&mut batch);
        let outcome = send_with_retry(&stats.failures[TRACES], || {
            transport.send_traces(request.clone())
        })
        .await;
        match outcome {
            Outcome::Sent => stats.sent[TRACES].fetch_add(n, Relaxed),
            Outcome::Dropped(e) => {
                log::warn!("dropping {n} spans: {e}");
                stats.dropped[TRACES].fetch_add(n, Relaxed)
            }
        };
    }
}
