//! Command line: `apm-agent run` (the agent) and `apm-agent check` (the preflight).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Checked, Config, ConfigError};

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
    Run(Box<RunArgs>),
    /// Check that this machine can run the agent; exits non-zero when it cannot.
    Check,
    /// Take a CPU profile now and write it as an SVG flame graph, folded stacks or pprof.
    Profile(ProfileArgs),
}

/// Output format of `apm-agent profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Interactive flame graph (open it in a browser).
    Svg,
    /// Collapsed stacks, one `frame;frame;frame count` per line (inferno, speedscope).
    Folded,
    /// gzipped pprof protobuf (`go tool pprof`).
    Pprof,
}

/// Flags of `apm-agent profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Profile only this process (repeat for several). Without it, every process.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Profile every process (the default when no --pid is given).
    #[arg(long, conflicts_with = "pids")]
    pub all: bool,
    /// Keep only processes of this service (repeatable).
    #[arg(long = "service")]
    pub services: Vec<String>,
    /// Keep only processes running this executable file name (repeatable).
    #[arg(long = "exe")]
    pub executables: Vec<String>,
    /// How long to sample: e.g. 30s, 2m, 1500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, value_enum, default_value_t = Format::Svg)]
    pub format: Format,
    /// Output file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Samples per second on each CPU.
    #[arg(long, default_value_t = 99)]
    pub frequency: u64,
    /// Do not record kernel stacks.
    #[arg(long)]
    pub no_kernel_stacks: bool,
    /// Sample on hardware CPU cycles instead of the software CPU clock (needs a PMU).
    #[arg(long)]
    pub cycles: bool,
    /// Also use DWARF and separate debug files (/usr/lib/debug) for names: richer for
    /// stripped system libraries, more memory.
    #[arg(long)]
    pub debug_info: bool,
}

/// `30s`, `2m`, `1500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
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
    /// Do not hook OpenSSL (no TLS plaintext).
    #[arg(long, env = "APM_NO_TLS")]
    pub no_tls: bool,
    /// Which kernel programs see socket traffic: auto, sockets (6.4+), sockets-fexit (5.15+
    /// with fexit) or syscalls [default: auto].
    #[arg(long, env = "APM_CAPTURE_PATH")]
    pub capture_path: Option<String>,
    /// Turn the continuous CPU profiler off.
    #[arg(long, env = "APM_NO_PROFILING")]
    pub no_profiling: bool,
    /// CPU profiler samples per second on each CPU [default: 99].
    #[arg(long, env = "APM_PROFILE_FREQUENCY_HZ")]
    pub profile_frequency_hz: Option<u64>,
    /// Memory budget of the profile store in bytes [default: 16777216].
    #[arg(long, env = "APM_PROFILE_STORE_BYTES")]
    pub profile_store_bytes: Option<usize>,
    /// OTLP endpoint (base URL) for traces and metrics; unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP traces endpoint (full URL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,
    /// OTLP metrics endpoint (full URL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otlp_metrics_endpoint: Option<String>,
    /// OTLP protocol: http/protobuf or grpc [default: http/protobuf].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// OTLP request headers, key=value,key2=value2.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,
    /// OTLP request timeout in milliseconds [default: 10000].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT")]
    pub otlp_timeout_ms: Option<u64>,
    /// PEM CA certificate(s) trusted for https:// endpoints, besides the system roots.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_certificate: Option<std::path::PathBuf>,
    /// Metric export period in milliseconds [default: 60000].
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL")]
    pub metric_export_interval_ms: Option<u64>,
    /// Metric temporality: cumulative or delta [default: cumulative].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")]
    pub metrics_temporality: Option<String>,
    /// Histogram aggregation: exponential or explicit [default: exponential].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION")]
    pub metrics_histogram: Option<String>,
    /// Trace head sampler, as OTEL_TRACES_SAMPLER [default: parentbased_always_on].
    #[arg(long, env = "OTEL_TRACES_SAMPLER")]
    pub traces_sampler: Option<String>,
    /// TraceSampler argument (the ratio).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,
    /// Requests at least this slow (ms) are always exported [default: 1000].
    #[arg(long, env = "APM_TRACES_SLOW_MS")]
    pub traces_slow_ms: Option<u64>,
    /// Extra resource attributes for every observed service.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub resource_attributes: Option<String>,
    /// service.name for processes that set none.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub default_service_name: Option<String>,
    /// Observe only what this selector matches (repeatable; key=value: exe=GLOB, pid=N,
    /// port=N, pidns=INODE, netns=INODE, service=GLOB, or a resource attribute key=GLOB).
    #[arg(long = "include", env = "APM_INCLUDE", value_delimiter = ',')]
    pub include: Vec<String>,
    /// Never observe what this selector matches (repeatable; same syntax as --include).
    #[arg(long = "exclude", env = "APM_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Live processes in the inventory [default: 65536].
    #[arg(long, env = "APM_MAX_INVENTORY_PROCESSES")]
    pub max_inventory_processes: Option<usize>,
    /// Period of observed processes' runtime metrics in seconds, 0 = off [default: 10].
    #[arg(long, env = "APM_PROCESS_METRICS_INTERVAL_SECS")]
    pub process_metrics_interval_secs: Option<u64>,
    /// Kubernetes pod metadata: auto (when running in a pod), on or off [default: auto].
    #[arg(long, env = "APM_KUBERNETES", value_enum)]
    pub kubernetes: Option<crate::discovery::kubernetes::Mode>,
    /// Pods kept in the Kubernetes metadata cache [default: 1024].
    #[arg(long, env = "APM_KUBERNETES_MAX_PODS")]
    pub kubernetes_max_pods: Option<usize>,
}

impl RunArgs {
    /// The effective configuration (defaults, then the file, then env/flags), checked into
    /// typed values.
    pub fn into_config(self) -> Result<Checked, ConfigError> {
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
            max_kernel_sockets,
            profile_frequency_hz,
            profile_store_bytes,
            otlp_timeout_ms,
            metric_export_interval_ms,
            traces_slow_ms,
            max_inventory_processes,
            process_metrics_interval_secs,
            kubernetes,
            kubernetes_max_pods
        );
        if !self.include.is_empty() {
            cfg.include = self.include;
        }
        if !self.exclude.is_empty() {
            cfg.exclude = self.exclude;
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if self.$field.is_some() { cfg.$field = self.$field; } )* };
        }
        set_opt!(
            otlp_endpoint,
            otlp_traces_endpoint,
            otlp_metrics_endpoint,
            otlp_headers,
            otlp_certificate,
            traces_sampler_arg,
            resource_attributes,
            default_service_name
        );
        if let Some(v) = self.otlp_protocol {
            cfg.otlp_protocol = v;
        }
        if let Some(v) = self.metrics_temporality {
            cfg.metrics_temporality = v;
        }
        if let Some(v) = self.metrics_histogram {
            cfg.metrics_histogram = v;
        }
        if let Some(v) = self.traces_sampler {
            cfg.traces_sampler = v;
        }
        if self.no_profiling {
            cfg.profiling = false;
        }
        if self.no_tls {
            cfg.tls = false;
        }
        if let Some(v) = self.capture_path {
            cfg.capture_path = v;
        }
        if self.no_console {
            cfg.console = false;
        }
        cfg.check()
    }
}
