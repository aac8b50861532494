//! The DaemonSet's pod run by podman: the agent's image, the flags derived from `deploy/`
//! ([`crate::pod`]), and the kubelet's part done by the test (probes, stop).
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    pod::{DerivedPod, PodInput, Probe, daemonset, derive, documents},
    podman::{Container, podman_out},
    prom::Metrics,
};

/// The image the DaemonSet runs, as podman names it: a short name is looked up in local
/// storage as `localhost/<name>`.
pub fn manifest_image(ds: &Value) -> Result<String> {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?;
    let image = containers
        .first()
        .and_then(|c| c["image"].as_str())
        .context("image")?;
    Ok(if image.split('/').count() == 1 {
        format!("localhost/{image}")
    } else {
        image.to_owned()
    })
}

/// The node's name: the host's.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A running agent pod, removed when dropped.
pub struct PodAgent {
    pub container: Container,
    pub derived: DerivedPod,
    pub pod_name: String,
    pub node_name: String,
    volumes: PathBuf,
}

/// The manifests, read once per pod: the DaemonSet and the ConfigMaps.
pub struct Manifests {
    pub docs: Vec<Value>,
}

impl Manifests {
    pub fn read() -> Result<Self> {
        Ok(Self { docs: documents()? })
    }

    pub fn daemonset(&self) -> Result<&Value> {
        daemonset(&self.docs)
    }
}

impl PodAgent {
    /// Derives the pod from `ds` (the DaemonSet of `manifests`, possibly edited by the test),
    /// with `extra_env`, and starts it; does not wait for readiness.
    pub fn create(
        manifests: &Manifests,
        ds: &Value,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        let suffix = crate::unique("pod");
        let ds_name = ds["metadata"]["name"].as_str().context("DaemonSet name")?;
        // A DaemonSet's pods are named `<daemonset>-<5 characters>`; unique here.
        let pod_name = format!("{ds_name}-{}", suffix.replace('-', ""));
        let volumes = crate::servers::temp_dir("pod-volumes")?;
        let node_name = node_name();
        let input = PodInput {
            pod_name: &pod_name,
            node_name: &node_name,
            volumes_dir: &volumes,
            extra_env,
        };
        let started = derive(ds, &manifests.docs, &input)
            .and_then(|derived| Ok((Container::run(&derived.name, &derived.args)?, derived)));
        let (container, derived) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&volumes);
                return Err(e);
            }
        };
        Ok(Self {
            container,
            derived,
            pod_name,
            node_name,
            volumes,
        })
    }

    /// [`PodAgent::create`], then waits (as the kubelet does, within the readiness probe's
    /// failure budget plus a start allowance) for the readiness probe to pass.
    pub fn start(manifests: &Manifests, extra_env: &[(String, String)]) -> Result<Self> {
        let ds = manifests.daemonset()?.clone();
        let pod = Self::create(manifests, &ds, extra_env)?;
        pod.wait_ready(Duration::from_secs(60))?;
        Ok(pod)
    }

    /// Waits until the readiness probe answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let ready = self.probe_named("readinessProbe")?;
        let deadline = Instant::now() + timeout;
        loop {
            if !self.container.running() {
                bail!("the agent's container stopped:\n{}", self.container.logs());
            }
            if matches!(self.probe(&ready), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not ready after {timeout:?}:\n{}", self.container.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn probe_named(&self, kind: &str) -> Result<Probe> {
        self.derived
            .probes
            .iter()
            .find(|p| p.kind == kind)
            .cloned()
            .with_context(|| format!("no {kind} in the manifest"))
    }

    /// One probe as the kubelet sends it: GET the path on the probe's port (published on the
    /// host's loopback), within the probe's timeout; (status, body).
    pub fn probe(&self, probe: &Probe) -> Result<(u16, String)> {
        get(
            probe.host_port,
            &probe.path,
            Duration::from_secs(probe.timeout_secs),
        )
    }

    /// The host port of the agent's listener (the readiness probe's port).
    pub fn port(&self) -> Result<u16> {
        Ok(self.probe_named("readinessProbe")?.host_port)
    }

    /// The agent's pid (on the host; the pod shares the host's PID namespace).
    pub fn pid(&self) -> Result<u32> {
        self.container.pid()
    }

    pub fn logs(&self) -> String {
        self.container.logs()
    }

    /// Scrapes and parses `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let (status, body) = crate::net::http_get(self.port()?, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Metrics::parse(&body).map_err(|e| anyhow::anyhow!("invalid exposition: {e}"))
    }

    /// Polls `f` until it reaches `want` (or `timeout`), then waits a little longer so that
    /// over-counting would show, and returns the final value.
    pub fn settle(&self, want: f64, timeout: Duration, f: impl Fn(&Metrics) -> f64) -> Result<f64> {
        crate::prom::settle(|| self.metrics(), want, timeout, f)
    }

    /// `podman stop` with the pod's grace period (SIGTERM, SIGKILL after it): how long it took.
    pub fn stop(&self) -> Result<Duration> {
        let start = Instant::now();
        podman_out(&[
            "stop",
            "--time",
            &self.derived.grace_secs.to_string(),
            &self.container.name,
        ])?;
        Ok(start.elapsed())
    }

    /// `podman kill` (SIGKILL).
    pub fn kill(&self) -> Result<()> {
        podman_out(&["kill", "--signal", "KILL", &self.container.name]).map(drop)
    }
}

impl Drop for PodAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the agent pod's log ---\n{}", self.container.logs());
        }
        let _ = std::fs::remove_dir_all(&self.volumes);
    }
}

/// GET `path` on 127.0.0.1:`port` within `timeout`: (status, body).
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect :{port}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}
