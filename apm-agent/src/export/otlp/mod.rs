//! OTLP export: encoding, transports, retries and the export tasks.
pub mod encode_metrics;
pub mod encode_runtime;
pub mod encode_traces;
pub mod metrics_task;
pub mod retry;
pub mod settings;
pub mod stats;
pub mod traces_task;
pub mod transport;
