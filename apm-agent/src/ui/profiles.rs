//! The profiles page: every service with its CPU use over a time range, and for a chosen
//! service its interactive flame graph (with folded and pprof downloads for the same query).
use std::fmt::Write as _;

use super::{escape, page, query_value};
use crate::profiles::store::ServiceShare;

/// What the page shows.
pub struct ProfilesView<'a> {
    pub minutes: u64,
    /// Seconds the shown data covers (at most `minutes`, less when the agent is younger).
    pub covered_secs: f64,
    pub frequency_hz: u64,
    pub cpus: usize,
    pub services: &'a [ServiceShare],
    pub selected: Option<&'a str>,
}

pub fn render(v: &ProfilesView<'_>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<form method=\"get\">Last <input name=\"minutes\" type=\"number\" min=\"1\" max=\"1440\" value=\"{}\" style=\"width:5em\"> minutes \
         <button>show</button></form>",
        v.minutes
    );
    if v.services.is_empty() {
        body.push_str("<p>No CPU samples in this range yet.</p>");
        return page("CPU profiles", &body);
    }
    let capacity = v.covered_secs.max(1.0) * v.frequency_hz.max(1) as f64;
    let _ = write!(
        body,
        "<p>{:.0} s of data, {} CPUs, {} Hz per CPU.</p><table><tr><th>service</th><th>CPU (cores)</th>\
         <th>% of host</th><th>samples</th><th></th></tr>",
        v.covered_secs, v.cpus, v.frequency_hz
    );
    for s in v.services {
        let cores = s.samples as f64 / capacity;
        let q = format!("service={}&minutes={}", query_value(&s.service), v.minutes);
        let _ = write!(
            body,
            "<tr><td><a href=\"/profiles?{q}\">{name}</a></td><td class=\"n\">{cores:.3}</td>\
             <td class=\"n\">{pct:.1}</td><td class=\"n\">{n}</td><td>\
             <a href=\"/profiles/flamegraph.svg?{q}\">flame graph</a> \
             <a href=\"/profiles/folded?{q}\">folded</a> <a href=\"/profiles/pprof?{q}\">pprof</a></td></tr>",
            name = escape(&s.service),
            pct = cores / v.cpus.max(1) as f64 * 100.0,
            n = s.samples,
        );
    }
    body.push_str("</table>");
    if let Some(service) = v.selected {
        let q = format!("service={}&minutes={}", query_value(service), v.minutes);
        let _ = write!(
            body,
            "<h2>{}</h2><object type=\"image/svg+xml\" data=\"/profiles/flamegraph.svg?{q}\"></object>",
            escape(service)
        );
    }
    page("CPU profiles", &body)
}
