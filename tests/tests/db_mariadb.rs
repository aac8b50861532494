//! MariaDB and real clients: the `mariadb` CLI (text protocol: DDL, INSERTs, SELECTs, a
//! missing table, SQL-level PREPARE/EXECUTE) and mysql-connector-python's binary protocol
//! (COM_STMT_PREPARE / COM_STMT_EXECUTE). The agent's per-operation counts equal what was sent
//! (MariaDB's general log confirms it).
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use tests::{
    agent::Agent,
    dbservers::{
        MariaDb, assert_no_canary, assert_no_lost_events, client_ok_ops, client_ops, failed, run,
        run_with_stdin, server_ops,
    },
    pyotlp, require_root, servers_dir, unique,
};

const WAIT: Duration = Duration::from_secs(20);
/// `db_system_name` for a MariaDB server (its handshake says `...-MariaDB`).
const DB: &str = "mariadb";
const CANARY: &str = "canary-secret-7f3a";
/// INSERTs of the text-protocol run.
const K: usize = 20;
/// Binary-protocol executions.
const B_SELECTS: usize = 12;
const B_INSERTS: usize = 5;

#[test]
fn mariadb_text_and_binary_protocol_counts() -> Result<()> {
    if !require_root("mariadb_text_and_binary_protocol_counts") {
        return Ok(());
    }
    let agent = Agent::start(&[])?;
    let server = unique("it-mariadb-server");
    let db = MariaDb::start(&server)?;

    // Text protocol (COM_QUERY), one statement per query; the CLI in batch mode sends
    // nothing else (general log: Connect, the queries, Quit). The database is named in the
    // handshake (-D), so there is no COM_INIT_DB.
    let cli = unique("it-mariadb-cli");
    run(db.client(&cli).args(["-e", "CREATE DATABASE shop"]))?;
    let mut script =
        String::from("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL);\n");
    for i in 0..K {
        script.push_str(&format!(
            "INSERT INTO items (id, name) VALUES ({i}, '{CANARY} {i}');\n"
        ));
    }
    script.push_str("SELECT name FROM items WHERE id = 1;\n");
    script.push_str("SELECT name FROM items WHERE id = 2;\n");
    script.push_str("SELECT COUNT(*) FROM items;\n");
    script.push_str(&format!(
        "SELECT * FROM no_such_table WHERE name = '{CANARY}';\n"
    ));
    // SQL-level prepared statements: still COM_QUERY.
    script.push_str("PREPARE s FROM 'SELECT name FROM items WHERE id = ?';\n");
    script.push_str("SET @id = 3;\n");
    script.push_str("EXECUTE s USING @id;\nEXECUTE s USING @id;\n");
    script.push_str("DEALLOCATE PREPARE s;\n");
    // --force: go on after the error (reading from stdin; `-e` stops at the first error).
    let out = run_with_stdin(
        db.client(&cli).args(["-D", "shop", "--force"]),
        script.as_bytes(),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR 1146"), "mariadb: {err}");
    assert_eq!(db.logged("Query", "INSERT INTO items"), K, "general log");
    assert_eq!(db.logged("Query", "SELECT"), 4, "general log");
    assert_eq!(db.logged("Query", "EXECUTE s"), 2, "general log");

    agent.settle(1.0, WAIT, |m| client_ops(m, &cli, DB, "DEALLOCATE", &[]))?;
    let m = agent.metrics()?;
    let c = |op: &str| client_ops(&m, &cli, DB, op, &[]);
    let k = K as f64;
    assert_eq!(
        (
            c("CREATE"),
            c("INSERT"),
            c("SELECT"),
            c("PREPARE"),
            c("SET"),
            c("EXECUTE"),
            c("DEALLOCATE")
        ),
        (2.0, k, 4.0, 1.0, 1.0, 2.0, 1.0),
        "the CLI's CREATE (database, table), INSERT, SELECT, PREPARE, SET, EXECUTE, DEALLOCATE"
    );
    let items = [("db_collection_name", "items")];
    assert_eq!(client_ops(&m, &cli, DB, "INSERT", &items), k);
    assert_eq!(
        client_ops(&m, &cli, DB, "SELECT", &failed("1146")),
        1.0,
        "the SELECT from a missing table, error 1146"
    );
    assert_eq!(client_ok_ops(&m, &cli, DB, "SELECT"), 3.0);
    assert_eq!(client_ok_ops(&m, &cli, DB, "INSERT"), k);
    let s = agent.settle(k, WAIT, |m| server_ops(m, &server, DB, "INSERT", &items))?;
    assert_eq!(s, k, "server INSERTs into items");
    let m = agent.metrics()?;
    assert_eq!(server_ops(&m, &server, DB, "SELECT", &failed("1146")), 1.0);

    // Binary protocol: mysql-connector-python (pure Python) with prepared cursors.
    let py = unique("it-mariadb-binary");
    let out = run(Command::new(pyotlp::python())
        .arg(servers_dir().join("mysql_prepared_client.py"))
        .args([
            &db.port.to_string(),
            "shop",
            &B_SELECTS.to_string(),
            &B_INSERTS.to_string(),
            CANARY,
        ])
        .env("OTEL_SERVICE_NAME", &py))?;
    let own: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output: {}", String::from_utf8_lossy(&out.stdout)))?;
    assert_eq!(
        own["rows"], B_SELECTS,
        "every prepared SELECT found its row"
    );
    // General log: 1 Prepare per statement, 1 Execute per call (and a Reset stmt before each
    // execute, a Close stmt at the end: not operations); the CLI's SQL-level `PREPARE s` and
    // its 2 `EXECUTE s` are logged as Prepare and Execute too.
    assert_eq!(db.logged("Prepare", "SELECT name FROM items"), 2);
    assert_eq!(
        db.logged("Execute", "SELECT name FROM items"),
        B_SELECTS + 2
    );
    assert_eq!(db.logged("Prepare", "INSERT INTO items"), 1);
    assert_eq!(db.logged("Execute", "INSERT INTO items"), B_INSERTS);
    let (bs, bi) = (B_SELECTS as f64, B_INSERTS as f64);
    agent.settle(bi, WAIT, |m| client_ops(m, &py, DB, "INSERT", &[]))?;
    let m = agent.metrics()?;
    let c = |op: &str| client_ops(&m, &py, DB, op, &[]);
    // Operations are the executions, named by the prepared statement's keyword; the connector
    // also sends SET NAMES and SET @@session.autocommit as text queries on connecting.
    assert_eq!(
        (c("PREPARE"), c("SELECT"), c("INSERT"), c("SET")),
        (2.0, bs, bi, 2.0),
        "one binary-protocol PREPARE per statement, SELECT and INSERT executions, and the \
         connector's 2 SETs"
    );
    assert_eq!(client_ops(&m, &py, DB, "SELECT", &items), bs);
    assert_eq!(client_ops(&m, &py, DB, "INSERT", &items), bi);
    let s = agent.settle(k + bi, WAIT, |m| {
        server_ops(m, &server, DB, "INSERT", &items)
    })?;
    assert_eq!(s, k + bi, "server INSERTs, both clients");

    assert_no_canary(&agent, CANARY)?;
    assert_no_lost_events(&agent)?;
    Ok(())
}
