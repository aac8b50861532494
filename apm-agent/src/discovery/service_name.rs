//! Service names for processes, without configuration.
//!
//! Precedence: `OTEL_SERVICE_NAME` in the process environment, then `service.name` in its
//! `OTEL_RESOURCE_ATTRIBUTES`, then in Kubernetes the name of the process's workload
//! (Deployment, StatefulSet, DaemonSet, CronJob, Job; else its pod, else its container: see
//! [`super::kubernetes`]), then the agent's own `OTEL_SERVICE_NAME`, then a readable name
//! from the executable and command line (the script for interpreters: `python3 app.py` ->
//! `app`), then the kernel `comm`.
use std::{path::Path, sync::OnceLock};

/// The name of processes that declare none (the agent's own `OTEL_SERVICE_NAME`).
static DEFAULT_NAME: OnceLock<String> = OnceLock::new();

/// Sets the name given to processes that declare none, instead of one derived from their
/// command line. Process-wide configuration, set once at start-up (before any process is
/// named); later calls are ignored.
pub fn set_default(name: &str) {
    let name = name.trim();
    if !name.is_empty() {
        let _ = DEFAULT_NAME.set(sanitize(name));
    }
}

/// Longest service name kept.
const MAX_NAME: usize = 128;

/// Resolves the service name of `pid`; `comm` is the fallback for processes already gone.
pub fn resolve(pid: u32, comm: &str) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    if let Some(name) = declared_or_kubernetes(&environ, || {
        super::kubernetes::lookup_pid(pid).and_then(|m| m.service_name().map(str::to_owned))
    }) {
        return name;
    }
    if let Some(name) = DEFAULT_NAME.get() {
        return name.clone();
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&str> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .filter_map(|a| std::str::from_utf8(a).ok())
        .collect();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let exe_name = exe
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(" (deleted)"));
    if let Some(name) = from_command(exe_name, &args) {
        return name;
    }
    if comm.is_empty() {
        "unknown".to_owned()
    } else {
        sanitize(comm)
    }
}

/// The name the process declares ([`from_environ`]), else the one Kubernetes gives it
/// (`kubernetes` is asked only when the process declares none).
fn declared_or_kubernetes(
    environ: &[u8],
    kubernetes: impl FnOnce() -> Option<String>,
) -> Option<String> {
    from_environ(environ).or_else(|| {
        kubernetes()
            .map(|n| sanitize(n.trim()))
            .filter(|n| !n.is_empty())
    })
}

/// `OTEL_SERVICE_NAME`, else `service.name` from `OTEL_RESOURCE_ATTRIBUTES`.
pub fn from_environ(environ: &[u8]) -> Option<String> {
    let var = |key: &str| {
        environ.split(|b| *b == 0).find_map(|entry| {
            let rest = entry.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            std::str::from_utf8(rest).ok()
        })
    };
    if let Some(name) = var("OTEL_SERVICE_NAME")
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        return Some(sanitize(name));
    }
    var("OTEL_RESOURCE_ATTRIBUTES").and_then(|attrs| {
        attrs.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == "service.name" && !v.trim().is_empty()).then(|| sanitize(v.trim()))
        })
    })
}

/// A readable name from the executable and its arguments.
pub fn from_command(exe_name: Option<&str>, args: &[&str]) -> Option<String> {
    let argv0 = args.first().map(|a| basename(a));
    let exe = exe_name.or(argv0)?;
    let rest = args.get(1..).unwrap_or(&[]);
    let name = if is_python(exe) {
        python_target(rest)
    } else if exe == "java" {
        java_target(rest)
    } else if matches!(
        exe,
        "node" | "nodejs" | "ruby" | "perl" | "php" | "bash" | "sh" | "dash" | "deno" | "bun"
    ) {
        // `sh -c CMD`, `node -e CODE`: inline code, no script to name the service after.
        if rest.iter().any(|a| matches!(*a, "-c" | "-e" | "--eval")) {
            None
        } else {
            first_positional(rest, &[]).map(script_name)
        }
    } else {
        None
    };
    Some(sanitize(name.as_deref().unwrap_or(exe)))
}

fn is_python(exe: &str) -> bool {
    let Some(version) = exe
        .strip_prefix("python")
        .or_else(|| exe.strip_prefix("pypy"))
    else {
        return false;
    };
    version.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// `python3 -m http.server` -> `http.server`; `python3 app.py` -> `app`.
fn python_target(args: &[&str]) -> Option<String> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "-m" => return it.next().map(|m| (*m).to_owned()),
            "-c" => return None,
            "-W" | "-X" | "--check-hash-based-pycs" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => return Some(script_name(a)),
        }
    }
    None
}

/// `java -jar app.jar` -> `app`; `java -cp x com.example.Main` -> `Main`.
fn java_target(args: &[&str]) -> Option<String> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "-jar" => return it.next().map(|j| script_name(j)),
            "-cp" | "-classpath" | "--class-path" | "-p" | "--module-path" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => return a.rsplit('.').next().map(str::to_owned),
        }
    }
    None
}

fn first_positional<'a>(args: &[&'a str], with_value: &[&str]) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if with_value.contains(arg) {
            it.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Basename without its extension.
fn script_name(path: &str) -> String {
    let base = basename(path);
    match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_owned(),
        _ => base.to_owned(),
    }
}

/// Printable, bounded.
fn sanitize(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins() {
        let env =
            b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.name=x\0";
        assert_eq!(from_environ(env).as_deref(), Some("checkout"));
        let env = b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod, service.name = cart\0";
        assert_eq!(from_environ(env).as_deref(), Some("cart"));
        assert_eq!(from_environ(b"OTEL_SERVICE_NAME=\0HOME=/root\0"), None);
        assert_eq!(from_environ(b"XOTEL_SERVICE_NAME=no\0"), None);
    }

    #[test]
    fn declared_names_win_over_kubernetes() {
        let k8s = || Some("checkout".to_owned());
        let env = b"OTEL_SERVICE_NAME=own\0";
        assert_eq!(declared_or_kubernetes(env, k8s).as_deref(), Some("own"));
        let env = b"OTEL_RESOURCE_ATTRIBUTES=service.name=attr\0";
        assert_eq!(declared_or_kubernetes(env, k8s).as_deref(), Some("attr"));
        assert_eq!(
            declared_or_kubernetes(b"HOME=/\0", k8s).as_deref(),
            Some("checkout")
        );
        assert_eq!(declared_or_kubernetes(b"", || None), None);
        assert_eq!(declared_or_kubernetes(b"", || Some(" ".to_owned())), None);
    }

    #[test]
    fn readable_names_from_commands() {
        let cases: [(Option<&str>, &[&str], &str); 10] = [
            (Some("python3.11"), &["python3", "app.py"], "app"),
            (
                Some("python3.11"),
                &["python3", "-u", "/srv/api/server.py", "--port", "80"],
                "server",
            ),
            (
                Some("python3.11"),
                &["python3", "-m", "http.server", "8000"],
                "http.server",
            ),
            (
                Some("python3.11"),
                &["python3", "-c", "print(1)"],
                "python3.11",
            ),
            (Some("nginx"), &["nginx: worker process"], "nginx"),
            (
                Some("java"),
                &["java", "-Xmx1g", "-jar", "/opt/shop.jar"],
                "shop",
            ),
            (
                Some("java"),
                &["java", "-cp", "a.jar", "com.example.Main"],
                "Main",
            ),
            (
                Some("node"),
                &["node", "--inspect", "dist/index.js"],
                "index",
            ),
            (None, &["/usr/local/bin/envoy", "-c", "x"], "envoy"),
            (Some("dash"), &["sh", "-c", "sleep 3"], "dash"),
        ];
        for (exe, args, want) in cases {
            assert_eq!(from_command(exe, args).as_deref(), Some(want), "{args:?}");
        }
        assert_eq!(from_command(None, &[]), None);
    }

    #[test]
    fn names_are_bounded_and_printable() {
        let env = format!("OTEL_SERVICE_NAME=a\u{7}b{}\0", "x".repeat(500));
        let name = from_environ(env.as_bytes()).unwrap_or_default();
        assert!(name.starts_with("ab"));
        assert_eq!(name.chars().count(), MAX_NAME);
    }
}
