//! The agent's own alerts on a real service (tests/servers/app.py) under load from the test:
//! a route driven from healthy to 20% 5xx and back fires `ApmRouteErrorRateHigh` and
//! resolves it; another route's latency taken to three times its learned baseline fires
//! `ApmRouteLatencyHigh` and resolves when it comes back. Each is checked on `/api/alerts`
//! (state, service, method, route, figures) and on the `apm_alerts` gauge of `/metrics`; the
//! failing phase also burns the service's availability budget fast enough to fire
//! `ApmErrorBudgetBurnFast` (on spans shortened to 6 and 2 windows); the slow phase also
//! fires `ApmExternalCallLatencyHigh` for the test's own calls to the service. Firing and resolved
//! alerts reach a webhook receiver the test runs, in Alertmanager's webhook format, its first
//! answer a 503 that the agent retries.
//!
//! Short windows (1 s) and rules (3 windows, 2 evaluations of `for`, baselines trusted after
//! 8 windows) keep it to about a minute; the defaults are the same rules on 10 s windows.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tests::{
    agent::Agent,
    net::{free_port, http_get},
    require_root,
    servers::{app_server, temp_dir},
    unique,
    webhook::WebhookReceiver,
};

/// What the load thread sends: 0 healthy, 1 every fifth `/users` request fails with 503,
/// 2 `/slow` takes three times as long.
const HEALTHY: u32 = 0;
const FAILING: u32 = 1;
const SLOW: u32 = 2;

/// Requests `/users/N` and `/slow/N` in turn, as `mode` says, until `stop`.
fn load(port: u16, mode: Arc<AtomicU32>, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut i: u64 = 0;
        while !stop.load(Relaxed) {
            i += 1;
            let m = mode.load(Relaxed);
            let status = if m == FAILING && i.is_multiple_of(5) {
                503
            } else {
                200
            };
            let _ = http_get(port, &format!("/users/{i}?status={status}"));
            let ms = if m == SLOW { 60 } else { 20 };
            let _ = http_get(port, &format!("/slow/{i}?ms={ms}"));
        }
    })
}

fn alerts(agent: &Agent) -> Result<Value> {
    let (status, body) = http_get(agent.port, "/api/alerts")?;
    if status != 200 {
        bail!("/api/alerts answered {status}: {body}");
    }
    serde_json::from_str(&body).context("/api/alerts is not JSON")
}

/// The alert of `name` on `route` in `list` ("active" or "resolved"), if any.
fn find<'a>(doc: &'a Value, list: &str, name: &str, route: &str) -> Option<&'a Value> {
    doc[list]
        .as_array()?
        .iter()
        .find(|a| a["alertname"] == name && a["route"] == route)
}

/// Waits until `f` finds what it looks for in `/api/alerts`.
fn wait_for(agent: &Agent, what: &str, f: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let doc = alerts(agent)?;
        if f(&doc) {
            return Ok(doc);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not seen in 40 s; /api/alerts: {doc}\n{}",
                agent.log()
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn error_rate_and_latency_alerts_fire_and_resolve() -> Result<()> {
    if !require_root("error_rate_and_latency_alerts_fire_and_resolve") {
        return Ok(());
    }
    let dir = temp_dir("alerts")?;
    let config = dir.join("agent.toml");
    let service = unique("it-alerts");
    let hook = WebhookReceiver::start(1)?;
    // Availability objective 99.5%: a tenth of the service's requests failing (a fifth of
    // /users, none of /slow) burns its budget 20 times too fast.
    std::fs::write(
        &config,
        format!(
            "window_secs = 1\n\
             [alerts]\n\
             rule_windows = 3\n\
             for_evaluations = 2\n\
             min_requests = 10\n\
             baseline_windows = 8\n\
             baseline_half_life_windows = 20\n\
             [alerts.burn]\n\
             bucket_windows = 1\n\
             fast_long_buckets = 6\n\
             fast_short_buckets = 2\n\
             slow_long_buckets = 12\n\
             slow_short_buckets = 4\n\
             [alerts.webhook]\n\
             url = \"{}\"\n\
             timeout_ms = 2000\n\
             [[alerts.slo]]\n\
             service = \"{service}\"\n\
             availability = 0.995\n",
            hook.url()
        ),
    )?;
    let port = free_port();
    let agent = Agent::start(&[
        "--config",
        &config.to_string_lossy(),
        "--include",
        &format!("port={port}"),
    ])?;
    let _app = app_server(port, &service)?;
    let mode = Arc::new(AtomicU32::new(HEALTHY));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(port, mode.clone(), stop.clone());
    let result = (|| -> Result<()> {
        // Healthy long enough for the baselines (8 windows) and then some.
        thread::sleep(Duration::from_secs(12));
        let doc = alerts(&agent)?;
        if let Some(a) = doc["active"].as_array().and_then(|a| a.first()) {
            bail!("an alert while healthy: {a}");
        }

        mode.store(FAILING, Relaxed);
        // Firing, and once the rule window holds only failing windows, at about a fifth.
        let doc = wait_for(&agent, "5xx alert firing at about 0.2", |d| {
            find(d, "active", "ApmRouteErrorRateHigh", "/users/{id}").is_some_and(|a| {
                a["state"] == "firing" && a["value"].as_f64().is_some_and(|v| v >= 0.15)
            })
        })?;
        let a = find(&doc, "active", "ApmRouteErrorRateHigh", "/users/{id}").context("alert")?;
        let value = a["value"].as_f64().context("value")?;
        if a["service"] != service.as_str() || a["method"] != "GET" || !(0.1..=0.3).contains(&value)
        {
            bail!("wrong alert: {a} (want service {service}, GET, about 0.2)");
        }
        let m = agent.metrics()?;
        let gauge = m.sum(
            "apm_alerts",
            &[
                ("alertname", "ApmRouteErrorRateHigh"),
                ("alertstate", "firing"),
                ("service_name", &service),
                ("http_route", "/users/{id}"),
            ],
        );
        if gauge != 1.0 {
            bail!("apm_alerts gauge of the firing alert: {gauge}");
        }

        let doc = wait_for(&agent, "error budget burn firing", |d| {
            find(d, "active", "ApmErrorBudgetBurnFast", "").is_some_and(|a| a["state"] == "firing")
        })?;
        let a = find(&doc, "active", "ApmErrorBudgetBurnFast", "").context("alert")?;
        let burn = a["value"].as_f64().context("value")?;
        if a["service"] != service.as_str() || !(14.4..=40.0).contains(&burn) {
            bail!("wrong burn alert: {a} (want service {service}, burn about 20)");
        }

        mode.store(HEALTHY, Relaxed);
        wait_for(&agent, "5xx alert resolved", |d| {
            find(d, "active", "ApmRouteErrorRateHigh", "/users/{id}").is_none()
                && find(d, "resolved", "ApmRouteErrorRateHigh", "/users/{id}").is_some()
        })?;
        let m = agent.metrics()?;
        if m.sum("apm_alerts", &[("alertname", "ApmRouteErrorRateHigh")]) != 0.0 {
            bail!("the gauge still shows the resolved alert");
        }

        mode.store(SLOW, Relaxed);
        let doc = wait_for(&agent, "latency alert firing", |d| {
            find(d, "active", "ApmRouteLatencyHigh", "/slow/{id}")
                .is_some_and(|a| a["state"] == "firing")
        })?;
        let a = find(&doc, "active", "ApmRouteLatencyHigh", "/slow/{id}").context("alert")?;
        let (value, threshold) = (
            a["value"].as_f64().context("value")?,
            a["threshold"].as_f64().context("threshold")?,
        );
        // p95 about 60 ms against twice a baseline of 20 ms and the server's overhead (more
        // on a loaded machine).
        if value <= threshold
            || !(40.0..=400.0).contains(&value)
            || !(30.0..=150.0).contains(&threshold)
        {
            bail!("latency alert figures: {a}");
        }

        // The test's own calls to the service (its load thread is the client) slowed down
        // with it: their destination's p95 fires the outgoing-call rule.
        let port_label = port.to_string();
        let doc = wait_for(&agent, "outgoing-call latency alert firing", |d| {
            d["active"].as_array().is_some_and(|list| {
                list.iter().any(|a| {
                    a["alertname"] == "ApmExternalCallLatencyHigh"
                        && a["labels"]["server_port"] == port_label.as_str()
                        && a["state"] == "firing"
                })
            })
        })?;
        let external = doc["active"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|a| a["alertname"] == "ApmExternalCallLatencyHigh")
            })
            .context("alert")?;
        if external["labels"]["server_address"].as_str().is_none()
            || external["value"].as_f64() <= external["threshold"].as_f64()
        {
            bail!("outgoing-call latency alert: {external}");
        }

        mode.store(HEALTHY, Relaxed);
        wait_for(&agent, "latency alert resolved", |d| {
            find(d, "resolved", "ApmRouteLatencyHigh", "/slow/{id}").is_some()
        })?;
        check_webhook(&agent, &hook, &service)?;
        let log = agent.log();
        for line in [
            "alert ApmRouteErrorRateHigh firing",
            "alert ApmRouteLatencyHigh resolved",
        ] {
            if !log.contains(line) {
                bail!("no log line {line:?}:\n{log}");
            }
        }
        Ok(())
    })();
    stop.store(true, Relaxed);
    let _ = loader.join();
    result
}

/// The alerts of `messages` named `name`, with their message's status.
fn posted<'a>(messages: &'a [Value], name: &str) -> Vec<(&'a Value, &'a Value)> {
    messages
        .iter()
        .flat_map(|m| {
            m["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |a| (&m["status"], a))
        })
        .filter(|(_, a)| a["labels"]["alertname"] == name)
        .collect()
}

/// The 5xx alert reached the webhook firing and then resolved, with the rules file's labels,
/// after the receiver's first 503; the agent counted the sends and the failed attempt.
fn check_webhook(agent: &Agent, hook: &WebhookReceiver, service: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = hook.messages();
        let got = posted(&messages, "ApmRouteErrorRateHigh");
        let resolved = got.iter().any(|(_, a)| a["status"] == "resolved");
        if resolved || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let messages = hook.messages();
    let got = posted(&messages, "ApmRouteErrorRateHigh");
    let firing = got
        .iter()
        .find(|(status, a)| *status == "firing" && a["status"] == "firing")
        .with_context(|| format!("no firing 5xx alert posted: {messages:?}"))?
        .1;
    let resolved = got
        .iter()
        .find(|(_, a)| a["status"] == "resolved")
        .with_context(|| format!("no resolved 5xx alert posted: {messages:?}"))?
        .1;
    for (key, want) in [
        ("service_name", service),
        ("http_route", "/users/{id}"),
        ("http_request_method", "GET"),
    ] {
        if firing["labels"][key] != want {
            bail!("label {key} of the posted alert: {firing} (want {want})");
        }
    }
    if firing["fingerprint"] != resolved["fingerprint"]
        || firing["endsAt"] != "0001-01-01T00:00:00Z"
        || resolved["endsAt"] == "0001-01-01T00:00:00Z"
        || firing["startsAt"]
            .as_str()
            .is_none_or(|t| !t.ends_with('Z'))
    {
        bail!("firing {firing} and resolved {resolved} do not describe one alert's life");
    }
    let message = &messages[0];
    if message["version"] != "4" || message["receiver"].as_str().is_none() {
        bail!("not Alertmanager's webhook format: {message}");
    }
    if hook.refused() != 1 {
        bail!("the receiver refused {} posts, want 1", hook.refused());
    }
    let m = agent.metrics()?;
    let sent = m.sum("apm_alerts_webhook_total", &[("outcome", "sent")]);
    let failed_attempts = m.sum("apm_alerts_webhook_attempts_failed_total", &[]);
    if sent < 2.0 || failed_attempts < 1.0 {
        bail!("webhook counters: {sent} alerts sent, {failed_attempts} failed attempts");
    }
    Ok(())
}
