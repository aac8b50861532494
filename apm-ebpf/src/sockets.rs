//! Socket syscalls, through the BTF raw tracepoints `sys_enter` and `sys_exit`.
//!
//! Why raw tracepoints rather than `syscalls/sys_enter_read` and its siblings: every hit of a
//! per-syscall tracepoint builds a perf trace record before the program runs. Measured on this
//! machine kind with nginx under wrk: nine empty per-syscall programs cost 17% of the
//! throughput, the two empty raw ones 5% although they fire for every syscall. So each program
//! first compares the syscall number and returns at once for all the others.
//!
//! Everything but `close` is handled at exit: the syscall's arguments are still in the task's
//! saved registers (`pt_regs`), so nothing is stashed at entry, and a thread that was already
//! blocked in `accept` or `read` when the programs were attached is seen like any other.
//! `close` is handled at entry: removing the socket after the kernel released the fd could
//! remove a newer socket that another thread just received under the same number.
//!
//! x86-64 only for now: syscall numbers and the register layout are per architecture.
use apm_common::{
    ConnEvent, MAX_IOV, ProcEvent, SockInfo, SockKey, direction, kind, role, sock_flags, stat,
    syscall,
};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    capture::{Buffer, Moved, emit_data},
    endpoints,
    maps::{
        AGENT_TGID, FORK_PARENT, LIBRARY_EVENTS, SKIP_PEER_ADDR4, SKIP_PEER_PORT, SOCKETS, bump,
        output,
    },
    tls,
};

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!("apm-ebpf knows the syscall numbers and pt_regs layout of x86-64 only");

/// x86-64 syscall numbers.
pub(crate) mod nr {
    pub(crate) const READ: u64 = 0;
    pub(crate) const WRITE: u64 = 1;
    pub(crate) const CLOSE: u64 = 3;
    pub(crate) const MMAP: u64 = 9;
    pub(crate) const READV: u64 = 19;
    pub(crate) const WRITEV: u64 = 20;
    pub(crate) const SENDFILE: u64 = 40;
    pub(crate) const CONNECT: u64 = 42;
    pub(crate) const ACCEPT: u64 = 43;
    pub(crate) const SENDTO: u64 = 44;
    pub(crate) const RECVFROM: u64 = 45;
    pub(crate) const SENDMSG: u64 = 46;
    pub(crate) const RECVMSG: u64 = 47;
    pub(crate) const SPLICE: u64 = 275;
    pub(crate) const ACCEPT4: u64 = 288;
}

pub(crate) const AF_UNIX: u16 = 1;
pub(crate) const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

/// The first three syscall arguments, from the saved user registers.
pub(crate) struct Args {
    pub(crate) a0: u64,
    pub(crate) a1: u64,
    pub(crate) a2: u64,
}

/// Reads the arguments. `regs` is the BTF-typed `struct pt_regs *` of the tracepoint, so these
/// are plain loads the verifier checks against the struct layout.
#[inline(always)]
pub(crate) fn args(regs: *const pt_regs) -> Args {
    // SAFETY: `regs` is the tracepoint's trusted pt_regs pointer.
    unsafe {
        Args {
            a0: (*regs).rdi,
            a1: (*regs).rsi,
            a2: (*regs).rdx,
        }
    }
}

/// Thread group and thread of the caller; `None` for the agent itself.
#[inline(always)]
pub(crate) fn caller() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return None;
    }
    Some((tgid, id as u32))
}

#[btf_tracepoint(function = "sys_enter")]
pub fn apm_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    match id as u64 {
        nr::CLOSE => {
            let regs: *const pt_regs = ctx.arg(0);
            on_close(args(regs).a0);
        }
        // A data syscall starts: forget the socket noted by an earlier one, so that at exit
        // a noted socket is this call's own (see `adopt`).
        nr::READ
        | nr::WRITE
        | nr::READV
        | nr::WRITEV
        | nr::RECVFROM
        | nr::SENDTO
        | nr::RECVMSG
        | nr::SENDMSG => {
            endpoints::forget_noted();
        }
        _ => {}
    }
    0
}

/// Syscall exit, numbering data records with the atomic fetch-add (5.12+).
#[btf_tracepoint(function = "sys_exit")]
pub fn apm_sys_exit(ctx: BtfTracePointContext) -> i32 {
    sys_exit::<true>(&ctx)
}

/// Syscall exit for kernels without the atomic fetch-add (see `maps::next_record`).
#[btf_tracepoint(function = "sys_exit")]
pub fn apm_sys_exit_nofetch(ctx: BtfTracePointContext) -> i32 {
    sys_exit::<false>(&ctx)
}

#[inline(always)]
fn sys_exit<const FETCH: bool>(ctx: &BtfTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the tracepoint's trusted pt_regs pointer.
    let number = unsafe { (*regs).orig_rax };
    let ret: i64 = ctx.arg(1);
    if let Some((sc, dir, layout)) = data_call(number) {
        on_data::<FETCH>(regs, ret, sc, dir, layout);
        return 0;
    }
    match number {
        nr::ACCEPT | nr::ACCEPT4 => on_accept(regs, ret),
        nr::CONNECT => on_connect(regs, ret),
        nr::MMAP => on_mmap(regs, ret),
        _ => {}
    }
    0
}

/// The data syscalls: (`apm_common::syscall` value, direction, buffer layout) of a syscall
/// number, or `None` for any other syscall.
#[inline(always)]
pub(crate) fn data_call(number: u64) -> Option<(u32, u32, Layout)> {
    use direction::{EGRESS, INGRESS};
    Some(match number {
        nr::READ => (syscall::READ, INGRESS, Layout::Plain),
        nr::WRITE => (syscall::WRITE, EGRESS, Layout::Plain),
        nr::RECVFROM => (syscall::RECVFROM, INGRESS, Layout::Plain),
        nr::SENDTO => (syscall::SENDTO, EGRESS, Layout::Plain),
        nr::READV => (syscall::READV, INGRESS, Layout::Iovec),
        nr::WRITEV => (syscall::WRITEV, EGRESS, Layout::Iovec),
        nr::RECVMSG => (syscall::RECVMSG, INGRESS, Layout::Msghdr),
        nr::SENDMSG => (syscall::SENDMSG, EGRESS, Layout::Msghdr),
        nr::SENDFILE => (syscall::SENDFILE, EGRESS, Layout::Unseen),
        nr::SPLICE => (syscall::SPLICE, EITHER_WAY, Layout::Unseen),
        _ => return None,
    })
}

/// The direction [`data_call`] gives `splice`: it moves bytes from a pipe into a socket or
/// from a socket into a pipe, which only the socket tells.
pub(crate) const EITHER_WAY: u32 = u32::MAX;

/// `splice(fd_in, off_in, fd_out, off_out, len, flags)` moved bytes `dir`: the socket's fd is
/// `fd_out` for a send, `fd_in` for a receive. Made the first argument, where the other calls
/// have their fd.
#[inline(always)]
pub(crate) fn splice_socket_first(a: &mut Args, dir: u32) {
    if dir == direction::EGRESS {
        a.a0 = a.a2;
    }
}

/// How a data syscall passes its buffer.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// (fd, buf, len)
    Plain,
    /// (fd, iov, iovcnt)
    Iovec,
    /// (fd, struct user_msghdr *, flags)
    Msghdr,
    /// The bytes came from a file or a pipe (`sendfile`, `splice`), not the caller's memory:
    /// only their count is recorded, so that the parsers step over them.
    Unseen,
}

/// A data syscall's exit: `ret` bytes moved on fd `args(regs).a0`, copied when the socket
/// is in the table (or adopted).
#[inline(always)]
pub(crate) fn on_data<const FETCH: bool>(
    regs: *const pt_regs,
    ret: i64,
    sc: u32,
    dir: u32,
    layout: Layout,
) {
    if ret <= 0 {
        return;
    }
    let Some((tgid, tid)) = caller() else { return };
    let mut a = args(regs);
    if peeked(regs, sc, &a) {
        return;
    }
    let mut dir = dir;
    if dir == EITHER_WAY {
        // One end of a splice is a pipe: the other is a tracked socket, or not ours.
        let out = SockKey {
            tgid,
            fd: a.a2 as u32,
        };
        dir = if SOCKETS.get_ptr_mut(out).is_some() {
            direction::EGRESS
        } else {
            direction::INGRESS
        };
        splice_socket_first(&mut a, dir);
    }
    let fd = a.a0 as u32;
    // A pointer into the entry, not a copy: flags are set and records counted in place.
    let sock = match SOCKETS.get_ptr_mut(SockKey { tgid, fd }) {
        Some(sock) => sock,
        // Adoption needs the socket noted by the socket layer for this very call, which
        // sendfile and splice do not go through on every kernel: their bytes count only on
        // sockets already known.
        None if matches!(layout, Layout::Unseen) => return,
        None => match adopt(tgid, fd) {
            Some(sock) => sock,
            None => return,
        },
    };
    capture::<FETCH, MAX_IOV>(
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
        None,
    );
}

/// One data call on a tracked socket.
pub(crate) struct Call {
    pub(crate) tgid: u32,
    pub(crate) tid: u32,
    /// One of `apm_common::syscall`.
    pub(crate) sc: u32,
    pub(crate) dir: u32,
    pub(crate) layout: Layout,
    /// Bytes moved (> 0).
    pub(crate) ret: u64,
    /// The syscall's arguments: fd, buffer (or iovec or msghdr), length (or count, flags).
    pub(crate) args: Args,
}

/// Copies the bytes of `call` on the socket whose entry is `sock`: its endpoints first (from
/// `sk` when the caller has the `struct sock *`, else from the socket noted for this call),
/// unless it is muted or its bytes are TLS records.
#[inline(always)]
pub(crate) fn capture<const FETCH: bool, const IOV: u32>(
    call: &Call,
    sock: *mut SockInfo,
    sk: Option<u64>,
) {
    let (tgid, fd) = (call.tgid, call.args.a0 as u32);
    let key = SockKey { tgid, fd };
    // SAFETY: a value of a successful lookup, copied out.
    let info = unsafe { *sock };
    if info.flags & sock_flags::MUTED != 0 {
        return;
    }
    if info.flags & sock_flags::TUPLE_DONE == 0 {
        match sk {
            Some(sk) => endpoints::send_tuple_of(key, sock, info, sk),
            None => endpoints::send_tuple(key, sock, info),
        }
    }
    // TLS records: the plaintext comes from the OpenSSL uprobes (see tls.rs).
    if info.flags & sock_flags::TLS != 0 || tls::claim_socket(tgid, fd, sock, info) {
        return;
    }
    let a = &call.args;
    let buffer = match call.layout {
        Layout::Plain => Buffer::Plain(a.a1),
        Layout::Iovec => Buffer::Vectored {
            iov: a.a1,
            count: a.a2,
        },
        Layout::Msghdr => {
            // struct user_msghdr: msg_iov at offset 16, msg_iovlen at offset 24.
            // SAFETY: user memory read through the checked helper.
            let Ok(iov) = (unsafe { bpf_probe_read_user((a.a1 + 16) as *const u64) }) else {
                return;
            };
            // SAFETY: as above.
            let Ok(count) = (unsafe { bpf_probe_read_user((a.a1 + 24) as *const u64) }) else {
                return;
            };
            Buffer::Vectored { iov, count }
        }
        Layout::Unseen => Buffer::Unseen,
    };
    emit_data::<FETCH, IOV>(&Moved {
        tgid,
        tid: call.tid,
        fd,
        syscall: call.sc,
        direction: call.dir,
        total: call.ret,
        buffer,
        sock,
    });
}

const MSG_PEEK: u64 = 2;

/// A `MSG_PEEK` receive leaves the bytes in the socket: the next receive returns them again,
/// so they are not copied twice. (nginx peeks at the first byte of every connection on a TLS
/// port, to answer plain HTTP with an error: outside any OpenSSL call, so it would otherwise
/// reach the parsers as one stray byte before the plaintext.)
#[inline(always)]
pub(crate) fn peeked(regs: *const pt_regs, sc: u32, a: &Args) -> bool {
    let flags = match sc {
        // recvfrom(fd, buf, len, flags, ...): the fourth argument is in r10.
        // SAFETY: the tracepoint's trusted pt_regs pointer.
        syscall::RECVFROM => unsafe { (*regs).r10 },
        // recvmsg(fd, msg, flags)
        syscall::RECVMSG => a.a2,
        _ => return false,
    };
    flags & MSG_PEEK != 0
}

/// A data syscall moved bytes on an fd the table does not know. If the socket layer saw this
/// very call (`sock_send_length`/`sock_recv_length` noted a socket for this thread since the
/// syscall entered, which cleared the note), the fd is a socket this process got without
/// accept/connect: inherited across `fork` (PostgreSQL backends, pre-fork servers),
/// duplicated, or passed over a unix socket. It is adopted like a connection found at
/// start-up: id 0, role unknown, side inferred from the traffic. Returns its new entry.
#[inline(always)]
fn adopt(tgid: u32, fd: u32) -> Option<*mut SockInfo> {
    let sk = endpoints::noted_sock()?;
    // SAFETY: kernel read through the checked helper.
    let family =
        unsafe { bpf_probe_read_kernel((sk + endpoints::SKC_FAMILY) as *const u16) }.ok()?;
    if !is_tracked_family(family) {
        return None;
    }
    if family != AF_UNIX {
        // SAFETY: as above.
        let dport =
            unsafe { bpf_probe_read_kernel((sk + endpoints::SKC_DPORT) as *const u16) }.ok()?;
        let skip = SKIP_PEER_PORT.load();
        if skip != 0 && u32::from(u16::from_be(dport)) == skip {
            return None;
        }
    }
    let info = SockInfo {
        role: role::UNKNOWN,
        flags: 0,
        id: 0,
        records: 0,
        cookie: 0,
    };
    if SOCKETS
        .insert(SockKey { tgid, fd }, info, BPF_NOEXIST as u64)
        .is_err()
    {
        bump(stat::SOCK_MAP_FULL);
        return None;
    }
    bump(stat::SOCK_ADOPTED);
    // SAFETY: the value is copied out immediately.
    let parent_tgid = unsafe { FORK_PARENT.get(tgid) }.copied().unwrap_or(0);
    output(&ConnEvent {
        kind: kind::CONN_OPEN,
        tgid,
        tid: bpf_get_current_pid_tgid() as u32,
        fd,
        role: role::UNKNOWN,
        family: u32::from(family),
        port: 0,
        parent_tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        id: 0,
        addr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    let key = SockKey { tgid, fd };
    let sock = SOCKETS.get_ptr_mut(key)?;
    // A Go TLS call that named this socket before its first bytes (see go_tls.rs).
    crate::go_tls::claim_go(key, sock);
    Some(sock)
}

/// Peer address of a `struct sockaddr` in user memory: (family, port, address bytes).
#[inline(always)]
fn read_sockaddr(ptr: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 {
        return None;
    }
    // SAFETY: user memory read through the checked helper.
    let family = unsafe { bpf_probe_read_user(ptr as *const u16) }.ok()?;
    let mut addr = [0u8; 16];
    let port = match family {
        AF_INET | AF_INET6 => {
            // SAFETY: as above.
            let be = unsafe { bpf_probe_read_user((ptr + 2) as *const u16) }.ok()?;
            u16::from_be(be)
        }
        _ => 0,
    };
    match family {
        AF_INET => {
            // SAFETY: as above.
            let v4 = unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 4]) }.ok()?;
            addr[..4].copy_from_slice(&v4);
        }
        AF_INET6 => {
            // SAFETY: as above.
            addr = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }.ok()?;
        }
        _ => {}
    }
    Some((family, port, addr))
}

pub(crate) fn is_tracked_family(family: u16) -> bool {
    family == AF_INET || family == AF_INET6 || family == AF_UNIX
}

/// Is this the agent's own listener? Its clients are not worth tracking.
#[inline(always)]
fn is_agent_listener(family: u16, port: u16, addr: &[u8; 16]) -> bool {
    let skip_port = SKIP_PEER_PORT.load();
    if skip_port == 0 || u32::from(port) != skip_port {
        return false;
    }
    match family {
        AF_INET => {
            let a = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
            let want = SKIP_PEER_ADDR4.load();
            want == 0 || a == want || addr[0] == 127
        }
        AF_INET6 => {
            // ::1 and ::ffff:127.x.y.z
            let loopback = addr[..15].iter().all(|b| *b == 0) && addr[15] == 1;
            let mapped = addr[..10].iter().all(|b| *b == 0)
                && addr[10] == 0xff
                && addr[11] == 0xff
                && addr[12] == 127;
            loopback || mapped
        }
        _ => false,
    }
}

/// Adds a socket to the table and tells the agent.
#[inline(always)]
fn track(tgid: u32, tid: u32, fd: u32, sock_role: u32, peer: Option<(u16, u16, [u8; 16])>) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let info = SockInfo {
        role: sock_role,
        flags: 0,
        id: now,
        records: 0,
        cookie: 0,
    };
    if SOCKETS
        .insert(SockKey { tgid, fd }, info, BPF_ANY as u64)
        .is_err()
    {
        bump(stat::SOCK_MAP_FULL);
        return;
    }
    let (family, port, addr) = peer.unwrap_or((0, 0, [0; 16]));
    output(&ConnEvent {
        kind: kind::CONN_OPEN,
        tgid,
        tid,
        fd,
        role: sock_role,
        family: u32::from(family),
        port: u32::from(port),
        parent_tgid: 0,
        ts_ns: now,
        id: now,
        addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
}

/// accept/accept4 returned a new connection: `ret` is its fd, the peer address was written
/// to the caller's `upeer_sockaddr` (second argument).
#[inline(always)]
fn on_accept(regs: *const pt_regs, ret: i64) {
    if ret < 0 {
        return;
    }
    let Some((tgid, tid)) = caller() else { return };
    let peer = read_sockaddr(args(regs).a1);
    if let Some((family, _, _)) = peer
        && !is_tracked_family(family)
    {
        return;
    }
    track(tgid, tid, ret as u32, role::SERVER, peer);
}

/// connect succeeded (or is in progress on a non-blocking socket).
#[inline(always)]
fn on_connect(regs: *const pt_regs, ret: i64) {
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let Some((tgid, tid)) = caller() else { return };
    let a = args(regs);
    let Some((family, port, addr)) = read_sockaddr(a.a1) else {
        return;
    };
    if !is_tracked_family(family) || is_agent_listener(family, port, &addr) {
        return;
    }
    track(
        tgid,
        tid,
        a.a0 as u32,
        role::CLIENT,
        Some((family, port, addr)),
    );
}

/// close(fd) is about to release a tracked socket.
#[inline(always)]
fn on_close(fd: u64) {
    let Some((tgid, tid)) = caller() else { return };
    let key = SockKey {
        tgid,
        fd: fd as u32,
    };
    // SAFETY: the value is copied out immediately.
    let Some(info) = (unsafe { SOCKETS.get(key) }).copied() else {
        return;
    };
    let _ = SOCKETS.remove(key);
    output(&ConnEvent {
        kind: kind::CONN_CLOSE,
        tgid,
        tid,
        fd: fd as u32,
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

// ---- library loads ------------------------------------------------------------------------

const PROT_EXEC: u64 = 4;

/// `mmap` mapped a file executable: a program or library was loaded (by the dynamic loader
/// at start, or `dlopen` later, like Python importing `ssl`). The agent checks the process's
/// maps for a TLS library it has not attached to. Anonymous and non-executable mappings (all
/// of malloc's) return after two compares.
#[inline(always)]
fn on_mmap(regs: *const pt_regs, ret: i64) {
    if ret < 0 || LIBRARY_EVENTS.load() == 0 {
        return;
    }
    let a = args(regs);
    // SAFETY: the tracepoint's trusted pt_regs pointer; r8 holds the fifth argument (fd).
    let fd = unsafe { (*regs).r8 } as i64 as i32;
    if a.a2 & PROT_EXEC == 0 || fd < 0 {
        return;
    }
    let Some((tgid, _)) = caller() else { return };
    output(&ProcEvent {
        kind: kind::PROC_EXEC_MAP,
        tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
}
