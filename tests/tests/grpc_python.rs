//! gRPC between two Python processes (grpcio's C core: cleartext HTTP/2 with prior knowledge,
//! HPACK with its dynamic table, PINGs and grpcio's own SETTINGS), both ends on one host and
//! uninstrumented: `tests/servers/grpc_echo.py serve` and `... call` on ONE connection, the
//! calls of each method one after the other, then five Slow calls in flight together. Each
//! method ends differently: OK with a message, NOT_FOUND as a trailers-only response (one
//! HEADERS frame carrying `grpc-status` and END_STREAM), UNKNOWN from a handler that raised.
//!
//! The agent must count every call once, under its method and status name, in the RPC
//! duration histograms on both sides (and never as an HTTP request), leave its garbage
//! counters alone, and export one span per call and side with the RPC attributes, the span
//! status of the OpenTelemetry gRPC conventions, and the client span as the server span's
//! parent. The test itself is shared with the Node one: tests/src/grpc.rs.
use anyhow::Result;
use tests::{grpc, require_root};

#[test]
fn grpc_calls_per_method_and_status_on_both_sides() -> Result<()> {
    if !require_root("grpc_calls_per_method_and_status_on_both_sides") {
        return Ok(());
    }
    grpc::calls_per_method_and_status_on_both_sides(grpc::Echo::Python)
}
