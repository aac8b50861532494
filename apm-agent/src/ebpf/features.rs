//! What differs between the kernels the agent runs on, found out before or while loading,
//! never assumed from a version number (distributions backport): tracepoint record layouts
//! from their tracefs format files, and instruction support from a probe program the kernel
//! verifies.
use std::path::Path;

use aya::{Ebpf, programs::SocketFilter};

use super::capture_path::CapturePath;

/// The probe program of the atomic fetch-add (see apm-ebpf/src/maps.rs).
const FETCH_ADD_PROBE: &str = "apm_probe_fetch_add";

/// What notes the socket of each send and receive (connection endpoints, adoption of
/// sockets the table does not know): see apm-ebpf/src/endpoints.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointHooks {
    /// The `sock_send_length`/`sock_recv_length` tracepoints (6.4+), any socket family.
    Tracepoints,
    /// The `sockets-fexit` path's programs on the per-family sendmsg/recvmsg: TCP, unix.
    Fexit,
    /// Kprobes on `tcp_sendmsg`/`tcp_recvmsg`: TCP only.
    Kprobes,
    /// Nothing: no endpoints, no adoption.
    #[default]
    None,
}

/// Kernel differences that change which programs, or which settings of them, are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// The BPF atomic fetch-add instruction (5.12+): record numbering without races.
    pub fetch_add: bool,
    /// Offset of `child_pid` in the `sched_process_fork` record (20 on 6.x, 44 before).
    pub fork_child_pid: Option<u32>,
    /// Offset of `group_dead` in the `sched_process_exit` record (absent on 6.12 and before).
    pub exit_group_dead: Option<u32>,
    /// Known once the programs are attached.
    pub endpoints: EndpointHooks,
    /// The capture path attached (`Auto` before attaching).
    pub capture: CapturePath,
}

impl Features {
    /// The layouts of the tracepoint records (from tracefs at `tracefs`); `fetch_add` is
    /// learnt once the object is loaded ([`probe_fetch_add`]).
    pub fn from_tracefs(tracefs: Option<&Path>) -> Self {
        let field = |event: &str, name: &str| {
            tracefs.and_then(|root| {
                let format =
                    std::fs::read_to_string(root.join("events/sched").join(event).join("format"))
                        .ok()?;
                field_offset(&format, name)
            })
        };
        Self {
            fetch_add: false,
            fork_child_pid: field("sched_process_fork", "child_pid"),
            exit_group_dead: field("sched_process_exit", "group_dead"),
            endpoints: EndpointHooks::None,
            capture: CapturePath::Auto,
        }
    }
}

/// The offset of field `name` in a tracefs `format` file, e.g. from
/// `field:pid_t child_pid;<TAB>offset:20;<TAB>size:4;<TAB>signed:1;` (fields separated by tabs).
pub fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let field = decl.split_whitespace().last()?;
        // `char comm[16]` names the field `comm`.
        let field = field.split('[').next()?;
        if field != name {
            return None;
        }
        line.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Does the kernel accept the atomic fetch-add instruction? Loads (verifies) the probe
/// program, which is never attached, and unloads it.
pub fn probe_fetch_add(bpf: &mut Ebpf) -> bool {
    let Some(program) = bpf.program_mut(FETCH_ADD_PROBE) else {
        return false;
    };
    let Ok(filter): Result<&mut SocketFilter, _> = program.try_into() else {
        return false;
    };
    match filter.load() {
        Ok(()) => {
            let _ = filter.unload();
            true
        }
        Err(e) => {
            log::debug!("atomic fetch-add not available: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sched_process_fork` of 5.10 (comms inline) and of 6.x (`__data_loc` comms).
    const FORK_5_10: &str = "name: sched_process_fork\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;\n\
        \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;\n\
        \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
    const FORK_6_18: &str = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
    const EXIT_6_18: &str = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\
        \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

    #[test]
    fn offsets_come_from_the_format_file() {
        assert_eq!(field_offset(FORK_5_10, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK_5_10, "child_comm"), Some(28));
        assert_eq!(field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_6_18, "child_comm"), Some(16));
        assert_eq!(field_offset(EXIT_6_18, "group_dead"), Some(32));
        assert_eq!(field_offset(EXIT_6_18, "comm"), Some(8));
        assert_eq!(field_offset(FORK_5_10, "group_dead"), None);
        assert_eq!(field_offset("garbage\nfield:x;offset:y;", "x"), None);
    }
}
