//! Where and how to export over OTLP: endpoints per signal, wire protocol, headers, timeout,
//! CA certificates. Built from the configuration by `config/otlp.rs`, which follows the
//! `OTEL_EXPORTER_OTLP_*` rules; the transports only read it.
use std::time::Duration;

/// A cumulative series idle for this many export intervals is no longer reported.
pub const STALE_INTERVALS: u32 = 10;

/// Which wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    pub traces_url: Option<String>,
    pub metrics_url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), read at start-up.
    pub ca_pem: Option<Vec<u8>>,
}
