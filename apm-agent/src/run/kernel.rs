//! Loading and attaching the kernel programs for `apm-agent run`, and seeding the socket
//! table with the connections that were open before the agent started.
use std::sync::atomic::Ordering::Relaxed;

use super::{RunError, kernel_stats::KernelStats};
use crate::{
    config::Config,
    ebpf::{
        KernelMaps, LoadOptions, Probes, ProfilerLoad,
        capture_path::CapturePath,
        profiler::{ProfilerMaps, SamplingOptions},
        seed,
    },
};

/// The loaded kernel object and the maps the agent's threads read.
pub struct Kernel {
    pub probes: Probes,
    pub maps: KernelMaps,
    /// The CPU sampler's maps, when profiling is on.
    pub profiler: Option<ProfilerMaps>,
}

/// Loads and attaches every program the configuration asks for.
pub fn attach(
    cfg: &Config,
    capture_path: CapturePath,
    stats: &KernelStats,
) -> Result<Kernel, RunError> {
    let mut probes = Probes::load(&LoadOptions {
        agent_tgid: std::process::id(),
        capture_bytes: cfg.capture_bytes,
        ring_buffer_bytes: cfg.ring_buffer_bytes,
        wakeup_bytes: cfg.wakeup_bytes,
        max_sockets: cfg.max_kernel_sockets,
        listen: Some(cfg.listen),
        library_events: cfg.tls,
        profiler: cfg.profiling.then_some(ProfilerLoad {
            count_entries: cfg.profile_stack_entries.saturating_mul(2),
            stack_entries: cfg.profile_stack_entries,
            kernel_stacks: cfg.profile_kernel_stacks,
            pid_filter: !cfg.profile_pids.is_empty(),
        }),
    })?;
    // Attach before mapping the ring buffer: attaching parses the kernel BTF (several MB,
    // freed afterwards), and the two together would set the agent's peak memory.
    probes.attach_all(capture_path)?;
    let profiler = if cfg.profiling {
        let mut pmaps = probes.attach_profiler(SamplingOptions {
            frequency_hz: cfg.profile_frequency_hz,
            hardware_cycles: cfg.profile_hardware_cycles,
        })?;
        pmaps.set_pids(&cfg.profile_pids)?;
        Some(pmaps)
    } else {
        None
    };
    let mut maps = probes.take_maps()?;
    let seeded = seed::seed_existing(&mut maps.sockets, std::process::id(), cfg.listen.port());
    // After seeding: a blocked thread's call is copied only when its socket is in the table.
    if let Some(catch_up) = &mut maps.catch_up {
        let opened = catch_up.open(std::process::id());
        stats.record_catch_up(opened);
        if opened.closed {
            maps.catch_up = None;
        }
        log::info!(
            "sockets-fexit catch-up: {} threads blocked in a socket send or receive at attach{}",
            opened.listed,
            if opened.closed {
                ""
            } else {
                ", watched at their syscall exit"
            }
        );
    }
    stats
        .programs_attached
        .store(probes.attached().len() as u64, Relaxed);
    stats
        .capture_path
        .store(probes.features().capture.index() as u64, Relaxed);
    stats
        .seeded_connections
        .store(u64::from(seeded.seeded), Relaxed);
    log::info!(
        "attached {} kernel programs (capture path {}: {}; iovecs per call: {}); {} existing \
         connections seeded; metrics on http://{}/metrics",
        probes.attached().len(),
        probes.features().capture,
        probes.capture_reason(),
        probes.iovecs_per_call(),
        seeded.seeded,
        cfg.listen
    );
    if seeded.table_full > 0 {
        log::warn!(
            "{} existing connections not seeded: kernel socket table full",
            seeded.table_full
        );
    }
    Ok(Kernel {
        probes,
        maps,
        profiler,
    })
}
