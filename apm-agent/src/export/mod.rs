//! Sinks: where aggregated data leaves the agent.
pub mod prometheus;
