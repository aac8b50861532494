//! Library loads, on the `sockets` capture path: a uprobe on the dynamic loader's
//! `_dl_debug_state`, the hook glibc calls for debuggers each time its list of loaded objects
//! changes (after the libraries of a new program are mapped, and around each `dlopen`). The
//! agent then looks for a TLS library it has not hooked in that process (see the syscall
//! path's `mmap` handling in sockets.rs, which this replaces without a program on every
//! syscall). The agent attaches it to each distinct loader file it finds mapped.
use apm_common::{ProcEvent, kind};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};

use crate::{
    maps::{LIBRARY_EVENTS, output},
    sockets::caller,
};

#[uprobe]
pub fn apm_dl_debug_state(_ctx: ProbeContext) -> u32 {
    if LIBRARY_EVENTS.load() == 0 {
        return 0;
    }
    let Some((tgid, _)) = caller() else { return 0 };
    output(&ProcEvent {
        kind: kind::PROC_EXEC_MAP,
        tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    0
}
