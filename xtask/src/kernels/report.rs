//! The matrix: one row per kernel, one column per step, and below it what failed, in the
//! words of whatever failed (the verifier's, for a rejected program).
use std::{fmt::Write as _, time::Duration};

use super::smoke::{CHECK, EBPF_TIME, FALLBACK_SUFFIX, Step};

/// One kernel's results.
pub struct Row {
    /// The line asked for (`6.1`, `host`).
    pub line: String,
    /// `uname -r`.
    pub release: String,
    /// Debian package and version.
    pub package: String,
    /// Under qemu's software emulation (figures there are not native speed).
    pub emulated: bool,
    pub steps: Vec<Step>,
    pub elapsed: Duration,
    /// Why the kernel was booted a second time, when it was (an emulator fault, never a
    /// failed step).
    pub retried: Option<String>,
}

impl Row {
    /// Every expected step ran and passed.
    pub fn passed(&self, expected: &[&str]) -> bool {
        expected
            .iter()
            .all(|name| self.step(name).is_some_and(Step::passed))
            && self.steps.iter().all(Step::passed)
    }

    fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// What `apm-agent check` reported as the capture path, or `-`.
    fn capture_path(&self) -> String {
        self.step(CHECK)
            .and_then(|s| {
                s.output
                    .lines()
                    .find(|l| l.contains("capture path"))
                    .and_then(|l| l.split("capture path").nth(1))
                    .map(|rest| {
                        let word = rest.split_whitespace().next().unwrap_or("-");
                        word.trim_end_matches(':').to_owned()
                    })
            })
            .unwrap_or_else(|| "-".to_owned())
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The table and the failures.
pub fn render(rows: &[Row], expected: &[&str]) -> String {
    let mut s = String::from("\nkernel matrix (guests under qemu TCG: software emulation)\n");
    let _ = write!(s, "{:<26} {:<8} {:<14}", "kernel", "line", "capture path");
    for name in expected {
        let _ = write!(s, " {name:<w$}", w = name.len().max(4));
    }
    let _ = writeln!(s, " {:>7}  result", "time");
    for r in rows {
        let _ = write!(
            s,
            "{:<26} {:<8} {:<14}",
            r.release,
            r.line,
            r.capture_path()
        );
        for name in expected {
            let _ = write!(s, " {:<w$}", cell(r.step(name)), w = name.len().max(4));
        }
        let verdict = if r.passed(expected) { "pass" } else { "FAIL" };
        let _ = writeln!(s, " {:>6}s  {verdict}", r.elapsed.as_secs());
        // The second pass on the syscall path, where the first used the socket layer.
        if r.steps.iter().any(|st| st.name.ends_with(FALLBACK_SUFFIX)) {
            let _ = write!(s, "{:<26} {:<8} {:<14}", "", "", "syscalls");
            for name in expected {
                let step = r.step(&format!("{name}{FALLBACK_SUFFIX}"));
                let _ = write!(s, " {:<w$}", cell(step), w = name.len().max(4));
            }
            let _ = writeln!(s);
        }
    }
    for r in rows {
        let _ = writeln!(
            s,
            "  {}: {}{}",
            r.release,
            r.package,
            if r.emulated { "" } else { " (native)" }
        );
    }
    s.push_str(&ebpf_times(rows));
    for r in rows {
        if let Some(why) = &r.retried {
            let _ = writeln!(s, "  note {}: {why}", r.release);
        }
    }
    for r in rows {
        // Passing steps that accepted a counted loss (see the tests' assert_exact_or_counted).
        for st in r.steps.iter().filter(|st| st.passed()) {
            for line in st.output.lines().filter(|l| l.contains("(counted loss)")) {
                let _ = writeln!(s, "  note {} / {}: {}", r.release, st.name, line.trim());
            }
        }
    }
    for r in rows {
        for st in r.steps.iter().filter(|st| !st.passed()) {
            let _ = writeln!(s, "\n--- {} / {}: {} ---", r.release, st.name, status(st));
            if st.name == CHECK {
                // The lines that say what is missing, and the verifier's report under them.
                let mut keep = false;
                for line in st.output.lines() {
                    if line.contains("[missing]") {
                        keep = true;
                    } else if line.contains("[ok]") || line.contains("[absent]") {
                        keep = false;
                    }
                    if keep || line.starts_with("result:") {
                        let _ = writeln!(s, "{line}");
                    }
                }
            } else {
                let _ = writeln!(s, "{}", tail(&st.output, 40));
            }
        }
    }
    s
}

/// The capture paths whose eBPF time the `ebpf-time` step measures, in table order.
const TIMED_PATHS: [&str; 3] = ["syscalls", "sockets", "sockets-fexit"];

/// The eBPF time per request of each capture path, per kernel (from the `ebpf-time` step),
/// with each socket-layer path as a ratio of the syscalls path of the same kernel.
fn ebpf_times(rows: &[Row]) -> String {
    let mut s = String::from(
        "\neBPF time per HTTP request, ns (server and client traced; profiler and TLS off); \
         ratios against syscalls on the same kernel\n",
    );
    let _ = writeln!(
        s,
        "{:<26} {:>10} {:>10} {:>14} {:>8} {:>8} {:>14}",
        "kernel", "syscalls", "sockets", "sockets-fexit", "sock/sys", "fexit/sys", "skipped s/s/f"
    );
    let mut any = false;
    for r in rows {
        let Some(step) = r.step(EBPF_TIME) else {
            continue;
        };
        let figures = TIMED_PATHS.map(|path| path_figures(&step.output, path));
        let ns = |i: usize| figures[i].as_ref().map(|f| f.0);
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        let ratio = |i: usize| match (ns(0), ns(i)) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "-".to_owned(),
        };
        let skipped = figures
            .iter()
            .map(|f| f.as_ref().map_or("-", |f| f.1.as_str()))
            .collect::<Vec<_>>()
            .join("/");
        let _ = writeln!(
            s,
            "{:<26} {:>10} {:>10} {:>14} {:>8} {:>8} {:>14}{}",
            r.release,
            show(ns(0)),
            show(ns(1)),
            show(ns(2)),
            ratio(1),
            ratio(2),
            skipped,
            if r.emulated { "  (emulated)" } else { "" }
        );
        any = true;
    }
    if any { s } else { String::new() }
}

/// (ns per request, skipped program runs) of `path` in an `ebpf-time` step's output, from
/// its line `ebpf-time path=<path> requests=<n> ns=<t> skipped=<k>`.
fn path_figures(output: &str, path: &str) -> Option<(f64, String)> {
    output.lines().find_map(|l| {
        let rest = l.strip_prefix("ebpf-time ")?;
        let field = |k: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
        };
        (field("path=")? == path).then_some(())?;
        let requests: f64 = field("requests=")?.parse().ok()?;
        let ns: f64 = field("ns=")?.parse().ok()?;
        Some((
            ns / requests.max(1.0),
            field("skipped=").unwrap_or_default(),
        ))
    })
}

/// A step's cell in the table.
fn cell(step: Option<&Step>) -> &'static str {
    match step.map(|st| st.status) {
        Some(Some(0)) => "ok",
        Some(Some(_)) => "FAIL",
        Some(None) => "died",
        None => "-",
    }
}

fn status(st: &Step) -> String {
    match st.status {
        Some(code) => format!("exit status {code}"),
        None => "did not finish".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::path_figures;

    #[test]
    fn each_path_is_read_from_its_own_line() {
        let out = "ebpf-time path=syscalls requests=300 ns=268397412 skipped=0\n\
                   path sockets unavailable: unknown BTF type\n\
                   ebpf-time path=sockets-fexit requests=300 ns=90000000 skipped=2\n";
        let (ns, skipped) = path_figures(out, "syscalls").expect("syscalls line");
        assert!((ns - 894_658.04).abs() < 0.01);
        assert_eq!(skipped, "0");
        assert_eq!(path_figures(out, "sockets"), None);
        assert_eq!(
            path_figures(out, "sockets-fexit"),
            Some((300_000.0, "2".to_owned()))
        );
    }
}
