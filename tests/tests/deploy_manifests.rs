//! The Kubernetes manifests in deploy/: valid against the Kubernetes API schemas (offline,
//! `kubernetes-validate --strict`, whose schemas ship in the package), and the properties a
//! schema cannot see: no privileged container, exactly the capabilities the README documents,
//! probes on /healthz and /readyz of the port the agent listens on, read-only RBAC.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tests::deploy::{Need, deploy_dir, load_yaml, manifests, readme_capabilities, repo_root};

/// Kubernetes versions the manifests are validated against: the oldest still common, and the
/// newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The test venv (kubernetes-validate, PyYAML) is there, or the test must not run. It is
/// created by `cargo xtask setup`/`test`; when it is missing outside CI the test is skipped
/// loudly, under `APM_INTEGRATION=require` it fails.
fn venv_ready(test: &str) -> bool {
    let python = tests::pyotlp::python();
    if python.exists() {
        return true;
    }
    assert!(
        std::env::var("APM_INTEGRATION").as_deref() != Ok("require"),
        "{test}: {} is missing (cargo xtask setup creates it)",
        python.display()
    );
    eprintln!(
        "\n!!! SKIPPED {test}: {} is missing: run `cargo xtask setup`\n",
        python.display()
    );
    false
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Result<Vec<(PathBuf, Value)>> {
    let mut docs = Vec::new();
    for file in manifests()? {
        for doc in load_yaml(&file)? {
            docs.push((file.clone(), doc));
        }
    }
    Ok(docs)
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn manifests_validate_offline_against_the_kubernetes_schemas() -> Result<()> {
    if !venv_ready("manifests_validate_offline_against_the_kubernetes_schemas") {
        return Ok(());
    }
    let files = manifests()?;
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    // Numbered: `kubectl apply -f deploy/` goes in file-name order, the namespace first.
    for want in [
        "00-namespace.yaml",
        "10-rbac.yaml",
        "20-configmap.yaml",
        "30-daemonset.yaml",
    ] {
        assert!(names.contains(want), "deploy/{want} missing: {names:?}");
    }
    let resources = documents()?.len();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(tests::pyotlp::python())
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&files)
            .output()
            .context("running kubernetes-validate")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {version}:\n{text}");
        // An unknown kind or apiVersion is only a warning (exit 0) for kubernetes-validate:
        // every resource must have passed, nothing may be left unchecked.
        assert!(
            !text.contains("ERROR") && !text.contains("WARN"),
            "Kubernetes {version}:\n{text}"
        );
        let passed = text.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed, resources,
            "Kubernetes {version}: resources validated\n{text}"
        );
    }
    Ok(())
}

/// Every `privileged` key anywhere in `v`, with its value.
fn privileged_flags(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "privileged" || k == "allowPrivilegeEscalation" {
                    out.push(child.clone());
                }
                privileged_flags(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| privileged_flags(i, out)),
        _ => {}
    }
}

/// The DaemonSet's agent container, and its pod spec.
fn agent_container(docs: &[(PathBuf, Value)]) -> Result<(Value, Value)> {
    let sets = of_kind(docs, "DaemonSet");
    let [ds] = sets.as_slice() else {
        bail!("want exactly one DaemonSet, found {}", sets.len());
    };
    let pod = ds["spec"]["template"]["spec"].clone();
    let containers = pod["containers"].as_array().context("containers")?;
    let [container] = containers.as_slice() else {
        bail!("want exactly one container, found {}", containers.len());
    };
    Ok((container.clone(), pod))
}

/// `listen` of the ConfigMap's agent.toml.
fn configured_listen(docs: &[(PathBuf, Value)]) -> Result<String> {
    let maps = of_kind(docs, "ConfigMap");
    let toml = maps
        .iter()
        .find_map(|m| m["data"]["agent.toml"].as_str())
        .context("a ConfigMap with agent.toml")?;
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("listen"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .context("listen in agent.toml")
}

#[test]
fn daemonset_is_unprivileged_with_the_documented_capabilities() -> Result<()> {
    if !venv_ready("daemonset_is_unprivileged_with_the_documented_capabilities") {
        return Ok(());
    }
    let docs = documents()?;
    let mut flags = Vec::new();
    for (_, d) in &docs {
        privileged_flags(d, &mut flags);
    }
    assert!(
        flags.iter().all(|f| *f == Value::Bool(false)),
        "privileged or allowPrivilegeEscalation set: {flags:?}"
    );

    let (container, pod) = agent_container(&docs)?;
    assert_eq!(pod["hostPID"], true, "hostPID: the host's /proc and pids");
    let sc = &container["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let documented = readme_capabilities()?;
    let granted: BTreeSet<String> = documented
        .iter()
        .filter(|c| c.need != Need::MountOnly)
        .map(|c| c.short().to_owned())
        .collect();
    assert_eq!(
        added, granted,
        "DaemonSet capabilities vs README's table ({documented:?})"
    );

    // The host's tracefs is mounted, so the agent never needs to mount one.
    let mounts = container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?;
    let tracefs = mounts
        .iter()
        .find(|m| m["mountPath"] == "/sys/kernel/tracing")
        .context("a volume mounted at /sys/kernel/tracing")?;
    assert_eq!(tracefs["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == tracefs["name"]))
        .context("the tracefs volume")?;
    assert_eq!(volume["hostPath"]["path"], "/sys/kernel/tracing");

    // Node name from the Downward API.
    let env = container["env"].as_array().context("env")?;
    let node = env
        .iter()
        .find(|e| e["name"] == "K8S_NODE_NAME")
        .context("K8S_NODE_NAME")?;
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    Ok(())
}

#[test]
fn probes_reach_healthz_and_readyz_on_the_agents_port() -> Result<()> {
    if !venv_ready("probes_reach_healthz_and_readyz_on_the_agents_port") {
        return Ok(());
    }
    let docs = documents()?;
    let (container, pod) = agent_container(&docs)?;
    let listen = configured_listen(&docs)?;
    let (host, port) = listen.rsplit_once(':').context("listen host:port")?;
    let port: u64 = port.parse()?;
    // The kubelet probes the pod IP: a loopback listener would fail every probe.
    assert_eq!(host, "0.0.0.0", "listen {listen}");
    assert_ne!(
        pod["hostNetwork"], true,
        "0.0.0.0 must be the pod's own network namespace, not the node's"
    );
    let ports = container["ports"].as_array().context("ports")?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        // A named port resolves to the container port; either way it is the listener's.
        let target = match &get["port"] {
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .with_context(|| format!("{probe}: no container port named {name}"))?,
            other => other.as_u64().context("probe port")?,
        };
        assert_eq!(target, port, "{probe} port vs listen {listen}");
    }
    Ok(())
}

#[test]
fn rbac_reads_pods_and_replicasets_only() -> Result<()> {
    if !venv_ready("rbac_reads_pods_and_replicasets_only") {
        return Ok(());
    }
    let docs = documents()?;
    assert!(
        of_kind(&docs, "Role").is_empty() && of_kind(&docs, "RoleBinding").is_empty(),
        "namespaced roles"
    );
    let roles = of_kind(&docs, "ClusterRole");
    let [role] = roles.as_slice() else {
        bail!("want exactly one ClusterRole, found {}", roles.len());
    };
    let mut resources = BTreeSet::new();
    for rule in role["rules"].as_array().context("rules")? {
        let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
        assert_eq!(
            verbs,
            ["get", "list", "watch"].map(str::to_owned).into(),
            "{rule}"
        );
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        assert!(rule.get("resourceNames").is_none(), "{rule}");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                resources.insert((group.clone(), resource));
            }
        }
    }
    assert_eq!(
        resources,
        [("", "pods"), ("apps", "replicasets")]
            .map(|(g, r)| (g.to_owned(), r.to_owned()))
            .into(),
    );

    let bindings = of_kind(&docs, "ClusterRoleBinding");
    let [binding] = bindings.as_slice() else {
        bail!("want exactly one ClusterRoleBinding");
    };
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let (_, pod) = agent_container(&docs)?;
    let subjects = binding["subjects"].as_array().context("subjects")?;
    assert!(
        subjects.iter().any(|s| s["kind"] == "ServiceAccount"
            && s["name"] == pod["serviceAccountName"]
            && s["namespace"] == "apm-agent"),
        "{subjects:?}"
    );
    let accounts = of_kind(&docs, "ServiceAccount");
    assert!(
        accounts
            .iter()
            .any(|a| a["metadata"]["name"] == pod["serviceAccountName"]),
        "the pod's ServiceAccount is defined"
    );
    Ok(())
}

/// Keys of the README's configuration table (first column, back-quoted).
fn readme_config_keys() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(repo_root().join("README.md"))?;
    let section = text
        .split("\n## Configuration")
        .nth(1)
        .context("README has a Configuration section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut keys = BTreeSet::new();
    for line in section.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let first = row.split('|').next().unwrap_or_default();
        for key in first.split(',') {
            keys.insert(key.trim().trim_matches('`').to_owned());
        }
    }
    Ok(keys)
}

#[test]
fn configmap_uses_only_documented_keys() -> Result<()> {
    if !venv_ready("configmap_uses_only_documented_keys") {
        return Ok(());
    }
    let docs = documents()?;
    let known = readme_config_keys()?;
    let toml = of_kind(&docs, "ConfigMap")
        .iter()
        .find_map(|m| m["data"]["agent.toml"].as_str().map(str::to_owned))
        .context("agent.toml")?;
    // Set and commented-out keys alike (`# otlp_endpoint = ...`).
    let used: Vec<String> = toml
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.contains(' '))
        .collect();
    assert!(!used.is_empty());
    for key in &used {
        assert!(
            known.contains(key),
            "agent.toml key {key} is not in README's Configuration table"
        );
    }
    Ok(())
}

#[test]
fn dockerfile_builds_with_the_projects_toolchain() -> Result<()> {
    let docker = std::fs::read_to_string(deploy_dir().join("Dockerfile"))?;
    let prereq = std::fs::read_to_string(repo_root().join("xtask/src/prereq.rs"))?;
    let linker = prereq
        .lines()
        .find_map(|l| l.trim().strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .context("BPF_LINKER_VERSION in prereq.rs")?;
    for want in [
        format!("cargo install bpf-linker --version {linker}"),
        "--component rust-src".to_owned(),
        "llvm-22-dev".to_owned(),
        "cargo build --release --locked -p apm-agent".to_owned(),
        "ca-certificates".to_owned(),
    ] {
        assert!(docker.contains(&want), "deploy/Dockerfile lacks {want:?}");
    }
    assert!(
        Path::new(&deploy_dir().join("Dockerfile.dockerignore")).is_file(),
        "build context without an ignore file sends target/"
    );
    Ok(())
}
