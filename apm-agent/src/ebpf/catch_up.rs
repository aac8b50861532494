//! The catch-up window of the `sockets-fexit` capture path.
//!
//! Its fexit programs do not see a send or receive that was already blocked when they were
//! attached (the call returns past the trampoline; see apm-ebpf/src/catch_up.rs): on a
//! thread-per-connection server, the first request of every idle keep-alive connection. So
//! right after attaching (and seeding the socket table) the agent lists the threads blocked
//! in a data syscall on a socket, from `/proc/<pid>/task/<tid>/syscall`, and a program on
//! `sys_exit` copies each of those calls when it returns. The window closes, and that program
//! is detached, when every listed thread has returned, or after [`WINDOW`]: it is the one
//! program of this path that runs on every syscall of the host. A thread still blocked then
//! is counted as abandoned (its call's bytes are not seen; its later calls are).
use std::{
    fs,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::tp_btf::BtfTracePointLink,
};

/// How long the window stays open at most.
pub const WINDOW: Duration = Duration::from_secs(60);

/// x86-64 numbers of the data syscalls the kernel side copies (`sockets::data_call`).
const DATA_SYSCALLS: [u32; 8] = [0, 1, 19, 20, 44, 45, 46, 47];

/// An open window: the program's link (dropping it detaches the program) and the list.
pub struct CatchUp {
    link: Option<BtfTracePointLink>,
    blocked: HashMap<MapData, u32, u32>,
    on: Array<MapData, u32>,
    deadline: Instant,
}

/// What one look at the window found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Threads listed at the start.
    pub listed: u64,
    /// Threads found blocked that did not fit the kernel's list (their calls are not seen).
    pub not_listed: u64,
    /// Listed threads still blocked when the window closed.
    pub abandoned: u64,
    /// The window is closed and the program detached.
    pub closed: bool,
}

impl CatchUp {
    pub(super) fn new(
        link: BtfTracePointLink,
        blocked: HashMap<MapData, u32, u32>,
        on: Array<MapData, u32>,
    ) -> Self {
        Self {
            link: Some(link),
            blocked,
            on,
            deadline: Instant::now() + WINDOW,
        }
    }

    /// Opens the window: the fexit programs start taking their threads off the list, then
    /// the blocked threads of every process but `skip_tgid` are listed. Closes it at once
    /// when none is blocked.
    pub fn open(&mut self, skip_tgid: u32) -> CatchUpReport {
        let mut report = CatchUpReport::default();
        // Before the listing: a thread listed whose call began after the attach is then
        // always taken off by its fexit program, never copied twice.
        if self.on.set(0, 1, 0).is_err() {
            self.close();
            report.closed = true;
            return report;
        }
        for (tid, number) in blocked_threads(skip_tgid) {
            match self.blocked.insert(tid, number, 0) {
                Ok(()) => report.listed += 1,
                Err(_) => report.not_listed += 1,
            }
        }
        self.deadline = Instant::now() + WINDOW;
        if report.listed == 0 {
            self.close();
            report.closed = true;
        }
        report
    }

    /// Closes the window when the list is empty or the time is up; the threads still listed
    /// then are reported as abandoned.
    pub fn poll(&mut self, now: Instant) -> CatchUpReport {
        let left = self.blocked.keys().flatten().count() as u64;
        if left > 0 && now < self.deadline {
            return CatchUpReport::default();
        }
        self.close();
        CatchUpReport {
            abandoned: left,
            closed: true,
            ..CatchUpReport::default()
        }
    }

    fn close(&mut self) {
        // Detach first: after it no listed call can be copied, so none is counted twice.
        self.link = None;
        let _ = self.on.set(0, 0, 0);
        let left: Vec<u32> = self.blocked.keys().flatten().collect();
        for tid in left {
            let _ = self.blocked.remove(&tid);
        }
    }
}

/// Threads of every process but `skip_tgid` blocked in a data syscall on a socket:
/// (thread id, syscall number).
fn blocked_threads(skip_tgid: u32) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for proc in procs.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == skip_tgid {
            continue;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(line) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
                continue;
            };
            if let Some((number, fd)) = parse_syscall(&line)
                && DATA_SYSCALLS.contains(&number)
                && is_socket(pid, fd)
            {
                found.push((tid, number));
            }
        }
    }
    found
}

/// Whether fd `fd` of process `pid` is a socket.
fn is_socket(pid: u32, fd: u32) -> bool {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|target| {
        target
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"socket:[")
    })
}

/// `/proc/<pid>/task/<tid>/syscall` of a thread blocked in a syscall: its number and first
/// argument (`"0 0x5 0x7ffd..."`). `None` for `running` and for `-1 ...` (not in a syscall).
fn parse_syscall(line: &str) -> Option<(u32, u32)> {
    let mut fields = line.split_ascii_whitespace();
    let number = fields.next()?.parse::<u32>().ok()?;
    let fd = fields.next()?.strip_prefix("0x")?;
    let fd = u32::from_str_radix(fd, 16).ok()?;
    Some((number, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_read_is_parsed_and_other_states_are_not() {
        assert_eq!(
            parse_syscall("0 0x5 0x7ffd1234 0x1000 0x0 0x0 0x0 0x7ffd0000 0x7f000000\n"),
            Some((0, 5))
        );
        assert_eq!(
            parse_syscall("45 0x1f 0x55 0x10 0x0 0x0 0x0 0x1 0x2"),
            Some((45, 31))
        );
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd0000 0x7f000000\n"), None);
        assert_eq!(parse_syscall(""), None);
        assert_eq!(parse_syscall("0 zz"), None);
    }
}
