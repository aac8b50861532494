//! PostgreSQL 15 reached through its unix-domain socket only (no TCP listener at all): pgbench
//! (simple and extended protocol) and a psql script, with `-h <socket dir>`. Over AF_UNIX the
//! client connects to a path (no peer address, no port) and libpq skips the SSL and GSSAPI
//! negotiation, so the first bytes are the startup message; the server side is a backend
//! forked by the postmaster, which adopts the inherited socket at its first data. The agent's
//! per-operation counts on both sides equal what the clients sent (the server's statement
//! log confirms it).
use std::time::Duration;

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    dbservers::{
        Postgres, assert_no_lost_events, client_ok_ops, client_ops, failed, run, server_ops,
    },
    prom::Metrics,
    require_root, unique,
};

const WAIT: Duration = Duration::from_secs(20);
const PG: &str = "postgresql";
const ACCOUNTS: [(&str, &str); 1] = [("db_collection_name", "pgbench_accounts")];
/// Transactions of the simple-protocol pgbench run.
const N: u32 = 300;
/// Transactions of the extended-protocol (`-M prepared`) pgbench run.
const PREPARED: u32 = 40;

/// pgbench's own count ("number of transactions actually processed: X/Y").
fn pgbench(pg: &Postgres, service: &str, mode: &str, transactions: u32) -> Result<u32> {
    // -n: no vacuum. pgbench -S sends 2 SELECTs of its own at start (see db_postgres.rs).
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
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no count in pgbench output:\n{text}"))
}

/// The client's series carry no peer port: the agent saw a unix-domain socket.
fn client_ports(m: &Metrics, service: &str) -> Vec<String> {
    m.select(
        "db_client_operation_duration_seconds_count",
        &[("service_name", service)],
    )
    .filter_map(|s| s.labels.get("server_port").cloned())
    .collect()
}

const SCRIPT: &str = "\
CREATE TABLE unix_notes (id integer PRIMARY KEY, note text NOT NULL);
INSERT INTO unix_notes (id, note) VALUES (1, 'one');
INSERT INTO unix_notes (id, note) VALUES (2, 'two');
INSERT INTO unix_notes (id, note) VALUES (3, 'three');
UPDATE unix_notes SET note = 'updated' WHERE id = 1;
DELETE FROM unix_notes WHERE id = 3;
SELECT note FROM no_such_table WHERE id = 1;
SELECT count(*) FROM unix_notes;
";

#[test]
fn postgres_over_unix_socket_counts_both_sides() -> Result<()> {
    if !require_root("postgres_over_unix_socket_counts_both_sides") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let server = unique("it-pgunix-server");
    let pg = Postgres::start_unix_only(&server)?;
    let socket = pg.dir.join(format!(".s.PGSQL.{}", pg.port));
    assert!(socket.exists(), "no unix socket at {}", socket.display());

    // Setup, not asserted: tables and 100 000 accounts, no vacuum.
    run(pg
        .client("pgbench", &unique("it-pgunix-init"))
        .args(["-i", "-s", "1", "-q", "-I", "dtgp", "postgres"]))?;

    // 1. Simple protocol: one Query message per transaction.
    let simple = unique("it-pgunix-simple");
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
    let m = agent.metrics()?;
    agent.assert_exact_or_counted(c, n, "client SELECTs on pgbench_accounts (simple)")?;
    agent.assert_exact_or_counted(s, n, "server SELECTs on pgbench_accounts (simple)")?;
    assert_eq!(
        client_ops(&m, &simple, PG, "SELECT", &[]),
        n + 2.0,
        "pgbench -S: N SELECTs + count(*) of pgbench_branches + the partitioning check"
    );
    assert_eq!(client_ports(&m, &simple), Vec::<String>::new());

    // 2. Extended protocol: one Parse, then Bind/Execute/Sync per transaction.
    let prepared = unique("it-pgunix-prepared");
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
    agent.assert_exact_or_counted(c, p, "client SELECTs on pgbench_accounts (prepared)")?;
    agent.assert_exact_or_counted(s, n + p, "server SELECTs on pgbench_accounts, both runs")?;

    // 3. psql script: known statements, one failing with 42P01 (undefined_table).
    let script = pg.dir.join("script.sql");
    std::fs::write(&script, SCRIPT)?;
    let psql = unique("it-pgunix-psql");
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
    assert_eq!(pg.logged("INSERT INTO unix_notes"), 3, "the server's log");
    let notes = [("db_collection_name", "unix_notes")];
    let err = failed("42P01");
    // The script's last statement: once it is counted, so are the others.
    agent.settle(2.0, WAIT, |m| client_ops(m, &psql, PG, "SELECT", &[]))?;
    agent.settle(4.0, WAIT, |m| {
        server_ops(m, &server, PG, "INSERT", &notes) + server_ops(m, &server, PG, "DELETE", &notes)
    })?;
    let m = agent.metrics()?;
    for (op, want) in [
        ("CREATE", 1.0),
        ("INSERT", 3.0),
        ("UPDATE", 1.0),
        ("DELETE", 1.0),
    ] {
        assert_eq!(client_ops(&m, &psql, PG, op, &[]), want, "client {op}");
        assert_eq!(
            client_ok_ops(&m, &psql, PG, op),
            want,
            "client {op}, no error"
        );
    }
    for (op, want) in [("INSERT", 3.0), ("UPDATE", 1.0), ("DELETE", 1.0)] {
        assert_eq!(client_ops(&m, &psql, PG, op, &notes), want, "client {op}");
        assert_eq!(server_ops(&m, &server, PG, op, &notes), want, "server {op}");
    }
    assert_eq!(
        client_ops(&m, &psql, PG, "SELECT", &err),
        1.0,
        "client: the SELECT from a missing table, SQLSTATE 42P01"
    );
    assert_eq!(client_ok_ops(&m, &psql, PG, "SELECT"), 1.0, "count(*)");
    assert_eq!(
        server_ops(&m, &server, PG, "SELECT", &err),
        1.0,
        "server: the SELECT from a missing table, SQLSTATE 42P01"
    );
    assert_eq!(client_ports(&m, &psql), Vec::<String>::new());
    assert_no_lost_events(&agent)?;
    Ok(())
}
