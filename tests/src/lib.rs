//! Harness for the integration tests and the benchmarks: the real agent binary, real servers
//! and clients, and a parser for what `/metrics` returns. No mocks: the kernel, the agent and
//! the servers are the real ones.
pub mod agent;
pub mod bpfmaps;
pub mod dbservers;
pub mod deploy;
pub mod faulty;
pub mod grpc;
pub mod net;
pub mod otlp;
pub mod pod;
pub mod pod_agent;
pub mod podman;
pub mod profile;
pub mod prom;
pub mod pyotlp;
pub mod servers;
pub mod webhook;
pub mod workloads;

/// Should a root-only integration test run? As root: yes. Not root: when `APM_INTEGRATION`
/// is `require` (CI, `cargo xtask test` as root) the test fails; otherwise it is skipped with a
/// loud message, never silently passed.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("APM_INTEGRATION").as_deref() != Ok("require"),
        "{test}: integration tests are required here but this is not root"
    );
    eprintln!(
        "\n!!! SKIPPED {test}: needs root and a working eBPF load (run `sudo -E cargo xtask test`)\n"
    );
    false
}

/// Path of the directory holding the test servers (tests/servers).
pub fn servers_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("servers")
}

/// A fresh, unique name for services and temp dirs of one test.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
