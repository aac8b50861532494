//! gRPC between two Node processes on @grpc/grpc-js: pure JavaScript over Node's own http2
//! module, i.e. nghttp2 (another HTTP/2 framing and HPACK encoder than grpcio's C core, with
//! its own SETTINGS, window updates and header order), cleartext with prior knowledge, both
//! ends on one host (127.0.0.1) and uninstrumented: `tests/servers/grpc_echo.js serve` and
//! `... call` on ONE connection, the calls of each method one after the other, then five Slow
//! calls in flight together. Each method ends differently: OK with a message, NOT_FOUND as a
//! trailers-only response (grpc-js answers a status sent before any message with one HEADERS
//! frame carrying `:status`, `grpc-status` and END_STREAM), UNKNOWN from a handler that
//! failed with a plain `Error`.
//!
//! The same expectations as the Python test (tests/src/grpc.rs): every call counted once per
//! side under its method and status, no HTTP series, garbage counters unmoved, one span per
//! call and side with the RPC attributes and status, the client span the server span's
//! parent.
use anyhow::Result;
use tests::{grpc, require_root};

#[test]
fn grpc_js_calls_per_method_and_status_on_both_sides() -> Result<()> {
    if !require_root("grpc_js_calls_per_method_and_status_on_both_sides") {
        return Ok(());
    }
    grpc::calls_per_method_and_status_on_both_sides(grpc::Echo::Node)
}
