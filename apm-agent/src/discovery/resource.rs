//! The OTLP resource of an observed process: who sent a span or a metric point.
//!
//! `service.name` (resolved by [`super::service_name`]), `service.instance.id` (host, pid and
//! process start time: unique across pid reuse and restarts), `host.name`, `process.pid`,
//! `process.executable.name`, `container.id` (from the cgroup path, when the process runs in
//! a container), in Kubernetes the `k8s.*` attributes of its pod, container and workload
//! (see [`super::kubernetes`]), and the process's own `OTEL_RESOURCE_ATTRIBUTES`, bounded.
use std::sync::{Arc, OnceLock};

/// Attributes for every observed process (the agent's own `OTEL_RESOURCE_ATTRIBUTES`), below
/// each process's own.
static AGENT_ATTRIBUTES: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// Sets the attributes added to every resource (a process's own values win). Process-wide
/// configuration, set once at start-up; later calls are ignored.
pub fn set_agent_attributes(attributes: &str) {
    let _ = AGENT_ATTRIBUTES.set(parse_resource_attributes(attributes));
}

use crate::traces::span::{Resource, Value};

/// Attributes kept from one process's `OTEL_RESOURCE_ATTRIBUTES`.
const MAX_EXTRA: usize = 32;
/// Longest key or value kept from it.
const MAX_EXTRA_LEN: usize = 255;

/// Builds the resource of `pid`, named `service`.
pub fn resolve(pid: u32, service: &str, host_name: &str) -> Arc<Resource> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.trim_end_matches(" (deleted)").to_owned());
    let start = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| start_time(&stat));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let container = super::cgroup::container_id(&cgroup);
    let kubernetes = super::kubernetes::lookup_cgroup(&cgroup);
    let mut extra = std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|env| env_var(&env, "OTEL_RESOURCE_ATTRIBUTES").map(parse_resource_attributes))
        .unwrap_or_default();
    merge_below(
        &mut extra,
        AGENT_ATTRIBUTES.get().map_or(&[], Vec::as_slice),
    );
    let mut attributes = vec![
        ("service.name", Value::Str(service.to_owned())),
        (
            "service.instance.id",
            Value::Str(format!("{host_name}:{pid}:{}", start.unwrap_or(0))),
        ),
        ("host.name", Value::Str(host_name.to_owned())),
        ("process.pid", Value::Int(i64::from(pid))),
    ];
    if let Some(exe) = exe {
        attributes.push(("process.executable.name", Value::Str(exe)));
    }
    if let Some(id) = container {
        attributes.push(("container.id", Value::Str(id)));
    }
    if let Some(meta) = &kubernetes {
        attributes.extend(
            meta.attributes()
                .into_iter()
                .map(|(k, v)| (k, Value::Str(v))),
        );
        // Pod labels win over what the process declares, like the other `k8s.*` keys.
        let labels = meta.label_attributes();
        extra.retain(|(k, _)| !labels.iter().any(|(l, _)| l == k));
        let room = MAX_EXTRA.saturating_sub(extra.len());
        extra.extend(labels.into_iter().take(room));
    }
    // The agent's own keys win over what the process declares.
    let extra = extra
        .into_iter()
        .filter(|(k, _)| !attributes.iter().any(|(own, _)| own == k))
        .collect();
    Arc::new(Resource { attributes, extra })
}

/// Adds the `defaults` whose keys `own` lacks, within the [`MAX_EXTRA`] bound.
fn merge_below(own: &mut Vec<(String, String)>, defaults: &[(String, String)]) {
    for (k, v) in defaults {
        if own.len() >= MAX_EXTRA {
            break;
        }
        if !own.iter().any(|(o, _)| o == k) {
            own.push((k.clone(), v.clone()));
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot). The command name
/// (field 2) may hold spaces and parentheses: fields are counted after its last `)`.
pub fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The value of `key` in a NUL-separated environment block.
pub fn env_var<'a>(environ: &'a [u8], key: &str) -> Option<&'a str> {
    environ.split(|b| *b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        std::str::from_utf8(rest).ok()
    })
}

/// `key1=value1,key2=value2` with percent-encoded values (the `OTEL_RESOURCE_ATTRIBUTES`
/// format). Malformed entries are skipped; count and lengths are bounded.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let (k, v) = (k.trim(), percent_decode(v.trim())?);
            (!k.is_empty() && k.len() <= MAX_EXTRA_LEN && v.len() <= MAX_EXTRA_LEN)
                .then(|| (k.to_owned(), v))
        })
        .take(MAX_EXTRA)
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_attributes_sit_below_the_process_own() {
        let mut own = vec![("deployment.environment".to_owned(), "canary".to_owned())];
        merge_below(
            &mut own,
            &parse_resource_attributes("deployment.environment=prod,cloud.region=eu-west-1"),
        );
        assert_eq!(
            own,
            vec![
                ("deployment.environment".to_owned(), "canary".to_owned()),
                ("cloud.region".to_owned(), "eu-west-1".to_owned()),
            ]
        );
    }

    #[test]
    fn resource_attributes_are_decoded_and_bounded() {
        let got = parse_resource_attributes(
            "deployment.environment=prod, team=a%20b,broken,=x,bad=%zz,k=v",
        );
        assert_eq!(
            got,
            vec![
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "a b".to_owned()),
                ("k".to_owned(), "v".to_owned()),
            ]
        );
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_resource_attributes(&many.join(",")).len(), MAX_EXTRA);
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(start_time(stat), Some(98765));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn this_process_resolves() {
        let r = resolve(std::process::id(), "svc", "h");
        assert!(
            r.attributes
                .contains(&("service.name", Value::Str("svc".to_owned())))
        );
        assert!(
            r.attributes
                .iter()
                .any(|(k, _)| *k == "process.executable.name")
        );
        let Some((_, Value::Str(id))) = r
            .attributes
            .iter()
            .find(|(k, _)| *k == "service.instance.id")
        else {
            panic!("no instance id");
        };
        assert!(!id.ends_with(":0"), "start time read: {id}");
    }
}
