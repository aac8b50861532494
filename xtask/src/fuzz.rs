//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer, nightly, address
//! sanitizer), each for a fixed time, and fails on the first crash, naming its input.
//!
//! New inputs libFuzzer finds go to a scratch directory: the committed corpus
//! (`fuzz/corpus/<target>/`, seeded from the unit tests' byte streams) is only read, so a run
//! never changes the repository. Crash inputs go to `fuzz/artifacts/<target>/` (ignored by
//! git); once the bug is fixed, copying one into the corpus makes it a regression test that
//! `cargo test` replays too (apm-agent/src/fuzzing.rs).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{prereq, util};

/// Every target in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &[
    "http1",
    "http2",
    "postgres",
    "mysql",
    "redis",
    "memcached",
    "sql",
    "decode",
];

/// Seconds per target in `cargo xtask test`: enough to run each through its corpus and a few
/// hundred thousand mutations, short enough that all of them add about two minutes to CI.
pub const CI_SECONDS: u64 = 15;

/// A single input that runs this long is a bug (a parser must be linear in its input).
const TIMEOUT_SECONDS: u64 = 10;

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (default: all of them).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    prereq::ensure_fuzz()?;
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    run_targets(&targets, args.seconds)
}

/// Builds the targets once, then fuzzes each for `seconds`; the first crash fails the run.
pub fn run_targets(targets: &[&str], seconds: u64) -> Result<()> {
    let root = util::workspace_root();
    let fuzz = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(&root).args(["+nightly", "fuzz"]).args(args);
        c
    };
    // One build for every target (a target name would build only that one).
    let mut build = fuzz(&["build"]);
    if let [only] = targets {
        build.arg(only);
    }
    util::run(&mut build)?;
    let scratch = std::env::temp_dir().join(format!("apm-agent-fuzz-{}", std::process::id()));
    let result = targets.iter().try_for_each(|target| {
        let new_inputs = scratch.join(target);
        std::fs::create_dir_all(&new_inputs)
            .with_context(|| format!("creating {}", new_inputs.display()))?;
        let seeds = root.join("fuzz/corpus").join(target);
        let mut cmd = fuzz(&["run", target]);
        cmd.arg(&new_inputs).arg(&seeds).args([
            "--".to_owned(),
            format!("-max_total_time={seconds}"),
            format!("-timeout={TIMEOUT_SECONDS}"),
        ]);
        run_one(&root, target, &mut cmd)
    });
    // Inputs found in a passing run are of no further use; a crash's input is in artifacts/.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// libFuzzer's progress lines (start, powers of two, end) and what says why it stopped (the
/// panic message precedes a long stack trace, which is only in the tail shown on failure).
const SHOWN: &[&str] = &[
    "INITED",
    "pulse",
    "Done ",
    "panicked at",
    "ERROR:",
    "SUMMARY:",
    "Test unit written",
];

/// Runs one target, showing libFuzzer's progress lines only; on failure, its last lines and
/// the crash input.
fn run_one(root: &Path, target: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", util::show(cmd));
    let started = SystemTime::now();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", util::show(cmd)))?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut show_next = false;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // A panic's message is on the line after its location.
            if show_next || SHOWN.iter().any(|s| line.contains(s)) {
                eprintln!("  {target}: {line}");
            }
            show_next = line.contains("panicked at");
            if tail.len() == 80 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if status.success() {
        return Ok(());
    }
    for line in &tail {
        eprintln!("  {target}| {line}");
    }
    match newest_artifact(&root.join("fuzz/artifacts").join(target), started) {
        Some(input) => bail!(
            "fuzz target {target} failed ({status}); input: {}\n\
             reproduce with: cargo +nightly fuzz run {target} {}",
            input.display(),
            input.display()
        ),
        None => bail!("fuzz target {target} failed ({status}); no crash input was written"),
    }
}

/// The crash input libFuzzer wrote during this run, if any.
fn newest_artifact(dir: &Path, since: SystemTime) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            (modified >= since).then(|| (modified, e.path()))
        })
        .max()
        .map(|(_, path)| path)
}
