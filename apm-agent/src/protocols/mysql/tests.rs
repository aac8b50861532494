//! Byte-stream tests: MySQL wire bytes (built exactly as servers and clients send them) fed
//! as syscall-sized segments, checking the exact operations that come out and the counters.
use super::*;

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

const CAPS_BASE: u32 = 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x0020_0000 | 0x0001_0000;
const DEPRECATE: u32 = packets::CLIENT_DEPRECATE_EOF;
const WITH_DB: u32 = packets::CLIENT_CONNECT_WITH_DB;

struct Conn {
    p: MysqlParser,
    out: ParserOut,
    stats: ParseStats,
    t: u64,
    /// Direction of commands from the observed process's point of view.
    cmd: Direction,
    resp: Direction,
}

impl Conn {
    fn new(side: Side) -> Self {
        let (cmd, resp) = match side {
            Side::Client => (OUT, IN),
            Side::Server => (IN, OUT),
        };
        Self {
            p: MysqlParser::new(side),
            out: ParserOut::default(),
            stats: ParseStats::default(),
            t: 1000,
            cmd,
            resp,
        }
    }

    fn seg_total(&mut self, direction: Direction, data: &[u8], total: u64) {
        crate::fuzzing::seeds::record("mysql", direction, data, total);
        let seg = Segment {
            direction,
            data,
            total_len: total,
            ts_ns: self.t + 5,
            tid: 7,
        };
        self.p.on_segment(&seg, &mut self.out, &mut self.stats);
        self.t += 100;
    }

    fn send(&mut self, data: &[u8]) {
        self.seg_total(self.cmd, data, data.len() as u64);
    }

    fn reply(&mut self, data: &[u8]) {
        self.seg_total(self.resp, data, data.len() as u64);
    }

    fn db(&self, i: usize) -> &DbInfo {
        self.out
            .done
            .get(i)
            .and_then(Request::db)
            .expect("db request")
    }

    /// (operation, query, status_code) of every request so far.
    fn summary(&self) -> Vec<(String, String, Option<String>)> {
        self.out
            .done
            .iter()
            .filter_map(Request::db)
            .map(|d| (d.operation.clone(), d.query.clone(), d.status_code.clone()))
            .collect()
    }
}

fn s(op: &str, q: &str, code: Option<&str>) -> (String, String, Option<String>) {
    (op.to_owned(), q.to_owned(), code.map(str::to_owned))
}

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = len.to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn greeting(version: &str, caps: u32) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(version.as_bytes());
    p.push(0);
    p.extend_from_slice(&42u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh\0");
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
    pkt(0, &p)
}

fn handshake_response(caps: u32, db: Option<&str>) -> Vec<u8> {
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(b"app\0");
    p.push(20);
    p.extend_from_slice(b"SECRET-AUTH-DATA-20b");
    if let Some(db) = db {
        p.extend_from_slice(db.as_bytes());
        p.push(0);
    }
    p.extend_from_slice(b"mysql_native_password\0");
    pkt(1, &p)
}

fn ok(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0, 1, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    pkt(seq, &p)
}

/// OK packet with the 0xFE header that ends a result set under CLIENT_DEPRECATE_EOF.
fn ok_fe(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    pkt(seq, &p)
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    pkt(seq, &p)
}

fn err(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(msg.as_bytes());
    pkt(seq, &p)
}

fn lenenc_str(v: &mut Vec<u8>, s: &[u8]) {
    v.push(s.len() as u8);
    v.extend_from_slice(s);
}

fn coldef(seq: u8, name: &str) -> Vec<u8> {
    let mut p = Vec::new();
    for part in [
        &b"def"[..],
        b"shop",
        b"users",
        b"users",
        name.as_bytes(),
        name.as_bytes(),
    ] {
        lenenc_str(&mut p, part);
    }
    p.extend_from_slice(&[0x0c, 45, 0, 0, 0, 1, 0, 0, 0xfd, 0, 0, 0, 0]);
    pkt(seq, &p)
}

fn row(seq: u8, cells: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    for c in cells {
        lenenc_str(&mut p, c);
    }
    pkt(seq, &p)
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![0x03];
    p.extend_from_slice(sql.as_bytes());
    pkt(0, &p)
}

/// A two-column text result set answering a command of sequence 0.
fn result_set(deprecate_eof: bool, rows: usize) -> Vec<u8> {
    let mut v = vec![pkt(1, &[2]), coldef(2, "id"), coldef(3, "name")];
    let mut seq = 4u8;
    if !deprecate_eof {
        v.push(eof(seq, 2));
        seq += 1;
    }
    for i in 0..rows {
        v.push(row(seq, &[i.to_string().as_bytes(), b"alice"]));
        seq += 1;
    }
    v.push(if deprecate_eof {
        ok_fe(seq, 2)
    } else {
        eof(seq, 2)
    });
    cat(&v)
}

/// Client connected through the handshake with `caps` and database `shop` on MariaDB.
fn connected(side: Side, caps: u32) -> Conn {
    let mut c = Conn::new(side);
    c.reply(&greeting("5.5.5-10.11.6-MariaDB-0+deb12u1", 0xffff_ffff));
    c.send(&handshake_response(caps | WITH_DB, Some("shop")));
    c.reply(&ok(2, 2));
    c
}

#[test]
fn mariadb_handshake_with_database_then_query() {
    let mut c = connected(Side::Client, CAPS_BASE);
    assert!(c.out.done.is_empty(), "the handshake is not an operation");
    c.send(&query("SELECT id, name FROM users WHERE email = 'a@b.c'")); // 1305
    c.reply(&result_set(false, 3)); // 1405
    assert_eq!(
        c.summary(),
        vec![s(
            "SELECT",
            "SELECT id, name FROM users WHERE email = ?",
            None
        )]
    );
    let r = &c.out.done[0];
    assert_eq!((r.start_ns, r.end_ns, r.seq, r.tid), (1305, 1405, 0, 7));
    assert_eq!(r.protocol, Protocol::Mysql);
    assert_eq!(r.side, Side::Client);
    assert_eq!(r.trust, Trust::default());
    let d = c.db(0);
    assert_eq!(d.system, DbSystem::Mariadb);
    assert_eq!(d.namespace.as_deref(), Some("shop"));
    assert_eq!(d.collection.as_deref(), Some("users"));
    assert!(!d.error);
    assert_eq!(c.out.started.len(), 1);
    assert_eq!(c.out.started[0].start_ns, 1305);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn mysql_greeting_and_deprecate_eof_result_set() {
    let mut c = Conn::new(Side::Client);
    c.reply(&greeting("8.0.36", 0xffff_ffff));
    c.send(&handshake_response(CAPS_BASE | DEPRECATE, None));
    c.reply(&ok(2, 2));
    c.send(&query("select * from users"));
    c.reply(&result_set(true, 2));
    c.send(&query("SELECT 1"));
    c.reply(&result_set(true, 0));
    assert_eq!(
        c.summary(),
        vec![
            s("SELECT", "select * from users", None),
            s("SELECT", "SELECT ?", None)
        ]
    );
    assert_eq!(c.db(0).system, DbSystem::Mysql);
    assert_eq!(c.db(0).namespace, None);
    assert_eq!(c.out.done[1].seq, 1);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn auth_switch_exchange() {
    let mut c = Conn::new(Side::Client);
    c.reply(&greeting("8.0.36", 0xffff_ffff));
    c.send(&handshake_response(
        CAPS_BASE | DEPRECATE | WITH_DB,
        Some("shop"),
    ));
    let mut switch = vec![0xfe];
    switch.extend_from_slice(b"caching_sha2_password\0nonce-nonce-nonce-nonc\0");
    c.reply(&pkt(2, &switch));
    c.send(&pkt(3, b"scrambled-password-32-bytes-long"));
    c.reply(&pkt(4, &[0x01, 0x03])); // AuthMoreData: fast auth ok
    c.reply(&ok(5, 2));
    assert!(c.out.done.is_empty());
    c.send(&query(
        "INSERT INTO orders (a, b) VALUES (1, 'x'), (2, 'y')",
    ));
    c.reply(&ok(1, 2));
    assert_eq!(
        c.summary(),
        vec![s("INSERT", "INSERT INTO orders (a, b) VALUES (?)", None)]
    );
    assert_eq!(c.db(0).collection.as_deref(), Some("orders"));
    assert_eq!(c.db(0).namespace.as_deref(), Some("shop"));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn failing_query_reports_error_number() {
    let mut c = connected(Side::Client, CAPS_BASE);
    c.send(&query("SELECT * FROM missing WHERE id = 5"));
    c.reply(&err(1, 1146, "42S02", "Table 'shop.missing' doesn't exist"));
    assert_eq!(
        c.summary(),
        vec![s(
            "SELECT",
            "SELECT * FROM missing WHERE id = ?",
            Some("1146")
        )]
    );
    assert!(c.db(0).error);
    assert_eq!(c.db(0).collection.as_deref(), Some("missing"));
}

#[test]
fn prepared_statement_prepare_execute_close() {
    let mut c = connected(Side::Client, CAPS_BASE);
    let mut prep = vec![0x16];
    prep.extend_from_slice(b"SELECT name FROM users WHERE id = ?");
    c.send(&pkt(0, &prep));
    // stmt 9, 1 column, 1 param; defs each followed by EOF (no DEPRECATE_EOF).
    let mut prep_ok = vec![0x00];
    prep_ok.extend_from_slice(&9u32.to_le_bytes());
    prep_ok.extend_from_slice(&1u16.to_le_bytes());
    prep_ok.extend_from_slice(&1u16.to_le_bytes());
    prep_ok.extend_from_slice(&[0, 0, 0]);
    c.reply(&cat(&[
        pkt(1, &prep_ok),
        coldef(2, "?"),
        eof(3, 2),
        coldef(4, "name"),
        eof(5, 2),
    ]));
    for _ in 0..2 {
        let mut exec = vec![0x17];
        exec.extend_from_slice(&9u32.to_le_bytes());
        exec.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 3]);
        exec.extend_from_slice(&7u32.to_le_bytes());
        c.send(&pkt(0, &exec));
        c.reply(&cat(&[
            pkt(1, &[1]),
            coldef(2, "name"),
            eof(3, 2),
            pkt(4, b"\x00\x00\x05alice"),
            eof(5, 2),
        ]));
    }
    let mut close = vec![0x19];
    close.extend_from_slice(&9u32.to_le_bytes());
    c.send(&pkt(0, &close));
    let q = "SELECT name FROM users WHERE id = ?";
    assert_eq!(
        c.summary(),
        vec![
            s("PREPARE", q, None),
            s("SELECT", q, None),
            s("SELECT", q, None)
        ]
    );
    assert_eq!(
        c.out.done.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        c.p.0.statements.is_empty(),
        "closed statements are forgotten"
    );
    assert_eq!(c.out.started.len(), 3, "CLOSE is not an operation");
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn prepare_with_deprecate_eof_and_unknown_statement() {
    let mut c = connected(Side::Client, CAPS_BASE | DEPRECATE);
    let mut prep = vec![0x16];
    prep.extend_from_slice(b"UPDATE users SET name = ? WHERE id = ?");
    c.send(&pkt(0, &prep));
    let mut prep_ok = vec![0x00];
    prep_ok.extend_from_slice(&3u32.to_le_bytes());
    prep_ok.extend_from_slice(&0u16.to_le_bytes());
    prep_ok.extend_from_slice(&2u16.to_le_bytes());
    prep_ok.extend_from_slice(&[0, 0, 0]);
    c.reply(&cat(&[pkt(1, &prep_ok), coldef(2, "?"), coldef(3, "?")]));
    let mut exec = vec![0x17];
    exec.extend_from_slice(&77u32.to_le_bytes());
    exec.extend_from_slice(&[0, 1, 0, 0, 0]);
    c.send(&pkt(0, &exec));
    c.reply(&ok(1, 2));
    assert_eq!(
        c.summary(),
        vec![
            s("PREPARE", "UPDATE users SET name = ? WHERE id = ?", None),
            s("EXECUTE", "", None)
        ]
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn init_db_and_use_set_the_namespace() {
    let mut c = connected(Side::Client, CAPS_BASE);
    c.send(&pkt(0, b"\x02analytics"));
    c.reply(&ok(1, 2));
    c.send(&query("SELECT 1"));
    c.reply(&result_set(false, 1));
    c.send(&query("USE `billing`"));
    c.reply(&ok(1, 2));
    c.send(&query("USE nowhere"));
    c.reply(&err(1, 1049, "42000", "Unknown database 'nowhere'"));
    c.send(&pkt(0, &[0x0e]));
    c.reply(&ok(1, 2));
    assert_eq!(
        c.summary(),
        vec![
            s("INIT_DB", "", None),
            s("SELECT", "SELECT ?", None),
            s("USE", "USE `billing`", None),
            s("USE", "USE nowhere", Some("1049")),
            s("PING", "", None),
        ]
    );
    let ns: Vec<_> = (0..5).map(|i| c.db(i).namespace.clone()).collect();
    assert_eq!(
        ns,
        vec![
            Some("analytics".to_owned()),
            Some("analytics".to_owned()),
            Some("billing".to_owned()),
            Some("billing".to_owned()),
            Some("billing".to_owned()),
        ]
    );
}

#[test]
fn multi_results_end_with_the_last_one() {
    let mut c = connected(Side::Client, CAPS_BASE);
    c.send(&query("CALL report(1)"));
    // A result set whose final EOF says more results follow, then the CALL's own OK.
    let mut first = result_set(false, 1);
    let n = first.len();
    first[n - 2] |= packets::SERVER_MORE_RESULTS_EXISTS as u8;
    c.reply(&first);
    assert!(c.out.done.is_empty(), "more results follow");
    c.reply(&ok(7, 2));
    assert_eq!(c.summary(), vec![s("CALL", "CALL report(?)", None)]);
    assert_eq!(c.out.done[0].end_ns, 1505);
    // Multi-statement: OK with MORE_RESULTS, then an ERR ends it.
    c.send(&query("INSERT INTO t VALUES (1); SELECT * FROM nope"));
    c.reply(&cat(&[ok(1, 0x000a), err(2, 1146, "42S02", "no")]));
    assert_eq!(c.db(1).status_code.as_deref(), Some("1146"));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn rows_past_the_capture_are_skipped_by_count() {
    let mut c = connected(Side::Client, CAPS_BASE | DEPRECATE);
    c.send(&query("SELECT * FROM users"));
    let big = vec![b'x'; 200];
    let stream = cat(&[
        pkt(1, &[2]),
        coldef(2, "id"),
        coldef(3, "name"),
        row(4, &[b"1", &big]),
        ok_fe(5, 2),
    ]);
    // The capture ends inside the big row; the rest of the row is in the next read.
    let cut = stream.len() - 150;
    let split = cut - 40;
    c.seg_total(IN, &stream[..split], cut as u64);
    c.reply(&stream[cut..]);
    assert_eq!(c.summary(), vec![s("SELECT", "SELECT * FROM users", None)]);
    assert_eq!(c.out.done[0].trust, Trust::default());
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn lost_response_framing_infers_the_end() {
    let mut c = connected(Side::Client, CAPS_BASE);
    c.send(&query("SELECT * FROM users"));
    let stream = result_set(false, 50);
    // One read of the whole result set, only 60 bytes captured: framing is lost.
    c.seg_total(IN, &stream[..60], stream.len() as u64); // 1405
    assert!(c.out.done.is_empty());
    c.send(&query("SELECT 2"));
    assert_eq!(c.out.done.len(), 1);
    assert!(c.out.done[0].trust.contains(Trust::END_INFERRED));
    assert_eq!(c.out.done[0].end_ns, 1405);
    c.reply(&ok(1, 2));
    assert_eq!(c.out.done.len(), 2);
    assert_eq!(c.out.done[1].trust, Trust::default());
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn multi_packet_query_is_reassembled() {
    let mut c = connected(Side::Client, CAPS_BASE);
    // A payload of exactly 0xFFFFFF bytes continues in the next packet.
    let mut payload = vec![0x03];
    payload.extend_from_slice(b"INSERT INTO blobs VALUES ('");
    payload.resize(packets::MAX_PACKET as usize, b'a');
    let mut stream = pkt(0, &payload);
    stream.extend_from_slice(&pkt(1, b"tail')"));
    // Written at once, captured 4096 bytes.
    c.seg_total(OUT, &stream[..4096], stream.len() as u64);
    c.reply(&ok(2, 2));
    // Only the captured start of the text is normalized: the string runs to its end.
    assert_eq!(
        c.summary(),
        vec![s("INSERT", "INSERT INTO blobs VALUES (?", None)]
    );
    assert!(c.out.done[0].trust.contains(Trust::HEAD_TRUNCATED));
    // The same split over several writes, with a header cut in two.
    let first_end = packets::MAX_PACKET as usize + 4;
    c.seg_total(OUT, &stream[..4096], 1 << 20);
    c.seg_total(OUT, &[], (first_end - (1 << 20)) as u64);
    c.send(&stream[first_end..first_end + 2]);
    c.send(&stream[first_end + 2..]);
    c.reply(&ok(2, 2));
    assert_eq!(c.out.done.len(), 2);
    assert_eq!(c.out.done[1].seq, 1);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn mid_stream_start_resyncs() {
    let mut c = Conn::new(Side::Client);
    // A response whose command was sent before the agent attached.
    c.reply(&result_set(false, 2));
    assert_eq!(c.stats.unmatched_responses, 1);
    c.send(&query("SELECT * FROM t WHERE a = 1"));
    c.reply(&result_set(false, 1));
    c.send(&query("DELETE FROM t WHERE a = 2"));
    c.reply(&ok(1, 2));
    assert_eq!(
        c.summary(),
        vec![
            s("SELECT", "SELECT * FROM t WHERE a = ?", None),
            s("DELETE", "DELETE FROM t WHERE a = ?", None)
        ]
    );
    assert_eq!(c.db(0).system, DbSystem::Mysql);
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn ssl_request_gives_up_quietly() {
    let mut c = Conn::new(Side::Client);
    c.reply(&greeting("8.0.36", 0xffff_ffff));
    let mut p = (CAPS_BASE | packets::CLIENT_SSL).to_le_bytes().to_vec();
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    c.send(&pkt(1, &p));
    assert!(c.p.gave_up());
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn garbage_gives_up() {
    let mut c = connected(Side::Client, CAPS_BASE);
    for _ in 0..5 {
        c.send(b"\x05\x00\x00\x00\xee\xee\xee\xee\xee");
        c.reply(b"\x02\x00\x00\x07zz");
    }
    assert!(c.p.gave_up());
    assert!(c.stats.parse_errors >= 1);
    c.p.on_close(c.t, &mut c.out, &mut c.stats);
}

#[test]
fn server_side_reads_commands_and_writes_responses() {
    let mut c = connected(Side::Server, CAPS_BASE | DEPRECATE);
    c.send(&query("SELECT * FROM users WHERE id = 42"));
    assert_eq!(c.cmd, IN);
    c.reply(&result_set(true, 1));
    c.send(&query("UPDATE users SET pw = 'hunter2' WHERE id = 42"));
    c.reply(&ok(1, 2));
    assert_eq!(
        c.summary(),
        vec![
            s("SELECT", "SELECT * FROM users WHERE id = ?", None),
            s("UPDATE", "UPDATE users SET pw = ? WHERE id = ?", None)
        ]
    );
    assert!(c.out.done.iter().all(|r| r.side == Side::Server));
    assert_eq!((c.out.done[0].start_ns, c.out.done[0].end_ns), (1305, 1405));
    assert_eq!(c.db(0).system, DbSystem::Mariadb);
}

#[test]
fn literals_never_leave_the_parser() {
    let mut c = connected(Side::Client, CAPS_BASE);
    c.send(&query(
        "INSERT INTO cards (num, owner) VALUES ('4111111111111111', \"bob@x.org\") -- x",
    ));
    c.reply(&ok(1, 2));
    let d = c.db(0);
    assert_eq!(d.query, "INSERT INTO cards (num, owner) VALUES (?)");
    let all = format!("{:?}", c.out.done);
    assert!(!all.contains("4111") && !all.contains("bob@") && !all.contains("SECRET"));
}

#[test]
fn split_byte_by_byte_and_close_counts_pending() {
    let mut c = Conn::new(Side::Client);
    let hs = cat(&[greeting("8.0.36", 0xffff_ffff)]);
    for b in &hs {
        c.reply(std::slice::from_ref(b));
    }
    for b in &handshake_response(CAPS_BASE, None) {
        c.send(std::slice::from_ref(b));
    }
    c.reply(&ok(2, 2));
    let q = query("SELECT 1");
    for b in &q {
        c.send(std::slice::from_ref(b));
    }
    let start = c.out.started[0].start_ns;
    for b in &result_set(false, 1) {
        c.reply(std::slice::from_ref(b));
    }
    assert_eq!(c.summary(), vec![s("SELECT", "SELECT ?", None)]);
    assert_eq!(c.out.done[0].start_ns, start);
    c.send(&query("SELECT 2"));
    c.p.on_close(c.t, &mut c.out, &mut c.stats);
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn statement_table_is_bounded() {
    let mut c = connected(Side::Client, CAPS_BASE | DEPRECATE);
    for id in 0..(MAX_STATEMENTS as u32 + 10) {
        c.send(&pkt(0, b"\x16SELECT 1"));
        let mut prep_ok = vec![0x00];
        prep_ok.extend_from_slice(&id.to_le_bytes());
        prep_ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        c.reply(&pkt(1, &prep_ok));
    }
    assert_eq!(c.p.0.statements.len(), MAX_STATEMENTS);
    assert_eq!(c.stats.pipeline_overflow, 10);
}

#[test]
fn detection() {
    let seg = |direction, data: &[u8]| {
        MysqlParser::detect(&Segment {
            direction,
            data,
            total_len: data.len() as u64,
            ts_ns: 0,
            tid: 0,
        })
    };
    let server = Detected::Side(Side::Server);
    let client = Detected::Side(Side::Client);
    let g = greeting("5.5.5-10.11.6-MariaDB", 0xffff);
    assert_eq!(seg(OUT, &g), server);
    assert_eq!(seg(IN, &g), client);
    let q = query("SELECT 1");
    assert_eq!(seg(OUT, &q), client);
    assert_eq!(seg(IN, &q), server);
    assert_eq!(seg(OUT, &pkt(0, &[0x0e])), client);
    assert_eq!(seg(OUT, &pkt(0, b"\x16SELECT ?")), client);
    let mut exec = vec![0x17];
    exec.extend_from_slice(&[9, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(seg(OUT, &pkt(0, &exec)), client);
    // Not MySQL.
    for other in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"*3\r\n$3\r\nSET\r\n",
        b"get foo\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x00\x00\x00\x4f\x00\x03\x00\x00user\x00app\x00",
        b"Q\x00\x00\x00\x16select 1 from t;\x00",
        b"\x16\x03\x01\x00\xa5\x01",
        b"",
    ] {
        assert_eq!(seg(IN, other), Detected::No, "{other:?}");
        assert_eq!(seg(OUT, other), Detected::No, "{other:?}");
    }
    // A query whose length does not fill the segment.
    let mut two = query("SELECT 1");
    two.extend_from_slice(b"xx");
    assert_eq!(seg(OUT, &two), Detected::No);
    assert_eq!(seg(IN, b"\x4a\x00"), Detected::Undecided);
    assert_eq!(seg(IN, b"\x4a\x00\x00\x00"), Detected::Undecided);
}

mod fuzz;

/// Records lost (`on_gap`) in the middle of a result set: the rest is skipped, the query in
/// flight written off, the next query pairs with its own response.
#[test]
fn gap_drops_the_stale_command() {
    let mut c = connected(Side::Client, CAPS_BASE);
    c.send(&query("SELECT id, name FROM users")); // 1305
    let rs = result_set(false, 3);
    c.reply(&rs[..rs.len() / 2]); // 1405
    c.p.on_gap(&mut c.stats);
    c.reply(&rs[rs.len() / 2 + 3..]); // 1505
    c.send(&query("SELECT 1")); // 1605
    c.reply(&ok(1, 2)); // 1705
    assert_eq!(c.summary(), vec![s("SELECT", "SELECT ?", None)]);
    let r = &c.out.done[0];
    assert_eq!((r.start_ns, r.end_ns), (1605, 1705));
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
}
