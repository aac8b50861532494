//! The profiler's test workload (tests/workloads/split.c), compiled once per test binary with
//! frame pointers, and its stripped copy.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context as _, Result, bail};

/// Paths of the built workload and its stripped copy.
#[derive(Debug, Clone)]
pub struct Workload {
    pub binary: PathBuf,
    pub stripped: PathBuf,
}

static BUILT: OnceLock<Result<Workload, String>> = OnceLock::new();

/// Builds the workload (once).
pub fn workload() -> Result<Workload> {
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<Workload> {
    let dir = crate::servers::temp_dir("workload")?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/split.c");
    let binary = dir.join("split");
    let out = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-pthread",
            "-fno-omit-frame-pointer",
            "-fno-inline",
            "-fno-ipa-icf",
            "-o",
        ])
        .arg(&binary)
        .arg(&src)
        .output()
        .context("running gcc")?;
    if !out.status.success() {
        bail!("gcc failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stripped = dir.join("split-stripped");
    let out = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .output()
        .context("running strip")?;
    if !out.status.success() {
        bail!("strip failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Workload { binary, stripped })
}

/// Runs `binary spin SECONDS THREADS`: returns the work units done (throughput).
pub fn spin(binary: &Path, seconds: f64, threads: u32) -> Result<u64> {
    let out = Command::new(binary)
        .args(["spin", &seconds.to_string(), &threads.to_string()])
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("no unit count from {}", binary.display()))
}

/// Runs `binary MODE SECONDS` as service `service`; returns the CPU seconds it reports.
pub fn run(binary: &Path, mode: &str, seconds: f64, service: &str) -> Result<f64> {
    Ok(run_figures(binary, mode, seconds, service)?[0])
}

/// [`run`], returning every figure the workload printed (for `cpu`: the CPU time, a checksum
/// bit, the CPU time in `hot_alpha` and in `hot_beta`).
pub fn run_figures(binary: &Path, mode: &str, seconds: f64, service: &str) -> Result<Vec<f64>> {
    let out = Command::new(binary)
        .args([mode, &seconds.to_string()])
        .env("OTEL_SERVICE_NAME", service)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} {mode} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<f64> = text
        .split_whitespace()
        .map_while(|s| s.parse().ok())
        .collect();
    if figures.is_empty() {
        bail!("no CPU time in {text:?}");
    }
    Ok(figures)
}

/// The build id of an ELF file, as hex (from `readelf -n`).
pub fn build_id(path: &Path) -> Result<String> {
    let out = Command::new("readelf").arg("-n").arg(path).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Build ID:")
                .map(|v| v.trim().to_owned())
        })
        .context("no build id")
}

/// The function containing file offset `offset` of `binary`, by binutils: the offset is
/// turned into a virtual address through the executable LOAD segment, then `addr2line`.
pub fn function_at(binary: &Path, offsets: &[u64]) -> Result<Vec<String>> {
    let out = Command::new("readelf").args(["-lW"]).arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let segment = text
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut f| {
            (f.next()? == "LOAD").then_some(())?;
            let off = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            let vaddr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            let rest: Vec<&str> = f.collect();
            let filesz = u64::from_str_radix(rest.get(1)?.trim_start_matches("0x"), 16).ok()?;
            rest.iter()
                .any(|x| x.contains('E'))
                .then_some((off, vaddr, filesz))
        })
        .next()
        .context("no executable LOAD segment")?;
    let addrs: Vec<String> = offsets
        .iter()
        .map(|o| format!("{:#x}", o - segment.0 + segment.1))
        .collect();
    let out = Command::new("addr2line")
        .arg("-f")
        .arg("-e")
        .arg(binary)
        .args(&addrs)
        .output()?;
    // addr2line prints function and file:line for each address.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .step_by(2)
        .map(str::to_owned)
        .collect())
}
