//! Maps and load-time settings shared by every program. Sizes here are defaults; the agent
//! overrides them at load time from its configuration (`EbpfLoader::map_max_entries`).
use apm_common::{DataEventScratch, LastSock, SockInfo, SockKey, stat};
use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// Every record for the agent: data, connection and process events.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Sockets worth looking at, keyed by (tgid, fd). Filled on accept/connect and from /proc at
/// start-up; emptied on close and by the agent when a process exits. A syscall on an fd that is
/// not in here returns after one lookup, so file I/O costs almost nothing.
#[map]
pub(crate) static SOCKETS: HashMap<SockKey, SockInfo> = HashMap::with_max_entries(65_536, 0);

/// Who forked whom: child pid -> parent tgid, for naming a forked child that serves an
/// inherited socket after its parent (see `sockets::adopt`). Least recently used entries go
/// first: the table needs to remember only recent forks. Thread creations land here too (their
/// entries are never read and age out).
#[map]
pub(crate) static FORK_PARENT: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The last socket each CPU's current thread sent or received on (see `sockets::note_sock`).
#[map]
pub(crate) static LAST_SOCK: PerCpuArray<LastSock> = PerCpuArray::with_max_entries(1, 0);

/// Where a data record is assembled: the BPF stack (512 bytes) is far too small.
#[map]
pub(crate) static SCRATCH: PerCpuArray<DataEventScratch> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU's [`SCRATCH`] is in use (non-zero): a program preempted while it
/// assembles a record keeps it, and another program on the same CPU must not write over it.
#[map]
pub(crate) static SCRATCH_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The kernel side's own counters (see `apm_common::stat`).
#[map]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// The agent's own thread group: its traffic would otherwise feed back into the ring buffer.
#[unsafe(no_mangle)]
pub(crate) static AGENT_TGID: Global<u32> = Global::new(0);

/// Report executable file mappings (library loads) to the agent: only when it hooks TLS
/// libraries (`tls` on).
#[unsafe(no_mangle)]
pub(crate) static LIBRARY_EVENTS: Global<u32> = Global::new(1);

/// Bytes copied per socket syscall (clamped to `apm_common::MAX_CAPTURE`).
#[unsafe(no_mangle)]
pub(crate) static CAPTURE_BYTES: Global<u32> = Global::new(4096);

/// Wake the agent only once this much data waits in the ring buffer; below it the agent's own
/// poll timer collects the records. One wakeup per batch instead of one per event.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: Global<u64> = Global::new(256 * 1024);

/// The agent's own listener (port in host order, IPv4 address in network order, 0 = any):
/// connections to it are not tracked, so scraping `/metrics` is not counted as traffic.
#[unsafe(no_mangle)]
pub(crate) static SKIP_PEER_PORT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SKIP_PEER_ADDR4: Global<u32> = Global::new(0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // Syscall tracepoints may run preemptibly on this kernel, so two programs can race on
        // one CPU's slot.
        atomic_add(counter, 1);
    }
}

/// Atomic `*counter += v` on a map value (the BPF atomic add instruction: core has no atomic
/// read-modify-write for this target).
#[inline(always)]
pub(crate) fn atomic_add(counter: *mut u64, v: u64) {
    // SAFETY: callers pass a pointer from a successful map lookup of a u64 value.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) counter,
            v = in(reg) v,
        );
    }
}

/// Takes the next number of a socket's record counter: `*counter += 1`, returning the value
/// before. Two threads may use one socket at once, so with `FETCH` this is the BPF atomic
/// fetch-add instruction. Kernels before 5.12 reject that instruction anywhere in a program
/// ("BPF_STX uses reserved fields", even on a path never taken), so each program that numbers
/// records is built twice and the agent loads the variant the kernel accepts (see
/// `apm_probe_fetch_add`). Without `FETCH` the read and the add are two steps: two threads
/// numbering records of one socket at the same instant can take the same number, which the
/// agent sees as a repeated number and then a gap (a needless reset of that connection's
/// parser, counted), never as silent loss.
#[inline(always)]
pub(crate) fn next_record<const FETCH: bool>(counter: *mut u64) -> u64 {
    if FETCH {
        let mut v: u64 = 1;
        // SAFETY: callers pass a pointer into a map value from a successful lookup.
        unsafe {
            core::arch::asm!(
                "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
                p = in(reg) counter,
                v = inout(reg) v,
            );
        }
        v
    } else {
        // SAFETY: as above.
        let v = unsafe { core::ptr::read_volatile(counter) };
        atomic_add(counter, 1);
        v
    }
}

/// A program the agent loads (never attaches) to learn whether this kernel accepts the
/// atomic fetch-add instruction: the variant of the data programs is chosen by its result.
#[aya_ebpf::macros::socket_filter]
pub fn apm_probe_fetch_add(_ctx: aya_ebpf::programs::SkBuffContext) -> i64 {
    if let Some(counter) = PROBE_COUNTER.get_ptr_mut(0) {
        next_record::<true>(counter);
    }
    0
}

/// The value [`apm_probe_fetch_add`] adds to.
#[map]
static PROBE_COUNTER: Array<u64> = Array::with_max_entries(1, 0);

/// When a record last forced a wakeup of the agent (`bpf_ktime_get_ns`), for every CPU.
#[map]
pub(crate) static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// At most one forced wakeup per millisecond.
const WAKEUP_GAP_NS: u64 = 1_000_000;

/// Ring-buffer flags for a record written at `now_ns` (`bpf_ktime_get_ns`): force a wakeup
/// only when a batch has built up, and then at most once per [`WAKEUP_GAP_NS`].
///
/// Why the limit: a forced wakeup is an `irq_work`, raised by a self-interrupt, which on a VM
/// is an APIC register write that exits to the hypervisor. While the agent is behind by a
/// batch it is already running (it drains until the ring is empty, and its `poll` is
/// level-triggered, so it never sleeps on waiting records), yet every record used to force
/// one: measured with nginx under wrk, 4.4% of the machine's CPU went to those writes. One
/// per millisecond still wakes an agent that did fall asleep within a millisecond. The clock
/// is checked before the ring's fill level: reading the level touches the cache lines the
/// agent's consumer position shares, and a record within the gap needs neither.
#[inline(always)]
pub(crate) fn wakeup_flags(now_ns: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    // SAFETY: the single entry of an array map; CPUs racing on it at worst both wake.
    if now_ns.wrapping_sub(unsafe { *last }) < WAKEUP_GAP_NS {
        return BPF_RB_NO_WAKEUP as u64;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) < WAKEUP_BYTES.load() {
        return BPF_RB_NO_WAKEUP as u64;
    }
    // SAFETY: as above.
    unsafe { *last = now_ns };
    bump(stat::RING_WAKEUPS);
    BPF_RB_FORCE_WAKEUP as u64
}

/// Writes a fixed-size record, counting a full ring buffer as a lost event.
#[inline(always)]
pub(crate) fn output<T>(record: &T) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if EVENTS.output::<T>(record, wakeup_flags(now)).is_err() {
        bump(stat::EVENTS_LOST);
    }
}

/// Like [`output`], but wakes the agent at once: for records it must act on while the process
/// is still alive (reading /proc of a just-exec'd, possibly short-lived, process).
#[inline(always)]
pub(crate) fn output_now<T>(record: &T) {
    if EVENTS
        .output::<T>(record, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        bump(stat::EVENTS_LOST);
    } else {
        bump(stat::RING_WAKEUPS);
    }
}

/// Sets bits of a socket entry's flags in place. Not `SOCKETS.insert` of a modified copy:
/// that would replace the entry, and with it reset [`SockInfo::records`] to the copy's count
/// (losing what other CPUs counted meanwhile) or bring back an entry that a concurrent close
/// just removed.
#[inline(always)]
pub(crate) fn set_flags(sock: *mut SockInfo, bits: u32) {
    // SAFETY: a value of a successful SOCKETS lookup. Two CPUs setting different bits at the
    // same instant may lose one, which only costs a repeated tuple event or TLS claim.
    unsafe { (*sock).flags |= bits };
}
