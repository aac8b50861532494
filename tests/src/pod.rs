//! The DaemonSet's pod as `podman run` flags, derived from `deploy/` (never written by hand).
//!
//! podman 4.3's `kube play` cannot run this pod as the manifest says: it ignores `hostPID`
//! (the container gets a PID namespace of its own) and `seccompProfile` in the security
//! context, refuses the Downward API's `spec.nodeName` and `metadata.namespace`, does not
//! expand `$(VAR)` in env values, and turns probes into health checks that need `curl` in the
//! image and systemd timers. So this module reads the DaemonSet's pod template and writes the
//! flags a kubelet's runtime would apply; every field it does not know fails the derivation,
//! and the fields that only mean something to a cluster (scheduling, DNS, the API token) are
//! listed in [`DerivedPod::cluster_only`].
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::deploy::{load_yaml, manifests};

/// Every document of `deploy/`.
pub fn documents() -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for file in manifests()? {
        docs.extend(load_yaml(&file)?);
    }
    Ok(docs)
}

/// The one DaemonSet of `docs`.
pub fn daemonset(docs: &[Value]) -> Result<&Value> {
    let sets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
    match sets.as_slice() {
        [ds] => Ok(ds),
        _ => bail!("want one DaemonSet in deploy/, found {}", sets.len()),
    }
}

/// What the node gives the pod that the manifest cannot say.
pub struct PodInput<'a> {
    /// `metadata.name` of the pod (a DaemonSet's pods are `<name>-<suffix>`).
    pub pod_name: &'a str,
    /// `spec.nodeName`.
    pub node_name: &'a str,
    /// Where `configMap` volumes are projected (a folder per volume).
    pub volumes_dir: &'a Path,
    /// Environment appended to the container's (as a user editing the manifest would).
    pub extra_env: &'a [(String, String)],
}

/// A probe of the manifest, resolved to ports.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `livenessProbe`, `readinessProbe`.
    pub kind: String,
    pub path: String,
    pub container_port: u16,
    /// The host loopback port podman publishes `container_port` on.
    pub host_port: u16,
    pub initial_delay_secs: u64,
    pub period_secs: u64,
    pub timeout_secs: u64,
    pub failure_threshold: u64,
}

/// The pod as podman flags.
#[derive(Debug, Clone)]
pub struct DerivedPod {
    /// The container's name (`<pod>-<container>`, as `kube play` names it).
    pub name: String,
    /// Arguments of `podman run` after `--detach`: flags, the image, its arguments.
    pub args: Vec<String>,
    pub image: String,
    /// Capabilities added (after dropping `drop`), as the manifest spells them (`BPF`).
    pub added_capabilities: Vec<String>,
    /// Capabilities dropped.
    pub dropped_capabilities: Vec<String>,
    /// Container port -> host loopback port.
    pub published: BTreeMap<u16, u16>,
    pub probes: Vec<Probe>,
    /// `terminationGracePeriodSeconds` (the SIGTERM-to-SIGKILL time).
    pub grace_secs: u64,
    /// The container's environment, `$(VAR)` expanded.
    pub env: Vec<(String, String)>,
    /// Entrypoint override and arguments (`command`, `args`).
    pub command: Vec<String>,
    pub args_of_image: Vec<String>,
    /// (mount path, host source, read-only, propagation) of every volume mount.
    pub mounts: Vec<Mount>,
    /// Memory limit in bytes, and cpu shares from the CPU request.
    pub memory_limit: Option<u64>,
    pub cpu_shares: Option<u64>,
    /// Fields with no meaning outside a cluster: (path, why).
    pub cluster_only: Vec<(String, &'static str)>,
}

#[derive(Debug, Clone)]
pub struct Mount {
    pub destination: String,
    pub source: PathBuf,
    pub read_only: bool,
    /// `rslave`, `rshared`, `rprivate`.
    pub propagation: &'static str,
}

/// Pod-spec fields a runtime has nothing to do with.
const POD_CLUSTER_ONLY: [(&str, &str); 5] = [
    (
        "serviceAccountName",
        "API token for the pod watcher: no API server here",
    ),
    ("priorityClassName", "scheduling"),
    ("tolerations", "scheduling"),
    ("dnsPolicy", "cluster DNS: none here"),
    ("nodeSelector", "scheduling"),
];

/// Derives the podman flags of the DaemonSet `ds`'s pod (one container), with the volumes of
/// `config_maps` projected into `input.volumes_dir`.
pub fn derive(ds: &Value, config_maps: &[Value], input: &PodInput) -> Result<DerivedPod> {
    let namespace = ds["metadata"]["namespace"]
        .as_str()
        .context("DaemonSet metadata.namespace")?;
    let spec = &ds["spec"]["template"]["spec"];
    let spec_map = spec.as_object().context("pod template spec")?;
    let containers = spec["containers"].as_array().context("containers")?;
    let [c] = containers.as_slice() else {
        bail!("want one container, found {}", containers.len());
    };
    let cname = c["name"].as_str().context("container name")?;
    let name = format!("{}-{cname}", input.pod_name);
    let mut args: Vec<String> = vec![
        format!("--name={name}"),
        format!("--hostname={}", input.pod_name),
    ];
    let mut cluster_only = Vec::new();
    let mut grace_secs = 30;

    for (key, value) in spec_map {
        match key.as_str() {
            "containers" | "volumes" => {}
            "hostPID" => {
                if value.as_bool().context("hostPID")? {
                    args.push("--pid=host".into());
                }
            }
            "hostIPC" => {
                if value.as_bool().context("hostIPC")? {
                    args.push("--ipc=host".into());
                }
            }
            "hostNetwork" => {
                if value.as_bool().context("hostNetwork")? {
                    args.push("--network=host".into());
                } else {
                    // The pod's own network namespace. A cluster's CNI plugin gives it an
                    // address the node reaches; here slirp4netns does, publishing the pod's
                    // ports on the host's loopback only and reaching the host's loopback at
                    // 10.0.2.2 (no bridge, nothing on the host's interfaces).
                    args.push(
                        "--network=slirp4netns:allow_host_loopback=true,port_handler=slirp4netns"
                            .into(),
                    );
                }
            }
            "terminationGracePeriodSeconds" => {
                grace_secs = value.as_u64().context("terminationGracePeriodSeconds")?;
                args.push(format!("--stop-timeout={grace_secs}"));
            }
            other => match POD_CLUSTER_ONLY.iter().find(|(k, _)| *k == other) {
                Some((k, why)) => cluster_only.push((format!("spec.{k}"), *why)),
                None => bail!("pod spec field {other} is unknown to the derivation"),
            },
        }
    }
    if spec.get("hostNetwork").is_none() {
        bail!("hostNetwork: say it (the derivation does not guess the network)");
    }

    let mut derived = DerivedPod {
        name,
        args: Vec::new(),
        image: String::new(),
        added_capabilities: Vec::new(),
        dropped_capabilities: Vec::new(),
        published: BTreeMap::new(),
        probes: Vec::new(),
        grace_secs,
        env: Vec::new(),
        command: Vec::new(),
        args_of_image: Vec::new(),
        mounts: Vec::new(),
        memory_limit: None,
        cpu_shares: None,
        cluster_only,
    };
    let mut ports: Vec<(Option<String>, u16)> = Vec::new();
    let c_map = c.as_object().context("container")?;
    for (key, value) in c_map {
        match key.as_str() {
            "name" | "livenessProbe" | "readinessProbe" => {}
            "image" => derived.image = value.as_str().context("image")?.to_owned(),
            "imagePullPolicy" => args.push(format!(
                "--pull={}",
                match value.as_str() {
                    Some("IfNotPresent") => "missing",
                    Some("Never") => "never",
                    Some("Always") => "always",
                    other => bail!("imagePullPolicy {other:?}"),
                }
            )),
            "command" => derived.command = strings(value).context("command")?,
            "args" => derived.args_of_image = strings(value).context("args")?,
            "env" => {
                derived.env = env(value, namespace, ds, input)?;
                derived
                    .env
                    .extend(input.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            "ports" => {
                for p in value.as_array().context("ports")? {
                    let port = p["containerPort"].as_u64().context("containerPort")?;
                    let proto = p["protocol"].as_str().unwrap_or("TCP").to_lowercase();
                    let port = u16::try_from(port)?;
                    let host = crate::net::free_port();
                    args.push(format!("--publish=127.0.0.1:{host}:{port}/{proto}"));
                    derived.published.insert(port, host);
                    ports.push((p["name"].as_str().map(str::to_owned), port));
                }
            }
            "securityContext" => security(value, &mut args, &mut derived)?,
            "resources" => resources(value, &mut args, &mut derived)?,
            "volumeMounts" => {
                for m in value.as_array().context("volumeMounts")? {
                    let mount = volume_mount(m, spec, config_maps, input.volumes_dir)?;
                    args.push(format!(
                        "--mount=type=bind,source={},destination={},ro={},bind-propagation={}",
                        mount.source.display(),
                        mount.destination,
                        mount.read_only,
                        mount.propagation
                    ));
                    derived.mounts.push(mount);
                }
            }
            other => bail!("container field {other} is unknown to the derivation"),
        }
    }
    if derived.env.is_empty() {
        derived
            .env
            .extend(input.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for (k, v) in &derived.env {
        args.push(format!("--env={k}={v}"));
    }
    for kind in ["livenessProbe", "readinessProbe"] {
        if let Some(p) = c.get(kind) {
            derived
                .probes
                .push(probe(kind, p, &ports, &derived.published)?);
        }
    }
    if let Some((first, rest)) = derived.command.split_first() {
        // A Kubernetes `command` replaces the image's entrypoint; its rest are arguments.
        args.push(format!("--entrypoint={first}"));
        args.push(derived.image.clone());
        args.extend(rest.iter().cloned());
    } else {
        args.push(derived.image.clone());
    }
    args.extend(derived.args_of_image.iter().cloned());
    derived.args = args;
    Ok(derived)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The container's environment as the kubelet computes it: literal values with `$(VAR)` of
/// earlier entries expanded, Downward API fields filled in.
fn env(
    list: &Value,
    namespace: &str,
    ds: &Value,
    input: &PodInput,
) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in list.as_array().context("env")? {
        let name = e["name"].as_str().context("env name")?.to_owned();
        let value = if let Some(v) = e.get("value") {
            expand(v.as_str().context("env value")?, &out)
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => input.pod_name.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                "spec.nodeName" => input.node_name.to_owned(),
                "spec.serviceAccountName" => ds["spec"]["template"]["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned(),
                other => bail!("env {name}: fieldPath {other} is unknown to the derivation"),
            }
        } else {
            bail!("env {name}: only value and valueFrom.fieldRef are derived: {e}");
        };
        out.push((name, value));
    }
    Ok(out)
}

/// `$(NAME)` replaced by the value of an earlier variable (left as it is otherwise), `$$`
/// written `$`: the kubelet's expansion.
fn expand(value: &str, earlier: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = earlier.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn security(sc: &Value, args: &mut Vec<String>, derived: &mut DerivedPod) -> Result<()> {
    let map = sc.as_object().context("securityContext")?;
    let mut user = None;
    let mut group = None;
    for (key, value) in map {
        match key.as_str() {
            "privileged" => {
                if value.as_bool().context("privileged")? {
                    args.push("--privileged".into());
                }
            }
            "runAsUser" => user = Some(value.as_u64().context("runAsUser")?),
            "runAsGroup" => group = Some(value.as_u64().context("runAsGroup")?),
            "runAsNonRoot" => {
                // The kubelet refuses to start a uid-0 container with runAsNonRoot: true.
                if value.as_bool().context("runAsNonRoot")?
                    && map.get("runAsUser") == Some(&0.into())
                {
                    bail!("runAsNonRoot with runAsUser 0: the kubelet would not start it");
                }
            }
            "allowPrivilegeEscalation" => {
                if !value.as_bool().context("allowPrivilegeEscalation")? {
                    args.push("--security-opt=no-new-privileges".into());
                }
            }
            "readOnlyRootFilesystem" => {
                if value.as_bool().context("readOnlyRootFilesystem")? {
                    // Kubernetes mounts no tmpfs on /tmp, /run... of a read-only root.
                    args.push("--read-only".into());
                    args.push("--read-only-tmpfs=false".into());
                }
            }
            "capabilities" => {
                for key in value.as_object().context("capabilities")?.keys() {
                    if key != "add" && key != "drop" {
                        bail!("capabilities.{key}");
                    }
                }
                derived.dropped_capabilities = value
                    .get("drop")
                    .map_or(Some(Vec::new()), strings)
                    .context("capabilities.drop")?;
                derived.added_capabilities = value
                    .get("add")
                    .map_or(Some(Vec::new()), strings)
                    .context("capabilities.add")?;
                for cap in &derived.dropped_capabilities {
                    args.push(format!("--cap-drop={cap}"));
                }
                for cap in &derived.added_capabilities {
                    args.push(format!("--cap-add={cap}"));
                }
            }
            "seccompProfile" => match value["type"].as_str() {
                Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".into()),
                // podman's default profile stands for the runtime's default.
                Some("RuntimeDefault") => {}
                Some("Localhost") => args.push(format!(
                    "--security-opt=seccomp=/var/lib/kubelet/seccomp/{}",
                    value["localhostProfile"]
                        .as_str()
                        .context("localhostProfile")?
                )),
                other => bail!("seccompProfile type {other:?}"),
            },
            other => bail!("securityContext.{other} is unknown to the derivation"),
        }
    }
    match (user, group) {
        (Some(u), Some(g)) => args.push(format!("--user={u}:{g}")),
        (Some(u), None) => args.push(format!("--user={u}")),
        (None, Some(_)) => bail!("runAsGroup without runAsUser"),
        (None, None) => {}
    }
    Ok(())
}

fn resources(r: &Value, args: &mut Vec<String>, derived: &mut DerivedPod) -> Result<()> {
    for (key, value) in r.as_object().context("resources")? {
        for (resource, quantity) in value.as_object().context("resources")? {
            let q = quantity
                .as_str()
                .map_or_else(|| quantity.to_string(), str::to_owned);
            match (key.as_str(), resource.as_str()) {
                ("limits", "memory") => {
                    let bytes = bytes(&q)?;
                    args.push(format!("--memory={bytes}"));
                    derived.memory_limit = Some(bytes);
                }
                ("limits", "cpu") => {
                    args.push(format!("--cpus={}", millicores(&q)? as f64 / 1000.0))
                }
                ("requests", "cpu") => {
                    // The kubelet's conversion: shares = millicores * 1024 / 1000 (min 2).
                    let shares = (millicores(&q)? * 1024 / 1000).max(2);
                    args.push(format!("--cpu-shares={shares}"));
                    derived.cpu_shares = Some(shares);
                }
                // A request is for the scheduler; cgroup v1 has no memory floor to set.
                ("requests", "memory") => derived
                    .cluster_only
                    .push(("resources.requests.memory".into(), "scheduling")),
                (k, res) => bail!("resources.{k}.{res} is unknown to the derivation"),
            }
        }
    }
    Ok(())
}

/// A Kubernetes quantity of bytes (`512Mi`, `1G`, `1000`).
fn bytes(q: &str) -> Result<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<u64>().with_context(|| format!("quantity {q}"))? * mult);
        }
    }
    q.parse().with_context(|| format!("quantity {q}"))
}

/// A CPU quantity in millicores (`100m`, `2`).
fn millicores(q: &str) -> Result<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().with_context(|| format!("cpu {q}")),
        None => Ok(q.parse::<u64>().with_context(|| format!("cpu {q}"))? * 1000),
    }
}

fn volume_mount(
    m: &Value,
    spec: &Value,
    config_maps: &[Value],
    volumes_dir: &Path,
) -> Result<Mount> {
    for key in m.as_object().context("volumeMount")?.keys() {
        if !["name", "mountPath", "readOnly", "mountPropagation"].contains(&key.as_str()) {
            bail!("volumeMount field {key} is unknown to the derivation");
        }
    }
    let name = m["name"].as_str().context("volumeMount name")?;
    let destination = m["mountPath"].as_str().context("mountPath")?.to_owned();
    let read_only = m["readOnly"].as_bool().unwrap_or(false);
    let propagation = match m["mountPropagation"].as_str() {
        None | Some("None") => "rprivate",
        Some("HostToContainer") => "rslave",
        Some("Bidirectional") => "rshared",
        Some(other) => bail!("mountPropagation {other}"),
    };
    let volume = spec["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .with_context(|| format!("volume {name}"))?;
    let source = if let Some(host) = volume.get("hostPath") {
        let path = PathBuf::from(host["path"].as_str().context("hostPath path")?);
        match host["type"].as_str() {
            None | Some("") => {}
            Some("Directory") => {
                if !path.is_dir() {
                    bail!("hostPath {} is not a directory", path.display());
                }
            }
            Some(other) => bail!("hostPath type {other} is unknown to the derivation"),
        }
        path
    } else if let Some(cm) = volume.get("configMap") {
        let cm_name = cm["name"].as_str().context("configMap name")?;
        if cm.get("items").is_some() {
            bail!("configMap items are not derived");
        }
        let map = config_maps
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm_name)
            .with_context(|| format!("ConfigMap {cm_name}"))?;
        let dir = volumes_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        for (file, content) in map["data"].as_object().context("ConfigMap data")? {
            std::fs::write(dir.join(file), content.as_str().context("ConfigMap value")?)?;
        }
        dir
    } else {
        bail!("volume {name}: only hostPath and configMap are derived: {volume}");
    };
    Ok(Mount {
        destination,
        source,
        read_only,
        propagation,
    })
}

fn probe(
    kind: &str,
    p: &Value,
    ports: &[(Option<String>, u16)],
    published: &BTreeMap<u16, u16>,
) -> Result<Probe> {
    let get = p
        .get("httpGet")
        .with_context(|| format!("{kind}: only httpGet is derived"))?;
    let container_port = match &get["port"] {
        Value::String(name) => ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .map(|(_, port)| *port)
            .with_context(|| format!("{kind}: no port named {name}"))?,
        other => u16::try_from(other.as_u64().context("probe port")?)?,
    };
    let host_port = *published
        .get(&container_port)
        .with_context(|| format!("{kind}: port {container_port} is not a container port"))?;
    let field = |k: &str, default: u64| p[k].as_u64().unwrap_or(default);
    Ok(Probe {
        kind: kind.to_owned(),
        path: get["path"].as_str().unwrap_or("/").to_owned(),
        container_port,
        host_port,
        // The Kubernetes defaults.
        initial_delay_secs: field("initialDelaySeconds", 0),
        period_secs: field("periodSeconds", 10),
        timeout_secs: field("timeoutSeconds", 1),
        failure_threshold: field("failureThreshold", 3),
    })
}

/// Bit of a Linux capability (as Kubernetes spells it: `BPF`, `SYS_ADMIN`) in `CapEff`.
pub fn capability_bit(name: &str) -> Option<u32> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let name = name.trim_start_matches("CAP_");
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_as_the_kubelet_does() {
        let earlier = vec![("NODE".to_owned(), "n1".to_owned())];
        assert_eq!(
            expand("k8s.node.name=$(NODE)", &earlier),
            "k8s.node.name=n1"
        );
        assert_eq!(
            expand("$(MISSING)/$$(NODE)/$", &earlier),
            "$(MISSING)/$(NODE)/$"
        );
    }

    #[test]
    fn quantities() -> Result<()> {
        assert_eq!(bytes("512Mi")?, 512 << 20);
        assert_eq!(bytes("1G")?, 1_000_000_000);
        assert_eq!(millicores("100m")?, 100);
        assert_eq!(millicores("2")?, 2000);
        assert!(bytes("lots").is_err());
        Ok(())
    }

    #[test]
    fn capability_bits() {
        assert_eq!(capability_bit("DAC_READ_SEARCH"), Some(2));
        assert_eq!(capability_bit("CAP_SYS_PTRACE"), Some(19));
        assert_eq!(capability_bit("SYS_ADMIN"), Some(21));
        assert_eq!(capability_bit("SYSLOG"), Some(34));
        assert_eq!(capability_bit("PERFMON"), Some(38));
        assert_eq!(capability_bit("BPF"), Some(39));
        assert_eq!(capability_bit("NOPE"), None);
    }
}
