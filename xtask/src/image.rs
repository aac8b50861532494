//! `cargo xtask image`: the agent's container image, built with no registry.
//!
//! `deploy/Dockerfile` builds the toolchain and the agent inside a container on top of images
//! pulled from a registry (`docker build -f deploy/Dockerfile .` where one is reachable). This
//! task is the runtime-only path: the agent built on the host (`cargo build --release`), copied
//! by `deploy/Dockerfile.prebuilt` onto a Debian 12 base made here:
//!
//! 1. the base, once: `debootstrap --variant=minbase` of bookworm (with `ca-certificates`, as
//!    the Dockerfile's runtime stage) into a folder, slimmed, `podman import`ed as
//!    [`BASE`]`:`[`BASE_TAG`]. The image in podman's storage is the cache: it is rebuilt only
//!    when missing (a new recipe gets a new tag);
//! 2. the agent image, every time (seconds: one `COPY`, nothing runs in a container):
//!    `podman build` of `deploy/Dockerfile.prebuilt` on that base, tagged with the name the
//!    DaemonSet runs (`apm-agent:<version>`, which podman resolves to `localhost/`), labelled
//!    with the binary's sha256 (the pod test refuses a stale image).
//!
//! The image's name is the last line printed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    prereq,
    util::{self, as_root, output, run},
};

/// The agent image, as `localhost/` + the DaemonSet's `image:` (deploy/30-daemonset.yaml).
pub const IMAGE: &str = "localhost/apm-agent";
/// The base made locally.
pub const BASE: &str = "localhost/apm-agent-base";
/// The base's recipe version: change it with [`SUITE`], [`INCLUDE`] or [`slim`], so that
/// machines with the old base build the new one.
pub const BASE_TAG: &str = "bookworm-minbase-1";
/// The Debian release of the base (the host's: the binary links its glibc).
const SUITE: &str = "bookworm";
/// Packages added to minbase: CA certificates for `https://` OTLP endpoints.
const INCLUDE: &str = "ca-certificates";
/// Label holding the sha256 of the binary an image was built from.
pub const BINARY_LABEL: &str = "apm-agent.binary.sha256";
/// Debian's default PATH (an imported file system has no image configuration).
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `cargo xtask image`: builds the agent and its image, prints the image's name last.
pub fn run_task() -> Result<()> {
    prereq::ensure(prereq::Scope::Build)?;
    prereq::ensure_debian(prereq::IMAGE_PACKAGES)?;
    let agent = util::build_release_agent()?;
    let image = build(&agent)?;
    println!("{image}");
    Ok(())
}

/// For `cargo xtask test`: the image of the binary the integration tests run, named to them in
/// `APM_AGENT_IMAGE` (the pod test, tests/tests/daemonset_podman.rs).
pub fn for_tests(agent: &Path, tests: &mut Command) -> Result<()> {
    let image = build(agent)?;
    tests.env("APM_AGENT_IMAGE", image);
    Ok(())
}

/// `podman` with this machine's runtime settings: runc (crun refuses the host's hybrid cgroup
/// v1 + v2 layout) and the cgroupfs manager (no systemd to ask for scopes).
pub fn podman() -> Command {
    let mut c = as_root("podman");
    c.args(::tests::podman::GLOBAL_FLAGS);
    c
}

/// Builds the agent image from the binary `agent`; returns its name.
pub fn build(agent: &Path) -> Result<String> {
    let base = ensure_base()?;
    let root = util::workspace_root();
    let context = util::target_dir().join("image-context");
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("removing {}", context.display()))?;
    }
    std::fs::create_dir_all(&context)?;
    std::fs::copy(agent, context.join("apm-agent"))
        .with_context(|| format!("copying {} into the build context", agent.display()))?;
    let sha = sha256(agent)?;
    let image = format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    let previous = image_id(&image);
    run(podman()
        .args(["build", "--pull=never", "--quiet"])
        .args(["--build-arg", &format!("BASE={base}")])
        .args(["--label", &format!("{BINARY_LABEL}={sha}")])
        .args(["--tag", &image, "--file"])
        .arg(root.join("deploy/Dockerfile.prebuilt"))
        .arg(&context))?;
    // The image this tag named before is now untagged: remove it (it stays if a container
    // still uses it).
    if let Some(old) = previous.filter(|old| image_id(&image).as_ref() != Some(old)) {
        let _ = podman()
            .args(["rmi", &old])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(&context);
    Ok(image)
}

fn image_id(image: &str) -> Option<String> {
    output(podman().args(["image", "inspect", "--format", "{{.Id}}", image]))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn sha256(file: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(file))
        .with_context(|| format!("sha256sum {}", file.display()))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// The base image, made if missing; returns its name.
pub fn ensure_base() -> Result<String> {
    let name = format!("{BASE}:{BASE_TAG}");
    let exists = podman()
        .args(["image", "exists", &name])
        .status()
        .context("running podman (apt-get install podman runc)")?;
    if exists.success() {
        return Ok(name);
    }
    eprintln!("making the base image {name} (debootstrap {SUITE}, about a minute and a half)");
    let work = util::target_dir().join("image-base");
    let rootfs = work.join("rootfs");
    remove_as_root(&work)?;
    std::fs::create_dir_all(&work)?;
    let made = debootstrap(&rootfs).and_then(|()| {
        slim(&rootfs)?;
        let tar = work.join("rootfs.tar");
        run(as_root("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."))?;
        run(podman()
            .args(["import", "--quiet"])
            .args(["--change", &format!("ENV {PATH_ENV}")])
            .args(["--change", &format!("LABEL apm-agent.base={BASE_TAG}")])
            .arg(&tar)
            .arg(&name))
    });
    let removed = remove_as_root(&work);
    made?;
    removed?;
    Ok(name)
}

fn debootstrap(rootfs: &Path) -> Result<()> {
    let mut cmd = as_root("debootstrap");
    cmd.args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(rootfs);
    // The mirror this machine's apt uses (debootstrap's default otherwise).
    if let Some(mirror) = apt_mirror() {
        cmd.arg(mirror);
    }
    run(&mut cmd).context("debootstrap (apt-get install debootstrap; needs the Debian mirror)")
}

/// What a runtime image does not need: downloaded packages, package lists, documentation.
fn slim(rootfs: &Path) -> Result<()> {
    let mut doomed: Vec<PathBuf> = Vec::new();
    for dir in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
    ] {
        let Ok(entries) = std::fs::read_dir(rootfs.join(dir)) else {
            continue;
        };
        // apt's `partial` folders and `lock` files stay: apt expects them.
        doomed.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.file_name().is_some_and(|n| n == "partial" || n == "lock")),
        );
    }
    if doomed.is_empty() {
        return Ok(());
    }
    eprintln!("slimming the base: removing {} paths", doomed.len());
    let status = as_root("rm")
        .arg("-rf")
        .args(&doomed)
        .status()
        .context("rm")?;
    if !status.success() {
        anyhow::bail!("removing documentation and package lists from the base: {status}");
    }
    Ok(())
}

fn remove_as_root(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    run(as_root("rm").arg("-rf").arg(path))
}

/// The first Debian mirror of this machine's apt sources (deb822 `URIs:` or one-line `deb`
/// entries), leaving out the security archive.
fn apt_mirror() -> Option<String> {
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| mirrors(&text))
        .next()
}

/// Mirrors named in one apt sources file.
fn mirrors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if let Some(rest) = line.strip_prefix("deb ") {
            // `deb [options] uri suite components`
            rest.split_whitespace()
                .filter(|w| w.contains("://"))
                .take(1)
                .collect()
        } else {
            continue;
        };
        out.extend(
            uris.into_iter()
                .filter(|u| u.starts_with("http") && !u.contains("security"))
                .map(str::to_owned),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mirrors;

    #[test]
    fn mirrors_of_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n";
        assert_eq!(mirrors(deb822), ["http://mirror.example/debian"]);
        let one_line = "# deb http://old.example/debian bookworm main\n\
                        deb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(mirrors(one_line), ["http://mirror.example/debian"]);
        assert!(mirrors("").is_empty());
    }
}
