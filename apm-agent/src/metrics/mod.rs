//! Aggregation of requests into metrics.
pub mod db;
pub mod dependencies;
pub mod exponential;
pub mod n_plus_one;
pub mod otel;
pub mod process_runtime;
pub mod red;
pub mod stats;
