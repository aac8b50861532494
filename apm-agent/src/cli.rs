//! Command line: `apm-agent run` (the agent) and `apm-agent check` (the preflight).
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// Zero-instrumentation APM agent: HTTP RED metrics from eBPF socket capture.
#[derive(Debug, Parser)]
#[command(name = "apm-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH).
    Run(RunArgs),
    /// Check that this machine can run the agent; exits non-zero when it cannot.
    Check,
}

/// Flags of `apm-agent run`. Each overrides its environment variable, which overrides the
/// config file, which overrides the default (see `config.rs` for defaults).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long, env = "APM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listener address for /metrics, /healthz, /readyz, /api/routes [default: 127.0.0.1:9464].
    #[arg(long, env = "APM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Bytes captured per socket syscall, 1..=4096 [default: 4096].
    #[arg(long, env = "APM_CAPTURE_BYTES")]
    pub capture_bytes: Option<u32>,
    /// Kernel ring buffer size in bytes, a power of two [default: 8388608].
    #[arg(long, env = "APM_RING_BUFFER_BYTES")]
    pub ring_buffer_bytes: Option<u32>,
    /// Bytes pending in the ring buffer that wake the agent [default: 65536].
    #[arg(long, env = "APM_WAKEUP_BYTES")]
    pub wakeup_bytes: Option<u32>,
    /// Apdex threshold T in milliseconds [default: 500].
    #[arg(long, env = "APM_APDEX_THRESHOLD_MS")]
    pub apdex_threshold_ms: Option<u64>,
    /// Percentile window and console period in seconds [default: 10].
    #[arg(long, env = "APM_WINDOW_SECS")]
    pub window_secs: Option<u64>,
    /// Do not print the console table.
    #[arg(long, env = "APM_NO_CONSOLE")]
    pub no_console: bool,
    /// Distinct routes per service before the overflow route [default: 500].
    #[arg(long, env = "APM_MAX_ROUTES_PER_SERVICE")]
    pub max_routes_per_service: Option<usize>,
    /// Exported RED series in all [default: 20000].
    #[arg(long, env = "APM_MAX_SERIES")]
    pub max_series: Option<usize>,
    /// Connections followed at once [default: 65536].
    #[arg(long, env = "APM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Sockets tracked by the kernel at once [default: 65536].
    #[arg(long, env = "APM_MAX_KERNEL_SOCKETS")]
    pub max_kernel_sockets: Option<u32>,
}

impl RunArgs {
    /// The effective configuration: defaults, then the file, then env/flags.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { cfg.$field = v; } )* };
        }
        set!(
            listen,
            capture_bytes,
            ring_buffer_bytes,
            wakeup_bytes,
            apdex_threshold_ms,
            window_secs,
            max_routes_per_service,
            max_series,
            max_connections,
            max_kernel_sockets
        );
        if self.no_console {
            cfg.console = false;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
