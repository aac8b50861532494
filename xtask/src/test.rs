//! `cargo xtask test`: everything CI runs, in order: formatting, clippy on the host crates and
//! on the eBPF crate for its own target, unit tests, each fuzz target for a few seconds, then
//! the integration tests (the real agent against real servers; they need root and are
//! required, not skipped, when run as root).
use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::{fuzz, prereq, util};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only run integration tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

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
    if util::is_root() {
        // As root nothing may be skipped: a test that cannot run fails.
        integration.env("APM_INTEGRATION", "require");
    } else {
        eprintln!(
            "\n!!! not root: integration tests need root and a working eBPF load; they will be\n\
             !!! SKIPPED. Run `sudo -E cargo xtask test` to run them.\n"
        );
    }
    util::run(&mut integration)
}
