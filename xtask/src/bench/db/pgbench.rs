//! `pgbench -S` against PostgreSQL 15 (statement log off): one primary-key SELECT per
//! transaction, simple protocol, a fixed duration per round.
use anyhow::Result;
use tests::dbservers::{Postgres, run as run_command};

use super::{DbArgs, Load, Round, number_after};

/// `OTEL_SERVICE_NAME` of pgbench.
const CLIENT: &str = "bench-pgbench";

pub(super) struct Pgbench {
    pg: Postgres,
    clients: u32,
    seconds: u32,
}

impl Pgbench {
    /// Starts PostgreSQL and creates pgbench's tables (scale 4: 400 000 accounts).
    pub(super) fn start(args: &DbArgs) -> Result<Self> {
        let pg = Postgres::start_with("bench-postgres", false)?;
        run_command(
            pg.client("pgbench", CLIENT)
                .args(["-i", "-s", "4", "-q", "postgres"]),
        )?;
        Ok(Self {
            pg,
            clients: args.pg_clients,
            seconds: args.seconds,
        })
    }

    fn pgbench(&self, seconds: u32) -> Result<Round> {
        let out = run_command(self.pg.client("pgbench", CLIENT).args([
            "-S",
            "-n",
            "-M",
            "simple",
            "-c",
            &self.clients.to_string(),
            "-j",
            "1",
            "-T",
            &seconds.to_string(),
            "postgres",
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(Round {
            ops_per_s: number_after("pgbench", &text, "tps =")?,
            ops: number_after(
                "pgbench",
                &text,
                "number of transactions actually processed:",
            )?,
            ..Round::default()
        })
    }
}

impl Load for Pgbench {
    fn name(&self) -> &'static str {
        "pgbench-select"
    }

    fn describe(&self) -> String {
        format!(
            "pgbench -S -M simple -c {} -j 1 -T {}",
            self.clients, self.seconds
        )
    }

    fn labels(&self) -> (&'static str, &'static str) {
        (CLIENT, "postgresql")
    }

    fn warm_up(&self) -> Result<()> {
        self.pgbench(2).map(drop)
    }

    fn run(&self) -> Result<Round> {
        self.pgbench(self.seconds)
    }
}
