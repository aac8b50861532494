//! Sinks: where aggregated data leaves the agent.
pub mod otlp;
pub mod prometheus;
