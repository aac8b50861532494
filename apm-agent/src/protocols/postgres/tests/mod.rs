//! Byte-stream tests: PostgreSQL v3 traffic built in the exact wire format, fed as
//! syscall-sized segments; each checks the exact operations that come out and the counters.
use super::*;

/// One connection under test, with a fake clock: each segment returns at `t + 5`, then the
/// clock moves on by 100.
struct Conn {
    p: PostgresParser,
    out: ParserOut,
    stats: ParseStats,
    t: u64,
}

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

impl Conn {
    fn new(side: Side) -> Self {
        Self {
            p: PostgresParser::new(side),
            out: ParserOut::default(),
            stats: ParseStats::default(),
            t: 1000,
        }
    }

    fn client() -> Self {
        Self::new(Side::Client)
    }

    fn seg_total(&mut self, direction: Direction, data: &[u8], total: u64) {
        crate::fuzzing::seeds::record("postgres", direction, data, total);
        let seg = Segment {
            direction,
            data,
            total_len: total,
            ts_ns: self.t + 5,
            tid: 42,
        };
        self.p.on_segment(&seg, &mut self.out, &mut self.stats);
        self.t += 100;
    }

    fn seg(&mut self, direction: Direction, data: &[u8]) {
        self.seg_total(direction, data, data.len() as u64);
    }

    /// Client side: the process writes frontend messages and reads backend ones.
    fn send(&mut self, data: &[u8]) {
        self.seg(OUT, data);
    }

    fn recv(&mut self, data: &[u8]) {
        self.seg(IN, data);
    }

    fn close(&mut self) {
        let t = self.t;
        self.p.on_close(t, &mut self.out, &mut self.stats);
    }

    /// (operation, query, collection, status_code) of every operation so far.
    fn summary(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        self.out
            .done
            .iter()
            .map(|r| {
                let d = r.db().expect("db");
                assert_eq!(d.system, DbSystem::Postgresql);
                assert_eq!(d.error, d.status_code.is_some());
                (
                    d.operation.clone(),
                    d.query.clone(),
                    d.collection.clone(),
                    d.status_code.clone(),
                )
            })
            .collect()
    }

    fn seqs(&self) -> Vec<u64> {
        self.out.done.iter().map(|r| r.seq).collect()
    }

    fn times(&self) -> Vec<(u64, u64)> {
        self.out
            .done
            .iter()
            .map(|r| (r.start_ns, r.end_ns))
            .collect()
    }
}

fn op(
    operation: &str,
    query: &str,
    collection: Option<&str>,
    status: Option<&str>,
) -> (String, String, Option<String>, Option<String>) {
    (
        operation.to_owned(),
        query.to_owned(),
        collection.map(str::to_owned),
        status.map(str::to_owned),
    )
}

// ---- Wire format builders ----

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn z(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.push(0);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend(z(k.as_bytes()));
        body.extend(z(v.as_bytes()));
    }
    body.push(0);
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend(body);
    m
}

fn ssl_request() -> Vec<u8> {
    let mut m = 8u32.to_be_bytes().to_vec();
    m.extend(80_877_103u32.to_be_bytes());
    m
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &z(sql.as_bytes()))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = z(name.as_bytes());
    b.extend(z(sql.as_bytes()));
    b.extend(0u16.to_be_bytes());
    msg(b'P', &b)
}

fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = z(portal.as_bytes());
    b.extend(z(stmt.as_bytes()));
    b.extend(0u16.to_be_bytes());
    b.extend((params.len() as u16).to_be_bytes());
    for p in params {
        b.extend((p.len() as u32).to_be_bytes());
        b.extend(p.as_bytes());
    }
    b.extend(0u16.to_be_bytes());
    msg(b'B', &b)
}

fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    b.extend(z(portal.as_bytes()));
    msg(b'D', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = z(portal.as_bytes());
    b.extend(0u32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn auth_ok() -> Vec<u8> {
    msg(b'R', &0u32.to_be_bytes())
}

fn param_status(k: &str, v: &str) -> Vec<u8> {
    let mut b = z(k.as_bytes());
    b.extend(z(v.as_bytes()));
    msg(b'S', &b)
}

fn key_data() -> Vec<u8> {
    msg(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4])
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row_desc(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(z(c.as_bytes()));
        b.extend([0u8; 18]);
    }
    msg(b'T', &b)
}

fn data_row(vals: &[&[u8]]) -> Vec<u8> {
    let mut b = (vals.len() as u16).to_be_bytes().to_vec();
    for v in vals {
        b.extend((v.len() as u32).to_be_bytes());
        b.extend(*v);
    }
    msg(b'D', &b)
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &z(tag.as_bytes()))
}

fn error(code: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(z(b"ERROR"));
    b.push(b'V');
    b.extend(z(b"ERROR"));
    b.push(b'C');
    b.extend(z(code.as_bytes()));
    b.push(b'M');
    b.extend(z(b"relation \"nope\" does not exist"));
    b.push(0);
    msg(b'E', &b)
}

fn parse_complete() -> Vec<u8> {
    msg(b'1', b"")
}

fn bind_complete() -> Vec<u8> {
    msg(b'2', b"")
}

/// Startup + authentication ok + parameters + key data + ReadyForQuery, on a client.
fn connected(db: Option<&str>) -> Conn {
    let mut c = Conn::client();
    let mut params = vec![("user", "app")];
    if let Some(db) = db {
        params.push(("database", db));
    }
    c.send(&startup(&params));
    c.recv(&cat(&[
        auth_ok(),
        param_status("server_version", "15.8"),
        param_status("client_encoding", "UTF8"),
        key_data(),
        ready(),
    ]));
    c
}

fn namespace(c: &Conn, i: usize) -> Option<String> {
    c.out
        .done
        .get(i)
        .and_then(|r| r.db())
        .and_then(|d| d.namespace.clone())
}

// ---- Golden streams ----

#[test]
fn startup_auth_ready_is_no_operation() {
    let c = connected(Some("shop"));
    assert!(c.out.done.is_empty() && c.out.started.is_empty());
    assert_eq!(c.stats, ParseStats::default());
    assert_eq!(c.p.named.namespace.as_deref(), Some("shop"));
    assert!(!c.p.gave_up());
    // Without a database parameter the database is the user's name.
    let c = connected(None);
    assert_eq!(c.p.named.namespace.as_deref(), Some("app"));
}

#[test]
fn simple_select_with_rows() {
    let mut c = connected(Some("shop"));
    c.send(&query("SELECT id, email FROM users WHERE id = 7")); // 1200..1205
    c.recv(&cat(&[
        row_desc(&["id", "email"]),
        data_row(&[b"7", b"a@b"]),
        data_row(&[b"8", b"c@d"]),
        complete("SELECT 2"),
        ready(),
    ])); // 1300..1305
    assert_eq!(
        c.summary(),
        vec![op(
            "SELECT",
            "SELECT id, email FROM users WHERE id = ?",
            Some("users"),
            None
        )]
    );
    assert_eq!(c.times(), vec![(1205, 1305)]);
    assert_eq!(c.seqs(), vec![0]);
    let r = &c.out.done[0];
    assert_eq!(
        (r.side, r.tid, r.protocol, r.trust),
        (Side::Client, 42, Protocol::Postgres, Trust::default())
    );
    assert_eq!(namespace(&c, 0).as_deref(), Some("shop"));
    assert_eq!(c.out.started.len(), 1);
    assert_eq!((c.out.started[0].seq, c.out.started[0].start_ns), (0, 1205));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn literals_never_leave_the_parser() {
    let mut c = connected(Some("shop"));
    c.send(&query(
        "SELECT * FROM users WHERE email = 'secret@x' AND pw = $$hunter2$$",
    ));
    c.recv(&cat(&[complete("SELECT 0"), ready()]));
    let q = c.summary()[0].1.clone();
    assert_eq!(q, "SELECT * FROM users WHERE email = ? AND pw = ?");
    assert!(!q.contains("secret") && !q.contains("hunter2"));
}

#[test]
fn multi_statement_query_is_one_operation() {
    let mut c = connected(Some("shop"));
    c.send(&query(
        "BEGIN; UPDATE stock SET n = n - 1 WHERE id = 3; COMMIT",
    ));
    c.recv(&cat(&[
        complete("BEGIN"),
        complete("UPDATE 1"),
        complete("COMMIT"),
        ready(),
    ]));
    let s = c.summary();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, "BEGIN");
    assert!(
        s[0].1
            .starts_with("BEGIN; UPDATE stock SET n = n - ? WHERE id = ?"),
        "{}",
        s[0].1
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn failing_query_reports_sqlstate() {
    let mut c = connected(Some("shop"));
    c.send(&query("SELECT * FROM nope"));
    c.recv(&cat(&[error("42P01"), ready()]));
    c.send(&query("SELECT 1"));
    c.recv(&cat(&[
        row_desc(&["?column?"]),
        data_row(&[b"1"]),
        complete("SELECT 1"),
        ready(),
    ]));
    assert_eq!(
        c.summary(),
        vec![
            op("SELECT", "SELECT * FROM nope", Some("nope"), Some("42P01")),
            op("SELECT", "SELECT ?", None, None),
        ]
    );
    assert!(c.out.done[0].db().expect("db").error);
    assert_eq!(c.seqs(), vec![0, 1]);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn empty_query() {
    let mut c = connected(Some("shop"));
    c.send(&query(""));
    c.recv(&cat(&[msg(b'I', b""), ready()]));
    assert_eq!(c.summary(), vec![op("_OTHER", "", None, None)]);
}

#[test]
fn ssl_denied_then_plaintext_startup() {
    let mut c = Conn::client();
    c.send(&ssl_request());
    c.recv(b"N");
    c.send(&startup(&[("user", "app"), ("database", "shop")]));
    c.recv(&cat(&[auth_ok(), ready()]));
    c.send(&query("SELECT 1"));
    c.recv(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(c.summary(), vec![op("SELECT", "SELECT ?", None, None)]);
    assert_eq!(namespace(&c, 0).as_deref(), Some("shop"));
    assert_eq!(c.stats, ParseStats::default());
    assert!(!c.p.gave_up());
}

#[test]
fn ssl_accepted_gives_up_quietly() {
    let mut c = Conn::client();
    c.send(&ssl_request());
    c.recv(b"S");
    assert!(c.p.gave_up());
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage tls hello");
    assert_eq!(c.stats, ParseStats::default());
    assert!(c.out.done.is_empty());
}

#[test]
fn cancel_request_is_no_operation() {
    let mut c = Conn::client();
    let mut m = 16u32.to_be_bytes().to_vec();
    m.extend(80_877_102u32.to_be_bytes());
    m.extend([0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    assert_eq!(
        PostgresParser::detect(&Segment {
            direction: OUT,
            data: &m,
            total_len: 16,
            ts_ns: 0,
            tid: 1
        }),
        Detected::Side(Side::Client)
    );
    c.send(&m);
    c.close();
    assert!(c.out.done.is_empty());
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn named_statement_prepared_once_executed_three_times() {
    let mut c = connected(Some("bench"));
    let sql = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
    c.send(&cat(&[
        parse("P0_1", sql),
        bind("", "P0_1", &["5", "77"]),
        describe_portal(""),
        execute(""),
        sync(),
    ]));
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        msg(b'n', b""),
        complete("UPDATE 1"),
        ready(),
    ]));
    for aid in ["78", "79"] {
        c.send(&cat(&[bind("", "P0_1", &["-3", aid]), execute(""), sync()]));
        c.recv(&cat(&[bind_complete(), complete("UPDATE 1"), ready()]));
    }
    let want = op(
        "UPDATE",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        Some("pgbench_accounts"),
        None,
    );
    assert_eq!(c.summary(), vec![want.clone(), want.clone(), want]);
    assert_eq!(c.seqs(), vec![0, 1, 2]);
    // Execute's write to the CommandComplete's read.
    assert_eq!(c.times(), vec![(1205, 1305), (1405, 1505), (1605, 1705)]);
    assert_eq!(c.stats, ParseStats::default());
    assert_eq!(c.p.named.statements.len(), 1);
}

#[test]
fn unnamed_statements_replace_each_other() {
    let mut c = connected(Some("shop"));
    c.send(&cat(&[
        parse("", "SELECT * FROM a WHERE x = $1"),
        bind("", "", &["1"]),
        execute(""),
        sync(),
    ]));
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        complete("SELECT 0"),
        ready(),
    ]));
    c.send(&cat(&[
        parse("", "DELETE FROM b WHERE y = 'k'"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]));
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        complete("DELETE 3"),
        ready(),
    ]));
    // A Parse/Bind with no Execute is no operation.
    c.send(&cat(&[parse("", "SELECT 1"), bind("", "", &[]), sync()]));
    c.recv(&cat(&[parse_complete(), bind_complete(), ready()]));
    assert_eq!(
        c.summary(),
        vec![
            op("SELECT", "SELECT * FROM a WHERE x = $1", Some("a"), None),
            op("DELETE", "DELETE FROM b WHERE y = ?", Some("b"), None),
        ]
    );
    assert_eq!(c.stats, ParseStats::default());
    assert_eq!(c.p.named.statements.len(), 1);
}

#[test]
fn two_executes_before_one_sync() {
    let mut c = connected(Some("shop"));
    c.send(&cat(&[
        parse("s1", "INSERT INTO t (a) VALUES ($1)"),
        parse("s2", "SELECT a FROM t"),
        bind("", "s1", &["1"]),
        execute(""),
        bind("p2", "s2", &[]),
        execute("p2"),
        sync(),
    ]));
    c.recv(&cat(&[
        parse_complete(),
        parse_complete(),
        bind_complete(),
        complete("INSERT 0 1"),
    ]));
    c.recv(&cat(&[
        bind_complete(),
        data_row(&[b"1"]),
        complete("SELECT 1"),
        ready(),
    ]));
    assert_eq!(
        c.summary(),
        vec![
            op("INSERT", "INSERT INTO t (a) VALUES ($1)", Some("t"), None),
            op("SELECT", "SELECT a FROM t", Some("t"), None),
        ]
    );
    assert_eq!(c.times(), vec![(1205, 1305), (1205, 1405)]);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn pipelined_batch_of_three_sync_groups() {
    let mut c = connected(Some("shop"));
    let mut w = Vec::new();
    for (i, sql) in ["SELECT 1", "UPDATE t SET a = 2", "DELETE FROM t"]
        .iter()
        .enumerate()
    {
        w.extend(parse("", sql));
        w.extend(bind("", "", &[]));
        w.extend(execute(""));
        w.extend(sync());
        let _ = i;
    }
    c.send(&w);
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        complete("SELECT 1"),
        ready(),
        parse_complete(),
    ]));
    c.recv(&cat(&[bind_complete(), complete("UPDATE 4"), ready()]));
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        complete("DELETE 4"),
        ready(),
    ]));
    assert_eq!(
        c.summary(),
        vec![
            op("SELECT", "SELECT ?", None, None),
            op("UPDATE", "UPDATE t SET a = ?", Some("t"), None),
            op("DELETE", "DELETE FROM t", Some("t"), None),
        ]
    );
    assert_eq!(c.times(), vec![(1205, 1305), (1205, 1405), (1205, 1505)]);
    assert_eq!(c.seqs(), vec![0, 1, 2]);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn error_mid_batch_skips_rest_of_group() {
    let mut c = connected(Some("shop"));
    c.send(&cat(&[
        parse("", "SELECT 1"),
        bind("", "", &[]),
        execute(""),
        parse("", "SELECT * FROM nope"),
        bind("", "", &[]),
        execute(""),
        parse("", "SELECT 3"),
        bind("", "", &[]),
        execute(""),
        sync(),
        parse("", "SELECT 4"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]));
    // The second Parse fails: the error answers its Execute; the third gets nothing.
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        complete("SELECT 1"),
        error("42P01"),
        ready(),
    ]));
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        complete("SELECT 1"),
        ready(),
    ]));
    assert_eq!(
        c.summary(),
        vec![
            op("SELECT", "SELECT ?", None, None),
            op("SELECT", "SELECT * FROM nope", Some("nope"), Some("42P01")),
            op("SELECT", "SELECT ?", None, None),
        ]
    );
    assert_eq!(c.seqs(), vec![0, 1, 3]);
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
    assert_eq!(c.stats.unmatched_responses, 0);
}

#[test]
fn copy_from_stdin() {
    let mut c = connected(Some("shop"));
    c.send(&query("COPY items (a, b) FROM STDIN"));
    c.recv(&msg(b'G', &[0, 0, 2, 0, 0, 0, 0]));
    c.send(&cat(&[
        msg(b'd', b"1\tx\n2\ty\n"),
        msg(b'd', b"3\tz\n"),
        msg(b'c', b""),
    ]));
    c.recv(&cat(&[complete("COPY 3"), ready()]));
    assert_eq!(
        c.summary(),
        vec![op(
            "COPY",
            "COPY items (a, b) FROM STDIN",
            Some("items"),
            None
        )]
    );
    assert_eq!(c.times(), vec![(1205, 1505)]);
    // CopyFail: the server answers with an error.
    c.send(&query("COPY items FROM STDIN"));
    c.recv(&msg(b'G', &[0, 0, 0]));
    c.send(&msg(b'f', &z(b"client gave up")));
    c.recv(&cat(&[error("57014"), ready()]));
    assert_eq!(
        c.summary()[1],
        op(
            "COPY",
            "COPY items FROM STDIN",
            Some("items"),
            Some("57014")
        )
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn copy_to_stdout() {
    let mut c = connected(Some("shop"));
    c.send(&query("COPY items TO STDOUT"));
    c.recv(&cat(&[
        msg(b'H', &[0, 0, 1, 0, 0]),
        msg(b'd', b"1\tx\n"),
        msg(b'd', b"2\ty\n"),
    ]));
    c.recv(&cat(&[
        msg(b'd', b"3\tz\n"),
        msg(b'c', b""),
        complete("COPY 3"),
        ready(),
    ]));
    assert_eq!(
        c.summary(),
        vec![op("COPY", "COPY items TO STDOUT", Some("items"), None)]
    );
    assert_eq!(c.stats, ParseStats::default());
}

mod robust;

/// Records lost (`on_gap`) in the middle of a result: the rest is skipped, the query in
/// flight written off, and an extended-protocol group after the gap pairs with its own
/// response (its Sync does not end its Execute).
#[test]
fn gap_drops_the_stale_query() {
    let mut c = connected(Some("shop"));
    c.send(&query("SELECT id FROM users")); // 1205
    c.recv(&cat(&[row_desc(&["id"]), data_row(&[b"7"])])); // 1305
    c.p.on_gap(&mut c.stats);
    c.recv(&b"more row bytes"[..]); // 1405
    c.send(&cat(&[
        parse("", "SELECT 1"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ])); // 1505
    c.recv(&cat(&[
        parse_complete(),
        bind_complete(),
        data_row(&[b"1"]),
        complete("SELECT 1"),
        ready(),
    ])); // 1605
    assert_eq!(c.summary(), vec![op("SELECT", "SELECT ?", None, None)]);
    assert_eq!(c.times(), vec![(1505, 1605)]);
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.unmatched_responses, 0);
}
