//! Turns drained kernel samples into symbolized stacks per process: names each process (its
//! service), keeps its memory-map snapshot (taken at its first sample, refreshed while it
//! lives), and symbolizes each process's distinct addresses in one batch.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    maps::MapsSnapshot,
    model::{Frame, FrameKind, ProcessSamples},
    perf_map::{self, PerfMap, PerfMapError, Stamp},
    symbolize::Symbolizer,
};

/// A process's perf map is looked at again at most this often, and read again only when it
/// changed: JITs append to it as they compile.
const JIT_RECHECK: Duration = Duration::from_secs(1);
use crate::{
    discovery::service_name,
    ebpf::{decode::comm_str, records::RawSample},
};

/// What the collector knows of a process.
struct ProcessInfo {
    service: Arc<str>,
    exe: Arc<str>,
    root: Arc<Frame>,
    maps: Option<MapsSnapshot>,
    /// Its perf map (JIT code), when it has one the agent may read.
    jit: Option<PerfMap>,
    /// When the perf map was last looked at, and its size and time then.
    jit_checked: Option<(Instant, Option<Stamp>)>,
}

impl ProcessInfo {
    fn new(service: Arc<str>, exe: Arc<str>, maps: Option<MapsSnapshot>) -> Self {
        Self {
            root: Arc::new(Frame::root(&service)),
            service,
            exe,
            maps,
            jit: None,
            jit_checked: None,
        }
    }
}

/// Frames for samples whose stacks were lost (collision, full map): the samples still count
/// for their process instead of vanishing.
fn lost_frame() -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Unresolved,
        name: "[stack lost]".into(),
        module: None,
        build_id: None,
        offset: 0,
    })
}

/// The collector.
pub struct StackCollector {
    symbolizer: Symbolizer,
    processes: HashMap<u32, ProcessInfo>,
    budget: usize,
    overflowed: u64,
    /// Holds a process that arrived when the budget was spent, for one drain.
    spare: Option<ProcessInfo>,
    lost: Arc<Frame>,
}

impl StackCollector {
    /// `budget`: processes remembered at once; `debug_info`: see [`Symbolizer::new`].
    pub fn new(budget: usize, debug_info: bool) -> Self {
        Self {
            symbolizer: Symbolizer::new(debug_info),
            processes: HashMap::new(),
            budget,
            overflowed: 0,
            spare: None,
            lost: lost_frame(),
        }
    }

    /// Processes not remembered because the budget was spent.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn symbolizer(&self) -> &Symbolizer {
        &self.symbolizer
    }

    /// First sample of a process: name it and snapshot its mappings now, while it is alive.
    pub fn on_new_process(&mut self, tgid: u32, comm: &[u8; 16]) {
        let service: Arc<str> = service_name::resolve(tgid, comm_str(comm)).into();
        let maps = MapsSnapshot::read(tgid).ok();
        if !self.processes.contains_key(&tgid) && self.processes.len() >= self.budget {
            self.overflowed += 1;
            return;
        }
        self.processes
            .insert(tgid, ProcessInfo::new(service, exe_name(tgid, comm), maps));
    }

    /// Symbolizes one drain's samples.
    pub fn symbolize(&mut self, raw: &[RawSample]) -> Vec<ProcessSamples> {
        let mut by_process: HashMap<u32, Vec<&RawSample>> = HashMap::new();
        for r in raw {
            by_process.entry(r.tgid).or_default().push(r);
        }
        let kernel_addrs: Vec<u64> = raw
            .iter()
            .flat_map(|r| r.kernel.iter().copied())
            .collect::<HashSet<u64>>()
            .into_iter()
            .collect();
        let kernel: HashMap<u64, Arc<Frame>> = kernel_addrs
            .iter()
            .copied()
            .zip(self.symbolizer.kernel(&kernel_addrs))
            .collect();

        let mut out = Vec::with_capacity(raw.len());
        for (tgid, samples) in by_process {
            let user_addrs: Vec<u64> = samples
                .iter()
                .flat_map(|r| r.user.iter().copied())
                .collect::<HashSet<u64>>()
                .into_iter()
                .collect();
            self.ensure_process(tgid, &user_addrs);
            self.refresh_jit(tgid, &user_addrs);
            let Some(info) = self.processes.get(&tgid).or(self.spare.as_ref()) else {
                continue;
            };
            let (service, exe, root) = (info.service.clone(), info.exe.clone(), info.root.clone());
            let user: HashMap<u64, Arc<Frame>> = match info.maps.as_ref() {
                Some(maps) => user_addrs
                    .iter()
                    .copied()
                    .zip(self.symbolizer.user(maps, info.jit.as_ref(), &user_addrs))
                    .collect(),
                None => HashMap::new(),
            };
            for r in samples {
                let mut stack: Vec<Arc<Frame>> =
                    Vec::with_capacity(1 + r.user.len() + r.kernel.len());
                stack.push(root.clone());
                // Innermost first in the kernel's order; root first in a stack.
                stack.extend(r.user.iter().rev().filter_map(|a| user.get(a).cloned()));
                stack.extend(r.kernel.iter().rev().filter_map(|a| kernel.get(a).cloned()));
                if stack.len() == 1 {
                    stack.push(self.lost.clone());
                }
                out.push(ProcessSamples {
                    tgid,
                    service: service.clone(),
                    exe: exe.clone(),
                    stack: stack.into(),
                    count: r.count,
                });
            }
        }
        out
    }

    /// Makes sure `tgid` has an entry (in the table, or the spare slot when the budget is
    /// spent), with its maps refreshed when an address falls outside its snapshot and the
    /// process is still alive.
    fn ensure_process(&mut self, tgid: u32, user_addrs: &[u64]) {
        let stale = self.processes.get(&tgid).is_none_or(|p| {
            p.maps
                .as_ref()
                .is_none_or(|m| user_addrs.iter().any(|a| m.find(*a).is_none()))
        });
        if stale {
            if let Ok(maps) = MapsSnapshot::read(tgid) {
                if let Some(p) = self.processes.get_mut(&tgid) {
                    p.maps = Some(maps);
                } else {
                    self.on_new_process(tgid, &[0; 16]);
                }
            } else if !self.processes.contains_key(&tgid) {
                // Gone before anything was kept: name it at least.
                let name: Arc<str> = format!("pid {tgid}").into();
                if self.processes.len() < self.budget {
                    self.processes
                        .insert(tgid, ProcessInfo::new(name.clone(), name, None));
                }
            }
        }
        if !self.processes.contains_key(&tgid) {
            // Budget spent (already counted): a throw-away entry for this drain.
            let name: Arc<str> = service_name::resolve(tgid, "").into();
            self.spare = Some(ProcessInfo::new(
                name,
                exe_name(tgid, &[0; 16]),
                MapsSnapshot::read(tgid).ok(),
            ));
        }
    }

    /// Reads `tgid`'s perf map when one of `user_addrs` is in anonymous executable memory
    /// or outside every mapping (JIT code) and the map it has does not name it, and the file changed since it was last
    /// looked at (at most every [`JIT_RECHECK`]).
    fn refresh_jit(&mut self, tgid: u32, user_addrs: &[u64]) {
        let Some(p) = self.processes.get_mut(&tgid) else {
            return;
        };
        let Some(maps) = p.maps.as_ref() else {
            return;
        };
        // In no file: anonymous executable memory, or memory made executable after the
        // maps were read (JITs flip code pages between writable and executable).
        let unnamed_jit = user_addrs.iter().any(|&a| {
            maps.find(a)
                .is_none_or(|r| r.file.is_none() && r.name.starts_with("[anon"))
                && p.jit.as_ref().is_none_or(|j| j.find(a).is_none())
        });
        if !unnamed_jit
            || p.jit_checked
                .is_some_and(|(t, _)| t.elapsed() < JIT_RECHECK)
        {
            return;
        }
        let now = perf_map::stamp(tgid);
        let last = p.jit_checked.and_then(|(_, stamp)| stamp);
        p.jit_checked = Some((Instant::now(), now));
        if now.is_none() || now == last {
            return;
        }
        match PerfMap::read(tgid) {
            Ok(map) => {
                self.symbolizer.count_perf_map(Ok(map.truncated));
                p.jit = Some(map);
            }
            Err(PerfMapError::Refused(why)) => {
                log::debug!("perf map of pid {tgid} not read: {why}");
                self.symbolizer.count_perf_map(Err(()));
            }
            Err(PerfMapError::Missing(_)) => {}
        }
    }

    /// Drops processes that exited; returns them so the kernel forgets them too.
    pub fn forget_exited(&mut self, known: &[u32]) -> Vec<u32> {
        let mut gone: Vec<u32> = self
            .processes
            .keys()
            .chain(known)
            .copied()
            .filter(|t| !std::path::Path::new(&format!("/proc/{t}")).exists())
            .collect();
        gone.sort_unstable();
        gone.dedup();
        for t in &gone {
            self.processes.remove(t);
        }
        gone
    }
}

/// The executable's file name (`/proc/<pid>/exe`), else `comm`.
fn exe_name(tgid: u32, comm: &[u8; 16]) -> Arc<str> {
    std::fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| comm_str(comm).to_owned())
        .into()
}
