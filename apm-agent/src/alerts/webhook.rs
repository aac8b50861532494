//! The alert webhook: firing and resolved alerts posted in Alertmanager's webhook format
//! (version 4), so that whatever receives Alertmanager's notifications (chat bridges, paging
//! services, `alertmanager-webhook-logger`) receives the agent's.
//!
//! One message per batch of transitions (those of one evaluation, or more while the receiver
//! was down), its `status` firing when any alert in it fires. Labels are the ones of the
//! Prometheus rules in `deploy/prometheus/apm-agent-rules.yaml` (`alertname`, `service_name`,
//! `http_request_method`, `http_route`), so the two sources group and silence alike.
//! Annotations carry the figures; nothing from a request's content is in either.
use std::{
    collections::BTreeMap,
    hash::{Hash as _, Hasher as _},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use serde::Serialize;

use super::{Alert, Alerts, State, WebhookConfig};
use crate::{
    export::otlp::{
        retry::{Outcome, send_with_retry},
        settings::{Protocol, Settings},
        transport::{SendError, Transport},
    },
    os::lock,
};

/// How often the outbox is looked at.
const POLL: Duration = Duration::from_secs(1);
/// Alertmanager's zero time: the `endsAt` of an alert still firing.
const NOT_ENDED: &str = "0001-01-01T00:00:00Z";

/// A message in Alertmanager's webhook format.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    version: &'static str,
    group_key: String,
    truncated_alerts: u32,
    status: &'static str,
    receiver: &'static str,
    group_labels: BTreeMap<&'static str, String>,
    common_labels: BTreeMap<&'static str, String>,
    common_annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "externalURL")]
    external_url: String,
    alerts: Vec<Notified>,
}

/// One alert of a [`Message`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notified {
    status: &'static str,
    labels: BTreeMap<&'static str, String>,
    annotations: BTreeMap<&'static str, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
    fingerprint: String,
}

/// The labels of an alert, as the Prometheus rules name them, and where it comes from.
fn labels(a: &Alert) -> BTreeMap<&'static str, String> {
    let mut l: BTreeMap<&'static str, String> = a.label_set().into_iter().collect();
    l.insert("source", "apm-agent".to_owned());
    l
}

/// RFC 3339 (UTC, seconds) of a unix time.
fn rfc3339(unix: f64) -> String {
    jiff::Timestamp::from_millisecond((unix * 1000.0) as i64)
        .map_or_else(|_| NOT_ENDED.to_owned(), |t| format!("{t:.0}"))
}

/// A stable fingerprint of a label set (the same alert has the same one in every message and
/// every run, as Alertmanager's does).
fn fingerprint(labels: &BTreeMap<&'static str, String>) -> String {
    let mut h = rustc_hash::FxHasher::default();
    labels.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The message for `alerts`; `base` is the agent's own URL (`http://127.0.0.1:9464`).
pub fn message(alerts: &[Alert], base: &str) -> Message {
    let firing = alerts.iter().any(|a| a.state == State::Firing);
    let notified: Vec<Notified> = alerts
        .iter()
        .map(|a| {
            let labels = labels(a);
            let annotations = BTreeMap::from([
                ("summary", summary(a)),
                ("value", format!("{}", a.value)),
                ("threshold", format!("{}", a.threshold)),
                ("requests", a.requests.to_string()),
            ]);
            Notified {
                status: if a.state == State::Resolved {
                    "resolved"
                } else {
                    "firing"
                },
                fingerprint: fingerprint(&labels),
                labels,
                annotations,
                starts_at: rfc3339(a.fired_unix.unwrap_or(a.since_unix)),
                ends_at: a
                    .resolved_unix
                    .map_or_else(|| NOT_ENDED.to_owned(), rfc3339),
                generator_url: format!("{base}/api/alerts"),
            }
        })
        .collect();
    // Labels every alert of the message shares.
    let mut common = notified
        .first()
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    common.retain(|k, v| notified.iter().all(|n| n.labels.get(k) == Some(v)));
    Message {
        version: "4",
        group_key: "{}:{source=\"apm-agent\"}".to_owned(),
        truncated_alerts: 0,
        status: if firing { "firing" } else { "resolved" },
        receiver: "apm-agent",
        group_labels: BTreeMap::from([("source", "apm-agent".to_owned())]),
        common_labels: common,
        common_annotations: BTreeMap::new(),
        external_url: base.to_owned(),
        alerts: notified,
    }
}

/// What an alert says in a sentence.
fn summary(a: &Alert) -> String {
    let what = match (a.method, a.route.as_str()) {
        ("", "") => format!("service {}", a.service),
        (m, r) => format!("{m} {r} of {}", a.service),
    };
    format!(
        "{} {}: {} (threshold {})",
        a.alertname,
        what,
        round4(a.value),
        round4(a.threshold)
    )
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// The webhook could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("alert webhook: {0}")]
pub struct WebhookError(#[from] SendError);

/// Starts the task that posts the outbox of `alerts` to the webhook, if one is set.
pub fn start(
    cfg: &WebhookConfig,
    alerts: Arc<Mutex<Alerts>>,
    base: String,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<tokio::task::JoinHandle<()>>, WebhookError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let settings = Settings {
        protocol: Protocol::HttpProtobuf,
        traces_url: None,
        metrics_url: None,
        headers: Vec::new(),
        timeout: Duration::from_millis(cfg.timeout_ms),
        ca_pem: None,
    };
    let transport = Transport::new(&settings, cfg.url.trim())?;
    log::info!(
        "alerts are posted to {} (Alertmanager webhook format)",
        origin(cfg.url.trim())
    );
    Ok(Some(runtime.spawn(post_outbox(transport, alerts, base))))
}

/// `scheme://host[:port]` of a webhook URL, for logs: its path, query and user info often
/// hold the receiver's secret (a chat webhook's token is its path).
fn origin(url: &str) -> String {
    match url.parse::<hyper::Uri>() {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme_str().unwrap_or("http"),
            u.host().unwrap_or("?"),
            u.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

/// Every [`POLL`]: takes the outbox and posts it, retrying; what is finally dropped is
/// counted. Transitions meanwhile wait in the (bounded) outbox.
async fn post_outbox(transport: Transport, alerts: Arc<Mutex<Alerts>>, base: String) {
    let mut ticker = tokio::time::interval(POLL);
    loop {
        ticker.tick().await;
        let batch = lock(&alerts).take_outbox();
        if batch.is_empty() {
            continue;
        }
        let body = match serde_json::to_vec(&message(&batch, &base)) {
            Ok(body) => body,
            Err(e) => {
                log::warn!("alert webhook: encoding failed: {e}");
                lock(&alerts).webhook.failed += batch.len() as u64;
                continue;
            }
        };
        let failures = AtomicU64::new(0);
        let outcome = send_with_retry(&failures, || transport.send_json(body.clone())).await;
        let mut a = lock(&alerts);
        a.webhook.attempts_failed += failures.into_inner();
        match outcome {
            Outcome::Sent => a.webhook.sent += batch.len() as u64,
            Outcome::Dropped(e) => {
                log::warn!("alert webhook: {} alerts dropped: {e}", batch.len());
                a.webhook.failed += batch.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Rule;

    fn alert(state: State, route: &str) -> Alert {
        Alert {
            rule: Rule::ErrorRate,
            alertname: Rule::ErrorRate.alertname(),
            service: "shop".to_owned(),
            method: "GET",
            route: route.to_owned(),
            state,
            since_unix: 1_700_000_000.0,
            fired_unix: Some(1_700_000_020.5),
            resolved_unix: (state == State::Resolved).then_some(1_700_000_090.0),
            value: 0.2,
            threshold: 0.01,
            requests: 120,
            labels: BTreeMap::new(),
            breaches: 0,
            clears: 0,
        }
    }

    #[test]
    fn message_speaks_alertmanagers_webhook_format() {
        let msg = message(
            &[
                alert(State::Firing, "/users/{id}"),
                alert(State::Resolved, "/cart"),
            ],
            "http://127.0.0.1:9464",
        );
        let v = serde_json::to_value(&msg).unwrap();
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["externalURL"], "http://127.0.0.1:9464");
        assert_eq!(v["commonLabels"]["service_name"], "shop");
        assert!(v["commonLabels"].get("http_route").is_none());
        let a = &v["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "ApmRouteErrorRateHigh");
        assert_eq!(a["labels"]["http_route"], "/users/{id}");
        assert_eq!(a["labels"]["http_request_method"], "GET");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:40Z");
        assert_eq!(a["endsAt"], NOT_ENDED);
        assert_eq!(a["generatorURL"], "http://127.0.0.1:9464/api/alerts");
        assert_eq!(a["annotations"]["value"], "0.2");
        let r = &v["alerts"][1];
        assert_eq!(r["status"], "resolved");
        assert_eq!(r["endsAt"], "2023-11-14T22:14:50Z");
        assert_ne!(a["fingerprint"], r["fingerprint"]);
        // Stable: the same alert resolved later has the fingerprint it had firing.
        let again = serde_json::to_value(message(
            &[alert(State::Resolved, "/users/{id}")],
            "http://127.0.0.1:9464",
        ))
        .unwrap();
        assert_eq!(again["status"], "resolved");
        assert_eq!(again["alerts"][0]["fingerprint"], a["fingerprint"]);
    }

    #[test]
    fn logs_name_the_receiver_without_its_secret() {
        assert_eq!(
            origin("https://user:pw@hooks.example.com:8443/services/T0/B0/SECRET?token=x"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(origin("http://127.0.0.1/hook"), "http://127.0.0.1");
    }

    #[test]
    fn service_objectives_carry_no_route_labels() {
        let mut a = alert(State::Firing, "");
        a.method = "";
        let v = serde_json::to_value(message(&[a], "http://x")).unwrap();
        assert!(v["alerts"][0]["labels"].get("http_route").is_none());
        assert!(
            v["alerts"][0]["labels"]
                .get("http_request_method")
                .is_none()
        );
        assert!(
            v["alerts"][0]["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("service shop")
        );
    }
}
