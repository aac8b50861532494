//! The CPU time the agent's eBPF programs take inside the traced processes' syscalls, from
//! the kernel's own accounting (`kernel.bpf_stats_enabled`: `run_time_ns` per program).
//!
//! Why: the agent's CPU counters see only its user-space threads. Its kernel programs run in
//! the context of the processes they trace (every syscall of every process, for the two
//! syscall tracepoints), so their cost shows as the server's and the client's CPU, and as
//! lost throughput, not as the agent's. The accounting itself costs two clock reads per
//! program run, so the benches read it in a round of its own, never in a timed one.
use std::path::Path;

use anyhow::{Context as _, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's per-program accounting on; the previous setting comes back on drop.
pub struct Accounting {
    previous: String,
}

impl Accounting {
    pub fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}"))?
            .trim()
            .to_owned();
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.previous);
    }
}

/// Run time and run count of every eBPF program process `pid` holds open, summed (from
/// `/proc/<pid>/fdinfo`: a program descriptor's entry carries `run_time_ns` and `run_cnt`).
pub fn programs_of(pid: u32) -> Result<Runs> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut total = Runs::default();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        total.add(&parse_fdinfo(&text));
    }
    Ok(total)
}

/// Kernel program runs and the time they took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Runs {
    pub time_ns: u64,
    pub count: u64,
}

impl Runs {
    fn add(&mut self, other: &Runs) {
        self.time_ns += other.time_ns;
        self.count += other.count;
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Runs) -> Runs {
        Runs {
            time_ns: self.time_ns.saturating_sub(earlier.time_ns),
            count: self.count.saturating_sub(earlier.count),
        }
    }
}

/// The run figures of one fdinfo text (zero for descriptors that are not programs).
fn parse_fdinfo(text: &str) -> Runs {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Runs {
        time_ns: field("run_time_ns:"),
        count: field("run_cnt:"),
    }
}

/// Whether this kernel has the switch (5.1 and later).
pub fn available() -> bool {
    Path::new(SYSCTL).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_programs_fdinfo_and_ignores_other_descriptors() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2079\nprog_type:\t26\n\
                    prog_jited:\t1\nprog_tag:\t62cb15dc21bb7138\nmemlock:\t8192\nprog_id:\t812\n\
                    run_time_ns:\t1924311950\nrun_cnt:\t5396097\nrecursion_misses:\t0\n\
                    verified_insns:\t3120\n";
        assert_eq!(
            parse_fdinfo(prog),
            Runs {
                time_ns: 1_924_311_950,
                count: 5_396_097
            }
        );
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t27\nkey_size:\t0\nmax_entries:\t8388608\n";
        assert_eq!(parse_fdinfo(map), Runs::default());
        assert_eq!(parse_fdinfo(""), Runs::default());
    }

    #[test]
    fn since_never_goes_negative() {
        let a = Runs {
            time_ns: 10,
            count: 2,
        };
        let b = Runs {
            time_ns: 25,
            count: 5,
        };
        assert_eq!(
            b.since(&a),
            Runs {
                time_ns: 15,
                count: 3
            }
        );
        assert_eq!(a.since(&b), Runs::default());
    }
}
