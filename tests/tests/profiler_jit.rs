//! The profiler on JIT-compiled code: a Node program (tests/workloads/split.js) burning CPU in
//! two JavaScript functions 3:1, run with `--perf-basic-prof` so that V8 writes its perf map.
//! The agent names the JIT frames from that map: each function's share of the samples is the
//! share the workload measured itself, and the calling function is above them.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tests::{
    profile::{ProfileRun, of_service, read_folded, roots_summary},
    require_root,
    servers::temp_dir,
    unique,
};

/// Samples whose stack has a frame naming `function` (V8 writes `JS:*name file:line:col`).
fn samples_in(stacks: &[(Vec<String>, u64)], function: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| names(f, function)))
        .map(|(_, n)| n)
        .sum()
}

/// Whether a JIT frame's name is that of `function`.
fn names(frame: &str, function: &str) -> bool {
    frame
        .split_once(':')
        .map(|(_, rest)| rest.trim_start_matches(['*', '~', '^', '+']))
        .is_some_and(|rest| rest.split(' ').next() == Some(function))
}

#[test]
fn node_jit_frames_are_named_from_the_perf_map() -> Result<()> {
    if !require_root("node_jit_frames_are_named_from_the_perf_map") {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/split.js");
    let dir = temp_dir("prof-jit")?;
    let out = dir.join("jit.folded");
    let service = unique("it-jit");
    // The workload outlives the profile: a perf map is read through the live process.
    let node = Command::new("node")
        .args(["--perf-basic-prof", "--no-turbo-inlining"])
        .arg(&script)
        .arg("14")
        .env("OTEL_SERVICE_NAME", &service)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting node")?;
    // Past start-up and the first compilations.
    thread::sleep(Duration::from_secs(2));
    let pid = node.id().to_string();
    let run = ProfileRun::start(&[
        "--pid",
        &pid,
        "--duration",
        "8s",
        "--format",
        "folded",
        "-o",
        out.to_str().unwrap_or_default(),
    ])?;
    run.finish(Duration::from_secs(60))?;
    let output = node.wait_with_output().context("node")?;
    // V8 leaves its perf map behind.
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let text = String::from_utf8_lossy(&output.stdout);
    let figures: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let (in_alpha, in_beta) = match figures[..] {
        [_, _, a, b] => (a, b),
        _ => bail!("the workload printed {text:?}"),
    };
    let want_alpha = in_alpha / (in_alpha + in_beta) * 100.0;

    let folded = read_folded(&out)?;
    let mine = of_service(&folded, &service);
    let total: u64 = mine.iter().map(|(_, n)| n).sum();
    let alpha = samples_in(&mine, "hotAlpha");
    let beta = samples_in(&mine, "hotBeta");
    let named = alpha + beta;
    eprintln!(
        "{total} samples, hotAlpha {alpha}, hotBeta {beta} (the workload measured \
         {want_alpha:.1}% in hotAlpha)"
    );
    if named * 10 < total * 7 {
        bail!(
            "only {named} of {total} samples in a named hotAlpha/hotBeta frame; the profile:\n{}\n{mine:?}",
            roots_summary(&folded, "hotAlpha")
        );
    }
    let share = alpha as f64 / named as f64 * 100.0;
    // Four standard deviations of the sampled share, at least 5 points (as profiler.rs).
    let p = want_alpha / 100.0;
    let tolerance = (4.0 * (p * (1.0 - p) / named as f64).sqrt() * 100.0).max(5.0);
    if (share - want_alpha).abs() > tolerance {
        bail!(
            "hotAlpha {share:.1}% of the named samples, the workload measured {want_alpha:.1}% (± {tolerance:.1})"
        );
    }
    // The caller is a frame of its own above them.
    let under_main: u64 = mine
        .iter()
        .filter(|(frames, _)| {
            let main = frames.iter().position(|f| names(f, "main"));
            let leaf = frames
                .iter()
                .position(|f| names(f, "hotAlpha") || names(f, "hotBeta"));
            matches!((main, leaf), (Some(m), Some(l)) if m < l)
        })
        .map(|(_, n)| n)
        .sum();
    if under_main * 10 < named * 9 {
        bail!("{under_main} of {named} samples have main above hotAlpha/hotBeta:\n{mine:?}");
    }
    Ok(())
}
