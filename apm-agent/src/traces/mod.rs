//! Spans from requests: trace context (W3C headers, same-thread parenting, same-host pairing
//! of the two ends of a connection), sampling, and the assembly buffer that holds finished
//! spans briefly so that late links can still be applied. Nothing here knows about eBPF or
//! about OTLP.
pub mod assembler;
pub mod build;
pub mod hold;
pub mod sampling;
pub mod span;
pub mod stats;
pub mod tracer;
