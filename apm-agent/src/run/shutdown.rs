//! Running until SIGINT or SIGTERM, rolling the percentile window meanwhile, then stopping
//! in order: the threads, the kernel programs, the last exports.
use std::{
    sync::{Mutex, atomic::Ordering::Relaxed},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{RunError, components::Components, spawn::Running};
use crate::{
    alerts::Alerts,
    config::Config,
    console,
    metrics::{dependencies::DependencyWindows, red::Red},
    os::lock,
};

/// Unix time in seconds, with its fraction.
fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Waits for a termination signal, then stops everything.
pub fn run_until_signal(
    cfg: &Config,
    components: Components,
    running: Running,
) -> Result<(), RunError> {
    components.runtime.block_on(windows_until_signal(
        cfg,
        &components.red,
        &components.alerts,
    ));
    log::info!("stopping: detaching kernel programs");
    running.stop.store(true, Relaxed);
    let profiler_joined = running.profiler.map(JoinHandle::join);
    let joined = running.events.join();
    running.holder.detach();
    // The event thread handed over what it still held; give the export tasks a moment.
    let flush = Duration::from_millis(cfg.otlp_timeout_ms).min(Duration::from_secs(5));
    let tasks = components.exports.tasks;
    components.runtime.block_on(async {
        for task in tasks {
            let _ = tokio::time::timeout(flush, task).await;
        }
    });
    components.runtime.shutdown_timeout(Duration::from_secs(1));
    if matches!(profiler_joined, Some(Err(_))) {
        return Err(RunError::EventThread);
    }
    joined.map_err(|_| RunError::EventThread)
}

/// Rolls the percentile window (prints the console table, evaluates the alert rules on it)
/// until SIGINT or SIGTERM.
async fn windows_until_signal(cfg: &Config, red: &Mutex<Red>, alerts: &Mutex<Alerts>) {
    let period = Duration::from_secs(cfg.window_secs);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut started = Instant::now();
    let mut dependencies = DependencyWindows::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let elapsed = started.elapsed().as_secs_f64();
                started = Instant::now();
                let (rows, deps) = {
                    let mut red = lock(red);
                    let rows = red.roll_window(elapsed).to_vec();
                    (rows, dependencies.roll(&red))
                };
                lock(alerts).evaluate(&rows, &deps, elapsed, unix_now_f64());
                let table =
                    cfg.console.then(|| console::table(&rows, cfg.console_rows, cfg.window_secs));
                if let Some(table) = table {
                    print!("{table}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = async {
                match terminate.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => break,
        }
    }
}
