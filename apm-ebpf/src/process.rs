//! Process lifecycle: exec (the service behind a pid may change) and thread-group exit (its
//! connections, names and kernel map entries can go).
use apm_common::{ProcEvent, kind};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{FORK_PARENT, output, output_now};

/// `sched_process_exit`: `bool group_dead` at offset 32.
const GROUP_DEAD: usize = 32;
/// `sched_process_fork`: `pid_t child_pid` at offset 20 (comms are `__data_loc` on 6.x; the
/// agent checks the format file and leaves the program detached where this differs).
pub const CHILD_PID: usize = 20;

#[inline(always)]
fn event(kind: u32, tgid: u32) -> ProcEvent {
    ProcEvent {
        kind,
        tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn apm_proc_exec(_ctx: TracePointContext) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Wake the agent now: it names the process from /proc while it surely still exists.
    output_now(&event(kind::PROC_EXEC, tgid));
}

/// `sched_process_fork`: remember the parent of every new task (see `maps::FORK_PARENT`).
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn apm_proc_fork(ctx: TracePointContext) {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: offset of `child_pid` in the tracepoint record; the helper checks the read.
    if let Ok(child) = unsafe { ctx.read_at::<i32>(CHILD_PID) }
        && child > 0
    {
        let _ = FORK_PARENT.insert(child as u32, parent, 0);
    }
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn apm_proc_exit(ctx: TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: offset of `group_dead` in the tracepoint record; the helper checks the read.
    let group_dead = unsafe { ctx.read_at::<u8>(GROUP_DEAD) }.unwrap_or(0);
    if group_dead != 0 {
        output(&event(kind::PROC_EXIT, (id >> 32) as u32));
    }
}
