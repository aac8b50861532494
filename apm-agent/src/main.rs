//! apm-agent: a zero-instrumentation APM agent. eBPF programs copy the first bytes of socket
//! traffic; the agent turns them into per-route RED metrics. See README.md.
//!
//! The modules live in the library (src/lib.rs), which the fuzz targets link too; this file
//! is the command line only.
use std::process::ExitCode;

use apm_agent::{check, cli, run};

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // kube's client logs every failed request as an error; the pod watcher counts them and
    // logs one warning per outage instead.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,kube_client::client::builder=off"),
    )
    .init();
    match cli.command {
        cli::Command::Run(args) => {
            let result = args
                .into_config()
                .map_err(anyhow::Error::from)
                .and_then(|cfg| run::run(cfg).map_err(anyhow::Error::from));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("apm-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        cli::Command::Profile(args) => match run::profile_once::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apm-agent: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Check => {
            if check::report(&check::run_checks()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
