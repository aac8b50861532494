//! Runs of the agent's programs that the kernel skipped.
//!
//! A tracing program does not run on a CPU where it is already running: the kernel skips the
//! new run and counts it in the program's `recursion_misses` (5.12+). Where the program cannot
//! be preempted that only happens for nested hooks; where it can (the syscall tracepoints
//! became preemptible in 7.x, with lazy preemption and faultable syscall tracepoints), every
//! syscall another task makes on that CPU while a run of `apm_sys_exit` is preempted is
//! skipped. Measured under emulation on 7.3: 6 to 20 skipped runs of `apm_sys_exit` during an
//! agent's start-up with OpenSSL hooking (about 15 s); in 3 runs of 6 one of them was a
//! server's read of a request, which then went uncounted. None in 5 s of nginx under wrk on
//! this machine's 6.18. A skipped run of a data program can be an event lost without a gap in
//! its socket's numbers, so the count is exported: such a loss is counted, not silent.
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use aya::Ebpf;

/// The programs whose skipped runs are counted, by the name they are exported under. The
/// variant of a program for older kernels is counted under its main name.
pub const TRACKED: [&str; 20] = [
    "apm_sock_send_data",
    "apm_sock_recv_data",
    "apm_inet_sendmsg_exit",
    "apm_inet6_sendmsg_exit",
    "apm_unix_stream_sendmsg_exit",
    "apm_inet_recvmsg_exit",
    "apm_inet6_recvmsg_exit",
    "apm_unix_stream_recvmsg_exit",
    "apm_inet_sendpage_exit",
    "apm_tcp_state",
    "apm_sys_enter",
    "apm_sys_exit",
    "apm_sock_send",
    "apm_sock_recv",
    "apm_tcp_sendmsg",
    "apm_tcp_recvmsg",
    "apm_proc_exec",
    "apm_proc_exit",
    "apm_proc_fork",
    "apm_profile",
];

/// Variants counted under another program's name: (variant, main name).
const VARIANTS: [(&str, &str); 1] = [("apm_sys_exit_nofetch", "apm_sys_exit")];

/// Suffix of the 8-iovec variants of the socket-layer data programs (see `attach.rs`).
pub const NARROW_SUFFIX: &str = "_iov8";

/// The program `name` is counted under.
pub fn main_name(name: &'static str) -> &'static str {
    VARIANTS
        .into_iter()
        .find(|(variant, _)| *variant == name)
        .map_or_else(
            || name.strip_suffix(NARROW_SUFFIX).unwrap_or(name),
            |(_, main)| main,
        )
}

/// Descriptors of the attached programs of [`TRACKED`] (duplicates: reading them needs no
/// access to the loaded object, which another thread owns).
#[derive(Debug, Default)]
pub struct ProgramRuns {
    programs: Vec<(usize, OwnedFd)>,
}

impl ProgramRuns {
    /// The programs of `bpf` named in `attached` that are tracked.
    pub(super) fn of(bpf: &Ebpf, attached: &[&'static str]) -> Self {
        let mut programs = Vec::new();
        for name in attached {
            let main = main_name(name);
            let Some(index) = TRACKED.iter().position(|t| *t == main) else {
                continue;
            };
            let fd = bpf
                .program(name)
                .and_then(|p| p.fd().ok())
                .and_then(|fd| fd.as_fd().try_clone_to_owned().ok());
            if let Some(fd) = fd {
                programs.push((index, fd));
            }
        }
        Self { programs }
    }

    /// Skipped runs so far: (index in [`TRACKED`], count), for each program whose count the
    /// kernel reports.
    pub fn missed(&self) -> Vec<(usize, u64)> {
        self.programs
            .iter()
            .filter_map(|(index, fd)| {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                    .ok()?;
                Some((*index, recursion_misses(&info)?))
            })
            .collect()
    }
}

/// `recursion_misses` of a program's fdinfo (absent before 5.12).
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        line.strip_prefix("recursion_misses:")
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2072\n\
                      prog_type:\t26\nprog_jited:\t1\nprog_tag:\t031f959e28075960\n\
                      memlock:\t65536\nprog_id:\t1495\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                      recursion_misses:\t18\nverified_insns:\t14116\n";
        assert_eq!(recursion_misses(fdinfo), Some(18));
        assert_eq!(recursion_misses("prog_type:\t26\n"), None);
    }

    #[test]
    fn variants_count_under_their_main_program() {
        assert_eq!(main_name("apm_sys_exit_nofetch"), "apm_sys_exit");
        assert_eq!(main_name("apm_sock_recv_data_iov8"), "apm_sock_recv_data");
        assert_eq!(main_name("apm_tcp_state"), "apm_tcp_state");
    }
}
