//! The real agent binary, started and stopped by a test.
use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{net, prom::Metrics};

/// A running `apm-agent run`, killed when dropped.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

/// The agent binary: `APM_AGENT_BIN` (set by `cargo xtask test`), else the release build.
pub fn binary() -> PathBuf {
    std::env::var_os("APM_AGENT_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/apm-agent"),
        PathBuf::from,
    )
}

impl Agent {
    /// Starts the agent on a free port and waits until `/readyz` says its programs are
    /// attached.
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_binary(&binary(), extra)
    }

    /// [`Agent::start`] with a given binary (the benchmarks use the release build).
    pub fn start_binary(bin: &std::path::Path, extra: &[&str]) -> Result<Self> {
        Self::start_command(Command::new(bin), extra)
    }

    /// [`Agent::start`] with a command line that executes the agent binary in the end, so
    /// that the agent keeps its pid: `["setpriv", "--bounding-set=...", "--", "/path/apm-agent"]`
    /// (the binary is not added: name it, e.g. with [`binary`]).
    pub fn start_with_command(command: &[&str], extra: &[&str]) -> Result<Self> {
        let (program, args) = command.split_first().context("empty command")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::start_command(cmd, extra)
    }

    /// Starts `cmd` (the binary, or a wrapper given the binary as its last argument) with
    /// `run --listen 127.0.0.1:<free port> --no-console extra...`.
    fn start_command(mut cmd: Command, extra: &[&str]) -> Result<Self> {
        let port = net::free_port();
        let log = std::env::temp_dir().join(crate::unique("apm-agent-log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let shown = format!("{cmd:?}");
        let child = cmd
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--no-console",
            ])
            .args(extra)
            // `APM_TEST_AGENT_LOG` (a RUST_LOG value) turns on the agent's debug logs.
            .env(
                "RUST_LOG",
                std::env::var("APM_TEST_AGENT_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {shown}"))?;
        let mut agent = Self {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("agent exited during start-up ({status}):\n{}", agent.log());
            }
            if matches!(net::http_get(port, "/readyz"), Ok((200, _))) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 60 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Is the agent still running (not exited, not crashed)?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Alive, `/healthz` answers 200 and the log shows no panic; the reason otherwise.
    pub fn check_healthy(&mut self) -> Result<()> {
        if !self.alive() {
            bail!("the agent exited:\n{}", self.log());
        }
        match net::http_get(self.port, "/healthz") {
            Ok((200, _)) => {}
            other => bail!("/healthz: {other:?}\n{}", self.log()),
        }
        let log = self.log();
        if log.contains("panicked") {
            bail!("the agent panicked:\n{log}");
        }
        Ok(())
    }

    /// Scrapes and parses `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let (status, body) = net::http_get(self.port, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Metrics::parse(&body).map_err(|e| anyhow::anyhow!("invalid exposition: {e}"))
    }

    /// Runs of the agent's kernel programs the kernel skipped (preempted mid-run: see
    /// `apm_kernel_program_runs_skipped_total`), and data records dropped because a preempted
    /// program held their CPU's scratch area (`apm_capture_scratch_busy_total`): the two
    /// counted losses of kernels whose tracing programs are preemptible.
    pub fn skipped_runs(&self) -> Result<f64> {
        let m = self.metrics()?;
        Ok(m.sum("apm_kernel_program_runs_skipped_total", &[])
            + m.sum("apm_capture_scratch_busy_total", &[]))
    }

    /// `got` must equal `want`; a shortfall passes only when the kernel reported at least as
    /// many skipped program runs (on kernels whose tracepoints are preemptible, a skipped run
    /// is an event lost, and then it must be a counted loss, never a silent one).
    /// Over-counting never passes.
    pub fn assert_exact_or_counted(&self, got: f64, want: f64, what: &str) -> Result<()> {
        self.assert_exact_or_counted_batched(got, want, 1.0, what)
    }

    /// [`Self::assert_exact_or_counted`] where one read or write carries up to `per_run`
    /// requests (a pipelining client: `redis-benchmark -P 16` writes 16 commands at once and
    /// reads their 16 replies at once), so one skipped program run loses up to `per_run`.
    pub fn assert_exact_or_counted_batched(
        &self,
        got: f64,
        want: f64,
        per_run: f64,
        what: &str,
    ) -> Result<()> {
        if got == want {
            return Ok(());
        }
        let skipped = self.skipped_runs()?;
        if got < want && want - got <= skipped * per_run {
            eprintln!(
                "note: {what}: {got} of {want}; the kernel skipped {skipped} program runs \
                 (counted loss, up to {per_run} requests per run)"
            );
            return Ok(());
        }
        bail!(
            "{what}: {got}, want {want} (skipped program runs: {skipped}, up to {per_run} \
             requests each)\n{}",
            self.log()
        )
    }

    /// A counter of garbage (bytes parsed that should not have been: encrypted records read as
    /// plaintext, a connection left unclassified) must not have moved from `before`; it may
    /// move by at most the number of program runs the kernel skipped, each counted
    /// (`apm_kernel_program_runs_skipped_total`): a skipped run of the program that marks a
    /// socket as TLS lets that socket's next encrypted record through to the parsers. A move
    /// with no skipped run never passes.
    pub fn assert_unmoved_or_counted(&self, before: f64, after: f64, what: &str) -> Result<()> {
        if after == before {
            return Ok(());
        }
        let skipped = self.skipped_runs()?;
        if after > before && after - before <= skipped {
            eprintln!(
                "note: {what}: moved by {}; the kernel skipped {skipped} program runs (counted)",
                after - before
            );
            return Ok(());
        }
        bail!(
            "{what}: {before} before, {after} after (skipped program runs: {skipped})\n{}",
            self.log()
        )
    }

    /// Polls `f` until it reaches `want` (or `timeout`), then waits a little longer so that
    /// over-counting would show, and returns the final value.
    pub fn settle(&self, want: f64, timeout: Duration, f: impl Fn(&Metrics) -> f64) -> Result<f64> {
        crate::prom::settle(|| self.metrics(), want, timeout, f)
    }

    /// CPU time the agent's threads have used, in nanoseconds (from schedstat).
    pub fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    }

    /// CPU time (ns, from schedstat) of the agent's threads, summed by thread name (`comm`:
    /// `apm-events` is the event path, `apm-profiler` the profiler...).
    pub fn cpu_ns_by_thread(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for task in tasks.flatten() {
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("schedstat")),
            ) else {
                continue;
            };
            let ns = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            *out.entry(comm.trim().to_owned()).or_insert(0) += ns;
        }
        out
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.memory().vm_hwm
    }

    /// The agent's memory now, from `/proc/<pid>/status` (zeros once it is gone).
    pub fn memory(&self) -> Memory {
        Memory::of(self.pid())
    }

    /// The agent's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("agent already stopped")
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("agent still running {timeout:?} after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test: what the agent counted says where its events went.
            eprintln!("--- the agent's own counters at the failure ---");
            if let Ok((_, body)) = net::http_get(self.port, "/metrics") {
                body.lines()
                    .filter(|l| l.starts_with("apm_") && !l.ends_with(" 0"))
                    .for_each(|l| eprintln!("{l}"));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Memory figures of a process from `/proc/<pid>/status`, in bytes. `VmRSS` counts the
/// file-backed pages mapped (the binary, shared libraries, files the profiler maps), which the
/// kernel can drop and share; `RssAnon` is the process's own heap and stacks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub vm_rss: u64,
    /// Peak of `VmRSS` since the process started.
    pub vm_hwm: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        Self::parse(&status)
    }

    fn parse(status: &str) -> Self {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Self {
            vm_rss: field("VmRSS:"),
            vm_hwm: field("VmHWM:"),
            rss_anon: field("RssAnon:"),
            rss_file: field("RssFile:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn parses_proc_status_memory() {
        let m = Memory::parse(
            "Name:\tapm-agent\nVmHWM:\t   30000 kB\nVmRSS:\t   25000 kB\nRssAnon:\t   9000 kB\nRssFile:\t  16000 kB\n",
        );
        assert_eq!(m.vm_hwm, 30000 * 1024);
        assert_eq!(m.vm_rss, 25000 * 1024);
        assert_eq!(m.rss_anon, 9000 * 1024);
        assert_eq!(m.rss_file, 16000 * 1024);
    }
}
