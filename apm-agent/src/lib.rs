//! apm-agent as a library: every module of the agent, so that the binary (`src/main.rs`) and
//! the fuzz targets (`fuzz/`, a separate crate) link the same code. The binary is the product;
//! nothing here is a stable API.
//!
//! Without the `agent` feature (the fuzz build) only the protocol parsers, the request model
//! and the kernel-record decoder are compiled: they depend on no I/O, runtime or eBPF crate.
//! A new module that needs the agent's dependencies goes under `#[cfg(feature = "agent")]`.
#[cfg(feature = "agent")]
pub mod alerts;
#[cfg(feature = "agent")]
pub mod check;
#[cfg(feature = "agent")]
pub mod cli;
#[cfg(feature = "agent")]
pub mod config;
#[cfg(feature = "agent")]
pub mod conn;
#[cfg(feature = "agent")]
pub mod console;
#[cfg(feature = "agent")]
pub mod discovery;
#[cfg(feature = "agent")]
pub mod ebpf;
#[cfg(feature = "agent")]
pub mod export;
/// The fuzz targets' harnesses (tests and `cargo fuzz` builds only).
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
#[cfg(feature = "agent")]
pub mod metrics;
#[cfg(feature = "agent")]
pub mod os;
#[cfg(feature = "agent")]
pub mod pipeline;
#[cfg(feature = "agent")]
pub mod privileges;
#[cfg(feature = "agent")]
pub mod profiles;
pub mod protocols;
pub mod request;
#[cfg(feature = "agent")]
pub mod routes;
#[cfg(feature = "agent")]
pub mod run;
#[cfg(feature = "agent")]
pub mod server;
pub mod telemetry;
#[cfg(feature = "agent")]
pub mod tls;
#[cfg(feature = "agent")]
pub mod traces;
#[cfg(feature = "agent")]
pub mod ui;

/// Without the agent, of the eBPF module only the decoder (plain bytes to typed records, no
/// aya): its file is the same `src/ebpf/decode.rs`.
#[cfg(not(feature = "agent"))]
pub mod ebpf {
    pub mod decode;
    pub mod records;
}
