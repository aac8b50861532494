//! The tax on processes that never touch a socket: a syscall-heavy copy between character
//! devices (`dd bs=1` from `/dev/zero` to `/dev/null`: two syscalls per byte, no socket), timed
//! with no agent, with the agent on the socket-layer capture path, and on the syscall path.
//! Rounds rotate the three so drift cancels; figures are medians.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tests::agent::Agent;

use crate::util;

#[derive(Debug, Args)]
pub struct HostTaxArgs {
    /// Rounds of (off, sockets, syscalls).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Bytes copied one at a time (two syscalls each).
    #[arg(long, default_value_t = 2_000_000)]
    bytes: u64,
}

/// The agent configurations compared, by name, and the arguments that give them.
const MODES: [(&str, Option<&[&str]>); 3] = [
    ("off", None),
    ("sockets", Some(&["--capture-path", "sockets"])),
    ("syscalls", Some(&["--capture-path", "syscalls"])),
];

pub fn run(args: &HostTaxArgs) -> Result<()> {
    if !util::is_root() {
        bail!("bench host-tax starts the agent: run it as root");
    }
    if args.rounds == 0 || args.bytes == 0 {
        bail!("--rounds and --bytes must be at least 1");
    }
    let agent_bin = util::build_release_agent()?;
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); MODES.len()];
    for round in 0..args.rounds {
        for k in 0..MODES.len() {
            // Rotate the order every round.
            let i = (k + round as usize) % MODES.len();
            let (_, agent_args) = MODES[i];
            let agent = match agent_args {
                Some(a) => Some(Agent::start_binary(&agent_bin, a)?),
                None => None,
            };
            let elapsed = copy_bytes(args.bytes)?;
            drop(agent);
            eprintln!(
                "round {round}: {:<8} {:.3} s",
                MODES[i].0,
                elapsed.as_secs_f64()
            );
            times[i].push(elapsed);
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2].as_secs_f64()
        })
        .collect();
    let syscalls = 2.0 * args.bytes as f64;
    println!(
        "\nhost tax: {} syscalls of dd bs=1, no socket (medians of {} rounds)",
        syscalls, args.rounds
    );
    println!(
        "{:<10} {:>9} {:>8} {:>14}",
        "agent", "seconds", "ratio", "ns/syscall +"
    );
    for (i, (name, _)) in MODES.iter().enumerate() {
        let added_ns = (medians[i] - medians[0]) * 1e9 / syscalls;
        println!(
            "{name:<10} {:>9.3} {:>8.3} {added_ns:>14.1}",
            medians[i],
            medians[i] / medians[0]
        );
    }
    let json = serde_json::json!({
        "bench": "host_tax",
        "syscalls": syscalls,
        "seconds_off": medians[0],
        "seconds_sockets": medians[1],
        "seconds_syscalls": medians[2],
        "slowdown_sockets": medians[1] / medians[0],
        "slowdown_syscalls": medians[2] / medians[0],
    });
    println!("{json}");
    Ok(())
}

/// Times `dd` copying `bytes` one byte at a time between character devices.
fn copy_bytes(bytes: u64) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={bytes}"),
            "status=none",
        ])
        .output()
        .context("running dd")?;
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed())
}
