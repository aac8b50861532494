//! The kernel-record decoder (`ebpf::decode::decode`): see `apm-agent/src/fuzzing.rs` for the input
//! format and the invariants.
#![no_main]
use apm_agent::fuzzing::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| decode(data));
