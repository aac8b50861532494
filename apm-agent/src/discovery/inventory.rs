//! Every live process on the host, kept current from the kernel's exec and exit events (one
//! /proc scan at start, no rescanning loop): pid -> command name, and, while the per-second
//! exec budget lasts, the service name and selector verdict decided at exec (else at the
//! process's first socket).
//!
//! Why a separate table from [`super::processes::Processes`]: that one holds the processes
//! that showed traffic (names, RED ids, resources); this one holds all of them, cheaply, so
//! that selectors can be decided once per process and the agent knows what runs without
//! reading /proc on every exec. Bounded: past `budget`, new processes are not recorded
//! (counted); they are still observed, only without a cached verdict.
use rustc_hash::FxHashMap;

use super::selectors::Verdict;

/// One live process.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// `comm` at exec (or at the start scan).
    pub comm: [u8; 16],
    /// Selector verdict (with selectors configured), decided at exec or at the process's
    /// first socket event.
    pub verdict: Option<Verdict>,
    /// Whether process-level include selectors admit it (for [`Verdict::ByPort`]).
    pub included: bool,
    /// Service name read at exec (while the process surely ran), handed to the traffic
    /// table at the first request.
    pub name: Option<Box<str>>,
    /// The entry comes from an exec event (not from the start scan or a first socket
    /// event): the process runs a program of its own, with an environment of its own.
    pub execd: bool,
}

/// Bounded inventory.
#[derive(Debug)]
pub struct Inventory {
    map: FxHashMap<u32, Known>,
    budget: usize,
    overflowed: u64,
    /// Exec-time namings left in the current second, and that second.
    names_left: u32,
    names_per_sec: u32,
    second: u64,
    deferred: u64,
}

impl Inventory {
    pub fn new(budget: usize, names_per_sec: u32) -> Self {
        Self {
            map: FxHashMap::default(),
            budget,
            overflowed: 0,
            names_left: names_per_sec,
            names_per_sec,
            second: 0,
            deferred: 0,
        }
    }

    /// Fills the table from /proc (at start; the events keep it current afterwards).
    pub fn scan(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
            let mut c = [0u8; 16];
            let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
            let n = comm.len().min(15);
            c[..n].copy_from_slice(&comm[..n]);
            self.insert(pid, c);
        }
    }

    /// A process exec'd (a new program: forget what was decided about the old one).
    /// Returns true when the caller may name it now: it has an entry to keep the name in,
    /// and the per-second naming budget is not spent.
    pub fn exec(&mut self, tgid: u32, comm: [u8; 16], now_ns: u64) -> bool {
        if !self.insert(tgid, comm) {
            return false;
        }
        if let Some(k) = self.map.get_mut(&tgid) {
            k.execd = true;
        }
        let second = now_ns / 1_000_000_000;
        if second != self.second {
            self.second = second;
            self.names_left = self.names_per_sec;
        }
        if self.names_left == 0 {
            self.deferred += 1;
            return false;
        }
        self.names_left -= 1;
        true
    }

    /// Adds or resets the entry of `tgid`; false when the table is full (counted).
    fn insert(&mut self, tgid: u32, comm: [u8; 16]) -> bool {
        let full = self.map.len() >= self.budget;
        let fresh = Known {
            comm,
            ..Known::default()
        };
        match self.map.get_mut(&tgid) {
            Some(k) => *k = fresh,
            None if full => {
                self.overflowed += 1;
                return false;
            }
            None => {
                self.map.insert(tgid, fresh);
            }
        }
        true
    }

    /// Records the name read at exec.
    pub fn set_name(&mut self, tgid: u32, name: Box<str>) {
        if let Some(k) = self.map.get_mut(&tgid) {
            k.name = Some(name);
        }
    }

    /// The name read at exec, once.
    pub fn take_name(&mut self, tgid: u32) -> Option<Box<str>> {
        self.map.get_mut(&tgid)?.name.take()
    }

    pub fn get(&self, tgid: u32) -> Option<&Known> {
        self.map.get(&tgid)
    }

    /// Records the verdict on `tgid` (a process first seen now is added, within budget).
    pub fn set_verdict(&mut self, tgid: u32, verdict: Verdict, included: bool, comm: [u8; 16]) {
        if !self.map.contains_key(&tgid) {
            self.insert(tgid, comm);
        }
        if let Some(k) = self.map.get_mut(&tgid) {
            k.verdict = Some(verdict);
            k.included = included;
        }
    }

    /// A thread group ended.
    pub fn exit(&mut self, tgid: u32) {
        self.map.remove(&tgid);
    }

    /// Drops entries whose process is gone without an exit event (lost events); returns
    /// how many.
    pub fn sweep(&mut self) -> usize {
        let before = self.map.len();
        self.map
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Execs whose naming was left to the first request (naming budget spent).
    pub fn names_deferred(&self) -> u64 {
        self.deferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_exit_and_budget() {
        let mut inv = Inventory::new(2, 1);
        assert!(inv.exec(10, *b"curl\0\0\0\0\0\0\0\0\0\0\0\0", 1_000_000_000));
        // Same second: the naming budget (1) is spent.
        assert!(!inv.exec(11, [0; 16], 1_500_000_000));
        assert_eq!(inv.names_deferred(), 1);
        // Full: the third process is counted, not kept, and not named (nowhere to keep it).
        assert!(!inv.exec(12, [0; 16], 2_000_000_000));
        assert_eq!((inv.len(), inv.overflowed()), (2, 1));
        // A re-exec of a known pid replaces its entry (and its verdict).
        inv.set_verdict(10, Verdict::Excluded, false, [0; 16]);
        inv.set_name(10, "svc".into());
        inv.exec(10, [1; 16], 2_000_000_000);
        let k = inv.get(10).cloned().unwrap_or_default();
        assert_eq!((k.verdict, k.name, k.comm), (None, None, [1; 16]));
        assert!(k.execd);
        // A process first seen at a socket event did not exec (as far as the agent knows).
        inv.exit(11);
        inv.set_verdict(11, Verdict::Observed, true, [0; 16]);
        assert!(inv.get(11).is_some_and(|k| !k.execd));
        inv.exit(10);
        inv.exit(11);
        assert_eq!(inv.len(), 0);
    }

    #[test]
    fn scan_finds_this_process() {
        let mut inv = Inventory::new(1 << 20, 0);
        inv.scan();
        assert!(inv.get(std::process::id()).is_some());
        inv.sweep();
        assert!(
            inv.get(std::process::id()).is_some(),
            "alive: kept by the sweep"
        );
    }
}
