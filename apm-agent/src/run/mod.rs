//! `apm-agent run` and `apm-agent profile`: the layer that owns the threads, the event loop,
//! the start-up order and the shutdown. It wires the kernel adapter (`ebpf/`) to the stages
//! (pipeline, aggregations, sinks); nothing below it starts a thread of the agent's own.
//!
//! `run` goes: preflight (privileges, tracefs, the listener's port) -> components (the
//! aggregations, the runtime with the listener and the export tasks, Kubernetes, the profile
//! store) -> kernel (load, attach, seed) -> spawn (TLS hooking, the event loop, the profiler)
//! -> run until a signal -> shutdown (threads joined, programs detached, last exports sent).
//! The configuration arrives checked (`config::Checked`): nothing here can fail on a setting's
//! spelling after the programs are attached.
use std::{io, net::SocketAddr};

use crate::{config::Checked, ebpf::LoadError};

pub mod components;
pub mod cpu_profiler;
pub mod event_loop;
pub mod kernel;
pub mod kernel_stats;
pub mod preflight;
pub mod profile_once;
pub mod shutdown;
pub mod spawn;
pub mod stack_sampler;
pub mod stats;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("insufficient privileges: missing {0}; run as root (sudo apm-agent run)")]
    Privileges(String),
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Tracefs(#[source] io::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("OTLP exporter: {0}")]
    Export(#[from] crate::export::otlp::transport::SendError),
    #[error(transparent)]
    Webhook(#[from] crate::alerts::webhook::WebhookError),
    #[error("the event thread stopped abnormally")]
    EventThread,
}

/// Runs the agent until a termination signal.
pub fn run(checked: Checked) -> Result<(), RunError> {
    let listener = preflight::prepare(&checked.cfg)?;
    let mut components = components::Components::build(&checked, listener)?;
    let kernel = kernel::attach(&checked.cfg, checked.capture_path, &components.stats.kernel)?;
    let running = spawn::start(&checked, &mut components, kernel)?;
    shutdown::run_until_signal(&checked.cfg, components, running)
}
