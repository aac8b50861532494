//! Sends and receives that were already blocked when the `sockets-fexit` programs were
//! attached.
//!
//! An fexit program runs when the traced function returns through its BPF trampoline. A
//! thread that entered `inet_recvmsg` before the trampoline was installed returns past it:
//! the first request on an idle keep-alive connection served by a thread that blocks in
//! `recv` (thread-per-connection servers, database clients waiting for a reply) would be
//! missed. The agent lists those threads from `/proc/<tid>/syscall` right after attaching
//! (a data syscall on a socket fd) into [`BLOCKED_AT_ATTACH`], and attaches
//! [`apm_catch_up_exit`] to `sys_exit` until every one of them has returned or a time bound
//! passed (then it is detached: this is the only program of that path that runs on every
//! syscall, and only for that window).
//!
//! A listed thread whose call started after the trampolines were installed is seen by the
//! fexit program, which takes it off the list (while [`CATCH_UP_ON`] says a window is open),
//! so the call is never copied twice.
use apm_common::stat;
use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};

use crate::{
    maps::bump,
    sockets::{data_call, on_data},
};

/// Threads found blocked in a socket data syscall at attach: thread id -> syscall number.
/// Filled by the agent (its size bounds the list; the agent counts what did not fit).
#[map]
static BLOCKED_AT_ATTACH: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Non-zero while a catch-up window is open: only then do the fexit programs look the
/// current thread up in [`BLOCKED_AT_ATTACH`].
#[map]
static CATCH_UP_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Called by each fexit data program: this thread's call started after the attach, so the
/// fexit program sees it and the catch-up must not.
#[inline(always)]
pub(crate) fn seen_by_fexit() {
    if CATCH_UP_ON.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    let _ = BLOCKED_AT_ATTACH.remove(bpf_get_current_pid_tgid() as u32);
}

/// `sys_exit(struct pt_regs *regs, long ret)`, attached only during a catch-up window: the
/// end of the blocked call of a listed thread, copied like a `syscalls`-path exit.
#[btf_tracepoint(function = "sys_exit")]
pub fn apm_catch_up_exit(ctx: BtfTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out immediately.
    let Some(listed) = (unsafe { BLOCKED_AT_ATTACH.get(tid) }).copied() else {
        return 0;
    };
    let _ = BLOCKED_AT_ATTACH.remove(tid);
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the tracepoint's trusted pt_regs pointer.
    let number = unsafe { (*regs).orig_rax };
    if number != u64::from(listed) {
        // Not the call it was listed in (it ended before the list was filled).
        return 0;
    }
    let Some((sc, dir, layout)) = data_call(number) else {
        return 0;
    };
    bump(stat::CAUGHT_UP);
    on_data::<true>(regs, ctx.arg(1), sc, dir, layout);
    0
}
