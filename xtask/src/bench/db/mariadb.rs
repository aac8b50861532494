//! `mariadb-slap` against MariaDB (general log off): point SELECTs by primary key on a small
//! InnoDB table, text protocol (COM_QUERY), each client on one connection for the whole run
//! and cycling through the same fixed list of statements. Operations are queries; the rate
//! is the tool's own timing of the query phase.
use std::process::Command;

use anyhow::{Result, bail};
use tests::dbservers::{MariaDb, run as run_command};

use super::{DbArgs, Load, Round, number_after};

/// `OTEL_SERVICE_NAME` of mariadb-slap.
const CLIENT: &str = "bench-mariadb-slap";
/// `OTEL_SERVICE_NAME` of the `mariadb` CLI that creates the table (before any agent runs).
const SETUP: &str = "bench-mariadb-setup";
const SCHEMA: &str = "bench";
/// Rows of `bench.items`: small enough to stay in the buffer pool, so that the server's work
/// per query is constant.
const ROWS: u32 = 1000;
/// Ids the statements select, spread over the table.
const IDS: [u32; 8] = [1, 127, 256, 385, 512, 641, 770, 999];

pub(super) struct MariaDbSlap {
    db: MariaDb,
    clients: u32,
    queries: u32,
}

impl MariaDbSlap {
    /// Starts MariaDB and creates and fills `bench.items`.
    pub(super) fn start(args: &DbArgs) -> Result<Self> {
        if args.mariadb_clients == 0 || args.mariadb_queries < args.mariadb_clients {
            // mariadb-slap gives each client queries / clients queries; a limit of 0 is none.
            bail!("--mariadb-queries must be at least --mariadb-clients (and that at least 1)");
        }
        let db = MariaDb::start_with("bench-mariadb", false)?;
        let rows: Vec<String> = (1..=ROWS).map(|i| format!("({i}, 'item {i}')")).collect();
        let setup = format!(
            "CREATE DATABASE {SCHEMA}; \
             CREATE TABLE {SCHEMA}.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL) \
             ENGINE=InnoDB; \
             INSERT INTO {SCHEMA}.items (id, name) VALUES {};",
            rows.join(", ")
        );
        run_command(db.client(SETUP).args(["-e", &setup]))?;
        Ok(Self {
            db,
            clients: args.mariadb_clients,
            queries: args.mariadb_queries,
        })
    }

    /// The statements, `;`-separated (mariadb-slap's `--delimiter`).
    fn query() -> String {
        IDS.iter()
            .map(|id| format!("SELECT name FROM items WHERE id = {id}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn slap(&self, queries: u32) -> Result<Round> {
        // No --create: the tool neither creates nor drops the schema, it only connects to it.
        let out = run_command(
            Command::new("mariadb-slap")
                .args(["--no-defaults", "--protocol=tcp", "-h", "127.0.0.1"])
                .args(["-P", &self.db.port.to_string(), "-u", "root"])
                .arg(format!("--create-schema={SCHEMA}"))
                .arg(format!("--concurrency={}", self.clients))
                .arg(format!("--number-of-queries={queries}"))
                .args(["--iterations=1", "--delimiter=;"])
                .arg(format!("--query={}", Self::query()))
                .env("OTEL_SERVICE_NAME", CLIENT),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Benchmark
        //     Average number of seconds to run all queries: 2.345 seconds
        //     ...
        //     Number of clients running queries: 4
        //     Average number of queries per client: 50000
        let tool = "mariadb-slap";
        let seconds = number_after(tool, &text, "Average number of seconds to run all queries:")?;
        let clients = number_after(tool, &text, "Number of clients running queries:")?;
        let per_client = number_after(tool, &text, "Average number of queries per client:")?;
        if seconds <= 0.0 {
            bail!("mariadb-slap ran its queries in no measurable time: raise --mariadb-queries");
        }
        let ops = clients * per_client;
        Ok(Round {
            ops_per_s: ops / seconds,
            ops,
            ..Round::default()
        })
    }
}

impl Load for MariaDbSlap {
    fn name(&self) -> &'static str {
        "mariadb-select"
    }

    fn describe(&self) -> String {
        format!(
            "mariadb-slap --concurrency={} --number-of-queries={} ({} point SELECTs by primary key)",
            self.clients,
            self.queries,
            IDS.len()
        )
    }

    fn labels(&self) -> (&'static str, &'static str) {
        (CLIENT, "mariadb")
    }

    fn warm_up(&self) -> Result<()> {
        self.slap((self.queries / 10).max(self.clients)).map(drop)
    }

    fn run(&self) -> Result<Round> {
        self.slap(self.queries)
    }
}
