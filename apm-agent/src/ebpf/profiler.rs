//! The profiler's kernel side from the agent: attaches the perf_event program to every online
//! CPU, drains the double-buffered count and stack maps, and reads first-sample events.
use std::{
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use apm_common::{ProcEvent, SampleKey, kind};
use aya::{
    maps::{Array, HashMap, MapData, RingBuf, StackTraceMap},
    programs::{
        PerfEvent,
        perf_event::{HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};

use super::records::RawSample;
use super::{LoadError, Probes};

/// How to sample.
#[derive(Debug, Clone, Copy)]
pub struct SamplingOptions {
    pub frequency_hz: u64,
    /// Hardware cycles instead of the software CPU clock (needs a PMU).
    pub hardware_cycles: bool,
}

/// The profiler's maps, owned by the thread that drains them.
pub struct ProfilerMaps {
    counts: [HashMap<MapData, SampleKey, u64>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    control: Array<MapData, u32>,
    known: HashMap<MapData, u32, u64>,
    pids: HashMap<MapData, u32, u32>,
    events: RingBuf<MapData>,
    active: u32,
}

impl Probes {
    /// Attaches the profiler to every online CPU and takes its maps.
    pub fn attach_profiler(&mut self, opts: SamplingOptions) -> Result<ProfilerMaps, LoadError> {
        const NAME: &str = "apm_profile";
        let err = |source| LoadError::Program {
            name: NAME,
            tracepoint: "perf_event cpu-clock",
            source: Box::new(source),
        };
        let cpus = online_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let program: &mut PerfEvent = self
            .bpf
            .program_mut(NAME)
            .ok_or(LoadError::MissingProgram(NAME))?
            .try_into()
            .map_err(err)?;
        program.load().map_err(err)?;
        let config = if opts.hardware_cycles {
            PerfEventConfig::Hardware(HardwareEvent::CpuCycles)
        } else {
            PerfEventConfig::Software(SoftwareEvent::CpuClock)
        };
        for cpu in cpus {
            program
                .attach(
                    config,
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(opts.frequency_hz),
                    false,
                )
                .map_err(err)?;
        }
        self.attached.push(NAME);
        Ok(ProfilerMaps {
            counts: [
                self.typed_map("PROFILE_COUNTS_0")?,
                self.typed_map("PROFILE_COUNTS_1")?,
            ],
            stacks: [
                self.typed_map("PROFILE_STACKS_0")?,
                self.typed_map("PROFILE_STACKS_1")?,
            ],
            control: self.typed_map("PROFILE_CONTROL")?,
            known: self.typed_map("PROFILE_KNOWN")?,
            pids: self.typed_map("PROFILE_PIDS")?,
            events: self.typed_map("PROFILE_EVENTS")?,
            active: 0,
        })
    }
}

impl ProfilerMaps {
    /// Restricts sampling to these thread groups (the object must have been loaded with the
    /// pid filter on).
    pub fn set_pids(&mut self, pids: &[u32]) -> Result<(), LoadError> {
        for pid in pids {
            self.pids
                .insert(pid, 1, 0)
                .map_err(|source| LoadError::Map {
                    name: "PROFILE_PIDS",
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// Points the program at the other copy of the maps and drains the one it used.
    pub fn drain(&mut self) -> Result<Vec<RawSample>, LoadError> {
        let old = self.active as usize;
        self.active ^= 1;
        self.control
            .set(0, self.active, 0)
            .map_err(|source| LoadError::Map {
                name: "PROFILE_CONTROL",
                source: Box::new(source),
            })?;
        // A program that read the old index just before the flip finishes within microseconds.
        std::thread::sleep(Duration::from_millis(2));

        let counts = &mut self.counts[old];
        let keys: Vec<SampleKey> = counts.keys().flatten().collect();
        let mut samples = Vec::with_capacity(keys.len());
        let stacks = &self.stacks[old];
        let frames = |id: i32| -> Vec<u64> {
            let Ok(id) = u32::try_from(id) else {
                return Vec::new();
            };
            stacks
                .get(&id, 0)
                .map(|st| st.frames().iter().map(|f| f.ip).collect())
                .unwrap_or_default()
        };
        for key in &keys {
            if let Ok(count) = counts.get(key, 0) {
                samples.push(RawSample {
                    tgid: key.tgid,
                    pid: key.pid,
                    user: frames(key.user_stack),
                    kernel: frames(key.kernel_stack),
                    count,
                });
            }
        }
        for key in &keys {
            let _ = counts.remove(key);
        }
        let stacks = &mut self.stacks[old];
        let ids: Vec<u32> = stacks.stack_ids().flatten().collect();
        for id in &ids {
            let _ = stacks.remove(id);
        }
        Ok(samples)
    }

    /// First-sample events waiting: (thread group, comm).
    pub fn new_processes(&mut self) -> Vec<(u32, [u8; 16])> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<ProcEvent>() {
                // SAFETY: length checked; ProcEvent is a #[repr(C)] struct of integers and
                // bytes, valid for any bit pattern; the read is unaligned.
                let ev: ProcEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                if ev.kind == kind::PROC_SAMPLED {
                    out.push((ev.tgid, ev.comm));
                }
            }
        }
        out
    }

    /// Forgets thread groups that exited, so that a reused pid is announced again.
    pub fn forget(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            let _ = self.known.remove(tgid);
        }
    }

    /// Thread groups the kernel has announced and not been told to forget.
    pub fn known(&self) -> Vec<u32> {
        self.known.keys().flatten().collect()
    }

    /// The first-sample ring buffer, to wait on.
    pub fn events_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}
