//! Alerts the agent evaluates itself, on its own RED windows, with nothing else installed:
//! per server route, the 5xx share (and, off by default, the 4xx share), Apdex, p95 against
//! the route's own baseline and rate against its baseline — the seed articles' rules, under
//! the names of the Prometheus rules in `deploy/prometheus/apm-agent-rules.yaml`.
//!
//! Evaluated once per percentile window (`window_secs`) over the last `rule_windows` of
//! them. A breach makes an alert pending; `for_evaluations` breaches in a row make it
//! firing; as many clear evaluations in a row resolve it (a pending alert that clears is
//! dropped). Each transition is logged; `/api/alerts` and the `apm_alerts` gauge show them.
//!
//! Baselines are exponentially weighted moving averages of each window's p95 and rate, with a
//! half-life of `baseline_half_life_windows`, trusted after `baseline_windows`. The p95
//! baseline is frozen while its rule breaches (a regression must not become its own
//! baseline); the rate baseline keeps learning, so a lasting drop (a route retired, traffic
//! moved) becomes the new normal after about a half-life and its alert resolves.
pub mod config;
mod route;
pub mod slo;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

pub use config::{AlertsConfig, WebhookConfig};
use route::{RouteTrack, WindowFigures};
use slo::{Burn, Objective, ServiceBurn};

use crate::{
    metrics::{
        dependencies::{DependencyKind, DependencySummary},
        red::RouteSummary,
    },
    telemetry::{Exposition, Family, MAP_OVERFLOWS},
};

/// The rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    ErrorRate,
    ClientErrorRate,
    Apdex,
    LatencyP95,
    Throughput,
    /// A service's availability error budget burning too fast (1 h and 5 min).
    AvailabilityBurnFast,
    /// ... (6 h and 30 min).
    AvailabilityBurnSlow,
    /// A service's latency error budget burning too fast (1 h and 5 min).
    LatencyBurnFast,
    /// ... (6 h and 30 min).
    LatencyBurnSlow,
    /// A service's calls to one database operation: p95 against its baseline.
    DatabaseLatency,
    /// A service's calls to one outgoing destination: p95 against its baseline.
    ExternalLatency,
}

impl Rule {
    /// The rules judged per route.
    pub const ALL: [Self; 5] = [
        Self::ErrorRate,
        Self::ClientErrorRate,
        Self::Apdex,
        Self::LatencyP95,
        Self::Throughput,
    ];

    /// The rule of an objective's burn.
    fn burn(objective: Objective, burn: Burn) -> Self {
        match (objective, burn) {
            (Objective::Availability, Burn::Fast) => Self::AvailabilityBurnFast,
            (Objective::Availability, Burn::Slow) => Self::AvailabilityBurnSlow,
            (Objective::Latency, Burn::Fast) => Self::LatencyBurnFast,
            (Objective::Latency, Burn::Slow) => Self::LatencyBurnSlow,
        }
    }

    /// The alert's name, as in the Prometheus rules file.
    pub fn alertname(self) -> &'static str {
        match self {
            Self::ErrorRate => "ApmRouteErrorRateHigh",
            Self::ClientErrorRate => "ApmRouteClientErrorRateHigh",
            Self::Apdex => "ApmRouteApdexLow",
            Self::LatencyP95 => "ApmRouteLatencyHigh",
            Self::Throughput => "ApmRouteThroughputLow",
            Self::AvailabilityBurnFast => "ApmErrorBudgetBurnFast",
            Self::AvailabilityBurnSlow => "ApmErrorBudgetBurnSlow",
            Self::LatencyBurnFast => "ApmLatencyBudgetBurnFast",
            Self::LatencyBurnSlow => "ApmLatencyBudgetBurnSlow",
            Self::DatabaseLatency => "ApmDatabaseLatencyHigh",
            Self::ExternalLatency => "ApmExternalCallLatencyHigh",
        }
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// A server route: service, method, route template (method and route empty for a service's
/// objectives).
type RouteId = (String, &'static str, String);

/// One alert of one rule on one route.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub rule: Rule,
    pub alertname: &'static str,
    pub service: String,
    pub method: &'static str,
    pub route: String,
    pub state: State,
    /// When the first breach was seen (unix seconds).
    pub since_unix: f64,
    pub fired_unix: Option<f64>,
    pub resolved_unix: Option<f64>,
    /// The figure that breached (latest evaluation), and the threshold it was held to: a
    /// share, an Apdex, milliseconds or requests per second, by rule.
    pub value: f64,
    pub threshold: f64,
    /// Server requests (calls, for a dependency) in the rule window at the latest evaluation.
    pub requests: u64,
    /// A dependency's labels (`db_system_name`, `db_operation_name`, `server_address`, or
    /// `server_address`, `server_port`); empty for a route or a service.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<&'static str, String>,
    #[serde(skip)]
    breaches: u32,
    #[serde(skip)]
    clears: u32,
}

impl Alert {
    /// Its labels as the Prometheus rules name them: `alertname`, `service_name`, then a
    /// dependency's labels, or a route's method and route.
    pub fn label_set(&self) -> Vec<(&'static str, String)> {
        let mut l = vec![
            ("alertname", self.alertname.to_owned()),
            ("service_name", self.service.clone()),
        ];
        if !self.labels.is_empty() {
            l.extend(self.labels.iter().map(|(k, v)| (*k, v.clone())));
        } else if !self.route.is_empty() || !self.method.is_empty() {
            l.push(("http_request_method", self.method.to_owned()));
            l.push(("http_route", self.route.clone()));
        }
        l
    }
}

/// A dependency as the rules see it.
#[derive(Debug)]
struct DependencyTrack {
    kind: DependencyKind,
    labels: BTreeMap<&'static str, String>,
    track: RouteTrack,
}

/// The alert engine.
#[derive(Debug)]
pub struct Alerts {
    cfg: AlertsConfig,
    /// Weight of a new window in the baselines.
    alpha: f64,
    /// Length of the latest window, in seconds.
    window_secs: f64,
    routes: HashMap<RouteId, RouteTrack>,
    /// Database operations and outgoing destinations per service, keyed (service, "",
    /// their name).
    dependencies: HashMap<RouteId, DependencyTrack>,
    /// The services with objectives, by name.
    services: HashMap<String, ServiceBurn>,
    active: HashMap<(RouteId, Rule), Alert>,
    resolved: VecDeque<Alert>,
    /// Routes not followed because `max_routes` were.
    pub overflows: u64,
    /// Dependencies not followed because `max_routes` were.
    pub dependency_overflows: u64,
    /// Transitions to firing and to resolved, since start.
    pub fired: u64,
    pub resolved_total: u64,
    /// Transitions waiting for the webhook (empty without one), oldest first.
    outbox: VecDeque<Alert>,
    /// The webhook's counters (alerts, not messages).
    pub webhook: WebhookCounts,
}

/// What became of the alerts meant for the webhook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    /// Posted and accepted (2xx).
    pub sent: u64,
    /// Given up after the retries, or refused for good.
    pub failed: u64,
    /// Pushed out of a full queue (`max_queue`) before a post.
    pub queue_full: u64,
    /// Attempts that failed (each retry counts).
    pub attempts_failed: u64,
}

impl Alerts {
    pub fn new(cfg: AlertsConfig) -> Self {
        let half_life = f64::from(cfg.baseline_half_life_windows.max(1));
        Self {
            alpha: 1.0 - 0.5f64.powf(1.0 / half_life),
            window_secs: 1.0,
            services: cfg
                .slo
                .iter()
                .map(|s| (s.service.clone(), ServiceBurn::new(s.clone())))
                .collect(),
            cfg,
            routes: HashMap::new(),
            dependencies: HashMap::new(),
            active: HashMap::new(),
            resolved: VecDeque::new(),
            overflows: 0,
            dependency_overflows: 0,
            fired: 0,
            resolved_total: 0,
            outbox: VecDeque::new(),
            webhook: WebhookCounts::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AlertsConfig {
        &self.cfg
    }

    /// Takes the transitions waiting for the webhook.
    pub fn take_outbox(&mut self) -> Vec<Alert> {
        self.outbox.drain(..).collect()
    }

    /// Queues a transition for the webhook, when there is one (pending is not posted:
    /// Alertmanager's receivers see firing and resolved alerts only).
    fn queue(
        outbox: &mut VecDeque<Alert>,
        counts: &mut WebhookCounts,
        cfg: &WebhookConfig,
        a: &Alert,
    ) {
        let wanted = match a.state {
            State::Firing => true,
            State::Resolved => cfg.send_resolved,
            State::Pending => false,
        };
        if !cfg.enabled() || !wanted {
            return;
        }
        if outbox.len() >= cfg.max_queue {
            outbox.pop_front();
            counts.queue_full += 1;
        }
        outbox.push_back(a.clone());
    }

    /// One evaluation: `rows` are the routes of the window that just closed (`elapsed_s`
    /// long), `deps` the dependencies' figures over it, `now_unix` the time.
    pub fn evaluate(
        &mut self,
        rows: &[RouteSummary],
        deps: &[DependencySummary],
        elapsed_s: f64,
        now_unix: f64,
    ) {
        if !self.cfg.enabled {
            return;
        }
        if self.cfg.dependency_latency {
            self.evaluate_dependencies(deps, elapsed_s, now_unix);
        }
        let keep = self.cfg.rule_windows as usize;
        if elapsed_s > 0.0 {
            self.window_secs = elapsed_s;
        }
        let mut fed: HashMap<RouteId, WindowFigures> = HashMap::new();
        for row in rows.iter().filter(|r| r.side == "server") {
            let id = (row.service.clone(), row.method, row.route.clone());
            let (budget, overflows) = (self.cfg.max_routes, &mut self.overflows);
            if admit(&mut self.routes, &id, budget, overflows, Default::default) {
                fed.insert(id, WindowFigures::of(row, elapsed_s));
            }
        }
        self.evaluate_objectives(rows, now_unix);
        let forget_after = self.forget_after();
        let ids: Vec<RouteId> = self.routes.keys().cloned().collect();
        for id in ids {
            let w = fed
                .remove(&id)
                .unwrap_or_else(|| WindowFigures::idle(elapsed_s));
            let Some(track) = self.routes.get_mut(&id) else {
                continue;
            };
            track.push(w, keep);
            for rule in Rule::ALL {
                let verdict = self.judge(&id, rule);
                self.step(&id, rule, verdict, now_unix);
            }
            let latency = !self.active.contains_key(&(id.clone(), Rule::LatencyP95));
            let quiet = Rule::ALL
                .iter()
                .all(|r| !self.active.contains_key(&(id.clone(), *r)));
            if let Some(track) = self.routes.get_mut(&id) {
                track.learn(self.alpha, latency);
                if quiet && track.idle > forget_after {
                    self.routes.remove(&id);
                }
            }
        }
    }

    /// The latency rules on database operations and outgoing destinations: each one's p95
    /// against its own baseline, as the route latency rule.
    fn evaluate_dependencies(&mut self, deps: &[DependencySummary], elapsed_s: f64, now: f64) {
        let keep = self.cfg.rule_windows as usize;
        let mut fed: HashMap<RouteId, WindowFigures> = HashMap::new();
        for d in deps {
            let id = (d.service.clone(), "", d.name());
            let admitted = admit(
                &mut self.dependencies,
                &id,
                self.cfg.max_routes,
                &mut self.dependency_overflows,
                || DependencyTrack {
                    kind: d.kind,
                    labels: d.labels.iter().cloned().collect(),
                    track: RouteTrack::default(),
                },
            );
            if admitted {
                fed.insert(id, WindowFigures::latency(d.calls, d.p95_ms, elapsed_s));
            }
        }
        let forget_after = self.forget_after();
        let ids: Vec<RouteId> = self.dependencies.keys().cloned().collect();
        for id in ids {
            let w = fed
                .remove(&id)
                .unwrap_or_else(|| WindowFigures::idle(elapsed_s));
            let Some(dep) = self.dependencies.get_mut(&id) else {
                continue;
            };
            dep.track.push(w, keep);
            let rule = match dep.kind {
                DependencyKind::Database => Rule::DatabaseLatency,
                DependencyKind::External => Rule::ExternalLatency,
            };
            let verdict = Self::judge_latency(&self.cfg, &dep.track);
            self.step(&id, rule, verdict, now);
            let quiet = !self.active.contains_key(&(id.clone(), rule));
            if let Some(dep) = self.dependencies.get_mut(&id) {
                dep.track.learn(self.alpha, quiet);
                if quiet && dep.track.idle > forget_after {
                    self.dependencies.remove(&id);
                }
            }
        }
    }

    /// Windows after which a silent route or dependency with no alert is forgotten (two
    /// half-lives of its baseline): its budget slot goes to those that still have traffic.
    fn forget_after(&self) -> u64 {
        2 * u64::from(self.cfg.baseline_half_life_windows)
    }

    /// The latency rule on a track: its rule window's p95 above `latency_ratio` times its
    /// baseline, judged with enough traffic, a trusted baseline, from `latency_min_ms` up.
    fn judge_latency(cfg: &AlertsConfig, track: &RouteTrack) -> Option<(f64, f64, u64)> {
        let c = track.combined();
        let judged = c.requests >= cfg.min_requests
            && track.seen >= u64::from(cfg.baseline_windows)
            && c.p95_ms >= cfg.latency_min_ms;
        if !judged {
            return None;
        }
        let base = track.baseline_p95_ms.filter(|b| *b > 0.0)?;
        let t = cfg.latency_ratio * base;
        (c.p95_ms > t).then_some((c.p95_ms, t, c.requests))
    }

    /// Feeds the window to the services with objectives and moves their burn alerts on.
    fn evaluate_objectives(&mut self, rows: &[RouteSummary], now_unix: f64) {
        if self.services.is_empty() {
            return;
        }
        let burn = self.cfg.burn;
        let mut verdicts = Vec::new();
        for (name, svc) in &mut self.services {
            let mine: Vec<&RouteSummary> = rows
                .iter()
                .filter(|r| r.side == "server" && r.service == *name)
                .collect();
            svc.push(&mine, &burn);
            let breaches = svc.breaches(&burn);
            for objective in [Objective::Availability, Objective::Latency] {
                for b in [Burn::Fast, Burn::Slow] {
                    let found = breaches
                        .iter()
                        .find(|x| x.0 == objective && x.1 == b)
                        .map(|&(_, _, rate, threshold)| (rate, threshold, 0));
                    verdicts.push((
                        (name.clone(), "", String::new()),
                        Rule::burn(objective, b),
                        found,
                    ));
                }
            }
        }
        for (id, rule, verdict) in verdicts {
            self.step(&id, rule, verdict, now_unix);
        }
    }

    /// Whether `rule` breaches on route `id` now: Some((value, threshold, requests)) when it
    /// does, None when it does not or the route cannot be judged (too little traffic, no
    /// baseline yet, rule off).
    fn judge(&self, id: &RouteId, rule: Rule) -> Option<(f64, f64, u64)> {
        let cfg = &self.cfg;
        let track = self.routes.get(id)?;
        let c = track.combined();
        let enough = c.requests >= cfg.min_requests;
        let learned = track.seen >= u64::from(cfg.baseline_windows);
        let (value, threshold, breach) = match rule {
            Rule::ErrorRate if enough => {
                (c.error_rate, cfg.error_rate, c.error_rate > cfg.error_rate)
            }
            Rule::ClientErrorRate if enough && cfg.client_error_rate > 0.0 => (
                c.client_error_rate,
                cfg.client_error_rate,
                c.client_error_rate > cfg.client_error_rate,
            ),
            Rule::Apdex if enough => (c.apdex, cfg.apdex_min, c.apdex < cfg.apdex_min),
            Rule::LatencyP95 => return Self::judge_latency(cfg, track),
            Rule::Throughput if learned => {
                let base = track.baseline_rate?;
                // Judged only where the baseline promises enough traffic to miss.
                let rule_secs = f64::from(cfg.rule_windows) * self.window_secs;
                if base * rule_secs < cfg.min_requests as f64 {
                    return None;
                }
                let t = cfg.throughput_ratio * base;
                (c.rate_per_s, t, c.rate_per_s < t)
            }
            _ => return None,
        };
        breach.then_some((value, threshold, c.requests))
    }

    /// Moves the alert of (`id`, `rule`) on by one evaluation.
    fn step(&mut self, id: &RouteId, rule: Rule, verdict: Option<(f64, f64, u64)>, now: f64) {
        let key = (id.clone(), rule);
        let need = self.cfg.for_evaluations;
        match (verdict, self.active.get_mut(&key)) {
            (Some((value, threshold, requests)), Some(a)) => {
                a.value = value;
                a.threshold = threshold;
                a.requests = requests;
                a.clears = 0;
                a.breaches += 1;
                if a.state == State::Pending && a.breaches >= need {
                    a.state = State::Firing;
                    a.fired_unix = Some(now);
                    self.fired += 1;
                    log_transition(a);
                    Self::queue(&mut self.outbox, &mut self.webhook, &self.cfg.webhook, a);
                }
            }
            (Some((value, threshold, requests)), None) => {
                let labels = self
                    .dependencies
                    .get(id)
                    .map(|d| d.labels.clone())
                    .unwrap_or_default();
                let mut a = Alert {
                    rule,
                    alertname: rule.alertname(),
                    service: id.0.clone(),
                    method: id.1,
                    route: id.2.clone(),
                    state: State::Pending,
                    since_unix: now,
                    fired_unix: None,
                    resolved_unix: None,
                    value,
                    threshold,
                    requests,
                    labels,
                    breaches: 1,
                    clears: 0,
                };
                if need <= 1 {
                    a.state = State::Firing;
                    a.fired_unix = Some(now);
                    self.fired += 1;
                }
                log_transition(&a);
                Self::queue(&mut self.outbox, &mut self.webhook, &self.cfg.webhook, &a);
                self.active.insert(key, a);
            }
            (None, Some(a)) => {
                a.breaches = 0;
                a.clears += 1;
                match a.state {
                    State::Pending => {
                        self.active.remove(&key);
                    }
                    State::Firing if a.clears >= need => {
                        if let Some(mut a) = self.active.remove(&key) {
                            a.state = State::Resolved;
                            a.resolved_unix = Some(now);
                            self.resolved_total += 1;
                            log_transition(&a);
                            Self::queue(&mut self.outbox, &mut self.webhook, &self.cfg.webhook, &a);
                            self.resolved.push_front(a);
                            self.resolved.truncate(self.cfg.max_resolved);
                        }
                    }
                    _ => {}
                }
            }
            (None, None) => {}
        }
    }

    /// Pending and firing alerts, firing first, then by service and route.
    pub fn active(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().collect();
        v.sort_by(|a, b| {
            (b.state == State::Firing)
                .cmp(&(a.state == State::Firing))
                .then_with(|| (&a.service, &a.route, a.rule).cmp(&(&b.service, &b.route, b.rule)))
        });
        v
    }

    /// Resolved alerts, newest first.
    pub fn resolved(&self) -> impl Iterator<Item = &Alert> {
        self.resolved.iter()
    }

    /// `apm_alerts` (1 per pending or firing alert) and the engine's own counters.
    pub fn render(&self, out: &mut Exposition) {
        for a in self.active() {
            let mut set = a.label_set();
            set.insert(1, ("alertstate", a.state.as_str().to_owned()));
            let labels = set
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect::<Vec<_>>()
                .join(",");
            out.add(&ALERTS_GAUGE, labels, 1);
        }
        out.add(&ALERTS_FIRED, String::new(), self.fired);
        out.add(&ALERTS_RESOLVED, String::new(), self.resolved_total);
        out.add(&MAP_OVERFLOWS, "map=\"alert_routes\"", self.overflows);
        out.add(
            &MAP_OVERFLOWS,
            "map=\"alert_dependencies\"",
            self.dependency_overflows,
        );
        if self.cfg.webhook.enabled() {
            let w = self.webhook;
            for (outcome, n) in [
                ("sent", w.sent),
                ("failed", w.failed),
                ("queue_full", w.queue_full),
            ] {
                out.add(&WEBHOOK_ALERTS, format!("outcome=\"{outcome}\""), n);
            }
            out.add(&WEBHOOK_ATTEMPTS_FAILED, String::new(), w.attempts_failed);
        }
    }
}

/// A label value in the text exposition format.
/// Tracks `id` in `map` (made by `make` when new) unless that would take the map past
/// `budget` entries: then counts the refusal in `overflows`. Returns whether `id` is tracked.
fn admit<V>(
    map: &mut HashMap<RouteId, V>,
    id: &RouteId,
    budget: usize,
    overflows: &mut u64,
    make: impl FnOnce() -> V,
) -> bool {
    if map.contains_key(id) {
        return true;
    }
    if map.len() >= budget {
        *overflows += 1;
        return false;
    }
    map.insert(id.clone(), make());
    true
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn log_transition(a: &Alert) {
    let what = format!(
        "alert {} {}: service {:?} {} {:?}: {:.4} (threshold {:.4}, {} requests in the rule window)",
        a.alertname,
        a.state.as_str(),
        a.service,
        a.method,
        a.route,
        a.value,
        a.threshold,
        a.requests
    );
    match a.state {
        State::Firing => log::warn!("{what}"),
        _ => log::info!("{what}"),
    }
}

/// The alert gauge: `apm_alerts`, not `ALERTS` (Prometheus's own name for its alerts).
const ALERTS_GAUGE: Family = Family::gauge(
    "apm_alerts",
    "Alerts the agent evaluates itself, 1 per pending or firing alert.",
);
const ALERTS_FIRED: Family = Family::counter(
    "apm_alerts_fired_total",
    "Alerts that went from pending to firing.",
);
const ALERTS_RESOLVED: Family =
    Family::counter("apm_alerts_resolved_total", "Firing alerts that resolved.");
const WEBHOOK_ALERTS: Family = Family::counter(
    "apm_alerts_webhook_total",
    "Firing and resolved alerts meant for the webhook: sent (accepted), failed (given up \
     after retries) or queue_full (dropped from a full queue before a post).",
);
const WEBHOOK_ATTEMPTS_FAILED: Family = Family::counter(
    "apm_alerts_webhook_attempts_failed_total",
    "Posts to the alert webhook that failed (each retry counts).",
);

#[cfg(test)]
mod tests;
