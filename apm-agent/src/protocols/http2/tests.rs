//! Byte-stream tests: frames built here (header blocks by `loona-hpack`'s encoder, one per
//! direction as a real peer keeps) are fed as syscall-sized segments, and the exact requests
//! and counters that come out are checked.
use loona_hpack::Encoder;

use super::{
    frames::{flag, kind},
    *,
};
use crate::protocols::{Detection, Parser};

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

/// One frame: header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &p)
}

/// The two peers' HPACK encoders.
struct Peers {
    client: Encoder<'static>,
    server: Encoder<'static>,
}

impl Peers {
    fn new() -> Self {
        Self {
            client: Encoder::new(),
            server: Encoder::new(),
        }
    }

    fn request_block(&mut self, method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut h: Vec<(&[u8], &[u8])> = vec![
            (b":method", method.as_bytes()),
            (b":scheme", b"http"),
            (b":authority", b"example.test:8080"),
            (b":path", path.as_bytes()),
            (b"user-agent", b"curl/7.88.1"),
        ];
        h.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        self.client.encode(h)
    }

    fn request(&mut self, stream: u32, method: &str, path: &str, end_stream: bool) -> Vec<u8> {
        let block = self.request_block(method, path, &[]);
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        frame(kind::HEADERS, flags, stream, &block)
    }

    fn response_block(&mut self, status: &str) -> Vec<u8> {
        self.server.encode([
            (&b":status"[..], status.as_bytes()),
            (b"server", b"nginx"),
            (b"content-type", b"text/html"),
        ])
    }

    fn response(&mut self, stream: u32, status: &str, end_stream: bool) -> Vec<u8> {
        let block = self.response_block(status);
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        frame(kind::HEADERS, flags, stream, &block)
    }
}

fn data(stream: u32, body: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::DATA, flags, stream, body)
}

/// The client's first bytes: preface and SETTINGS.
fn client_start() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(settings(&[(3, 100), (4, 65535)]));
    b
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// One connection under test, with a fake clock: each segment returns at `t + 5`, then the
/// clock moves on by 100.
struct Conn {
    p: Http2Parser,
    side: Side,
    out: ParserOut,
    stats: ParseStats,
    t: u64,
}

impl Conn {
    fn new(side: Side) -> Self {
        Self {
            p: Http2Parser::new(side),
            side,
            out: ParserOut::default(),
            stats: ParseStats::default(),
            t: 1000,
        }
    }

    /// Bytes the client sent: read by a server, written by a client.
    fn client_sent(&mut self, data: &[u8]) {
        let d = if self.side == Side::Server { IN } else { OUT };
        self.seg_total(d, data, data.len() as u64);
    }

    /// Bytes the server sent.
    fn server_sent(&mut self, data: &[u8]) {
        let d = if self.side == Side::Server { OUT } else { IN };
        self.seg_total(d, data, data.len() as u64);
    }

    fn server_sent_total(&mut self, data: &[u8], total: u64) {
        let d = if self.side == Side::Server { OUT } else { IN };
        self.seg_total(d, data, total);
    }

    fn client_sent_total(&mut self, data: &[u8], total: u64) {
        let d = if self.side == Side::Server { IN } else { OUT };
        self.seg_total(d, data, total);
    }

    fn seg_total(&mut self, direction: Direction, data: &[u8], total: u64) {
        crate::fuzzing::seeds::record("http2", direction, data, total);
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

    /// (path, start, end) of every request so far.
    fn times(&self) -> Vec<(String, u64, u64)> {
        self.out
            .done
            .iter()
            .map(|r| (r.http().expect("http").path.clone(), r.start_ns, r.end_ns))
            .collect()
    }
}

fn s(m: &'static str, p: &str, st: u16) -> (&'static str, String, u16) {
    (m, p.to_owned(), st)
}

/// Server side: preface, one GET, its response in HEADERS + DATA.
#[test]
fn server_single_request() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let block = peers.request_block("GET", "/users/42?token=secret", &[("traceparent", tp)]);
    let req = frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &block,
    );
    c.client_sent(&cat(&[client_start(), req])); // t=1005
    c.server_sent(&settings(&[(3, 128)])); // 1105
    c.client_sent(&frame(kind::SETTINGS, flag::ACK, 0, &[])); // 1205
    c.server_sent(&peers.response(1, "200", false)); // 1305
    c.server_sent(&data(1, b"hello", true)); // 1405
    assert_eq!(c.summary(), vec![s("GET", "/users/42", 200)]);
    let r = &c.out.done[0];
    assert_eq!((r.start_ns, r.end_ns, r.seq), (1005, 1405, 0));
    assert_eq!((r.protocol, r.side), (Protocol::Http2, Side::Server));
    let h = r.http().expect("http");
    assert_eq!(h.version, HttpVersion::Http2);
    assert_eq!(h.version.as_str(), "2");
    assert_eq!(h.host, None, "the server side keeps no authority");
    assert_eq!(h.user_agent.as_deref(), Some("curl/7.88.1"));
    assert!(h.traceparent.is_some());
    assert_eq!(c.out.started.len(), 1);
    assert_eq!(c.out.started[0].traceparent, h.traceparent);
    assert_eq!(c.stats, ParseStats::default());
    assert!(!c.p.gave_up());
}

/// Client side: the authority names the server; a trailers-only response (HEADERS with
/// END_STREAM) ends the stream.
#[test]
fn client_side_and_headers_only_response() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Client);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "DELETE", "/items/7", true),
    ]));
    c.server_sent(&cat(&[settings(&[]), peers.response(1, "404", true)]));
    assert_eq!(c.summary(), vec![s("DELETE", "/items/7", 404)]);
    let r = &c.out.done[0];
    assert_eq!((r.side, r.start_ns, r.end_ns), (Side::Client, 1005, 1105));
    assert_eq!(
        r.http().expect("http").host.as_deref(),
        Some("example.test:8080")
    );
    assert_eq!(c.stats, ParseStats::default());
}

/// Three streams whose requests go out together and whose responses come back out of order,
/// spread over segments: each keeps its own latency.
#[test]
fn interleaved_streams_keep_their_own_times() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/a", true),
        peers.request(3, "GET", "/b", true),
    ])); // 1005
    c.client_sent(&peers.request(5, "POST", "/c", false)); // 1105
    c.server_sent(&cat(&[settings(&[]), peers.response(3, "200", false)])); // 1205
    c.client_sent(&data(5, b"{\"x\":1}", true)); // 1305
    c.server_sent(&cat(&[
        peers.response(1, "200", false),
        data(3, b"bbb", true),
        data(1, b"a", false),
    ])); // 1405
    c.server_sent(&peers.response(5, "201", true)); // 1505
    c.server_sent(&data(1, b"aa", true)); // 1605
    let mut times = c.times();
    times.sort();
    assert_eq!(
        times,
        vec![
            ("/a".to_owned(), 1005, 1605),
            ("/b".to_owned(), 1005, 1405),
            ("/c".to_owned(), 1105, 1505),
        ]
    );
    let mut seqs: Vec<(String, u64)> = c
        .out
        .done
        .iter()
        .map(|r| (r.http().expect("http").path.clone(), r.seq))
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        vec![("/a".into(), 0), ("/b".into(), 1), ("/c".into(), 2)]
    );
    assert_eq!(c.summary().len(), 3);
    assert!(c.summary().contains(&s("POST", "/c", 201)));
    assert_eq!(c.stats, ParseStats::default());
}

/// A request header block split over HEADERS and two CONTINUATION frames, in separate
/// segments.
#[test]
fn continuation_frames() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    let block = peers.request_block("GET", "/long", &[("x-big", &"v".repeat(300))]);
    let (a, rest) = block.split_at(10);
    let (b, d) = rest.split_at(100);
    c.client_sent(&cat(&[
        client_start(),
        frame(kind::HEADERS, flag::END_STREAM, 1, a),
    ]));
    c.client_sent(&frame(kind::CONTINUATION, 0, 1, b));
    c.client_sent(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, d));
    c.server_sent(&cat(&[settings(&[]), peers.response(1, "200", true)]));
    assert_eq!(c.summary(), vec![s("GET", "/long", 200)]);
    assert_eq!(c.out.done[0].start_ns, 1005);
    assert_eq!(c.stats, ParseStats::default());
}

/// A CONTINUATION that does not follow a header block is a connection error: counted, given
/// up.
#[test]
fn stray_continuation_gives_up() {
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        frame(kind::CONTINUATION, 4, 1, b"x"),
    ]));
    assert!(c.p.gave_up());
    assert_eq!(c.stats.parse_errors, 1);
}

/// PADDED and PRIORITY flags on HEADERS, PADDED on DATA, a PRIORITY frame, PING,
/// WINDOW_UPDATE and an unknown frame type in between.
#[test]
fn padding_priority_and_other_frames() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    let block = peers.request_block("PUT", "/p", &[]);
    let mut payload = vec![3]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight 16
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    let headers = frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
        1,
        &payload,
    );
    c.client_sent(&cat(&[
        client_start(),
        frame(kind::PRIORITY, 0, 3, &[0, 0, 0, 1, 10]),
        headers,
        frame(kind::WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
        frame(0xfa, 0x3, 1, b"extension frame"),
        frame(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
            &[2, b'h', b'i', 0, 0],
        ),
    ]));
    c.server_sent(&cat(&[
        settings(&[]),
        frame(kind::PING, 0, 0, &[1; 8]),
        peers.response(1, "204", true),
    ]));
    assert_eq!(c.summary(), vec![s("PUT", "/p", 204)]);
    assert_eq!(c.stats, ParseStats::default());
}

/// A padding length beyond the payload is a connection error.
#[test]
fn padding_longer_than_payload_gives_up() {
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::PADDED,
            1,
            &[200, 0x82],
        ),
    ]));
    assert!(c.p.gave_up());
    assert_eq!(c.stats.parse_errors, 1);
}

/// A 100 (Continue) head is interim; trailers after the body end the stream.
#[test]
fn interim_response_and_trailers() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Client);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "POST", "/upload", false),
    ]));
    c.server_sent(&cat(&[settings(&[]), peers.response(1, "100", false)]));
    c.client_sent(&data(1, b"payload", true));
    c.server_sent(&peers.response(1, "200", false));
    c.server_sent(&data(1, b"ok", false));
    let trailers = peers
        .server
        .encode([(&b"grpc-status"[..], &b"0"[..]), (b":status", b"500")]);
    c.server_sent(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &trailers,
    ));
    assert_eq!(c.summary(), vec![s("POST", "/upload", 200)]);
    assert_eq!(c.out.done[0].end_ns, 1505);
    assert_eq!(c.stats, ParseStats::default());
}

/// A reset stream is an incomplete exchange; the stream next to it is unaffected.
#[test]
fn rst_stream_counts_incomplete() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/slow", true),
        peers.request(3, "GET", "/fast", true),
    ]));
    c.client_sent(&frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    c.server_sent(&cat(&[settings(&[]), peers.response(3, "200", true)]));
    assert_eq!(c.summary(), vec![s("GET", "/fast", 200)]);
    assert_eq!(c.stats.incomplete, 1);
    // A reset after the end changes nothing.
    c.client_sent(&frame(kind::RST_STREAM, 0, 3, &[0, 0, 0, 8]));
    assert_eq!(c.stats.incomplete, 1);
}

/// GOAWAY from the server: streams above its last stream id were never processed.
#[test]
fn goaway_drops_unprocessed_streams() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Client);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/1", true),
        peers.request(3, "GET", "/3", true),
        peers.request(5, "GET", "/5", true),
    ]));
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&[0, 0, 0, 0]);
    c.server_sent(&cat(&[
        settings(&[]),
        frame(kind::GOAWAY, 0, 0, &goaway),
        peers.response(1, "200", true),
        peers.response(3, "503", true),
    ]));
    assert_eq!(c.summary(), vec![s("GET", "/1", 200), s("GET", "/3", 503)]);
    assert_eq!(c.stats.incomplete, 1);
    assert_eq!(c.p.conn.streams.len(), 0);
}

/// The whole of a conversation, one direction split at every byte boundary into two
/// segments: the same requests come out, whatever the split.
#[test]
fn frames_split_at_every_byte() {
    let mut peers = Peers::new();
    let client = cat(&[
        client_start(),
        peers.request(1, "GET", "/x", true),
        peers.request(3, "POST", "/y", false),
        data(3, b"body", true),
    ]);
    let server = cat(&[
        settings(&[]),
        peers.response(3, "201", false),
        peers.response(1, "200", false),
        data(1, b"one", true),
        data(3, &[b'z'; 100], true),
    ]);
    let want = vec![s("GET", "/x", 200), s("POST", "/y", 201)];
    for side in [Side::Server, Side::Client] {
        for k in 1..client.len() {
            let mut c = Conn::new(side);
            c.client_sent(&client[..k]);
            c.client_sent(&client[k..]);
            c.server_sent(&server);
            assert_eq!(c.summary(), want, "{side:?} client split at {k}");
            assert_eq!(c.stats, ParseStats::default());
        }
        for k in 1..server.len() {
            let mut c = Conn::new(side);
            c.client_sent(&client);
            c.server_sent(&server[..k]);
            c.server_sent(&server[k..]);
            assert_eq!(c.summary(), want, "{side:?} server split at {k}");
            assert_eq!(c.stats, ParseStats::default());
        }
    }
}

/// A DATA frame longer than the capture is skipped by its length: the frames after it in
/// the next segment, and the next stream, parse.
#[test]
fn data_past_the_capture_is_skipped() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/big", true),
    ]));
    // One write: HEADERS, then a 10000-byte DATA frame ending the stream, captured in part.
    let body = vec![b'b'; 10_000];
    let write = cat(&[
        settings(&[]),
        peers.response(1, "200", false),
        data(1, &body, false),
    ]);
    c.server_sent_total(&write[..4096], write.len() as u64); // 1105
    // The body goes on past one frame: another frame, also past the capture.
    let more = data(1, &body, true);
    c.server_sent_total(&more[..4096], more.len() as u64); // 1205
    c.client_sent(&peers.request(3, "GET", "/small", true));
    c.server_sent(&cat(&[
        peers.response(3, "200", false),
        data(3, b"s", true),
    ]));
    assert_eq!(
        c.summary(),
        vec![s("GET", "/big", 200), s("GET", "/small", 200)]
    );
    assert_eq!(c.out.done[0].end_ns, 1205);
    assert_eq!(c.stats, ParseStats::default());
}

/// A request header block running past the capture is lost: counted, never guessed; the
/// direction's table is unknown from then on (the next block is counted too), and the
/// streams' ends are still followed so nothing stays open.
#[test]
fn header_block_past_the_capture_is_lost() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    let block = peers.request_block(
        "GET",
        "/cookie",
        &[("x-session", "s1"), ("cookie", &"c".repeat(6000))],
    );
    let first = cat(&[
        client_start(),
        frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block,
        ),
    ]);
    c.client_sent_total(&first[..4096], first.len() as u64);
    // The next request names the entry the lost block added to the client's table: that
    // field is unknown, but the method and path are read, and are all that is reported.
    let block = peers.request_block("GET", "/next", &[("x-session", "s1")]);
    c.client_sent(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &block,
    ));
    c.server_sent(&cat(&[
        settings(&[]),
        peers.response(1, "200", true),
        peers.response(3, "200", true),
    ]));
    assert_eq!(c.summary(), vec![s("GET", "/next", 200)]);
    assert_eq!(c.stats.header_blocks_lost, 1);
    assert_eq!(c.stats.header_blocks_partial, 1);
    assert_eq!(c.p.conn.streams.len(), 0, "stream ends followed");
    assert!(c.p.conn.hpack.requests.is_poisoned());
    assert!(!c.p.conn.hpack.responses.is_poisoned());
    assert!(!c.p.gave_up());
}

/// Bytes after the preface that are not frames (here an HTTP/1 request): counted, given up,
/// no panic.
#[test]
fn garbage_after_the_preface_gives_up() {
    for side in [Side::Server, Side::Client] {
        let mut c = Conn::new(side);
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        c.client_sent(&bytes);
        assert!(c.p.gave_up());
        assert_eq!(c.stats.parse_errors, 1);
        c.server_sent(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(c.stats.parse_errors, 1);
        assert!(c.out.done.is_empty());
    }
    // A wrong preface past the detected prefix.
    let mut c = Conn::new(Side::Server);
    c.client_sent(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
    assert!(c.p.gave_up());
}

/// Detection: the preface, its direction, and a prefix of it; HTTP/1 is still HTTP/1.
#[test]
fn detection() {
    let seg = |direction, data: &'static [u8]| Segment {
        direction,
        data,
        total_len: data.len() as u64,
        ts_ns: 0,
        tid: 0,
    };
    let preface: &'static [u8] = PREFACE;
    assert_eq!(
        Http2Parser::detect(&seg(OUT, preface)),
        Detected::Side(Side::Client)
    );
    assert_eq!(
        Http2Parser::detect(&seg(IN, preface)),
        Detected::Side(Side::Server)
    );
    assert_eq!(
        Http2Parser::detect(&seg(IN, b"PRI * HTTP")),
        Detected::Undecided
    );
    assert_eq!(Http2Parser::detect(&seg(IN, b"PRIX")), Detected::No);
    // A server that writes its SETTINGS first (TLS with ALPN h2).
    let server_first: &'static [u8] = &[
        0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 128, 0, 4, 0, 1, 0, 0,
    ];
    assert_eq!(
        Http2Parser::detect(&seg(OUT, server_first)),
        Detected::Side(Side::Server)
    );
    // Read by the client, or a SETTINGS ACK: not a first frame, but frames, as in the middle
    // of a connection older than the agent: a head may follow.
    assert_eq!(
        Http2Parser::detect(&seg(IN, server_first)),
        Detected::Undecided
    );
    let ack: &'static [u8] = &[0, 0, 0, 4, 1, 0, 0, 0, 0];
    assert_eq!(Http2Parser::detect(&seg(OUT, ack)), Detected::Undecided);
    // MySQL's greeting (length, sequence id 0, protocol 10) is not HTTP/2.
    let mysql: &'static [u8] = b"\x4a\x00\x00\x00\x0a8.0.36\x00\x01\x00\x00\x00";
    assert_eq!(Http2Parser::detect(&seg(OUT, mysql)), Detected::No);
    assert_eq!(
        Http2Parser::detect(&seg(IN, b"GET / HTTP/1.1\r\n\r\n")),
        Detected::No
    );
    assert!(matches!(
        Parser::detect(&seg(IN, preface)),
        Detection::Match(Parser::Http2(_))
    ));
    assert!(matches!(
        Parser::detect(&seg(IN, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
        Detection::Match(Parser::Http1(_))
    ));
    assert!(matches!(
        Parser::detect(&seg(IN, b"POST /a HTTP/1.1\r\n\r\n")),
        Detection::Match(Parser::Http1(_))
    ));
    assert!(matches!(
        Parser::detect(&seg(IN, b"P")),
        Detection::Undecided
    ));
}

/// SETTINGS_HEADER_TABLE_SIZE from the server bounds the table of the client's blocks (the
/// other direction): a size update up to it decodes; without it, the same update is refused
/// and counted.
#[test]
fn header_table_size_applies_to_the_other_direction() {
    let size_update = |size: usize| {
        let mut b = loona_hpack::encoder::encode_integer(size, 5);
        b[0] |= 0x20;
        b
    };
    let run = |announce: Option<u32>| {
        let mut peers = Peers::new();
        peers.client.set_max_table_size(16384);
        let mut c = Conn::new(Side::Server);
        c.client_sent(&client_start());
        let mut s = vec![(3, 100)];
        if let Some(v) = announce {
            s.push((1, v));
        }
        c.server_sent(&settings(&s));
        let mut block = size_update(16384);
        block.extend(peers.request_block("GET", "/t", &[("x-a", &"a".repeat(5000))]));
        c.client_sent(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block,
        ));
        // The second request refers to the big entry in the dynamic table.
        let block = peers.request_block("GET", "/u", &[("x-a", &"a".repeat(5000))]);
        c.client_sent(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3,
            &block,
        ));
        c.server_sent(&peers.response(1, "200", true));
        c.server_sent(&peers.response(3, "200", true));
        c
    };
    let c = run(Some(16384));
    assert_eq!(c.summary(), vec![s("GET", "/t", 200), s("GET", "/u", 200)]);
    assert_eq!(c.stats, ParseStats::default());
    // Without it the first block's size update is refused (lost); the second names the big
    // entry, unknown now, but its method and path are read.
    let c = run(None);
    assert_eq!(c.summary(), vec![s("GET", "/u", 200)]);
    assert_eq!(c.stats.header_blocks_lost, 1);
    assert_eq!(c.stats.header_blocks_partial, 1);
}

/// A server push: counted, not reported, and its header block still decoded so that the
/// server's table stays right for the responses after it.
#[test]
fn push_promise_keeps_the_table_in_step() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Client);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/page", true),
    ]));
    let pushed = peers.server.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":path", b"/style.css"),
        (b"x-pushed-entry", b"goes into the dynamic table"),
    ]);
    let mut payload = 2u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&pushed);
    c.server_sent(&cat(&[
        settings(&[]),
        frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &payload),
        peers.response(1, "200", false),
        peers.response(2, "200", false),
        data(2, b"css", true),
        data(1, b"html", true),
    ]));
    // The next response names the pushed entry by index.
    c.client_sent(&peers.request(3, "GET", "/again", true));
    let block = peers.server.encode([
        (&b":status"[..], &b"404"[..]),
        (b"x-pushed-entry", b"goes into the dynamic table"),
    ]);
    c.server_sent(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &block,
    ));
    assert_eq!(
        c.summary(),
        vec![s("GET", "/page", 200), s("GET", "/again", 404)]
    );
    assert_eq!(c.stats.push_promises, 1);
    assert_eq!(c.stats.header_blocks_lost, 0);
    assert_eq!(c.stats.unmatched_responses, 0);
}

/// Records lost (`on_gap`): streams in flight are dropped (counted), both tables become
/// unknown, and framing resumes at the next segment that starts with frames; later streams
/// are counted as lost and still followed to their end.
#[test]
fn gap_drops_streams_and_poisons_tables() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    let block = peers.request_block("GET", "/before", &[("x-session", "s1")]);
    c.client_sent(&cat(&[
        client_start(),
        frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block,
        ),
    ]));
    c.p.on_gap(&mut c.stats);
    assert_eq!(c.stats.incomplete, 1);
    // Mid-frame bytes (the tail of a lost frame) are skipped...
    c.server_sent(&[0x55; 7]);
    // ... and whole frames picked up again.
    let block = peers.request_block("GET", "/after", &[("x-session", "s1")]);
    c.client_sent(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &block,
    ));
    c.server_sent(&peers.response(3, "200", true));
    // A request naming an entry of the client's dynamic table from before the gap
    // (x-session): that field is unknown, its method and path are read.
    assert_eq!(c.summary(), vec![s("GET", "/after", 200)]);
    assert_eq!(c.stats.header_blocks_lost, 0);
    assert_eq!(c.stats.header_blocks_partial, 1);
    // A request that names only static entries and literals decodes whole.
    c.client_sent(&peers.request(5, "GET", "/static", true));
    c.server_sent(&peers.response(5, "200", true));
    assert_eq!(
        c.summary(),
        vec![s("GET", "/after", 200), s("GET", "/static", 200)]
    );
    assert_eq!(c.stats.header_blocks_partial, 1);
    assert_eq!(c.p.conn.streams.len(), 0);
    assert!(!c.p.gave_up());
}

/// At most [`streams::MAX_STREAMS`] streams are followed at once; the rest are counted.
#[test]
fn stream_budget_overflow_is_counted() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.client_sent(&client_start());
    let n = streams::MAX_STREAMS as u32 + 2;
    for i in 0..n {
        c.client_sent(&peers.request(2 * i + 1, "GET", "/q", true));
    }
    assert_eq!(c.stats.streams_overflow, 2);
    // The refused streams' responses are not counted as unmatched.
    c.server_sent(&settings(&[]));
    for i in 0..n {
        c.server_sent(&peers.response(2 * i + 1, "200", true));
    }
    assert_eq!(c.out.done.len(), streams::MAX_STREAMS);
    assert_eq!(c.stats.unmatched_responses, 0);
}

/// The close ends streams still open: counted as incomplete.
#[test]
fn close_counts_open_streams() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/open", true),
    ]));
    c.p.on_close(5000, &mut c.out, &mut c.stats);
    assert_eq!(c.stats.incomplete, 1);
    assert!(c.out.done.is_empty());
}

/// A server write of several frames, captured only in part: the frame headers past the
/// capture are lost, framing resumes at the next write, and the responses after it decode
/// again as long as they name only static-table entries (nginx encodes responses so); one
/// naming a dynamic entry is counted as lost. A stream whose end went by unseen is counted
/// as incomplete at the close.
#[test]
fn framing_lost_past_the_capture_recovers_on_static_only_blocks() {
    let static_only = |status: &str, end: bool| {
        let mut e = Encoder::new();
        let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
        frame(
            kind::HEADERS,
            flags,
            0,
            &e.encode([(&b":status"[..], status.as_bytes())]),
        )
    };
    let on = |mut f: Vec<u8>, stream: u32| {
        f[5..9].copy_from_slice(&stream.to_be_bytes());
        f
    };
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/big", true),
        peers.request(3, "GET", "/small", true),
    ]));
    let body = vec![b'b'; 8192];
    let write = cat(&[
        settings(&[]),
        on(static_only("200", false), 1),
        data(1, &body, false),
        data(1, &body, true),
    ]);
    c.server_sent_total(&write[..4096], write.len() as u64);
    assert!(c.p.conn.hpack.responses.is_poisoned());
    c.server_sent(&cat(&[on(static_only("404", true), 3)]));
    assert_eq!(c.summary(), vec![s("GET", "/small", 404)]);
    // A response naming an entry of the server's table from before the loss (x-cache): its
    // status is read, and to a request known not to be gRPC that is all that matters.
    c.client_sent(&peers.request(5, "GET", "/dyn", true));
    peers.server.encode([(&b"x-cache"[..], &b"HIT"[..])]); // in a block that went by unseen
    let cached = |peers: &mut Peers| {
        peers
            .server
            .encode([(&b":status"[..], &b"200"[..]), (b"x-cache", b"HIT")])
    };
    let block = cached(&mut peers);
    c.server_sent(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        5,
        &block,
    ));
    assert_eq!(c.summary().len(), 2);
    assert_eq!(c.stats.header_blocks_partial, 1);
    // To a gRPC call the unknown field may be its grpc-status: lost, not guessed.
    let grpc = peers.request_block(
        "POST",
        "/pkg.Svc/Call",
        &[("content-type", "application/grpc")],
    );
    c.client_sent(&frame(kind::HEADERS, flag::END_HEADERS, 7, &grpc));
    let block = cached(&mut peers);
    c.server_sent(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        7,
        &block,
    ));
    assert_eq!(c.summary().len(), 2);
    assert_eq!(c.stats.header_blocks_lost, 1);
    // The server goes on inserting (x-fresh, new): blocks that name only what it inserted
    // since the loss decode whole again.
    for stream in [9, 11] {
        c.client_sent(&peers.request(stream, "GET", "/fresh", true));
        let block = peers
            .server
            .encode([(&b":status"[..], &b"200"[..]), (b"x-fresh", b"1")]);
        c.server_sent(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            stream,
            &block,
        ));
    }
    assert_eq!(
        c.summary(),
        vec![
            s("GET", "/small", 404),
            s("GET", "/dyn", 200),
            s("GET", "/fresh", 200),
            s("GET", "/fresh", 200)
        ]
    );
    assert_eq!(c.stats.header_blocks_lost, 1);
    assert_eq!(c.stats.header_blocks_partial, 1);
    c.p.on_close(9000, &mut c.out, &mut c.stats);
    assert_eq!(c.stats.incomplete, 1, "/big's end went by unseen");
    assert_eq!(c.stats.parse_errors, 0);
}

/// After a loss, the table's new entries are learnt: a block that names only entries
/// inserted since decodes again; one naming an entry from before the loss does not; an entry
/// inserted under an unknown name keeps the positions of the others right; a malformed block
/// forgets what was learnt.
#[test]
fn unknown_table_recovers_as_the_peer_inserts() {
    let mut e = Encoder::new();
    let mut h = hpack::Hpack::default();
    // Seen, then a block goes by unseen: x-old is in the table, unknown to the agent.
    let _ = h.decode(&e.encode([(&b":method"[..], &b"GET"[..]), (b":path", b"/a")]));
    let _unseen = e.encode([(&b"x-old"[..], &b"1"[..])]);
    h.poison();
    // Static names and literals decode; x-new (a new name) is inserted, and learnt.
    let first = e.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":path", b"/b"),
        (b"x-new", b"2"),
    ]);
    let got = h.decode(&first).expect("literals and static names decode");
    assert_eq!(got.path.as_deref(), Some("/b"));
    assert_eq!(h.learnt(), Some(1));
    // Names the learnt entry by index (62): decodes.
    let again = e.encode([(&b"x-new"[..], &b"2"[..]), (b":path", b"/c")]);
    let got = h.decode(&again).expect("a learnt entry decodes");
    assert_eq!(got.path.as_deref(), Some("/c"));
    assert!(!got.unknown);
    // Names x-old (63), from before the loss: read in part, flagged.
    let old = e.encode([(&b":path"[..], &b"/b"[..]), (b"x-old", b"1")]);
    let got = h.decode(&old).expect("walked");
    assert!(got.unknown);
    assert_eq!(got.path.as_deref(), Some("/b"));
    // Inserted under x-old's name (index 63, unknown) with value "3": a placeholder at 62,
    // x-new moves to 63 and still decodes there; the placeholder does not.
    assert!(
        h.decode(&[0x7f, 0x00, 0x01, b'3'])
            .is_some_and(|f| f.unknown)
    );
    assert_eq!(h.learnt(), Some(2));
    let got = h
        .decode(&[0xbf, 0x84])
        .expect("x-new at 63, :path / static");
    assert!(!got.unknown);
    assert!(h.decode(&[0xbe]).is_some_and(|f| f.unknown));
    // Malformed: what was learnt is forgotten.
    assert_eq!(h.decode(&[0x40, 0x05, b'a']), None);
    assert_eq!(h.learnt(), Some(0));
    assert_eq!(h.decode(&[0xff]), None);
    assert!(h.decode(&[]).is_some());
}

/// Server side over TLS: the server writes its SETTINGS before it reads the preface.
#[test]
fn server_writes_settings_first() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Server);
    c.server_sent(&cat(&[
        settings(&[(3, 128), (4, 65536)]),
        frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0x7f, 0, 0]),
    ]));
    c.client_sent(&cat(&[
        client_start(),
        peers.request(1, "GET", "/tls", true),
    ]));
    c.server_sent(&cat(&[
        frame(kind::SETTINGS, flag::ACK, 0, &[]),
        peers.response(1, "200", true),
    ]));
    assert_eq!(c.summary(), vec![s("GET", "/tls", 200)]);
    assert_eq!(c.stats, ParseStats::default());
}

/// gRPC's headers, as a grpc client and server send them.
fn grpc_request(peers: &mut Peers, stream: u32, method: &str) -> Vec<u8> {
    let block = peers.request_block(
        "POST",
        method,
        &[("content-type", "application/grpc"), ("te", "trailers")],
    );
    frame(kind::HEADERS, flag::END_HEADERS, stream, &block)
}

fn grpc_headers(peers: &mut Peers, stream: u32, extra: &[(&str, &str)], end: bool) -> Vec<u8> {
    let mut h: Vec<(&[u8], &[u8])> =
        vec![(b":status", b"200"), (b"content-type", b"application/grpc")];
    h.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let block = peers.server.encode(h);
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    frame(kind::HEADERS, flags, stream, &block)
}

fn grpc_trailers(peers: &mut Peers, stream: u32, status: &str) -> Vec<u8> {
    let block = peers.server.encode([
        (&b"grpc-status"[..], status.as_bytes()),
        (b"grpc-message", b"secret detail"),
    ]);
    frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        stream,
        &block,
    )
}

/// (path, grpc status) of every request so far.
fn grpc_summary(c: &Conn) -> Vec<(String, Option<&'static str>)> {
    c.out
        .done
        .iter()
        .map(|r| {
            let h = r.http().expect("http");
            (h.path.clone(), h.grpc.map(GrpcCode::as_str))
        })
        .collect()
}

/// A gRPC call's status is its trailers' `grpc-status` (here NOT_FOUND under HTTP 200), a
/// trailers-only response's own, or what the HTTP status maps to when there is none; a
/// plain HTTP/2 request on the same connection is no gRPC call.
#[test]
fn grpc_status_from_trailers_and_trailers_only() {
    for side in [Side::Server, Side::Client] {
        let mut peers = Peers::new();
        let mut c = Conn::new(side);
        let req1 = grpc_request(&mut peers, 1, "/apm.test.Echo/Say");
        c.client_sent(&cat(&[
            client_start(),
            req1,
            data(1, b"\0\0\0\0\x02hi", true),
        ]));
        let head = grpc_headers(&mut peers, 1, &[], false);
        let trailers = grpc_trailers(&mut peers, 1, "5");
        c.server_sent(&cat(&[
            settings(&[]),
            head,
            data(1, b"\0\0\0\0\x02hi", false),
        ]));
        c.server_sent(&trailers);
        // Trailers-only: one HEADERS with the status and END_STREAM.
        let req3 = grpc_request(&mut peers, 3, "/apm.test.Echo/Missing");
        c.client_sent(&cat(&[req3, data(3, b"\0\0\0\0\0", true)]));
        let only = grpc_headers(&mut peers, 3, &[("grpc-status", "0")], true);
        c.server_sent(&only);
        // No grpc-status at all: a 200 without it is UNKNOWN to a gRPC client.
        let req5 = grpc_request(&mut peers, 5, "/apm.test.Echo/Bare");
        c.client_sent(&cat(&[req5, data(5, b"", true)]));
        let bare = grpc_headers(&mut peers, 5, &[], true);
        c.server_sent(&bare);
        let req7 = peers.request(7, "GET", "/plain", true);
        c.client_sent(&req7);
        let plain = peers.response(7, "200", true);
        c.server_sent(&plain);
        assert_eq!(
            grpc_summary(&c),
            vec![
                ("/apm.test.Echo/Say".to_owned(), Some("NOT_FOUND")),
                ("/apm.test.Echo/Missing".to_owned(), Some("OK")),
                ("/apm.test.Echo/Bare".to_owned(), Some("UNKNOWN")),
                ("/plain".to_owned(), None),
            ],
            "{side:?}"
        );
        assert_eq!(c.out.done[0].http().expect("http").status, 200);
        assert_eq!(c.stats, ParseStats::default(), "{side:?}");
    }
}

/// Trailers that were not captured leave the call's status unknown: the call is not
/// reported (never a guessed status), and the lost block is counted.
#[test]
fn grpc_call_with_lost_trailers_is_not_reported() {
    let mut peers = Peers::new();
    let mut c = Conn::new(Side::Client);
    let req = grpc_request(&mut peers, 1, "/apm.test.Echo/Say");
    c.client_sent(&cat(&[client_start(), req, data(1, b"\0\0\0\0\0", true)]));
    let head = grpc_headers(&mut peers, 1, &[], false);
    c.server_sent(&cat(&[settings(&[]), head]));
    let trailers = grpc_trailers(&mut peers, 1, "0");
    // Only the trailers' frame header was captured.
    c.server_sent_total(&trailers[..9], trailers.len() as u64);
    assert_eq!(grpc_summary(&c), vec![]);
    assert_eq!(c.stats.header_blocks_lost, 1);
    assert_eq!(c.p.conn.streams.len(), 0, "the stream's end was followed");
}

#[test]
fn grpc_content_types() {
    for (value, grpc) in [
        ("application/grpc", true),
        ("application/grpc+proto", true),
        ("Application/GRPC;charset=utf-8", true),
        ("application/grpc-web", false),
        ("application/grpc-web+proto", false),
        ("application/json", false),
        ("application/grp", false),
    ] {
        let mut peers = Peers::new();
        let block = peers.request_block("POST", "/s/m", &[("content-type", value)]);
        let mut hpack = hpack::Hpack::default();
        let fields = hpack.decode(&block).expect("decodes");
        assert_eq!(fields.grpc, grpc, "{value}");
    }
}

/// Real bytes: one connection of Python grpcio 1.85.1 (C core) between
/// `tests/servers/grpc_echo.py call --say 3 --missing 1 --boom 1 --slow 2 --concurrent` and
/// its server, recorded by a TCP relay, one file per direction. Its HPACK uses the dynamic
/// table, its SETTINGS carry grpcio's private id 0xfe03, and it PINGs after data.
#[test]
fn grpcio_connection_bytes() {
    let c2s = include_bytes!("testdata/grpcio_client_to_server.bin");
    let s2c = include_bytes!("testdata/grpcio_server_to_client.bin");
    for side in [Side::Server, Side::Client] {
        let mut c = Conn::new(side);
        c.client_sent(c2s);
        c.server_sent(s2c);
        let calls =
            |m: &str, status: &'static str| ("/apm.test.Echo/".to_owned() + m, Some(status));
        assert_eq!(
            grpc_summary(&c),
            vec![
                calls("Say", "OK"),
                calls("Say", "OK"),
                calls("Say", "OK"),
                calls("Missing", "NOT_FOUND"),
                calls("Boom", "UNKNOWN"),
                calls("Slow", "OK"),
                calls("Slow", "OK"),
            ],
            "{side:?}"
        );
        assert_eq!(c.stats, ParseStats::default(), "{side:?}");
        assert!(!c.p.gave_up());
    }
}

/// `Upgrade: h2c` (RFC 7540 §3.2), as curl does it: an HTTP/1.1 request asking for h2c, the
/// 101 with the server's SETTINGS and stream 1's response in the same write, then the client's
/// preface and a second request on stream 3. Both requests come out as HTTP/2 exchanges, the
/// upgraded one with its HTTP/1 start, on either side.
#[test]
fn upgrade_h2c_continues_as_http2_with_the_request_as_stream_1() {
    for side in [Side::Server, Side::Client] {
        let (client_dir, server_dir) = match side {
            Side::Server => (IN, OUT),
            Side::Client => (OUT, IN),
        };
        let mut peers = Peers::new();
        let upgrade = b"GET /users/7?q=secret HTTP/1.1\r\nHost: example.test:8080\r\n\
            Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
            HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
        let mut switched =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        switched.extend(settings(&[(3, 100)]));
        switched.extend(peers.response(1, "200", false));
        switched.extend(data(1, b"hello", true));
        let segments: Vec<(Direction, Vec<u8>)> = vec![
            (client_dir, upgrade.to_vec()),
            (server_dir, switched),
            (client_dir, client_start()),
            (client_dir, peers.request(3, "POST", "/orders", true)),
            (server_dir, cat(&[peers.response(3, "201", true)])),
        ];
        let mut parser = None;
        let (mut out, mut stats) = (ParserOut::default(), ParseStats::default());
        for (i, (direction, data)) in segments.iter().enumerate() {
            let seg = Segment {
                direction: *direction,
                data,
                total_len: data.len() as u64,
                ts_ns: 1000 + 100 * i as u64,
                tid: 42,
            };
            let p = parser.get_or_insert_with(|| match Parser::detect(&seg) {
                Detection::Match(p) => p,
                other => panic!("{side:?}: first segment not detected: {other:?}"),
            });
            p.on_segment(&seg, &mut out, &mut stats);
        }
        let parser = parser.expect("a parser");
        assert_eq!(parser.protocol(), Protocol::Http2, "{side:?}");
        let done: Vec<_> = out
            .done
            .iter()
            .map(|r| {
                let h = r.http().expect("http");
                (
                    h.method.as_str(),
                    h.path.clone(),
                    h.status,
                    h.version,
                    r.seq,
                )
            })
            .collect();
        assert_eq!(
            done,
            vec![
                ("GET", "/users/7".to_owned(), 200, HttpVersion::Http2, 0),
                ("POST", "/orders".to_owned(), 201, HttpVersion::Http2, 1),
            ],
            "{side:?}"
        );
        // The upgraded request started with its HTTP/1 head and ended with stream 1's DATA.
        assert_eq!((out.done[0].start_ns, out.done[0].end_ns), (1000, 1100));
        assert_eq!(out.started.len(), 2, "{side:?}");
        assert_eq!(stats, ParseStats::default(), "{side:?}");
    }
}

/// A 101 to another protocol (WebSocket) is the end of the HTTP/1 exchange, as before: the
/// handshake is reported with its 101 and the connection is left alone.
#[test]
fn upgrade_to_websocket_stays_an_http1_exchange() {
    let mut parser = Parser::new(Protocol::Http1, Side::Server).expect("http1");
    let (mut out, mut stats) = (ParserOut::default(), ParseStats::default());
    let segments: [(Direction, &[u8]); 3] = [
        (
            IN,
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        (
            OUT,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        ),
        (IN, b"\x81\x85abcd1234x"),
    ];
    for (direction, data) in segments {
        let seg = Segment {
            direction,
            data,
            total_len: data.len() as u64,
            ts_ns: 1,
            tid: 1,
        };
        parser.on_segment(&seg, &mut out, &mut stats);
    }
    assert_eq!(parser.protocol(), Protocol::Http1);
    assert!(parser.gave_up());
    let statuses: Vec<u16> = out
        .done
        .iter()
        .map(|r| r.http().expect("http").status)
        .collect();
    assert_eq!(statuses, vec![101]);
}

/// A connection older than the agent: no preface, both tables already in use. Its first
/// segment seen (a request head among other frames, from either end) is taken for HTTP/2
/// mid-stream; requests whose method and path can be read are counted, with their
/// responses, from both ends; a connection of other binary traffic is not taken for it.
#[test]
fn connection_older_than_the_agent_is_read_from_the_middle() {
    for side in [Side::Server, Side::Client] {
        let mut peers = Peers::new();
        // Before the agent: the client's table gained x-trace, which later requests name.
        let _ = peers.request_block("GET", "/old", &[("x-trace", "t1")]);
        let mut traced = |stream: u32| {
            let block = peers.request_block("GET", "/users/7", &[("x-trace", "t1")]);
            frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                stream,
                &block,
            )
        };
        let (first, second) = (traced(41), traced(43));
        let (client_dir, server_dir) = match side {
            Side::Server => (IN, OUT),
            Side::Client => (OUT, IN),
        };
        let segments: Vec<(Direction, Vec<u8>)> = vec![
            (
                client_dir,
                cat(&[frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]), first]),
            ),
            (
                server_dir,
                cat(&[peers.response(41, "200", false), data(41, b"{}", true)]),
            ),
            (client_dir, second),
            (server_dir, peers.response(43, "404", true)),
        ];
        let (mut out, mut stats) = (ParserOut::default(), ParseStats::default());
        let mut parser = None;
        for (i, (direction, data)) in segments.iter().enumerate() {
            let seg = Segment {
                direction: *direction,
                data,
                total_len: data.len() as u64,
                ts_ns: 1000 + 100 * i as u64,
                tid: 7,
            };
            let p = parser.get_or_insert_with(|| match Parser::detect(&seg) {
                Detection::Match(p) => p,
                other => panic!("{side:?}: not detected: {other:?}"),
            });
            p.on_segment(&seg, &mut out, &mut stats);
        }
        let done: Vec<_> = out
            .done
            .iter()
            .map(|r| {
                let h = r.http().expect("http");
                (r.side, h.method.as_str(), h.path.clone(), h.status)
            })
            .collect();
        assert_eq!(
            done,
            vec![
                (side, "GET", "/users/7".to_owned(), 200),
                (side, "GET", "/users/7".to_owned(), 404),
            ],
            "{side:?}"
        );
        // The requests named x-trace from the unknown table: read in part.
        assert_eq!(stats.header_blocks_partial, 2, "{side:?}");
        assert_eq!(stats.header_blocks_lost, 0, "{side:?}");
    }
    // Frames without a head wait for more; bytes that are not frames are not HTTP/2.
    let window = frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]);
    let query = b"Q\0\0\0\x0eSELECT 1\0".to_vec();
    for (data, want) in [(window, Detected::Undecided), (query, Detected::No)] {
        let seg = Segment {
            direction: IN,
            data: &data,
            total_len: data.len() as u64,
            ts_ns: 0,
            tid: 0,
        };
        assert_eq!(Http2Parser::detect(&seg), want, "{data:x?}");
    }
}
