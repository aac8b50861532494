//! Loads the embedded kernel object, applies the configuration (globals and map sizes), and
//! attaches every tracepoint. Dropping [`Probes`] detaches them; so does the death of the
//! process (links are owned by file descriptors and nothing is pinned), which is why a
//! `kill -9` leaves nothing of ours attached.
use std::net::{IpAddr, SocketAddr};

use apm_common::{SockInfo, SockKey};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, KProbe, ProgramError, TracePoint},
};

use super::{
    features::{EndpointHooks, Features},
    program_runs::ProgramRuns,
    verifier,
};

/// The kernel object built by build.rs (aya-build) from `apm-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apm"));

/// The syscall-exit program, and its variant for kernels without the atomic fetch-add
/// (before 5.12; see apm-ebpf/src/maps.rs).
pub const SYS_EXIT: &str = "apm_sys_exit";
const SYS_EXIT_NOFETCH: &str = "apm_sys_exit_nofetch";

/// Programs on BTF raw tracepoints: (program function, tracepoint). These fire for every
/// syscall and filter by number first (see apm-ebpf/src/sockets.rs for why).
pub const RAW_PROGRAMS: &[(&str, &str)] = &[
    ("apm_sys_enter", "sys_enter"),
    (SYS_EXIT, "sys_exit"),
    // Note each send/receive's socket, for the connection endpoints (see sockets.rs).
    ("apm_sock_send", "sock_send_length"),
    ("apm_sock_recv", "sock_recv_length"),
];

/// Raw tracepoints the agent can run without: these two exist since Linux 6.4. They note the
/// socket of each send and receive, for connection endpoints and for adopting sockets the
/// table does not know; before 6.4 kprobes do it ([`ENDPOINT_KPROBES`]).
pub const OPTIONAL_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];

/// Kprobes that note the socket where the tracepoints above are missing (TCP only):
/// (program function, kernel function).
pub const ENDPOINT_KPROBES: &[(&str, &str)] = &[
    ("apm_tcp_sendmsg", "tcp_sendmsg"),
    ("apm_tcp_recvmsg", "tcp_recvmsg"),
];

/// Programs on classic tracepoints: (program function, category, tracepoint).
pub const TRACEPOINT_PROGRAMS: &[(&str, &str, &str)] = &[
    ("apm_proc_exec", "sched", "sched_process_exec"),
    ("apm_proc_exit", "sched", "sched_process_exit"),
    ("apm_proc_fork", "sched", "sched_process_fork"),
];

/// Failures of the eBPF subsystem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the kernel object failed (is this root with CAP_BPF and CAP_PERFMON?): {0}")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("program {0} is missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("kernel BTF (/sys/kernel/btf/vmlinux) is needed for the raw tracepoints: {0}")]
    Btf(#[source] Box<aya::BtfError>),
    #[error(
        "program {name} ({tracepoint}) rejected by this kernel's verifier ({errno}): {summary}"
    )]
    Rejected {
        name: &'static str,
        tracepoint: &'static str,
        errno: std::io::Error,
        /// The failing instruction and the verifier's verdict ([`verifier::summarize`]).
        summary: String,
    },
    #[error("program {name} (tracepoint {tracepoint}): {source}")]
    Program {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("ring buffer size {0} must be a power of two and at least one page (4096)")]
    RingSize(u32),
    #[error("listing online CPUs: {0}")]
    Cpus(#[source] std::io::Error),
}

/// A program error, with a verifier rejection cut down to what explains it (the whole log
/// goes to the debug log).
pub(super) fn program_error(
    name: &'static str,
    tracepoint: &'static str,
    source: ProgramError,
) -> LoadError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log of {name}:\n{log}");
            LoadError::Rejected {
                name,
                tracepoint,
                errno: io_error,
                summary: verifier::summarize(&log),
            }
        }
        source => LoadError::Program {
            name,
            tracepoint,
            source: Box::new(source),
        },
    }
}

/// What the loader needs from the configuration.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub agent_tgid: u32,
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    /// Bytes waiting in the ring buffer that make the kernel wake the agent.
    pub wakeup_bytes: u32,
    pub max_sockets: u32,
    /// The agent's own listener: clients connecting to it are not tracked.
    pub listen: Option<SocketAddr>,
    /// Report library loads (for hooking TLS libraries).
    pub library_events: bool,
    /// Profiler map sizes and switches; `None`: the profiler is not used and its maps are
    /// created with one entry each.
    pub profiler: Option<ProfilerLoad>,
}

/// Load-time settings of the profiler.
#[derive(Debug, Clone, Copy)]
pub struct ProfilerLoad {
    /// Entries of each of the two sample-count maps.
    pub count_entries: u32,
    /// Entries of each of the two stack maps (about 1 KiB of kernel memory each).
    pub stack_entries: u32,
    pub kernel_stacks: bool,
    /// Sample only the thread groups put in `PROFILE_PIDS`.
    pub pid_filter: bool,
}

/// The maps the agent reads and writes while running.
pub struct KernelMaps {
    pub events: RingBuf<MapData>,
    pub sockets: HashMap<MapData, SockKey, SockInfo>,
    pub stats: PerCpuArray<MapData, u64>,
    /// The attached programs' skipped runs.
    pub programs: ProgramRuns,
}

/// The loaded object; its programs stay attached until it is dropped.
pub struct Probes {
    pub(super) bpf: Ebpf,
    pub(super) attached: Vec<&'static str>,
    pub(super) features: Features,
}

impl Probes {
    /// Loads the object with `opts` applied. Nothing is attached yet.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let ring = opts.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            return Err(LoadError::RingSize(ring));
        }
        let capture = opts.capture_bytes.min(apm_common::MAX_CAPTURE as u32);
        // Small batches keep each burst of agent work short (it shares CPUs with the
        // workload: measured, nginx's p99 grows with the batch); a large ring still absorbs
        // bursts. Never more than an eighth of the ring.
        let wakeup = u64::from(opts.wakeup_bytes.clamp(1, ring / 8));
        let (skip_port, skip_addr4) = match opts.listen {
            Some(addr) => (
                u32::from(addr.port()),
                match addr.ip() {
                    IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
                    IpAddr::V6(_) => 0,
                },
            ),
            None => (0, 0),
        };
        let profiler = opts.profiler.unwrap_or(ProfilerLoad {
            count_entries: 1,
            stack_entries: 1,
            kernel_stacks: false,
            pid_filter: false,
        });
        let kernel_stacks = u32::from(profiler.kernel_stacks);
        let pid_filter = u32::from(profiler.pid_filter);
        let library_events = u32::from(opts.library_events);
        let mut features = Features::from_tracefs(super::tracefs::find().as_deref());
        let fork_child_pid = features.fork_child_pid.unwrap_or(0);
        let exit_group_dead = features.exit_group_dead.unwrap_or(0);
        let mut bpf = EbpfLoader::new()
            .override_global("AGENT_TGID", &opts.agent_tgid, true)
            .override_global("CAPTURE_BYTES", &capture, true)
            .override_global("WAKEUP_BYTES", &wakeup, true)
            .override_global("SKIP_PEER_PORT", &skip_port, true)
            .override_global("SKIP_PEER_ADDR4", &skip_addr4, true)
            .override_global("PROFILE_KERNEL_STACKS", &kernel_stacks, true)
            .override_global("PROFILE_PID_FILTER", &pid_filter, true)
            .override_global("LIBRARY_EVENTS", &library_events, true)
            .override_global("FORK_CHILD_PID_OFFSET", &fork_child_pid, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &exit_group_dead, true)
            .map_max_entries("EVENTS", ring)
            .map_max_entries("SOCKETS", opts.max_sockets)
            .map_max_entries("PROFILE_COUNTS_0", profiler.count_entries)
            .map_max_entries("PROFILE_COUNTS_1", profiler.count_entries)
            .map_max_entries("PROFILE_STACKS_0", profiler.stack_entries)
            .map_max_entries("PROFILE_STACKS_1", profiler.stack_entries)
            .load(OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        features.fetch_add = super::features::probe_fetch_add(&mut bpf);
        Ok(Self {
            bpf,
            attached: Vec::new(),
            features,
        })
    }

    /// What this kernel offers that changes the programs loaded.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The variant of a program that numbers data records this kernel accepts.
    fn variant(&self, name: &'static str) -> &'static str {
        match name {
            SYS_EXIT if !self.features.fetch_add => SYS_EXIT_NOFETCH,
            name => name,
        }
    }

    /// Attaches every program. Stops at the first failure of a required one: a partial set of
    /// probes would give numbers that look right and are not. Optional ones are skipped with a
    /// warning.
    pub fn attach_all(&mut self) -> Result<(), LoadError> {
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(Box::new(e)))?;
        for &(name, tracepoint) in RAW_PROGRAMS {
            let name = self.variant(name);
            let err = |source| program_error(name, tracepoint, source);
            let program: &mut BtfTracePoint = self
                .bpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?
                .try_into()
                .map_err(err)?;
            let attached = program
                .load(tracepoint, &btf)
                .and_then(|()| program.attach().map(drop));
            match attached {
                Ok(()) => self.attached.push(name),
                Err(e) if OPTIONAL_TRACEPOINTS.contains(&tracepoint) => {
                    log::info!("raw tracepoint {tracepoint} unavailable: {e}");
                }
                Err(e) => return Err(err(e)),
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

    /// Programs attached so far.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Takes the maps the running agent works with (once), after the programs are attached.
    pub fn take_maps(&mut self) -> Result<KernelMaps, LoadError> {
        Ok(KernelMaps {
            events: self.typed_map("EVENTS")?,
            sockets: self.typed_map("SOCKETS")?,
            stats: self.typed_map("STATS")?,
            programs: ProgramRuns::of(&self.bpf, &self.attached),
        })
    }

    /// Takes map `name` out of the object as its typed aya wrapper.
    pub(super) fn typed_map<T>(&mut self, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.bpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
        T::try_from(map).map_err(|source| LoadError::Map {
            name,
            source: Box::new(source),
        })
    }
}
