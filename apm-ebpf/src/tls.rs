//! TLS plaintext from OpenSSL: uprobes on `SSL_read`, `SSL_write`, their `_ex` variants and
//! `SSL_do_handshake`, attached by the agent to every distinct `libssl.so` it finds mapped.
//!
//! Which socket does an `SSL *` talk through? OpenSSL does its socket I/O synchronously, on
//! the calling thread, inside these calls (through its socket BIO or, like curl, a custom BIO
//! that calls `recv`/`send`). So the entry probe notes the call for its thread, the syscall
//! programs (`sockets::on_data`) see the thread's next read or write on a tracked socket,
//! record that socket for the `SSL *` and mark it [`sock_flags::TLS`] (its encrypted bytes are
//! no longer copied: they would be parsed twice), and the return probe emits the plaintext as
//! an ordinary data record of that socket, so the same parsers see it. Plaintext of a call
//! that did no I/O itself (data OpenSSL had buffered) finds its socket through the table of
//! `SSL *` seen before. The handshake is hooked so that its encrypted bytes are marked too.
use apm_common::{
    MAX_IOV, NO_FD, SockInfo, SockKey, SslCall, SslKey, direction, sock_flags, ssl_op, stat,
    syscall,
};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    capture::{Buffer, Moved, emit_data},
    maps::{AGENT_TGID, SOCKETS, bump, set_flags},
};

/// OpenSSL calls in progress, by thread (`pid_tgid`): one at a time per thread. Least
/// recently used entries go first: a call whose return probe never ran (its thread died inside
/// OpenSSL) would otherwise hold its slot for good.
#[map]
pub(crate) static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// The socket of each `SSL *` seen doing I/O: for calls served from OpenSSL's buffer. Least
/// recently used entries go first (a closed connection's `SSL *` is never removed otherwise).
#[map]
pub(crate) static SSL_FDS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(65_536, 0);

#[uprobe]
pub fn apm_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, ssl_op::READ);
    0
}

#[uprobe]
pub fn apm_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, ssl_op::WRITE);
    0
}

#[uprobe]
pub fn apm_ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, ssl_op::READ_EX);
    0
}

#[uprobe]
pub fn apm_ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, ssl_op::WRITE_EX);
    0
}

#[uprobe]
pub fn apm_ssl_handshake(ctx: ProbeContext) -> u32 {
    enter(&ctx, ssl_op::HANDSHAKE);
    0
}

/// One return probe for all five functions: the entry noted which one it was.
#[uretprobe]
pub fn apm_ssl_return(ctx: RetProbeContext) -> u32 {
    leave::<true>(&ctx);
    0
}

/// [`apm_ssl_return`] for kernels without the atomic fetch-add (see `maps::next_record`).
#[uretprobe]
pub fn apm_ssl_return_nofetch(ctx: RetProbeContext) -> u32 {
    leave::<false>(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, op: u32) {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == AGENT_TGID.load() {
        return;
    }
    let Some(ssl) = ctx.arg::<u64>(0) else { return };
    let call = SslCall {
        ssl,
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        out: if op == ssl_op::READ_EX || op == ssl_op::WRITE_EX {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        fd: NO_FD,
        op,
    };
    // A handshake run from inside a read or write must not replace the outer call; a read or
    // write replaces whatever a missed return left behind.
    let flags = if op == ssl_op::HANDSHAKE {
        BPF_NOEXIST
    } else {
        BPF_ANY
    };
    if SSL_CALLS.insert(id, call, flags as u64).is_err() && op != ssl_op::HANDSHAKE {
        bump(stat::TLS_CALLS_FULL);
    }
}

/// Called by the syscall programs for every data syscall on a tracked socket that is not
/// marked TLS yet: when this thread is inside an OpenSSL call, the socket is that call's.
/// Returns true when the syscall's bytes are TLS records (not to be copied).
#[inline(always)]
pub(crate) fn claim_socket(tgid: u32, fd: u32, sock: *mut SockInfo, info: SockInfo) -> bool {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = SSL_CALLS.get_ptr_mut(id) else {
        return false;
    };
    // SAFETY: a map value of this thread's own entry, copied out and written back in place.
    let ssl = unsafe {
        (*call).fd = fd;
        (*call).ssl
    };
    let _ = SSL_FDS.insert(SslKey { tgid, _pad: 0, ssl }, fd, BPF_ANY as u64);
    mark_tls(sock, info);
    true
}

/// Marks the entry `sock` (whose value was `info`) TLS, in place.
#[inline(always)]
fn mark_tls(sock: *mut SockInfo, info: SockInfo) {
    if info.flags & sock_flags::TLS == 0 {
        set_flags(sock, sock_flags::TLS);
    }
}

#[inline(always)]
fn leave<const FETCH: bool>(ctx: &RetProbeContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out immediately.
    let Some(call) = (unsafe { SSL_CALLS.get(id) }).copied() else {
        return;
    };
    let _ = SSL_CALLS.remove(id);
    // The functions return `int`: the upper half of the register is not part of the value.
    let ret = ctx.ret::<u64>() as u32 as i32;
    let (bytes, sc, dir) = match call.op {
        ssl_op::READ | ssl_op::WRITE => {
            if ret <= 0 {
                return;
            }
            let (sc, dir) = if call.op == ssl_op::READ {
                (syscall::SSL_READ, direction::INGRESS)
            } else {
                (syscall::SSL_WRITE, direction::EGRESS)
            };
            (ret as u64, sc, dir)
        }
        ssl_op::READ_EX | ssl_op::WRITE_EX => {
            if ret != 1 || call.out == 0 {
                return;
            }
            // SAFETY: user memory read through the checked helper.
            let Ok(n) = (unsafe { bpf_probe_read_user(call.out as *const u64) }) else {
                return;
            };
            let (sc, dir) = if call.op == ssl_op::READ_EX {
                (syscall::SSL_READ, direction::INGRESS)
            } else {
                (syscall::SSL_WRITE, direction::EGRESS)
            };
            (n, sc, dir)
        }
        _ => return,
    };
    if bytes == 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let fd = if call.fd != NO_FD {
        call.fd
    } else {
        let key = SslKey {
            tgid,
            _pad: 0,
            ssl: call.ssl,
        };
        // SAFETY: the value is copied out immediately.
        match unsafe { SSL_FDS.get(key) } {
            Some(fd) => *fd,
            None => {
                bump(stat::TLS_NO_SOCKET);
                return;
            }
        }
    };
    // The plaintext is a data record of the socket: numbered by the same counter as the
    // socket's syscall records (see `emit_data`).
    let Some(sock) = SOCKETS.get_ptr_mut(SockKey { tgid, fd }) else {
        bump(stat::TLS_NO_SOCKET);
        return;
    };
    // SAFETY: a value of a successful lookup, copied out.
    let info = unsafe { *sock };
    if info.flags & sock_flags::MUTED != 0 {
        return;
    }
    mark_tls(sock, info);
    bump(stat::TLS_RECORDS);
    // Plain buffers only: the iovec bound does not matter.
    emit_data::<FETCH, MAX_IOV>(&Moved {
        tgid,
        tid: id as u32,
        fd,
        syscall: sc,
        direction: dir,
        total: bytes,
        buffer: Buffer::Plain(call.buf),
        sock,
    });
}
