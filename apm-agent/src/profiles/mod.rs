//! The continuous CPU profiler, from drained kernel samples to flame graphs: process memory
//! maps, symbolization (blazesym; JIT code from perf maps), one profile model, and the outputs (folded stacks, SVG,
//! pprof) and the bounded store behind the web UI. Nothing here knows about aya.
pub mod collector;
pub mod flamegraph;
pub mod folded;
pub mod maps;
pub mod model;
pub mod perf_map;
pub mod pprof;
pub mod stats;
pub mod store;
pub mod symbolize;
