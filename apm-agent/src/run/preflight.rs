//! Preflight of `apm-agent run`: what must hold before anything is built or loaded
//! (privileges, tracefs, the listener's port), and the process-wide settings made once.
use std::{io, net::TcpListener};

use super::RunError;
use crate::{
    config::Config,
    discovery::{
        resource::{self, parse_resource_attributes},
        service_name,
    },
    ebpf::tracefs,
    privileges,
};

/// Checks privileges, mounts tracefs when needed, and binds the listener (a busy port fails
/// fast, before anything is loaded).
pub fn prepare(cfg: &Config) -> Result<TcpListener, RunError> {
    let mut needed = privileges::REQUIRED.to_vec();
    if tracefs::find().is_none() {
        needed.push(privileges::MOUNT);
    }
    let missing = privileges::missing(privileges::effective(), &needed);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|n| format!("{} ({})", n.name, n.why))
            .collect();
        return Err(RunError::Privileges(names.join(", ")));
    }
    if cfg.profiling && cfg.profile_kernel_stacks && !privileges::kernel_symbols_visible() {
        let n = privileges::KERNEL_SYMBOLS;
        log::warn!(
            "/proc/kallsyms hides kernel addresses: kernel frames in profiles stay unnamed \
             (grant {} to {})",
            n.name,
            n.why
        );
    }
    raise_memlock();
    apply_naming_defaults(cfg);
    let (root, state) = tracefs::ensure().map_err(RunError::Tracefs)?;
    if state == tracefs::TracefsState::MountedNow {
        log::info!("mounted tracefs at {}", root.display());
    }
    let listen_error = |source| RunError::Listen {
        addr: cfg.listen,
        source,
    };
    let listener = TcpListener::bind(cfg.listen).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    Ok(listener)
}

/// The agent's `OTEL_SERVICE_NAME` (or the `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`)
/// names processes that declare none; its other resource attributes go on every resource.
fn apply_naming_defaults(cfg: &Config) {
    let attributes = cfg.resource_attributes.as_deref().unwrap_or("");
    if !attributes.trim().is_empty() {
        resource::set_agent_attributes(attributes);
    }
    let from_attributes = parse_resource_attributes(attributes)
        .into_iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v);
    if let Some(name) = cfg.default_service_name.clone().or(from_attributes) {
        log::info!("processes that declare no service name are named {name:?}");
        service_name::set_default(&name);
    }
}

/// BPF memory is charged to the cgroup on current kernels; older ones need RLIMIT_MEMLOCK.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels that charge BPF memory to cgroups",
            io::Error::last_os_error()
        );
    }
}
