//! Runs the profiler: the drain-and-symbolize schedule shared by `apm-agent profile` (one
//! shot) and the continuous profiler of `apm-agent run` (into the store behind the web UI).
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    ebpf::{
        LoadError,
        drain::{lock, wait_readable},
        profiler::ProfilerMaps,
    },
    internal::Internal,
    profiles::{collector::Collector, model::ProcessSamples, store::Store},
};

/// Which processes a profile keeps (pids are also filtered in the kernel).
#[derive(Debug, Clone, Default)]
pub struct ProcessFilter {
    pub pids: Vec<u32>,
    pub executables: Vec<String>,
    pub services: Vec<String>,
}

impl ProcessFilter {
    fn keeps(&self, s: &ProcessSamples) -> bool {
        (self.pids.is_empty() || self.pids.contains(&s.tgid))
            && (self.executables.is_empty() || self.executables.iter().any(|e| **e == *s.exe))
            && (self.services.is_empty() || self.services.iter().any(|e| **e == *s.service))
    }
}

/// The profiler's maps and the state needed to turn their content into stacks.
pub struct Sampler {
    maps: ProfilerMaps,
    collector: Collector,
    filter: ProcessFilter,
    /// Time spent symbolizing, for the agent's own metrics.
    pub symbolize_ns: u64,
}

impl Sampler {
    pub fn new(
        maps: ProfilerMaps,
        max_processes: usize,
        filter: ProcessFilter,
        debug_info: bool,
    ) -> Self {
        Self {
            maps,
            collector: Collector::new(max_processes, debug_info),
            filter,
            symbolize_ns: 0,
        }
    }

    /// Waits up to `timeout` for first-sample events and snapshots those processes at once.
    pub fn wait(&mut self, timeout: Duration) {
        wait_readable(self.maps.events_fd(), timeout);
        for (tgid, comm) in self.maps.new_processes() {
            self.collector.on_new_process(tgid, &comm);
        }
    }

    /// Drains the kernel maps and returns the symbolized samples the filter keeps.
    pub fn collect(&mut self) -> Result<Vec<ProcessSamples>, LoadError> {
        // Processes announced since the last wait are snapshotted before their samples.
        for (tgid, comm) in self.maps.new_processes() {
            self.collector.on_new_process(tgid, &comm);
        }
        let raw = self.maps.drain()?;
        // CPU time, not wall time: on a busy host this thread waits for a CPU meanwhile.
        let started = thread_cpu_ns();
        let mut samples = self.collector.symbolize(&raw);
        self.symbolize_ns += thread_cpu_ns().saturating_sub(started);
        samples.retain(|s| self.filter.keeps(s));
        Ok(samples)
    }

    /// Forgets processes that exited, in the agent and in the kernel's table.
    pub fn forget_exited(&mut self) {
        let known = self.maps.known();
        let gone = self.collector.forget_exited(&known);
        self.maps.forget(&gone);
    }

    pub fn processes_overflowed(&self) -> u64 {
        self.collector.overflowed()
    }

    pub fn symbolizer_stats(&self) -> crate::profiles::symbolize::SymbolizerStats {
        self.collector.symbolizer().stats()
    }
}

/// CPU time used by the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

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
    mut sampler: Sampler,
    store: Arc<Mutex<Store>>,
    internal: Arc<Internal>,
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
                internal.publish_profiler(&store.stats(), &sampler);
            }
            Err(e) => log::warn!("profiler drain failed: {e}"),
        }
        if last_cleanup.elapsed() >= Duration::from_secs(30) {
            last_cleanup = Instant::now();
            sampler.forget_exited();
        }
    }
}
