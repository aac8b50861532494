//! Everything that touches aya: loading and attaching the kernel programs, mounting tracefs,
//! reading the ring buffer, seeding the socket table, and the one safe decoder for kernel
//! records. Nothing outside this module knows about eBPF.
pub mod decode;
pub mod features;
pub mod load;
pub mod profiler;
pub mod seed;
pub mod tracefs;
pub mod uprobes;
pub mod verifier;

pub mod drain;

pub use load::{KernelMaps, LoadError, LoadOptions, Probes, ProfilerLoad};
