//! The `[alerts]` table of the configuration: each rule's threshold, the rule window, the
//! minimum traffic, how long a breach must last, and how the baselines are learned.
use serde::{Deserialize, Serialize};

use super::slo::{self, BurnWindows, SloConfig};

/// Alert rules evaluated by the agent on its own RED windows (see `alerts/mod.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate the rules. Default true.
    pub enabled: bool,
    /// Percentile windows (`window_secs` each) a rule looks at: the rule window. Default 6
    /// (one minute with the default 10 s windows).
    pub rule_windows: u32,
    /// Consecutive evaluations (one per window) a rule must breach before its alert fires
    /// (pending meanwhile), and stay clear before it resolves. Default 3.
    pub for_evaluations: u32,
    /// Server requests a route needs in the rule window to be judged at all. Default 20.
    pub min_requests: u64,
    /// Share of 5xx above which `error_rate` fires. Default 0.01.
    pub error_rate: f64,
    /// Share of 4xx above which `client_error_rate` fires; 0 turns the rule off (4xx are
    /// mostly the callers' doing). Default 0 (off).
    pub client_error_rate: f64,
    /// Apdex below which `apdex` fires. Default 0.7.
    pub apdex_min: f64,
    /// `latency_p95` fires when the rule window's p95 exceeds this many times the route's
    /// baseline p95. Default 2.
    pub latency_ratio: f64,
    /// `latency_p95` judges only a p95 of at least this many milliseconds: a route answering
    /// in 1 ms that takes 2.5 ms is not an incident, and sub-millisecond p95s jitter by more
    /// than twice with the host's load. Default 10.
    pub latency_min_ms: f64,
    /// The latency rule on each service's database operations and outgoing destinations
    /// (`ApmDatabaseLatencyHigh`, `ApmExternalCallLatencyHigh`): p95 above `latency_ratio`
    /// times its baseline, with the route rule's traffic and floor. Default true.
    pub dependency_latency: bool,
    /// `throughput` fires when the rule window's rate falls under this share of the route's
    /// baseline rate. Default 0.5.
    pub throughput_ratio: f64,
    /// Windows a route must have been seen before its baselines count (and the rules that
    /// use them may fire). Default 60 (ten minutes).
    pub baseline_windows: u32,
    /// Half-life, in windows, of the baselines (exponentially weighted moving averages of
    /// each window's p95, not updated while its rule is pending or firing, and rate). A route
    /// silent for two half-lives, with no alert, is forgotten. Default 360 (an hour).
    pub baseline_half_life_windows: u32,
    /// Routes followed at once; more are counted in
    /// `apm_map_overflows_total{map="alert_routes"}`. Default 2000.
    pub max_routes: usize,
    /// Resolved alerts kept for `/api/alerts`, newest first. Default 100.
    pub max_resolved: usize,
    /// Service level objectives (`[[alerts.slo]]`), whose error-budget burn rates alert.
    /// Default: none.
    pub slo: Vec<SloConfig>,
    /// The burn-rate spans and thresholds (`[alerts.burn]`).
    pub burn: BurnWindows,
    /// Where firing and resolved alerts are posted (`[alerts.webhook]`).
    pub webhook: WebhookConfig,
}

/// A receiver of Alertmanager's webhook format (`[alerts.webhook]`): each evaluation's
/// transitions to firing and to resolved are posted as one message, retried for 30 s with
/// backoff, then dropped and counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL; empty (the default) turns the webhook off.
    pub url: String,
    /// Time one attempt may take, in milliseconds. Default 5000.
    pub timeout_ms: u64,
    /// Alerts waiting to be posted (while the receiver is down); more are dropped, the
    /// oldest first, and counted. Default 256.
    pub max_queue: usize,
    /// Post resolutions too. Default true.
    pub send_resolved: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout_ms: 5000,
            max_queue: 256,
            send_resolved: true,
        }
    }
}

impl WebhookConfig {
    /// Whether a URL is set.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The first setting out of its range: (key, value, what it allows).
    fn invalid(&self) -> Option<(&'static str, String, &'static str)> {
        if self.enabled() {
            let scheme_ok = self.url.parse::<hyper::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !scheme_ok {
                return Some((
                    "alerts.webhook.url",
                    self.url.clone(),
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Some((
                "alerts.webhook.timeout_ms",
                self.timeout_ms.to_string(),
                "must be between 1 and 60000",
            ));
        }
        if self.max_queue == 0 {
            return Some((
                "alerts.webhook.max_queue",
                "0".to_owned(),
                "must be at least 1",
            ));
        }
        None
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rule_windows: 6,
            for_evaluations: 3,
            min_requests: 20,
            error_rate: 0.01,
            client_error_rate: 0.0,
            apdex_min: 0.7,
            latency_ratio: 2.0,
            latency_min_ms: 10.0,
            dependency_latency: true,
            throughput_ratio: 0.5,
            baseline_windows: 60,
            baseline_half_life_windows: 360,
            max_routes: 2000,
            max_resolved: 100,
            slo: Vec::new(),
            burn: BurnWindows::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

impl AlertsConfig {
    /// The first setting out of its range: (key, value, what it allows).
    pub fn invalid(&self) -> Option<(&'static str, String, &'static str)> {
        let counts = [
            ("alerts.rule_windows", u64::from(self.rule_windows)),
            ("alerts.for_evaluations", u64::from(self.for_evaluations)),
            ("alerts.baseline_windows", u64::from(self.baseline_windows)),
            (
                "alerts.baseline_half_life_windows",
                u64::from(self.baseline_half_life_windows),
            ),
            ("alerts.max_routes", self.max_routes as u64),
        ];
        if let Some((k, v)) = counts.into_iter().find(|(_, v)| *v == 0) {
            return Some((k, v.to_string(), "must be at least 1"));
        }
        if let Some(bad) = slo::invalid(&self.slo, &self.burn) {
            return Some(bad);
        }
        if let Some(bad) = self.webhook.invalid() {
            return Some(bad);
        }
        if self.rule_windows > 360 {
            return Some((
                "alerts.rule_windows",
                self.rule_windows.to_string(),
                "must be at most 360",
            ));
        }
        let shares = [
            ("alerts.error_rate", self.error_rate),
            ("alerts.client_error_rate", self.client_error_rate),
            ("alerts.apdex_min", self.apdex_min),
            ("alerts.throughput_ratio", self.throughput_ratio),
        ];
        if let Some((k, v)) = shares.into_iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Some((k, v.to_string(), "must be between 0 and 1"));
        }
        if !(self.latency_min_ms.is_finite() && self.latency_min_ms >= 0.0) {
            return Some((
                "alerts.latency_min_ms",
                self.latency_min_ms.to_string(),
                "must be a number of at least 0",
            ));
        }
        if !(self.latency_ratio.is_finite() && self.latency_ratio > 1.0) {
            return Some((
                "alerts.latency_ratio",
                self.latency_ratio.to_string(),
                "must be a number above 1",
            ));
        }
        None
    }
}
