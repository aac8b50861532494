//! Seeds the kernel socket table with TCP connections that already existed when the agent
//! started, so a keep-alive connection opened earlier is still seen. (A thread blocked in a
//! read on such a connection needs nothing more: the kernel side reads syscall arguments at
//! exit.)
//!
//! Each process's sockets are matched against the TCP table of its own network namespace
//! (read once per namespace), so containers are covered too.
use std::collections::{HashMap, HashSet};

use apm_common::{SockInfo, SockKey, role};
use aya::maps::{HashMap as BpfHashMap, MapData};
use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

/// What seeding found and did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeedReport {
    pub processes: u32,
    pub seeded: u32,
    /// Connections not seeded because the kernel table was full.
    pub table_full: u32,
}

/// The first ids handed out to seeded sockets. Kernel ids are boot-relative nanoseconds, far
/// below this, so a seeded id can never equal a kernel-assigned one.
const SEED_ID_BASE: u64 = 1 << 63;

struct NetnsTable {
    /// Established connections by socket inode: (local port, remote port).
    established: HashMap<u64, (u16, u16)>,
    /// Local ports in LISTEN state: a connection on one of them was accepted (server side).
    listening: HashSet<u16>,
}

fn netns_table(proc: &Process) -> Option<NetnsTable> {
    let mut entries: Vec<TcpNetEntry> = proc.tcp().ok()?;
    entries.extend(proc.tcp6().unwrap_or_default());
    let mut table = NetnsTable {
        established: HashMap::new(),
        listening: HashSet::new(),
    };
    for e in entries {
        match e.state {
            TcpState::Established => {
                table
                    .established
                    .insert(e.inode, (e.local_address.port(), e.remote_address.port()));
            }
            TcpState::Listen => {
                table.listening.insert(e.local_address.port());
            }
            _ => {}
        }
    }
    Some(table)
}

/// Inserts every established TCP socket of every process (but `skip_tgid`) into `sockets`.
pub fn seed_existing(
    sockets: &mut BpfHashMap<MapData, SockKey, SockInfo>,
    skip_tgid: u32,
    skip_port: u16,
) -> SeedReport {
    let mut report = SeedReport::default();
    let mut tables: HashMap<u64, Option<NetnsTable>> = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return report;
    };
    let mut next_id = SEED_ID_BASE;
    for proc in all.flatten() {
        let pid = proc.pid();
        let Ok(tgid) = u32::try_from(pid) else {
            continue;
        };
        if tgid == skip_tgid {
            continue;
        }
        let Ok(fds) = proc.fd() else { continue };
        let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        let table = tables.entry(netns).or_insert_with(|| netns_table(&proc));
        let Some(table) = table.as_ref() else {
            continue;
        };
        report.processes += 1;
        for fd in fds.flatten() {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            let Some(&(local, remote)) = table.established.get(&inode) else {
                continue;
            };
            if remote == skip_port && skip_port != 0 {
                continue;
            }
            let Ok(fd_num) = u32::try_from(fd.fd) else {
                continue;
            };
            let sock_role = if table.listening.contains(&local) {
                role::SERVER
            } else {
                role::CLIENT
            };
            let key = SockKey { tgid, fd: fd_num };
            let info = SockInfo {
                role: sock_role,
                flags: 0,
                id: next_id,
                records: 0,
                cookie: 0,
            };
            next_id += 1;
            // BPF_NOEXIST: a connection the kernel tracked meanwhile keeps its own entry.
            match sockets.insert(key, info, 1) {
                Ok(()) => report.seeded += 1,
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(_) => report.table_full += 1,
            }
        }
    }
    report
}
