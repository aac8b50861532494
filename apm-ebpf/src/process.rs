//! Process lifecycle: exec (the service behind a pid may change) and thread-group exit (its
//! connections, names and kernel map entries can go).
use apm_common::{ProcEvent, kind};
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{FORK_PARENT, output, output_now};

/// Where `sched_process_exit` keeps `bool group_dead` (offset 32 where it exists; kernels
/// before 6.15 do not have the field): 0 when absent. The agent sets it from the format file.
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: Global<u32> = Global::new(32);
/// Where `sched_process_fork` keeps `pid_t child_pid` in its record: 20 on 6.x kernels, where
/// the comms are `__data_loc`, 44 on older ones with inline `char[16]` comms. The agent sets
/// it from the tracepoint's format file at load (and leaves the program out where the file
/// names no such field).
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: Global<u32> = Global::new(20);

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
    if let Ok(child) = unsafe { ctx.read_at::<i32>(FORK_CHILD_PID_OFFSET.load() as usize) }
        && child > 0
    {
        let _ = FORK_PARENT.insert(child as u32, parent, 0);
    }
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn apm_proc_exit(ctx: TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let offset = EXIT_GROUP_DEAD_OFFSET.load();
    let group_dead = if offset == 0 {
        // No `group_dead` in the record: the thread-group leader's exit stands for the
        // group's. (A leader that leaves with pthread_exit while other threads run on is
        // taken for the group: the connections it had open are forgotten, new ones are
        // followed.)
        id as u32 == (id >> 32) as u32
    } else {
        // SAFETY: offset of `group_dead` in the tracepoint record; the helper checks the read.
        unsafe { ctx.read_at::<u8>(offset as usize) }.unwrap_or(0) != 0
    };
    if group_dead {
        output(&event(kind::PROC_EXIT, (id >> 32) as u32));
    }
}
