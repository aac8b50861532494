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
        why: "attach tracepoints; let the programs read user memory",
    },
    Needed {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        why: "read other processes' /proc/<pid>/environ and exe (service names)",
    },
    Needed {
        bit: 2,
        name: "CAP_DAC_READ_SEARCH",
        why: "list other users' /proc/<pid>/fd (connections open before start)",
    },
];

/// Only needed when tracefs is not mounted yet (the agent mounts it).
pub const MOUNT: Needed = Needed {
    bit: 21,
    name: "CAP_SYS_ADMIN",
    why: "mount tracefs when it is missing",
};

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
}
