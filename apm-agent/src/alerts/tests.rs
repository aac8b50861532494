//! The engine on synthetic windows: each rule fires after `for_evaluations` breaches,
//! resolves after as many clear ones, needs its minimum traffic, and the baseline rules wait
//! for their baselines and do not learn from the regression they report.
use super::*;
use crate::metrics::dependencies::{DependencyKind, DependencySummary};

fn row(route: &str, requests: u64, e5: u64, e4: u64, p95_ms: f64, apdex: f64) -> RouteSummary {
    RouteSummary {
        service: "shop".to_owned(),
        side: "server",
        method: "GET",
        route: route.to_owned(),
        requests,
        rate_per_s: requests as f64,
        errors_4xx: e4,
        errors_5xx: e5,
        p50_ms: p95_ms / 2.0,
        p95_ms,
        p99_ms: p95_ms,
        apdex: Some(apdex),
        satisfied: (apdex * requests as f64) as u64,
    }
}

fn cfg() -> AlertsConfig {
    AlertsConfig {
        rule_windows: 2,
        for_evaluations: 2,
        min_requests: 20,
        baseline_windows: 5,
        baseline_half_life_windows: 5,
        ..AlertsConfig::default()
    }
}

fn states(a: &Alerts) -> Vec<(&'static str, &str, State)> {
    a.active()
        .into_iter()
        .map(|a| (a.alertname, a.route.as_str(), a.state))
        .collect()
}

#[test]
fn error_rate_fires_after_its_for_and_resolves() {
    let mut a = Alerts::new(cfg());
    let mut t = 0.0;
    let mut tick = |a: &mut Alerts, rows: &[RouteSummary]| {
        t += 1.0;
        a.evaluate(rows, &[], 1.0, t);
    };
    // Healthy, then 20% 5xx on /cart while /ok stays healthy.
    tick(
        &mut a,
        &[
            row("/cart", 50, 0, 0, 10.0, 1.0),
            row("/ok", 50, 0, 0, 10.0, 1.0),
        ],
    );
    assert!(states(&a).is_empty());
    tick(
        &mut a,
        &[
            row("/cart", 50, 10, 0, 10.0, 1.0),
            row("/ok", 50, 0, 0, 10.0, 1.0),
        ],
    );
    assert_eq!(
        states(&a),
        [("ApmRouteErrorRateHigh", "/cart", State::Pending)]
    );
    tick(
        &mut a,
        &[
            row("/cart", 50, 10, 0, 10.0, 1.0),
            row("/ok", 50, 0, 0, 10.0, 1.0),
        ],
    );
    assert_eq!(
        states(&a),
        [("ApmRouteErrorRateHigh", "/cart", State::Firing)]
    );
    let firing = a.active()[0];
    assert!((firing.value - 0.2).abs() < 1e-9, "{firing:?}");
    assert_eq!((firing.threshold, firing.requests), (0.01, 100));
    assert_eq!(a.fired, 1);
    // Healthy again: the rule window still holds a bad window once, then clears twice.
    for _ in 0..3 {
        tick(
            &mut a,
            &[
                row("/cart", 50, 0, 0, 10.0, 1.0),
                row("/ok", 50, 0, 0, 10.0, 1.0),
            ],
        );
    }
    assert!(states(&a).is_empty(), "{:?}", states(&a));
    let resolved: Vec<_> = a.resolved().collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].state, State::Resolved);
    assert!(resolved[0].resolved_unix.is_some() && resolved[0].fired_unix.is_some());
    assert_eq!(a.resolved_total, 1);
}

#[test]
fn too_little_traffic_is_not_judged_and_4xx_is_off_by_default() {
    let mut a = Alerts::new(cfg());
    for t in 0..5 {
        // 10 requests per rule window (min 20), all 500; 4xx on another route.
        a.evaluate(
            &[
                row("/rare", 5, 5, 0, 10.0, 0.0),
                row("/bad-input", 50, 0, 50, 10.0, 1.0),
            ],
            &[],
            1.0,
            f64::from(t),
        );
    }
    assert!(states(&a).is_empty(), "{:?}", states(&a));
    let mut on = Alerts::new(AlertsConfig {
        client_error_rate: 0.05,
        ..cfg()
    });
    for t in 0..2 {
        on.evaluate(
            &[row("/bad-input", 50, 0, 50, 10.0, 1.0)],
            &[],
            1.0,
            f64::from(t),
        );
    }
    assert_eq!(
        states(&on),
        [("ApmRouteClientErrorRateHigh", "/bad-input", State::Firing)]
    );
}

#[test]
fn apdex_below_its_minimum_fires() {
    let mut a = Alerts::new(cfg());
    for t in 0..2 {
        a.evaluate(
            &[row("/slowish", 50, 0, 0, 900.0, 0.5)],
            &[],
            1.0,
            f64::from(t),
        );
    }
    assert_eq!(
        states(&a),
        [("ApmRouteApdexLow", "/slowish", State::Firing)]
    );
}

#[test]
fn latency_against_a_learned_baseline_which_the_regression_does_not_move() {
    let mut a = Alerts::new(cfg());
    let mut t = 0.0;
    // Nothing is judged before the baseline is trusted (5 windows), however slow.
    let mut young = Alerts::new(cfg());
    for (i, p95) in [20.0, 20.0, 200.0, 200.0].into_iter().enumerate() {
        young.evaluate(&[row("/items", 50, 0, 0, p95, 1.0)], &[], 1.0, i as f64);
    }
    assert!(states(&young).is_empty(), "{:?}", states(&young));
    // Learning: 6 windows at 20 ms.
    for _ in 0..6 {
        t += 1.0;
        a.evaluate(&[row("/items", 50, 0, 0, 20.0, 1.0)], &[], 1.0, t);
    }
    assert!(states(&a).is_empty(), "{:?}", states(&a));
    let before = a.routes.values().next().and_then(|r| r.baseline_p95_ms);
    // Three times as slow for a while: fires, and the baseline stays where it was.
    for _ in 0..6 {
        t += 1.0;
        a.evaluate(&[row("/items", 50, 0, 0, 90.0, 1.0)], &[], 1.0, t);
    }
    assert_eq!(
        states(&a),
        [("ApmRouteLatencyHigh", "/items", State::Firing)]
    );
    let after = a.routes.values().next().and_then(|r| r.baseline_p95_ms);
    let (Some(before), Some(after)) = (before, after) else {
        panic!("no baseline: {before:?} {after:?}");
    };
    // The pending evaluation's window is the only one learned from.
    assert!(
        after < before * 1.5,
        "baseline moved from {before} to {after}"
    );
    // Back to normal: resolves.
    for _ in 0..4 {
        t += 1.0;
        a.evaluate(&[row("/items", 50, 0, 0, 20.0, 1.0)], &[], 1.0, t);
    }
    assert!(states(&a).is_empty(), "{:?}", states(&a));
    assert_eq!(a.resolved_total, 1);
}

#[test]
fn latency_under_its_floor_is_not_judged() {
    let mut a = Alerts::new(cfg());
    for t in 0..6 {
        a.evaluate(&[row("/fast", 50, 0, 0, 1.0, 1.0)], &[], 1.0, f64::from(t));
    }
    for t in 6..10 {
        a.evaluate(&[row("/fast", 50, 0, 0, 3.0, 1.0)], &[], 1.0, f64::from(t));
    }
    assert!(states(&a).is_empty(), "{:?}", states(&a));
}

#[test]
fn throughput_under_half_its_baseline_fires_even_with_no_request() {
    let mut a = Alerts::new(cfg());
    for t in 0..6 {
        a.evaluate(&[row("/feed", 50, 0, 0, 10.0, 1.0)], &[], 1.0, f64::from(t));
    }
    assert!(states(&a).is_empty());
    // The route goes silent: it is absent from the windows.
    for t in 6..9 {
        a.evaluate(&[], &[], 1.0, f64::from(t));
    }
    assert_eq!(
        states(&a),
        [("ApmRouteThroughputLow", "/feed", State::Firing)]
    );
}

#[test]
fn routes_beyond_the_budget_are_counted_and_client_rows_ignored() {
    let mut a = Alerts::new(AlertsConfig {
        max_routes: 1,
        ..cfg()
    });
    let mut client = row("/c", 50, 50, 0, 10.0, 1.0);
    client.side = "client";
    a.evaluate(
        &[
            row("/a", 50, 0, 0, 10.0, 1.0),
            row("/b", 50, 0, 0, 10.0, 1.0),
            client,
        ],
        &[],
        1.0,
        0.0,
    );
    assert_eq!((a.routes.len(), a.overflows), (1, 1));
    let mut out = Exposition::default();
    a.render(&mut out);
    let mut text = String::new();
    out.write(&mut text);
    assert!(
        text.contains("apm_map_overflows_total{map=\"alert_routes\"} 1"),
        "{text}"
    );
}

#[test]
fn gauge_escapes_outside_strings() {
    let mut a = Alerts::new(AlertsConfig {
        for_evaluations: 1,
        ..cfg()
    });
    let mut r = row("/x\"y\\z", 50, 50, 0, 10.0, 1.0);
    r.service = "we\"b".to_owned();
    a.evaluate(&[r], &[], 1.0, 0.0);
    let mut out = Exposition::default();
    a.render(&mut out);
    let mut text = String::new();
    out.write(&mut text);
    assert!(
        text.contains("apm_alerts{alertname=\"ApmRouteErrorRateHigh\",alertstate=\"firing\",service_name=\"we\\\"b\",http_request_method=\"GET\",http_route=\"/x\\\"y\\\\z\"} 1"),
        "{text}"
    );
    assert!(text.contains("apm_alerts_fired_total 1"), "{text}");
}

#[test]
fn settings_out_of_range_are_named() {
    assert_eq!(AlertsConfig::default().invalid(), None);
    for (cfg, key) in [
        (
            AlertsConfig {
                rule_windows: 0,
                ..Default::default()
            },
            "alerts.rule_windows",
        ),
        (
            AlertsConfig {
                error_rate: 1.5,
                ..Default::default()
            },
            "alerts.error_rate",
        ),
        (
            AlertsConfig {
                latency_ratio: 0.9,
                ..Default::default()
            },
            "alerts.latency_ratio",
        ),
        (
            AlertsConfig {
                apdex_min: f64::NAN,
                ..Default::default()
            },
            "alerts.apdex_min",
        ),
    ] {
        assert_eq!(cfg.invalid().map(|(k, _, _)| k), Some(key));
    }
}

#[test]
fn silent_routes_alert_then_are_forgotten() {
    let mut a = Alerts::new(cfg());
    for t in 0..6 {
        a.evaluate(
            &[row("/retired", 50, 0, 0, 10.0, 1.0)],
            &[],
            1.0,
            f64::from(t),
        );
    }
    // Silent: a throughput alert, which resolves once the rate baseline (still learning)
    // no longer promises enough traffic to miss; then, with no alert, the route is forgotten
    // (after two half-lives of silence).
    let mut fired = false;
    for t in 6..40 {
        a.evaluate(&[], &[], 1.0, f64::from(t));
        fired |= !states(&a).is_empty();
    }
    assert!(fired);
    assert_eq!((a.fired, a.resolved_total), (1, 1));
    assert!(a.routes.is_empty());
}

fn slo_cfg() -> AlertsConfig {
    AlertsConfig {
        for_evaluations: 2,
        slo: vec![slo::SloConfig {
            service: "shop".to_owned(),
            availability: Some(0.999),
            latency: Some(0.99),
        }],
        burn: slo::BurnWindows {
            bucket_windows: 1,
            fast_long_buckets: 6,
            fast_short_buckets: 2,
            slow_long_buckets: 12,
            slow_short_buckets: 4,
            ..Default::default()
        },
        ..cfg()
    }
}

/// (alertname, service, state) of the service-level alerts.
fn burns(a: &Alerts) -> Vec<(&'static str, &str, State)> {
    a.active()
        .into_iter()
        .filter(|a| a.route.is_empty())
        .map(|a| (a.alertname, a.service.as_str(), a.state))
        .collect()
}

#[test]
fn availability_budget_burn_fires_on_both_spans_and_resolves() {
    let mut a = Alerts::new(slo_cfg());
    let mut t = 0.0;
    let mut tick = |a: &mut Alerts, rows: &[RouteSummary]| {
        t += 1.0;
        a.evaluate(rows, &[], 1.0, t);
    };
    // Spans not full yet, then healthy: nothing.
    for _ in 0..12 {
        tick(&mut a, &[row("/cart", 100, 0, 0, 10.0, 1.0)]);
    }
    assert!(burns(&a).is_empty());
    // 5% 5xx: 50 times the 0.1% budget on the short span at once; the long (6) span
    // crosses 14.4 with the second bad window.
    tick(&mut a, &[row("/cart", 100, 5, 0, 10.0, 1.0)]);
    assert!(burns(&a).is_empty(), "{:?}", burns(&a));
    tick(&mut a, &[row("/cart", 100, 5, 0, 10.0, 1.0)]);
    // Both burns: the slow pair (12 and 4) at 8.3 and 25, above 6 too.
    assert_eq!(
        burns(&a),
        [
            ("ApmErrorBudgetBurnFast", "shop", State::Pending),
            ("ApmErrorBudgetBurnSlow", "shop", State::Pending)
        ]
    );
    tick(&mut a, &[row("/cart", 100, 5, 0, 10.0, 1.0)]);
    assert_eq!(
        burns(&a)[0],
        ("ApmErrorBudgetBurnFast", "shop", State::Firing)
    );
    let firing = a.active().into_iter().find(|x| x.route.is_empty()).cloned();
    let firing = firing.expect("burn alert");
    assert!(
        firing.value > 14.4 && firing.threshold == 14.4,
        "{firing:?}"
    );
    // Healthy again: the short span clears first, and the alert resolves.
    for _ in 0..4 {
        tick(&mut a, &[row("/cart", 100, 0, 0, 10.0, 1.0)]);
    }
    assert!(
        burns(&a).iter().all(|b| b.0 != "ApmErrorBudgetBurnFast"),
        "{:?}",
        burns(&a)
    );
    assert!(
        a.resolved()
            .any(|r| r.alertname == "ApmErrorBudgetBurnFast")
    );
}

#[test]
fn latency_budget_counts_requests_outside_apdex_t_and_other_services_are_not_followed() {
    let mut a = Alerts::new(slo_cfg());
    for t in 0..8 {
        // Half of shop's requests slower than T (apdex 0.5: satisfied 50 of 100); another
        // service fails everything but has no objective.
        let mut other = row("/x", 100, 100, 0, 10.0, 0.0);
        other.service = "other".to_owned();
        a.evaluate(
            &[row("/cart", 100, 0, 0, 900.0, 0.5), other],
            &[],
            1.0,
            f64::from(t),
        );
    }
    let b = burns(&a);
    assert!(
        b.contains(&("ApmLatencyBudgetBurnFast", "shop", State::Firing)),
        "{b:?}"
    );
    assert!(
        b.iter()
            .all(|x| x.1 == "shop" && !x.0.starts_with("ApmErrorBudget")),
        "{b:?}"
    );
}

#[test]
fn objectives_out_of_range_are_named() {
    let mut c = slo_cfg();
    c.slo[0].availability = Some(1.0);
    assert_eq!(
        c.invalid().map(|(k, _, _)| k),
        Some("alerts.slo.availability")
    );
    let mut c = slo_cfg();
    c.burn.fast_long_buckets = 100;
    assert_eq!(
        c.invalid().map(|(k, _, _)| k),
        Some("alerts.burn.slow_long_buckets")
    );
    let mut c = slo_cfg();
    c.burn.bucket_windows = 0;
    assert_eq!(
        c.invalid().map(|(k, _, _)| k),
        Some("alerts.burn.bucket_windows")
    );
}

fn with_webhook(max_queue: usize, send_resolved: bool) -> AlertsConfig {
    AlertsConfig {
        webhook: WebhookConfig {
            url: "http://127.0.0.1:9/hook".to_owned(),
            max_queue,
            send_resolved,
            ..WebhookConfig::default()
        },
        ..cfg()
    }
}

/// Runs /cart healthy, failing for 3 windows (pending, firing), healthy for 3 (resolved).
fn fire_and_resolve(a: &mut Alerts) {
    let mut t = 0.0;
    for e5 in [0, 10, 10, 10, 0, 0, 0, 0] {
        t += 1.0;
        a.evaluate(&[row("/cart", 50, e5, 0, 10.0, 1.0)], &[], 1.0, t);
    }
}

#[test]
fn firing_and_resolved_wait_for_the_webhook_pending_does_not() {
    let mut a = Alerts::new(with_webhook(10, true));
    fire_and_resolve(&mut a);
    let out = a.take_outbox();
    let got: Vec<(&str, State)> = out.iter().map(|x| (x.alertname, x.state)).collect();
    assert_eq!(
        got,
        [
            ("ApmRouteErrorRateHigh", State::Firing),
            ("ApmRouteErrorRateHigh", State::Resolved),
        ]
    );
    assert!(a.take_outbox().is_empty());

    let mut a = Alerts::new(with_webhook(10, false));
    fire_and_resolve(&mut a);
    assert_eq!(a.take_outbox().len(), 1);

    // No webhook: nothing is kept for one.
    let mut a = Alerts::new(cfg());
    fire_and_resolve(&mut a);
    assert!(a.take_outbox().is_empty());
}

#[test]
fn a_full_webhook_queue_drops_the_oldest_and_counts_it() {
    let mut a = Alerts::new(with_webhook(1, true));
    fire_and_resolve(&mut a);
    let out = a.take_outbox();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].state, State::Resolved);
    assert_eq!(a.webhook.queue_full, 1);
    let mut exposition = Exposition::default();
    a.render(&mut exposition);
    let mut text = String::new();
    exposition.write(&mut text);
    assert!(
        text.contains("apm_alerts_webhook_total{outcome=\"queue_full\"} 1"),
        "{text}"
    );
}

#[test]
fn webhook_settings_out_of_range_are_named() {
    for (webhook, key) in [
        (
            WebhookConfig {
                url: "ftp://example.com/".to_owned(),
                ..WebhookConfig::default()
            },
            "alerts.webhook.url",
        ),
        (
            WebhookConfig {
                url: "not a url".to_owned(),
                ..WebhookConfig::default()
            },
            "alerts.webhook.url",
        ),
        (
            WebhookConfig {
                timeout_ms: 0,
                ..WebhookConfig::default()
            },
            "alerts.webhook.timeout_ms",
        ),
        (
            WebhookConfig {
                max_queue: 0,
                ..WebhookConfig::default()
            },
            "alerts.webhook.max_queue",
        ),
    ] {
        let cfg = AlertsConfig {
            webhook,
            ..AlertsConfig::default()
        };
        assert_eq!(cfg.invalid().map(|(k, _, _)| k), Some(key));
    }
    let ok = AlertsConfig {
        webhook: WebhookConfig {
            url: "https://hooks.example.com/apm".to_owned(),
            ..WebhookConfig::default()
        },
        ..AlertsConfig::default()
    };
    assert_eq!(ok.invalid(), None);
}

fn db_dep(calls: u64, p95_ms: f64) -> DependencySummary {
    DependencySummary {
        service: "shop".to_owned(),
        kind: DependencyKind::Database,
        labels: vec![
            ("db_system_name", "postgresql".to_owned()),
            ("db_operation_name", "SELECT".to_owned()),
            ("server_address", "db".to_owned()),
        ],
        calls,
        p95_ms,
    }
}

#[test]
fn a_database_operation_slower_than_twice_its_baseline_fires_and_resolves() {
    let mut a = Alerts::new(cfg());
    let mut t = 0.0;
    let mut tick = |a: &mut Alerts, deps: &[DependencySummary]| {
        t += 1.0;
        a.evaluate(&[], deps, 1.0, t);
    };
    // Baseline 20 ms over the 5 learning windows, then three times that.
    for _ in 0..6 {
        tick(&mut a, &[db_dep(50, 20.0)]);
    }
    assert!(a.active().is_empty());
    tick(&mut a, &[db_dep(50, 60.0)]);
    tick(&mut a, &[db_dep(50, 60.0)]);
    tick(&mut a, &[db_dep(50, 60.0)]);
    let firing = a.active();
    assert_eq!(firing.len(), 1, "{firing:?}");
    let f = firing[0];
    assert_eq!(f.alertname, "ApmDatabaseLatencyHigh");
    assert_eq!(f.state, State::Firing);
    // Twice the baseline, which learnt the first slow window before the rule window showed
    // the breach (as the route rule's does) and then froze.
    assert!(
        (40.0..55.0).contains(&f.threshold),
        "about twice the baseline: {f:?}"
    );
    assert_eq!(
        f.label_set(),
        [
            ("alertname", "ApmDatabaseLatencyHigh".to_owned()),
            ("service_name", "shop".to_owned()),
            ("db_operation_name", "SELECT".to_owned()),
            ("db_system_name", "postgresql".to_owned()),
            ("server_address", "db".to_owned()),
        ]
    );
    let mut exposition = Exposition::default();
    a.render(&mut exposition);
    let mut text = String::new();
    exposition.write(&mut text);
    assert!(
        text.contains(
            "apm_alerts{alertname=\"ApmDatabaseLatencyHigh\",alertstate=\"firing\",\
             service_name=\"shop\",db_operation_name=\"SELECT\",db_system_name=\"postgresql\",\
             server_address=\"db\"} 1"
        ),
        "{text}"
    );
    for _ in 0..4 {
        tick(&mut a, &[db_dep(50, 20.0)]);
    }
    assert!(a.active().is_empty());
    assert_eq!(
        a.resolved().next().map(|r| r.alertname),
        Some("ApmDatabaseLatencyHigh")
    );

    // Off: not judged at all.
    let mut off = Alerts::new(AlertsConfig {
        dependency_latency: false,
        ..cfg()
    });
    for i in 0..12 {
        let p95 = if i < 6 { 20.0 } else { 60.0 };
        off.evaluate(&[], &[db_dep(50, p95)], 1.0, f64::from(i));
    }
    assert!(off.active().is_empty());
}
