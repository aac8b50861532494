//! `cargo xtask test`: everything CI runs, in order: formatting, clippy on the host crates and
//! on the eBPF crate for its own target, unit tests, each fuzz target for a few seconds, the
//! integration tests (the real agent against real servers; they need root and are required,
//! not skipped, when run as root), then the kernel matrix (`cargo xtask test-kernels`: check
//! and a smoke suite on Debian's 5.10, 6.1, 6.12 and newest 7.x kernels under qemu).
use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::{fuzz, kernels, prereq, util};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only run integration tests whose name contains this (and skip the kernel matrix).
    #[arg(long)]
    pub filter: Option<String>,
    /// Skip the kernel matrix (about 8 minutes).
    #[arg(long)]
    pub no_kernels: bool,
}

/// Integration tests run a second time with `APM_CAPTURE_PATH=syscalls`: HTTP (an app, nginx
/// under wrk, forked servers), connections opened before the agent, databases, TLS (OpenSSL
/// and Go) and process churn.
const FALLBACK_PATH_TESTS: &[&str] = &[
    "http_app",
    "http_nginx",
    "http_forked",
    "existing_processes",
    "db_postgres",
    "db_redis",
    "tls_openssl",
    "tls_go",
    "process_churn",
    // 32 iovecs per call on every path: grpcio's 24-iovec writes whole on the syscalls too.
    "grpc_python",
];

pub fn run(args: &TestArgs) -> Result<()> {
    prereq::ensure(prereq::Scope::Test)?;
    let root = util::workspace_root();
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(&root).args(args);
        c
    };
    util::run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
    util::run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "apm-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    util::run(&mut cargo(&[
        "+nightly",
        "clippy",
        "-p",
        "apm-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    util::run(&mut cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "apm-ebpf",
        "--exclude",
        "tests",
    ]))?;
    // Short runs: a parser change that panics on input close to the corpus fails here; the
    // long searches are `cargo xtask fuzz --seconds N`.
    fuzz::run_targets(fuzz::TARGETS, fuzz::CI_SECONDS)?;
    // The integration tests run the release build: the binary users run (`cargo xtask run`),
    // at the speed they get (a debug build cannot drain a saturated host's events).
    let agent = util::build_release_agent()?;
    let mut integration = cargo(&["test", "-p", "tests", "--", "--test-threads=1"]);
    if let Some(f) = &args.filter {
        integration.arg(f);
    }
    integration.env("APM_AGENT_BIN", &agent);
    if !util::is_root() {
        eprintln!(
            "\n!!! not root: integration tests need root and a working eBPF load; they will be\n\
             !!! SKIPPED, and so will the kernel matrix. Run `sudo -E cargo xtask test`.\n"
        );
        return util::run(&mut integration);
    }
    // As root nothing may be skipped: a test that cannot run fails.
    integration.env("APM_INTEGRATION", "require");
    crate::image::for_tests(&agent, &mut integration)?;
    util::run(&mut integration)?;
    if args.filter.is_none() {
        // The same tests that matter on the other capture path: `auto` chose the socket layer
        // on this kernel; the syscall path is what kernels before 6.4 run.
        for target in FALLBACK_PATH_TESTS {
            util::run(
                cargo(&[
                    "test",
                    "-p",
                    "tests",
                    "--test",
                    target,
                    "--",
                    "--test-threads=1",
                ])
                .env("APM_AGENT_BIN", &agent)
                .env("APM_INTEGRATION", "require")
                .env("APM_CAPTURE_PATH", "syscalls"),
            )?;
        }
    }
    if args.filter.is_some() || args.no_kernels {
        eprintln!("kernel matrix skipped (--filter or --no-kernels)");
        return Ok(());
    }
    kernels::run(&kernels::TestKernelsArgs::default())
}
