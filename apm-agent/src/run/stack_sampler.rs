//! The stack sampler: the kernel's CPU-sample maps (`ebpf/profiler.rs`) read into symbolized
//! samples per process (`profiles/collector.rs`), filtered. Shared by `apm-agent profile`
//! (`profile_once.rs`) and the continuous profiler of `apm-agent run` (`cpu_profiler.rs`).
use std::time::Duration;

use crate::{
    ebpf::{LoadError, profiler::ProfilerMaps},
    os::{thread_cpu_ns, wait_readable},
    profiles::{collector::StackCollector, model::ProcessSamples},
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
pub struct StackSampler {
    maps: ProfilerMaps,
    collector: StackCollector,
    filter: ProcessFilter,
    /// Time spent symbolizing, for the agent's own metrics.
    pub symbolize_ns: u64,
}

impl StackSampler {
    pub fn new(
        maps: ProfilerMaps,
        max_processes: usize,
        filter: ProcessFilter,
        debug_info: bool,
    ) -> Self {
        Self {
            maps,
            collector: StackCollector::new(max_processes, debug_info),
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
