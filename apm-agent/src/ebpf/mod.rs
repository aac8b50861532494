//! Everything that touches aya: loading and attaching the kernel programs, mounting tracefs,
//! the ring buffer and the kernel tables, seeding the socket table, and the one safe decoder
//! for kernel records. A leaf adapter: it imports only `apm-common`, aya and the OS helpers
//! (`crate::os`), never the stages that consume what it reads (the event loop in `run/` does
//! the wiring).
pub mod attach;
pub mod capture_path;
pub mod catch_up;
pub mod decode;
pub mod features;
pub mod load;
pub mod profiler;
pub mod program_runs;
pub mod records;
pub mod seed;
pub mod tracefs;
pub mod uprobes;
pub mod verifier;

pub use load::{KernelMaps, LoadError, LoadOptions, Probes, ProfilerLoad};
