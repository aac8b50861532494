//! The continuous profiler of `apm-agent run`: its own thread, at the lowest scheduling
//! weight, drains the stack sampler into the profile store behind the web UI.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use super::stack_sampler::StackSampler;
use crate::{
    os::{lock, unix_now},
    profiles::{
        stats::ProfileStats,
        store::{Store, StoreStats},
    },
};

/// Nice value of the profiler's thread.
const PROFILER_NICE: i32 = 19;

/// Lowers the calling thread's scheduling weight to nice 19, so that the profiler's bursts
/// (symbolizing a new binary's frames, reading maps) wait for idle moments instead of taking
/// the CPU from the applications it profiles. Measured with nginx at 50% of saturation: with
/// the profiler at normal weight, nginx's p99 latency went from 3.3 ms (agent off) to 9-212 ms
/// (rounds of 10 s, each starting a fresh agent); with the profiler off, 3.4 ms. At nice 19
/// it still gets about 1.5% of a fully busy CPU, more than it uses (about 1% of one core).
fn yield_to_applications() {
    // SAFETY: no pointers; on Linux `PRIO_PROCESS` with a thread id sets that thread's nice.
    let tid = unsafe { libc::gettid() };
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, PROFILER_NICE) } != 0 {
        log::debug!(
            "profiler: nice {PROFILER_NICE} not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The continuous profiler of `apm-agent run`: drains every `every` into `store` until `stop`.
pub fn run_continuous(
    mut sampler: StackSampler,
    store: Arc<Mutex<Store>>,
    stats: Arc<ProfileStats>,
    stop: Arc<AtomicBool>,
    every: Duration,
) {
    yield_to_applications();
    let mut next = Instant::now() + every;
    let mut last_cleanup = Instant::now();
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now < next {
            sampler.wait((next - now).min(Duration::from_millis(250)));
            continue;
        }
        next = now + every;
        match sampler.collect() {
            Ok(samples) => {
                let mut store = lock(&store);
                store.add(unix_now(), &samples);
                publish(&stats, &store.stats(), &sampler);
            }
            Err(e) => log::warn!("profiler drain failed: {e}"),
        }
        if last_cleanup.elapsed() >= Duration::from_secs(30) {
            last_cleanup = Instant::now();
            sampler.forget_exited();
        }
    }
}

/// Takes the profiler's own figures.
fn publish(stats: &ProfileStats, store: &StoreStats, sampler: &StackSampler) {
    stats.store_bytes.store(store.bytes as u64, Relaxed);
    stats.store_evicted.store(store.evicted_buckets, Relaxed);
    stats.store_dropped.store(store.dropped_samples, Relaxed);
    stats
        .processes_overflow
        .store(sampler.processes_overflowed(), Relaxed);
    let sym = sampler.symbolizer_stats();
    stats.unresolved_frames.store(sym.unresolved, Relaxed);
    stats
        .symbol_cache_entries
        .store(sym.cached_addresses as u64, Relaxed);
    stats.symbol_cache_resets.store(sym.cache_resets, Relaxed);
    stats.perf_maps_read.store(sym.perf_maps_read, Relaxed);
    stats
        .perf_maps_refused
        .store(sym.perf_maps_refused, Relaxed);
    stats
        .perf_maps_truncated
        .store(sym.perf_maps_truncated, Relaxed);
    stats.symbolize_ns.store(sampler.symbolize_ns, Relaxed);
}
