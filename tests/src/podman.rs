//! podman on this machine kind, and containers a test starts (removed when dropped).
//!
//! The node's settings, not any pod's: runc (crun refuses the host's hybrid cgroup v1 + v2
//! layout), the cgroupfs manager (no systemd), and resource limits at the current ones (the
//! machine grants no CAP_SYS_RESOURCE, so podman's rootful default of raising `nofile` fails).
use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Global flags of every podman command (`cargo xtask image` uses them too).
pub const GLOBAL_FLAGS: [&str; 4] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

/// `podman` with [`GLOBAL_FLAGS`].
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(GLOBAL_FLAGS);
    c
}

/// Runs `podman args...`; its stdout, or an error with its stderr.
pub fn podman_out(args: &[&str]) -> Result<String> {
    let out = podman()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running podman (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "podman {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `--ulimit` flags at the limits podman itself runs with: this process's `nofile`, and its
/// `nproc` capped at `kernel.pid_max` (podman lowers its own `nproc` to that; a container
/// asking for more is refused, since raising a limit needs CAP_SYS_RESOURCE).
pub fn ulimit_flags() -> Vec<String> {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    [
        ("nofile", libc::RLIMIT_NOFILE, u64::MAX),
        ("nproc", libc::RLIMIT_NPROC, pid_max),
    ]
    .into_iter()
    .filter_map(|(name, resource, cap)| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let ok = unsafe { libc::getrlimit(resource, &raw mut lim) } == 0;
        ok.then(|| {
            let (soft, hard) = (lim.rlim_cur.min(cap), lim.rlim_max.min(cap));
            format!("--ulimit={name}={soft}:{hard}")
        })
    })
    .collect()
}

/// A container started with `podman run --detach`, force-removed when dropped.
pub struct Container {
    pub name: String,
    /// The full id podman gave it (64 hex digits).
    pub id: String,
}

impl Container {
    /// `podman run --detach <ulimits> args...` (`args` name the container with `--name` and end
    /// with the image and its arguments).
    pub fn run(name: &str, args: &[String]) -> Result<Self> {
        let mut cmd = podman();
        cmd.args(["run", "--detach"])
            .args(ulimit_flags())
            .args(args);
        let out = output(&mut cmd)?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let container = Self {
            name: name.to_owned(),
            id,
        };
        if !out.status.success() {
            bail!(
                "podman run {name}: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                container.logs()
            );
        }
        Ok(container)
    }

    /// `podman inspect --format <format>`.
    pub fn inspect(&self, format: &str) -> Result<String> {
        podman_out(&["inspect", "--format", format, &self.name])
    }

    /// The host pid of the container's first process (0 once it stopped).
    pub fn pid(&self) -> Result<u32> {
        Ok(self.inspect("{{.State.Pid}}")?.parse()?)
    }

    /// Is the container running?
    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}")
            .is_ok_and(|s| s == "true")
    }

    /// The exit code once stopped.
    pub fn exit_code(&self) -> Result<i32> {
        Ok(self.inspect("{{.State.ExitCode}}")?.parse()?)
    }

    /// Waits until the container stopped.
    pub fn wait_stopped(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// What the container printed (stdout and stderr).
    pub fn logs(&self) -> String {
        podman()
            .args(["logs", &self.name])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .context("running podman (cargo xtask setup installs it)")
}

/// The container id in a `/proc/<pid>/cgroup` file as podman names its cgroups: the
/// `libpod-<id>` segment (`/libpod_parent/libpod-<id>` with the cgroupfs manager,
/// `libpod-<id>.scope` with systemd), read here independently of the agent's parser.
pub fn libpod_id(cgroup: &str) -> Option<String> {
    let ids: Vec<&str> = cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .filter_map(|seg| seg.strip_prefix("libpod-"))
        .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    let first = *ids.first()?;
    // Every hierarchy must agree.
    ids.iter().all(|id| *id == first).then(|| first.to_owned())
}

/// Mounts tracefs at /sys/kernel/tracing on the host when it is not: the DaemonSet mounts the
/// host's (hostPath), as a node with tracing enabled has it.
pub fn ensure_host_tracefs() -> Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/kernel/tracing") && l.contains(" tracefs "));
    if mounted {
        return Ok(());
    }
    let out = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .output()?;
    if !out.status.success() {
        bail!("mounting tracefs: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::libpod_id;

    #[test]
    fn libpod_ids_of_both_managers() {
        let id = "4f1220a8487190b616e19cafc1511f9bd61f261f1b6df013a59b48c40f2ba107";
        let cgroupfs =
            format!("4:memory:/libpod_parent/libpod-{id}\n0::/libpod_parent/libpod-{id}\n");
        assert_eq!(libpod_id(&cgroupfs).as_deref(), Some(id));
        let systemd = format!("0::/machine.slice/libpod-{id}.scope/container\n");
        assert_eq!(libpod_id(&systemd).as_deref(), Some(id));
        assert_eq!(libpod_id("0::/libpod_parent/conmon\n"), None);
        assert_eq!(libpod_id("0::/\n"), None);
        let other = "0".repeat(64);
        let mixed =
            format!("4:memory:/libpod_parent/libpod-{id}\n0::/libpod_parent/libpod-{other}\n");
        assert_eq!(libpod_id(&mixed), None);
    }
}
