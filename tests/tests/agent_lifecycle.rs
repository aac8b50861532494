//! The agent as a process: its preflight, refusing to run without privileges, not counting its
//! own scrapes, detaching cleanly on SIGTERM and leaving nothing attached after SIGKILL (no
//! program, no BPF link, no perf event, no uprobe, with OpenSSL hooked), and surviving traffic
//! that is not HTTP or turns into garbage.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tests::{
    agent::{Agent, binary},
    bpfmaps::{left_loaded, programs_of},
    net::{free_port, http_get},
    require_root,
    servers::{Nginx, Proc, SelfSigned, app_server, curl, python, temp_dir},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
/// Kernel programs `agent` loads, by the capture path it reports: one for the profiler, six
/// OpenSSL uprobes (five entries, one shared return), four Go `crypto/tls` uprobes (write,
/// read, read's returns, handshake), three for processes (exec, exit, fork), and
/// - `sockets`: three at the socket layer (send, receive, TCP state) and the dynamic
///   loader's library-load uprobe;
/// - `sockets-fexit`: eight there (three sends, three receives, `inet_sendpage` for
///   sendfile and splice, TCP state), the loader's
///   uprobe, and the catch-up program on `sys_exit` (loaded for good, attached only during
///   its window after the start);
/// - `syscalls`: `sys_enter`, `sys_exit`, and two that note the socket of each send and
///   receive: the socket tracepoints (6.4+), else kprobes where the kernel has them, else
///   none.
fn expected_programs(agent: &Agent) -> Result<usize> {
    let m = agent.metrics()?;
    let path = |p: &str| m.sum("apm_capture_path", &[("path", p)]) == 1.0;
    let common = 1 + 6 + 4 + 3;
    Ok(if path("sockets") {
        common + 3 + 1
    } else if path("sockets-fexit") {
        common + 8 + 1 + 1
    } else {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        let needle = b"btf_trace_sock_send_length\0";
        let socket_tracepoints = btf.windows(needle.len()).any(|w| w == needle);
        let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
        common + 2 + if socket_tracepoints || kprobes { 2 } else { 0 }
    })
}

#[test]
fn check_reports_every_feature_and_passes_here() -> Result<()> {
    if !require_root("check_reports_every_feature_and_passes_here") {
        return Ok(());
    }
    let out = Command::new(binary()).arg("check").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "[ok]      privileges",
        "[ok]      bpf() syscall",
        "[ok]      kernel BTF",
        "[ok]      tracefs",
        "[ok]      tracepoint sched/sched_process_exec",
        "[ok]      tracepoint sched/sched_process_exit",
        "[ok]      tracepoint sched/sched_process_fork",
        "[ok]      raw tracepoint sys_enter (BTF)",
        "[ok]      raw tracepoint sys_exit (BTF)",
        "[ok]      raw tracepoint sock_send_length (BTF)",
        "[ok]      capture path                                         sockets: auto",
        "[ok]      capture path syscalls (optional)                     7 programs",
        "[ok]      attach: capture + process programs, ring buffer",
        "[ok]      perf events: software cpu-clock",
        "result: this machine can run apm-agent",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // This kernel has the socket tracepoints: the socket-layer path (three programs) and
    // the process tracepoints (three).
    assert!(
        text.contains("ring buffer      6 programs loaded, verified and attached"),
        "{text}"
    );
    // This VM has no PMU: reported, but not fatal.
    assert!(
        text.contains("perf events: hardware cycles (optional)"),
        "{text}"
    );
    Ok(())
}

/// `apm-agent <args>` as user nobody, without capabilities.
fn as_nobody(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(binary())
        .args(args)
        .output()?)
}

#[test]
fn without_privileges_it_refuses_with_a_clear_message() -> Result<()> {
    if !require_root("without_privileges_it_refuses_with_a_clear_message") {
        return Ok(());
    }
    let out = as_nobody(&["check"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check passed as nobody:\n{text}");
    assert!(text.contains("[missing] privileges"), "{text}");
    assert!(text.contains("missing CAP_BPF, CAP_PERFMON"), "{text}");
    assert!(text.contains("apm-agent cannot run here"), "{text}");

    let out = as_nobody(&["run", "--listen", &format!("127.0.0.1:{}", free_port())])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("insufficient privileges: missing CAP_BPF"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_agents_own_endpoints_are_not_counted() -> Result<()> {
    if !require_root("the_agents_own_endpoints_are_not_counted") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    // A path only this test asks for: other agents on a shared host serve /metrics too.
    let own_path = format!("/{}/x", unique("it-own-endpoint"));
    for _ in 0..5 {
        curl(&["-o", "/dev/null", &url])?;
        http_get(agent.port, "/healthz")?;
        http_get(agent.port, &own_path)?;
    }
    // Give the agent time to (wrongly) count them.
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics()?;
    let own: Vec<_> = m
        .samples
        .iter()
        .filter(|s| {
            // Whatever the route templating makes of the path.
            s.labels
                .get("http_route")
                .is_some_and(|r| r.contains("it-own-endpoint"))
                || s.labels
                    .get("server_port")
                    .is_some_and(|p| *p == agent.port.to_string())
        })
        .collect();
    assert!(own.is_empty(), "agent counted its own endpoints: {own:?}");
    Ok(())
}

#[test]
fn sigterm_detaches_and_sigkill_leaves_nothing_attached() -> Result<()> {
    if !require_root("sigterm_detaches_and_sigkill_leaves_nothing_attached") {
        return Ok(());
    }
    let mut agent = Agent::start(&[])?;
    let ids = programs_of(agent.pid())?;
    assert_eq!(
        ids.len(),
        expected_programs(&agent)?,
        "programs held while running: {ids:?}"
    );
    let status = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(15))?;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        agent.log()
    );
    assert!(agent.log().contains("detaching"), "{}", agent.log());
    assert_eq!(
        left_loaded(&ids)?,
        Vec::<u64>::new(),
        "programs left after SIGTERM"
    );

    let mut agent = Agent::start(&[])?;
    let ids = programs_of(agent.pid())?;
    assert_eq!(ids.len(), expected_programs(&agent)?);
    agent.signal_and_wait(libc::SIGKILL, Duration::from_secs(15))?;
    assert_eq!(
        left_loaded(&ids)?,
        Vec::<u64>::new(),
        "programs left after SIGKILL"
    );

    // And it starts again.
    let agent = Agent::start(&[])?;
    assert_eq!(programs_of(agent.pid())?.len(), expected_programs(&agent)?);
    drop(agent);
    Ok(())
}

/// `bpftool -j <args>` as JSON (an array).
fn bpftool(args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("bpftool")?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn field(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// BPF links (`bpftool link list`) running one of `progs`.
fn links_of(progs: &[u64]) -> Result<Vec<serde_json::Value>> {
    Ok(bpftool(&["link", "list"])?
        .into_iter()
        .filter(|l| field(l, "prog_id").is_some_and(|p| progs.contains(&p)))
        .collect())
}

/// Perf events and tracepoint attachments with a program (`bpftool perf list`: the kernel's
/// answer for each such descriptor of each process) held by `pid` or running one of `progs`.
fn perf_of(pid: u32, progs: &[u64]) -> Result<Vec<serde_json::Value>> {
    Ok(bpftool(&["perf", "list"])?
        .into_iter()
        .filter(|e| {
            field(e, "pid") == Some(u64::from(pid))
                || field(e, "prog_id").is_some_and(|p| progs.contains(&p))
        })
        .collect())
}

/// Uprobes defined through tracefs (`uprobe_events`); perf-event uprobes do not show here,
/// but anything created this way would outlive its creator unless removed.
fn uprobe_events() -> Vec<String> {
    [
        "/sys/kernel/tracing/uprobe_events",
        "/sys/kernel/debug/tracing/uprobe_events",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .unwrap_or_default()
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn sigkill_with_openssl_hooked_leaves_no_link_perf_event_or_uprobe() -> Result<()> {
    if !require_root("sigkill_with_openssl_hooked_leaves_no_link_perf_event_or_uprobe") {
        return Ok(());
    }
    let events_before = uprobe_events();
    let dir = temp_dir("kill-tls")?;
    let cert = SelfSigned::generate(&dir)?;
    let port = free_port();
    let page = format!("{}.html", unique("kill-tls"));
    let _nginx = Nginx::start_https(port, &[(&page, b"hello over tls\n")], &cert)?;
    let url = format!("https://127.0.0.1:{port}/{page}");

    let mut agent = Agent::start(&[])?;
    let pid = agent.pid();
    // OpenSSL is hooked and its plaintext seen before the kill: nginx's HTTPS requests are
    // counted by route (they are encrypted on the socket).
    let route = format!("/{page}");
    let deadline = Instant::now() + WAIT;
    while agent.metrics()?.value("apm_tls_libraries_hooked") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no libssl hooked\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        curl(&["-k", "-o", "/dev/null", &url])?;
    }
    let seen = agent.settle(3.0, WAIT, |m| m.server_count("nginx", "GET", &route, "200"))?;
    assert!(seen >= 3.0, "HTTPS not seen in plaintext\n{}", agent.log());

    let progs = programs_of(pid)?;
    assert_eq!(
        progs.len(),
        expected_programs(&agent)?,
        "programs held: {progs:?}"
    );
    // Uprobe programs are of the kprobe type; each hooked function holds a BPF link of type
    // perf_event (a perf-event uprobe) for its entry and one for its return.
    let uprobe_progs: Vec<u64> = bpftool(&["prog", "show"])?
        .into_iter()
        .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("kprobe"))
        .filter_map(|p| field(&p, "id"))
        .filter(|id| progs.contains(id))
        .collect();
    // OpenSSL's five entries and one shared return, Go's four (loaded, attached only to Go
    // executables); on the socket-layer capture path also the loader's library-load hook.
    let metrics = agent.metrics()?;
    let sockets_path = metrics.sum("apm_capture_path", &[("path", "syscalls")]) == 0.0;
    assert_eq!(
        uprobe_progs.len(),
        if sockets_path { 11 } else { 10 },
        "TLS uprobe programs: {uprobe_progs:?}"
    );
    let links = links_of(&progs)?;
    let uprobe_links = links
        .iter()
        .filter(|l| field(l, "prog_id").is_some_and(|p| uprobe_progs.contains(&p)))
        .filter(|l| l.get("type").and_then(|t| t.as_str()) == Some("perf_event"))
        .count();
    let hooked_functions = agent.metrics()?.value("apm_tls_libraries_hooked");
    let perf = perf_of(pid, &progs)?;
    eprintln!(
        "before the kill: {} programs ({} uprobe), {} links ({uprobe_links} uprobe), {} perf \
         attachments, {hooked_functions} libssl hooked",
        progs.len(),
        uprobe_progs.len(),
        links.len(),
        perf.len()
    );
    // SSL_read, SSL_write, their _ex forms and SSL_do_handshake in at least one libssl: an
    // entry and a return probe each.
    assert!(
        uprobe_links >= 10,
        "the agent's OpenSSL uprobes are not attached: {links:#?}"
    );
    assert!(
        links
            .iter()
            .any(|l| l.get("type").and_then(|t| t.as_str()) == Some("raw_tracepoint")),
        "no raw tracepoint link: {links:#?}"
    );
    assert!(
        !perf.is_empty(),
        "bpftool perf list shows nothing of the agent"
    );
    let link_ids: Vec<u64> = links.iter().filter_map(|l| field(l, "id")).collect();

    agent.signal_and_wait(libc::SIGKILL, Duration::from_secs(15))?;
    assert_eq!(
        left_loaded(&progs)?,
        Vec::<u64>::new(),
        "programs left after SIGKILL"
    );
    let left_links: Vec<_> = bpftool(&["link", "list"])?
        .into_iter()
        .filter(|l| {
            field(l, "id").is_some_and(|id| link_ids.contains(&id))
                || field(l, "prog_id").is_some_and(|p| progs.contains(&p))
        })
        .collect();
    assert!(left_links.is_empty(), "links left: {left_links:#?}");
    let left_perf = perf_of(pid, &progs)?;
    assert!(left_perf.is_empty(), "perf events left: {left_perf:#?}");
    let events_after = uprobe_events();
    let new_events: Vec<&String> = events_after
        .iter()
        .filter(|e| !events_before.contains(e) && e.contains("ssl"))
        .collect();
    assert!(
        new_events.is_empty(),
        "tracefs uprobes left behind: {new_events:?}"
    );
    // nginx, whose libssl was patched with breakpoints, still serves.
    curl(&["-k", "-o", "/dev/null", &url])?;
    Ok(())
}

#[test]
fn non_http_and_garbage_are_counted_not_fatal() -> Result<()> {
    if !require_root("non_http_and_garbage_are_counted_not_fatal") {
        return Ok(());
    }
    // Only this test's traffic: on a shared host, other connections would add captured bytes.
    let raw_port = free_port();
    let port = free_port();
    let service = unique("it-garbage");
    let agent = Agent::start(&[
        "--include",
        &format!("port={raw_port}"),
        "--include",
        &format!("port={port}"),
    ])?;
    let before = agent.metrics()?;

    // Binary traffic on a plain TCP server: both ends are detected as not HTTP and muted, after
    // which the kernel stops copying their bytes.
    let raw = servers_dir().join("raw_tcp.py");
    let raw_s = raw.to_string_lossy().into_owned();
    let _sink = python(
        &[&raw_s, "serve", &raw_port.to_string()],
        &[],
        &servers_dir(),
        raw_port,
    )?;
    let child = Command::new("python3")
        .args([&raw_s, "send", &raw_port.to_string(), "10", "then", "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut sender = Proc::new(child);
    let child = sender.child().context("sender")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    assert_eq!(lines.next().transpose()?.as_deref(), Some("paused"));
    let muted = |m: &tests::prom::Metrics| m.value("apm_connections_muted_total");
    let base_muted = muted(&before);
    assert!(
        agent.settle(base_muted + 2.0, WAIT, muted)? >= base_muted + 2.0,
        "both ends muted"
    );
    let captured = |m: &tests::prom::Metrics| m.value("apm_bytes_captured_total");
    let bytes_before = captured(&agent.metrics()?);
    writeln!(stdin)?;
    assert!(lines.next().is_none(), "sender finished");
    std::thread::sleep(Duration::from_millis(500));
    let bytes_after = captured(&agent.metrics()?);
    // 200 more messages of 203 bytes went each way: next to nothing may have been copied.
    assert!(
        bytes_after - bytes_before < 2000.0,
        "muted connection still captured {} bytes",
        bytes_after - bytes_before
    );

    // HTTP that turns into garbage on a keep-alive connection.
    let _app = app_server(port, &service)?;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf)?;
    s.write_all(b"\x00\x01\x02\x03 definitely not http\r\n\r\n")?;
    let _ = s.read(&mut buf);
    drop(s);

    let unclassified = |m: &tests::prom::Metrics| m.value("apm_connections_unclassified_total");
    let base = unclassified(&before);
    let after = agent.settle(base + 2.0, WAIT, unclassified)?;
    assert!(after >= base + 2.0, "unclassified {base} -> {after}");
    let errors = agent.settle(1.0, WAIT, |m| {
        m.sum("apm_parse_errors_total", &[("protocol", "http1")])
    })?;
    assert!(errors >= 1.0, "parse errors {errors}");
    let m = agent.metrics()?;
    assert_eq!(m.server_count(&service, "GET", "/users/{id}", "200"), 1.0);
    assert_eq!(
        m.client_total(raw_port),
        0.0,
        "binary traffic produced HTTP series"
    );
    assert!(
        matches!(http_get(agent.port, "/healthz"), Ok((200, _))),
        "agent unhealthy"
    );
    Ok(())
}
