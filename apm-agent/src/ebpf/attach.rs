//! Attaching the programs of the capture path (see [`CapturePath`]) and the process lifecycle
//! tracepoints.
use aya::{
    Btf,
    programs::{BtfTracePoint, FExit, KProbe, TracePoint},
};

use super::{
    LoadError, Probes, capture_path::CapturePath, features::EndpointHooks, load::program_error,
};

/// The syscall-exit program, and its variant for kernels without the atomic fetch-add
/// (before 5.12; see apm-ebpf/src/maps.rs).
pub const SYS_EXIT: &str = "apm_sys_exit";
const SYS_EXIT_NOFETCH: &str = "apm_sys_exit_nofetch";

/// The `syscalls` path: programs on BTF raw tracepoints, (program function, tracepoint). These
/// fire for every syscall and filter by number first (see apm-ebpf/src/sockets.rs for why).
pub const RAW_PROGRAMS: &[(&str, &str)] = &[
    ("apm_sys_enter", "sys_enter"),
    (SYS_EXIT, "sys_exit"),
    // Note each send/receive's socket, for the connection endpoints (see endpoints.rs).
    ("apm_sock_send", "sock_send_length"),
    ("apm_sock_recv", "sock_recv_length"),
];

/// Raw tracepoints the `syscalls` path can run without: these two exist since Linux 6.4. They
/// note the socket of each send and receive, for connection endpoints and for adopting
/// sockets the table does not know; before 6.4 kprobes do it ([`ENDPOINT_KPROBES`]).
pub const OPTIONAL_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];

/// Kprobes that note the socket where the tracepoints above are missing (TCP only):
/// (program function, kernel function).
pub const ENDPOINT_KPROBES: &[(&str, &str)] = &[
    ("apm_tcp_sendmsg", "tcp_sendmsg"),
    ("apm_tcp_recvmsg", "tcp_recvmsg"),
];

/// A program of a socket-layer path: the program function, the kernel function or BTF
/// tracepoint it hooks, how, and for the data programs their variant that gathers 8 iovecs
/// per call instead of 32 (`apm_common::MAX_IOV_NARROW`), loaded where this kernel's verifier finds
/// the first too large (Debian's 7.3 does, for the receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketProgram {
    pub name: &'static str,
    pub target: &'static str,
    pub hook: Hook,
    pub narrow: Option<&'static str>,
}

/// A data program and its 8-iovec variant (named with
/// [`super::program_runs::NARROW_SUFFIX`]).
const fn data(
    name: &'static str,
    narrow: &'static str,
    target: &'static str,
    hook: Hook,
) -> SocketProgram {
    SocketProgram {
        name,
        target,
        hook,
        narrow: Some(narrow),
    }
}

/// The `sockets` path: the data programs at the socket layer, on BTF tracepoints, with
/// [`TCP_STATE`]. See apm-ebpf/src/socket_layer.rs.
pub const SOCKET_PROGRAMS: &[SocketProgram] = &[
    data(
        "apm_sock_send_data",
        "apm_sock_send_data_iov8",
        "sock_send_length",
        Hook::BtfTracepoint,
    ),
    data(
        "apm_sock_recv_data",
        "apm_sock_recv_data_iov8",
        "sock_recv_length",
        Hook::BtfTracepoint,
    ),
];

/// How a program of a socket-layer path hooks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    BtfTracepoint,
    Fexit,
}

/// The `sockets-fexit` path, for kernels before 6.4: the same data programs on BPF
/// trampolines around the functions where the tracepoints of [`SOCKET_PROGRAMS`] sit on 6.4+
/// (see apm-ebpf/src/socket_layer.rs for why these). All are required: without one of them a
/// family's connections would be half seen. The TCP state program is the same.
pub const SOCKET_FEXIT_PROGRAMS: &[SocketProgram] = &[
    data(
        "apm_inet_sendmsg_exit",
        "apm_inet_sendmsg_exit_iov8",
        "inet_sendmsg",
        Hook::Fexit,
    ),
    data(
        "apm_inet6_sendmsg_exit",
        "apm_inet6_sendmsg_exit_iov8",
        "inet6_sendmsg",
        Hook::Fexit,
    ),
    data(
        "apm_unix_stream_sendmsg_exit",
        "apm_unix_stream_sendmsg_exit_iov8",
        "unix_stream_sendmsg",
        Hook::Fexit,
    ),
    data(
        "apm_inet_recvmsg_exit",
        "apm_inet_recvmsg_exit_iov8",
        "inet_recvmsg",
        Hook::Fexit,
    ),
    data(
        "apm_inet6_recvmsg_exit",
        "apm_inet6_recvmsg_exit_iov8",
        "inet6_recvmsg",
        Hook::Fexit,
    ),
    data(
        "apm_unix_stream_recvmsg_exit",
        "apm_unix_stream_recvmsg_exit_iov8",
        "unix_stream_recvmsg",
        Hook::Fexit,
    ),
    // sendfile and splice into TCP sockets (counted, not copied): before 6.5 they do not go
    // through inet_sendmsg.
    SocketProgram {
        name: "apm_inet_sendpage_exit",
        target: "inet_sendpage",
        hook: Hook::Fexit,
        narrow: None,
    },
];

/// The 8-iovec variants of the data programs, with the program each stands for.
pub fn narrow_variants() -> impl Iterator<Item = (&'static str, &'static str)> {
    SOCKET_PROGRAMS
        .iter()
        .chain(SOCKET_FEXIT_PROGRAMS)
        .filter_map(|p| p.narrow.map(|narrow| (narrow, p.name)))
}

/// The catch-up program of the `sockets-fexit` path, on `sys_exit` for a short window after
/// the start (see [`super::catch_up`]).
pub const CATCH_UP: &str = "apm_catch_up_exit";

/// The TCP state program of both socket-layer paths.
const TCP_STATE: SocketProgram = SocketProgram {
    name: "apm_tcp_state",
    target: "inet_sock_set_state",
    hook: Hook::BtfTracepoint,
    narrow: None,
};

/// Programs on classic tracepoints: (program function, category, tracepoint).
pub const TRACEPOINT_PROGRAMS: &[(&str, &str, &str)] = &[
    ("apm_proc_exec", "sched", "sched_process_exec"),
    ("apm_proc_exit", "sched", "sched_process_exit"),
    ("apm_proc_fork", "sched", "sched_process_fork"),
];

impl Probes {
    /// Attaches the programs of the capture path `wanted` (`Auto`: the socket layer when this
    /// kernel has it, else the syscalls), then the process lifecycle tracepoints. Stops at the
    /// first failure of a required program: a partial set of probes would give numbers that
    /// look right and are not. Optional ones are skipped with a warning.
    pub fn attach_all(&mut self, wanted: CapturePath) -> Result<(), LoadError> {
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(Box::new(e)))?;
        let (path, reason) = match wanted {
            CapturePath::Auto => self.attach_auto(&btf)?,
            forced => {
                self.attach_path(forced, &btf)?;
                (forced, "set by capture_path".to_owned())
            }
        };
        self.features.capture = path;
        self.capture_reason = reason;
        self.attach_process_tracepoints()
    }

    /// Why the capture path in use was chosen.
    pub fn capture_reason(&self) -> &str {
        &self.capture_reason
    }

    /// `auto`: the first of `sockets`, `sockets-fexit`, `syscalls` this kernel accepts, and
    /// why.
    fn attach_auto(&mut self, btf: &Btf) -> Result<(CapturePath, String), LoadError> {
        let tracepoints = match self.attach_path(CapturePath::Sockets, btf) {
            Ok(()) => {
                let why = "auto: this kernel has the socket tracepoints";
                return Ok((CapturePath::Sockets, why.to_owned()));
            }
            Err(e) => e,
        };
        log::info!("socket tracepoints unavailable: {tracepoints}");
        let trampolines = match self.attach_path(CapturePath::SocketsFexit, btf) {
            Ok(()) => {
                let why = "auto: no socket tracepoints (6.4+), fexit on the socket functions";
                return Ok((CapturePath::SocketsFexit, why.to_owned()));
            }
            Err(e) => e,
        };
        log::info!("socket-layer capture unavailable, using the syscalls: {trampolines}");
        self.attach_path(CapturePath::Syscalls, btf)?;
        Ok((
            CapturePath::Syscalls,
            format!(
                "auto: the socket layer is unavailable (tracepoints: {tracepoints}; fexit: \
                 {trampolines})"
            ),
        ))
    }

    /// The programs of one path (not `Auto`): for the socket layer all or none.
    fn attach_path(&mut self, path: CapturePath, btf: &Btf) -> Result<(), LoadError> {
        match path {
            CapturePath::Sockets => {
                let mut programs = SOCKET_PROGRAMS.to_vec();
                programs.push(TCP_STATE);
                self.attach_socket_path(&programs, btf)?;
                self.features.endpoints = EndpointHooks::Tracepoints;
            }
            CapturePath::SocketsFexit => {
                let mut programs = SOCKET_FEXIT_PROGRAMS.to_vec();
                programs.push(TCP_STATE);
                self.attach_socket_path(&programs, btf)?;
                if let Err(e) = self.attach_catch_up(btf) {
                    self.detach_socket_path(&programs);
                    return Err(e);
                }
                self.features.endpoints = EndpointHooks::Fexit;
            }
            CapturePath::Syscalls | CapturePath::Auto => self.attach_syscall_path(btf)?,
        }
        Ok(())
    }

    /// The socket-layer `programs`, all or none. A data program the verifier finds too large
    /// is replaced by its 8-iovec variant, and so are the later ones of its direction without
    /// being tried (a refusal costs the verifier's whole budget of a million instructions:
    /// seconds under emulation).
    fn attach_socket_path(
        &mut self,
        programs: &[SocketProgram],
        btf: &Btf,
    ) -> Result<(), LoadError> {
        // Per direction (send, receive): the 32-iovec programs were refused as too large.
        let mut too_large = [false; 2];
        for program in programs {
            // Every receive program is named `..._recv...` (and every send `..._send...`).
            let side = usize::from(program.name.contains("recv"));
            let result = match program.narrow {
                Some(narrow) if too_large[side] => self.attach_socket_program(program, narrow, btf),
                _ => match self.attach_socket_program(program, program.name, btf) {
                    Err(e) if e.too_large() && program.narrow.is_some() => {
                        log::warn!(
                            "{e}: loading the variant that gathers 8 iovecs per call (gRPC \
                             clients write up to 24 at once: their header blocks can be cut, \
                             counted in apm_capture_partial_total{{reason=\"iovec_limit\"}})"
                        );
                        too_large[side] = true;
                        let narrow = program.narrow.unwrap_or(program.name);
                        self.attach_socket_program(program, narrow, btf)
                    }
                    other => other,
                },
            };
            if let Err(e) = result {
                self.detach_socket_path(programs);
                return Err(e);
            }
        }
        Ok(())
    }

    /// One program of a socket-layer path, as `name` (its own or its variant's).
    fn attach_socket_program(
        &mut self,
        program: &SocketProgram,
        name: &'static str,
        btf: &Btf,
    ) -> Result<(), LoadError> {
        match program.hook {
            Hook::BtfTracepoint => self.attach_btf(name, program.target, btf),
            Hook::Fexit => self.attach_fexit(name, program.target, btf),
        }
    }

    /// Unloads (and so detaches) the socket-layer `programs` that were attached, either
    /// variant.
    fn detach_socket_path(&mut self, programs: &[SocketProgram]) {
        for program in programs {
            for name in std::iter::once(program.name).chain(program.narrow) {
                match self.bpf.program_mut(name) {
                    Some(aya::programs::Program::BtfTracePoint(p)) => {
                        let _ = p.unload();
                    }
                    Some(aya::programs::Program::FExit(p)) => {
                        let _ = p.unload();
                    }
                    _ => {}
                }
                self.attached.retain(|a| *a != name);
            }
        }
    }

    /// Iovecs gathered per call by the data programs attached: 32, or 8 for those whose
    /// 32-iovec program this kernel's verifier refused (named).
    pub fn iovecs_per_call(&self) -> String {
        let narrowed: Vec<&str> = narrow_variants()
            .filter(|(narrow, _)| self.attached.contains(narrow))
            .map(|(_, main)| main)
            .collect();
        if narrowed.is_empty() {
            format!("{}", apm_common::MAX_IOV)
        } else {
            format!(
                "{} ({} for {}: the verifier found them too large)",
                apm_common::MAX_IOV,
                apm_common::MAX_IOV_NARROW,
                narrowed.join(", ")
            )
        }
    }

    /// Loads [`CATCH_UP`] and attaches it to `sys_exit`, keeping the link apart: the event
    /// loop drops it when the window closes.
    fn attach_catch_up(&mut self, btf: &Btf) -> Result<(), LoadError> {
        let err = |source| program_error(CATCH_UP, "sys_exit", source);
        let program: &mut BtfTracePoint = self
            .bpf
            .program_mut(CATCH_UP)
            .ok_or(LoadError::MissingProgram(CATCH_UP))?
            .try_into()
            .map_err(err)?;
        program.load("sys_exit", btf).map_err(err)?;
        let id = program.attach().map_err(err)?;
        self.catch_up_link = Some(program.take_link(id).map_err(err)?);
        Ok(())
    }

    /// Loads and attaches the fexit program `name` to kernel function `function`.
    fn attach_fexit(
        &mut self,
        name: &'static str,
        function: &'static str,
        btf: &Btf,
    ) -> Result<(), LoadError> {
        let err = |source| program_error(name, function, source);
        let program: &mut FExit = self
            .bpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(err)?;
        program.load(function, btf).map_err(err)?;
        program.attach().map_err(err)?;
        self.attached.push(name);
        Ok(())
    }

    /// The programs of [`RAW_PROGRAMS`] and the socket notes (tracepoints or kprobes).
    fn attach_syscall_path(&mut self, btf: &Btf) -> Result<(), LoadError> {
        for &(name, tracepoint) in RAW_PROGRAMS {
            let name = self.variant(name);
            match self.attach_btf(name, tracepoint, btf) {
                Ok(()) => {}
                Err(e) if OPTIONAL_TRACEPOINTS.contains(&tracepoint) => {
                    log::info!("raw tracepoint {tracepoint} unavailable: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        self.features.endpoints = if OPTIONAL_TRACEPOINTS
            .iter()
            .all(|t| self.attached.iter().any(|a| RAW_PROGRAMS.contains(&(a, t))))
        {
            EndpointHooks::Tracepoints
        } else {
            self.attach_endpoint_kprobes()
        };
        if self.features.endpoints == EndpointHooks::None {
            log::warn!(
                "neither the sock_send_length/sock_recv_length tracepoints (6.4+) nor kprobes \
                 on tcp_sendmsg/tcp_recvmsg: connections carry no endpoints (no same-host \
                 client/server pairing, no port selectors on accepted connections) and sockets \
                 a process inherited or was passed are not followed"
            );
        }
        Ok(())
    }

    /// Loads and attaches the BTF tracepoint program `name` to `tracepoint`.
    fn attach_btf(
        &mut self,
        name: &'static str,
        tracepoint: &'static str,
        btf: &Btf,
    ) -> Result<(), LoadError> {
        let err = |source| program_error(name, tracepoint, source);
        let program: &mut BtfTracePoint = self
            .bpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(err)?;
        program.load(tracepoint, btf).map_err(err)?;
        program.attach().map_err(err)?;
        self.attached.push(name);
        Ok(())
    }

    /// The variant of a program that numbers data records this kernel accepts.
    fn variant(&self, name: &'static str) -> &'static str {
        match name {
            SYS_EXIT if !self.features.fetch_add => SYS_EXIT_NOFETCH,
            name => name,
        }
    }

    /// `sched_process_exec`, `_exit` and `_fork`.
    fn attach_process_tracepoints(&mut self) -> Result<(), LoadError> {
        for &(name, category, tracepoint) in TRACEPOINT_PROGRAMS {
            if tracepoint == "sched_process_fork" && self.features.fork_child_pid.is_none() {
                log::warn!(
                    "sched_process_fork has no child_pid field on this kernel: a forked \
                     child serving an inherited socket is named after itself only"
                );
                continue;
            }
            let err = |source| program_error(name, tracepoint, source);
            let program: &mut TracePoint = self
                .bpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?
                .try_into()
                .map_err(err)?;
            program.load().map_err(err)?;
            program.attach(category, tracepoint).map_err(err)?;
            self.attached.push(name);
        }
        Ok(())
    }

    /// The kprobes of [`ENDPOINT_KPROBES`], all or none: what hooks the socket layer now.
    fn attach_endpoint_kprobes(&mut self) -> EndpointHooks {
        let mut attached = Vec::new();
        for &(name, function) in ENDPOINT_KPROBES {
            let result = self
                .bpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))
                .and_then(|p| {
                    let p: &mut KProbe =
                        p.try_into().map_err(|e| program_error(name, "kprobe", e))?;
                    p.load().map_err(|e| program_error(name, "kprobe", e))?;
                    p.attach(function, 0)
                        .map_err(|e| program_error(name, "kprobe", e))
                });
            match result {
                Ok(link) => attached.push((name, link)),
                Err(e) => {
                    log::info!("kprobe on {function} unavailable: {e}");
                    for (name, link) in attached {
                        if let Some(Ok(p)) = self.bpf.program_mut(name).map(<&mut KProbe>::try_from)
                        {
                            let _ = p.detach(link);
                        }
                    }
                    return EndpointHooks::None;
                }
            }
        }
        self.attached.extend(attached.iter().map(|(name, _)| *name));
        EndpointHooks::Kprobes
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::program_runs::{NARROW_SUFFIX, TRACKED, main_name},
        *,
    };

    #[test]
    fn each_narrow_variant_is_named_and_counted_after_its_program() {
        for (narrow, main) in narrow_variants() {
            assert_eq!(narrow.strip_suffix(NARROW_SUFFIX), Some(main));
            assert_eq!(main_name(narrow), main);
            assert!(TRACKED.contains(&main), "{main} is not tracked");
        }
        assert_eq!(narrow_variants().count(), 8);
    }
}
