//! The agent's memory under the loads that grow its tables: many distinct URL paths, many
//! connections held open at once, and heavy process churn. Each scenario starts a fresh agent
//! (budgets given explicitly, equal to the defaults unless said otherwise) and samples its
//! `/proc/<pid>/status` every 50 ms: `RssAnon` (heap and stacks: what the tables cost) and
//! `VmHWM` (peak of `VmRSS`, which also counts file-backed pages: the binary, libraries and
//! the files the profiler maps, shared with the page cache). Kernel map memory (ring buffer,
//! socket table, profiler maps) is charged to the memory cgroup, not to RSS: shown apart.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tests::{
    agent::{Agent, Memory},
    bpfmaps,
    net::free_port,
    prom::Metrics,
    servers::{Nginx, NginxTuning, Proc},
};

use super::wrk;
use crate::{prereq, util};

#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Distinct URL paths (`/a<n>/b?q=<n>`: no segment looks like an identifier, so each is a
    /// route of its own) requested from nginx by wrk.
    #[arg(long, default_value_t = 100_000)]
    paths: u32,
    /// Connections held open at once (one request on each, then one more while all are open).
    #[arg(long, default_value_t = 10_000)]
    connections: u32,
    /// Short-lived processes started in batches of 50.
    #[arg(long, default_value_t = 10_000)]
    processes: u32,
    /// Every Nth of those processes is a curl making one request; the others are `/bin/true`.
    #[arg(long, default_value_t = 20)]
    curl_every: u32,
    /// Budget of the kernel socket table in an extra run of the connections scenario (the
    /// agent's connection table gets half of it), to show that sockets past a budget are
    /// refused and counted; 0 skips that run.
    #[arg(long, default_value_t = 4096)]
    tight_sockets: u32,
    /// `max_routes_per_service` given to the agent.
    #[arg(long, default_value_t = 500)]
    max_routes: u32,
    /// RSS target (MB).
    #[arg(long, default_value_t = 40.0)]
    target_mb: f64,
    /// Run the agents with `--no-profiling`: the profiler symbolizes whatever else runs on
    /// the host (compilers on a build machine), which adds to the agent's memory whatever the
    /// scenario.
    #[arg(long)]
    no_profiling: bool,
}

/// Budgets passed to every agent (the defaults of `apm-agent/src/config.rs`), so the bench
/// checks the tables against values it knows.
const MAX_CONNECTIONS: u32 = 65_536;
const MAX_KERNEL_SOCKETS: u32 = 65_536;
const MAX_INVENTORY: u32 = 65_536;
/// `--no-profiling`, for every agent the bench starts.
static NO_PROFILING: AtomicBool = AtomicBool::new(false);

/// What one scenario measured.
#[derive(Debug, Default)]
struct Scenario {
    name: &'static str,
    what: String,
    /// After start-up, before the load.
    idle: Memory,
    /// Largest samples during the scenario.
    peak_anon: u64,
    peak_rss: u64,
    /// At the end (load stopped, events drained).
    end: Memory,
    map_bytes: u64,
    /// Where the file-backed part of the RSS is, at the end.
    mappings: Mappings,
    lost: f64,
    route_overflows: f64,
    map_overflows: BTreeMap<String, f64>,
    /// Figures of this scenario, and whether each budget held (name, value, limit).
    figures: Vec<(String, f64)>,
    budgets: Vec<(String, f64, f64)>,
}

impl Scenario {
    fn budgets_held(&self) -> bool {
        self.budgets.iter().all(|(_, v, limit)| v <= limit)
    }
}

pub fn run(args: &MemoryArgs) -> Result<()> {
    if !util::is_root() {
        bail!("bench memory starts the agent: run it as root (sudo -E cargo xtask bench memory)");
    }
    prereq::ensure(prereq::Scope::Test)?;
    let agent_bin = util::build_release_agent()?;
    NO_PROFILING.store(args.no_profiling, Ordering::Relaxed);
    let nofile = raise_nofile()?;
    eprintln!("fd limit of the bench and its children: {nofile}");

    let mut scenarios = vec![routes(&agent_bin, args)?];
    scenarios.push(connections(&agent_bin, args, nofile, None)?);
    if args.tight_sockets > 0 {
        scenarios.push(connections(
            &agent_bin,
            args,
            nofile,
            Some(args.tight_sockets),
        )?);
    }
    scenarios.push(churn(&agent_bin, args)?);
    report(&scenarios, args);
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Raises this process's soft fd limit to its hard limit (children inherit it) and returns it.
fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Samples the agent's memory every 50 ms on a thread until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new((0, 0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let m = Memory::of(pid);
                if let Ok(mut peak) = p.lock() {
                    peak.0 = peak.0.max(m.rss_anon);
                    peak.1 = peak.1.max(m.vm_rss);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// (peak RssAnon, peak VmRSS) so far.
    fn peak(&self) -> (u64, u64) {
        self.peak.lock().map_or((0, 0), |p| *p)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh agent with explicit budgets (`overrides`: flag and value pairs replacing the
/// defaults above or adding to them), its idle memory, and a sampler.
fn start_agent(agent_bin: &Path, overrides: &[(&str, String)]) -> Result<(Agent, Memory, Sampler)> {
    let mut flags: BTreeMap<&str, String> = BTreeMap::from([
        ("--max-connections", MAX_CONNECTIONS.to_string()),
        ("--max-kernel-sockets", MAX_KERNEL_SOCKETS.to_string()),
        ("--max-inventory-processes", MAX_INVENTORY.to_string()),
    ]);
    flags.extend(overrides.iter().map(|(k, v)| (*k, v.clone())));
    let mut flags: Vec<&str> = flags.iter().flat_map(|(k, v)| [*k, v.as_str()]).collect();
    if NO_PROFILING.load(Ordering::Relaxed) {
        flags.push("--no-profiling");
    }
    let agent = Agent::start_binary(agent_bin, &flags)?;
    // Start-up work (the /proc scan, the first profiler symbolization) is over after a few s.
    std::thread::sleep(Duration::from_secs(3));
    let idle = agent.memory();
    let sampler = Sampler::start(agent.pid());
    Ok((agent, idle, sampler))
}

/// Fills the figures every scenario has, at its end.
fn finish(s: &mut Scenario, agent: &Agent, sampler: &Sampler, m: &Metrics) {
    let (peak_anon, peak_rss) = sampler.peak();
    s.end = agent.memory();
    s.peak_anon = peak_anon.max(s.end.rss_anon);
    s.peak_rss = peak_rss.max(s.end.vm_rss);
    s.map_bytes = bpfmaps::map_bytes(agent.pid()).unwrap_or(0);
    s.lost = m.value("apm_events_lost_total");
    // `+ 0.0`: an empty sum is -0.0.
    s.route_overflows = m.sum("apm_route_overflows_total", &[]) + 0.0;
    s.mappings = Mappings::of(agent.pid());
    s.map_overflows = m
        .select("apm_map_overflows_total", &[])
        .filter(|x| x.value > 0.0)
        .filter_map(|x| Some((x.labels.get("map")?.clone(), x.value)))
        .collect();
}

/// The file-backed resident pages of a process, from `/proc/<pid>/smaps`: the BPF maps
/// mapped into it (the ring buffer: its data pages are mapped twice, so counted twice), its own
/// executable, and every other file (the profiler maps the binaries and libraries of the
/// processes it symbolizes: page cache shared with them).
#[derive(Debug, Default, Clone, Copy)]
struct Mappings {
    bpf_maps: u64,
    own_binary: u64,
    other_files: u64,
}

impl Mappings {
    fn of(pid: u32) -> Self {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let exe = exe.to_string_lossy();
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut m = Self::default();
        let mut name = String::new();
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            let first = f.next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                // "start-end perms offset dev inode [path]"
                name = f.nth(4).unwrap_or("").to_owned();
            } else if first == "Rss:" {
                let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let bytes = kb * 1024;
                if name.starts_with("anon_inode:bpf") {
                    m.bpf_maps += bytes;
                } else if !name.is_empty() && name == exe {
                    m.own_binary += bytes;
                } else if name.starts_with('/') {
                    m.other_files += bytes;
                }
            }
        }
        m
    }
}

/// Distinct `http_route` values of one service's server-side series.
fn server_routes(m: &Metrics, service: &str) -> usize {
    m.select(
        "http_server_request_duration_seconds_count",
        &[("service_name", service)],
    )
    .filter_map(|s| s.labels.get("http_route"))
    .collect::<BTreeSet<_>>()
    .len()
}

/// (a) `--paths` distinct URL paths from wrk (one thread, 8 connections, a Lua script that
/// numbers the paths and stops the thread after the last one) to nginx, which answers every
/// path with the same small file (`try_files`).
fn routes(agent_bin: &Path, args: &MemoryArgs) -> Result<Scenario> {
    eprintln!("== distinct URL paths: {}", args.paths);
    let (agent, idle, sampler) = start_agent(
        agent_bin,
        &[("--max-routes-per-service", args.max_routes.to_string())],
    )?;
    let port = free_port();
    let tuning = NginxTuning {
        server_extra: "location / { try_files $uri /index.html; }".to_owned(),
        ..NginxTuning::default()
    };
    let _nginx = Nginx::start_tuned(port, &[("index.html", &[b'x'; 256][..])], &tuning)?;
    let script = std::env::temp_dir().join(tests::unique("paths.lua"));
    let done = std::env::temp_dir().join(tests::unique("paths.done"));
    std::fs::write(
        &script,
        format!(
            "local n = 0\n\
             request = function()\n  n = n + 1\n  return wrk.format(\"GET\", \"/a\" .. n .. \"/b?q=\" .. n)\nend\n\
             response = function(status, headers, body)\n  if n >= {} then\n    io.open(\"{}\", \"w\"):close()\n    wrk.thread:stop()\n  end\nend\n",
            args.paths,
            done.display()
        ),
    )?;
    let before = agent.metrics()?;
    let t0 = Instant::now();
    let run = wrk::run_until_done(&format!("http://127.0.0.1:{port}/"), 8, &script, &done, 600);
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_file(&done);
    let run = run?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "wrk: {} requests in {secs:.1} s ({:.0}/s)",
        run.requests, run.rps
    );
    let client = |m: &Metrics| m.client_total(port);
    let want = client(&before) + run.requests;
    let seen = agent.settle(want, Duration::from_secs(60), client)? - client(&before);
    let m = agent.metrics()?;
    let nginx_routes = server_routes(&m, "nginx");
    let mut s = Scenario {
        name: "distinct_paths",
        what: format!(
            "{} distinct paths /a<n>/b?q=<n> from wrk -c8 to nginx, {} routes per service",
            args.paths, args.max_routes
        ),
        idle,
        ..Scenario::default()
    };
    finish(&mut s, &agent, &sampler, &m);
    s.figures = vec![
        ("requests sent (wrk)".to_owned(), run.requests),
        ("requests seen, client side".to_owned(), seen),
        (
            "route overflows, nginx".to_owned(),
            m.sum("apm_route_overflows_total", &[("service_name", "nginx")]),
        ),
    ];
    // The overflow route itself is not a budgeted entry.
    s.budgets = vec![(
        "nginx routes (without /{overflow})".to_owned(),
        nginx_routes.saturating_sub(1) as f64,
        f64::from(args.max_routes),
    )];
    Ok(s)
}

/// The connection-holding client (tests/servers/hold_connections.py) and its stdio.
struct Holder {
    proc: Proc,
    out: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(port: u16, n: u32) -> Result<Self> {
        let child = Command::new("python3")
            .arg(tests::servers_dir().join("hold_connections.py"))
            .args([&port.to_string(), &n.to_string(), "/index.html"])
            .env("OTEL_SERVICE_NAME", "bench-hold-connections")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting hold_connections.py")?;
        let mut proc = Proc::new(child);
        let out = proc
            .child()
            .and_then(|c| c.stdout.take())
            .context("no stdout")?;
        Ok(Self {
            proc,
            out: BufReader::new(out),
        })
    }

    /// Reads the next line, `"<word> <ok> <failed>"`, and returns (ok, failed).
    fn counts(&mut self, word: &str) -> Result<(f64, f64)> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let mut it = line.split_whitespace();
        if it.next() != Some(word) {
            bail!("hold_connections.py said {line:?}, expected {word}");
        }
        let mut num = || it.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Ok((num(), num()))
    }

    fn say(&mut self, what: &str) -> Result<()> {
        let stdin = self
            .proc
            .child()
            .and_then(|c| c.stdin.as_mut())
            .context("no stdin")?;
        writeln!(stdin, "{what}")?;
        stdin.flush()?;
        Ok(())
    }
}

/// (b) `--connections` keep-alive connections to nginx held open at once by one Python asyncio
/// client; with `tight`, under a kernel socket budget of `tight` and half of it for the
/// agent's connection table.
fn connections(
    agent_bin: &Path,
    args: &MemoryArgs,
    nofile: u64,
    tight: Option<u32>,
) -> Result<Scenario> {
    let n = args.connections;
    if u64::from(n) + 64 > nofile {
        bail!(
            "{n} connections need a fd limit above {}: the hard limit here is {nofile}",
            n + 64
        );
    }
    let (kernel_budget, conn_budget) = match tight {
        Some(t) => (t, (t / 2).max(1)),
        None => (MAX_KERNEL_SOCKETS, MAX_CONNECTIONS),
    };
    eprintln!(
        "== {n} connections held open (kernel socket budget {kernel_budget}, connection budget {conn_budget})"
    );
    let (agent, idle, sampler) = start_agent(
        agent_bin,
        &[
            ("--max-kernel-sockets", kernel_budget.to_string()),
            ("--max-connections", conn_budget.to_string()),
        ],
    )?;
    let port = free_port();
    // Twice the connections: nginx closes idle keep-alive connections once fewer than 1/16 of
    // its worker_connections are free.
    let tuning = NginxTuning {
        worker_connections: 2 * n + 256,
        rlimit_nofile: Some(nofile),
        ..NginxTuning::default()
    };
    let _nginx = Nginx::start_tuned(port, &[("index.html", &[b'x'; 256][..])], &tuning)?;
    let before = agent.metrics()?;
    let t0 = Instant::now();
    let mut holder = Holder::start(port, n)?;
    let (opened, failed) = holder.counts("open")?;
    eprintln!(
        "{opened} connections open ({failed} failed) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let client = |m: &Metrics| m.client_total(port);
    let base = client(&before);
    let first = agent.settle(base + opened, Duration::from_secs(60), client)? - base;
    let held = agent.metrics()?;
    let tracked_held = held.value("apm_connections_tracked");
    let sockets_held = bpfmaps::kernel_sockets(agent.pid()).unwrap_or(0) as f64;
    holder.say("again")?;
    let (again, again_failed) = holder.counts("done")?;
    let second = agent.settle(base + opened + again, Duration::from_secs(60), client)? - base;
    holder.say("close")?;
    let mut line = String::new();
    holder.out.read_line(&mut line)?;
    drop(holder);
    // Closes are events: the tables shrink once they are drained.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tracked_after;
    loop {
        tracked_after = agent.metrics()?.value("apm_connections_tracked");
        if tracked_after <= before.value("apm_connections_tracked") + 64.0
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let m = agent.metrics()?;
    let mut s = Scenario {
        name: if tight.is_some() {
            "connections_tight_budget"
        } else {
            "connections"
        },
        what: format!(
            "{n} connections held open by one asyncio client to nginx, kernel socket budget {kernel_budget}, connection budget {conn_budget}"
        ),
        idle,
        ..Scenario::default()
    };
    finish(&mut s, &agent, &sampler, &m);
    s.figures = vec![
        ("connections opened".to_owned(), opened),
        ("connections failed".to_owned(), failed + again_failed),
        ("requests sent".to_owned(), opened + again),
        ("requests seen, client side".to_owned(), second),
        ("of which while opening".to_owned(), first),
        ("connections tracked, all open".to_owned(), tracked_held),
        ("kernel sockets, all open".to_owned(), sockets_held),
        ("connections tracked after close".to_owned(), tracked_after),
    ];
    s.budgets = vec![
        (
            "kernel socket table".to_owned(),
            sockets_held,
            f64::from(kernel_budget),
        ),
        (
            "connection table".to_owned(),
            tracked_held,
            f64::from(conn_budget),
        ),
    ];
    Ok(s)
}

/// (c) `--processes` short-lived processes in batches of 50 concurrent ones: `/bin/true`, and
/// every `--curl-every`-th a curl making one request to nginx.
fn churn(agent_bin: &Path, args: &MemoryArgs) -> Result<Scenario> {
    eprintln!("== process churn: {} processes", args.processes);
    let (agent, idle, sampler) = start_agent(agent_bin, &[])?;
    let port = free_port();
    let _nginx = Nginx::start(port, &[("index.html", &[b'x'; 256][..])], 1)?;
    let before = agent.metrics()?;
    let execs = |m: &Metrics| m.sum("apm_events_read_total", &[("kind", "proc_exec")]);
    let script = format!(
        "for b in $(seq 0 {batches}); do \
           for i in $(seq 1 50); do \
             n=$((b * 50 + i)); \
             if [ $n -gt {total} ]; then break; fi; \
             if [ $((n % {every})) -eq 0 ]; then \
               curl -s -o /dev/null http://127.0.0.1:{port}/index.html & \
             else /bin/true & fi; \
           done; wait; \
         done",
        batches = args.processes / 50,
        total = args.processes,
        every = args.curl_every.max(1),
    );
    let t0 = Instant::now();
    let mut peak_inventory = 0.0_f64;
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .spawn()
        .context("starting the churn script")?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("churn script failed: {status}");
            }
            break;
        }
        if let Ok(m) = agent.metrics() {
            peak_inventory = peak_inventory.max(m.value("apm_process_inventory_entries"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} processes in {secs:.1} s ({:.0}/s)",
        args.processes,
        f64::from(args.processes) / secs
    );
    let curls = f64::from(args.processes / args.curl_every.max(1));
    let client = |m: &Metrics| m.client_total(port);
    let seen =
        agent.settle(client(&before) + curls, Duration::from_secs(60), client)? - client(&before);
    let m = agent.metrics()?;
    peak_inventory = peak_inventory.max(m.value("apm_process_inventory_entries"));
    let mut s = Scenario {
        name: "process_churn",
        what: format!(
            "{} short processes in batches of 50, every {}th a curl to nginx",
            args.processes, args.curl_every
        ),
        idle,
        ..Scenario::default()
    };
    finish(&mut s, &agent, &sampler, &m);
    s.figures = vec![
        ("processes started".to_owned(), f64::from(args.processes)),
        ("exec events read".to_owned(), execs(&m) - execs(&before)),
        (
            "processes named later (deferred)".to_owned(),
            m.value("apm_process_names_deferred_total"),
        ),
        ("requests sent (curl)".to_owned(), curls),
        ("requests seen, client side".to_owned(), seen),
        ("inventory entries, peak".to_owned(), peak_inventory),
        (
            "inventory entries, end".to_owned(),
            m.value("apm_process_inventory_entries"),
        ),
    ];
    s.budgets = vec![(
        "process inventory".to_owned(),
        peak_inventory,
        f64::from(MAX_INVENTORY),
    )];
    Ok(s)
}

fn report(scenarios: &[Scenario], args: &MemoryArgs) {
    println!(
        "\nmemory: the agent's RSS per scenario (fresh agent each, defaults but the budgets named)"
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>8}",
        "scenario",
        "anon idle",
        "anon peak",
        "anon end",
        "RSS peak",
        "VmHWM",
        "maps (kern)",
        "lost",
        "route ovf",
        "budgets"
    );
    for s in scenarios {
        println!(
            "{:<26} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.0} {:>9.0} {:>8}",
            s.name,
            mb(s.idle.rss_anon),
            mb(s.peak_anon),
            mb(s.end.rss_anon),
            mb(s.peak_rss),
            mb(s.end.vm_hwm),
            mb(s.map_bytes),
            s.lost,
            s.route_overflows,
            if s.budgets_held() { "held" } else { "EXCEEDED" }
        );
    }
    println!(
        "(MB; anon = RssAnon, RSS = VmRSS incl. file-backed pages, VmHWM = peak VmRSS; maps (kern) = kernel memory of the agent's BPF maps, not in RSS)"
    );
    for s in scenarios {
        println!("\n{}: {}", s.name, s.what);
        println!(
            "  file-backed RSS at the end (MB)          BPF maps mmapped {:.1}, own binary {:.1}, other files (profiler) {:.1}",
            mb(s.mappings.bpf_maps),
            mb(s.mappings.own_binary),
            mb(s.mappings.other_files)
        );
        for (k, v) in &s.figures {
            println!("  {k:<40} {v:>12.0}");
        }
        for (k, v, limit) in &s.budgets {
            println!(
                "  budget {k:<33} {v:>12.0} of {limit:.0}: {}",
                if v <= limit { "held" } else { "EXCEEDED" }
            );
        }
        let ovf: Vec<String> = s
            .map_overflows
            .iter()
            .map(|(k, v)| format!("{k}={v:.0}"))
            .collect();
        println!(
            "  apm_map_overflows_total                  {}",
            if ovf.is_empty() {
                "none".to_owned()
            } else {
                ovf.join(", ")
            }
        );
    }
    let peak_hwm = scenarios.iter().map(|s| s.end.vm_hwm).max().unwrap_or(0);
    let peak_anon = scenarios.iter().map(|s| s.peak_anon).max().unwrap_or(0);
    let lost: f64 = scenarios.iter().map(|s| s.lost).sum();
    let budgets = scenarios.iter().all(Scenario::budgets_held);
    println!(
        "\nRSS target {:.0} MB: peak VmHWM {:.1} MB ({}), peak RssAnon {:.1} MB ({}); budgets {}",
        args.target_mb,
        mb(peak_hwm),
        if mb(peak_hwm) <= args.target_mb {
            "met"
        } else {
            "missed"
        },
        mb(peak_anon),
        if mb(peak_anon) <= args.target_mb {
            "met"
        } else {
            "missed"
        },
        if budgets { "held" } else { "EXCEEDED" }
    );
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), "memory".into());
    json.insert("agent_peak_rss_mb".into(), mb(peak_hwm).into());
    json.insert("agent_rss_anon_mb".into(), mb(peak_anon).into());
    json.insert("events_lost".into(), lost.into());
    json.insert("target_mb".into(), args.target_mb.into());
    json.insert(
        "within_target_rss_anon".into(),
        (mb(peak_anon) <= args.target_mb).into(),
    );
    json.insert(
        "within_target_vm_hwm".into(),
        (mb(peak_hwm) <= args.target_mb).into(),
    );
    json.insert("budgets_held".into(), budgets.into());
    for s in scenarios {
        let mut o = serde_json::Map::new();
        o.insert("agent_peak_rss_mb".into(), mb(s.end.vm_hwm).into());
        o.insert("agent_rss_anon_mb".into(), mb(s.peak_anon).into());
        o.insert("agent_rss_anon_idle_mb".into(), mb(s.idle.rss_anon).into());
        o.insert("agent_rss_anon_end_mb".into(), mb(s.end.rss_anon).into());
        o.insert("kernel_maps_mb".into(), mb(s.map_bytes).into());
        o.insert("rss_bpf_mmap_mb".into(), mb(s.mappings.bpf_maps).into());
        o.insert("rss_own_binary_mb".into(), mb(s.mappings.own_binary).into());
        o.insert(
            "rss_other_files_mb".into(),
            mb(s.mappings.other_files).into(),
        );
        o.insert("events_lost".into(), s.lost.into());
        o.insert("route_overflows".into(), s.route_overflows.into());
        o.insert(
            "map_overflows".into(),
            serde_json::Value::Object(
                s.map_overflows
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).into()))
                    .collect(),
            ),
        );
        o.insert("budgets_held".into(), s.budgets_held().into());
        for (k, v) in &s.figures {
            o.insert(json_key(k), (*v).into());
        }
        json.insert(s.name.into(), serde_json::Value::Object(o));
    }
    println!("{}", serde_json::Value::Object(json));
}

/// "requests seen, client side" -> "requests_seen_client_side".
fn json_key(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}
