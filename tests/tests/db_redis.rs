//! Redis and its own clients: redis-benchmark pipelining 16 commands per write on one
//! connection, and redis-cli sending a MULTI/EXEC block and two failing commands. The agent's
//! per-command counts equal what was sent (the server's INFO commandstats confirms it).
use std::time::Duration;

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    dbservers::{
        Redis, assert_no_canary, assert_no_lost_events, client_ok_ops, client_ops, failed, run,
        run_with_stdin, server_ops, slow_entry, slow_queries,
    },
    require_root, unique,
};

const WAIT: Duration = Duration::from_secs(20);
const REDIS: &str = "redis";
const CANARY: &str = "canary-secret-7f3a";
/// Requests per command of redis-benchmark.
const N: u64 = 2000;
/// Commands per write of redis-benchmark (`-P`).
const PIPELINE: f64 = 16.0;

/// calls and failed_calls of one command in INFO commandstats.
fn stat(stats: &[(String, u64, u64)], cmd: &str) -> (u64, u64) {
    stats
        .iter()
        .find(|(c, _, _)| c == cmd)
        .map_or((0, 0), |(_, calls, failed)| (*calls, *failed))
}

#[test]
fn redis_benchmark_pipelined_and_cli_transactions() -> Result<()> {
    if !require_root("redis_benchmark_pipelined_and_cli_transactions") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let server = unique("it-redis-server");
    let redis = Redis::start(&server)?;

    // redis-benchmark: SET test then GET test, N requests each, 1 connection, PIPELINE per write.
    // It also sends CONFIG GET save and CONFIG GET appendonly at start (INFO commandstats
    // shows config|get calls=2; MONITOR does not show them); they are not asserted.
    let bench = unique("it-redis-benchmark");
    run(std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args([
            "-n",
            &N.to_string(),
            "-P",
            &PIPELINE.to_string(),
            "-c",
            "1",
            "-t",
            "get,set",
            "-q",
        ])
        .env("OTEL_SERVICE_NAME", &bench))?;
    let stats = redis.commandstats(&unique("it-redis-info"))?;
    assert_eq!(stat(&stats, "get"), (N, 0), "the server's count: {stats:?}");
    assert_eq!(stat(&stats, "set"), (N, 0), "the server's count: {stats:?}");
    let n = N as f64;
    let get = agent.settle(n, WAIT, |m| client_ops(m, &bench, REDIS, "GET", &[]))?;
    let set = agent.settle(n, WAIT, |m| client_ops(m, &bench, REDIS, "SET", &[]))?;
    // One skipped program run loses a whole pipelined write or read: PIPELINE commands.
    let batched = |got: f64, want: f64, what: &str| {
        agent.assert_exact_or_counted_batched(got, want, PIPELINE, what)
    };
    batched(get, n, "redis-benchmark's GETs (client side)")?;
    batched(set, n, "redis-benchmark's SETs (client side)")?;
    let s_get = agent.settle(n, WAIT, |m| server_ops(m, &server, REDIS, "GET", &[]))?;
    let s_set = agent.settle(n, WAIT, |m| server_ops(m, &server, REDIS, "SET", &[]))?;
    batched(s_get, n, "GETs (server side)")?;
    batched(s_set, n, "SETs (server side)")?;

    // redis-cli reading commands from stdin: one command per round trip. It sends
    // COMMAND DOCS first (INFO commandstats: command|docs calls=1); not asserted.
    let cli = unique("it-redis-cli");
    let script = format!(
        "MULTI\nSET tx:a 1\nINCR tx:a\nSET tx:b {CANARY}\nEXEC\n\
         SET str notanumber\nINCR str\nLPUSH str x\nGET tx:a\n"
    );
    let out = run_with_stdin(&mut redis.cli(&cli), script.as_bytes())?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("QUEUED").count(), 3, "redis-cli: {text}");
    assert!(text.contains("ERR value is not an integer"), "{text}");
    assert!(text.contains("WRONGTYPE"), "{text}");
    let stats = redis.commandstats(&unique("it-redis-info"))?;
    assert_eq!(stat(&stats, "multi"), (1, 0), "{stats:?}");
    assert_eq!(stat(&stats, "exec"), (1, 0), "{stats:?}");
    assert_eq!(stat(&stats, "incr"), (2, 1), "{stats:?}");
    assert_eq!(stat(&stats, "lpush"), (1, 1), "{stats:?}");

    agent.settle(1.0, WAIT, |m| client_ops(m, &cli, REDIS, "LPUSH", &[]))?;
    agent.settle(1.0, WAIT, |m| client_ops(m, &cli, REDIS, "GET", &[]))?;
    let m = agent.metrics()?;
    let c = |op: &str| client_ops(&m, &cli, REDIS, op, &[]);
    let exact = |got: f64, want: f64, what: &str| agent.assert_exact_or_counted(got, want, what);
    // Queued commands count as operations: SET 2 queued + 1, INCR 1 queued + 1.
    for (op, want) in [
        ("MULTI", 1.0),
        ("EXEC", 1.0),
        ("SET", 3.0),
        ("INCR", 2.0),
        ("LPUSH", 1.0),
        ("GET", 1.0),
    ] {
        exact(c(op), want, &format!("redis-cli's {op}s"))?;
    }
    exact(
        client_ops(&m, &cli, REDIS, "INCR", &failed("ERR")),
        1.0,
        "the failed INCR",
    )?;
    exact(
        client_ok_ops(&m, &cli, REDIS, "INCR"),
        1.0,
        "the queued INCR",
    )?;
    exact(
        client_ops(&m, &cli, REDIS, "LPUSH", &failed("WRONGTYPE")),
        1.0,
        "the failed LPUSH",
    )?;
    for op in ["MULTI", "EXEC", "SET", "GET"] {
        assert_eq!(client_ok_ops(&m, &cli, REDIS, op), c(op), "{op} failed");
    }
    let s_err = agent.settle(1.0, WAIT, |m| {
        server_ops(m, &server, REDIS, "LPUSH", &failed("WRONGTYPE"))
    })?;
    let m = agent.metrics()?;
    exact(s_err, 1.0, "the failed LPUSH (server side)")?;
    let s = |op: &str, errors: &[(&str, &str)]| server_ops(&m, &server, REDIS, op, errors);
    exact(
        s("INCR", &failed("ERR")),
        1.0,
        "the failed INCR (server side)",
    )?;
    exact(s("MULTI", &[]), 1.0, "MULTI (server side)")?;
    exact(s("EXEC", &[]), 1.0, "EXEC (server side)")?;
    // Server side: benchmark's N + redis-cli's 3 SETs / 1 GET.
    batched(s("SET", &[]), n + 3.0, "SETs of both clients (server side)")?;
    batched(s("GET", &[]), n + 1.0, "GETs of both clients (server side)")?;

    let slow = slow_queries(agent.port)?;
    for (text, op) in [("GET ?", "GET"), ("SET ? ?", "SET")] {
        let e = slow_entry(&slow, &bench, text)
            .with_context(|| format!("{text:?} of redis-benchmark not in {slow}"))?;
        assert_eq!(e["db_operation_name"], op);
        let calls = e["calls"]
            .as_f64()
            .with_context(|| format!("no calls in {e}"))?;
        batched(calls, n, &format!("slow-query calls of {text:?}"))?;
        assert_eq!(e["errors"].as_f64(), Some(0.0), "{e}");
    }
    assert_no_canary(&agent, CANARY)?;
    assert_no_lost_events(&agent)?;
    Ok(())
}
