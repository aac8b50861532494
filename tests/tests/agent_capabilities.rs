//! The capabilities README.md documents are the ones the agent needs, no more and no fewer:
//! with exactly the `always` ones (uid 0 with nothing else, as in the DaemonSet; or another
//! user holding them as ambient capabilities) it runs and counts real traffic of processes
//! of other users, including a connection open before it started; with the DaemonSet's set
//! (plus the `recommended` ones) kernel frames are named too; without any one `always`
//! capability it refuses to start and names it. And the kernel facts behind the table: other
//! users' `/proc/<pid>` files need CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tests::{
    agent::{Agent, binary},
    deploy::{DocumentedCap, Need, load_yaml, manifests, readme_capabilities},
    net::{free_port, wait_port},
    podman::ensure_host_tracefs,
    require_root,
    servers::{Nginx, Proc, SelfSigned, curl, temp_dir},
    servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
/// The user the observed processes (or the agent) run as: not the agent's.
const NOBODY: &str = "65534";

/// The README's capabilities needed `always` (the agent's required set).
fn always() -> Result<Vec<DocumentedCap>> {
    let caps: Vec<_> = readme_capabilities()?
        .into_iter()
        .filter(|c| c.need == Need::Always)
        .collect();
    assert!(caps.len() >= 2, "README documents {caps:?}");
    Ok(caps)
}

/// The capabilities the DaemonSet grants: `always` and `recommended`.
fn daemonset_set() -> Result<Vec<DocumentedCap>> {
    Ok(readme_capabilities()?
        .into_iter()
        .filter(|c| c.need != Need::MountOnly)
        .collect())
}

/// setpriv's spelling of a capability list: `+bpf,+perfmon`.
fn setpriv_caps(caps: &[DocumentedCap]) -> String {
    caps.iter()
        .map(|c| format!("+{}", c.short().to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// setpriv arguments that leave uid 0 with exactly `caps`: the bounding set limits what
/// root's exec grants, nothing is inherited or ambient. The program to run comes next.
fn root_with_only(caps: &[DocumentedCap]) -> Vec<String> {
    vec![
        "setpriv".to_owned(),
        format!("--bounding-set=-all,{}", setpriv_caps(caps)),
        "--inh-caps=-all".to_owned(),
        "--ambient-caps=-all".to_owned(),
        "--".to_owned(),
    ]
}

/// setpriv arguments that run as user nobody holding exactly `caps` (ambient). The program to
/// run comes next.
fn nobody_with(caps: &[DocumentedCap]) -> Vec<String> {
    let list = setpriv_caps(caps);
    vec![
        "setpriv".to_owned(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        format!("--inh-caps=-all,{list}"),
        format!("--ambient-caps=-all,{list}"),
        format!("--bounding-set=-all,{list}"),
        "--".to_owned(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A directory everyone can read and search, holding copies of the test servers (the
/// checkout may live where user nobody cannot read).
fn shared_servers() -> Result<PathBuf> {
    let dir = temp_dir("caps-servers")?;
    for f in ["app.py", "keepalive_client.py"] {
        std::fs::copy(servers_dir().join(f), dir.join(f))?;
    }
    Ok(dir)
}

/// The test app server (tests/servers/app.py) as user nobody, named `service`.
fn app_as_nobody(dir: &Path, port: u16, service: &str) -> Result<Proc> {
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            // Debian's interpreter: the one on PATH may live where nobody cannot reach.
            "/usr/bin/python3",
            "app.py",
            &port.to_string(),
        ])
        .env("OTEL_SERVICE_NAME", service)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting app.py as nobody")?;
    let proc = Proc::new(child);
    wait_port(port, WAIT)?;
    Ok(proc)
}

/// The ConfigMap's agent.toml, written to a file (the agent must accept it as it is).
fn configmap_config(dir: &Path) -> Result<PathBuf> {
    for file in manifests()? {
        for doc in load_yaml(&file)? {
            if let Some(toml) = doc["data"]["agent.toml"].as_str() {
                let path = dir.join("agent.toml");
                std::fs::write(&path, toml)?;
                return Ok(path);
            }
        }
    }
    bail!("no ConfigMap with agent.toml in deploy/")
}

/// `n` requests with curl (as root), then the server-side count the agent settles on, once it
/// reached `total`.
fn drive(agent: &Agent, port: u16, service: &str, n: usize, total: f64) -> Result<f64> {
    let url = format!("http://127.0.0.1:{port}/users/7");
    let mut args = Vec::new();
    for _ in 0..n {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args)?;
    agent.settle(total, WAIT, |m| {
        m.server_count(service, "GET", "/users/{id}", "200")
    })
}

#[test]
fn the_documented_capabilities_are_enough_for_uid_0() -> Result<()> {
    if !require_root("the_documented_capabilities_are_enough_for_uid_0") {
        return Ok(());
    }
    // tracefs mounted before the restricted runs: without it the agent would (rightly) ask
    // for CAP_SYS_ADMIN to mount it, which is not what these tests are about.
    ensure_host_tracefs()?;
    let dir = shared_servers()?;
    let port = free_port();
    let service = unique("it-caps-app");
    let client_service = unique("it-caps-client");
    let _app = app_as_nobody(&dir, port, &service)?;

    // A keep-alive connection of user nobody, open before the agent starts: it is found
    // through /proc/<pid>/fd of another user (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE).
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            // Debian's interpreter: the one on PATH may live where nobody cannot reach.
            "/usr/bin/python3",
            "keepalive_client.py",
            &port.to_string(),
            "3",
        ])
        .env("OTEL_SERVICE_NAME", &client_service)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut client = Proc::new(child);
    let child = client.child().context("client")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    assert_eq!(lines.next().transpose()?.as_deref(), Some("ready"));

    let caps = always()?;
    let config = configmap_config(&dir)?;
    let config = config.to_string_lossy().into_owned();
    let mut command = root_with_only(&caps);
    command.push(binary().to_string_lossy().into_owned());
    let agent = Agent::start_with_command(&strs(&command), &["--config", &config])?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("CapEff")?
        .trim()
        .to_owned();
    let want = caps.iter().fold(0u64, |acc, c| acc | cap_bit(c.short()));
    assert_eq!(
        u64::from_str_radix(&eff, 16)?,
        want,
        "the agent runs with exactly {caps:?}"
    );

    writeln!(stdin)?;
    assert_eq!(lines.next().transpose()?.as_deref(), Some("done"));
    let seeded = agent.settle(3.0, WAIT, |m| {
        m.client_count(&client_service, port, "GET", "/users/{id}", "200")
    })?;
    assert_eq!(seeded, 3.0, "pre-existing connection\n{}", agent.log());
    assert!(agent.metrics()?.value("apm_connections_seeded_total") >= 2.0);

    // New traffic, server named from the environment of a process of another user.
    // The keep-alive client's 3 requests count on the server side as well.
    let n = drive(&agent, port, &service, 5, 5.0 + 3.0)?;
    assert_eq!(n, 5.0 + 3.0, "{}", agent.log());
    // Without CAP_SYSLOG the agent says kernel frames stay unnamed, where kptr_restrict and
    // perf_event_paranoid hide kallsyms addresses from it (as on this machine kind).
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .unwrap_or(2)
    };
    if sysctl("kptr_restrict") != 0 || sysctl("perf_event_paranoid") > 1 {
        assert!(agent.log().contains("CAP_SYSLOG"), "{}", agent.log());
    }

    // HTTPS: the OpenSSL uprobes need CAP_SYS_ADMIN on this kernel kind (recommended, not
    // required): without it the agent runs on and names the capability.
    match https_through_nginx(&agent)? {
        Tls::Counted => {}
        Tls::NotHooked => assert!(
            agent.log().contains("grant CAP_SYS_ADMIN"),
            "TLS not hooked and the reason not given:\n{}",
            agent.log()
        ),
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What became of HTTPS requests to nginx.
enum Tls {
    /// Hooked, and the requests counted exactly.
    Counted,
    /// The agent could not hook libssl (and counted that).
    NotHooked,
}

/// Starts nginx over HTTPS, waits until the agent hooked libssl or failed to, and sends four
/// requests with curl.
fn https_through_nginx(agent: &Agent) -> Result<Tls> {
    let tls_dir = temp_dir("caps-tls")?;
    let cert = SelfSigned::generate(&tls_dir)?;
    let port = free_port();
    let page = format!("{}.html", unique("caps-page"));
    let _nginx = Nginx::start_https(port, &[(&page, b"hi\n")], &cert)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = agent.metrics()?;
        if m.value("apm_tls_hook_failures_total") >= 1.0 {
            let _ = std::fs::remove_dir_all(&tls_dir);
            return Ok(Tls::NotHooked);
        }
        if m.value("apm_tls_libraries_hooked") >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no libssl hooked\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("https://127.0.0.1:{port}/{page}");
    for _ in 0..4 {
        curl(&["-k", "-o", "/dev/null", &url])?;
    }
    let route = format!("/{page}");
    let n = agent.settle(4.0, WAIT, |m| m.server_count("nginx", "GET", &route, "200"))?;
    assert_eq!(n, 4.0, "HTTPS requests\n{}", agent.log());
    let _ = std::fs::remove_dir_all(&tls_dir);
    Ok(Tls::Counted)
}

/// Bit of a capability (short name) in CapEff.
fn cap_bit(short: &str) -> u64 {
    let bit = match short {
        "DAC_READ_SEARCH" => 2,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYSLOG" => 34,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} unknown to this test"),
    };
    1 << bit
}

#[test]
fn the_documented_capabilities_are_enough_for_another_user() -> Result<()> {
    if !require_root("the_documented_capabilities_are_enough_for_another_user") {
        return Ok(());
    }
    ensure_host_tracefs()?;
    // The binary where nobody can execute it; the server runs as root this time.
    let dir = temp_dir("caps-bin")?;
    let bin = dir.join("apm-agent");
    std::fs::copy(binary(), &bin)?;
    let port = free_port();
    let service = unique("it-caps-root-app");
    let _app = tests::servers::app_server(port, &service)?;
    let mut wrapper = nobody_with(&always()?);
    wrapper.push(bin.to_string_lossy().into_owned());
    let agent = Agent::start_with_command(&strs(&wrapper), &[])?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(NOBODY)),
        "{status}"
    );
    assert_eq!(
        drive(&agent, port, &service, 4, 4.0)?,
        4.0,
        "{}",
        agent.log()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_daemonsets_set_also_names_kernel_frames() -> Result<()> {
    if !require_root("the_daemonsets_set_also_names_kernel_frames") {
        return Ok(());
    }
    ensure_host_tracefs()?;
    let caps = daemonset_set()?;
    let mut command = root_with_only(&caps);
    command.push(binary().to_string_lossy().into_owned());
    let agent = Agent::start_with_command(&strs(&command), &[])?;
    let service = unique("it-caps-kernel");
    // Time in the kernel: reading /dev/urandom.
    let status = Command::new("timeout")
        .args(["2", "dd", "if=/dev/urandom", "of=/dev/null", "bs=64k"])
        .env("OTEL_SERVICE_NAME", &service)
        .stderr(Stdio::null())
        .status()?;
    assert_eq!(status.code(), Some(124), "dd ran until the timeout");
    let path = format!("/profiles/folded?service={service}&minutes=5");
    let deadline = Instant::now() + WAIT;
    let folded = loop {
        let (code, body) = tests::net::http_get(agent.port, &path)?;
        assert_eq!(code, 200, "{body}");
        if body.contains("_[k]") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let kernel_frames = folded.matches("_[k]").count();
    assert!(kernel_frames > 0, "no named kernel frames:\n{folded}");
    assert!(
        !folded.contains("[unknown] [kernel]"),
        "unnamed kernel frames with {caps:?}:\n{folded}"
    );
    assert!(!agent.log().contains("CAP_SYSLOG"), "{}", agent.log());
    // And HTTPS in plaintext: the set includes what the OpenSSL uprobes need.
    assert!(
        matches!(https_through_nginx(&agent)?, Tls::Counted),
        "TLS not hooked with the DaemonSet's set:\n{}",
        agent.log()
    );
    Ok(())
}

#[test]
fn without_any_required_capability_it_refuses_and_names_it() -> Result<()> {
    if !require_root("without_any_required_capability_it_refuses_and_names_it") {
        return Ok(());
    }
    ensure_host_tracefs()?;
    let all = daemonset_set()?;
    for dropped in always()? {
        let rest: Vec<DocumentedCap> = all
            .iter()
            .filter(|c| c.name != dropped.name)
            .cloned()
            .collect();
        let wrapper = root_with_only(&rest);
        let (program, args) = wrapper.split_first().context("wrapper")?;
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(program)
            .args(args)
            .arg(binary())
            .args(["run", "--no-console", "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent kept running without {}", dropped.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err)?;
        }
        assert!(!status.success(), "without {}: {status}", dropped.name);
        assert!(
            err.contains("insufficient privileges") && err.contains(&dropped.name),
            "without {}: {err}",
            dropped.name
        );
        for other in &rest {
            assert!(
                !err.contains(&format!("{} (", other.name)),
                "without {}, {} is named too: {err}",
                dropped.name,
                other.name
            );
        }

        // The preflight says the same.
        let out = Command::new(program)
            .args(args)
            .arg(binary())
            .arg("check")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "check without {}:\n{text}",
            dropped.name
        );
        assert!(
            text.contains(&format!("missing {}", dropped.name)),
            "check without {}:\n{text}",
            dropped.name
        );
    }
    Ok(())
}

/// Runs `sh -c script` as uid 0 holding only `caps`; whether it succeeded.
fn as_root_with(caps: &[DocumentedCap], script: &str) -> Result<bool> {
    let wrapper = root_with_only(caps);
    let (program, args) = wrapper.split_first().context("wrapper")?;
    Ok(Command::new(program)
        .args(args)
        .args(["sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

#[test]
fn other_users_proc_files_need_dac_read_search_and_sys_ptrace() -> Result<()> {
    if !require_root("other_users_proc_files_need_dac_read_search_and_sys_ptrace") {
        return Ok(());
    }
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .spawn()?;
    let sleeper = Proc::new(child);
    let pid = sleeper.pid();
    std::thread::sleep(Duration::from_millis(200));
    let caps = always()?;
    let without = |name: &str| -> Vec<DocumentedCap> {
        caps.iter().filter(|c| c.name != name).cloned().collect()
    };
    // What the agent reads of another user's process: its environment (service name), its
    // open sockets (connections open before start), its executable.
    let environ = format!("head -c 1 /proc/{pid}/environ");
    let fds = format!("ls /proc/{pid}/fd");
    let fd_link = format!("readlink /proc/{pid}/fd/0");
    let exe = format!("readlink /proc/{pid}/exe");
    for script in [&environ, &fds, &fd_link, &exe] {
        assert!(as_root_with(&caps, script)?, "{script} with {caps:?}");
    }
    let no_dac = without("CAP_DAC_READ_SEARCH");
    assert!(
        !as_root_with(&no_dac, &environ)?,
        "environ without DAC_READ_SEARCH"
    );
    assert!(
        !as_root_with(&no_dac, &fds)?,
        "fd list without DAC_READ_SEARCH"
    );
    let no_ptrace = without("CAP_SYS_PTRACE");
    assert!(
        !as_root_with(&no_ptrace, &fd_link)?,
        "fd link without SYS_PTRACE"
    );
    assert!(!as_root_with(&no_ptrace, &exe)?, "exe without SYS_PTRACE");
    drop(sleeper);
    Ok(())
}
