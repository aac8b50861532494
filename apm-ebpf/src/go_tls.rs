//! TLS plaintext from Go's `crypto/tls`: uprobes on `(*Conn).Write`, `(*Conn).Read` and the
//! handshake, attached by the agent to each Go executable that links the package (Go has
//! its own TLS: no libssl, and its binaries are usually static).
//!
//! Go (1.17+, amd64) passes arguments in registers: the receiver `*tls.Conn` in RAX, the
//! slice `b` as pointer RBX and length RCX; the result `n` comes back in RAX; R14 holds the
//! running goroutine. A goroutine blocked in `Read` may resume on another thread, so calls in
//! flight are keyed by goroutine, not by thread. Return probes (`uretprobe`) are unsafe in Go
//! (its stacks move and grow), so the agent attaches the read's return program to each `RET`
//! instruction of `(*Conn).Read` instead.
//!
//! - `Write` writes all of `b` or fails: its plaintext is emitted at entry (one trap, not
//!   two). The handshake that a first `Write` may run, and the encrypted records, come after.
//! - `Read`'s plaintext exists only when it returns: the entry notes the buffer, each `RET`
//!   emits `n` bytes of it.
//! - The socket is `c.conn.(*net.TCPConn).fd.pfd.Sysfd` ([`conn_fd`]). It is marked TLS at
//!   the handshake's entry, before any encrypted byte: on the socket-layer path its table
//!   entry is only made at its first data, so the mark waits in [`GO_TLS_FDS`] for
//!   [`claim_go`] there.
use apm_common::{
    MAX_IOV, SockInfo, SockKey, SslCall, SslKey, direction, sock_flags, ssl_op, stat, syscall,
};
use aya_ebpf::{
    bindings::{BPF_ANY, pt_regs},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use crate::{
    capture::{Buffer, Moved, emit_data},
    maps::{AGENT_TGID, SOCKETS, bump, set_flags},
};

/// `Read` calls in flight, by (tgid, goroutine): the entry's buffer and socket. Least
/// recently used entries go first (a goroutine that died inside `Read` never returns).
#[map]
static GO_TLS_CALLS: LruHashMap<SslKey, SslCall> = LruHashMap::with_max_entries(32_768, 0);

/// Sockets a Go TLS call named before their table entry existed, with the time it did: the
/// socket-layer path enters a socket at its first data, and a handshake's first data is
/// already encrypted. Consumed by [`claim_go`]; a mark older than [`CLAIM_NS`] is stale.
#[map]
static GO_TLS_FDS: LruHashMap<SockKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// How long a mark in [`GO_TLS_FDS`] waits for its socket's first data (a handshake's first
/// bytes follow its start within milliseconds; the fd may be reused for another socket later).
const CLAIM_NS: u64 = 10_000_000_000;

/// Offset of the interface's data word in `tls.Conn` (its first field, `conn net.Conn`: an
/// itab word, then the data word).
const CONN_DATA: u64 = 8;
/// Offset of `Sysfd` in `net.netFD`: its first field `pfd poll.FD` starts with `fdmu
/// fdMutex` (a uint64 and two uint32s), then `Sysfd int`. Unchanged since Go 1.9.
const NETFD_SYSFD: u64 = 16;

#[uprobe]
pub fn apm_go_tls_write(ctx: ProbeContext) -> u32 {
    write::<true>(&ctx);
    0
}

/// [`apm_go_tls_write`] for kernels without the atomic fetch-add (see `maps::next_record`).
#[uprobe]
pub fn apm_go_tls_write_nofetch(ctx: ProbeContext) -> u32 {
    write::<false>(&ctx);
    0
}

#[uprobe]
pub fn apm_go_tls_read(ctx: ProbeContext) -> u32 {
    let Some((id, regs)) = caller(&ctx) else {
        return 0;
    };
    // SAFETY: the probe's register snapshot, read at fixed offsets.
    let (conn, buf, goroutine) = unsafe { ((*regs).rax, (*regs).rbx, (*regs).r14) };
    let tgid = (id >> 32) as u32;
    let Some(fd) = conn_fd(conn) else {
        bump(stat::TLS_NO_SOCKET);
        return 0;
    };
    mark(SockKey { tgid, fd });
    let call = SslCall {
        ssl: conn,
        buf,
        out: 0,
        fd,
        op: ssl_op::READ,
    };
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: goroutine,
    };
    if GO_TLS_CALLS.insert(key, call, BPF_ANY as u64).is_err() {
        bump(stat::TLS_CALLS_FULL);
    }
    0
}

/// Attached to each `RET` of `(*Conn).Read`.
#[uprobe]
pub fn apm_go_tls_read_return(ctx: ProbeContext) -> u32 {
    read_return::<true>(&ctx);
    0
}

/// [`apm_go_tls_read_return`] for kernels without the atomic fetch-add.
#[uprobe]
pub fn apm_go_tls_read_return_nofetch(ctx: ProbeContext) -> u32 {
    read_return::<false>(&ctx);
    0
}

/// `(*Conn).serverHandshake` and `(*Conn).clientHandshake`: marks the socket before the
/// handshake's bytes move.
#[uprobe]
pub fn apm_go_tls_handshake(ctx: ProbeContext) -> u32 {
    let Some((id, regs)) = caller(&ctx) else {
        return 0;
    };
    // SAFETY: the probe's register snapshot.
    let conn = unsafe { (*regs).rax };
    if let Some(fd) = conn_fd(conn) {
        mark(SockKey {
            tgid: (id >> 32) as u32,
            fd,
        });
    }
    0
}

/// The calling thread's `pid_tgid` and registers, unless it is the agent's own.
#[inline(always)]
fn caller(ctx: &ProbeContext) -> Option<(u64, *const pt_regs)> {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == AGENT_TGID.load() {
        return None;
    }
    Some((id, ctx.regs))
}

/// The file descriptor under a `*tls.Conn` whose connection is a `*net.TCPConn` (or another
/// `net` connection type: each embeds `conn{fd *netFD}`). A wrapper of another type gives a
/// number that names no tracked socket of the process, and its plaintext is counted as
/// having no socket.
#[inline(always)]
fn conn_fd(conn: u64) -> Option<u32> {
    // SAFETY: user memory read through the checked helper.
    let data = unsafe { bpf_probe_read_user((conn + CONN_DATA) as *const u64) }.ok()?;
    // SAFETY: as above.
    let netfd = unsafe { bpf_probe_read_user(data as *const u64) }.ok()?;
    // SAFETY: as above.
    let sysfd = unsafe { bpf_probe_read_user((netfd + NETFD_SYSFD) as *const i64) }.ok()?;
    u32::try_from(sysfd).ok().filter(|fd| *fd < i32::MAX as u32)
}

/// Marks the socket at `key` TLS: in place when the table has it, else noted for its first
/// data (see [`claim_go`]).
#[inline(always)]
fn mark(key: SockKey) {
    if let Some(sock) = SOCKETS.get_ptr_mut(key) {
        // SAFETY: a value of a successful lookup, copied out.
        let flags = unsafe { (*sock).flags };
        if flags & sock_flags::TLS == 0 {
            set_flags(sock, sock_flags::TLS);
        }
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = GO_TLS_FDS.insert(key, now, BPF_ANY as u64);
}

/// Called where a socket's table entry is made at its first data: a Go TLS call that named
/// it moments before marks it TLS, so its encrypted bytes are not copied.
#[inline(always)]
pub(crate) fn claim_go(key: SockKey, sock: *mut SockInfo) {
    // SAFETY: the value is copied out immediately.
    let Some(at) = (unsafe { GO_TLS_FDS.get(key) }).copied() else {
        return;
    };
    let _ = GO_TLS_FDS.remove(key);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(at) < CLAIM_NS {
        set_flags(sock, sock_flags::TLS);
    }
}

#[inline(always)]
fn write<const FETCH: bool>(ctx: &ProbeContext) {
    let Some((id, regs)) = caller(ctx) else {
        return;
    };
    // SAFETY: the probe's register snapshot.
    let (conn, buf, len) = unsafe { ((*regs).rax, (*regs).rbx, (*regs).rcx) };
    if len == 0 || len > i32::MAX as u64 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let Some(fd) = conn_fd(conn) else {
        bump(stat::TLS_NO_SOCKET);
        return;
    };
    let key = SockKey { tgid, fd };
    // A first write on a connection no byte has moved on yet (a client that lets `Write` run
    // the handshake): the socket is not in the table until the handshake's first data, and
    // this plaintext is counted as lost.
    let Some(sock) = SOCKETS.get_ptr_mut(key) else {
        mark(key);
        bump(stat::TLS_NO_SOCKET);
        return;
    };
    emit_as::<FETCH>(id, fd, sock, ssl_op::WRITE, buf, len);
}

#[inline(always)]
fn read_return<const FETCH: bool>(ctx: &ProbeContext) {
    let Some((id, regs)) = caller(ctx) else {
        return;
    };
    // SAFETY: the probe's register snapshot.
    let (n, goroutine) = unsafe { ((*regs).rax, (*regs).r14) };
    let tgid = (id >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: goroutine,
    };
    // SAFETY: the value is copied out immediately.
    let Some(call) = (unsafe { GO_TLS_CALLS.get(key) }).copied() else {
        return;
    };
    let _ = GO_TLS_CALLS.remove(key);
    // `n` is a Go int: negative never, zero with an error (or nothing read).
    if n == 0 || n > i32::MAX as u64 {
        return;
    }
    let Some(sock) = SOCKETS.get_ptr_mut(SockKey { tgid, fd: call.fd }) else {
        bump(stat::TLS_NO_SOCKET);
        return;
    };
    emit_as::<FETCH>(id, call.fd, sock, ssl_op::READ, call.buf, n);
}

/// The plaintext as a data record of the socket (numbered with its other records), unless
/// the socket is muted.
#[inline(always)]
fn emit_as<const FETCH: bool>(id: u64, fd: u32, sock: *mut SockInfo, op: u32, buf: u64, len: u64) {
    // SAFETY: a value of a successful lookup, copied out.
    let info = unsafe { *sock };
    if info.flags & sock_flags::MUTED != 0 {
        return;
    }
    if info.flags & sock_flags::TLS == 0 {
        set_flags(sock, sock_flags::TLS);
    }
    bump(stat::TLS_RECORDS);
    let (sc, dir) = if op == ssl_op::READ {
        (syscall::SSL_READ, direction::INGRESS)
    } else {
        (syscall::SSL_WRITE, direction::EGRESS)
    };
    emit_data::<FETCH, MAX_IOV>(&Moved {
        tgid: (id >> 32) as u32,
        tid: id as u32,
        fd,
        syscall: sc,
        direction: dir,
        total: len,
        buffer: Buffer::Plain(buf),
        sock,
    });
}
