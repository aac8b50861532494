//! Effective capabilities: what the agent needs and why, checked before anything is loaded.

/// A capability the agent needs, and why.
#[derive(Debug, Clone, Copy)]
pub struct Needed {
    pub bit: u32,
    pub name: &'static str,
    pub why: &'static str,
}

/// Capabilities `apm-agent run` needs (root has them all).
pub const REQUIRED: [Needed; 4] = [
    Needed {
        bit: 39,
        name: "CAP_BPF",
        why: "create maps and load the kernel programs",
    },
    Needed {
        bit: 38,
        name: "CAP_PERFMON",
        why: "load tracing programs, let them read user memory; open perf events",
    },
    Needed {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        why: "follow other processes' /proc/<pid>/exe, root and fd links",
    },
    Needed {
        bit: 2,
        name: "CAP_DAC_READ_SEARCH",
        why: "open other users' /proc/<pid>/environ and list their /proc/<pid>/fd",
    },
];

/// Only needed when tracefs is not mounted yet (the agent mounts it).
pub const MOUNT: Needed = Needed {
    bit: 21,
    name: "CAP_SYS_ADMIN",
    why: "mount tracefs when it is missing",
};

/// Not required: attaching uprobes (the OpenSSL hooks, TLS plaintext) needs it on kernels
/// with the 2025 change that took uprobe perf events back from `CAP_PERFMON` (Linux 6.16, and
/// stable kernels that took the fix); without it the agent runs without TLS plaintext.
pub const UPROBES: Needed = Needed {
    bit: 21,
    name: "CAP_SYS_ADMIN",
    why: "attach the OpenSSL uprobes (TLS plaintext): recent kernels allow uprobes only with it",
};

/// Whether this process holds `need` in its effective set.
pub fn holds(need: Needed) -> bool {
    missing(effective(), &[need]).is_empty()
}

/// Not required: without it (and unless `kernel.kptr_restrict` is 0 and
/// `kernel.perf_event_paranoid` at most 1) `/proc/kallsyms` shows every address as zero, so
/// the profiler's kernel frames stay unnamed (`[unknown] [kernel]+0x...`).
pub const KERNEL_SYMBOLS: Needed = Needed {
    bit: 34,
    name: "CAP_SYSLOG",
    why: "read kernel symbol addresses in /proc/kallsyms (names of kernel frames in profiles)",
};

/// Whether `/proc/kallsyms` shows real addresses to this process (CAP_SYSLOG, or a
/// permissive `kptr_restrict`/`perf_event_paranoid`): kernel frames can be named.
pub fn kernel_symbols_visible() -> bool {
    use std::io::BufRead as _;
    let Ok(file) = std::fs::File::open("/proc/kallsyms") else {
        return false;
    };
    std::io::BufReader::new(file)
        .lines()
        .take(16)
        .map_while(Result::ok)
        .any(|line| kallsyms_line_has_address(&line))
}

/// A `/proc/kallsyms` line with a non-zero address (hidden ones read `0000000000000000`).
fn kallsyms_line_has_address(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|a| u64::from_str_radix(a, 16).ok())
        .is_some_and(|a| a != 0)
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Which of `needed` are missing from `caps`.
pub fn missing(caps: u64, needed: &[Needed]) -> Vec<Needed> {
    needed
        .iter()
        .filter(|n| caps & (1u64 << n.bit) == 0)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        let all = REQUIRED.iter().fold(0u64, |acc, n| acc | (1 << n.bit));
        assert!(missing(all, &REQUIRED).is_empty());
        let without_bpf = all & !(1 << 39);
        let names: Vec<_> = missing(without_bpf, &REQUIRED)
            .iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, vec!["CAP_BPF"]);
        assert_eq!(missing(0, &REQUIRED).len(), 4);
    }

    #[test]
    fn hidden_kallsyms_addresses_are_told_apart() {
        assert!(kallsyms_line_has_address("ffffffff81000000 T _stext"));
        assert!(!kallsyms_line_has_address("0000000000000000 T _stext"));
        assert!(!kallsyms_line_has_address(""));
    }
}
