//! CPU profiler: a perf_event program on the CPU clock of every online CPU. Each sample adds
//! one to a count keyed by (thread group, thread, user stack, kernel stack) in a kernel map
//! that the agent drains on an interval: no ring-buffer record per sample.
//!
//! The count and stack maps come in two copies. The agent flips `PROFILE_CONTROL[0]` to point
//! the program at one copy while it drains and empties the other, so no increment is lost
//! between reading a count and deleting it.
use apm_common::{ProcEvent, SampleKey, kind, stat};
use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event},
    maps::{Array, HashMap, RingBuf, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};

use crate::maps::{atomic_add, bump};

#[map]
static PROFILE_COUNTS_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(16_384, 0);
#[map]
static PROFILE_COUNTS_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(16_384, 0);
#[map]
static PROFILE_STACKS_0: StackTrace = StackTrace::with_max_entries(8192, 0);
#[map]
static PROFILE_STACKS_1: StackTrace = StackTrace::with_max_entries(8192, 0);

/// `[0]`: which copy of the count and stack maps the program writes (0 or 1).
#[map]
static PROFILE_CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// Thread groups sampled since the agent last forgot them (it removes those that exited),
/// with the first 8 bytes of their command name when announced: a process that called
/// `execve` since is announced again (it is another program now: another service, other
/// memory maps). Without this, a child sampled between `fork` and `execve` (a window that
/// a slow machine or an emulator makes wide) kept its parent's name for good.
#[map]
static PROFILE_KNOWN: HashMap<u32, u64> = HashMap::with_max_entries(16_384, 0);

/// Thread groups to sample when `PROFILE_PID_FILTER` is set.
#[map]
static PROFILE_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// First-sample events (`kind::PROC_SAMPLED`), on their own ring so that the profiler runs
/// without the socket pipeline.
#[map]
static PROFILE_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Non-zero: sample only the thread groups in `PROFILE_PIDS`.
#[unsafe(no_mangle)]
static PROFILE_PID_FILTER: Global<u32> = Global::new(0);

/// Non-zero: record kernel stacks too.
#[unsafe(no_mangle)]
static PROFILE_KERNEL_STACKS: Global<u32> = Global::new(1);

const EFAULT: i64 = 14;
const EEXIST: i64 = 17;

#[perf_event]
pub fn apm_profile(ctx: PerfEventContext) -> u32 {
    sample(&ctx);
    0
}

#[inline(always)]
fn sample(ctx: &PerfEventContext) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let pid = id as u32;
    if pid == 0 {
        // The idle task: a CPU with nothing to run.
        bump(stat::PROFILE_IDLE);
        return;
    }
    // SAFETY: lookups whose values are not kept.
    if PROFILE_PID_FILTER.load() != 0 && unsafe { PROFILE_PIDS.get(tgid) }.is_none() {
        return;
    }
    bump(stat::PROFILE_SAMPLES);
    let active = PROFILE_CONTROL.get(0).copied().unwrap_or(0);
    if active & 1 == 0 {
        count(ctx, &PROFILE_COUNTS_0, &PROFILE_STACKS_0, tgid, pid);
    } else {
        count(ctx, &PROFILE_COUNTS_1, &PROFILE_STACKS_1, tgid, pid);
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let name = comm_key(&comm);
    // SAFETY: as above.
    match unsafe { PROFILE_KNOWN.get(tgid) } {
        None => announce(tgid, comm, name, BPF_NOEXIST as u64),
        Some(&known) if known != name => announce(tgid, comm, name, BPF_ANY as u64),
        Some(_) => {}
    }
}

/// The first 8 bytes of a command name, as one comparable number.
#[inline(always)]
fn comm_key(comm: &[u8; 16]) -> u64 {
    u64::from_ne_bytes([
        comm[0], comm[1], comm[2], comm[3], comm[4], comm[5], comm[6], comm[7],
    ])
}

#[inline(always)]
fn count(
    ctx: &PerfEventContext,
    counts: &HashMap<SampleKey, u64>,
    stacks: &StackTrace,
    tgid: u32,
    pid: u32,
) {
    let user_stack = stack_id(ctx, stacks, BPF_F_USER_STACK as u64);
    let kernel_stack = if PROFILE_KERNEL_STACKS.load() != 0 {
        stack_id(ctx, stacks, 0)
    } else {
        -1
    };
    let key = SampleKey {
        tgid,
        pid,
        user_stack,
        kernel_stack,
    };
    if let Some(n) = counts.get_ptr_mut(key) {
        atomic_add(n, 1);
    } else if counts.insert(key, 1u64, BPF_NOEXIST as u64).is_err() {
        // Either another CPU inserted the key meanwhile, or the map is full.
        match counts.get_ptr_mut(key) {
            Some(n) => atomic_add(n, 1),
            None => bump(stat::PROFILE_COUNTS_FULL),
        }
    }
}

/// The stack id, or the negative error (counted when it means a lost stack).
#[inline(always)]
fn stack_id(ctx: &PerfEventContext, stacks: &StackTrace, flags: u64) -> i32 {
    match ctx.get_stackid(stacks, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            let err = i64::from(err);
            if err == -EEXIST {
                bump(stat::PROFILE_STACK_COLLISIONS);
            } else if err != -EFAULT {
                // -EFAULT: no stack of that kind (a kernel thread's user stack).
                bump(stat::PROFILE_STACK_ERRORS);
            }
            err as i32
        }
    }
}

/// First sample of a thread group, or first since it exec'd another program: remember it
/// (`flags`: `BPF_NOEXIST` for a new one, `BPF_ANY` for a renamed one) and tell the agent.
#[inline(always)]
fn announce(tgid: u32, comm: [u8; 16], name: u64, flags: u64) {
    if PROFILE_KNOWN.insert(tgid, name, flags).is_err() {
        // Either changed meanwhile by another CPU, or full: only the latter is counted.
        // SAFETY: a lookup whose value is not kept.
        if unsafe { PROFILE_KNOWN.get(tgid) }.is_none() {
            bump(stat::PROFILE_KNOWN_FULL);
        }
        return;
    }
    let ev = ProcEvent {
        kind: kind::PROC_SAMPLED,
        tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm,
    };
    if PROFILE_EVENTS
        .output::<ProcEvent>(&ev, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        bump(stat::PROFILE_EVENTS_LOST);
    }
}
