//! Which `struct sock` a syscall moved bytes through: noted by a hook inside the socket
//! layer, read back by the syscall-exit program of the same call. It gives a connection's
//! endpoints (sent once, with its first data) and lets a socket the table does not know be
//! adopted (see `sockets::adopt`).
//!
//! Two ways to note it, whichever the kernel has:
//! - the `sock_send_length` / `sock_recv_length` tracepoints (6.4+), at the end of every
//!   socket send and receive, any family;
//! - before 6.4, kprobes on `tcp_sendmsg` / `tcp_recvmsg` (their first argument is the
//!   `struct sock *`): TCP only, and a receive that blocks and wakes on another CPU is noted
//!   on the first CPU (its endpoints then wait for the connection's next syscall).
use apm_common::{LastSock, SockInfo, SockKey, TupleEvent, kind, sock_flags};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::{btf_tracepoint, kprobe},
    programs::{BtfTracePointContext, ProbeContext},
};

use crate::maps::{LAST_SOCK, output, set_flags};

#[btf_tracepoint(function = "sock_send_length")]
pub fn apm_sock_send(ctx: BtfTracePointContext) -> i32 {
    note_sock(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn apm_sock_recv(ctx: BtfTracePointContext) -> i32 {
    note_sock(ctx.arg(0));
    0
}

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[kprobe]
pub fn apm_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        note_sock(sk);
    }
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, ...)` (the arguments
/// after `len` changed across versions; only the first is read).
#[kprobe]
pub fn apm_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        note_sock(sk);
    }
    0
}

/// Notes `sk` for this CPU and thread.
#[inline(always)]
fn note_sock(sk: u64) {
    if let Some(slot) = LAST_SOCK.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot; a program preempted in between only costs a retry at
        // the socket's next syscall (the pid check in `noted_sock`).
        unsafe {
            *slot = LastSock {
                pid_tgid: bpf_get_current_pid_tgid(),
                sk,
            };
        }
    }
}

/// Forgets the socket noted on this CPU: a data syscall starts, and at its exit a noted
/// socket must be its own.
#[inline(always)]
pub(crate) fn forget_noted() {
    if let Some(slot) = LAST_SOCK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { (*slot).sk = 0 };
    }
}

/// The socket the current thread's syscall moved bytes through, when one was noted.
#[inline(always)]
pub(crate) fn noted_sock() -> Option<u64> {
    let slot = LAST_SOCK.get(0).copied()?;
    if slot.pid_tgid != bpf_get_current_pid_tgid() || slot.sk == 0 {
        return None;
    }
    Some(slot.sk)
}

/// `struct sock_common` starts, on every kernel since long, with
/// `skc_daddr`, `skc_rcv_saddr` (offsets 0, 4), `skc_hash` (8), `skc_dport` (12, network
/// order), `skc_num` (14, host order), `skc_family` (16), `skc_state` (18).
pub(crate) const SKC_DADDR: u64 = 0;
const SKC_RCV_SADDR: u64 = 4;
pub(crate) const SKC_DPORT: u64 = 12;
const SKC_NUM: u64 = 14;
pub(crate) const SKC_FAMILY: u64 = 16;
/// `skc_state` (u8), right after the family: a TCP state, or TCP_CLOSE/TCP_ESTABLISHED for
/// unconnected/connected datagram and unix sockets.
pub(crate) const SKC_STATE: u64 = 18;

/// `skc_v6_daddr` and `skc_v6_rcv_saddr` (`struct in6_addr`), after `skc_prot` and
/// `skc_net`: at 56 and 72 from 5.10 to 6.18 on x86-64 (BTF of 6.18: bit offsets 448 and
/// 576).
const SKC_V6_DADDR: u64 = 56;
const SKC_V6_RCV_SADDR: u64 = 72;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `LOOPBACK4_IPV6` (127.0.0.6), as a network-order address field reads on this
/// little-endian target: what the kernel puts in the IPv4 address fields of an IPv6 socket
/// whose peer is not an IPv4-mapped address.
const LOOPBACK4_IPV6: u32 = u32::from_le_bytes([127, 0, 0, 6]);

/// First data on a tracked socket: send its endpoints (from the socket noted for this call),
/// once, and mark the entry (`sock`, `info` its value) done.
#[inline(always)]
pub(crate) fn send_tuple(key: SockKey, sock: *mut SockInfo, info: SockInfo) {
    if let Some(sk) = noted_sock() {
        send_tuple_of(key, sock, info, sk);
    }
}

/// [`send_tuple`] of the socket `sk` (`struct sock *`).
#[inline(always)]
pub(crate) fn send_tuple_of(key: SockKey, sock: *mut SockInfo, info: SockInfo, sk: u64) {
    // SAFETY: kernel reads through the checked helper; a stale pointer only yields garbage
    // or an error, never a fault.
    let read_u16 = |off: u64| unsafe { bpf_probe_read_kernel((sk + off) as *const u16) }.ok();
    // SAFETY: as above.
    let read_u32 = |off: u64| unsafe { bpf_probe_read_kernel((sk + off) as *const u32) }.ok();
    let family = read_u16(SKC_FAMILY);
    if family != Some(AF_INET) && family != Some(AF_INET6) {
        // Only IP endpoints are read; do not try again for this socket.
        set_flags(sock, sock_flags::TUPLE_DONE);
        return;
    }
    let (Some(remote_addr), Some(local_addr), Some(dport), Some(num)) = (
        read_u32(SKC_DADDR),
        read_u32(SKC_RCV_SADDR),
        read_u16(SKC_DPORT),
        read_u16(SKC_NUM),
    ) else {
        return;
    };
    let mut event = TupleEvent {
        kind: kind::CONN_TUPLE,
        tgid: key.tgid,
        fd: key.fd,
        local_port: u32::from(num),
        remote_port: u32::from(u16::from_be(dport)),
        family: u32::from(AF_INET),
        local_addr: [0; 16],
        remote_addr: [0; 16],
        id: info.id,
    };
    // An IPv6 socket talking to an IPv4-mapped address (a dual-stack listener's IPv4
    // client, as Go, Java and gRPC servers have; a client connecting to `::ffff:a.b.c.d`)
    // keeps the IPv4 addresses in the same fields as an IPv4 socket, and is reported as the
    // IPv4 connection its peer sees. Any other IPv6 socket holds a placeholder there: its
    // addresses are the IPv6 ones.
    let unmapped = |a: u32| a == 0 || a == LOOPBACK4_IPV6;
    if family == Some(AF_INET6) && (unmapped(remote_addr) || unmapped(local_addr)) {
        // Read straight into the record: a 16-byte value carried through an `Option` is
        // shifted bytewise by LLVM, which 5.10's verifier refuses on a stack pointer.
        // SAFETY: kernel reads through the checked helper, as above.
        let read = unsafe {
            bpf_probe_read_kernel_buf((sk + SKC_V6_DADDR) as *const u8, &mut event.remote_addr)
                .and_then(|()| {
                    bpf_probe_read_kernel_buf(
                        (sk + SKC_V6_RCV_SADDR) as *const u8,
                        &mut event.local_addr,
                    )
                })
        };
        if read.is_err() {
            set_flags(sock, sock_flags::TUPLE_DONE);
            return;
        }
        event.family = u32::from(AF_INET6);
    } else {
        // SAFETY: writes of four bytes inside the 16-byte fields.
        unsafe {
            core::ptr::write_unaligned(event.remote_addr.as_mut_ptr().cast::<u32>(), remote_addr);
            core::ptr::write_unaligned(event.local_addr.as_mut_ptr().cast::<u32>(), local_addr);
        }
    }
    set_flags(sock, sock_flags::TUPLE_DONE);
    output(&event);
}
