//! Aggregation of requests into metrics.
pub mod exponential;
pub mod otel;
pub mod red;
