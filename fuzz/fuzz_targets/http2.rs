//! The HTTP/2 parser: see `apm-agent/src/fuzzing.rs` for the input format and the invariants.
#![no_main]
use apm_agent::{fuzzing::protocol, request::Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol(Protocol::Http2, data);
});
