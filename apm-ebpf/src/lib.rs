//! Host-side stub. The kernel programs live in `main.rs` and are built only for the BPF target
//! (by `apm-agent/build.rs` through aya-build). `apm-agent` lists this crate as a
//! build-dependency so that cargo rebuilds the agent when the kernel sources change.
#![no_std]
