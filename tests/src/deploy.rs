//! The deployment artefacts (`deploy/`) and the capabilities the README documents: what the
//! manifest test and the capability test compare against each other.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `deploy/`.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// The Kubernetes manifests in `deploy/` (`*.yaml`, `*.yml`), sorted.
pub fn manifests() -> Result<Vec<PathBuf>> {
    let dir = deploy_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// How the README says a capability is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `always`: the agent refuses to start without it.
    Always,
    /// `recommended`: the agent runs without it, with less (granted by the DaemonSet).
    Recommended,
    /// `only to mount tracefs`: not granted by the DaemonSet (it mounts the host's tracefs).
    MountOnly,
}

/// One row of the README's capability table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedCap {
    /// `CAP_BPF`.
    pub name: String,
    pub need: Need,
}

impl DocumentedCap {
    /// The name without `CAP_`, as Kubernetes and setpriv (lower-cased) spell it: `BPF`.
    pub fn short(&self) -> &str {
        self.name.trim_start_matches("CAP_")
    }
}

/// The capability table of README.md ("Requirements"): rows `| `CAP_X` | need | why |`.
pub fn readme_capabilities() -> Result<Vec<DocumentedCap>> {
    let path = repo_root().join("README.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut caps = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(row) = line.strip_prefix("| `CAP_") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(name), Some(need)) = (cells.first(), cells.get(1)) else {
            bail!("README capability row without a need column: {line:?}");
        };
        let need = match *need {
            "always" => Need::Always,
            "recommended" => Need::Recommended,
            "only to mount tracefs" => Need::MountOnly,
            other => bail!("README capability row with unknown need {other:?}: {line:?}"),
        };
        caps.push(DocumentedCap {
            name: format!("CAP_{}", name.trim_end_matches('`')),
            need,
        });
    }
    if caps.is_empty() {
        bail!("no capability table found in {}", path.display());
    }
    Ok(caps)
}

/// Every YAML document of `file`, as JSON (read with the test venv's PyYAML, which
/// `kubernetes-validate` brings).
pub fn load_yaml(file: &Path) -> Result<Vec<Value>> {
    let out = Command::new(crate::pyotlp::python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(file)
        .output()
        .context("running the test venv's Python (cargo xtask setup creates it)")?;
    if !out.status.success() {
        bail!(
            "{} is not valid YAML: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
