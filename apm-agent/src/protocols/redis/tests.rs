//! Byte-stream tests: recorded RESP traffic (as redis-cli and redis-server 7.0 send it) fed as
//! syscall-sized segments, checking the exact requests that come out and the counters.
use proptest::prelude::*;

use super::*;

/// One connection under test, with a fake clock: each segment returns at `t + 5`, then the
/// clock moves on by 100.
struct Conn {
    p: RedisParser,
    out: ParserOut,
    stats: ParseStats,
    t: u64,
    tid: u32,
}

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

impl Conn {
    fn new(side: Side) -> Self {
        Self {
            p: RedisParser::new(side),
            out: ParserOut::default(),
            stats: ParseStats::default(),
            t: 1000,
            tid: 42,
        }
    }

    fn client() -> Self {
        Self::new(Side::Client)
    }

    fn seg_total(&mut self, direction: Direction, data: &[u8], total: u64) {
        crate::fuzzing::seeds::record("redis", direction, data, total);
        let seg = Segment {
            direction,
            data,
            total_len: total,
            ts_ns: self.t + 5,
            tid: self.tid,
        };
        self.p.on_segment(&seg, &mut self.out, &mut self.stats);
        self.t += 100;
    }

    fn seg(&mut self, direction: Direction, data: &[u8]) {
        self.seg_total(direction, data, data.len() as u64);
    }

    /// (operation, query, status code) of every request so far.
    fn summary(&self) -> Vec<(String, String, Option<String>)> {
        self.out
            .done
            .iter()
            .map(|r| {
                let d = r.db().expect("db");
                assert_eq!(d.error, d.status_code.is_some());
                assert_eq!(d.system, DbSystem::Redis);
                assert_eq!(r.protocol, Protocol::Redis);
                (d.operation.clone(), d.query.clone(), d.status_code.clone())
            })
            .collect()
    }

    fn seqs(&self) -> Vec<u64> {
        self.out.done.iter().map(|r| r.seq).collect()
    }
}

fn ok(op: &str, q: &str) -> (String, String, Option<String>) {
    (op.to_owned(), q.to_owned(), None)
}

fn err(op: &str, q: &str, code: &str) -> (String, String, Option<String>) {
    (op.to_owned(), q.to_owned(), Some(code.to_owned()))
}

/// A command as redis-cli encodes it.
fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

#[test]
fn single_set_and_get_with_timestamps() {
    let mut c = Conn::client();
    c.seg(OUT, b"*3\r\n$3\r\nset\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"); // 1005
    assert_eq!(c.out.started.len(), 1);
    assert_eq!(c.out.started[0].start_ns, 1005);
    c.seg(IN, b"+OK\r\n"); // 1105
    c.seg(OUT, b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"); // 1205
    c.seg(IN, b"$5\r\nvalue\r\n"); // 1305
    assert_eq!(c.summary(), vec![ok("SET", "SET ? ?"), ok("GET", "GET ?")]);
    assert_eq!(c.seqs(), vec![0, 1]);
    let r = &c.out.done[1];
    assert_eq!((r.start_ns, r.end_ns, r.tid), (1205, 1305, 42));
    assert_eq!(r.side, Side::Client);
    assert_eq!(r.trust, Trust::default());
    assert_eq!(r.db().expect("db").namespace, None);
    assert_eq!(r.db().expect("db").collection, None);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn pipeline_of_16_with_replies_split_byte_by_byte() {
    let mut c = Conn::client();
    let mut cmds = Vec::new();
    let mut replies = Vec::new();
    for i in 0..16 {
        let key = format!("key:{i}");
        if i % 2 == 0 {
            cmds.extend(cmd(&[b"SET", key.as_bytes(), b"xxx"]));
            replies.extend_from_slice(b"+OK\r\n");
        } else {
            cmds.extend(cmd(&[b"GET", key.as_bytes()]));
            replies.extend_from_slice(b"$3\r\nxxx\r\n");
        }
    }
    c.seg(OUT, &cmds);
    assert_eq!(c.out.started.len(), 16);
    for b in &replies {
        c.seg(IN, std::slice::from_ref(b));
    }
    assert_eq!(c.out.done.len(), 16);
    assert_eq!(c.seqs(), (0..16).collect::<Vec<_>>());
    assert!(c.out.done.iter().all(|r| r.start_ns == 1005));
    // The first reply completes with its 5th byte, the last one with the last byte.
    assert_eq!(c.out.done[0].end_ns, 1005 + 5 * 100);
    assert_eq!(c.out.done[15].end_ns, c.t - 100 + 5);
    assert_eq!(c.out.done[1].db().expect("db").operation, "GET");
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn commands_split_at_awkward_points() {
    let mut c = Conn::client();
    let stream = [cmd(&[b"INCR", b"counter"]), cmd(&[b"DEL", b"a", b"b"])].concat();
    for cut in [1, 3, 4, 9, 13, 20] {
        let (a, b) = stream.split_at(cut);
        c.seg(OUT, a);
        c.seg(OUT, b);
        c.seg(IN, b":1\r\n:2\r\n");
    }
    assert_eq!(c.out.done.len(), 12);
    assert!(
        c.summary()
            .chunks(2)
            .all(|p| p == [ok("INCR", "INCR ?"), ok("DEL", "DEL ? ?")])
    );
    // Started with the segment carrying the first byte.
    assert_eq!(c.out.done[0].start_ns, 1005);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn resp3_types_attribute_and_push() {
    let mut c = Conn::client();
    c.seg(OUT, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
    c.seg(IN, b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:4\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n");
    let pipeline = [
        cmd(&[b"HGETALL", b"h"]),
        cmd(&[b"SMEMBERS", b"s"]),
        cmd(&[b"ZSCORE", b"z", b"m"]),
        cmd(&[b"GET", b"nokey"]),
        cmd(&[b"DEBUG", b"PROTOCOL", b"true"]),
        cmd(&[b"DEBUG", b"PROTOCOL", b"verbatim"]),
        cmd(&[b"DEBUG", b"PROTOCOL", b"attrib"]),
        cmd(&[b"DEBUG", b"PROTOCOL", b"bignum"]),
        cmd(&[b"SET", b"h", b"2"]),
        cmd(&[b"GET", b"h"]),
    ]
    .concat();
    c.seg(OUT, &pipeline);
    c.seg(
        IN,
        b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n~1\r\n$1\r\nm\r\n,3.141\r\n_\r\n#t\r\n",
    );
    c.seg(IN, b"=29\r\ntxt:This is a verbatim\nstring\r\n");
    // An attribute, then the reply it annotates.
    c.seg(
        IN,
        b"|1\r\n$14\r\nkey-popularity\r\n*2\r\n$7\r\nkey:123\r\n:90\r\n",
    );
    assert_eq!(c.out.done.len(), 7, "the attribute is not a reply");
    c.seg(IN, b"$39\r\nSome real reply following the attribute\r\n(1234567999999999999999999999999999999\r\n");
    // Client tracking: an invalidation push right after the reply to SET, then GET's reply.
    c.seg(IN, b"+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nh\r\n");
    assert_eq!(c.out.done.len(), 10);
    c.seg(IN, b"$1\r\n2\r\n");
    let ops: Vec<_> = c.summary().into_iter().map(|s| s.1).collect();
    assert_eq!(
        ops,
        [
            "HELLO ?",
            "HGETALL ?",
            "SMEMBERS ?",
            "ZSCORE ? ?",
            "GET ?",
            "DEBUG ? ?",
            "DEBUG ? ?",
            "DEBUG ? ?",
            "DEBUG ? ?",
            "SET ? ?",
            "GET ?"
        ]
    );
    assert_eq!(c.out.done[10].end_ns, c.t - 100 + 5);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn multi_exec_block() {
    let mut c = Conn::client();
    let block = [
        cmd(&[b"MULTI"]),
        cmd(&[b"INCR", b"a"]),
        cmd(&[b"LPUSH", b"a", b"x"]),
        cmd(&[b"EXEC"]),
    ]
    .concat();
    c.seg(OUT, &block);
    c.seg(IN, b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    c.seg(
        OUT,
        &[
            cmd(&[b"MULTI"]),
            cmd(&[b"SET", b"k", b"v"]),
            cmd(&[b"DISCARD"]),
        ]
        .concat(),
    );
    c.seg(IN, b"+OK\r\n+QUEUED\r\n+OK\r\n");
    assert_eq!(
        c.summary(),
        vec![
            ok("MULTI", "MULTI"),
            ok("INCR", "INCR ?"),
            ok("LPUSH", "LPUSH ? ?"),
            ok("EXEC", "EXEC"),
            ok("MULTI", "MULTI"),
            ok("SET", "SET ? ?"),
            ok("DISCARD", "DISCARD"),
        ]
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn error_replies() {
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"LPUSH", b"h", b"x"]));
    c.seg(
        IN,
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    );
    c.seg(OUT, &cmd(&[b"FOO", b"bar"]));
    c.seg(
        IN,
        b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n",
    );
    c.seg(OUT, &cmd(&[b"GET", b"k"]));
    c.seg(IN, b"!21\r\nSYNTAX invalid syntax\r\n");
    c.seg(OUT, &cmd(&[b"GET", b"k"]));
    c.seg(IN, b"-noauth lower case\r\n");
    assert_eq!(
        c.summary(),
        vec![
            err("LPUSH", "LPUSH ? ?", "WRONGTYPE"),
            err("FOO", "FOO ?", "ERR"),
            err("GET", "GET ?", "SYNTAX"),
            err("GET", "GET ?", "_OTHER"),
        ]
    );
    assert!(c.out.done[0].db().expect("db").error);
}

#[test]
fn subscribe_confirmations_and_messages() {
    let mut c = Conn::client();
    c.seg(OUT, b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n");
    c.seg(IN, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    assert!(c.out.done.is_empty(), "one confirmation of two");
    c.seg(IN, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
    assert_eq!(c.summary(), vec![ok("SUBSCRIBE", "SUBSCRIBE ? ?")]);
    assert_eq!(c.out.done[0].end_ns, 1205);
    for _ in 0..3 {
        c.seg(IN, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n");
    }
    c.seg(OUT, b"*1\r\n$4\r\nPING\r\n");
    c.seg(
        IN,
        b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nhi\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n",
    );
    c.seg(OUT, b"*1\r\n$11\r\nUNSUBSCRIBE\r\n");
    c.seg(IN, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n");
    // Out of subscriber mode: an array starting with "message" is a plain reply again.
    c.seg(OUT, &cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
    c.seg(IN, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n");
    assert_eq!(
        c.summary(),
        vec![
            ok("SUBSCRIBE", "SUBSCRIBE ? ?"),
            ok("PING", "PING"),
            ok("UNSUBSCRIBE", "UNSUBSCRIBE"),
            ok("LRANGE", "LRANGE ? ? ?"),
        ]
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn resp3_subscribe_pushes() {
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"PSUBSCRIBE", b"news.*"]));
    c.seg(IN, b">3\r\n$10\r\npsubscribe\r\n$6\r\nnews.*\r\n:1\r\n>4\r\n$8\r\npmessage\r\n$6\r\nnews.*\r\n$6\r\nnews.a\r\n$1\r\nx\r\n");
    c.seg(OUT, &cmd(&[b"GET", b"k"]));
    c.seg(
        IN,
        b">4\r\n$8\r\npmessage\r\n$6\r\nnews.*\r\n$6\r\nnews.b\r\n$1\r\ny\r\n_\r\n",
    );
    assert_eq!(
        c.summary(),
        vec![ok("PSUBSCRIBE", "PSUBSCRIBE ?"), ok("GET", "GET ?")]
    );
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn auth_arguments_never_leave_the_parser() {
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"AUTH", b"admin", b"s3cr3t-passw0rd"]));
    c.seg(IN, b"+OK\r\n");
    c.seg(
        OUT,
        &cmd(&[b"HELLO", b"3", b"AUTH", b"admin", b"s3cr3t-passw0rd"]),
    );
    c.seg(
        IN,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    assert_eq!(
        c.summary(),
        vec![
            ok("AUTH", "AUTH ? ?"),
            err("HELLO", "HELLO ? ? ? ?", "WRONGPASS")
        ]
    );
    let text = format!("{:?}", c.out.done);
    assert!(!text.contains("s3cr3t") && !text.contains("admin"));
}

#[test]
fn select_sets_the_namespace_and_long_commands_are_cut() {
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"SELECT", b"2"]));
    c.seg(IN, b"+OK\r\n");
    c.seg(OUT, &cmd(&[b"SELECT", b"99"]));
    c.seg(IN, b"-ERR DB index is out of range\r\n");
    let mset: Vec<&[u8]> = [&b"MSET"[..]].into_iter().chain([&b"k"[..]; 10]).collect();
    c.seg(OUT, &cmd(&mset));
    c.seg(IN, b"+OK\r\n");
    c.seg(
        OUT,
        &cmd(&[b"NOT_A-VALID.NAME_WAY_TOO_LONG_FOR_AN_OPERATION"]),
    );
    c.seg(IN, b"-ERR unknown command\r\n");
    c.seg(OUT, &cmd(&[b"x1"]));
    c.seg(IN, b"-ERR unknown command\r\n");
    let ns: Vec<_> = c
        .out
        .done
        .iter()
        .map(|r| r.db().expect("db").namespace.clone())
        .collect();
    let two = Some("2".to_owned());
    assert_eq!(
        ns,
        vec![two.clone(), two.clone(), two.clone(), two.clone(), two]
    );
    assert_eq!(
        c.summary(),
        vec![
            ok("SELECT", "SELECT ?"),
            err("SELECT", "SELECT ?", "ERR"),
            ok("MSET", "MSET ? ? ..."),
            err("_OTHER", "_OTHER", "ERR"),
            err("_OTHER", "_OTHER", "ERR"),
        ]
    );
}

#[test]
fn truncated_large_set_and_get_are_matched() {
    let mut c = Conn::client();
    let value = vec![b'v'; 1_000_000];
    let set = cmd(&[b"SET", b"big", &value]);
    // One write, only the first 4 KiB captured.
    c.seg_total(OUT, &set[..4096], set.len() as u64);
    c.seg(IN, b"+OK\r\n");
    c.seg(OUT, &cmd(&[b"GET", b"big"]));
    let reply = [&b"$1000000\r\n"[..], &value, b"\r\n"].concat();
    // Read in 64 KiB reads, 4 KiB of each captured.
    for chunk in reply.chunks(65536) {
        c.seg_total(IN, &chunk[..chunk.len().min(4096)], chunk.len() as u64);
    }
    c.seg(OUT, &cmd(&[b"PING"]));
    c.seg(IN, b"+PONG\r\n");
    assert_eq!(
        c.summary(),
        vec![ok("SET", "SET ? ?"), ok("GET", "GET ?"), ok("PING", "PING")]
    );
    assert_eq!(c.out.done[1].end_ns, c.t - 300 + 5);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn mid_stream_start_resyncs() {
    let mut c = Conn::new(Side::Server);
    // The middle of a bulk value of a command read before the agent ran, then its reply.
    c.seg(IN, b"vvvvvvvvvvvvvvvvvv\r\n");
    c.seg(OUT, b"+OK\r\n");
    assert_eq!(c.stats.parse_errors, 1);
    assert_eq!(c.stats.unmatched_responses, 1);
    c.seg(IN, &cmd(&[b"GET", b"k"]));
    c.seg(OUT, b"$1\r\nv\r\n");
    c.seg(IN, &cmd(&[b"DEL", b"k"]));
    c.seg(OUT, b":1\r\n");
    assert_eq!(c.summary(), vec![ok("GET", "GET ?"), ok("DEL", "DEL ?")]);
    assert_eq!(c.seqs(), vec![0, 1]);
    assert!(!c.p.gave_up());
}

#[test]
fn lost_reply_framing_writes_off_pending_commands() {
    let mut c = Conn::client();
    c.seg(OUT, &[cmd(&[b"GET", b"a"]), cmd(&[b"GET", b"b"])].concat());
    // The first reply's header, then bytes that were not captured where a header was due.
    c.seg_total(IN, b"$1\r\nx\r\n", 5000);
    assert_eq!(c.out.done.len(), 1);
    c.seg(IN, b"ignored bytes");
    c.seg(OUT, &cmd(&[b"GET", b"c"]));
    c.seg(IN, b"$1\r\nz\r\n");
    assert_eq!(c.summary(), vec![ok("GET", "GET ?"), ok("GET", "GET ?")]);
    assert_eq!(c.seqs(), vec![0, 2]);
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn garbage_gives_up_without_panic() {
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"PING"]));
    c.seg(OUT, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    for _ in 0..5 {
        c.seg(OUT, b"GET / HTTP/1.1\r\n\r\n");
    }
    assert!(c.p.gave_up());
    assert_eq!(c.stats.parse_errors, 1);
    // Fed nothing more once given up.
    c.seg(IN, b"+PONG\r\n");
    assert!(c.out.done.is_empty());
    c.p.on_close(c.t, &mut c.out, &mut c.stats);
    assert_eq!(c.stats.incomplete, 1);
}

#[test]
fn server_side() {
    let mut c = Conn::new(Side::Server);
    c.tid = 7;
    c.seg(
        IN,
        &[cmd(&[b"SET", b"k", b"v"]), cmd(&[b"GET", b"k"])].concat(),
    );
    c.seg(OUT, b"+OK\r\n$1\r\nv\r\n");
    c.seg(IN, &cmd(&[b"QUIT"]));
    c.p.on_close(c.t, &mut c.out, &mut c.stats);
    assert_eq!(c.summary(), vec![ok("SET", "SET ? ?"), ok("GET", "GET ?")]);
    let r = &c.out.done[1];
    assert_eq!(
        (r.side, r.start_ns, r.end_ns, r.tid),
        (Side::Server, 1005, 1105, 7)
    );
    assert_eq!(c.stats.incomplete, 1);
}

#[test]
fn overflow_and_unmatched_and_huge_lengths() {
    let mut c = Conn::client();
    c.seg(IN, b"+OK\r\n");
    assert_eq!(c.stats.unmatched_responses, 1);
    let one = cmd(&[b"INCR", b"n"]);
    let many = one.repeat(MAX_PENDING + 3);
    c.seg(OUT, &many);
    assert_eq!(c.stats.pipeline_overflow, 3);
    assert_eq!(c.p.pending.len(), MAX_PENDING);
    // The replies to the dropped commands are swallowed: the next ones stay matched.
    c.seg(IN, &b":1\r\n".repeat(4));
    assert_eq!(c.seqs(), vec![3]);
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"GET", b"k"]));
    c.seg(IN, b"$99999999999\r\n");
    c.seg(IN, b"*-1\r\n");
    assert!(c.out.done.is_empty());
    assert_eq!(c.stats.parse_errors, 1);
    c.seg(IN, b"$99999999999999999999999\r\n");
    c.seg(OUT, &cmd(&[b"GET", b"k"]));
    c.seg(IN, b"*-1\r\n");
    assert_eq!(c.out.done.len(), 1);
}

#[test]
fn detection() {
    let d = |direction, data: &[u8]| {
        RedisParser::detect(&Segment {
            direction,
            data,
            total_len: data.len() as u64,
            ts_ns: 0,
            tid: 0,
        })
    };
    let get = cmd(&[b"GET", b"k"]);
    assert_eq!(d(OUT, &get), Detected::Side(Side::Client));
    assert_eq!(d(IN, &get), Detected::Side(Side::Server));
    assert_eq!(
        d(OUT, b"*1\r\n$4\r\nPING\r\n"),
        Detected::Side(Side::Client)
    );
    for prefix in [
        &b"*"[..],
        b"*2",
        b"*2\r",
        b"*2\r\n",
        b"*2\r\n$3\r",
        b"*2\r\n$3\r\nGE",
    ] {
        assert_eq!(d(OUT, prefix), Detected::Undecided, "{prefix:?}");
    }
    for other in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"get k\r\n",
        b"PING\r\n",
        b"+OK\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"*\x00\x00\x00\x0a",
        b"*2\r\n$3\r\n123\r\n",
        b"*0\r\n",
        b"*2\r\n:3\r\n",
        b"",
    ] {
        let expect = if other.is_empty() {
            Detected::Undecided
        } else {
            Detected::No
        };
        assert_eq!(d(OUT, other), expect, "{other:?}");
    }
}

/// The golden streams of the tests above, as (direction, bytes) on the client side.
fn golden() -> Vec<(Direction, Vec<u8>)> {
    vec![
        (OUT, cmd(&[b"HELLO", b"3"])),
        (IN, b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n".to_vec()),
        (OUT, [cmd(&[b"SET", b"k", b"v"]), cmd(&[b"SUBSCRIBE", b"a", b"b"])].concat()),
        (IN, b"+OK\r\n|1\r\n$1\r\nk\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n".to_vec()),
        (IN, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n".to_vec()),
        (OUT, [cmd(&[b"MULTI"]), cmd(&[b"SELECT", b"2"]), cmd(&[b"EXEC"])].concat()),
        (IN, b"+OK\r\n+QUEUED\r\n*7\r\n+OK\r\n-ERR x\r\n=5\r\ntxt:x\r\n,1.5\r\n#f\r\n(12\r\n~1\r\n_\r\n".to_vec()),
    ]
}

fn feed(side: Side, segs: &[(Direction, Vec<u8>, u64)]) {
    let mut p = RedisParser::new(side);
    let mut out = ParserOut::default();
    let mut stats = ParseStats::default();
    for (i, (direction, data, total)) in segs.iter().enumerate() {
        let seg = Segment {
            direction: *direction,
            data,
            total_len: *total,
            ts_ns: i as u64,
            tid: 1,
        };
        let _ = RedisParser::detect(&seg);
        p.on_segment(&seg, &mut out, &mut stats);
        assert!(p.pending.len() <= MAX_PENDING);
    }
    p.on_idle(&mut out);
    p.on_close(0, &mut out, &mut stats);
    assert!(p.pending.is_empty());
}

fn flip(d: Direction) -> Direction {
    match d {
        IN => OUT,
        OUT => IN,
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        segs in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64), 0u64..100_000),
            0..12,
        )
    ) {
        let segs: Vec<_> = segs
            .into_iter()
            .map(|(ingress, data, extra)| {
                let total = data.len() as u64 + extra % 3 * extra;
                (if ingress { IN } else { OUT }, data, total)
            })
            .collect();
        feed(Side::Client, &segs);
        feed(Side::Server, &segs);
    }

    #[test]
    fn golden_splits_and_truncations_never_panic(
        cuts in prop::collection::vec((0usize..200, 0usize..200, any::<bool>()), 7),
        noise in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut segs = Vec::new();
        for ((direction, data), (cut, keep, truncate)) in golden().into_iter().zip(cuts) {
            let cut = cut.min(data.len());
            let (a, b) = data.split_at(cut);
            for part in [a, b] {
                let kept = if truncate { keep.min(part.len()) } else { part.len() };
                let mut bytes = part.get(..kept).unwrap_or(&[]).to_vec();
                if truncate && keep % 7 == 0 {
                    bytes.extend_from_slice(&noise);
                }
                segs.push((direction, bytes, part.len() as u64));
            }
        }
        feed(Side::Client, &segs);
        let server: Vec<_> = segs.iter().map(|(d, b, t)| (flip(*d), b.clone(), *t)).collect();
        feed(Side::Server, &server);
    }
}

#[test]
fn golden_streams_parse_on_both_sides() {
    for side in [Side::Client, Side::Server] {
        let mut c = Conn::new(side);
        for (d, data) in golden() {
            c.seg(if side == Side::Client { d } else { flip(d) }, &data);
        }
        assert_eq!(
            c.summary(),
            vec![
                ok("HELLO", "HELLO ?"),
                ok("SET", "SET ? ?"),
                ok("SUBSCRIBE", "SUBSCRIBE ? ?"),
                ok("MULTI", "MULTI"),
                ok("SELECT", "SELECT ?"),
                ok("EXEC", "EXEC"),
            ]
        );
        assert_eq!(c.stats, ParseStats::default());
    }
}

/// Records lost (`on_gap`): the reply to the second GET went by unseen. It is written off;
/// the third GET pairs with its own reply.
#[test]
fn gap_drops_the_stale_command() {
    let mut c = Conn::client();
    c.seg(OUT, &cmd(&[b"GET", b"a"])); // 1005
    c.seg(IN, b"$1\r\nx\r\n"); // 1105
    c.seg(OUT, &cmd(&[b"GET", b"b"])); // 1205
    c.p.on_gap(&mut c.stats);
    // The end of a bulk reply, then the next command and its reply.
    c.seg(IN, b"yyyy\r\n"); // 1305
    c.seg(OUT, &cmd(&[b"GET", b"c"])); // 1405
    c.seg(IN, b"$1\r\nz\r\n"); // 1505
    assert_eq!(c.summary(), vec![ok("GET", "GET ?"), ok("GET", "GET ?")]);
    let r = &c.out.done[1];
    assert_eq!((r.start_ns, r.end_ns), (1405, 1505));
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
}
