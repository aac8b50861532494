//! `cargo xtask run`: build the agent in release mode and run it as root on its embedded
//! defaults (listener on 127.0.0.1:9464, console table), re-executing through sudo if needed.
use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

use crate::{prereq, util};

pub fn run(args: &[String]) -> Result<()> {
    prereq::ensure(prereq::Scope::Build)?;
    let agent = util::build_release_agent()?;
    let mut cmd = if util::is_root() {
        Command::new(&agent)
    } else {
        eprintln!("apm-agent needs root: re-running through sudo");
        let mut c = Command::new("sudo");
        c.arg(&agent);
        c
    };
    cmd.arg("run").args(args);
    eprintln!("+ {}", util::show(&cmd));
    // exec: Ctrl-C and SIGTERM go straight to the agent, which detaches cleanly.
    let err = cmd.exec();
    bail!("could not start {}: {err}", agent.display())
}
