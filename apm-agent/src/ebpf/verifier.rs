//! What to show of a verifier rejection: the failing instruction, the source line it came
//! from, and the verifier's own verdict, instead of a log of thousands of lines. The full log
//! goes to the debug log (`RUST_LOG=debug`).

/// Lines of statistics the verifier appends after its verdict.
const STATS: &[&str] = &[
    "verification time",
    "stack depth",
    "processed ",
    "subprog ",
    "mark_read",
];

/// Lines kept after the failing instruction.
const VERDICT_LINES: usize = 4;

/// A short account of a verifier log: `at insn N: <instruction> (<source>): <verdict>`.
pub fn summarize(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let last_insn = lines.iter().rposition(|l| is_instruction(l));
    let Some(at) = last_insn else {
        // Rejected before any instruction was walked (e.g. a reserved field checked on load).
        let verdict: Vec<&str> = lines.iter().copied().filter(|l| !is_stat(l)).collect();
        let start = verdict.len().saturating_sub(VERDICT_LINES);
        return verdict[start..].join(" / ");
    };
    let source = lines[..at]
        .iter()
        .rev()
        .take(6)
        .find_map(|l| l.strip_prefix("; "))
        .map(|s| format!(" (source: {})", s.trim()));
    let verdict: Vec<&str> = lines[at + 1..]
        .iter()
        .copied()
        .take_while(|l| !is_stat(l) && !l.starts_with("Reason:"))
        .filter(|l| !l.starts_with(' '))
        .take(VERDICT_LINES)
        .collect();
    format!(
        "at insn {}{}: {}",
        lines[at].trim(),
        source.unwrap_or_default(),
        verdict.join(" / ")
    )
}

/// `1234: (85) call bpf_probe_read_user#112`, the classic trace line of one instruction.
fn is_instruction(line: &str) -> bool {
    let Some((number, rest)) = line.split_once(": (") else {
        return false;
    };
    !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) && rest.contains(')')
}

fn is_stat(line: &str) -> bool {
    STATS.iter().any(|s| line.starts_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of 6.1's log for the iovec copy it rejected (before the fix in capture.rs).
    const LINUX_6_1: &str = "\
; if n == 0 {
5062: (79) r1 = *(u64 *)(r10 -232)    ; frame1: R1_w=map_value(off=48,ks=4,vs=8240,imm=0) R10=fp0
; unsafe { intrinsics::offset(self, count) }
5063: (0f) r1 += r9                   ; frame1: R1_w=map_value(off=48,ks=4,vs=8240,umin=4097)
5064: (bf) r6 = r2                    ; frame1: R2_w=4096 R6_w=4096
; fun(dst, size, unsafe_ptr)
5065: (85) call bpf_probe_read_user#112
invalid access to map value, value_size=8240 off=4145 size=4096
R1 min value is outside of the allowed memory range
verification time 474945 usec
stack depth 0+288+0
processed 14116 insns (limit 1000000) max_states_per_insn 11 total_states 815 peak_states 683 mark_read 38
";

    /// 7.x explains its verdict at length after the classic lines.
    const LINUX_7_3: &str = "\
; fun(dst, size, unsafe_ptr) @ helpers.rs:1166
4934: (85) call bpf_probe_read_user#112
invalid access to map value, value_size=8240 off=4207 size=4096
R1 max value is outside of the allowed memory range

Verification failed: Memory Safety: Access outside bounds

Reason:
  The verifier cannot prove offset + access_size <= object_size.
At:
  apm_sys_exit @ helpers.rs:1166:5
  Instruction context:
      4933 | (bf) r6 = r2
  >>> 4934 | (85) call bpf_probe_read_user#112
verification time 523667 usec
";

    #[test]
    fn the_failing_instruction_its_source_and_the_verdict() {
        assert_eq!(
            summarize(LINUX_6_1),
            "at insn 5065: (85) call bpf_probe_read_user#112 (source: fun(dst, size, \
             unsafe_ptr)): invalid access to map value, value_size=8240 off=4145 size=4096 / \
             R1 min value is outside of the allowed memory range"
        );
        assert_eq!(
            summarize(LINUX_7_3),
            "at insn 4934: (85) call bpf_probe_read_user#112 (source: fun(dst, size, \
             unsafe_ptr) @ helpers.rs:1166): invalid access to map value, value_size=8240 \
             off=4207 size=4096 / R1 max value is outside of the allowed memory range / \
             Verification failed: Memory Safety: Access outside bounds"
        );
    }

    #[test]
    fn a_rejection_before_any_instruction_keeps_its_last_lines() {
        assert_eq!(
            summarize("func#0 @0\nBPF_STX uses reserved fields\nprocessed 0 insns\n"),
            "func#0 @0 / BPF_STX uses reserved fields"
        );
        assert_eq!(summarize(""), "");
    }
}
