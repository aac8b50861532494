//! `cargo xtask <task>`: the project's set-up, build, run, test and benchmark tasks.
//!
//! `run`, `test` and `fuzz` first install whatever is missing (toolchain pieces, bpf-linker,
//! cargo-fuzz, Debian packages), so that a fresh machine needs nothing else.
mod bench;
mod fuzz;
mod image;
mod kernels;
mod prereq;
mod run;
mod test;
mod util;
mod venv;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the prerequisites only (idempotent).
    Setup,
    /// Build the agent (release) and run it as root; extra arguments go to `apm-agent run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Everything CI runs: fmt, clippy (host and eBPF), unit tests, fuzzing, integration tests.
    Test(test::TestArgs),
    /// Fuzz the protocol parsers, the SQL normalizer and the record decoder (cargo-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks (reports, not pass/fail).
    Bench(bench::BenchArgs),
    /// The agent on stock Debian kernels (5.10, 6.1, 6.12, 7.x) under qemu and on this
    /// machine's kernel: `apm-agent check` and a smoke suite on each, as a table.
    TestKernels(kernels::TestKernelsArgs),
    /// The agent's container image with no registry: the host-built binary on a Debian base
    /// made locally (debootstrap, cached in podman's storage); prints the image's name last.
    Image,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    put_cargo_bin_on_path();
    match cli.task {
        Task::Setup => prereq::ensure(prereq::Scope::Test),
        Task::Run { args } => run::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::TestKernels(args) => kernels::run(&args),
        Task::Image => image::run_task(),
    }
}

/// bpf-linker is installed in cargo's bin directory, which a non-login shell (CI, sudo) may
/// not have on PATH; rustc must find it to link the kernel object.
fn put_cargo_bin_on_path() {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")));
    let Some(bin) = home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut parts: Vec<_> = std::env::split_paths(&path).collect();
    parts.insert(0, bin);
    if let Ok(joined) = std::env::join_paths(parts) {
        // SAFETY: called at start-up, before this process starts any thread.
        unsafe { std::env::set_var("PATH", joined) };
    }
}
