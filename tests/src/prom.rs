//! A parser for the Prometheus text exposition the agent serves, and queries over it.
use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format; malformed lines are an error (the exposition must be valid).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).ok_or_else(|| format!("line {}: {line:?}", n + 1))?);
        }
        Ok(Self { samples })
    }

    /// Samples named `name` whose labels include every `(key, value)` of `filter`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// Sum of the matching samples.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.select(name, filter).map(|s| s.value).sum()
    }

    /// Value of an unlabelled (or the only matching) sample, 0 when absent.
    pub fn value(&self, name: &str) -> f64 {
        self.sum(name, &[])
    }

    /// Server-side request count of one series.
    pub fn server_count(&self, service: &str, method: &str, route: &str, status: &str) -> f64 {
        self.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("service_name", service),
                ("http_request_method", method),
                ("http_route", route),
                ("http_response_status_code", status),
            ],
        )
    }

    /// Client-side request count of one series, by the server port called.
    pub fn client_count(
        &self,
        service: &str,
        port: u16,
        method: &str,
        route: &str,
        status: &str,
    ) -> f64 {
        let port = port.to_string();
        self.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("service_name", service),
                ("server_port", &port),
                ("http_request_method", method),
                ("http_route", route),
                ("http_response_status_code", status),
            ],
        )
    }

    /// All server-side requests of a service.
    pub fn server_total(&self, service: &str) -> f64 {
        self.sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", service)],
        )
    }

    /// All client-side requests to a server port.
    pub fn client_total(&self, port: u16) -> f64 {
        let port = port.to_string();
        self.sum(
            "http_client_request_duration_seconds_count",
            &[("server_port", &port)],
        )
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name_end, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (open, labels, after)
        }
        None => {
            let sp = line.find(' ')?;
            (sp, BTreeMap::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: line[..name_end].to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &rest[end?..];
    }
}

/// Polls `f` over the expositions `fetch` returns until it reaches `want` (or `timeout`),
/// then waits a little longer so that over-counting would show, and returns the final value.
/// Shared by the agent run as a process and the agent run in a pod.
pub fn settle(
    fetch: impl Fn() -> anyhow::Result<Metrics>,
    want: f64,
    timeout: std::time::Duration,
    f: impl Fn(&Metrics) -> f64,
) -> anyhow::Result<f64> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = f(&fetch()?);
        if v >= want || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    Ok(f(&fetch()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes() {
        let m = Metrics::parse(
            "# HELP x y\nx_total 3\nh_bucket{a=\"1\",b=\"q\\\"x\\\\y\",le=\"+Inf\"} 7\nh_sum{a=\"1\"} 0.25\n",
        )
        .unwrap();
        assert_eq!(m.value("x_total"), 3.0);
        assert_eq!(m.sum("h_bucket", &[("b", "q\"x\\y")]), 7.0);
        assert_eq!(m.sum("h_sum", &[("a", "1")]), 0.25);
        assert_eq!(m.sum("h_sum", &[("a", "2")]), 0.0);
        assert!(Metrics::parse("bad line without value").is_err());
    }
}
