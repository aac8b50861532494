//! deploy/prometheus/apm-agent-rules.yaml, the alerting rules for Prometheus users: accepted
//! by `promtool check rules`, proven by `promtool test rules` on synthetic series
//! (tests/prometheus/apm-agent-rules.test.yaml: each alert fires where it should, after its
//! `for`, and stays silent beside it), and written against what the agent really exposes:
//! every metric family a rule reads is one the running agent declares on `/metrics`, and
//! every label a rule groups or matches by is on the agent's series of that family (checked
//! for the families that have series after some HTTP traffic).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use tests::{
    agent::Agent,
    deploy::{load_yaml, repo_root},
    net::{free_port, http_get},
    require_root,
    servers::{app_server, curl},
    unique,
};

/// Where `cargo xtask setup`/`test` unpacks Debian's `prometheus` package for its `promtool`
/// (xtask/src/prereq.rs, `PROMTOOL_DIR`): unpacked, not installed, so no Prometheus server
/// is set up on the machine.
const PROMTOOL: &str = "/var/lib/apm-agent-tests/prometheus/usr/bin/promtool";

fn rules_file() -> PathBuf {
    repo_root().join("deploy/prometheus/apm-agent-rules.yaml")
}

/// promtool is there, or the test must not run: under `APM_INTEGRATION=require` (CI) its
/// absence fails the test; elsewhere the test is skipped loudly.
fn promtool_ready(test: &str) -> bool {
    if std::path::Path::new(PROMTOOL).exists() {
        return true;
    }
    assert!(
        std::env::var("APM_INTEGRATION").as_deref() != Ok("require"),
        "{test}: {PROMTOOL} is missing (cargo xtask setup unpacks it)"
    );
    eprintln!("\n!!! SKIPPED {test}: {PROMTOOL} is missing: run `cargo xtask setup`\n");
    false
}

fn promtool(args: &[&str], dir: &std::path::Path) -> Result<String> {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {PROMTOOL}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() -> Result<()> {
    if !promtool_ready("promtool_checks_and_unit_tests_the_rules") {
        return Ok(());
    }
    let root = repo_root();
    let rules = rules_file();
    let checked = promtool(&["check", "rules", &rules.to_string_lossy()], &root)?;
    ensure!(checked.contains("SUCCESS"), "{checked}");
    let tests = root.join("tests/prometheus");
    let tested = promtool(&["test", "rules", "apm-agent-rules.test.yaml"], &tests)?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

/// Every `expr` of the rules file, with the name of its rule.
fn expressions() -> Result<Vec<(String, String)>> {
    let docs = load_yaml(&rules_file())?;
    let mut out = Vec::new();
    for doc in docs {
        for group in doc["groups"].as_array().context("groups")? {
            for rule in group["rules"].as_array().context("rules")? {
                let name = rule["alert"]
                    .as_str()
                    .or(rule["record"].as_str())
                    .context("a rule without a name")?;
                let expr = rule["expr"].as_str().context("a rule without expr")?;
                out.push((name.to_owned(), expr.to_owned()));
            }
        }
    }
    ensure!(out.len() > 10, "too few rules: {out:?}");
    Ok(out)
}

/// The agent's metric families an expression reads (`http_...`, `db_...`, `rpc_...`,
/// `apm_...` identifiers; recording rules' `apm:...` names are the file's own), with the
/// histogram suffixes taken off.
fn families(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for token in
        without_labels(expr).split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
    {
        let agent_metric = ["http_", "db_", "rpc_", "apm_"]
            .iter()
            .any(|p| token.starts_with(p));
        if !agent_metric || token.contains(':') {
            continue;
        }
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| token.strip_suffix(s))
            .unwrap_or(token);
        out.insert(family.to_owned());
    }
    out
}

/// The expression without its label lists (`by (...)`, `{...}`), whose names are labels.
fn without_labels(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    loop {
        let by = rest.find("by (").map(|i| (i, i + 4, ')'));
        let brace = rest.find('{').map(|i| (i, i + 1, '}'));
        let next = match (by, brace) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((start, inner, close)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        let after = &rest[inner..];
        rest = after.find(close).map_or("", |e| &after[e + 1..]);
    }
}

/// Label names an expression groups by (`by (...)`) or matches on (`{name=...}`).
fn labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let after = &rest[i + 4..];
        let end = after.find(')').unwrap_or(after.len());
        out.extend(after[..end].split(',').map(|l| l.trim().to_owned()));
        rest = &after[end..];
    }
    let mut rest = expr;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let end = after.find('}').unwrap_or(after.len());
        for matcher in after[..end].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
        rest = &after[end..];
    }
    out.retain(|l| !l.is_empty() && l != "le");
    out
}

#[test]
fn rules_read_what_the_agent_exposes() -> Result<()> {
    if !require_root("rules_read_what_the_agent_exposes") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-rules");
    let _app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/users/1", "/error", "/missing"] {
        curl(&["-o", "/dev/null", &format!("{base}{path}")])?;
    }
    agent.settle(3.0, Duration::from_secs(20), |m| m.server_total(&service))?;
    let (status, text) = http_get(agent.port, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    // Declared families, and the label names each family's series carry.
    let declared: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let metrics = agent.metrics()?;
    let mut series_labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &metrics.samples {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|x| s.name.strip_suffix(x))
            .unwrap_or(&s.name);
        series_labels
            .entry(family.to_owned())
            .or_default()
            .extend(s.labels.keys().cloned());
    }
    let mut problems = Vec::new();
    let mut checked_labels = 0;
    for (rule, expr) in expressions()? {
        let fams = families(&expr);
        for f in &fams {
            if !declared.contains(f.as_str()) {
                problems.push(format!("{rule}: {f} is not on the agent's /metrics"));
            }
        }
        // Labels: judged on the families with series (those the traffic above made).
        let seen: Vec<&BTreeSet<String>> =
            fams.iter().filter_map(|f| series_labels.get(f)).collect();
        if seen.len() != fams.len() || fams.is_empty() {
            continue;
        }
        for label in labels(&expr) {
            checked_labels += 1;
            if !seen.iter().any(|l| l.contains(&label)) {
                problems.push(format!("{rule}: no series of {fams:?} has label {label}"));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the rules read what the agent does not expose:\n{}",
            problems.join("\n")
        );
    }
    ensure!(
        checked_labels >= 20,
        "only {checked_labels} label uses could be checked: did the traffic reach the agent?"
    );
    Ok(())
}

#[test]
fn expression_parsing() {
    let e = "sum by (service_name, http_route) (rate(http_server_request_duration_seconds_bucket{http_response_status_code=~\"5..\"}[5m])) / apm:x:rate5m";
    assert_eq!(
        families(e).into_iter().collect::<Vec<_>>(),
        ["http_server_request_duration_seconds"]
    );
    assert_eq!(
        labels(e).into_iter().collect::<Vec<_>>(),
        ["http_response_status_code", "http_route", "service_name"]
    );
}
