//! The DaemonSet's pod under a real container runtime: the image `cargo xtask image` built
//! (the one the manifest names), run by podman + runc with the flags derived from
//! deploy/30-daemonset.yaml by `tests::pod` (hostPID, its own network namespace, the security
//! context, the capabilities, seccomp, resources, the host's tracefs and the ConfigMap as
//! volumes, the Downward API's env), the kubelet's part (probes, SIGTERM then SIGKILL after
//! the grace period) done by the test. What is checked from the host's kernel: every derived
//! setting took effect; the containerized agent counts host processes and processes of other
//! containers exactly, and names a container's processes with the id of the cgroup podman
//! made (`/libpod_parent/libpod-<id>`); without a required capability it refuses and names
//! it; a stopped or killed pod leaves no BPF program behind.
use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tests::{
    agent::binary,
    bpfmaps::{left_loaded, loaded_programs, programs_of},
    dbservers::{PG_BIN, Postgres, client_ops, server_ops},
    deploy::{Need, deploy_dir, readme_capabilities},
    net::free_port,
    otlp::{Receiver, str_attr},
    pod::capability_bit,
    pod_agent::{Manifests, PodAgent, manifest_image},
    podman::{Container, ensure_host_tracefs, libpod_id, podman, podman_out, ulimit_flags},
    require_root,
    servers::app_server,
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
/// The host's loopback as the pod's network namespace (slirp4netns) reaches it.
const HOST_FROM_POD: &str = "10.0.2.2";
/// Label `cargo xtask image` puts on the image: the sha256 of the binary in it.
const BINARY_LABEL: &str = "apm-agent.binary.sha256";

/// Root, tracefs on the host, and the image the DaemonSet names built from the binary under
/// test; the manifests. `None`: skipped (not root, not required).
fn setup(test: &str) -> Result<Option<Manifests>> {
    if !require_root(test) {
        return Ok(None);
    }
    ensure_host_tracefs()?;
    let manifests = Manifests::read()?;
    let image = manifest_image(manifests.daemonset()?)?;
    if let Ok(built) = std::env::var("APM_AGENT_IMAGE") {
        assert_eq!(
            built, image,
            "cargo xtask image built another image than the DaemonSet runs"
        );
    }
    let exists = podman()
        .args(["image", "exists", &image])
        .status()
        .context("running podman (cargo xtask setup installs it)")?;
    if !exists.success() {
        // Under `cargo xtask test` (which builds it) a missing image fails the test.
        assert!(
            std::env::var("APM_INTEGRATION").as_deref() != Ok("require"),
            "{test}: no image {image}"
        );
        eprintln!("\n!!! SKIPPED {test}: no image {image}: build it with `cargo xtask image`\n");
        return Ok(None);
    }
    let label = podman_out(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Labels \"{BINARY_LABEL}\"}}}}"),
        &image,
    ])?;
    let out = Command::new("sha256sum").arg(binary()).output()?;
    let sha = String::from_utf8_lossy(&out.stdout);
    let sha = sha.split_whitespace().next().unwrap_or_default();
    if label != sha {
        bail!(
            "{test}: {image} holds another binary than {} (rebuild it: `cargo xtask image`)",
            binary().display()
        );
    }
    Ok(Some(manifests))
}

/// The flags of a container for a test workload: the agent's image (Debian 12) with the
/// host's /usr mounted read-only over its own (Debian's python3 and psql without installing
/// them into an image), `OTEL_SERVICE_NAME`, the entrypoint, the network.
fn workload_args(
    name: &str,
    image: &str,
    service: &str,
    network: &[String],
    entrypoint: &str,
) -> Vec<String> {
    let mut args = vec![
        format!("--name={name}"),
        "--mount=type=bind,source=/usr,destination=/usr,ro=true".to_owned(),
        format!("--env=OTEL_SERVICE_NAME={service}"),
        format!("--entrypoint={entrypoint}"),
    ];
    args.extend(network.iter().cloned());
    args.push(image.to_owned());
    args
}

/// tests/servers/app.py in a container of its own, in its own network namespace, its port
/// 8000 published on the host's loopback at `port`; returns once it listens (read from the
/// container's /proc/net/tcp: no request is sent).
fn app_container(image: &str, service: &str, port: u16) -> Result<Container> {
    let name = unique("it-pod-web");
    let mut args = workload_args(
        &name,
        image,
        service,
        &[
            "--network=slirp4netns:port_handler=slirp4netns".to_owned(),
            format!("--publish=127.0.0.1:{port}:8000/tcp"),
            format!(
                "--mount=type=bind,source={},destination=/srv/app,ro=true",
                servers_dir().display()
            ),
            "--workdir=/srv/app".to_owned(),
            // Reached through the namespace's interface, not its loopback.
            "--env=APP_BIND=0.0.0.0".to_owned(),
        ],
        "/usr/bin/python3",
    );
    // The pid-1 slot: the container's argument list comes after the image.
    args.extend(["app.py".to_owned(), "8000".to_owned()]);
    let container = Container::run(&name, &args)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let pid = container.pid()?;
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        // Local address `00000000:1F40` (0.0.0.0:8000) in state 0A (LISTEN).
        if tcp.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"00000000:1F40") && f.get(3) == Some(&"0A")
        }) {
            return Ok(container);
        }
        if !container.running() || Instant::now() > deadline {
            bail!("app.py in {name} not listening:\n{}", container.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// psql in a container (sharing the host's network, as a `hostNetwork` pod does), reading
/// statements from its standard input; the container and the running podman client.
fn psql_container(image: &str, service: &str, pg: &Postgres) -> Result<(Container, Child)> {
    let name = unique("it-pod-psql");
    let mut args = workload_args(
        &name,
        image,
        service,
        &["--network=host".to_owned()],
        &format!("{PG_BIN}/psql"),
    );
    args.extend(
        [
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]
        .map(str::to_owned),
    );
    let child = podman()
        .args(["run", "--interactive"])
        .args(ulimit_flags())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("podman run psql")?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(id) = podman_out(&["inspect", "--format", "{{.Id}}", &name])
            && podman_out(&["inspect", "--format", "{{.State.Running}}", &name])? == "true"
        {
            return Ok((Container { name, id }, child));
        }
        if Instant::now() > deadline {
            bail!("psql container {name} not running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` GETs of /users/<i> with curl on the host, named `service`.
fn curl_host(service: &str, port: u16, n: usize) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}/users/7");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--fail"]).env("OTEL_SERVICE_NAME", service);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let status = cmd.status().context("curl")?;
    if !status.success() {
        bail!("curl {url}: {status}");
    }
    Ok(())
}

/// The container id in the host's `/proc/<pid>/cgroup` of the container's first process.
fn cgroup_id(container: &Container) -> Result<String> {
    let pid = container.pid()?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    libpod_id(&cgroup).with_context(|| format!("no libpod-<id> cgroup in\n{cgroup}"))
}

/// Spans of `service`, with their resources, once `n` arrived and a little longer.
fn spans_of(
    receiver: &Receiver,
    service: &str,
    n: usize,
) -> Vec<Vec<opentelemetry_proto::tonic::common::v1::KeyValue>> {
    let collect = || -> Vec<_> {
        receiver
            .resource_spans()
            .into_iter()
            .filter(|(r, _)| str_attr(r, "service.name").as_deref() == Some(service))
            .map(|(r, _)| r)
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while collect().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    collect()
}

#[test]
fn the_pod_counts_host_and_container_traffic_and_names_the_real_containers() -> Result<()> {
    let Some(manifests) =
        setup("the_pod_counts_host_and_container_traffic_and_names_the_real_containers")?
    else {
        return Ok(());
    };
    let image = manifest_image(manifests.daemonset()?)?;
    let receiver = Receiver::start()?;
    // The manifest's (commented-out) OTLP endpoint, set as a user would: the test's
    // receiver, on the host's loopback.
    let endpoint = format!("http://{HOST_FROM_POD}:{}", receiver.port);
    let pod = PodAgent::start(
        &manifests,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint)],
    )?;

    // A host process serving, host processes calling.
    let host_port = free_port();
    let host_app = unique("it-pod-host-app");
    let _host = app_server(host_port, &host_app)?;
    let curl_svc = unique("it-pod-curl");
    // A server in a container of its own; PostgreSQL on the host, psql in a container.
    let web_port = free_port();
    let web_app = unique("it-pod-web-app");
    let web = app_container(&image, &web_app, web_port)?;
    let pg_svc = unique("it-pod-pg");
    let pg = Postgres::start(&pg_svc)?;
    let psql_svc = unique("it-pod-psql");
    let (psql, mut psql_client) = psql_container(&image, &psql_svc, &pg)?;

    const HOST_N: usize = 3;
    const WEB_N: usize = 5;
    const SELECTS: usize = 4;
    curl_host(&curl_svc, host_port, HOST_N)?;
    curl_host(&curl_svc, web_port, WEB_N)?;
    {
        let stdin = psql_client.stdin.as_mut().context("psql stdin")?;
        for i in 1..=SELECTS {
            writeln!(stdin, "SELECT {i} AS n;")?;
        }
        stdin.flush()?;
    }

    let (route, ok) = ("/users/{id}", "200");
    let host_server = pod.settle(HOST_N as f64, WAIT, |m| {
        m.server_count(&host_app, "GET", route, ok)
    })?;
    let web_server = pod.settle(WEB_N as f64, WAIT, |m| {
        m.server_count(&web_app, "GET", route, ok)
    })?;
    let to_host = pod.settle(HOST_N as f64, WAIT, |m| {
        m.client_count(&curl_svc, host_port, "GET", route, ok)
    })?;
    let to_web = pod.settle(WEB_N as f64, WAIT, |m| {
        m.client_count(&curl_svc, web_port, "GET", route, ok)
    })?;
    let n = SELECTS as f64;
    let psql_selects = pod.settle(n, WAIT, |m| {
        client_ops(m, &psql_svc, "postgresql", "SELECT", &[])
    })?;
    let pg_selects = pod.settle(n, WAIT, |m| {
        server_ops(m, &pg_svc, "postgresql", "SELECT", &[])
    })?;
    let log = pod.logs();
    assert_eq!(host_server, HOST_N as f64, "host server\n{log}");
    assert_eq!(to_host, HOST_N as f64, "host curl -> host server\n{log}");
    assert_eq!(web_server, WEB_N as f64, "server in a container\n{log}");
    assert_eq!(to_web, WEB_N as f64, "host curl -> container\n{log}");
    assert_eq!(pg.logged("SELECT "), SELECTS, "the server's statement log");
    assert_eq!(psql_selects, n, "psql in a container\n{log}");
    assert_eq!(pg_selects, n, "host PostgreSQL\n{log}");

    // container.id: the id podman gave, and the id of the cgroup the kernel holds the
    // process in.
    for c in [&web, &psql] {
        assert_eq!(cgroup_id(c)?, c.id, "{}: cgroup vs podman's id", c.name);
    }
    let node = &pod.node_name;
    for (service, count, container) in [
        (&web_app, WEB_N, Some(&web)),
        (&psql_svc, SELECTS, Some(&psql)),
        (&host_app, HOST_N, None),
    ] {
        let resources = spans_of(&receiver, service, count);
        assert_eq!(resources.len(), count, "spans of {service}");
        for r in &resources {
            assert_eq!(
                str_attr(r, "container.id"),
                container.map(|c| c.id.clone()),
                "{service}: {r:?}"
            );
            // The Downward API's node name: `host.name`, and `k8s.node.name` through the
            // manifest's OTEL_RESOURCE_ATTRIBUTES.
            for key in ["host.name", "k8s.node.name"] {
                assert_eq!(
                    str_attr(r, key).as_deref(),
                    Some(node.as_str()),
                    "{service} {key}: {r:?}"
                );
            }
        }
    }
    drop(psql_client.stdin.take());
    let _ = psql_client.wait();
    let status = pod.stop()?;
    assert!(status < Duration::from_secs(pod.derived.grace_secs));
    Ok(())
}

/// `CapEff:` and the other capability sets of `/proc/<pid>/status`.
fn cap_set(status: &str, field: &str) -> Result<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("{field} in status"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(str::trim)
}

/// Mount options and optional fields (`shared:N`, `master:N`) of `mount_point` in a
/// mountinfo file: the last mount there wins.
fn mount_of(mountinfo: &str, mount_point: &str) -> Option<(String, String, String)> {
    mountinfo.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        (f.get(4) == Some(&mount_point)).then(|| {
            let options = f.get(5).copied().unwrap_or_default().to_owned();
            let optional = f.get(6..).map(|o| o.join(" ")).unwrap_or_default();
            let fstype = right.split(' ').next().unwrap_or_default().to_owned();
            (options, optional, fstype)
        })
    })
}

#[test]
fn the_pod_runs_as_the_manifest_says_and_refuses_without_a_required_capability() -> Result<()> {
    let Some(manifests) =
        setup("the_pod_runs_as_the_manifest_says_and_refuses_without_a_required_capability")?
    else {
        return Ok(());
    };
    let ds = manifests.daemonset()?.clone();
    let pod = PodAgent::start(&manifests, &[])?;
    let d = &pod.derived;
    let pid = pod.pid()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;

    // Capabilities: exactly the manifest's `add` (after `drop: [ALL]`).
    assert_eq!(d.dropped_capabilities, ["ALL"]);
    let want = d.added_capabilities.iter().try_fold(0u64, |acc, c| {
        capability_bit(c)
            .map(|b| acc | 1 << b)
            .with_context(|| format!("capability {c}"))
    })?;
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            cap_set(&status, set)?,
            want,
            "{set} {:?}",
            d.added_capabilities
        );
    }
    assert_eq!(cap_set(&status, "CapAmb:")?, 0);
    assert_eq!(cap_set(&status, "CapInh:")?, 0);
    // The README's table and the manifest agree (what the refusal below relies on).
    let granted: BTreeSet<String> = readme_capabilities()?
        .iter()
        .filter(|c| c.need != Need::MountOnly)
        .map(|c| c.short().to_owned())
        .collect();
    assert_eq!(
        granted,
        d.added_capabilities
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
    );

    // The rest of the security context, the namespaces, the mounts, the env, the resources:
    // each as the kernel sees it.
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let pod_spec = &ds["spec"]["template"]["spec"];
    if sc["seccompProfile"]["type"] == "Unconfined" {
        assert_eq!(
            status_field(&status, "Seccomp:"),
            Some("0"),
            "no seccomp filter"
        );
    }
    if sc["allowPrivilegeEscalation"] == false {
        assert_eq!(status_field(&status, "NoNewPrivs:"), Some("1"));
    }
    let uid = sc["runAsUser"].as_u64().context("runAsUser")?.to_string();
    let uids: Vec<&str> = status_field(&status, "Uid:")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(uids.iter().all(|u| *u == uid), "Uid: {uids:?}");
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let host_pid_ns = ns("self", "pid") == ns(&pid.to_string(), "pid");
    assert_eq!(Value::Bool(host_pid_ns), pod_spec["hostPID"], "hostPID");
    let host_net_ns = ns("self", "net") == ns(&pid.to_string(), "net");
    assert_eq!(
        Value::Bool(host_net_ns),
        pod_spec["hostNetwork"],
        "hostNetwork"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let (root_options, _, _) = mount_of(&mountinfo, "/").context("root mount")?;
    assert_eq!(
        root_options.split(',').any(|o| o == "ro"),
        sc["readOnlyRootFilesystem"] == true,
        "root: {root_options}"
    );
    for m in &d.mounts {
        let (options, optional, fstype) = mount_of(&mountinfo, &m.destination)
            .with_context(|| format!("{} not mounted:\n{mountinfo}", m.destination))?;
        assert_eq!(
            options.split(',').any(|o| o == "ro"),
            m.read_only,
            "{}: {options}",
            m.destination
        );
        // Propagation as the runtime recorded it; and as the kernel shows it, where the
        // host's mount is shared (a slave of a private mount has no master to show).
        let recorded = pod.container.inspect(&format!(
            "{{{{range .Mounts}}}}{{{{if eq .Destination \"{}\"}}}}{{{{.Propagation}}}}{{{{end}}}}{{{{end}}}}",
            m.destination
        ))?;
        assert_eq!(recorded, m.propagation, "{}", m.destination);
        let host_source = mount_of(&host_mounts, &m.source.to_string_lossy());
        if m.propagation == "rslave" && host_source.is_some_and(|(_, o, _)| o.contains("shared:")) {
            assert!(
                optional.contains("master:"),
                "{}: {optional}",
                m.destination
            );
        }
        if m.source.starts_with("/sys/kernel/tracing") {
            assert_eq!(fstype, "tracefs", "the host's tracefs");
        }
    }
    // The ConfigMap, as the agent reads it.
    let config = std::fs::read_to_string(format!("/proc/{pid}/root/etc/apm-agent/agent.toml"))?;
    let cm = manifests
        .docs
        .iter()
        .find_map(|d| d["data"]["agent.toml"].as_str())
        .context("ConfigMap agent.toml")?;
    assert_eq!(config, cm);
    // The environment: what the derivation computed, Downward API values included.
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let environ: BTreeSet<String> = environ
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    for (k, v) in &d.env {
        assert!(
            environ.contains(&format!("{k}={v}")),
            "{k}={v} in {environ:?}"
        );
        assert!(!v.contains("$("), "{k}={v}: unexpanded");
    }
    assert!(environ.contains(&format!("K8S_NODE_NAME={}", pod.node_name)));
    assert!(environ.contains(&format!("K8S_POD_NAME={}", pod.pod_name)));
    let ns_name = ds["metadata"]["namespace"].as_str().unwrap_or_default();
    assert!(environ.contains(&format!("K8S_POD_NAMESPACE={ns_name}")));
    // The command line: the image's entrypoint with the manifest's args.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv.get(1..), Some(d.args_of_image.as_slice()), "{argv:?}");
    // Resources, in the cgroup v1 hierarchies podman made.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path_of = |controller: &str| {
        cgroup.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, names, path) = (f.next()?, f.next()?, f.next()?);
            names
                .split(',')
                .any(|n| n == controller)
                .then(|| path.to_owned())
        })
    };
    let read = |controller: &str, file: &str| -> Result<u64> {
        let path = path_of(controller).with_context(|| format!("{controller} cgroup"))?;
        let v = std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{file}"))?;
        Ok(v.trim().parse()?)
    };
    if let Some(limit) = d.memory_limit {
        assert_eq!(read("memory", "memory.limit_in_bytes")?, limit);
    }
    if let Some(shares) = d.cpu_shares {
        assert_eq!(read("cpu", "cpu.shares")?, shares);
    }
    drop(pod);

    // Without any one required capability, the pod fails and says which.
    let required: Vec<String> = readme_capabilities()?
        .iter()
        .filter(|c| c.need == Need::Always)
        .map(|c| c.short().to_owned())
        .collect();
    assert!(required.len() >= 2, "README's required set: {required:?}");
    for missing in &required {
        let mut edited = ds.clone();
        let add = &mut edited["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            ["add"];
        let kept: Vec<Value> = add
            .as_array()
            .context("capabilities.add")?
            .iter()
            .filter(|c| c.as_str() != Some(missing.as_str()))
            .cloned()
            .collect();
        *add = Value::Array(kept);
        let pod = PodAgent::create(&manifests, &edited, &[])?;
        pod.container.wait_stopped(WAIT)?;
        let code = pod.container.exit_code()?;
        let logs = pod.logs();
        assert_ne!(code, 0, "without {missing}:\n{logs}");
        assert!(
            logs.contains("insufficient privileges") && logs.contains(&format!("CAP_{missing}")),
            "without {missing}:\n{logs}"
        );
    }
    Ok(())
}

#[test]
fn the_pods_probes_answer_sigterm_detaches_and_a_kill_leaves_no_program() -> Result<()> {
    let Some(manifests) =
        setup("the_pods_probes_answer_sigterm_detaches_and_a_kill_leaves_no_program")?
    else {
        return Ok(());
    };
    let pod = PodAgent::start(&manifests, &[])?;
    assert!(pod.derived.probes.len() >= 2, "{:?}", pod.derived.probes);
    for probe in &pod.derived.probes {
        // Each probe passes well within its failure budget, at its own timeout.
        let (code, body) = pod.probe(probe)?;
        assert_eq!(code, 200, "{probe:?}: {body}");
    }
    let ids = programs_of(pod.pid()?)?;
    let loaded = loaded_programs()?;
    assert!(!ids.is_empty(), "the agent holds no program");
    assert!(ids.iter().all(|i| loaded.contains(i)), "{ids:?} vs bpftool");

    // The kubelet's stop: SIGTERM, SIGKILL after the grace period.
    let took = pod.stop()?;
    let code = pod.container.exit_code()?;
    let logs = pod.logs();
    assert_eq!(code, 0, "exit after SIGTERM:\n{logs}");
    assert!(
        took < Duration::from_secs(pod.derived.grace_secs),
        "stopped by SIGKILL after {took:?}"
    );
    assert!(logs.contains("detaching"), "{logs}");
    assert_eq!(left_loaded(&ids)?, Vec::<u64>::new(), "left after SIGTERM");
    drop(pod);

    // A killed container (SIGKILL, no clean-up in the agent) leaves nothing either.
    let pod = PodAgent::start(&manifests, &[])?;
    let ids = programs_of(pod.pid()?)?;
    assert!(!ids.is_empty());
    pod.kill()?;
    pod.container.wait_stopped(WAIT)?;
    assert_eq!(pod.container.exit_code()?, 137, "{}", pod.logs());
    assert_eq!(left_loaded(&ids)?, Vec::<u64>::new(), "left after SIGKILL");
    Ok(())
}

/// The lines of a Dockerfile's last stage from its `COPY` of the binary on.
fn runtime_tail(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap_or(0);
    let stage = &lines[last_from..];
    let copy = stage
        .iter()
        .position(|l| l.starts_with("COPY ") && l.ends_with("/usr/local/bin/apm-agent"))
        .unwrap_or(stage.len());
    stage
        .get(copy + 1..)
        .unwrap_or_default()
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

#[test]
fn the_prebuilt_image_ends_as_the_dockerfile_does() -> Result<()> {
    let full = std::fs::read_to_string(deploy_dir().join("Dockerfile"))?;
    let prebuilt = std::fs::read_to_string(deploy_dir().join("Dockerfile.prebuilt"))?;
    let tail = runtime_tail(&full);
    assert!(
        tail.iter().any(|l| l.starts_with("ENTRYPOINT")),
        "deploy/Dockerfile's runtime stage: {tail:?}"
    );
    assert_eq!(runtime_tail(&prebuilt), tail);
    assert!(
        prebuilt.contains("COPY apm-agent /usr/local/bin/apm-agent"),
        "the prebuilt binary copied where the Dockerfile puts it"
    );
    Ok(())
}
