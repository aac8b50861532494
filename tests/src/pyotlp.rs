//! The independent OTLP receiver (`tests/servers/otlp_receiver.py`, built on the official
//! Python `grpcio` and `opentelemetry-proto` packages): gRPC and HTTP/protobuf, traces and
//! metrics. It writes one JSON line per request received (the decoded request as
//! `MessageToDict` gives it, and the raw bytes); this module starts it and reads those lines.
//!
//! JSON as protobuf's `json_format` writes it: ids are base64 (see [`id`]), 64-bit integers
//! are strings, enums are names (`SPAN_KIND_SERVER`), fields at their default are left out.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The receiver's Python: the venv `cargo xtask setup` / `cargo xtask test` creates
/// (`TEST_VENV` in xtask/src/prereq.rs).
pub const VENV_PYTHON: &str = "/var/lib/apm-agent-tests/venv/bin/python3";

/// `APM_TEST_PYTHON` when set, else [`VENV_PYTHON`].
pub fn python() -> PathBuf {
    std::env::var_os("APM_TEST_PYTHON").map_or_else(|| PathBuf::from(VENV_PYTHON), PathBuf::from)
}

/// A running receiver, killed when dropped. Its output file lives until then.
pub struct PyReceiver {
    child: Option<Child>,
    pub grpc_port: u16,
    pub http_port: u16,
    http_status: u16,
    /// `service.name` the agent gives the receiver process itself (its HTTP server spans).
    pub service: String,
    dir: PathBuf,
    out: PathBuf,
}

impl PyReceiver {
    /// Starts a receiver on free ports, answering HTTP requests 200.
    pub fn start() -> Result<Self> {
        Self::start_with(0, 0, 200)
    }

    /// Starts a receiver on the given ports (0: any free one); HTTP answers `http_status`.
    pub fn start_with(grpc_port: u16, http_port: u16, http_status: u16) -> Result<Self> {
        let dir = crate::servers::temp_dir("pyotlp")?;
        let mut r = Self {
            child: None,
            grpc_port,
            http_port,
            http_status,
            service: crate::unique("pyotlp-receiver"),
            out: dir.join("received.jsonl"),
            dir,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let py = python();
        if !py.exists() {
            bail!(
                "{} is missing: run `cargo xtask setup` (creates the OTLP receiver's venv)",
                py.display()
            );
        }
        let script = crate::servers_dir().join("otlp_receiver.py");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))?;
        let mut child = Command::new(&py)
            .arg(&script)
            .arg("--out")
            .arg(&self.out)
            .args(["--grpc-port", &self.grpc_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--http-status", &self.http_status.to_string()])
            .env("OTEL_SERVICE_NAME", &self.service)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {} {}", py.display(), script.display()))?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let port = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|p| p.parse::<u16>().ok())
        };
        let (Some(grpc), Some(http)) = (port("grpc="), port("http=")) else {
            self.kill();
            bail!(
                "the OTLP receiver did not start (stdout {line:?}):\n{}",
                self.stderr()
            );
        };
        self.grpc_port = grpc;
        self.http_port = http;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the receiver (SIGKILL, as a crash); its ports refuse connections afterwards.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts it again on the same ports, keeping what was received so far.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// For `--otlp-endpoint` with `--otlp-protocol grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// For `--otlp-endpoint` with `--otlp-protocol http/protobuf` (`/v1/...` is appended).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The receiver's error output (a traceback when it failed).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Every line written so far (complete lines only).
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Decoded request bodies of `signal` ("traces" or "metrics"), over any transport.
    pub fn requests(&self, signal: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["signal"] == signal)
            .filter_map(|mut r| r.get_mut("body").map(Value::take))
            .collect()
    }

    /// Transports ("grpc", "http") the requests of `signal` came over, one entry per request.
    pub fn transports(&self, signal: &str) -> Vec<String> {
        self.records()
            .iter()
            .filter(|r| r["signal"] == signal)
            .filter_map(|r| r["transport"].as_str().map(str::to_owned))
            .collect()
    }

    /// Requests whose body did not decode.
    pub fn decode_errors(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r.get("error").is_some())
            .collect()
    }

    /// Every span received, with its resource's attributes.
    pub fn spans_with_resource(&self) -> Vec<(BTreeMap<String, String>, Value)> {
        let mut out = Vec::new();
        for body in self.requests("traces") {
            for rs in array(&body["resource_spans"]) {
                let res = attrs(&rs["resource"]["attributes"]);
                for ss in array(&rs["scope_spans"]) {
                    out.extend(array(&ss["spans"]).iter().map(|s| (res.clone(), s.clone())));
                }
            }
        }
        out
    }

    /// Every span received, with the `service.name` of its resource.
    pub fn spans(&self) -> Vec<(String, Value)> {
        self.spans_with_resource()
            .into_iter()
            .map(|(res, s)| (res.get("service.name").cloned().unwrap_or_default(), s))
            .collect()
    }

    /// Spans of `service`.
    pub fn service_spans(&self, service: &str) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|(s, _)| s == service)
            .map(|(_, s)| s)
            .collect()
    }

    /// Spans of `service` once at least `n` arrived (or the timeout passed).
    pub fn wait_spans(&self, service: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let mine = self.service_spans(service);
            if mine.len() >= n || Instant::now() > deadline {
                return mine;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every metric received: (service.name, resource attributes, metric).
    pub fn metrics(&self) -> Vec<(String, BTreeMap<String, String>, Value)> {
        let mut out = Vec::new();
        for body in self.requests("metrics") {
            for rm in array(&body["resource_metrics"]) {
                let res = attrs(&rm["resource"]["attributes"]);
                let service = res.get("service.name").cloned().unwrap_or_default();
                for sm in array(&rm["scope_metrics"]) {
                    out.extend(
                        array(&sm["metrics"])
                            .iter()
                            .map(|m| (service.clone(), res.clone(), m.clone())),
                    );
                }
            }
        }
        out
    }

    /// Does any raw request body (either signal, either transport) contain `needle`?
    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        self.records().iter().any(|r| {
            r["raw_b64"]
                .as_str()
                .and_then(base64)
                .is_some_and(|raw| raw.windows(needle.len().max(1)).any(|w| w == needle))
        })
    }
}

impl Drop for PyReceiver {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// An OTLP `AnyValue` as text (strings, integers, booleans, doubles).
pub fn any_value(v: &Value) -> Option<String> {
    if let Some(s) = v["string_value"].as_str() {
        return Some(s.to_owned());
    }
    // int64 is a JSON string in protobuf's JSON mapping.
    if let Some(i) = v.get("int_value") {
        return i
            .as_str()
            .map_or_else(|| Some(i.to_string()), |s| Some(s.to_owned()));
    }
    if let Some(b) = v["bool_value"].as_bool() {
        return Some(b.to_string());
    }
    v.get("double_value").map(Value::to_string)
}

/// A list of `KeyValue`s as a map of texts.
pub fn attrs(list: &Value) -> BTreeMap<String, String> {
    array(list)
        .iter()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_owned(), any_value(&kv["value"])?)))
        .collect()
}

/// One attribute of a span (or anything with `attributes`), as text.
pub fn attr(span: &Value, key: &str) -> Option<String> {
    array(&span["attributes"])
        .iter()
        .find(|kv| kv["key"] == key)
        .and_then(|kv| any_value(&kv["value"]))
}

/// An id field (`trace_id`, `span_id`, `parent_span_id`) as lower-case hex; "" when absent.
pub fn id(span: &Value, field: &str) -> String {
    span[field]
        .as_str()
        .and_then(base64)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_default()
}

/// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, ...
pub fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or("SPAN_KIND_UNSPECIFIED")
}

/// `STATUS_CODE_ERROR`, `STATUS_CODE_OK`, or `STATUS_CODE_UNSET` (absent).
pub fn status_code(span: &Value) -> &str {
    span["status"]["code"]
        .as_str()
        .unwrap_or("STATUS_CODE_UNSET")
}

/// A `fixed64` nanosecond time field (a string in JSON); 0 when absent.
pub fn nanos(span: &Value, field: &str) -> u64 {
    match &span[field] {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

/// Standard base64 (with or without padding) -> bytes.
pub fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A memory figure of `pid` from /proc/PID/status (`VmRSS`, `RssAnon`, ...) in bytes; 0
/// when unknown.
pub fn status_bytes(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|kb| kb.parse::<u64>().ok())
                })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resident memory (VmRSS) of `pid` in bytes. It includes shared file pages: the agent maps
/// the binaries of the processes it observes (symbols, uprobes), which are page cache, not
/// its own memory.
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// Anonymous resident memory (RssAnon) of `pid` in bytes: the heap, where queues live.
pub fn rss_anon_bytes(pid: u32) -> u64 {
    status_bytes(pid, "RssAnon")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("AAECAw==").as_deref(), Some(&[0u8, 1, 2, 3][..]));
        assert_eq!(base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64("").as_deref(), Some(&[][..]));
        assert!(base64("a*b").is_none());
    }
}
