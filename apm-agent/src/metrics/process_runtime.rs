//! Runtime metrics of observed processes (those that showed traffic), OTel `process.*`
//! semantic conventions: `process.cpu.time` (`cpu.mode` user|system),
//! `process.memory.usage` (RSS), `process.memory.virtual`, `process.thread.count`,
//! `process.unix.file_descriptor.count`, `process.context_switches`
//! (`process.context_switch_type` voluntary|involuntary).
//!
//! Read from /proc/<pid>/stat, status and fd on a timer, never per event, for at most
//! `budget` processes (a stable set: the first admitted keep their place; the others are
//! counted as overflow once each).
use std::{collections::hash_map::Entry, sync::Arc};

use procfs::FromRead as _;
use rustc_hash::FxHashMap;

use crate::traces::span::Resource;

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub user_s: f64,
    pub system_s: f64,
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub fds: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// Process start, clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat` and `/proc/<pid>/status`; `fds` is the count of
/// `/proc/<pid>/fd`. None when `stat` does not parse.
pub fn parse(stat: &[u8], status: &str, fds: u64, ticks_per_s: u64, page: u64) -> Option<Sample> {
    let st = procfs::process::Stat::from_read(stat).ok()?;
    let ticks = ticks_per_s.max(1) as f64;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    Some(Sample {
        user_s: st.utime as f64 / ticks,
        system_s: st.stime as f64 / ticks,
        rss_bytes: st.rss.saturating_mul(page),
        virtual_bytes: st.vsize,
        threads: u64::try_from(st.num_threads).unwrap_or(0),
        fds,
        voluntary_switches: field("voluntary_ctxt_switches").unwrap_or(0),
        involuntary_switches: field("nonvoluntary_ctxt_switches").unwrap_or(0),
        start_ticks: st.starttime,
    })
}

/// Reads a live process; None when it is gone (or unreadable).
pub fn read(pid: u32, ticks_per_s: u64, page: u64) -> Option<Sample> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    parse(&stat, &status, fds, ticks_per_s, page)
}

/// One observed process's latest reading, with what names it.
#[derive(Debug, Clone)]
pub struct Reading {
    pub pid: u32,
    pub service: Box<str>,
    /// The process's OTLP resource, when metrics are exported.
    pub resource: Option<Arc<Resource>>,
    pub sample: Sample,
    /// Process start (Unix ns): the start of its cumulative counters.
    pub start_unix_ns: u64,
}

/// A process to read: pid, service name, resource.
pub type Target = (u32, Box<str>, Option<Arc<Resource>>);

/// Chooses which processes are read (bounded) and reads them.
#[derive(Debug)]
pub struct RuntimeCollector {
    budget: usize,
    /// Admitted pids (true: seen in this round).
    admitted: FxHashMap<u32, bool>,
    /// Pids refused once already (bounded by the traffic table that feeds this).
    refused: FxHashMap<u32, bool>,
    overflowed: u64,
    ticks_per_s: u64,
    page: u64,
    boot_unix_ns: u64,
}

impl RuntimeCollector {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            admitted: FxHashMap::default(),
            refused: FxHashMap::default(),
            overflowed: 0,
            ticks_per_s: procfs::ticks_per_second(),
            page: procfs::page_size(),
            boot_unix_ns: procfs::boot_time_secs()
                .unwrap_or(0)
                .saturating_mul(1_000_000_000),
        }
    }

    /// Reads the admitted ones among `targets` (the observed processes now).
    pub fn collect(&mut self, targets: Vec<Target>) -> Vec<Reading> {
        for seen in self.admitted.values_mut().chain(self.refused.values_mut()) {
            *seen = false;
        }
        let mut out = Vec::new();
        for (pid, service, resource) in targets {
            let room = self.admitted.len() < self.budget;
            let admitted = match self.admitted.entry(pid) {
                Entry::Occupied(mut e) => {
                    e.insert(true);
                    true
                }
                Entry::Vacant(v) if room => {
                    v.insert(true);
                    true
                }
                Entry::Vacant(_) => false,
            };
            if !admitted {
                if self.refused.insert(pid, true).is_none() {
                    self.overflowed += 1;
                }
                continue;
            }
            let Some(sample) = read(pid, self.ticks_per_s, self.page) else {
                continue;
            };
            let start_unix_ns = self.boot_unix_ns.saturating_add(
                sample.start_ticks.saturating_mul(1_000_000_000) / self.ticks_per_s.max(1),
            );
            out.push(Reading {
                pid,
                service,
                resource,
                sample,
                start_unix_ns,
            });
        }
        // Processes no longer observed give their place up.
        self.admitted.retain(|_, seen| *seen);
        self.refused.retain(|_, seen| *seen);
        out.sort_by_key(|r| r.pid);
        out
    }

    /// Processes refused by the budget (each counted once).
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a Python HTTP server (`python3 app.py`) on Linux 6.18.
    const STAT: &[u8] = b"4242 (python3 app) S 4100 4242 4100 34816 4242 4194560 2811 0 0 0 \
153 27 0 0 20 0 3 0 2171304 35221504 5120 18446744073709551615 94771177349120 \
94771177369001 140725846735728 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 94771177385008 \
94771177386624 94772049260544 140725846739473 140725846739493 140725846739493 \
140725846740971 0\n";
    const STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
Threads:\t3\nVmRSS:\t   20480 kB\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n";

    #[test]
    fn parses_captured_proc_text() {
        let s = parse(STAT, STATUS, 7, 100, 4096).expect("parses");
        assert_eq!(s.user_s, 1.53);
        assert_eq!(s.system_s, 0.27);
        assert_eq!(s.rss_bytes, 5120 * 4096);
        assert_eq!(s.virtual_bytes, 35_221_504);
        assert_eq!(s.threads, 3);
        assert_eq!(s.fds, 7);
        assert_eq!((s.voluntary_switches, s.involuntary_switches), (1234, 56));
        assert_eq!(s.start_ticks, 2_171_304);
        assert_eq!(parse(b"garbage", "", 0, 100, 4096), None);
        // A status without the switch lines (old kernels) reads as zero.
        let s = parse(STAT, "Name:\tx\n", 0, 100, 4096).expect("parses");
        assert_eq!(s.voluntary_switches, 0);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let s = read(
            std::process::id(),
            procfs::ticks_per_second(),
            procfs::page_size(),
        )
        .expect("self");
        assert!(s.threads >= 1 && s.rss_bytes > 0 && s.fds >= 3, "{s:?}");
        assert!(s.virtual_bytes >= s.rss_bytes);
    }

    #[test]
    fn budget_is_stable_and_counted_once() {
        let me = std::process::id();
        let mut c = RuntimeCollector::new(1);
        let t = |pid: u32| (pid, Box::<str>::from("svc"), None);
        // The first comer keeps its place; the other is refused once, however often asked.
        assert_eq!(c.collect(vec![t(me), t(u32::MAX)]).len(), 1);
        assert_eq!(c.collect(vec![t(me), t(u32::MAX)]).len(), 1);
        assert_eq!(c.overflowed(), 1);
        // Once the admitted process is no longer observed, its place frees up.
        c.collect(vec![t(u32::MAX)]);
        assert_eq!(c.collect(vec![t(me)]).len(), 1);
    }
}
