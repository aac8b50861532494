//! Copies the first bytes of a completed socket read/write into the ring buffer.
//!
//! The record is assembled in a per-CPU scratch area and then written with
//! `bpf_ringbuf_output` trimmed to its real length, so a 60-byte request costs 60 bytes of ring
//! buffer, not `MAX_CAPTURE`.
use core::ffi::c_void;

use apm_common::{
    DataEventHeader, DataEventScratch, MAX_CAPTURE, SockInfo, kind, record_seq, stat,
};
use aya_ebpf::helpers::{
    bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_probe_read_user as raw_read_user,
};

use crate::maps::{
    CAPTURE_BYTES, EVENTS, SCRATCH, SCRATCH_BUSY, atomic_add, bump, next_record, wakeup_flags,
};

const HEADER_LEN: usize = core::mem::size_of::<DataEventHeader>();
const MASK: u64 = (MAX_CAPTURE as u64) - 1;

/// `struct iovec` as laid out in the caller's memory.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Where the bytes of a syscall are in the caller's memory.
#[derive(Clone, Copy)]
pub(crate) enum Buffer {
    /// One buffer (read, write, recvfrom, sendto).
    Plain(u64),
    /// An iovec array and its length (readv, writev, recvmsg, sendmsg).
    Vectored { iov: u64, count: u64 },
    /// None the caller wrote or reads (`sendfile`, `splice`): the record has the count only.
    Unseen,
}

/// One socket syscall that moved `total > 0` bytes.
pub(crate) struct Moved {
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub syscall: u32,
    pub direction: u32,
    pub total: u64,
    pub buffer: Buffer,
    /// The socket's entry in `SOCKETS` (from a successful lookup): its record counter
    /// numbers the record.
    pub sock: *mut SockInfo,
}

/// Emits one data record. `FETCH`: number it with the atomic fetch-add (see
/// [`next_record`]).
#[inline(always)]
pub(crate) fn emit_data<const FETCH: bool, const IOV: u32>(m: &Moved) {
    let (Some(scratch), Some(busy)) = (SCRATCH.get_ptr_mut(0), SCRATCH_BUSY.get_ptr_mut(0)) else {
        return;
    };
    // On kernels with full or lazy preemption a program can be preempted halfway through
    // this function while another task's program runs on the same CPU: the scratch area is
    // claimed first, and a record that finds it taken is dropped and counted rather than
    // written over the other (or written half-overwritten).
    if next_record::<FETCH>(busy) != 0 {
        atomic_add(busy, u64::MAX);
        bump(stat::SCRATCH_BUSY);
        return;
    }
    // SAFETY: a per-CPU array slot, claimed above: no other program writes it meanwhile.
    let scratch: &mut DataEventScratch = unsafe { &mut *scratch };

    let mut want = CAPTURE_BYTES.load() as u64;
    if want > MAX_CAPTURE as u64 {
        want = MAX_CAPTURE as u64;
    }
    if want > m.total {
        want = m.total;
    }
    let copied = match m.buffer {
        Buffer::Plain(ptr) => copy_at(scratch, 0, ptr, want),
        Buffer::Vectored { iov, count } => gather_iovecs::<IOV>(scratch, iov, count, want),
        Buffer::Unseen => 0,
    };

    // Numbered after the copy, right before the output: a record lost to a full ring buffer
    // leaves a gap in its socket's numbers, and the short window keeps two threads writing
    // one socket from reaching the ring in the other order.
    // SAFETY: `m.sock` points into a SOCKETS value (see `Moved::sock`).
    let seq = record_seq(next_record::<FETCH>(unsafe { &raw mut (*m.sock).records }));
    // SAFETY: no preconditions.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    scratch.header = DataEventHeader {
        kind: kind::DATA,
        direction: m.direction,
        tgid: m.tgid,
        tid: m.tid,
        fd: m.fd,
        syscall: m.syscall,
        ts_ns,
        total_len: m.total,
        captured_len: copied as u32,
        seq,
    };

    let mut len = opaque(copied);
    if len > MAX_CAPTURE as u64 {
        len = MAX_CAPTURE as u64;
    }
    let size = HEADER_LEN + len as usize;
    // SAFETY: `size` is at most HEADER_LEN + MAX_CAPTURE, inside the scratch value.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_mut(scratch).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(record, wakeup_flags(ts_ns)).is_err() {
        bump(stat::EVENTS_LOST);
    }
    // Released (`u64::MAX` is -1).
    atomic_add(busy, u64::MAX);
}

/// Copies `len` (clamped to `MAX_CAPTURE`) user bytes from `src` to payload offset `offset`.
/// Returns the bytes copied (0 when the read faulted).
#[inline(always)]
fn copy_at(scratch: &mut DataEventScratch, offset: u64, src: u64, len: u64) -> u64 {
    let mut n = opaque(len);
    if n > MAX_CAPTURE as u64 {
        n = MAX_CAPTURE as u64;
    }
    if n == 0 {
        return 0;
    }
    let offset = opaque(offset) & MASK;
    // SAFETY: offset < MAX_CAPTURE and n <= MAX_CAPTURE, and the payload is 2 * MAX_CAPTURE
    // long; the helper itself checks the user pointer.
    let ret = unsafe {
        raw_read_user(
            scratch
                .payload
                .as_mut_ptr()
                .add(offset as usize)
                .cast::<c_void>(),
            n as u32,
            src as *const c_void,
        )
    };
    if ret != 0 {
        bump(stat::READ_USER_FAILED);
        return 0;
    }
    n
}

/// Returns `v` unchanged, in a way the optimizer cannot see through, so that a bound written
/// after it stays in the object for the verifier to see.
///
/// Why: LLVM removes a clamp or mask it can prove redundant from the surrounding code (here:
/// `done < want <= MAX_CAPTURE` in the iovec loop makes `offset & MASK` a no-op to it), but
/// verifiers before 6.12 cannot follow that reasoning across loop iterations and reject the
/// copy ("invalid access to map value ... R1 min value is outside of the allowed memory
/// range" on 6.1; "Add or adjust a bounds check that proves offset + access_size stays within
/// the object" on 7.x, where the same object was accepted by 6.12 and 6.18).
#[inline(always)]
fn opaque(mut v: u64) -> u64 {
    // SAFETY: a register move onto itself; it only hides the value from the optimizer.
    unsafe {
        core::arch::asm!("{v} = {v}", v = inout(reg) v, options(nomem, nostack, preserves_flags));
    }
    v
}

/// Returns `v` after a round trip through the scratch area (a header field written again
/// before the record goes out), so that the verifier forgets what it knew of it: it does not
/// track values stored in map memory.
///
/// Why: the verifier walks a bounded loop iteration by iteration, and two walks that reach
/// the loop head with different known ranges of the byte count gathered so far are not
/// pruned against each other. Each iteration branches (entry shorter than what is left or
/// not, copy faulted or not), so the walks multiplied: 697,210 and 757,116 instructions
/// verified for the two 32-iovec socket-layer programs on 6.18, "BPF program is too large"
/// (a million) for the receive on Debian's 7.3, minutes of start-up under emulation. With
/// the count forgotten at the head, the walks of an iteration converge there.
#[inline(always)]
fn forget(scratch: &mut DataEventScratch, v: u64) -> u64 {
    let slot = &raw mut scratch.header.total_len;
    // SAFETY: a field of the claimed per-CPU scratch value; volatile so that the compiler
    // keeps the store and the load.
    unsafe {
        core::ptr::write_volatile(slot, v);
        core::ptr::read_volatile(slot)
    }
}

/// Gathers up to `want` bytes from the first `IOV` entries of an iovec array of `count`
/// (a larger `IOV` costs verifier work at every inlined call site: see [`forget`]).
#[inline(always)]
fn gather_iovecs<const IOV: u32>(
    scratch: &mut DataEventScratch,
    iov: u64,
    count: u64,
    want: u64,
) -> u64 {
    let mut done: u64 = 0;
    let mut i: u32 = 0;
    while i < IOV {
        done = forget(scratch, done);
        if i as u64 >= count || done >= want {
            return done;
        }
        let entry = iov + (i as u64) * core::mem::size_of::<Iovec>() as u64;
        // SAFETY: reading user memory through the checked helper.
        let Ok(v) = (unsafe { bpf_probe_read_user(entry as *const Iovec) }) else {
            bump(stat::READ_USER_FAILED);
            return done;
        };
        let mut n = v.len;
        if n > want - done {
            n = want - done;
        }
        let got = copy_at(scratch, done, v.base, n);
        if got == 0 && n != 0 {
            return done;
        }
        done += got;
        i += 1;
    }
    if count > IOV as u64 && done < want {
        bump(stat::IOV_TRUNCATED);
    }
    done
}
