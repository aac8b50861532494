//! Byte-stream tests: each feeds recorded HTTP/1.x traffic as syscall-sized segments and checks
//! the exact requests that come out (and the counters), so that breaking the behaviour fails.
use super::*;

/// One connection under test, with a fake clock: each segment returns at `t + 5`, then the
/// clock moves on by 100.
struct Conn {
    p: Http1Parser,
    out: ParserOut,
    stats: ParseStats,
    t: u64,
}

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

impl Conn {
    fn new(side: Side) -> Self {
        Self {
            p: Http1Parser::new(side),
            out: ParserOut::default(),
            stats: ParseStats::default(),
            t: 1000,
        }
    }

    fn server() -> Self {
        Self::new(Side::Server)
    }

    fn client() -> Self {
        Self::new(Side::Client)
    }

    fn seg_total(&mut self, direction: Direction, data: &[u8], total: u64) {
        crate::fuzzing::seeds::record("http1", direction, data, total);
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

    fn close(&mut self) {
        let t = self.t;
        self.p.on_close(t, &mut self.out, &mut self.stats);
    }

    /// (method, path, status) of every request so far.
    fn summary(&self) -> Vec<(&'static str, String, u16)> {
        self.out
            .done
            .iter()
            .map(|r| {
                let h = r.http().expect("http");
                (h.method.as_str(), h.path.clone(), h.status)
            })
            .collect()
    }
}

fn s(m: &'static str, p: &str, st: u16) -> (&'static str, String, u16) {
    (m, p.to_owned(), st)
}

const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn keep_alive_exchanges_with_timestamps() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"); // t=1000..1005
    c.seg(OUT, OK_5); // t=1100..1105
    c.seg(IN, b"GET /b?secret=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    c.seg(OUT, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.summary(), vec![s("GET", "/a", 200), s("GET", "/b", 404)]);
    // Server side: from the read's exit to the write's exit.
    assert_eq!((c.out.done[0].start_ns, c.out.done[0].end_ns), (1005, 1105));
    assert_eq!(c.out.done[0].side, Side::Server);
    assert_eq!(c.out.done[0].trust, Trust::default());
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn client_side_times_from_write_to_read_return() {
    let mut c = Conn::client();
    c.seg(
        OUT,
        b"GET /users/7 HTTP/1.1\r\nHost: api.local:8080\r\n\r\n",
    );
    c.seg(IN, OK_5);
    assert_eq!(c.summary(), vec![s("GET", "/users/7", 200)]);
    assert_eq!((c.out.done[0].start_ns, c.out.done[0].end_ns), (1005, 1105));
    assert_eq!(
        c.out.done[0].http().expect("http").host.as_deref(),
        Some("api.local:8080")
    );
}

#[test]
fn pipelined_requests_in_one_read() {
    let mut c = Conn::server();
    c.seg(
        IN,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    c.seg(OUT, OK_5);
    c.seg(
        OUT,
        b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n:(HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
    );
    assert_eq!(
        c.summary(),
        vec![
            s("GET", "/1", 200),
            s("GET", "/2", 500),
            s("HEAD", "/3", 200)
        ]
    );
}

#[test]
fn request_and_response_split_byte_by_byte() {
    let mut c = Conn::server();
    let req = b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
    for b in req.iter() {
        c.seg(IN, std::slice::from_ref(b));
    }
    let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes";
    for b in resp.iter() {
        c.seg(OUT, std::slice::from_ref(b));
    }
    assert_eq!(c.summary(), vec![s("POST", "/submit", 201)]);
    // Started when the first byte arrived, ended with the last byte written.
    assert_eq!(c.out.done[0].start_ns, 1005);
    assert_eq!(c.out.done[0].end_ns, c.t - 100 + 5);
}

#[test]
fn chunked_response_then_next_request() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    c.seg(
        OUT,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    c.seg(OUT, b"4\r\nWiki\r\n");
    assert!(c.out.done.is_empty(), "response not finished yet");
    c.seg(OUT, b"5\r\npedia\r\n0\r\n\r\n");
    c.seg(IN, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![s("GET", "/stream", 200), s("GET", "/next", 200)]
    );
    assert_eq!(c.out.done[0].trust, Trust::default());
    assert_eq!(c.out.done[0].end_ns, 1305);
}

#[test]
fn chunked_request_body() {
    let mut c = Conn::server();
    c.seg(
        IN,
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\n\r\n",
    );
    c.seg(OUT, OK_5);
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![s("POST", "/up", 200), s("GET", "/after", 200)]
    );
}

#[test]
fn content_length_far_beyond_the_capture() {
    let mut c = Conn::client();
    c.seg(OUT, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n";
    let mut first = head.to_vec();
    first.resize(1024, b'z'); // only 1 KiB captured of a 64 KiB read
    c.seg_total(IN, &first, 65_536);
    let mut left = 2_000_000 + head.len() as u64 - 65_536;
    while left > 0 {
        let n = left.min(65_536);
        assert!(c.out.done.is_empty());
        c.seg_total(IN, &[b'z'; 1024][..n.min(1024) as usize], n);
        left -= n;
    }
    assert_eq!(c.summary(), vec![s("GET", "/big", 200)]);
    // The next exchange on the same connection still parses.
    c.seg(OUT, b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n");
    c.seg(IN, OK_5);
    assert_eq!(c.summary().len(), 2);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn head_204_304_have_no_body() {
    let mut c = Conn::server();
    c.seg(IN, b"HEAD /h HTTP/1.1\r\n\r\n");
    c.seg(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    c.seg(IN, b"DELETE /d HTTP/1.1\r\n\r\n");
    c.seg(OUT, b"HTTP/1.1 204 No Content\r\n\r\n");
    c.seg(IN, b"GET /c HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n");
    c.seg(
        OUT,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
    );
    c.seg(IN, b"GET /z HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![
            s("HEAD", "/h", 200),
            s("DELETE", "/d", 204),
            s("GET", "/c", 304),
            s("GET", "/z", 200)
        ]
    );
}

#[test]
fn http10_response_delimited_by_close() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /old HTTP/1.0\r\n\r\n");
    c.seg(OUT, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    c.seg(OUT, b"body part 1");
    c.seg(OUT, b"body part 2"); // exits at 1305
    assert!(c.out.done.is_empty());
    c.close();
    assert_eq!(c.summary(), vec![s("GET", "/old", 200)]);
    assert_eq!(
        c.out.done[0].end_ns, 1305,
        "ends with the last write, not the close"
    );
    assert_eq!(
        c.out.done[0].http().expect("http").version,
        HttpVersion::Http10
    );
    assert_eq!(c.out.done[0].trust, Trust::default());
    assert_eq!(c.stats.incomplete, 0);
}

#[test]
fn connection_close_with_length_completes_before_close() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /bye HTTP/1.1\r\nConnection: close\r\n\r\n");
    c.seg(
        OUT,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(c.summary(), vec![s("GET", "/bye", 200)]);
    c.close();
    assert_eq!(c.summary().len(), 1);
    assert_eq!(c.stats.incomplete, 0);
}

#[test]
fn expect_100_continue() {
    let mut c = Conn::server();
    c.seg(
        IN,
        b"PUT /file HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    c.seg(OUT, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.seg(IN, b"data");
    c.seg(OUT, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.summary(), vec![s("PUT", "/file", 201)]);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn closed_mid_exchange_is_incomplete_not_a_request() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /slow HTTP/1.1\r\n\r\n");
    c.close();
    assert!(c.out.done.is_empty());
    assert_eq!(c.stats.incomplete, 1);

    // Client that closes in the middle of a length-delimited response.
    let mut c = Conn::client();
    c.seg(OUT, b"GET /big HTTP/1.1\r\n\r\n");
    c.seg(
        IN,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial",
    );
    c.close();
    assert!(c.out.done.is_empty());
    assert_eq!(c.stats.incomplete, 1);
}

#[test]
fn garbage_after_detection_counts_errors_then_gives_up() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /ok HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    c.seg(IN, b"\x00\x01\x02garbage");
    assert_eq!(c.stats.parse_errors, 1);
    assert!(!c.p.gave_up());
    // Resynchronises on the next segment that starts with a request.
    c.seg(IN, b"GET /again HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![s("GET", "/ok", 200), s("GET", "/again", 200)]
    );
    // A response that is garbage, then garbage requests: three errors in a row give up.
    c.seg(IN, b"GET /x HTTP/1.1\r\n\r\n");
    c.seg(OUT, b"HTTP/1.1 abc\r\n\r\n");
    c.seg(IN, b"\xffnot http\r\n\r\n");
    c.seg(IN, b"GET /y HTTP/1.1\r\n\r\n"); // resyncs (resets the streak)
    c.seg(OUT, b"garbage");
    c.seg(OUT, b"more garbage");
    assert!(c.stats.parse_errors >= 3);
    let before = c.out.done.len();
    c.seg(IN, b"\x00\x00\x00");
    c.seg(IN, b"\x00\x00\x00");
    c.seg(IN, b"\x00\x00\x00");
    assert!(c.p.gave_up());
    c.seg(IN, b"GET /ignored HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(c.out.done.len(), before, "a given-up parser emits nothing");
}

#[test]
fn truncated_head_keeps_start_line_and_resyncs() {
    let mut c = Conn::server();
    // A 3000-byte head of which 64 bytes were captured.
    let mut head = b"GET /users/12?token=abc HTTP/1.1\r\nHost: x\r\nCookie: ".to_vec();
    head.truncate(64);
    c.seg_total(IN, &head, 3000);
    c.seg(OUT, OK_5);
    c.seg(IN, b"GET /next HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![s("GET", "/users/12", 200), s("GET", "/next", 200)]
    );
    assert!(c.out.done[0].trust.contains(Trust::HEAD_TRUNCATED));
    assert!(!c.out.done[1].trust.contains(Trust::HEAD_TRUNCATED));
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn chunked_sync_lost_past_capture_is_inferred_at_next_request() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /feed HTTP/1.1\r\n\r\n");
    // Head + start of a chunk captured; the next size line is past the capture.
    c.seg_total(
        OUT,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123",
        5000,
    );
    c.seg_total(OUT, b"more bytes we cannot frame", 8000); // exits at 1205
    assert!(c.out.done.is_empty());
    c.seg(IN, b"GET /after HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![s("GET", "/feed", 200), s("GET", "/after", 200)]
    );
    assert!(c.out.done[0].trust.contains(Trust::END_INFERRED));
    assert_eq!(c.out.done[0].end_ns, 1205);
}

#[test]
fn pipelined_responses_past_the_capture_are_written_off_not_mismatched() {
    let mut c = Conn::client();
    let mut reqs = Vec::new();
    for i in 0..4 {
        reqs.extend_from_slice(format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    c.seg(OUT, &reqs);
    // Four 404s arrive in one read; the capture holds the first one and the start of the second.
    let body = "x".repeat(50);
    let one = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let all = one.repeat(4);
    let visible = one.len() + 30;
    c.seg_total(IN, &all.as_bytes()[..visible], all.len() as u64);
    assert_eq!(c.summary(), vec![s("GET", "/r0", 404)]);
    // The client goes on with a new request: its response must not be taken for /r1's.
    c.seg(OUT, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    c.seg(IN, OK_5);
    assert_eq!(
        c.summary(),
        vec![
            s("GET", "/r0", 404),
            s("GET", "/r1", 404),
            s("GET", "/next", 200)
        ]
    );
    // /r1's status line was captured: reported, with an inferred end. /r2 and /r3 went by
    // unseen: written off as incomplete.
    assert!(c.out.done[1].trust.contains(Trust::END_INFERRED));
    assert!(c.out.done[1].trust.contains(Trust::HEAD_TRUNCATED));
    assert_eq!(c.out.done[2].trust, Trust::default());
    assert_eq!(c.stats.incomplete, 2);
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn idle_finishes_response_without_framing() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /sse HTTP/1.1\r\n\r\n");
    c.seg(OUT, b"HTTP/1.1 200 OK\r\n\r\nevent: 1\n\n");
    c.p.on_idle(&mut c.out);
    assert_eq!(c.summary(), vec![s("GET", "/sse", 200)]);
    assert!(c.out.done[0].trust.contains(Trust::END_INFERRED));
}

#[test]
fn switching_protocols_stops_parsing() {
    let mut c = Conn::server();
    c.seg(
        IN,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    c.seg(
        OUT,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(c.summary(), vec![s("GET", "/ws", 101)]);
    assert!(c.p.gave_up());
    c.seg(IN, b"\x81\x85binary frame");
    assert_eq!(c.stats.parse_errors, 0);
}

#[test]
fn response_without_request_is_unmatched() {
    let mut c = Conn::server();
    c.seg(OUT, OK_5);
    c.seg(IN, b"GET /then HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(c.summary(), vec![s("GET", "/then", 200)]);
    assert_eq!(c.stats.unmatched_responses, 1);
}

#[test]
fn unknown_method_is_other_and_paths_are_cleaned() {
    let mut c = Conn::server();
    c.seg(IN, b"PROPFIND /dav HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    c.seg(
        IN,
        b"GET http://example.com/abs/path?x=1#frag HTTP/1.1\r\n\r\n",
    );
    c.seg(OUT, OK_5);
    c.seg(IN, b"OPTIONS * HTTP/1.1\r\n\r\n");
    c.seg(OUT, OK_5);
    assert_eq!(
        c.summary(),
        vec![
            s("_OTHER", "/dav", 200),
            s("GET", "/abs/path", 200),
            s("OPTIONS", "*", 200)
        ]
    );
}

#[test]
fn pipeline_depth_is_bounded() {
    let mut c = Conn::server();
    let mut burst = Vec::new();
    for i in 0..(MAX_PENDING + 5) {
        burst.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
    }
    c.seg(IN, &burst);
    assert_eq!(c.p.pending.len(), MAX_PENDING);
    assert_eq!(c.stats.pipeline_overflow, 5);
}

#[test]
fn starts_are_reported_with_sequence_and_trace_context() {
    let mut c = Conn::server();
    c.seg(
        IN,
        b"GET /a HTTP/1.1\r\nUser-Agent: curl/8\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
          tracestate: vendor=x\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    assert_eq!(
        c.out.started.len(),
        2,
        "both pipelined heads reported at once"
    );
    assert_eq!((c.out.started[0].seq, c.out.started[1].seq), (0, 1));
    assert_eq!(c.out.started[0].start_ns, 1005);
    assert!(
        c.out.started[0]
            .traceparent
            .is_some_and(|t| t.flags & 1 == 1)
    );
    assert!(c.out.started[1].traceparent.is_none());
    assert!(c.out.done.is_empty(), "nothing completed yet");
    c.seg(OUT, OK_5);
    c.seg(OUT, OK_5);
    let first = &c.out.done[0];
    assert_eq!(first.seq, 0);
    assert_eq!(
        first.http().expect("http").user_agent.as_deref(),
        Some("curl/8")
    );
    assert_eq!(
        first.http().expect("http").tracestate.as_deref(),
        Some("vendor=x")
    );
    assert_eq!(
        first.http().expect("http").traceparent,
        c.out.started[0].traceparent
    );
    assert_eq!(c.out.done[1].seq, 1);
}

#[test]
fn detection() {
    let seg = |direction, data: &'static [u8]| Segment {
        direction,
        data,
        total_len: data.len() as u64,
        ts_ns: 0,
        tid: 0,
    };
    let server = Detected::Side(Side::Server);
    let client = Detected::Side(Side::Client);
    assert_eq!(Http1Parser::detect(&seg(IN, b"GET / HTTP/1.1\r\n")), server);
    assert_eq!(
        Http1Parser::detect(&seg(OUT, b"GET / HTTP/1.1\r\n")),
        client
    );
    assert_eq!(
        Http1Parser::detect(&seg(OUT, b"HTTP/1.1 200 OK\r\n")),
        server
    );
    assert_eq!(
        Http1Parser::detect(&seg(IN, b"HTTP/1.0 200 OK\r\n")),
        client
    );
    assert_eq!(
        Http1Parser::detect(&seg(IN, b"\x16\x03\x01\x00\xa5\x01")),
        Detected::No
    );
    assert_eq!(
        Http1Parser::detect(&seg(IN, b"SSH-2.0-OpenSSH_9.2\r\n")),
        Detected::No
    );
    assert_eq!(
        Http1Parser::detect(&seg(IN, b"*3\r\n$3\r\nSET\r\n")),
        Detected::No
    );
    assert_eq!(Http1Parser::detect(&seg(IN, b"GETTING")), Detected::No);
    assert_eq!(Http1Parser::detect(&seg(IN, b"")), Detected::No);
    // Too short to tell: wait for the next segment.
    assert_eq!(Http1Parser::detect(&seg(IN, b"GE")), Detected::Undecided);
    assert_eq!(Http1Parser::detect(&seg(IN, b"HTTP/")), Detected::Undecided);
    // A request line written in pieces, cut before its target ended.
    assert_eq!(Http1Parser::detect(&seg(IN, b"GET ")), Detected::Undecided);
    assert_eq!(
        Http1Parser::detect(&seg(OUT, b"GET /users/")),
        Detected::Undecided
    );
    assert_eq!(
        Http1Parser::detect(&seg(IN, b"DELETE /a/b")),
        Detected::Undecided
    );
    assert_eq!(Http1Parser::detect(&seg(IN, b"GET /\x00")), Detected::No);
    assert_eq!(Http1Parser::detect(&seg(IN, b"GET /a\r\n")), Detected::No);
    // ... unless bytes after it were not captured: it can never be completed.
    let cut = Segment {
        total_len: 10_000,
        ..seg(IN, b"GET /users/")
    };
    assert_eq!(Http1Parser::detect(&cut), Detected::No);
}

#[test]
fn random_bytes_never_panic() {
    let mut state = 0x9e37_79b9_u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for round in 0..200 {
        let mut c = if round % 2 == 0 {
            Conn::server()
        } else {
            Conn::client()
        };
        for _ in 0..20 {
            let len = (next() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| (next() & 0xff) as u8).collect();
            if next() % 3 == 0 {
                bytes.splice(
                    0..0,
                    b"GET / HTTP/1.1\r\nContent-Length: 3\r\n".iter().copied(),
                );
            }
            if next() % 3 == 0 {
                bytes.splice(
                    0..0,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .iter()
                        .copied(),
                );
            }
            let dir = if next() % 2 == 0 { IN } else { OUT };
            let total = bytes.len() as u64 + u64::from(next() % 3) * 1000;
            c.seg_total(dir, &bytes, total);
        }
        c.p.on_idle(&mut c.out);
        c.close();
    }
}

/// Records lost on a keep-alive connection (`on_gap`, as the pipeline calls it): B's
/// response went by unseen. B is written off; C pairs with its own response, not with B.
#[test]
fn gap_drops_the_stale_request() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"); // 1005
    c.seg(OUT, OK_5); // 1105
    c.seg(IN, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"); // 1205
    c.p.on_gap(&mut c.stats);
    c.seg(IN, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"); // 1305
    c.seg(OUT, OK_5); // 1405
    assert_eq!(c.summary(), vec![s("GET", "/a", 200), s("GET", "/c", 200)]);
    let r = &c.out.done[1];
    assert_eq!((r.start_ns, r.end_ns), (1305, 1405));
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.unmatched_responses, 0);
}

/// Records lost inside a response body: what follows the gap is skipped up to the next
/// status line, the response that was open is written off.
#[test]
fn gap_inside_a_body_skips_to_the_next_message() {
    let mut c = Conn::server();
    c.seg(IN, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); // 1005
    c.seg(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nxxxx",
    ); // 1105
    c.p.on_gap(&mut c.stats);
    c.seg(OUT, &[b'x'; 300]); // 1205
    c.seg(IN, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"); // 1305
    c.seg(OUT, OK_5); // 1405
    assert_eq!(c.summary(), vec![s("GET", "/next", 200)]);
    let r = &c.out.done[0];
    assert_eq!((r.start_ns, r.end_ns), (1305, 1405));
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.stats.parse_errors, 0);
}
