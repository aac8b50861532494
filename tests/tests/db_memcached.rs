//! memcached and a raw-socket text-protocol client (tests/servers/memcached_client.py) with a
//! known workload: the agent's per-command counts on both sides equal the client's own.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::json;
use tests::{
    agent::Agent,
    dbservers::{
        Memcached, assert_no_canary, assert_no_lost_events, client_ok_ops, client_ops, failed, run,
        server_ops,
    },
    require_root, servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
const MC: &str = "memcached";
const CANARY: &str = "canary-secret-7f3a";

#[test]
fn memcached_text_protocol_counts() -> Result<()> {
    if !require_root("memcached_text_protocol_counts") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let server = unique("it-memcached-server");
    let mc = Memcached::start(&server)?;
    let client = unique("it-memcached-client");
    let out = run(Command::new("python3")
        .arg(servers_dir().join("memcached_client.py"))
        .args([&mc.port.to_string(), CANARY])
        .env("OTEL_SERVICE_NAME", &client))?;
    let own: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output: {}", String::from_utf8_lossy(&out.stdout)))?;
    // The workload's own counts: 10 sets; 8 single-key gets (5 hits, 3 misses) + 1 multi-get
    // (3 of 4 keys hit); 3 deletes (2 DELETED, 1 NOT_FOUND); 5 incrs, the last on a
    // non-numeric value (CLIENT_ERROR).
    assert_eq!(
        own,
        json!({
            "counts": {"set": 10, "get": 9, "get_keys_hit": 8, "delete": 3, "incr": 5},
            "replies": {
                "set": {"STORED": 10},
                "get": {"HIT": 6, "MISS": 3},
                "delete": {"DELETED": 2, "NOT_FOUND": 1},
                "incr": {"11": 1, "12": 1, "13": 1, "14": 1, "CLIENT_ERROR": 1},
            },
        }),
        "the client's own counts"
    );
    let want = [("set", 10.0), ("get", 9.0), ("delete", 3.0), ("incr", 5.0)];
    agent.settle(5.0, WAIT, |m| client_ops(m, &client, MC, "incr", &[]))?;
    agent.settle(5.0, WAIT, |m| server_ops(m, &server, MC, "incr", &[]))?;
    let m = agent.metrics()?;
    for (op, n) in want {
        assert_eq!(client_ops(&m, &client, MC, op, &[]), n, "client {op}");
        assert_eq!(server_ops(&m, &server, MC, op, &[]), n, "server {op}");
    }
    // Misses and NOT_FOUND are answers, not errors; only the non-numeric incr failed.
    for (op, n) in [("set", 10.0), ("get", 9.0), ("delete", 3.0), ("incr", 4.0)] {
        assert_eq!(
            client_ok_ops(&m, &client, MC, op),
            n,
            "client {op} without error"
        );
    }
    let err = failed("CLIENT_ERROR");
    assert_eq!(client_ops(&m, &client, MC, "incr", &err), 1.0);
    assert_eq!(server_ops(&m, &server, MC, "incr", &err), 1.0);
    let all = m.sum(
        "db_client_operation_duration_seconds_count",
        &[("service_name", &client)],
    );
    assert_eq!(all, 27.0, "no other operation of the client");

    let slow = tests::dbservers::slow_queries(agent.port)?;
    let e = tests::dbservers::slow_entry(&slow, &client, "get ?")
        .with_context(|| format!("`get ?` not in {slow}"))?;
    // Keys never leave the parser: the 4-key multi-get normalizes to `get ?` as well.
    assert_eq!(e["calls"].as_f64(), Some(9.0), "{e}");
    assert_no_canary(&agent, CANARY)?;
    assert_no_lost_events(&agent)?;
    Ok(())
}
