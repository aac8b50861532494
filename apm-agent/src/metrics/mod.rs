//! Aggregation of requests into metrics.
pub mod red;
