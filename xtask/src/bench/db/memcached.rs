//! `memcslap --test=get` (Debian's libmemcached-tools) against memcached, text protocol: it
//! sets N keys over one connection, then T threads, each on its own connection, get N keys
//! each, picked at random among them. Values are random strings of a few KiB (about 2.5 KiB
//! on average); the server gets room for all of a round's keys, so that gets hit rather than
//! miss for an eviction (a miss is a shorter answer, `END`, and would change the workload from
//! round to round). The rate is the operations over the tool's timing of its two phases (key
//! generation excluded).
//!
//! Not memaslap (`memcaslap`, same package), although it runs for a duration and mixes gets
//! and sets: its keys start with 8 binary bytes, which memcached accepts but the text protocol
//! forbids (no control characters in keys), and the agent, which detects memcached by a
//! well-formed command line, sees none of its operations.
use std::process::Command;

use anyhow::{Result, bail};
use tests::dbservers::{Memcached, run as run_command};

use super::{DbArgs, Load, Round};
use crate::prereq;

/// `OTEL_SERVICE_NAME` of memcslap.
const CLIENT: &str = "bench-memcslap";

pub(super) struct Memcslap {
    mc: Memcached,
    threads: u32,
    keys: u32,
}

impl Memcslap {
    pub(super) fn start(args: &DbArgs) -> Result<Self> {
        if args.memcached_threads == 0 || args.memcached_keys == 0 {
            bail!("--memcached-threads and --memcached-keys must be at least 1");
        }
        // Only this workload needs memcslap: installed here rather than for every test run.
        prereq::ensure_debian(&["libmemcached-tools"])?;
        // 8 KiB per key is twice the longest value memcslap generates, with the item's
        // header and key; memcached allocates as items come, this is a ceiling.
        let memory_mb = 64 + args.memcached_keys.div_ceil(128);
        Ok(Self {
            mc: Memcached::start_with("bench-memcached", memory_mb)?,
            threads: args.memcached_threads,
            keys: args.memcached_keys,
        })
    }
}

/// From a line `Time to <what> <count> keys[ by <t> threads]: <seconds> seconds.`: the count
/// and the seconds.
fn phase(text: &str, what: &str) -> Result<(f64, f64)> {
    let prefix = format!("Time to {what} ");
    let parsed = text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(&prefix)?;
        let count = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        let (_, after) = rest.rsplit_once(':')?;
        let seconds = after.split_whitespace().next()?.parse::<f64>().ok()?;
        Some((count, seconds))
    });
    match parsed {
        Some(p) => Ok(p),
        None => bail!("no `{prefix}... seconds.` line in memcslap's output:\n{text}"),
    }
}

impl Load for Memcslap {
    fn name(&self) -> &'static str {
        "memcached-get-set"
    }

    fn describe(&self) -> String {
        format!(
            "memcslap --test=get --concurrency={} --execute-number={} ({} sets, then {} gets)",
            self.threads,
            self.keys,
            self.keys,
            u64::from(self.threads) * u64::from(self.keys)
        )
    }

    fn labels(&self) -> (&'static str, &'static str) {
        (CLIENT, "memcached")
    }

    fn run(&self) -> Result<Round> {
        let out = run_command(
            Command::new("memcslap")
                .arg(format!("--servers=127.0.0.1:{}", self.mc.port))
                .arg(format!("--concurrency={}", self.threads))
                .arg(format!("--execute-number={}", self.keys))
                .arg("--test=get")
                .env("OTEL_SERVICE_NAME", CLIENT),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Time to set          100000 keys:                     1.873 seconds.
        // Time to get          151234 keys by    2 threads:     3.612 seconds.
        // (The get line counts the keys found, not the gets sent: those are threads x keys.)
        let (sets, set_s) = phase(&text, "set")?;
        let (found, get_s) = phase(&text, "get")?;
        let gets = f64::from(self.threads) * f64::from(self.keys);
        if sets != f64::from(self.keys) {
            bail!(
                "memcslap set {sets} keys, not the {} asked for:\n{text}",
                self.keys
            );
        }
        if set_s + get_s <= 0.0 {
            bail!("memcslap ran in no measurable time: raise --memcached-keys");
        }
        if found < gets {
            eprintln!("memcslap: {} of {gets} gets missed", gets - found);
        }
        let ops = sets + gets;
        Ok(Round {
            ops_per_s: ops / (set_s + get_s),
            ops,
            ..Round::default()
        })
    }
}
