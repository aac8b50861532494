//! PostgreSQL 15 and its own clients: pgbench (simple and extended protocol) and a psql script
//! of known statements, one of them failing. The agent's per-operation counts on the client
//! and server sides equal what the clients sent (the server's statement log confirms it), no
//! literal leaks, and the slow-query API holds pgbench's normalized statement.
use std::time::Duration;

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    dbservers::{
        Postgres, assert_no_canary, assert_no_lost_events, client_ok_ops, client_ops, failed, run,
        server_ops, slow_entries, slow_entry, slow_queries,
    },
    require_root, unique,
};

const WAIT: Duration = Duration::from_secs(20);
const PG: &str = "postgresql";
const ACCOUNTS: [(&str, &str); 1] = [("db_collection_name", "pgbench_accounts")];
const CANARY: &str = "canary-secret-7f3a";
/// Transactions of the simple-protocol pgbench run.
const N: u32 = 500;
/// Transactions of the extended-protocol (`-M prepared`) pgbench run.
const PREPARED: u32 = 50;

/// pgbench's own count ("number of transactions actually processed: X/Y").
fn pgbench_processed(out: &str) -> Option<u32> {
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
}

fn pgbench(pg: &Postgres, service: &str, mode: &str, transactions: u32) -> Result<u32> {
    // -n: no vacuum (pgbench would otherwise send TRUNCATE and 2 VACUUMs first). Besides its
    // N `SELECT abalance FROM pgbench_accounts WHERE aid = ...;`, pgbench -S sends 2 more
    // SELECTs at start (measured with log_statement=all): `select count(*) from
    // pgbench_branches` and a catalog query on pg_catalog.pg_class (partitioning check).
    let out = run(pg.client("pgbench", service).args([
        "-n",
        "-S",
        "-c",
        "1",
        "-t",
        &transactions.to_string(),
        "-M",
        mode,
        "postgres",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    pgbench_processed(&text).with_context(|| format!("no count in pgbench output:\n{text}"))
}

const SCRIPT: &str = "\
CREATE TABLE canary_notes (id integer PRIMARY KEY, note text NOT NULL);
INSERT INTO canary_notes (id, note) VALUES (1, 'canary-secret-7f3a one');
INSERT INTO canary_notes (id, note) VALUES (2, 'canary-secret-7f3a two');
INSERT INTO canary_notes (id, note) VALUES (3, 'canary-secret-7f3a three');
UPDATE canary_notes SET note = 'canary-secret-7f3a updated' WHERE id = 1;
UPDATE canary_notes SET note = 'canary-secret-7f3a updated' WHERE id = 2;
SELECT note FROM no_such_table WHERE note = 'canary-secret-7f3a';
BEGIN;
INSERT INTO canary_notes (id, note) VALUES (4, 'canary-secret-7f3a four');
COMMIT;
SELECT count(*) FROM canary_notes;
";

#[test]
fn postgres_pgbench_and_psql_counts() -> Result<()> {
    if !require_root("postgres_pgbench_and_psql_counts") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let server = unique("it-pg-server");
    let pg = Postgres::start(&server)?;

    // Setup, not asserted: tables and 100 000 accounts (client-side COPY), no vacuum.
    run(pg
        .client("pgbench", &unique("it-pgbench-init"))
        .args(["-i", "-s", "1", "-q", "-I", "dtgp", "postgres"]))?;

    // 1. Simple protocol: one Query message per transaction.
    let simple = unique("it-pgbench-simple");
    assert_eq!(
        pgbench(&pg, &simple, "simple", N)?,
        N,
        "pgbench's own count"
    );
    assert_eq!(
        pg.logged("SELECT abalance FROM pgbench_accounts WHERE aid = "),
        N as usize,
        "the server's log"
    );
    let n = f64::from(N);
    let c = agent.settle(n, WAIT, |m| client_ops(m, &simple, PG, "SELECT", &ACCOUNTS))?;
    let s = agent.settle(n, WAIT, |m| server_ops(m, &server, PG, "SELECT", &ACCOUNTS))?;
    let all = agent.metrics()?;
    assert_eq!(c, n, "client SELECTs on pgbench_accounts (simple protocol)");
    assert_eq!(
        client_ops(&all, &simple, PG, "SELECT", &[]),
        n + 2.0,
        "pgbench -S: N SELECTs + count(*) of pgbench_branches + the partitioning check"
    );
    assert_eq!(s, n, "server SELECTs on pgbench_accounts");

    // 2. Extended protocol: one Parse, then Bind/Execute/Sync per transaction.
    let prepared = unique("it-pgbench-prepared");
    assert_eq!(pgbench(&pg, &prepared, "prepared", PREPARED)?, PREPARED);
    assert_eq!(
        pg.logged("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
        PREPARED as usize,
        "the server's log (execute P_0: ...)"
    );
    let p = f64::from(PREPARED);
    let c = agent.settle(p, WAIT, |m| {
        client_ops(m, &prepared, PG, "SELECT", &ACCOUNTS)
    })?;
    let s = agent.settle(n + p, WAIT, |m| {
        server_ops(m, &server, PG, "SELECT", &ACCOUNTS)
    })?;
    assert_eq!(
        c, p,
        "client SELECTs on pgbench_accounts (extended protocol)"
    );
    assert_eq!(s, n + p, "server SELECTs on pgbench_accounts, both runs");

    // 3. psql script: known statements, one failing with 42P01 (undefined_table).
    let script = pg.dir.join("script.sql");
    std::fs::write(&script, SCRIPT)?;
    let psql = unique("it-psql");
    let out = run(pg
        .client("psql", &psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f"])
        .arg(&script)
        .arg("postgres"))?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("relation \"no_such_table\" does not exist"),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.logged("INSERT INTO canary_notes"), 4);
    assert_eq!(pg.logged("UPDATE canary_notes"), 2);
    let notes = [("db_collection_name", "canary_notes")];
    let err = failed("42P01");
    agent.settle(1.0, WAIT, |m| client_ops(m, &psql, PG, "COMMIT", &[]))?;
    let m = agent.metrics()?;
    let client = |op: &str| client_ops(&m, &psql, PG, op, &[]);
    assert_eq!(
        (
            client("CREATE"),
            client("INSERT"),
            client("UPDATE"),
            client("BEGIN"),
            client("COMMIT"),
            client("SELECT"),
        ),
        (1.0, 4.0, 2.0, 1.0, 1.0, 2.0),
        "psql's CREATE, INSERT, UPDATE, BEGIN, COMMIT, SELECT"
    );
    assert_eq!(client_ops(&m, &psql, PG, "INSERT", &notes), 4.0);
    assert_eq!(client_ops(&m, &psql, PG, "UPDATE", &notes), 2.0);
    assert_eq!(
        client_ops(&m, &psql, PG, "SELECT", &err),
        1.0,
        "the SELECT from a missing table, SQLSTATE 42P01"
    );
    assert_eq!(client_ok_ops(&m, &psql, PG, "SELECT"), 1.0, "count(*)");
    for op in ["CREATE", "INSERT", "UPDATE", "BEGIN", "COMMIT"] {
        assert_eq!(client_ok_ops(&m, &psql, PG, op), client(op), "{op} failed");
    }
    let s_ins = agent.settle(4.0, WAIT, |m| server_ops(m, &server, PG, "INSERT", &notes))?;
    let m = agent.metrics()?;
    assert_eq!(s_ins, 4.0, "server INSERTs into canary_notes");
    assert_eq!(server_ops(&m, &server, PG, "UPDATE", &notes), 2.0);
    assert_eq!(server_ops(&m, &server, PG, "SELECT", &err), 1.0);

    // The slow-query API: pgbench's statement, normalized, with exactly its calls.
    let slow = slow_queries(agent.port)?;
    let entry = slow_entry(
        &slow,
        &simple,
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?",
    )
    .with_context(|| format!("pgbench's statement not in /api/slow-queries: {slow}"))?;
    assert_eq!(entry["db_system_name"], PG);
    assert_eq!(entry["db_operation_name"], "SELECT");
    assert_eq!(entry["calls"].as_f64(), Some(n), "{entry}");
    assert_eq!(entry["errors"].as_f64(), Some(0.0), "{entry}");
    assert!(entry["max_ms"].as_f64().is_some_and(|v| v > 0.0), "{entry}");
    let inserts: f64 = slow_entries(&slow, &psql)
        .iter()
        .filter(|e| e["db_operation_name"] == "INSERT")
        .filter_map(|e| e["calls"].as_f64())
        .sum();
    assert_eq!(inserts, 4.0, "psql's INSERTs in /api/slow-queries: {slow}");

    assert_no_canary(&agent, CANARY)?;
    assert_no_lost_events(&agent)?;
    Ok(())
}
