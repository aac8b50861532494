//! The `sockets` capture path (6.4+; `sockets-fexit` from 5.15): programs that run only where
//! sockets move bytes.
//!
//! The syscall path runs a program at the entry and exit of every syscall of every process and
//! filters inside it: a process doing file I/O, futexes or epoll pays for each call, and on
//! kernels whose syscall tracepoints are preemptible the kernel skips runs of a preempted
//! program (see the agent's `ebpf/program_runs.rs`). Here nothing is attached to every
//! syscall:
//!
//! - **Data**: `sock_send_length` / `sock_recv_length` fire inside `sock_sendmsg` /
//!   `sock_recvmsg`, after the bytes moved, with the `struct sock *` and the byte count. The
//!   syscall's own arguments (fd, buffer, iovec or msghdr) are in the task's saved user
//!   registers (`bpf_task_pt_regs`). `sendfile` and `splice` move bytes the caller never
//!   held: their count is recorded, not the bytes. A send or receive that is none of these
//!   syscalls of the task (io_uring workers, kernel sockets) is counted and left alone.
//!   Kernels with fentry/fexit but before 6.4 (5.15 to 6.3: `bpf_task_pt_regs` is 5.15+) get
//!   the same data from BPF trampolines on the functions around them (`inet_sendmsg`,
//!   `inet_recvmsg`, ...: the `sockets-fexit` value of the setting).
//! - **Connections** are followed from their first data: an fd the table does not know is
//!   taken in then (its role from the TCP handshake, below, else inferred by the agent from
//!   the traffic). The socket's cookie identifies it: the same fd moving bytes through another
//!   socket was closed and reused, unseen.
//! - **TCP handshakes and closes**: `inet_sock_set_state` fires on TCP state changes only. A
//!   socket reaching ESTABLISHED from SYN_RECV was accepted (server side), from SYN_SENT
//!   connected (client side); reaching CLOSE, its entry goes and the agent is told.
//!   Unix-domain sockets have no such events: their entries go when their fd is reused or
//!   their process exits.
use core::ffi::c_void;

use apm_common::{
    ConnEvent, MAX_IOV, MAX_IOV_NARROW, SockInfo, SockKey, direction, kind, role, sock_flags, stat,
};
use aya_ebpf::{
    bindings::{BPF_ANY, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, fexit, map},
    maps::LruHashMap,
    programs::{BtfTracePointContext, FExitContext},
};

use crate::{
    catch_up::seen_by_fexit,
    endpoints::{SKC_DADDR, SKC_DPORT, SKC_FAMILY, SKC_STATE},
    maps::{FORK_PARENT, SKIP_PEER_PORT, SOCKETS, bump, output},
    sockets::{
        AF_INET, Call, EITHER_WAY, args, caller, capture, data_call, is_tracked_family, peeked,
        splice_socket_first,
    },
};

/// Roles learnt from TCP handshakes, by socket cookie, until the socket's first data.
#[map]
static SK_ROLE: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65_536, 0);

/// The table entry of each socket taken in, by socket cookie: where its TCP close is applied.
/// (A socket shared by several fds or processes is remembered under the last one.)
#[map]
static SK_KEY: LruHashMap<u64, SockKey> = LruHashMap::with_max_entries(65_536, 0);

const MSG_PEEK: i32 = 2;
/// `enum tcp_state`.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn apm_sock_send_data(ctx: BtfTracePointContext) -> i32 {
    on_socket_data::<MAX_IOV>(ctx.arg(0), ctx.arg(1), ctx.arg(2), direction::EGRESS);
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn apm_sock_recv_data(ctx: BtfTracePointContext) -> i32 {
    on_socket_data::<MAX_IOV>(ctx.arg(0), ctx.arg(1), ctx.arg(2), direction::INGRESS);
    0
}

/// [`apm_sock_send_data`] gathering [`MAX_IOV_NARROW`] iovecs: for a verifier that finds the
/// [`MAX_IOV`] one too large ("BPF program is too large"; Debian's 7.3 did for the receive
/// before the gather loop's fix). The agent loads it only then.
#[btf_tracepoint(function = "sock_send_length")]
pub fn apm_sock_send_data_iov8(ctx: BtfTracePointContext) -> i32 {
    on_socket_data::<MAX_IOV_NARROW>(ctx.arg(0), ctx.arg(1), ctx.arg(2), direction::EGRESS);
    0
}

/// [`apm_sock_recv_data`] gathering [`MAX_IOV_NARROW`] iovecs (see [`apm_sock_send_data_iov8`]).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn apm_sock_recv_data_iov8(ctx: BtfTracePointContext) -> i32 {
    on_socket_data::<MAX_IOV_NARROW>(ctx.arg(0), ctx.arg(1), ctx.arg(2), direction::INGRESS);
    0
}

/// The `sockets-fexit` path, for kernels with fentry/fexit but before the socket tracepoints
/// (6.4): the same data as `sock_send_length`/`sock_recv_length`, from BPF trampolines on
/// the functions `sock_sendmsg`/`sock_recvmsg` call through the socket's operations, one per
/// family (those two are inlined into their callers in `net/socket.c`: measured on 6.1, an
/// fexit of `sock_sendmsg` never ran for a `write`; these are in other files and never are).
/// They take `(struct socket *sock, struct msghdr *msg, size_t len)`, the receives then
/// `int flags`; their `int` result follows the arguments. Each runs once per call, after the
/// bytes moved.
///
/// A call that was already blocked when the trampolines were installed returns past them:
/// the catch-up program sees those (see catch_up.rs), and each fexit program takes its
/// thread off the catch-up's list.
///
/// Where the program has a `struct socket *`, the socket is `sock->sk`, read through the
/// argument's kernel type so that it stays a typed socket pointer for `bpf_get_socket_cookie`.
/// That is also what checks [`SOCKET_SK`] on each kernel: a load at any other field gives a
/// value of another type, and the verifier rejects the helper call (the agent then falls back
/// to the syscalls).
macro_rules! socket_fexit {
    ($name:ident, $narrow:ident, $function:literal, send) => {
        socket_fexit!(@send $name, $function, MAX_IOV);
        socket_fexit!(@send $narrow, $function, MAX_IOV_NARROW);
    };
    ($name:ident, $narrow:ident, $function:literal, recv) => {
        socket_fexit!(@recv $name, $function, MAX_IOV);
        socket_fexit!(@recv $narrow, $function, MAX_IOV_NARROW);
    };
    (@send $name:ident, $function:literal, $iov:ident) => {
        #[doc = concat!("`", $function, "`, on return: one send (`", stringify!($iov), "` iovecs).")]
        #[fexit(function = $function)]
        pub fn $name(ctx: FExitContext) -> i32 {
            let sock: *const u64 = ctx.arg(0);
            let ret: i32 = ctx.arg(3);
            // SAFETY: `sock` is the traced function's `struct socket *`, a kernel pointer
            // the verifier types from BTF; `sk` is its pointer field at SOCKET_SK.
            let sk = unsafe { *sock.byte_add(SOCKET_SK) };
            seen_by_fexit();
            on_socket_data::<$iov>(sk, ret, 0, direction::EGRESS);
            0
        }
    };
    (@recv $name:ident, $function:literal, $iov:ident) => {
        #[doc = concat!("`", $function, "`, on return: one receive (`", stringify!($iov), "` iovecs).")]
        #[fexit(function = $function)]
        pub fn $name(ctx: FExitContext) -> i32 {
            let sock: *const u64 = ctx.arg(0);
            let flags: i32 = ctx.arg(3);
            let ret: i32 = ctx.arg(4);
            // SAFETY: as for the sends.
            let sk = unsafe { *sock.byte_add(SOCKET_SK) };
            seen_by_fexit();
            on_socket_data::<$iov>(sk, ret, flags, direction::INGRESS);
            0
        }
    };
}

// Each with its variant gathering `MAX_IOV_NARROW` iovecs (see `apm_sock_send_data_iov8`).
socket_fexit!(
    apm_inet_sendmsg_exit,
    apm_inet_sendmsg_exit_iov8,
    "inet_sendmsg",
    send
);
socket_fexit!(
    apm_inet6_sendmsg_exit,
    apm_inet6_sendmsg_exit_iov8,
    "inet6_sendmsg",
    send
);
socket_fexit!(
    apm_unix_stream_sendmsg_exit,
    apm_unix_stream_sendmsg_exit_iov8,
    "unix_stream_sendmsg",
    send
);
socket_fexit!(
    apm_unix_stream_recvmsg_exit,
    apm_unix_stream_recvmsg_exit_iov8,
    "unix_stream_recvmsg",
    recv
);
socket_fexit!(
    apm_inet_recvmsg_exit,
    apm_inet_recvmsg_exit_iov8,
    "inet_recvmsg",
    recv
);
socket_fexit!(
    apm_inet6_recvmsg_exit,
    apm_inet6_recvmsg_exit_iov8,
    "inet6_recvmsg",
    recv
);

/// `inet_sendpage(struct socket *sock, struct page *page, int offset, size_t size, int
/// flags)`, on return (`ssize_t`): before 6.5, `sendfile` and `splice` into a TCP socket (IPv4
/// and IPv6 alike) went through the socket's `sendpage`, not `inet_sendmsg`. Their bytes are
/// counted, not copied (see `apm_common::syscall::SENDFILE`). 6.5 folded `sendpage` into
/// `sock_sendmsg`, where the tracepoint of the `sockets` path sees them.
#[fexit(function = "inet_sendpage")]
pub fn apm_inet_sendpage_exit(ctx: FExitContext) -> i32 {
    let sock: *const u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(5);
    // SAFETY: as for the sends above.
    let sk = unsafe { *sock.byte_add(SOCKET_SK) };
    seen_by_fexit();
    let ret = if ret > i64::from(i32::MAX) {
        i32::MAX
    } else {
        ret as i32
    };
    on_socket_data::<MAX_IOV_NARROW>(sk, ret, 0, direction::EGRESS);
    0
}

/// Offset of `sk` in `struct socket` (after `state`, `type`, `flags` and `file`): the same
/// from 5.10 to 6.18 (the verifier checks it: see `socket_fexit!`).
pub const SOCKET_SK: usize = 24;

/// One send (`dir` egress) or receive of `ret` bytes through socket `sk`, from inside
/// `sock_sendmsg`/`sock_recvmsg`: the tracepoints' or the fexit programs' arguments.
#[inline(always)]
fn on_socket_data<const IOV: u32>(sk: u64, ret: i32, flags: i32, dir: u32) {
    if ret <= 0 || (dir == direction::INGRESS && flags & MSG_PEEK != 0) {
        // Nothing moved, or a peek: the bytes stay in the socket for the next receive.
        return;
    }
    let Some((tgid, tid)) = caller() else { return };
    // SAFETY: helpers with no preconditions; the result is the current task's saved user
    // registers, a trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // SAFETY: as above.
    let (cs, number) = unsafe { ((*regs).cs, (*regs).orig_rax) };
    // Registers of a syscall from user mode (io_uring workers and kernel threads have none).
    let from_user = cs & 3 == 3;
    let Some((sc, call_dir, layout)) = data_call(number).filter(|_| from_user) else {
        bump(stat::SOCKET_CALL_OTHER);
        return;
    };
    if call_dir != dir && call_dir != EITHER_WAY {
        bump(stat::SOCKET_CALL_OTHER);
        return;
    }
    let mut a = args(regs);
    if call_dir == EITHER_WAY {
        splice_socket_first(&mut a, dir);
    }
    if dir == direction::INGRESS && peeked(regs, sc, &a) {
        // A peek by the syscall's own flags (the hook's are the same but for `read`'s).
        return;
    }
    let fd = a.a0 as u32;
    // SAFETY: `sk` is the tracepoint's socket.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let key = SockKey { tgid, fd };
    let sock = match SOCKETS.get_ptr_mut(key) {
        // SAFETY: a value of a successful lookup.
        Some(sock) => match unsafe { (*sock).cookie } {
            known if known == cookie => sock,
            0 => {
                // Seeded from /proc before its first data here: now its socket is known.
                // SAFETY: as above.
                unsafe { (*sock).cookie = cookie };
                let _ = SK_KEY.insert(cookie, key, BPF_ANY as u64);
                sock
            }
            _ => {
                // The fd now names another socket: the old one was closed unseen.
                // SAFETY: as above, copied out.
                let old = unsafe { *sock };
                if old.flags & sock_flags::UNANNOUNCED == 0 {
                    closed(key, old);
                }
                match take_in(key, tid, sk, cookie) {
                    Some(sock) => sock,
                    None => return,
                }
            }
        },
        None => match take_in(key, tid, sk, cookie) {
            Some(sock) => sock,
            None => return,
        },
    };
    capture::<true, IOV>(
        &Call {
            tgid,
            tid,
            sc,
            dir,
            layout,
            ret: ret as u64,
            args: a,
        },
        sock,
        Some(sk),
    );
}

/// A socket's first data seen on `key`: a new table entry (replacing any stale one), and a
/// connection event for the agent. Sockets of other families are left alone, and so are
/// sockets in the CLOSE state: unconnected datagram sockets (a DNS query by `sendto`, syslog
/// on `/dev/log`), and a TCP connection that ended before this call (its last bytes, such as
/// a TLS alert answered by a reset, are not a conversation). A connection to the agent's own
/// listener is entered muted, unannounced. Returns the new entry.
#[inline(always)]
fn take_in(key: SockKey, tid: u32, sk: u64, cookie: u64) -> Option<*mut SockInfo> {
    // SAFETY: kernel reads through the checked helper.
    let family = unsafe { bpf_probe_read_kernel((sk + SKC_FAMILY) as *const u16) }.ok()?;
    if !is_tracked_family(family) {
        return None;
    }
    // SAFETY: as above.
    let state = unsafe { bpf_probe_read_kernel((sk + SKC_STATE) as *const u8) }.ok()?;
    if i32::from(state) == TCP_CLOSE {
        return None;
    }
    let (mut port, mut addr) = (0u16, [0u8; 16]);
    if family != crate::sockets::AF_UNIX {
        // SAFETY: as above.
        let dport = unsafe { bpf_probe_read_kernel((sk + SKC_DPORT) as *const u16) }.ok()?;
        port = u16::from_be(dport);
        if family == AF_INET {
            // SAFETY: as above.
            let daddr = unsafe { bpf_probe_read_kernel((sk + SKC_DADDR) as *const [u8; 4]) };
            if let Ok(v4) = daddr {
                addr[..4].copy_from_slice(&v4);
            }
        }
    }
    let skip = SKIP_PEER_PORT.load();
    let to_agent = skip != 0 && u32::from(port) == skip;
    // SAFETY: the value is copied out immediately.
    let sock_role = unsafe { SK_ROLE.get(cookie) }
        .copied()
        .unwrap_or(role::UNKNOWN);
    let _ = SK_ROLE.remove(cookie);
    let info = SockInfo {
        role: sock_role,
        flags: if to_agent {
            sock_flags::MUTED | sock_flags::UNANNOUNCED
        } else {
            0
        },
        id: cookie,
        records: 0,
        cookie,
    };
    if SOCKETS.insert(key, info, BPF_ANY as u64).is_err() {
        bump(stat::SOCK_MAP_FULL);
        return None;
    }
    let _ = SK_KEY.insert(cookie, key, BPF_ANY as u64);
    if to_agent {
        return None;
    }
    if sock_role == role::UNKNOWN {
        // Inherited across fork, duplicated, passed over a unix socket, or opened before
        // the agent and not seeded: adopted.
        bump(stat::SOCK_ADOPTED);
    }
    // The parent of a forked process (a PostgreSQL backend, a pre-fork server's worker),
    // whose name the agent gives it unless it exec'd: the accepting process is not seen on
    // this path, only the one that moves the bytes.
    // SAFETY: the value is copied out immediately.
    let parent_tgid = unsafe { FORK_PARENT.get(key.tgid) }.copied().unwrap_or(0);
    output(&ConnEvent {
        kind: kind::CONN_OPEN,
        tgid: key.tgid,
        tid,
        fd: key.fd,
        role: sock_role,
        family: u32::from(family),
        port: u32::from(port),
        parent_tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        id: cookie,
        addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    let sock = SOCKETS.get_ptr_mut(key)?;
    // A Go TLS handshake that named this socket before its first (encrypted) bytes.
    crate::go_tls::claim_go(key, sock);
    Some(sock)
}

/// Tells the agent that the connection of entry `info` at `key` ended.
#[inline(always)]
fn closed(key: SockKey, info: SockInfo) {
    output(&ConnEvent {
        kind: kind::CONN_CLOSE,
        tgid: key.tgid,
        tid: bpf_get_current_pid_tgid() as u32,
        fd: key.fd,
        role: info.role,
        family: 0,
        port: 0,
        parent_tgid: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        id: info.id,
        addr: [0; 16],
        comm: [0; 16],
    });
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: TCP only.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn apm_tcp_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let sock_role = match (old, new) {
        (TCP_SYN_RECV, TCP_ESTABLISHED) => role::SERVER,
        (TCP_SYN_SENT, TCP_ESTABLISHED) => role::CLIENT,
        (_, TCP_CLOSE) => {
            on_tcp_close(sk);
            return 0;
        }
        _ => return 0,
    };
    // SAFETY: `sk` is the tracepoint's socket.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let _ = SK_ROLE.insert(cookie, sock_role, BPF_ANY as u64);
    0
}

/// A TCP socket closed: its entry goes (when it still names this socket) and the agent is
/// told.
#[inline(always)]
fn on_tcp_close(sk: u64) {
    // SAFETY: `sk` is the tracepoint's socket.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let _ = SK_ROLE.remove(cookie);
    // SAFETY: the value is copied out immediately.
    let Some(key) = (unsafe { SK_KEY.get(cookie) }).copied() else {
        return;
    };
    let _ = SK_KEY.remove(cookie);
    // SAFETY: as above.
    let Some(info) = (unsafe { SOCKETS.get(key) }).copied() else {
        return;
    };
    if info.cookie == cookie {
        let _ = SOCKETS.remove(key);
        if info.flags & sock_flags::UNANNOUNCED == 0 {
            closed(key, info);
        }
    }
}
