//! Running wrk and reading its report.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

/// What one wrk run reported.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    pub requests: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses with a status outside 2xx/3xx ("Non-2xx or 3xx responses").
    pub non_2xx: f64,
    /// Connect, read, write and timeout errors, summed ("Socket errors").
    pub socket_errors: f64,
}

/// Runs `wrk --latency` against `url`, pinned to `cpu` if given.
pub fn run(
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u32,
    cpu: Option<u32>,
) -> Result<WrkRun> {
    run_script(url, threads, connections, seconds, cpu, None)
}

/// [`run`] with a Lua `script` (`wrk -s`).
pub fn run_script(
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u32,
    cpu: Option<u32>,
    script: Option<&Path>,
) -> Result<WrkRun> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .args([
            "--latency",
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            url,
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// [`run_script`] until the script creates `done_file` (or `max_secs` pass), then SIGINT, which
/// makes wrk stop and report: `wrk.thread:stop()` in a script ends the thread's requests, but
/// wrk itself waits out its whole `-d` duration.
pub fn run_until_done(
    url: &str,
    connections: u32,
    script: &Path,
    done_file: &Path,
    max_secs: u32,
) -> Result<WrkRun> {
    let child = Command::new("wrk")
        .arg("-s")
        .arg(script)
        .args([
            "--latency",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{max_secs}s"),
            url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running wrk")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(max_secs.into());
    while !done_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().context("waiting for wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse(text: &str) -> Option<WrkRun> {
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(|v| duration_us(v.trim()))
    };
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // "Socket errors: connect 0, read 1, write 0, timeout 0"
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0.0, |v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum()
        });
    Some(WrkRun {
        requests,
        rps,
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
        non_2xx,
        socket_errors,
    })
}

/// "123.45us", "1.20ms", "2.00s" -> microseconds.
fn duration_us(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_report() {
        let text = "Running 2s test\n  Latency Distribution\n     50%  101.00us\n     75%  1.50ms\n     90%  2.00ms\n     99%    1.20ms\n  52172 requests in 2.00s, 12.24MB read\nRequests/sec:  26085.50\n";
        let r = parse(text).unwrap();
        assert_eq!(r.requests, 52172.0);
        assert_eq!(r.rps, 26085.5);
        assert_eq!(r.p50_us, 101.0);
        assert_eq!(r.p99_us, 1200.0);
        assert_eq!(r.non_2xx, 0.0);
        assert_eq!(r.socket_errors, 0.0);
        let text = format!(
            "{text}  Socket errors: connect 0, read 2, write 1, timeout 3\n  Non-2xx or 3xx responses: 7\n"
        );
        let r = parse(&text).unwrap();
        assert_eq!(r.non_2xx, 7.0);
        assert_eq!(r.socket_errors, 6.0);
    }
}
