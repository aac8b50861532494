//! Loads the embedded kernel object, applies the configuration (globals and map sizes), and
//! attaches every tracepoint. Dropping [`Probes`] detaches them; so does the death of the
//! process (links are owned by file descriptors and nothing is pinned), which is why a
//! `kill -9` leaves nothing of ours attached.
use std::net::{IpAddr, SocketAddr};

use apm_common::{SockInfo, SockKey};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::ProgramError,
};

use super::{catch_up::CatchUp, features::Features, program_runs::ProgramRuns, verifier};

/// The kernel object built by build.rs (aya-build) from `apm-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apm"));

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

impl LoadError {
    /// The verifier gave up on the program as too large (`E2BIG`: "BPF program is too large",
    /// or a jump sequence too complex), rather than finding it unsafe.
    pub fn too_large(&self) -> bool {
        matches!(self, Self::Rejected { errno, .. }
            if errno.kind() == std::io::ErrorKind::ArgumentListTooLong)
    }
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
    /// The catch-up window of the `sockets-fexit` path, until it closes.
    pub catch_up: Option<CatchUp>,
}

/// The loaded object; its programs stay attached until it is dropped.
pub struct Probes {
    pub(super) bpf: Ebpf,
    pub(super) attached: Vec<&'static str>,
    pub(super) features: Features,
    /// Why the capture path in use is the one (see `attach::Probes::attach_all`).
    pub(super) capture_reason: String,
    /// The loader hook is loaded (see `uprobes::LOADER_HOOK`).
    pub(super) loader_hook: bool,
    /// The catch-up program's link, on the `sockets-fexit` path (see [`super::catch_up`]).
    pub(super) catch_up_link: Option<aya::programs::tp_btf::BtfTracePointLink>,
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
            capture_reason: String::new(),
            loader_hook: false,
            catch_up_link: None,
        })
    }

    /// What this kernel offers that changes the programs loaded.
    pub fn features(&self) -> Features {
        self.features
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
            catch_up: match self.catch_up_link.take() {
                Some(link) => Some(CatchUp::new(
                    link,
                    self.typed_map("BLOCKED_AT_ATTACH")?,
                    self.typed_map("CATCH_UP_ON")?,
                )),
                None => None,
            },
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
