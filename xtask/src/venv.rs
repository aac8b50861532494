//! Python virtual environments with pinned packages, for the test receiver and the benchmarks.
//! Fast when present: a stamp file holding the pins plus one import check, no pip call.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{as_root, output, run};

/// Ensures `venv` exists with exactly `pins` (`name==version`) installed and `imports` (a
/// Python statement) succeeding; creates or repairs it otherwise. Returns its interpreter.
/// Needs Debian's `python3-venv` (installed by the caller's prerequisites).
pub fn ensure(venv: &Path, pins: &[&str], imports: &str) -> Result<PathBuf> {
    let python = venv.join("bin/python3");
    let stamp = venv.join(".apm-requirements");
    let want = pins.join("\n");
    let ready = || output(Command::new(&python).args(["-c", imports])).is_some();
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) && ready() {
        return Ok(python);
    }
    if output(Command::new(&python).args(["-c", "import sys"])).is_none() {
        // Missing or broken (an interpreter upgrade leaves a dangling link): start afresh.
        eprintln!("creating the Python venv {}", venv.display());
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Debian's interpreter (python3-venv belongs to it), not whatever python3 comes
        // first on PATH (pyenv).
        run(as_root("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv))?;
    }
    run(as_root(&python.to_string_lossy())
        .args(["-m", "pip", "install", "--quiet"])
        .args(["--disable-pip-version-check", "--no-input"])
        .args(pins))?;
    if !ready() {
        bail!(
            "{}: the pinned packages do not import after pip install",
            venv.display()
        );
    }
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}
