//! Running wrk and reading its report.
use std::process::Command;

use anyhow::{Context as _, Result};

/// What one wrk run reported.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    pub requests: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs `wrk --latency` against `url`, pinned to `cpu` if given.
pub fn run(
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u32,
    cpu: Option<u32>,
) -> Result<WrkRun> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
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
    Some(WrkRun {
        requests,
        rps,
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
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
    }
}
