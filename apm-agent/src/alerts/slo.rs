//! Service level objectives and their error-budget burn rates (multi-window, multi-burn-rate,
//! as in Google's SRE workbook and the seed articles): per service named in the config, an
//! availability objective (server requests not answered 5xx) and a latency objective
//! (server requests answered within the Apdex threshold T and not 5xx).
//!
//! A service's windows are summed into buckets of `bucket_windows` windows (a minute by
//! default), kept for the longest burn window (6 h): 360 buckets of three counters per
//! objective'd service, and only those services are followed. The burn rate over a span is
//! its bad share divided by the error budget (1 - objective); `fast` fires when both the
//! long (1 h) and the short (5 min) spans burn above 14.4, `slow` when both 6 h and 30 min
//! burn above 6.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::metrics::red::RouteSummary;

/// One service's objectives (`[[alerts.slo]]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// The service name, exactly as the agent names it.
    pub service: String,
    /// Share of server requests that must not fail with a 5xx (e.g. 0.999); unset: none.
    #[serde(default)]
    pub availability: Option<f64>,
    /// Share of server requests that must be answered within the Apdex threshold T
    /// (`apdex_threshold_ms`) and not with a 5xx (e.g. 0.99); unset: none.
    #[serde(default)]
    pub latency: Option<f64>,
}

/// The burn-rate spans, in windows, and their bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurnWindows {
    /// Windows per bucket. Default 6 (a minute of 10 s windows).
    pub bucket_windows: u32,
    /// The fast alert's long and short spans, in buckets. Default 60 and 5 (1 h, 5 min).
    pub fast_long_buckets: u32,
    pub fast_short_buckets: u32,
    /// The slow alert's spans. Default 360 and 30 (6 h, 30 min).
    pub slow_long_buckets: u32,
    pub slow_short_buckets: u32,
    /// Burn rates above which they fire. Default 14.4 and 6.
    pub fast_burn: f64,
    pub slow_burn: f64,
}

impl Default for BurnWindows {
    fn default() -> Self {
        Self {
            bucket_windows: 6,
            fast_long_buckets: 60,
            fast_short_buckets: 5,
            slow_long_buckets: 360,
            slow_short_buckets: 30,
            fast_burn: 14.4,
            slow_burn: 6.0,
        }
    }
}

/// Which objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    Availability,
    Latency,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Availability => "availability",
            Self::Latency => "latency",
        }
    }
}

/// Fast or slow burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Burn {
    Fast,
    Slow,
}

/// Counts of one bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    errors: u64,
    slow: u64,
}

/// One objective'd service's buckets.
#[derive(Debug)]
pub struct ServiceBurn {
    pub cfg: SloConfig,
    /// Full buckets, newest last, at most `slow_long_buckets`.
    buckets: VecDeque<Bucket>,
    current: Bucket,
    windows_in_current: u32,
}

/// A burn that breaches: (objective, fast or slow, the long span's burn rate, the threshold).
pub type Breach = (Objective, Burn, f64, f64);

impl ServiceBurn {
    pub fn new(cfg: SloConfig) -> Self {
        Self {
            cfg,
            buckets: VecDeque::new(),
            current: Bucket::default(),
            windows_in_current: 0,
        }
    }

    /// Adds one window's server rows of this service.
    pub fn push(&mut self, rows: &[&RouteSummary], w: &BurnWindows) {
        for r in rows {
            self.current.requests += r.requests;
            self.current.errors += r.errors_5xx;
            self.current.slow += r.requests.saturating_sub(r.satisfied);
        }
        self.windows_in_current += 1;
        if self.windows_in_current >= w.bucket_windows {
            self.buckets.push_back(self.current);
            self.current = Bucket::default();
            self.windows_in_current = 0;
            while self.buckets.len() > w.slow_long_buckets as usize {
                self.buckets.pop_front();
            }
        }
    }

    /// Bad share of the last `n` full buckets (None without requests, or before `n` buckets
    /// were seen: a span must be full to be judged).
    fn bad_share(&self, n: u32, objective: Objective) -> Option<f64> {
        let n = n as usize;
        if self.buckets.len() < n {
            return None;
        }
        let (mut req, mut bad) = (0, 0);
        for b in self.buckets.iter().rev().take(n) {
            req += b.requests;
            bad += match objective {
                Objective::Availability => b.errors,
                Objective::Latency => b.slow,
            };
        }
        (req > 0).then(|| bad as f64 / req as f64)
    }

    /// The burns that breach now.
    pub fn breaches(&self, w: &BurnWindows) -> Vec<Breach> {
        let mut out = Vec::new();
        for (objective, target) in [
            (Objective::Availability, self.cfg.availability),
            (Objective::Latency, self.cfg.latency),
        ] {
            let Some(target) = target else { continue };
            let budget = 1.0 - target;
            if budget <= 0.0 {
                continue;
            }
            for (burn, long, short, rate) in [
                (
                    Burn::Fast,
                    w.fast_long_buckets,
                    w.fast_short_buckets,
                    w.fast_burn,
                ),
                (
                    Burn::Slow,
                    w.slow_long_buckets,
                    w.slow_short_buckets,
                    w.slow_burn,
                ),
            ] {
                let (Some(l), Some(s)) = (
                    self.bad_share(long, objective),
                    self.bad_share(short, objective),
                ) else {
                    continue;
                };
                if l / budget > rate && s / budget > rate {
                    out.push((objective, burn, l / budget, rate));
                }
            }
        }
        out
    }
}

/// The first objective setting out of its range.
pub fn invalid(
    slos: &[SloConfig],
    w: &BurnWindows,
) -> Option<(&'static str, String, &'static str)> {
    for s in slos {
        for (key, v) in [
            ("alerts.slo.availability", s.availability),
            ("alerts.slo.latency", s.latency),
        ] {
            if let Some(v) = v
                && !(v > 0.0 && v < 1.0)
            {
                return Some((key, v.to_string(), "must be between 0 and 1, both excluded"));
            }
        }
    }
    let spans = [
        ("alerts.burn.bucket_windows", w.bucket_windows),
        ("alerts.burn.fast_long_buckets", w.fast_long_buckets),
        ("alerts.burn.fast_short_buckets", w.fast_short_buckets),
        ("alerts.burn.slow_long_buckets", w.slow_long_buckets),
        ("alerts.burn.slow_short_buckets", w.slow_short_buckets),
    ];
    if let Some((k, v)) = spans.into_iter().find(|(_, v)| *v == 0 || *v > 10_000) {
        return Some((k, v.to_string(), "must be between 1 and 10000"));
    }
    if w.fast_long_buckets > w.slow_long_buckets || w.slow_short_buckets > w.slow_long_buckets {
        return Some((
            "alerts.burn.slow_long_buckets",
            w.slow_long_buckets.to_string(),
            "must be the longest span",
        ));
    }
    None
}
