//! `redis-benchmark -t get,set` against Redis (no persistence): pipelined, one connection, a
//! fixed request count per command and round.
use std::process::Command;

use anyhow::{Result, bail};
use tests::dbservers::{Redis, run as run_command};

use super::{DbArgs, Load, Round};

/// `OTEL_SERVICE_NAME` of redis-benchmark.
const CLIENT: &str = "bench-redis-benchmark";

pub(super) struct RedisBenchmark {
    redis: Redis,
    requests: u32,
    pipeline: u32,
}

impl RedisBenchmark {
    pub(super) fn start(args: &DbArgs) -> Result<Self> {
        Ok(Self {
            redis: Redis::start("bench-redis")?,
            requests: args.redis_requests,
            pipeline: args.redis_pipeline,
        })
    }
}

impl Load for RedisBenchmark {
    fn name(&self) -> &'static str {
        "redis-get-set"
    }

    fn describe(&self) -> String {
        format!(
            "redis-benchmark -t get,set -c 1 -P {} -n {}",
            self.pipeline, self.requests
        )
    }

    fn labels(&self) -> (&'static str, &'static str) {
        (CLIENT, "redis")
    }

    /// Total requests, and the mean of the two commands' rates.
    fn run(&self) -> Result<Round> {
        let out = run_command(
            Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &self.redis.port.to_string()])
                .args(["-t", "get,set", "-c", "1", "--csv"])
                .args(["-n", &self.requests.to_string()])
                .args(["-P", &self.pipeline.to_string()])
                .env("OTEL_SERVICE_NAME", CLIENT),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "test","rps","avg_latency_ms",...  then "SET","123456.79",...
        let rates: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
            .filter_map(|l| l.split(',').nth(1))
            .filter_map(|v| v.trim_matches('"').parse().ok())
            .collect();
        if rates.len() != 2 {
            bail!("unexpected redis-benchmark output:\n{text}");
        }
        Ok(Round {
            ops_per_s: rates.iter().sum::<f64>() / 2.0,
            ops: 2.0 * f64::from(self.requests),
            ..Round::default()
        })
    }
}
