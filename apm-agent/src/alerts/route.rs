//! One server route as the alert rules see it: its last few windows (the rule window) and
//! its learned baselines.
use std::collections::VecDeque;

use crate::metrics::red::RouteSummary;

/// What one percentile window said about a route (zeros when it saw no request).
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowFigures {
    pub secs: f64,
    pub requests: u64,
    pub errors_5xx: u64,
    pub errors_4xx: u64,
    /// Apdex times requests (so windows combine weighted by their traffic).
    pub apdex_weighted: f64,
    /// p95 (ms) times requests.
    pub p95_weighted: f64,
}

impl WindowFigures {
    pub fn of(row: &RouteSummary, secs: f64) -> Self {
        let n = row.requests as f64;
        Self {
            secs,
            requests: row.requests,
            errors_5xx: row.errors_5xx,
            errors_4xx: row.errors_4xx,
            apdex_weighted: row.apdex.unwrap_or(1.0) * n,
            p95_weighted: row.p95_ms * n,
        }
    }

    /// A dependency's window: only its calls and p95 count.
    pub fn latency(calls: u64, p95_ms: f64, secs: f64) -> Self {
        Self {
            secs,
            requests: calls,
            p95_weighted: p95_ms * calls as f64,
            ..Self::default()
        }
    }

    pub fn idle(secs: f64) -> Self {
        Self {
            secs,
            ..Self::default()
        }
    }
}

/// The rule window's figures, combined.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Combined {
    pub requests: u64,
    pub rate_per_s: f64,
    pub error_rate: f64,
    pub client_error_rate: f64,
    pub apdex: f64,
    /// The windows' p95s averaged, weighted by their requests: an approximation of the
    /// rule window's p95 (the windows' histograms are not kept).
    pub p95_ms: f64,
}

/// A route's recent windows and baselines.
#[derive(Debug, Default)]
pub struct RouteTrack {
    windows: VecDeque<WindowFigures>,
    /// Windows seen since the route was first followed.
    pub seen: u64,
    /// Windows in a row without a request.
    pub idle: u64,
    /// Exponentially weighted moving averages of each window's p95 (windows with traffic)
    /// and rate (every window).
    pub baseline_p95_ms: Option<f64>,
    pub baseline_rate: Option<f64>,
}

impl RouteTrack {
    /// Adds a window, keeping the last `keep`.
    pub fn push(&mut self, w: WindowFigures, keep: usize) {
        self.idle = if w.requests == 0 { self.idle + 1 } else { 0 };
        self.windows.push_back(w);
        while self.windows.len() > keep {
            self.windows.pop_front();
        }
        self.seen += 1;
    }

    /// Folds the newest window into the baselines (`alpha`: the weight of the new value).
    /// `latency`: whether the p95 baseline may learn now (not while its rule breaches).
    pub fn learn(&mut self, alpha: f64, latency: bool) {
        let Some(w) = self.windows.back().copied() else {
            return;
        };
        let ewma = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o + alpha * (new - o)));
        if latency && w.requests > 0 {
            self.baseline_p95_ms = ewma(self.baseline_p95_ms, w.p95_weighted / w.requests as f64);
        }
        if w.secs > 0.0 {
            self.baseline_rate = ewma(self.baseline_rate, w.requests as f64 / w.secs);
        }
    }

    /// The rule window's figures.
    pub fn combined(&self) -> Combined {
        let mut c = Combined::default();
        let (mut secs, mut e5, mut e4, mut apdex, mut p95) = (0.0, 0, 0, 0.0, 0.0);
        for w in &self.windows {
            c.requests += w.requests;
            secs += w.secs;
            e5 += w.errors_5xx;
            e4 += w.errors_4xx;
            apdex += w.apdex_weighted;
            p95 += w.p95_weighted;
        }
        if secs > 0.0 {
            c.rate_per_s = c.requests as f64 / secs;
        }
        if c.requests > 0 {
            let n = c.requests as f64;
            c.error_rate = e5 as f64 / n;
            c.client_error_rate = e4 as f64 / n;
            c.apdex = apdex / n;
            c.p95_ms = p95 / n;
        }
        c
    }
}
