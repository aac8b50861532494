//! Rate control for wrk, which has none of its own: each connection waits a fixed `delay()`
//! (Lua, 1 ms resolution) after every response, and the number of connections is calibrated
//! in short runs until the measured rate is within 5% of the target. Closed-loop pacing, not
//! wrk2's constant-rate schedule: right for counting and for CPU per request, and wrk's
//! latency figures exclude the delay (it starts the clock when it writes the request).
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::wrk;

/// A wrk Lua script whose connections pause `delay_ms` after every response. Removed on drop.
#[derive(Debug)]
pub struct PaceScript {
    path: PathBuf,
    delay_ms: u32,
}

impl PaceScript {
    pub fn new(delay_ms: u32) -> Result<Self> {
        let path = std::env::temp_dir().join(tests::unique("pace.lua"));
        std::fs::write(
            &path,
            format!("function delay()\n  return {delay_ms}\nend\n"),
        )?;
        Ok(Self { path, delay_ms })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections for `rps` at first guess: each makes at most one request per (delay +
    /// round trip); the round trip is guessed at 0.15 ms.
    fn first_guess(&self, rps: f64) -> u32 {
        let per_conn = 1000.0 / (f64::from(self.delay_ms) + 0.15);
        ((rps / per_conn).round() as u32).max(1)
    }
}

impl Drop for PaceScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How many paced connections give `target` requests/s against `url`: 3 s runs, scaling the
/// count by target/measured, until within 5% (or 4 tries). Returns the count and the rate of
/// the last try.
pub fn calibrate(
    url: &str,
    script: &PaceScript,
    target: f64,
    cpu: Option<u32>,
) -> Result<(u32, f64)> {
    let mut conns = script.first_guess(target);
    let mut measured = 0.0;
    for _ in 0..4 {
        let r = wrk::run_script(url, 1, conns, 3, cpu, Some(script.path()))?;
        measured = r.rps;
        eprintln!(
            "pacing: {conns} connections -> {:.0} req/s (target {target:.0})",
            r.rps
        );
        if r.rps <= 0.0 || (r.rps / target - 1.0).abs() <= 0.05 {
            break;
        }
        conns = ((f64::from(conns) * target / r.rps).round() as u32).max(1);
    }
    Ok((conns, measured))
}
