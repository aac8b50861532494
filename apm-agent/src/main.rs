//! apm-agent: a zero-instrumentation APM agent. eBPF programs copy the first bytes of socket
//! traffic; the agent turns them into per-route RED metrics. See README.md.
mod agent;
mod check;
mod cli;
mod config;
mod conn;
mod console;
mod discovery;
mod ebpf;
mod export;
mod internal;
mod metrics;
mod pipeline;
mod privileges;
mod profile_cmd;
mod profiles;
mod profiling;
mod protocols;
mod request;
mod routes;
mod server;
mod tls;
mod traces;
mod ui;

use std::process::ExitCode;

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
                .and_then(|cfg| agent::run(cfg).map_err(anyhow::Error::from));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("apm-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        cli::Command::Profile(args) => match profile_cmd::run(&args) {
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
