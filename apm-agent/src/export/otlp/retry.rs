//! Retries with exponential backoff for retryable failures, within a time budget; the
//! caller counts what is finally dropped.
use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use super::transport::SendError;

/// First wait after a failure; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Time one batch may spend in retries before it is dropped.
const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// How a send ended.
#[derive(Debug)]
pub enum Outcome {
    Sent,
    Dropped(SendError),
}

/// Calls `send` until it succeeds, fails for good, or the retry budget is spent. Each failed
/// attempt bumps `failures`.
pub async fn send_with_retry<F, Fut>(failures: &AtomicU64, mut send: F) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), SendError>>,
{
    let give_up = tokio::time::Instant::now() + RETRY_BUDGET;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match send().await {
            Ok(()) => return Outcome::Sent,
            Err(e) => {
                failures.fetch_add(1, Relaxed);
                let next = tokio::time::Instant::now() + backoff;
                if !e.retryable() || next > give_up {
                    return Outcome::Dropped(e);
                }
                log::debug!("export failed ({e}); retrying in {backoff:?}");
                tokio::time::sleep_until(next).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
