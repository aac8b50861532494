//! A pre-fork server: the parent accepts, a forked child serves the connection on the
//! inherited socket (as PostgreSQL backends, Apache prefork or `ForkingMixIn` do). The child
//! never called accept, so the kernel side adopts the socket at its first data; every
//! exchange is counted on the server side, exactly once.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use tests::{agent::Agent, net::free_port, require_root, servers::python, servers_dir, unique};

#[test]
fn inherited_sockets_are_followed() -> Result<()> {
    if !require_root("inherited_sockets_are_followed") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let port = free_port();
    let service = unique("it-forked");
    let dir = servers_dir();
    let _app = python(
        &["app.py", &port.to_string(), "--fork"],
        &[("OTEL_SERVICE_NAME", &service)],
        &dir,
        port,
    )?;
    let before = agent.metrics()?.value("apm_connections_adopted_total");
    // Three connections (three forked children), 2 + 3 + 1 requests.
    for paths in [
        &["/users/1", "/users/2"][..],
        &["/users/3", "/error", "/users/4"],
        &["/nocontent"],
    ] {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "10"]);
        for p in paths {
            cmd.args(["-o", "/dev/null", &format!("http://127.0.0.1:{port}{p}")]);
        }
        let out = cmd.output().context("running curl")?;
        assert!(out.status.success(), "curl failed: {out:?}");
    }
    let wait = Duration::from_secs(20);
    let total = agent.settle(6.0, wait, |m| m.server_total(&service))?;
    // Kernel counters are summed once a second.
    let adopted = agent.settle(before + 3.0, wait, |m| {
        m.value("apm_connections_adopted_total")
    })? - before;
    let m = agent.metrics()?;
    assert_eq!(total, 6.0, "exchanges served by forked children");
    assert_eq!(m.server_count(&service, "GET", "/users/{id}", "200"), 4.0);
    assert_eq!(m.server_count(&service, "GET", "/error", "500"), 1.0);
    assert_eq!(m.server_count(&service, "GET", "/nocontent", "204"), 1.0);
    // On the syscall path each child adopted its connection, which it did not accept (other
    // processes on the host may adopt more). The socket path follows every connection from
    // its first data and knows these as accepted (from the TCP handshake): not adopted.
    if m.sum("apm_capture_path", &[("path", "syscalls")]) == 1.0 {
        assert!(adopted >= 3.0, "adopted {adopted} sockets, want at least 3");
    }
    assert_eq!(m.value("apm_events_lost_total"), 0.0);
    Ok(())
}
