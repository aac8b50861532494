//! The benches' FastAPI app (`tests/servers/fastapi_app.py`) under uvicorn, and the venv it
//! runs in.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tests::{net::wait_port, servers::Proc};

use crate::prereq;

/// Where the venv lives unless a bench is told otherwise.
pub const DEFAULT_VENV: &str = "/var/lib/apm-agent-bench/venv";

/// The Python side, pinned: versions that install together on Debian 12's Python 3.11
/// (the instrumentation `0.Nb` line goes with SDK `1.(N-21)`).
const PIP_PACKAGES: &[&str] = &[
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "h11==0.16.0",
    "opentelemetry-api==1.45.2",
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    "opentelemetry-instrumentation-fastapi==0.66b2",
];

/// What must import for the venv to count as ready.
const IMPORT_CHECK: &str = "import fastapi, uvicorn, h11, opentelemetry.sdk.trace, \
     opentelemetry.instrumentation.fastapi, opentelemetry.exporter.otlp.proto.http.trace_exporter";

/// The venv's python: Debian's `python3-venv`, then [`PIP_PACKAGES`] (created when missing).
pub fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    prereq::ensure_debian(&["python3-venv"])?;
    crate::venv::ensure(venv, PIP_PACKAGES, IMPORT_CHECK)
}

/// How the app runs.
#[derive(Debug, Default)]
pub struct AppOptions<'a> {
    /// `OTEL_SERVICE_NAME` of the process (the agent reads it too).
    pub service: &'a str,
    /// OTLP/HTTP base URL of a receiver: the app traces itself with the OpenTelemetry SDK.
    pub sdk_otlp: Option<&'a str>,
    /// File where the app's timing middleware logs each request's own duration.
    pub timing_log: Option<&'a Path>,
}

/// uvicorn serving the app: one worker (one process to observe), the pure-Python h11
/// HTTP/1.1 parser, no reload, no access log. Its output goes to `log`.
pub fn start(python: &Path, port: u16, opts: &AppOptions<'_>, log: &Path) -> Result<Proc> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(python);
    cmd.args(["-m", "uvicorn", "fastapi_app:app", "--app-dir"])
        .arg(tests::servers_dir())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--workers", "1", "--http", "h11", "--loop", "asyncio"])
        .args(["--no-access-log", "--log-level", "warning"])
        .env("OTEL_SERVICE_NAME", opts.service)
        // Nothing from the caller's environment may re-route or re-sample the SDK, or turn on
        // a part the bench did not ask for.
        .env_remove("SDK_COMPARE_OTLP_TRACES")
        .env_remove("APP_TIMING_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    if let Some(otlp) = opts.sdk_otlp {
        cmd.env("SDK_COMPARE_OTLP_TRACES", format!("{otlp}/v1/traces"));
    }
    if let Some(timing) = opts.timing_log {
        cmd.env("APP_TIMING_LOG", timing);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} -m uvicorn", python.display()))?;
    let proc = Proc::new(child);
    if let Err(e) = wait_port(port, Duration::from_secs(30)) {
        drop(proc);
        bail!(
            "uvicorn did not listen: {e:#}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    Ok(proc)
}
