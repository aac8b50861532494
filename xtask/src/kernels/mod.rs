//! `cargo xtask test-kernels`: the agent on the kernels users run.
//!
//! Fetches stock Debian kernels (5.10, 6.1, 6.12, the newest 7.x by default) through a
//! private apt source list, caches them, boots each under qemu (software emulation) on the
//! host's own files, and runs `apm-agent check` and a smoke suite of integration tests inside
//! (see [`smoke::SMOKE`]); the host kernel runs the same steps natively. Prints a table of
//! kernel x capture path x result, with the verifier's own words for a rejected program, and
//! fails when any step failed anywhere.
mod archive;
mod image;
mod report;
mod smoke;
mod vm;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{prereq, util};

/// Where downloaded and unpacked kernels are kept between runs (outside the build tree, so a
/// fresh clone or `cargo clean` does not fetch them again).
const CACHE: &str = "/var/cache/apm-agent/kernels";
/// The kernel lines tested by default: Debian 11's (Amazon Linux 2's line), Debian 12's
/// default (Amazon Linux 2023's line), Debian 12's newer kernel, the newest Debian builds,
/// and this machine's own.
const DEFAULT_KERNELS: &str = "5.10,6.1,6.12,7,host";
/// Guest memory (MiB): the agent, a database server and Python clients at once.
const MEMORY_MB: u32 = 2048;
/// A guest that has not powered off by then is stopped (a smoke suite takes about 2 minutes).
const TIMEOUT_S: u64 = 1200;

#[derive(Debug, Clone, Args)]
pub struct TestKernelsArgs {
    /// Kernel lines to run, comma-separated: `5.10`, `6.1`, `6.12`, `7` (the newest 7.x),
    /// any other Debian line, and `host` (this machine's kernel, natively).
    #[arg(long, default_value = DEFAULT_KERNELS, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Only `apm-agent check` on each kernel (about 10 s per kernel), no smoke tests.
    #[arg(long)]
    pub check_only: bool,
    /// Only these smoke tests (labels of the table, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = MEMORY_MB)]
    pub memory_mb: u32,
    /// Give up on a guest after this many seconds.
    #[arg(long, default_value_t = TIMEOUT_S)]
    pub timeout_s: u64,
}

impl Default for TestKernelsArgs {
    /// What `cargo xtask test` (CI) runs: every default kernel, every smoke test.
    fn default() -> Self {
        Self {
            kernels: DEFAULT_KERNELS.split(',').map(str::to_owned).collect(),
            check_only: false,
            tests: Vec::new(),
            memory_mb: MEMORY_MB,
            timeout_s: TIMEOUT_S,
        }
    }
}

pub fn run(args: &TestKernelsArgs) -> Result<()> {
    prereq::ensure(prereq::Scope::Test)?;
    if !util::is_root() {
        bail!(
            "test-kernels loads kernel programs on the host kernel and runs qemu: run it as root"
        );
    }
    let tests: Vec<&smoke::SmokeTest> = if args.check_only {
        Vec::new()
    } else {
        smoke::SMOKE
            .iter()
            .filter(|t| args.tests.is_empty() || args.tests.iter().any(|l| l == t.label))
            .collect()
    };
    let agent = util::build_release_agent()?;
    let binaries = if tests.is_empty() {
        BTreeMap::new()
    } else {
        test_binaries()?
    };
    // Built here: a Go build under emulation takes minutes.
    let go_tls = if tests.iter().any(|t| t.target == "tls_go") {
        Some(util::build_go_tls()?)
    } else {
        None
    };
    let work = util::workspace_root();
    let results = util::target_dir().join("kernels");
    std::fs::create_dir_all(&results)?;
    let script = smoke::script(&agent, &binaries, &tests);

    let guests: Vec<&String> = args.kernels.iter().filter(|k| *k != "host").collect();
    let kernels = if guests.is_empty() {
        Vec::new()
    } else {
        fetch(&guests)?
    };
    let mut rows = Vec::new();
    for (line, kernel, package) in &kernels {
        let dir = results.join(&kernel.release);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("steps.sh"), &script)?;
        std::fs::write(dir.join("env.sh"), guest_env(&agent, go_tls.as_deref()))?;
        let rel = |f: &str| -> Result<String> {
            Ok(dir
                .join(f)
                .strip_prefix(&work)
                .context("the results folder must be inside the work tree (shared with the guest)")?
                .display()
                .to_string())
        };
        eprintln!("\n=== kernel {} ({package}) under qemu ===", kernel.release);
        let boot = vm::Boot {
            kernel,
            work: &work,
            script: &rel("steps.sh")?,
            env: &rel("env.sh")?,
            memory_mb: args.memory_mb,
            cpus: 2,
            timeout: Duration::from_secs(args.timeout_s),
            label: &kernel.release,
        };
        let mut outcome = vm::boot(&boot)?;
        let mut retried = None;
        if let Some(oops) = vm::emulator_text_poke_fault(&outcome.console) {
            // Seen twice so far: on 7.3 an int3 the kernel had already removed from a
            // patched instruction (a static key flipped when a tracepoint gets its first
            // program) still trapped on the other vCPU; on 6.1 a call into a kprobed
            // function jumped to address 0. Multi-threaded TCG executes cross-modified code
            // late; the guest dies, so every later step would fail for the emulator's sake.
            // The whole kernel runs once more; the table says so.
            let first = dir.join("console-first-boot.log");
            std::fs::write(&first, &outcome.console)?;
            eprintln!(
                "\n=== kernel {}: the emulator trapped on patched kernel text ({oops}); booting once more ===",
                kernel.release
            );
            retried = Some(format!(
                "the first boot died running patched kernel text under multi-threaded TCG \
                 ({oops}; console in {}); these are the results of a second boot",
                first.display()
            ));
            outcome = vm::boot(&boot)?;
        }
        std::fs::write(dir.join("console.log"), &outcome.console)?;
        let mut steps = smoke::parse(&outcome.output);
        if outcome.status.is_none() {
            steps.push(smoke::Step {
                name: "guest".to_owned(),
                status: None,
                output: format!(
                    "the guest did not finish (boot failure or timeout); console in {}\n{}",
                    dir.join("console.log").display(),
                    report::tail(&outcome.console, 30)
                ),
            });
        }
        rows.push(report::Row {
            line: line.clone(),
            release: kernel.release.clone(),
            package: package.clone(),
            emulated: true,
            steps,
            elapsed: outcome.elapsed,
            retried,
        });
    }
    if args.kernels.iter().any(|k| k == "host") {
        rows.push(run_on_host(&results, &script, &agent, go_tls.as_deref())?);
    }
    let expected: Vec<&str> = std::iter::once(smoke::CHECK)
        .chain(tests.iter().map(|t| t.label))
        .collect();
    let table = report::render(&rows, &expected);
    println!("{table}");
    std::fs::write(results.join("matrix.txt"), &table)?;
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed(&expected))
        .map(|r| r.release.clone())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("kernel matrix failed on {}", failed.join(", "))
    }
}

/// The host kernel: the same steps, natively.
fn run_on_host(
    results: &Path,
    script: &str,
    agent: &Path,
    go_tls: Option<&Path>,
) -> Result<report::Row> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    eprintln!("\n=== kernel {release} (this machine) ===");
    let dir = results.join("host");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("steps.sh"), script)?;
    std::fs::write(dir.join("env.sh"), guest_env(agent, go_tls))?;
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && sh '{}'",
            dir.join("env.sh").display(),
            dir.join("steps.sh").display()
        ))
        .output()
        .context("running the steps on the host")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join("output.log"), &text)?;
    Ok(report::Row {
        line: "host".to_owned(),
        release,
        package: "(this machine)".to_owned(),
        emulated: false,
        steps: smoke::parse(&text),
        elapsed: started.elapsed(),
        retried: None,
    })
}

/// The environment of the steps: the tests run the release agent and may not skip. The real
/// Python's folder goes first on PATH: version-manager shims (pyenv's are shell scripts that
/// start several processes) cost seconds per start under emulation.
fn guest_env(agent: &Path, go_tls: Option<&Path>) -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(dir) = util::output(Command::new("python3").args([
        "-c",
        "import os, sys; print(os.path.dirname(os.path.realpath(sys.executable)))",
    ])) {
        path = format!("{}:{path}", dir.trim());
    }
    let mut env = format!(
        "export APM_AGENT_BIN='{}' APM_INTEGRATION=require RUST_BACKTRACE=1 \
         PATH='{path}' HOME=/root TMPDIR=/tmp\n",
        agent.display()
    );
    if let Some(bin) = go_tls {
        env.push_str(&format!("export APM_GO_TLS_BIN='{}'\n", bin.display()));
    }
    env
}

/// Builds the integration-test binaries and maps each test target to its executable.
fn test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new("cargo")
        .current_dir(util::workspace_root())
        .args(["test", "-p", "tests", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let is_test = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            v["target"]["name"].as_str(),
            v["executable"].as_str(),
        ) {
            map.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(map)
}

/// Resolves, downloads (when not cached) and prepares the kernel of each line.
fn fetch(lines: &[&String]) -> Result<Vec<(String, image::Kernel, String)>> {
    let cache = PathBuf::from(CACHE);
    let apt = archive::PrivateApt::new(&cache.join("apt"))?;
    apt.refresh()?;
    let names = apt.image_packages()?;
    let mut out = Vec::new();
    for line in lines {
        let package = archive::newest_for_line(&names, line).with_context(|| {
            format!("no Debian amd64 kernel package of line {line} in the configured suites")
        })?;
        let (version, parts) = apt.parts_of(&package)?;
        let dir = cache.join(format!("{package}_{version}"));
        if !dir.join(".unpacked").is_file() {
            eprintln!("fetching {package} {version}");
            let debs = apt.download(&parts, &version, &cache.join("debs"))?;
            image::unpack(&debs, &dir)?;
            // The .debs are not needed once unpacked.
            for d in debs {
                let _ = std::fs::remove_file(d);
            }
        }
        let kernel = image::prepare(&dir)?;
        out.push(((*line).clone(), kernel, format!("{package} {version}")));
    }
    Ok(out)
}
