//! Running `apm-agent profile` from a test, and reading folded output.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::agent::binary;

/// A running `apm-agent profile`, sampling (it printed its first line).
pub struct ProfileRun {
    child: Child,
}

impl ProfileRun {
    /// Starts `apm-agent profile ARGS` and waits until sampling has begun.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary())
            .arg("profile")
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting apm-agent profile")?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        match lines.next().transpose()? {
            Some(l) if l.starts_with("sampling") => {}
            other => bail!("apm-agent profile did not start sampling: {other:?}"),
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Ok(Self { child })
    }

    /// Waits for the profile to be written.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("apm-agent profile failed: {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("apm-agent profile still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Folded stacks: (frames root first, count).
pub fn read_folded(path: &Path) -> Result<Vec<(Vec<String>, u64)>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (stack, n) = l
                .rsplit_once(' ')
                .with_context(|| format!("no count: {l:?}"))?;
            let n: u64 = n.parse().with_context(|| format!("bad count: {l:?}"))?;
            Ok((stack.split(';').map(str::to_owned).collect(), n))
        })
        .collect()
}

/// Samples whose root frame is `service`.
pub fn of_service(folded: &[(Vec<String>, u64)], service: &str) -> Vec<(Vec<String>, u64)> {
    folded
        .iter()
        .filter(|(frames, _)| frames.first().is_some_and(|r| r == service))
        .cloned()
        .collect()
}

/// The root frames (services) of a profile with their sample counts, busiest first, and the
/// roots of the stacks that contain `frame`: what a test prints when the samples it looked for
/// are not under the service it expected (named after another process, or missing).
pub fn roots_summary(folded: &[(Vec<String>, u64)], frame: &str) -> String {
    let mut roots: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for (frames, n) in folded {
        let root = frames.first().map_or("", String::as_str);
        let e = roots.entry(root).or_default();
        e.0 += n;
        if frames.iter().any(|f| f == frame) {
            e.1 += n;
        }
    }
    let mut v: Vec<_> = roots.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1.0));
    v.iter()
        .take(15)
        .map(|(root, (n, with))| format!("{root:?}: {n} samples, {with} with {frame}"))
        .collect::<Vec<_>>()
        .join("\n")
}
