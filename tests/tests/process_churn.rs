//! Process churn: with the agent running, thousands of short-lived processes (exec'd
//! `true`s, curls that make one request, forked Python children that connect and exit
//! without exec) come and go. Afterwards the agent's process inventory, its process and
//! connection tables and the kernel's SOCKETS map are back to their baseline, and the
//! requests that were made are all counted.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tests::{
    agent::Agent, bpfmaps::kernel_sockets, net::free_port, prom::Metrics, require_root,
    servers::app_server, unique,
};

/// Exec'd processes in all; every `CURL_EVERY`-th one is a curl making one request.
const PROCESSES: usize = 3000;
const CURL_EVERY: usize = 10;
/// Forked (not exec'd) Python children that connect, make one request and exit.
const FORKED: usize = 200;
/// Room for what the rest of the host does meanwhile (other tests, builds).
const SLACK: f64 = 64.0;
const SETTLE: Duration = Duration::from_secs(90);

/// Live processes on the host.
fn live_processes() -> f64 {
    std::fs::read_dir("/proc").map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count()
    }) as f64
}

struct Sizes {
    inventory: f64,
    processes: f64,
    connections: f64,
    sockets: f64,
}

fn sizes(agent: &Agent) -> Result<Sizes> {
    let m = agent.metrics()?;
    Ok(Sizes {
        inventory: m.value("apm_process_inventory_entries"),
        processes: m.value("apm_processes_tracked"),
        connections: m.value("apm_connections_tracked"),
        sockets: kernel_sockets(agent.pid())? as f64,
    })
}

fn churn(port: u16) -> Result<()> {
    // Batches of 50 concurrent children, so the churn is dense but the host stays usable.
    let script = format!(
        "for b in $(seq 0 {batches}); do \
           for i in $(seq 1 50); do \
             n=$((b * 50 + i)); \
             if [ $n -gt {PROCESSES} ]; then break; fi; \
             if [ $((n % {CURL_EVERY})) -eq 0 ]; then \
               curl -s -o /dev/null http://127.0.0.1:{port}/users/$n & \
             else /bin/true & fi; \
           done; wait; \
         done",
        batches = PROCESSES / 50,
    );
    let status = Command::new("bash").args(["-c", &script]).status()?;
    if !status.success() {
        bail!("churn script failed: {status}");
    }
    let forked = format!(
        "import os, socket\n\
         for i in range({FORKED}):\n\
         \x20   pid = os.fork()\n\
         \x20   if pid == 0:\n\
         \x20       s = socket.create_connection(('127.0.0.1', {port}))\n\
         \x20       s.sendall(b'GET /users/1 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20       while s.recv(65536):\n\
         \x20           pass\n\
         \x20       os._exit(0)\n\
         \x20   os.waitpid(pid, 0)\n"
    );
    let status = Command::new("python3").args(["-c", &forked]).status()?;
    if !status.success() {
        bail!("forking client failed: {status}");
    }
    Ok(())
}

#[test]
fn tables_return_to_baseline_after_process_churn() -> Result<()> {
    if !require_root("tables_return_to_baseline_after_process_churn") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-churn");
    let _app = app_server(port, &service)?;
    std::thread::sleep(Duration::from_secs(2));
    let base = sizes(&agent)?;
    let exec_before = agent
        .metrics()?
        .sum("apm_events_read_total", &[("kind", "proc_exec")]);
    eprintln!(
        "baseline: inventory {} (host {}), processes {}, connections {}, kernel sockets {}",
        base.inventory,
        live_processes(),
        base.processes,
        base.connections,
        base.sockets
    );
    assert!(base.inventory > 0.0, "the start scan filled the inventory");

    churn(port)?;

    let requests = (PROCESSES / CURL_EVERY + FORKED) as f64;
    let served = agent.settle(requests, SETTLE, |m| m.server_total(&service))?;
    let m: Metrics = agent.metrics()?;
    let execs = m.sum("apm_events_read_total", &[("kind", "proc_exec")]) - exec_before;
    assert!(execs >= PROCESSES as f64, "exec events seen: {execs}");
    if m.value("apm_events_lost_total") == 0.0 {
        assert_eq!(served, requests, "every request of the churn counted");
    }

    // Settle: exits are events (no timer involved), so the tables shrink as soon as the
    // ring buffer is drained; poll until they are back, with room for the host's own life.
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = sizes(&agent)?;
        let live = live_processes();
        let back = now.inventory <= base.inventory.max(live) + SLACK
            && now.processes <= base.processes + SLACK
            && now.connections <= base.connections + SLACK
            && now.sockets <= base.sockets + SLACK;
        if back {
            eprintln!(
                "after: inventory {} (host {live}), processes {}, connections {}, kernel sockets {}",
                now.inventory, now.processes, now.connections, now.sockets
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "tables did not return to baseline: inventory {} (baseline {}, host {live}), \
                 processes {} (baseline {}), connections {} (baseline {}), kernel sockets {} \
                 (baseline {})\n{}",
                now.inventory,
                base.inventory,
                now.processes,
                base.processes,
                now.connections,
                base.connections,
                now.sockets,
                base.sockets,
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let m = agent.metrics()?;
    assert_eq!(
        m.sum("apm_map_overflows_total", &[("map", "process_inventory")]),
        0.0,
        "the inventory never ran out of room"
    );
    Ok(())
}
