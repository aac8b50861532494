//! Small helpers for running commands.
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Is this process root?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd`, echoing it, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout when it succeeds.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd` prefixed with sudo when not root.
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Builds the agent in release mode and returns the binary's path.
pub fn build_release_agent() -> Result<std::path::PathBuf> {
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "-p", "apm-agent"]))?;
    Ok(target_dir().join("release/apm-agent"))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) when set,
/// else `target/` in the workspace.
pub fn target_dir() -> std::path::PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), |d| root.join(d))
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Builds the Go TLS test program (tests/servers/go_tls) into the target directory: for the
/// `tls_go` tests in the kernel matrix's guests (`APM_GO_TLS_BIN`) and the Go HTTPS bench case.
pub fn build_go_tls() -> Result<std::path::PathBuf> {
    let dir = target_dir().join("go-tls");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("go_tls");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("main.go")
        .current_dir(workspace_root().join("tests/servers/go_tls"))
        .env("GOCACHE", dir.join("cache"))
        .env("HOME", &dir)
        .env("GOFLAGS", "")
        .status()
        .context("running go build")?;
    if !status.success() {
        bail!("go build of tests/servers/go_tls failed: {status}");
    }
    Ok(out)
}
