//! The periodic console table of the busiest routes.
use std::fmt::Write as _;

use crate::metrics::red::RouteSummary;

/// Formats the table for one window.
pub fn table(rows: &[RouteSummary], max_rows: usize, window_secs: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- busiest routes, last {window_secs}s ---");
    if rows.is_empty() {
        let _ = writeln!(out, "(no HTTP traffic observed)");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:<7} {:<32} {:>9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>5}",
        "SERVICE",
        "SIDE",
        "METHOD",
        "ROUTE",
        "REQ/S",
        "4XX",
        "5XX",
        "P50 ms",
        "P95 ms",
        "P99 ms",
        "APDEX"
    );
    for r in rows.iter().take(max_rows) {
        let apdex = r
            .apdex
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.2}"));
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<7} {:<32} {:>9.1} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>5}",
            clip(&r.service, 20),
            r.side,
            r.method,
            clip(&r.route, 32),
            r.rate_per_s,
            r.errors_4xx,
            r.errors_5xx,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            apdex
        );
    }
    out
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(width - 1).collect();
        c.push('~');
        c
    }
}
