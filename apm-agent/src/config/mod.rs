//! The agent's configuration: one serde struct, every field documented with its default.
//!
//! Precedence: command-line flags > environment (`APM_*`) > config file (`--config`, TOML)
//! > defaults. Flags and environment variables are declared in `cli.rs`.
//!
//! Before anything is loaded into the kernel, [`Config::check`] (`checked.rs`) turns every
//! string of it (selectors, OTLP settings, the trace sampler) into typed values, or names the
//! bad key and value.
use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

mod checked;
mod otlp;

pub use checked::Checked;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    /// A setting's value is not one of the values it allows.
    #[error("invalid setting {key} = {value:?}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

/// Everything the agent can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Local listener for `/metrics`, `/healthz`, `/readyz`, `/api/routes`.
    /// Default `127.0.0.1:9464` (loopback only: nothing leaves the host unless asked).
    pub listen: SocketAddr,
    /// Bytes copied from each socket read/write (1..=4096). Default 4096: enough for large
    /// header blocks and for several pipelined responses arriving in one read. Only
    /// `min(bytes moved, capture_bytes)` is ever copied, so small exchanges cost the same.
    pub capture_bytes: u32,
    /// Which kernel programs see socket traffic: `sockets` (programs at the socket layer
    /// only, on its 6.4+ tracepoints), `sockets-fexit` (the same on fexit of the socket
    /// functions: 5.15+ with fentry/fexit), `syscalls` (a program on every syscall, filtering
    /// by number: any kernel) or `auto` (the first of those the kernel allows). Default
    /// `auto`.
    pub capture_path: String,
    /// Kernel ring buffer size in bytes (a power of two). Default 8 MiB: room for bursts.
    pub ring_buffer_bytes: u32,
    /// Bytes waiting in the ring buffer that wake the agent to drain a batch (at most an
    /// eighth of the ring). Smaller batches mean shorter bursts of agent work on CPUs the
    /// workload needs; larger ones mean fewer wake-ups. Default 64 KiB.
    pub wakeup_bytes: u32,
    /// Sockets the kernel tracks at once. Default 65536.
    pub max_kernel_sockets: u32,
    /// Connections the agent follows at once. Default 65536.
    pub max_connections: usize,
    /// Processes that showed traffic the agent keeps names (and RED ids, resources) for.
    /// Default 16384.
    pub max_processes: usize,
    /// Live processes in the inventory (every process on the host, kept from exec and exit
    /// events after one /proc scan at start); more are counted in
    /// `apm_map_overflows_total{map="process_inventory"}` and observed without a cached
    /// selector verdict. Default 65536.
    pub max_inventory_processes: usize,
    /// Processes named at exec per second (three /proc reads each, while the process
    /// surely runs, so short-lived clients get their declared names); past it, a process is
    /// named at its first request. Bounds the agent's cost on fork-heavy hosts. Default 200;
    /// 0 names every process at its first request.
    pub exec_names_per_sec: u32,
    /// Observe only what one of these selectors matches (empty: everything). `key=value`:
    /// `exe=GLOB` (file name, or full path when it holds a `/`), `pid=N`, `port=N` (a
    /// connection's local or remote port), `pidns=INODE`, `netns=INODE`, `service=GLOB`, or
    /// any resource attribute `key=GLOB` (`k8s.namespace.name=shop`). Default: empty.
    pub include: Vec<String>,
    /// Never observe what these selectors match (same syntax as `include`; exclusion wins).
    /// Excluded connections are muted in the kernel. Default: empty.
    pub exclude: Vec<String>,
    /// Period of the runtime metrics of observed processes (`process.cpu.time`,
    /// `process.memory.usage`, ...), read from /proc, in seconds; 0 turns them off.
    /// Default 10.
    pub process_metrics_interval_secs: u64,
    /// Observed processes whose runtime metrics are read at most; more are counted in
    /// `apm_map_overflows_total{map="process_metrics"}`. Default 1000.
    pub max_process_metrics: usize,
    /// Distinct services. Default 1000.
    pub max_services: usize,
    /// Distinct route templates per service; more go to `/{overflow}`. Default 500.
    pub max_routes_per_service: usize,
    /// Exported RED series in all. Default 20000.
    pub max_series: usize,
    /// Distinct server addresses of client calls. Default 1000.
    pub max_server_addresses: usize,
    /// Routes with a percentile window (hdrhistogram, a few KiB each). Default 2000.
    pub max_route_windows: usize,
    /// Distinct normalized statements (SQL, cache commands) per service; more share the
    /// `{overflow}` statement. Default 200.
    pub max_statements_per_service: usize,
    /// Distinct database operation, table, namespace and error-code names, all services
    /// together; more are named `_OTHER`. Default 4096.
    pub max_db_names: usize,
    /// Rows of each slow-query ranking per service (`/api/slow-queries`, `/metrics`).
    /// Default 10.
    pub slow_queries_top: usize,
    /// Executions of one statement within one server request that flag it as an N+1.
    /// Default 5.
    pub n_plus_one_threshold: u32,
    /// Apdex threshold T in milliseconds. Default 500.
    pub apdex_threshold_ms: u64,
    /// Length of a percentile window, and of the console table's period, in seconds. Default 10.
    pub window_secs: u64,
    /// The alert rules the agent evaluates on its windows (`[alerts]` in the config file).
    pub alerts: crate::alerts::AlertsConfig,
    /// Print the busiest routes to stdout every window. Default true.
    pub console: bool,
    /// Rows of the console table. Default 10.
    pub console_rows: usize,
    /// Data segments tried before a connection is declared unclassified. Default 4.
    pub detect_attempts: u8,
    /// Silence after which a response with unknowable end is closed, in seconds. Default 30.
    pub response_idle_timeout_secs: u64,
    /// Longest wait before the ring buffer is drained, in milliseconds. Default 50.
    pub poll_interval_ms: u64,

    /// TLS plaintext through uprobes on every OpenSSL library processes map. Default true.
    pub tls: bool,
    /// Distinct OpenSSL library files hooked (containers bring their own); more are counted
    /// in `apm_map_overflows_total{map="tls_libraries"}`. Default 64.
    pub max_tls_libraries: usize,

    /// Continuous CPU profiling of every process (flame graphs at `/profiles`). Default true.
    pub profiling: bool,
    /// Samples per second on each CPU. Default 99.
    pub profile_frequency_hz: u64,
    /// Sample on hardware CPU cycles instead of the software CPU clock (needs a PMU).
    /// Default false.
    pub profile_hardware_cycles: bool,
    /// Record kernel stacks under user stacks. Default true.
    pub profile_kernel_stacks: bool,
    /// Profile only these pids (filtered in the kernel). Default: all.
    pub profile_pids: Vec<u32>,
    /// Profile only processes running these executables (file names). Default: all.
    pub profile_executables: Vec<String>,
    /// Profile only these services. Default: all.
    pub profile_services: Vec<String>,
    /// Memory budget of the profile store; the oldest data is evicted first. Default 16 MiB.
    pub profile_store_bytes: usize,
    /// Length of a profile time bucket, in seconds. Default 10.
    pub profile_bucket_secs: u64,
    /// How often samples are drained and symbolized, in seconds. Default 2.
    pub profile_drain_secs: u64,
    /// Entries of each of the kernel's two stack maps (about 1 KiB of kernel memory each).
    /// Default 8192.
    pub profile_stack_entries: u32,
    /// Symbolize with DWARF and separate debug files (`/usr/lib/debug`) as well as ELF symbol
    /// tables: names the internal functions of stripped system libraries, at a memory cost
    /// (measured: about 14 MB more with glibc's debug file). Default false.
    pub profile_debug_info: bool,
    /// OTLP base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`). For HTTP/protobuf, `/v1/traces`
    /// and `/v1/metrics` are appended; for gRPC it is used as it is. Unset (the default):
    /// nothing is exported, the local listener is the only output.
    pub otlp_endpoint: Option<String>,
    /// Traces endpoint, used as it is (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub otlp_traces_endpoint: Option<String>,
    /// Metrics endpoint, used as it is (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
    pub otlp_metrics_endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc` (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub otlp_protocol: String,
    /// Extra request headers, `key=value,key2=value2` (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an
    /// API key for the backend.
    pub otlp_headers: Option<String>,
    /// Time allowed for one export request in milliseconds (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    /// Default 10000.
    pub otlp_timeout_ms: u64,
    /// PEM file of the CA certificate(s) that sign the endpoint's TLS certificate
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`), trusted on top of the system's roots; for `https://`
    /// endpoints with a private CA.
    pub otlp_certificate: Option<std::path::PathBuf>,
    /// Period of metric export in milliseconds (`OTEL_METRIC_EXPORT_INTERVAL`). Default 60000.
    pub metric_export_interval_ms: u64,
    /// `cumulative` (default) or `delta` temporality of exported metrics.
    pub metrics_temporality: String,
    /// `exponential` (default) or `explicit` (the OTel HTTP bucket advice) histograms.
    pub metrics_histogram: String,
    /// Head sampler (`OTEL_TRACES_SAMPLER`). Default `parentbased_always_on`.
    pub traces_sampler: String,
    /// TraceSampler argument: the ratio for `*traceidratio` (`OTEL_TRACES_SAMPLER_ARG`).
    pub traces_sampler_arg: Option<String>,
    /// Requests at least this slow (milliseconds) are always exported, whatever the head
    /// sampler said; errors always are. Default 1000.
    pub traces_slow_ms: u64,
    /// Spans waiting for export at most; beyond, spans are dropped and counted. Default 8192.
    pub export_queue_spans: usize,
    /// Extra resource attributes for every observed service (`OTEL_RESOURCE_ATTRIBUTES` of
    /// the agent), below each process's own.
    pub resource_attributes: Option<String>,
    /// `service.name` for processes that set none (`OTEL_SERVICE_NAME` of the agent); unset:
    /// named from their command line.
    pub default_service_name: Option<String>,
    /// Kubernetes metadata (`k8s.*` resource attributes, workload names as service names):
    /// `auto` (the default: when the agent runs in a pod, i.e. `KUBERNETES_SERVICE_HOST` is
    /// set), `on`, or `off`. Needs get/list/watch on pods and get on replicasets.
    pub kubernetes: crate::discovery::kubernetes::Mode,
    /// Pods of this node kept in the Kubernetes metadata cache; more are counted in
    /// `apm_k8s_pods_overflow_total` and their processes get no `k8s.*` attributes. Default
    /// 1024 (kubelet's default limit is 110 pods per node).
    pub kubernetes_max_pods: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            capture_bytes: 4096,
            capture_path: "auto".to_owned(),
            ring_buffer_bytes: 8 << 20,
            wakeup_bytes: 64 << 10,
            max_kernel_sockets: 65_536,
            max_connections: 65_536,
            max_processes: 16_384,
            max_inventory_processes: 65_536,
            exec_names_per_sec: 200,
            include: Vec::new(),
            exclude: Vec::new(),
            process_metrics_interval_secs: 10,
            max_process_metrics: 1000,
            max_services: 1000,
            max_routes_per_service: 500,
            max_series: 20_000,
            max_server_addresses: 1000,
            max_route_windows: 2000,
            max_statements_per_service: 200,
            max_db_names: 4096,
            slow_queries_top: 10,
            n_plus_one_threshold: 5,
            apdex_threshold_ms: 500,
            window_secs: 10,
            alerts: crate::alerts::AlertsConfig::default(),
            console: true,
            console_rows: 10,
            detect_attempts: 4,
            response_idle_timeout_secs: 30,
            poll_interval_ms: 50,
            tls: true,
            max_tls_libraries: 64,
            profiling: true,
            profile_frequency_hz: 99,
            profile_hardware_cycles: false,
            profile_kernel_stacks: true,
            profile_pids: Vec::new(),
            profile_executables: Vec::new(),
            profile_services: Vec::new(),
            profile_store_bytes: 16 << 20,
            profile_bucket_secs: 10,
            profile_drain_secs: 2,
            profile_stack_entries: 8192,
            profile_debug_info: false,
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_metrics_endpoint: None,
            otlp_protocol: "http/protobuf".to_owned(),
            otlp_headers: None,
            otlp_timeout_ms: 10_000,
            otlp_certificate: None,
            metric_export_interval_ms: 60_000,
            metrics_temporality: "cumulative".to_owned(),
            metrics_histogram: "exponential".to_owned(),
            traces_sampler: "parentbased_always_on".to_owned(),
            traces_sampler_arg: None,
            traces_slow_ms: 1000,
            export_queue_spans: 8192,
            resource_attributes: None,
            default_service_name: None,
            kubernetes: crate::discovery::kubernetes::Mode::Auto,
            kubernetes_max_pods: 1024,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let cfg: Config = toml::from_str("listen = \"127.0.0.1:1234\"\ncapture_bytes = 256\n")
            .unwrap_or_default();
        assert_eq!(cfg.listen.port(), 1234);
        assert_eq!(cfg.capture_bytes, 256);
        assert_eq!(cfg.window_secs, 10);
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let cfg: Config =
            toml::from_str("kubernetes = \"off\"\nkubernetes_max_pods = 64\n").unwrap_or_default();
        assert_eq!(cfg.kubernetes, crate::discovery::kubernetes::Mode::Off);
        assert_eq!(cfg.kubernetes_max_pods, 64);
        assert!(toml::from_str::<Config>("kubernetes = \"maybe\"").is_err());
    }
}
