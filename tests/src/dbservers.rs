//! Real database servers for the database tests: PostgreSQL 15, MariaDB, Redis and memcached
//! (Debian's packages, installed by `cargo xtask setup`). Each one runs as a child process on
//! 127.0.0.1 on a free port, with its data in a fresh temp dir and `OTEL_SERVICE_NAME` set to a
//! unique name, and is killed (and its dir removed) when dropped. Debian's own services are
//! never used.
//!
//! PostgreSQL and MariaDB refuse to run as root: they run as the `postgres` / `mysql` system
//! users, owning their temp dir. Their statement logs (`log_statement=all`, MariaDB's general
//! log) are kept in the temp dir: the tests count in them what the server itself received.
use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    net::{self, wait_port},
    servers::{Proc, temp_dir},
};

/// Directory of PostgreSQL 15's server binaries on Debian.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

const START: Duration = Duration::from_secs(60);

/// (uid, gid) of a system user, from /etc/passwd.
pub fn system_user(name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .with_context(|| format!("no system user {name} (is its database package installed?)"))
}

/// A temp dir owned by `user`.
fn owned_temp_dir(prefix: &str, user: (u32, u32)) -> Result<PathBuf> {
    let dir = temp_dir(prefix)?;
    std::os::unix::fs::chown(&dir, Some(user.0), Some(user.1))
        .with_context(|| format!("chown {}", dir.display()))?;
    Ok(dir)
}

/// Runs `cmd` to completion; fails (with its output) unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `cmd` with `input` on its standard input; returns its output whatever the exit status.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    use std::io::Write as _;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input)
        .with_context(|| format!("writing to {what}"))?;
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))
}

/// Spawns a server process with its output in `dir/server.log`.
fn spawn(cmd: &mut Command, dir: &Path) -> Result<Proc> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let err = log.try_clone()?;
    let child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    Ok(Proc::new(child))
}

/// Fails with the server's log if it exited.
fn check_alive(proc: &mut Proc, dir: &Path, what: &str) -> Result<()> {
    if let Some(status) = proc.child().and_then(|c| c.try_wait().ok().flatten()) {
        bail!(
            "{what} exited during start-up ({status}):\n{}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Waits for `port`, failing early with the server's log if it exited.
fn wait_server(proc: &mut Proc, dir: &Path, port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + START;
    loop {
        check_alive(proc, dir, what)?;
        if wait_port(port, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not listening on {port} after {START:?}:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
    }
}

/// PostgreSQL 15 (`postgres` run directly, as the `postgres` user), trust authentication,
/// TCP on 127.0.0.1 only (or its unix-domain socket only), every statement logged to
/// `dir/server.log`.
pub struct Postgres {
    pub proc: Proc,
    /// The TCP port, or (unix socket only) the number in the socket's name,
    /// `dir/.s.PGSQL.<port>`.
    pub port: u16,
    pub dir: PathBuf,
    /// `OTEL_SERVICE_NAME` of the server (the postmaster and its backends).
    pub service: String,
    /// Listening on 127.0.0.1; when false, on its unix-domain socket in `dir` only.
    pub tcp: bool,
}

impl Postgres {
    pub fn start(service: &str) -> Result<Self> {
        Self::start_with(service, true)
    }

    /// [`Postgres::start`], logging every statement or none (benchmarks: the log's I/O
    /// would dominate the server's work).
    pub fn start_with(service: &str, log_statements: bool) -> Result<Self> {
        Self::start_listening(service, log_statements, true)
    }

    /// [`Postgres::start`] without TCP: its only listener is the unix-domain socket in
    /// `dir`, where [`Postgres::client`] connects.
    pub fn start_unix_only(service: &str) -> Result<Self> {
        Self::start_listening(service, true, false)
    }

    fn start_listening(service: &str, log_statements: bool, tcp: bool) -> Result<Self> {
        let user = system_user("postgres")?;
        let dir = owned_temp_dir("pg", user)?;
        let data = dir.join("data");
        run(Command::new(Path::new(PG_BIN).join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .current_dir(&dir)
            .uid(user.0)
            .gid(user.1))
        .context("initdb")?;
        let port = net::free_port();
        let mut proc = spawn(
            Command::new(Path::new(PG_BIN).join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .arg("-c")
                .arg(if tcp {
                    "listen_addresses=127.0.0.1"
                } else {
                    "listen_addresses="
                })
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.display()))
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "logging_collector=off"])
                .args([
                    "-c",
                    if log_statements {
                        "log_statement=all"
                    } else {
                        "log_statement=none"
                    },
                    "-c",
                    "log_min_error_statement=error",
                ])
                .env("OTEL_SERVICE_NAME", service)
                .uid(user.0)
                .gid(user.1),
            &dir,
        )?;
        // pg_isready sends a startup packet only, no query: nothing the agent would count.
        let host = if tcp {
            "127.0.0.1".to_owned()
        } else {
            dir.display().to_string()
        };
        let deadline = Instant::now() + START;
        loop {
            check_alive(&mut proc, &dir, "postgres")?;
            let ready = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-h", &host, "-p", &port.to_string(), "-q"])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres not ready after {START:?}:\n{}",
                    Self::log_of(&dir)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            proc,
            port,
            dir,
            service: service.to_owned(),
            tcp,
        })
    }

    fn log_of(dir: &Path) -> String {
        String::from_utf8_lossy(&std::fs::read(dir.join("server.log")).unwrap_or_default())
            .into_owned()
    }

    /// The server's log (every statement it received, errors).
    pub fn log(&self) -> String {
        Self::log_of(&self.dir)
    }

    /// How many logged statements (simple protocol `statement: ...` or extended protocol
    /// `execute <name>: ...`) start with `prefix`.
    pub fn logged(&self, prefix: &str) -> usize {
        self.log()
            .lines()
            .filter_map(|l| {
                l.split_once("LOG:  statement: ")
                    .map(|(_, s)| s)
                    .or_else(|| {
                        // "execute <name>: <statement>"
                        let (_, s) = l.split_once("LOG:  execute ")?;
                        s.split_once(": ").map(|(_, q)| q)
                    })
                    .map(str::trim_start)
            })
            .filter(|s| s.starts_with(prefix))
            .count()
    }

    /// A command (`pgbench`, `psql`, ...) connecting as `postgres` over TCP (or through the
    /// unix-domain socket, when the server has no TCP listener), run as `service`.
    pub fn client(&self, program: &str, service: &str) -> Command {
        let path = Path::new(PG_BIN).join(program);
        let mut cmd = Command::new(if path.exists() {
            path
        } else {
            PathBuf::from(program)
        });
        let host = if self.tcp {
            "127.0.0.1".to_owned()
        } else {
            self.dir.display().to_string()
        };
        cmd.args(["-h", &host, "-p", &self.port.to_string(), "-U", "postgres"])
            .env("OTEL_SERVICE_NAME", service)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(&self.dir);
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGTERM (smart shutdown) would wait for clients; SIGINT is the fast shutdown.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGINT) };
        for _ in 0..100 {
            if self
                .proc
                .child()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// MariaDB (`mariadbd` as the `mysql` user), without grant tables (any user, no password),
/// TCP on 127.0.0.1 only, every command in the general log `dir/general.log` (unless started
/// without it).
pub struct MariaDb {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub service: String,
}

impl MariaDb {
    pub fn start(service: &str) -> Result<Self> {
        Self::start_with(service, true)
    }

    /// [`MariaDb::start`], with or without the general log (benchmarks: the log adds a file
    /// write to every statement, work the server would not do in production).
    pub fn start_with(service: &str, general_log: bool) -> Result<Self> {
        let user = system_user("mysql")?;
        let dir = owned_temp_dir("mariadb", user)?;
        let data = dir.join("data");
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=mysql", "--auth-root-authentication-method=normal"])
            .args(["--skip-test-db", "--skip-name-resolve"])
            .current_dir(&dir)
            .uid(user.0)
            .gid(user.1))
        .context("mariadb-install-db")?;
        let port = net::free_port();
        let mut proc = spawn(
            Command::new("mariadbd")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", dir.join("sock").display()))
                .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
                .args(["--skip-grant-tables", "--skip-name-resolve"])
                .args([
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-flush-log-at-trx-commit=0",
                ])
                .arg(format!("--general-log={}", u8::from(general_log)))
                .arg(format!(
                    "--general-log-file={}",
                    dir.join("general.log").display()
                ))
                .env("OTEL_SERVICE_NAME", service)
                .uid(user.0)
                .gid(user.1),
            &dir,
        )?;
        wait_server(&mut proc, &dir, port, "mariadbd")?;
        Ok(Self {
            proc,
            port,
            dir,
            service: service.to_owned(),
        })
    }

    /// The general log: every command the server received.
    pub fn general_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("general.log")).unwrap_or_default())
            .into_owned()
    }

    /// How many general-log entries of `command` (`Query`, `Prepare`, `Execute`, ...) have an
    /// argument starting with `prefix`.
    pub fn logged(&self, command: &str, prefix: &str) -> usize {
        self.general_log()
            .lines()
            .filter_map(|l| {
                let mut words = l.split('\t').map(str::trim).filter(|w| !w.is_empty());
                // "[time]\tid Command\targument": find the "id Command" field.
                // (Lines starting a new second begin with a "YYMMDD HH:MM:SS" field.)
                let head = words.find(|w| {
                    w.split_once(' ').is_some_and(|(id, cmd)| {
                        id.chars().all(|c| c.is_ascii_digit())
                            && cmd.trim().starts_with(|c: char| c.is_ascii_uppercase())
                    })
                })?;
                let (_, cmd) = head.split_once(' ')?;
                (cmd.trim() == command).then(|| words.next().unwrap_or("").to_owned())
            })
            .filter(|arg| arg.starts_with(prefix))
            .count()
    }

    /// The `mariadb` client over TCP as root, run as `service`.
    pub fn client(&self, service: &str) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "--protocol=tcp", "-h", "127.0.0.1"])
            .args(["-P", &self.port.to_string(), "-u", "root"])
            .env("OTEL_SERVICE_NAME", service)
            .current_dir(&self.dir);
        cmd
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server without persistence.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub service: String,
}

impl Redis {
    pub fn start(service: &str) -> Result<Self> {
        let dir = temp_dir("redis")?;
        let port = net::free_port();
        let mut proc = spawn(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .env("OTEL_SERVICE_NAME", service),
            &dir,
        )?;
        wait_server(&mut proc, &dir, port, "redis-server")?;
        Ok(Self {
            proc,
            port,
            dir,
            service: service.to_owned(),
        })
    }

    /// `redis-cli -p PORT args...`, run as `service`.
    pub fn cli(&self, service: &str) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .env("OTEL_SERVICE_NAME", service);
        cmd
    }

    /// `INFO commandstats` as (command, calls, failed_calls): the server's own count.
    pub fn commandstats(&self, service: &str) -> Result<Vec<(String, u64, u64)>> {
        let out = run(self.cli(service).args(["INFO", "commandstats"]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut stats = Vec::new();
        for line in text.lines() {
            let Some((name, rest)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            stats.push((name.to_owned(), field("calls"), field("failed_calls")));
        }
        Ok(stats)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// memcached, TCP only, 64 MB of item memory unless started with more.
pub struct Memcached {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub service: String,
}

impl Memcached {
    pub fn start(service: &str) -> Result<Self> {
        Self::start_with(service, 64)
    }

    /// [`Memcached::start`] with `memory_mb` of item memory (benchmarks: room for every key,
    /// so that no get misses for an eviction).
    pub fn start_with(service: &str, memory_mb: u32) -> Result<Self> {
        let dir = temp_dir("memcached")?;
        let port = net::free_port();
        let mut proc = spawn(
            Command::new("memcached")
                .args(["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0"])
                .args(["-u", "root", "-t", "2", "-m", &memory_mb.to_string()])
                .env("OTEL_SERVICE_NAME", service),
            &dir,
        )?;
        wait_server(&mut proc, &dir, port, "memcached")?;
        Ok(Self {
            proc,
            port,
            dir,
            service: service.to_owned(),
        })
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Client-side operation count of one database operation of `service`, with extra label
/// filters (`db_collection_name`, `error_type`, ...).
pub fn client_ops(
    m: &crate::prom::Metrics,
    service: &str,
    system: &str,
    op: &str,
    extra: &[(&str, &str)],
) -> f64 {
    ops(
        m,
        "db_client_operation_duration_seconds_count",
        service,
        system,
        op,
        extra,
    )
}

/// Server-side operation count, like [`client_ops`].
pub fn server_ops(
    m: &crate::prom::Metrics,
    service: &str,
    system: &str,
    op: &str,
    extra: &[(&str, &str)],
) -> f64 {
    ops(
        m,
        "db_server_operation_duration_seconds_count",
        service,
        system,
        op,
        extra,
    )
}

fn ops(
    m: &crate::prom::Metrics,
    name: &str,
    service: &str,
    system: &str,
    op: &str,
    extra: &[(&str, &str)],
) -> f64 {
    let mut filter = vec![
        ("service_name", service),
        ("db_system_name", system),
        ("db_operation_name", op),
    ];
    filter.extend_from_slice(extra);
    m.sum(name, &filter)
}

/// Labels of a failed operation: the status code and the error type are both `code`
/// (SQLSTATE, MySQL error number, Redis error prefix, memcached error keyword).
pub fn failed(code: &str) -> [(&'static str, &str); 2] {
    [("db_response_status_code", code), ("error_type", code)]
}

/// Operations of `service` (client side) that carry no `error_type`.
pub fn client_ok_ops(m: &crate::prom::Metrics, service: &str, system: &str, op: &str) -> f64 {
    m.select(
        "db_client_operation_duration_seconds_count",
        &[
            ("service_name", service),
            ("db_system_name", system),
            ("db_operation_name", op),
        ],
    )
    .filter(|s| s.labels.get("error_type").is_none_or(String::is_empty))
    .map(|s| s.value)
    .sum()
}

/// The agent's `/api/slow-queries`.
pub fn slow_queries(agent_port: u16) -> Result<Value> {
    let (status, body) = net::http_get(agent_port, "/api/slow-queries")?;
    if status != 200 {
        bail!("/api/slow-queries answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("/api/slow-queries is not JSON: {body}"))
}

/// The `by_total_time` entries of `service` in a `/api/slow-queries` answer.
pub fn slow_entries(slow: &Value, service: &str) -> Vec<Value> {
    slow["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["service"] == service)
        .flat_map(|s| s["by_total_time"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The entry with this normalized statement, if any.
pub fn slow_entry(slow: &Value, service: &str, query: &str) -> Option<Value> {
    slow_entries(slow, service)
        .into_iter()
        .find(|e| e["db_query_text"] == query)
}

/// Asserts the agent's output (`/metrics`, `/api/slow-queries`) does not contain `canary`.
pub fn assert_no_canary(agent: &crate::agent::Agent, canary: &str) -> Result<()> {
    let (_, metrics) = net::http_get(agent.port, "/metrics")?;
    assert!(
        !metrics.contains(canary),
        "a SQL/command literal leaked into /metrics"
    );
    let (_, slow) = net::http_get(agent.port, "/api/slow-queries")?;
    assert!(
        !slow.contains(canary),
        "a literal leaked into /api/slow-queries"
    );
    Ok(())
}

/// Asserts the agent lost no events.
pub fn assert_no_lost_events(agent: &crate::agent::Agent) -> Result<()> {
    let m = agent.metrics()?;
    assert_eq!(
        m.value("apm_events_lost_total"),
        0.0,
        "ring buffer overflowed"
    );
    Ok(())
}
