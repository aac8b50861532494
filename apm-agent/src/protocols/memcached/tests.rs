//! Byte-stream tests: each feeds memcached traffic (bytes as memcached 1.6 and its clients send
//! them) as syscall-sized segments and checks the exact requests that come out and the counters.
use proptest::prelude::*;

use super::*;

/// One connection under test, with a fake clock: each segment returns at `t + 5`, then the
/// clock moves on by 100.
struct Conn {
    p: MemcachedParser,
    out: ParserOut,
    stats: ParseStats,
    t: u64,
}

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

impl Conn {
    fn new(side: Side) -> Self {
        Self {
            p: MemcachedParser::new(side),
            out: ParserOut::default(),
            stats: ParseStats::default(),
            t: 1000,
        }
    }

    fn client() -> Self {
        Self::new(Side::Client)
    }

    fn server() -> Self {
        Self::new(Side::Server)
    }

    fn seg_total(&mut self, direction: Direction, data: &[u8], total: u64) {
        crate::fuzzing::seeds::record("memcached", direction, data, total);
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

    /// One segment per byte.
    fn bytes(&mut self, direction: Direction, data: &[u8]) {
        for b in data.chunks(1) {
            self.seg(direction, b);
        }
    }

    fn close(&mut self) {
        let t = self.t;
        self.p.on_close(t, &mut self.out, &mut self.stats);
    }

    /// (operation, query, status code) of every request so far.
    fn summary(&self) -> Vec<(String, String, Option<String>)> {
        self.out
            .done
            .iter()
            .map(|r| {
                let d = r.db().expect("db");
                assert_eq!(d.system, DbSystem::Memcached);
                assert_eq!(d.error, d.status_code.is_some());
                assert_eq!(
                    (d.collection.as_deref(), d.namespace.as_deref()),
                    (None, None)
                );
                assert_eq!(r.protocol, Protocol::Memcached);
                (d.operation.clone(), d.query.clone(), d.status_code.clone())
            })
            .collect()
    }

    /// (seq, start, end) of every request so far.
    fn times(&self) -> Vec<(u64, u64, u64)> {
        self.out
            .done
            .iter()
            .map(|r| (r.seq, r.start_ns, r.end_ns))
            .collect()
    }
}

fn ok(op: &str, query: &str) -> (String, String, Option<String>) {
    (op.to_owned(), query.to_owned(), None)
}

fn err(op: &str, query: &str, code: &str) -> (String, String, Option<String>) {
    (op.to_owned(), query.to_owned(), Some(code.to_owned()))
}

#[test]
fn set_get_hit_and_miss() {
    let mut c = Conn::client();
    c.seg(OUT, b"set user:42 0 0 5\r\nhello\r\n"); // 1005
    c.seg(IN, b"STORED\r\n"); // 1105
    c.seg(OUT, b"get user:42\r\n"); // 1205
    c.seg(IN, b"VALUE user:42 0 5\r\nhello\r\nEND\r\n"); // 1305
    c.seg(OUT, b"get user:43\r\n"); // 1405
    c.seg(IN, b"END\r\n"); // 1505
    assert_eq!(
        c.summary(),
        vec![ok("set", "set ?"), ok("get", "get ?"), ok("get", "get ?")]
    );
    assert_eq!(
        c.times(),
        vec![(0, 1005, 1105), (1, 1205, 1305), (2, 1405, 1505)]
    );
    let r = &c.out.done[0];
    assert_eq!(
        (r.side, r.tid, r.trust),
        (Side::Client, 42, Trust::default())
    );
    assert_eq!(c.out.started.len(), 3);
    assert_eq!(
        c.out.started[1],
        Started {
            side: Side::Client,
            seq: 1,
            tid: 42,
            start_ns: 1205,
            traceparent: None
        }
    );
    assert_eq!(c.stats, ParseStats::default());
    c.close();
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn multi_get_three_keys_two_hits() {
    let mut c = Conn::client();
    c.seg(OUT, b"get a b n\r\n");
    c.seg(IN, b"VALUE a 0 1\r\nx\r\nVALUE n 0 2\r\n10\r\n");
    assert!(c.out.done.is_empty());
    c.seg(IN, b"END\r\n");
    assert_eq!(c.summary(), vec![ok("get", "get ?")]);
    assert_eq!(c.times(), vec![(0, 1005, 1205)]);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn gets_then_cas_exists() {
    let mut c = Conn::client();
    c.seg(OUT, b"gets a\r\n");
    c.seg(IN, b"VALUE a 0 1 1\r\nx\r\nEND\r\n");
    c.seg(OUT, b"cas a 0 0 1 999\r\ny\r\n");
    c.seg(IN, b"EXISTS\r\n");
    c.seg(OUT, b"cas a 0 0 1 1\r\ny\r\n");
    c.seg(IN, b"STORED\r\n");
    assert_eq!(
        c.summary(),
        vec![ok("gets", "gets ?"), ok("cas", "cas ?"), ok("cas", "cas ?")]
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn delete_incr_decr_touch() {
    let mut c = Conn::client();
    // Pipelined in one write, answered in one read (as memcached 1.6.18 does).
    c.seg(
        OUT,
        b"touch a 10\r\ndelete a\r\ndelete a\r\ndecr n 1\r\nincr n 5\r\n",
    );
    c.seg(IN, b"TOUCHED\r\nDELETED\r\nNOT_FOUND\r\n14\r\n19\r\n");
    assert_eq!(
        c.summary(),
        vec![
            ok("touch", "touch ?"),
            ok("delete", "delete ?"),
            ok("delete", "delete ?"),
            ok("decr", "decr ?"),
            ok("incr", "incr ?"),
        ]
    );
    assert_eq!(
        c.times(),
        vec![
            (0, 1005, 1105),
            (1, 1005, 1105),
            (2, 1005, 1105),
            (3, 1005, 1105),
            (4, 1005, 1105)
        ]
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn noreply_completes_at_once_and_does_not_steal_a_response() {
    let mut c = Conn::client();
    c.seg(OUT, b"set q 0 0 1 noreply\r\nz\r\nget q\r\n"); // 1005
    assert_eq!(c.summary(), vec![ok("set", "set ?")]);
    assert_eq!(c.times(), vec![(0, 1005, 1005)]);
    c.seg(IN, b"VALUE q 0 1\r\nz\r\nEND\r\n"); // 1105
    c.seg(OUT, b"delete q noreply\r\n"); // 1205
    c.seg(OUT, b"quit\r\n"); // 1305
    assert_eq!(
        c.summary(),
        vec![
            ok("set", "set ?"),
            ok("get", "get ?"),
            ok("delete", "delete ?"),
            ok("quit", "quit"),
        ]
    );
    assert_eq!(
        c.times(),
        vec![
            (0, 1005, 1005),
            (1, 1005, 1105),
            (2, 1205, 1205),
            (3, 1305, 1305)
        ]
    );
    c.close();
    assert_eq!(c.stats, ParseStats::default());
}

const BATCH: &[u8] =
    b"set k1 0 0 3\r\nabc\r\nget k1 k2\r\nincr c 1\r\ndelete k9\r\nversion\r\nstats\r\n";
const BATCH_RESP: &[u8] = b"STORED\r\nVALUE k1 0 3\r\nabc\r\nEND\r\n2\r\nNOT_FOUND\r\nVERSION 1.6.18\r\nSTAT pid 1\r\nSTAT uptime 5\r\nEND\r\n";

fn batch_summary() -> Vec<(String, String, Option<String>)> {
    vec![
        ok("set", "set ?"),
        ok("get", "get ?"),
        ok("incr", "incr ?"),
        ok("delete", "delete ?"),
        ok("version", "version"),
        ok("stats", "stats"),
    ]
}

#[test]
fn pipelined_batch_responses_split_byte_by_byte() {
    let mut c = Conn::client();
    c.seg(OUT, BATCH); // 1005
    c.bytes(IN, BATCH_RESP);
    assert_eq!(c.summary(), batch_summary());
    // Each ends with the read that brought its last byte.
    let stored_end = 1005 + 100 * "STORED\r\n".len() as u64;
    assert_eq!(c.times()[0], (0, 1005, stored_end));
    let last = 1005 + 100 * BATCH_RESP.len() as u64;
    assert_eq!(c.times()[5], (5, 1005, last));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn commands_split_byte_by_byte() {
    let mut c = Conn::client();
    c.bytes(OUT, BATCH); // first byte at 1005
    c.seg(IN, BATCH_RESP);
    assert_eq!(c.summary(), batch_summary());
    assert_eq!(c.times()[0].1, 1005);
    // `get` starts right after the set's data block.
    let get_start = 1005 + 100 * "set k1 0 0 3\r\nabc\r\n".len() as u64;
    assert_eq!(c.times()[1].1, get_start);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn value_larger_than_capture_is_framed() {
    let mut c = Conn::client();
    // A 100000-byte value written in one write, 4096 bytes captured.
    let mut w = b"set big 0 0 100000\r\n".to_vec();
    w.resize(4096, b'v');
    c.seg_total(OUT, &w, 20 + 100_000 + 2);
    c.seg(IN, b"STORED\r\n");
    // Read back in one read: the data, its line end and `END` past the capture.
    let mut r = b"VALUE big 0 100000\r\n".to_vec();
    c.seg(OUT, b"get big\r\n");
    r.resize(4096, b'v');
    c.seg_total(IN, &r, 20 + 100_000 + 2 + 5);
    // Then in pieces: the value spans reads, some of them truncated.
    c.seg(OUT, b"get big\r\n");
    c.seg_total(IN, &r, 50_000);
    c.seg_total(IN, &[b'v'; 4096], 100_000 - (50_000 - 20) + 2);
    c.seg(IN, b"END\r\n");
    c.seg(OUT, b"delete big\r\n");
    c.seg(IN, b"DELETED\r\n");
    assert_eq!(
        c.summary(),
        vec![
            ok("set", "set ?"),
            ok("get", "get ?"),
            ok("get", "get ?"),
            ok("delete", "delete ?")
        ]
    );
    assert_eq!(c.times()[1], (1, 1205, 1305));
    assert_eq!(c.times()[2], (2, 1405, 1705));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn huge_byte_counts_do_not_overflow() {
    let mut c = Conn::client();
    c.seg(OUT, b"set k 0 0 18446744073709551615\r\n");
    c.seg_total(OUT, b"xx", u64::MAX);
    c.seg(IN, b"VALUE k 0 18446744073709551614\r\n");
    c.seg_total(IN, b"yy", u64::MAX);
    c.close();
    assert_eq!(c.stats.incomplete, 0);
}

#[test]
fn client_error_and_error() {
    let mut c = Conn::client();
    c.seg(OUT, b"incr a 1\r\n");
    c.seg(
        IN,
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    c.seg(OUT, b"bogus\r\n");
    c.seg(IN, b"ERROR\r\n");
    c.seg(OUT, b"get k\r\n");
    c.seg(IN, b"SERVER_ERROR out of memory\r\n");
    assert_eq!(
        c.summary(),
        vec![
            err("incr", "incr ?", "CLIENT_ERROR"),
            err("_OTHER", "_OTHER", "ERROR"),
            err("get", "get ?", "SERVER_ERROR"),
        ]
    );
    assert!(c.out.done.iter().all(|r| r.db().is_some_and(|d| d.error)));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn mid_stream_start_resyncs() {
    let mut c = Conn::client();
    // The tail of a value written before the agent looked, then commands.
    c.seg(OUT, b"of-a-value with spaces\r\nget k\r\n");
    // The tail of an earlier response, then this one.
    c.seg(IN, b"lue-tail\r\nEND\r\n");
    assert_eq!(c.summary(), vec![ok("get", "get ?")]);
    assert_eq!(c.stats.parse_errors, 2);
    c.seg(OUT, b"get k\r\n");
    c.seg(IN, b"END\r\n");
    assert_eq!(c.out.done.len(), 2);
    assert!(!c.p.gave_up());

    // Responses whose commands were never seen.
    let mut c = Conn::client();
    c.seg(IN, b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n");
    assert_eq!(c.stats.unmatched_responses, 2);
    c.seg(OUT, b"get a\r\n");
    c.seg(IN, b"END\r\n");
    assert_eq!(c.summary(), vec![ok("get", "get ?")]);
}

#[test]
fn lost_response_bytes_infer_the_end() {
    let mut c = Conn::client();
    c.seg(OUT, b"get a b\r\n"); // 1005
    // The second item's header is past the capture.
    c.seg_total(IN, b"VALUE a 0 1\r\nx\r\n", 200); // 1105
    c.seg(IN, b"more of b"); // 1205: skipped, still lost
    c.seg(OUT, b"get c\r\n"); // 1305: the open response ended with the last bytes seen
    c.seg(IN, b"END\r\n");
    assert_eq!(c.summary(), vec![ok("get", "get ?"), ok("get", "get ?")]);
    assert_eq!(c.times(), vec![(0, 1005, 1205), (1, 1305, 1405)]);
    assert!(c.out.done[0].trust.contains(Trust::END_INFERRED));
    assert_eq!(c.stats.parse_errors, 0);

    // ... or the idle timeout does.
    let mut c = Conn::client();
    c.seg(OUT, b"get a b\r\n");
    c.seg_total(IN, b"VALUE a 0 1\r\nx\r\n", 200);
    c.p.on_idle(&mut c.out);
    assert_eq!(c.times(), vec![(0, 1005, 1105)]);
}

#[test]
fn truncated_command_line() {
    let mut c = Conn::client();
    let mut w = b"get ".to_vec();
    w.resize(4096, b'k');
    c.seg_total(OUT, &w, 10_000);
    c.seg(IN, b"END\r\n");
    assert_eq!(c.summary(), vec![ok("get", "get ?")]);
    assert!(c.out.done[0].trust.contains(Trust::HEAD_TRUNCATED));
}

#[test]
fn garbage_gives_up_without_panic() {
    let mut c = Conn::client();
    c.seg(OUT, b"\x00\x01\x02garbage\r\n");
    c.seg(OUT, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!c.p.gave_up());
    c.seg(IN, b"+OK\r\n");
    assert!(c.p.gave_up());
    assert_eq!(c.stats.parse_errors, 3);
    c.seg(OUT, b"get k\r\n");
    assert!(c.out.started.is_empty());
    // A line longer than the bound, without its end.
    let mut c = Conn::client();
    c.seg(OUT, &[b'a'; 5000]);
    c.seg(OUT, &[b'a'; 5000]);
    c.seg(OUT, b"aaa\r\nget k\r\n");
    c.seg(IN, b"END\r\n");
    assert_eq!(c.summary(), vec![ok("get", "get ?")]);
    assert_eq!(c.stats.parse_errors, 1);
}

#[test]
fn server_side() {
    let mut c = Conn::server();
    c.seg(IN, b"set a 0 0 1\r\n"); // 1005
    c.seg(IN, b"x\r\n"); // 1105
    c.seg(OUT, b"STORED\r\n"); // 1205
    c.seg(IN, b"get a zz\r\n"); // 1305
    c.seg(OUT, b"VALUE a 0 1\r\nx\r\nEND\r\n"); // 1405
    c.seg(
        IN,
        b"mg a v\r\nmg zz v\r\nms m 2 T0\r\nhi\r\nmd m q\r\nmn\r\n",
    ); // 1505
    c.seg(OUT, b"VA 1\r\nx\r\nEN\r\nHD\r\nMN\r\n"); // 1605
    assert_eq!(
        c.summary(),
        vec![
            ok("set", "set ?"),
            ok("get", "get ?"),
            ok("mg", "mg ?"),
            ok("mg", "mg ?"),
            ok("ms", "ms ?"),
            ok("md", "md ?"),
            ok("mn", "mn"),
        ]
    );
    assert_eq!(c.times()[0], (0, 1005, 1205));
    assert_eq!(c.times()[1], (1, 1305, 1405));
    assert_eq!(c.times()[6], (6, 1505, 1605));
    assert!(c.out.done.iter().all(|r| r.side == Side::Server));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn keys_and_values_stay_out_of_query_text() {
    let mut c = Conn::client();
    c.seg(
        OUT,
        b"set secret-key 7 60 6\r\nsecret\r\nget secret-key other-key\r\ngat 60 secret-key\r\nmg secret-key v\r\n",
    );
    c.seg(
        IN,
        b"STORED\r\nVALUE secret-key 7 6\r\nsecret\r\nEND\r\nEND\r\nVA 6 f7\r\nsecret\r\n",
    );
    assert_eq!(c.out.done.len(), 4);
    for r in &c.out.done {
        let d = r.db().expect("db");
        assert!(
            !d.query.contains("secret") && !d.query.contains("key"),
            "{d:?}"
        );
        assert!(!d.operation.contains("secret"));
    }
}

#[test]
fn close_counts_pending_and_queue_is_bounded() {
    let mut c = Conn::client();
    c.seg(OUT, b"get a\r\nget b\r\n");
    c.close();
    assert_eq!(c.stats.incomplete, 2);
    assert!(c.out.done.is_empty());

    let mut c = Conn::client();
    let many = b"get k\r\n".repeat(MAX_PENDING + 10);
    c.seg(OUT, &many);
    assert_eq!(c.p.pending.len(), MAX_PENDING);
    assert_eq!(c.stats.pipeline_overflow, 10);
}

fn seg_of(direction: Direction, data: &[u8]) -> Segment<'_> {
    Segment {
        direction,
        data,
        total_len: data.len() as u64,
        ts_ns: 1,
        tid: 1,
    }
}

#[test]
fn detection() {
    let d = |dir, data: &[u8]| MemcachedParser::detect(&seg_of(dir, data));
    assert_eq!(d(OUT, b"get k\r\n"), Detected::Side(Side::Client));
    assert_eq!(d(IN, b"get k\r\n"), Detected::Side(Side::Server));
    assert_eq!(
        d(OUT, b"set k 0 0 1\r\nx\r\n"),
        Detected::Side(Side::Client)
    );
    for cmd in [
        &b"gets a b\r\n"[..],
        b"gat 0 a\r\n",
        b"cas k 0 0 1 5 noreply\r\n",
        b"version\r\n",
        b"stats\r\n",
        b"stats slabs\r\n",
        b"flush_all\r\n",
        b"quit\r\n",
        b"verbosity 1\r\n",
        b"mn\r\n",
        b"mg k v\r\n",
        b"ms k 2\r\n",
    ] {
        assert_eq!(d(IN, cmd), Detected::Side(Side::Server), "{cmd:?}");
    }
    for prefix in [
        &b""[..],
        b"g",
        b"ge",
        b"get",
        b"get ",
        b"get k",
        b"get k\r",
        b"ver",
    ] {
        assert_eq!(d(OUT, prefix), Detected::Undecided, "{prefix:?}");
    }
    for no in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GE",
        b"*1\r\n$4\r\nPING\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x4a\x00\x00\x00\x0a8.0.36\x00",
        b"\x80\x00\x00\x05",
        b"get\r\n",
        b"set k 0 0 x\r\n",
        b"get k\n",
        b"hello world\r\n",
        b"STORED\r\n",
    ] {
        assert_eq!(d(OUT, no), Detected::No, "{no:?}");
    }
    // A long multi-get cut by the capture.
    let mut w = b"get ".to_vec();
    w.resize(4096, b'k');
    let seg = Segment {
        total_len: 9000,
        ..seg_of(OUT, &w)
    };
    assert_eq!(MemcachedParser::detect(&seg), Detected::Side(Side::Client));
}

#[test]
fn parser_detect_picks_memcached() {
    use super::super::{Detection, Parser};
    assert!(matches!(
        Parser::detect(&seg_of(OUT, b"get k\r\n")),
        Detection::Match(Parser::Memcached(_))
    ));
    assert!(matches!(
        Parser::detect(&seg_of(OUT, b"ge")),
        Detection::Undecided
    ));
    assert!(matches!(
        Parser::detect(&seg_of(OUT, b"GET / HTTP/1.1\r\n\r\n")),
        Detection::Match(Parser::Http1(_))
    ));
    // Not memcached: Redis claims it.
    assert!(matches!(
        Parser::detect(&seg_of(OUT, b"*1\r\n$4\r\nPING\r\n")),
        Detection::Match(Parser::Redis(_))
    ));
    assert!(matches!(
        Parser::detect(&seg_of(OUT, b"\x16\x03\x01\x02\x00\x01")),
        Detection::NoMatch
    ));
}

const GOLDEN: &[(&[u8], &[u8])] = &[
    (BATCH, BATCH_RESP),
    (
        b"set a 0 0 1\r\nx\r\nget a b n\r\ngets a\r\ncas a 0 0 1 999\r\ny\r\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nVALUE n 0 2\r\n10\r\nEND\r\nVALUE a 0 1 1\r\nx\r\nEND\r\nEXISTS\r\n",
    ),
    (
        b"mg zz v q\r\nmg a v q\r\nmn\r\nms m 2\r\nhi\r\nbogus\r\nincr a 1\r\n",
        b"VA 1\r\nx\r\nMN\r\nHD\r\nERROR\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    ),
];

/// Cuts `data` at the given points into segments, some of them truncated to `cap` bytes.
fn cut(data: &[u8], mut points: Vec<usize>, cap: usize) -> Vec<(Vec<u8>, u64)> {
    points.retain(|&p| p > 0 && p < data.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain(std::iter::once(data.len())) {
        let piece = data.get(start..p).unwrap_or(&[]);
        let shown = piece.get(..piece.len().min(cap)).unwrap_or(&[]);
        out.push((shown.to_vec(), piece.len() as u64));
        start = p;
    }
    out
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), 0u64..1_000_000),
            0..20
        ),
        server in any::<bool>(),
    ) {
        let mut c = Conn::new(if server { Side::Server } else { Side::Client });
        for (ingress, data, extra) in &chunks {
            let dir = if *ingress { IN } else { OUT };
            let _ = MemcachedParser::detect(&seg_of(dir, data));
            c.seg_total(dir, data, data.len() as u64 + extra);
            prop_assert!(c.p.pending.len() <= MAX_PENDING);
            prop_assert!(c.p.readers.requests.buf.len() <= MAX_LINE_BYTES);
            prop_assert!(c.p.readers.responses.buf.len() <= MAX_LINE_BYTES);
        }
        c.p.on_idle(&mut c.out);
        c.close();
    }

    #[test]
    fn golden_streams_split_and_truncated_never_panic(
        which in 0..GOLDEN.len(),
        cmd_cuts in prop::collection::vec(0usize..200, 0..8),
        resp_cuts in prop::collection::vec(0usize..200, 0..8),
        cap in prop_oneof![Just(usize::MAX), 0usize..40],
        server in any::<bool>(),
        interleave in any::<bool>(),
    ) {
        let (cmds, resps) = GOLDEN[which];
        let side = if server { Side::Server } else { Side::Client };
        let (cmd_dir, resp_dir) = if server { (IN, OUT) } else { (OUT, IN) };
        let mut c = Conn::new(side);
        let cs = cut(cmds, cmd_cuts, cap);
        let rs = cut(resps, resp_cuts, cap);
        for (data, total) in &cs {
            let _ = MemcachedParser::detect(&Segment { total_len: *total, ..seg_of(cmd_dir, data) });
            c.seg_total(cmd_dir, data, *total);
            if interleave {
                c.p.on_idle(&mut c.out);
            }
        }
        for (data, total) in &rs {
            let _ = MemcachedParser::detect(&Segment { total_len: *total, ..seg_of(resp_dir, data) });
            c.seg_total(resp_dir, data, *total);
        }
        prop_assert!(c.p.pending.len() <= MAX_PENDING);
        if cap == usize::MAX {
            // Uncut bytes: every command is matched whatever the splits.
            prop_assert_eq!(c.stats.parse_errors, 0);
            prop_assert_eq!(c.stats.unmatched_responses, 0);
            prop_assert!(c.p.pending.is_empty());
        }
        for r in &c.out.done {
            let d = r.db().expect("db");
            let with_args = format!("{} ?", d.operation);
            prop_assert!(d.query == d.operation || d.query == with_args);
            prop_assert!(r.end_ns >= r.start_ns);
        }
        c.close();
    }
}

/// Records lost (`on_gap`) in the middle of a value: the rest of it is skipped, the get in
/// flight written off, the next get pairs with its own response.
#[test]
fn gap_drops_the_stale_command() {
    let mut c = Conn::client();
    c.seg(OUT, b"get a\r\n"); // 1005
    c.seg(IN, b"VALUE a 0 10\r\n01234"); // 1105
    c.p.on_gap(&mut c.stats);
    c.seg(IN, b"789\r\nEND\r\n"); // 1205
    c.seg(OUT, b"get b\r\n"); // 1305
    c.seg(IN, b"END\r\n"); // 1405
    assert_eq!(c.summary(), vec![ok("get", "get ?")]);
    assert_eq!(c.times(), vec![(1, 1305, 1405)]);
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
}
