//! HTTP/2 exchanges on one connection, seen from either end (cleartext with prior knowledge,
//! or the plaintext of TLS with ALPN h2: both start with the client preface, though over TLS
//! the server may write its SETTINGS before it reads it).
//!
//! Each direction has a frame reader (`frames.rs`) and its own HPACK context (`headers.rs`).
//! A stream is one exchange (`streams.rs`): it starts with the first byte of the client's
//! HEADERS and ends with the last byte of the server's frame carrying END_STREAM; streams
//! interleave freely, so each keeps its own times. A stream reset, refused by GOAWAY, or
//! still open at the close is counted as incomplete, as HTTP/1 counts an exchange without
//! its response. The result is the same [`Request`] as HTTP/1's, with
//! [`HttpVersion::Http2`], so RED metrics, routes and spans treat both alike.
//!
//! A stream whose request says `content-type: application/grpc` is a gRPC call: its status
//! is the `grpc-status` of the trailers (or of a trailers-only response); a call whose
//! trailers were lost is not reported (the lost block is counted), since its status would
//! be a guess.
//!
//! `Upgrade: h2c` (RFC 7540 §3.2): the connection starts as HTTP/1; the 101 that grants the
//! upgrade hands it to this parser ([`Http2Parser::upgraded`]), the upgraded request open as
//! stream 1, and the client's preface follows as on any HTTP/2 connection.
//!
//! A connection that began before the agent has no preface to see: it is taken for HTTP/2
//! when a segment is whole frames one of which is a request or response head (its first
//! field a pseudo-header of the static table), and read from there with both HPACK tables
//! unknown (`partial_table.rs`): requests and responses whose reported fields can be read
//! are counted, the rest as lost header blocks.
mod frames;
mod headers;
mod hpack;
mod partial_table;
mod streams;
#[cfg(test)]
mod tests;

use frames::{Event, Frame, FrameReader, Head, MidStream, PREFACE, Payload, flag, kind};
use headers::Fields;
use hpack::Hpack;
use streams::{Stream, Streams};

use super::{
    Detected, Direction, ParseStats, ParserOut, ProtocolParser, Segment,
    duplex::{Duplex, Half},
};
use crate::request::{
    Detail, GrpcCode, HttpInfo, HttpVersion, Method, Protocol, Request, Side, Started,
};

/// Longest header block buffered (HEADERS or PUSH_PROMISE plus its CONTINUATIONs); a longer
/// one is lost (counted, and its direction's table becomes unknown).
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// What a header block (HEADERS or PUSH_PROMISE plus its CONTINUATIONs) is about.
#[derive(Debug, Clone, Copy)]
struct BlockMeta {
    stream: u32,
    /// A PUSH_PROMISE's block (the pushed request's headers).
    push: bool,
    end_stream: bool,
    start_ns: u64,
    tid: u32,
    /// Some of it was not captured, or it ran over [`MAX_HEADER_BLOCK`].
    lost: bool,
}

/// A header block being gathered from CONTINUATION frames. (A block that fits in its
/// HEADERS frame, the common case, is decoded from the frame in place, never copied.)
#[derive(Debug)]
struct Block {
    meta: BlockMeta,
    buf: Vec<u8>,
}

/// Everything but the frame readers, so that a reader and the state its frames change
/// borrow separately.
#[derive(Debug)]
struct Conn {
    side: Side,
    hpack: Duplex<Hpack>,
    blocks: Duplex<Option<Block>>,
    streams: Streams,
    next_seq: u64,
    /// A connection error (a frame no peer would accept): the connection is given up.
    broken: bool,
}

/// HTTP/2 parser for one connection. Both parts are boxed: with two frame readers, two HPACK
/// decoders and the stream table it is some 300 bytes, and every connection's state (whatever
/// its protocol) is as large as the largest parser.
#[derive(Debug)]
pub struct Http2Parser {
    readers: Box<Duplex<FrameReader>>,
    conn: Box<Conn>,
}

fn other(half: Half) -> Half {
    match half {
        Half::Requests => Half::Responses,
        Half::Responses => Half::Requests,
    }
}

impl Conn {
    /// Bytes no peer would send: counted, and the connection given up (its streams in
    /// flight with it, counted as incomplete: nothing more will be read of them).
    fn error(&mut self, stats: &mut ParseStats) {
        stats.parse_errors += 1;
        self.broken = true;
        self.drop_streams(stats);
    }

    fn on_event(
        &mut self,
        half: Half,
        event: Event<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        if self.broken {
            return;
        }
        match event {
            Event::Garbage => self.error(stats),
            Event::FramingLost => {
                // Whatever went by may have held header blocks: the table is unknown. A block
                // being gathered is lost, but its stream and END_STREAM are known.
                self.hpack.get_mut(half).poison();
                if let Some(mut block) = self.blocks.get_mut(half).take() {
                    block.meta.lost = true;
                    let end = block.meta.start_ns;
                    self.finish_block(half, block.meta, &[], end, out, stats);
                }
            }
            Event::Frame(frame) => self.on_frame(half, frame, out, stats),
        }
    }

    fn on_frame(&mut self, half: Half, f: Frame<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        let h = f.header;
        if self.blocks.get_mut(half).is_some() && h.kind != kind::CONTINUATION {
            // A header block must go on in CONTINUATION frames only (RFC 9113 §6.10).
            self.error(stats);
            return;
        }
        match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                let push = h.kind == kind::PUSH_PROMISE;
                if push {
                    stats.push_promises += 1;
                }
                let (fragment, lost) = match f.payload {
                    Payload::Complete(p) => match frames::fragment(&h, p) {
                        Some((fragment, _)) => (fragment, false),
                        None => {
                            self.error(stats);
                            return;
                        }
                    },
                    Payload::Skipped | Payload::Lost => (&[][..], true),
                };
                let meta = BlockMeta {
                    stream: h.stream,
                    push,
                    end_stream: !push && h.flags & flag::END_STREAM != 0,
                    start_ns: f.start_ns,
                    tid: f.tid,
                    lost,
                };
                if h.flags & flag::END_HEADERS != 0 {
                    self.finish_block(half, meta, fragment, f.end_ns, out, stats);
                } else {
                    let buf = fragment.to_vec();
                    *self.blocks.get_mut(half) = Some(Block { meta, buf });
                }
            }
            kind::CONTINUATION => {
                let Some(mut block) = self.blocks.get_mut(half).take() else {
                    self.error(stats);
                    return;
                };
                if block.meta.stream != h.stream {
                    self.error(stats);
                    return;
                }
                match f.payload {
                    Payload::Complete(p) if block.buf.len() + p.len() <= MAX_HEADER_BLOCK => {
                        if !block.meta.lost {
                            block.buf.extend_from_slice(p);
                        }
                    }
                    _ => {
                        block.meta.lost = true;
                        block.buf = Vec::new();
                    }
                }
                if h.flags & flag::END_HEADERS != 0 {
                    self.finish_block(half, block.meta, &block.buf, f.end_ns, out, stats);
                } else {
                    *self.blocks.get_mut(half) = Some(block);
                }
            }
            kind::DATA if h.flags & flag::END_STREAM != 0 && half == Half::Responses => {
                self.complete(h.stream, f.end_ns, out, stats);
            }
            kind::RST_STREAM if self.streams.remove(h.stream).is_some() => {
                stats.incomplete += 1;
            }
            kind::SETTINGS => match f.payload {
                _ if h.flags & flag::ACK != 0 => {}
                Payload::Complete(p) => {
                    for setting in p.chunks_exact(6) {
                        if let [0, 1, a, b, c, d] = *setting {
                            // SETTINGS_HEADER_TABLE_SIZE bounds the table this endpoint
                            // decodes with: the one of the other direction.
                            let size = u32::from_be_bytes([a, b, c, d]);
                            self.hpack.get_mut(other(half)).allow_table_size(size);
                        }
                    }
                }
                // Longer than any sane SETTINGS frame, or not captured: a table size in it
                // may be missed (counted; blocks that then fail to decode are counted too).
                Payload::Skipped | Payload::Lost => stats.parse_errors += 1,
            },
            kind::GOAWAY => {
                if let (Half::Responses, Payload::Complete(p)) = (half, &f.payload)
                    && let Some(&[a, b, c, d]) = p.get(..4)
                {
                    // The server never processed the client's streams above this one.
                    let last = u32::from_be_bytes([a & 0x7f, b, c, d]);
                    stats.incomplete += self.streams.drop_above(last) as u64;
                }
            }
            // PRIORITY, PING, WINDOW_UPDATE and unknown types (RFC 9113 §5.5) matter only
            // by their length, which the reader already skipped.
            _ => {}
        }
    }

    /// A header block is complete (or known lost): decode it to keep the table in step, then
    /// apply it to its stream.
    fn finish_block(
        &mut self,
        half: Half,
        block: BlockMeta,
        buf: &[u8],
        end_ns: u64,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        let hpack = self.hpack.get_mut(half);
        let fields = if block.lost {
            hpack.poison();
            None
        } else {
            hpack.decode(buf)
        };
        let id = block.stream;
        // A block read against an unknown table, some of its fields missing: usable where
        // what is missing cannot change what is reported (see `usable`).
        let partial = fields.as_ref().is_some_and(|f| f.unknown);
        let fields = fields.filter(|f| self.usable(half, id, f));
        match &fields {
            None => stats.header_blocks_lost += 1,
            Some(_) if partial => stats.header_blocks_partial += 1,
            Some(_) => {}
        }
        if block.push {
            return;
        }
        match half {
            Half::Requests => {
                // Trailers of a stream in flight or over, or not a client stream: nothing new.
                if id.is_multiple_of(2) || self.streams.seen(id) {
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let traceparent = fields.as_ref().and_then(|f| f.traceparent);
                let known = fields.is_some();
                let stream = Stream {
                    seq,
                    start_ns: block.start_ns,
                    tid: block.tid,
                    request: fields,
                    status: None,
                    grpc_status: None,
                    response_lost: false,
                };
                if self.streams.open(id, stream).is_err() {
                    stats.streams_overflow += 1;
                    return;
                }
                if known {
                    out.started.push(Started {
                        side: self.side,
                        seq,
                        tid: block.tid,
                        start_ns: block.start_ns,
                        traceparent,
                    });
                }
            }
            Half::Responses => {
                let Some(s) = self.streams.get_mut(id) else {
                    if !id.is_multiple_of(2) && !self.streams.seen(id) {
                        stats.unmatched_responses += 1;
                    }
                    return;
                };
                match fields {
                    None => s.response_lost = true,
                    Some(f) => {
                        // The first final status; 1xx heads are interim, later blocks are
                        // trailers.
                        if s.status.is_none() {
                            s.status = f.status.filter(|st| !(100..200).contains(st));
                        }
                        if f.grpc_status.is_some() {
                            s.grpc_status = f.grpc_status;
                        }
                    }
                }
                if block.end_stream {
                    self.complete(id, end_ns, out, stats);
                }
            }
        }
    }

    /// Can a block of `half` on stream `id` be used with the fields read? A complete block
    /// can. One that named entries of an unknown table (a connection older than the agent,
    /// or a loss) can where the missing headers cannot matter: a request whose method and
    /// path were read (a request has one of each, so neither is among the missing), unless
    /// it is a POST, which may be a gRPC call whose content type is among them; a response
    /// head whose status was read, to a request known not to be gRPC (whose status would be
    /// in `grpc-status`, perhaps among the missing); trailers of such a request.
    fn usable(&self, half: Half, id: u32, f: &Fields) -> bool {
        if !f.unknown {
            return true;
        }
        match half {
            Half::Requests => {
                f.method.is_some() && f.path.is_some() && f.method != Some(Method::Post)
            }
            Half::Responses => self.streams.get(id).is_some_and(|s| {
                s.request.as_ref().is_some_and(|r| !r.grpc)
                    && (s.status.is_some() || f.status.is_some())
            }),
        }
    }

    /// The server ended stream `id` at `end_ns`: report the exchange when both heads were
    /// read.
    fn complete(&mut self, id: u32, end_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        let Some(s) = self.streams.remove(id) else {
            return;
        };
        let (Some(request), Some(status)) = (s.request, s.status) else {
            // A lost header block was counted; a response with no final status is
            // incomplete.
            if !s.response_lost && s.status.is_none() {
                stats.incomplete += 1;
            }
            return;
        };
        let Fields {
            method,
            path,
            authority,
            user_agent,
            traceparent,
            tracestate,
            grpc,
            ..
        } = request;
        let grpc = match (grpc, s.grpc_status) {
            (false, _) => None,
            (true, Some(code)) => Some(code),
            // The trailers were lost (counted): the call's status is not known.
            (true, None) if s.response_lost => return,
            // No grpc-status at all: what a gRPC client makes of the HTTP status.
            (true, None) => Some(GrpcCode::from_http_status(status)),
        };
        let method = method.unwrap_or(Method::Other);
        let path = match path {
            Some(p) if method != Method::Connect => p,
            _ => "*".to_owned(),
        };
        out.done.push(Request {
            protocol: Protocol::Http2,
            side: self.side,
            start_ns: s.start_ns,
            end_ns: end_ns.max(s.start_ns),
            tid: s.tid,
            seq: s.seq,
            trust: Default::default(),
            detail: Detail::Http(HttpInfo {
                method,
                path,
                status,
                version: HttpVersion::Http2,
                // As HTTP/1's Host: it names the server of a client's call.
                host: authority.filter(|_| self.side == Side::Client),
                user_agent,
                traceparent,
                tracestate,
                grpc,
            }),
        });
    }

    /// Drops every stream in flight (counted) and the blocks being gathered.
    fn drop_streams(&mut self, stats: &mut ParseStats) {
        stats.incomplete += self.streams.clear() as u64;
        for b in self.blocks.both_mut() {
            *b = None;
        }
    }
}

impl Http2Parser {
    /// The HTTP/2 connection an HTTP/1 request switched to with `Upgrade: h2c`: that request
    /// is stream 1, half-closed by the client, and its response comes in HTTP/2 frames. Its
    /// start was reported by the HTTP/1 parser under `up.seq`, which it keeps.
    pub fn upgraded(side: Side, up: super::http1::H2cUpgrade) -> Self {
        let up = up.request;
        let mut parser = <Self as ProtocolParser>::new(side);
        let request = Fields {
            method: Some(up.method),
            path: Some(up.path),
            authority: up.host,
            status: None,
            user_agent: up.user_agent,
            traceparent: up.traceparent,
            tracestate: up.tracestate,
            grpc: false,
            grpc_status: None,
            unknown: false,
        };
        parser.conn.next_seq = up.seq + 1;
        let stream = Stream {
            seq: up.seq,
            start_ns: up.start_ns,
            tid: up.tid,
            request: Some(request),
            status: None,
            grpc_status: None,
            response_lost: false,
        };
        // An empty table has room.
        let _ = parser.conn.streams.open(1, stream);
        parser
    }
}

impl ProtocolParser for Http2Parser {
    const PROTOCOL: Protocol = Protocol::Http2;

    /// The client preface: written by the observed process, it is the client; read, the
    /// server. Or a server that writes first: with TLS and ALPN h2 the server knows the
    /// protocol at the end of the handshake and sends its SETTINGS before it reads the
    /// client's preface (nginx does), so a first segment written that is a SETTINGS frame on
    /// stream 0 makes the observed process an HTTP/2 server. No other protocol followed has a
    /// server that writes such bytes first (MySQL's greeting has sequence id 0 where the
    /// frame type would be).
    fn detect(seg: &Segment<'_>) -> Detected {
        let data = seg.data;
        if seg.direction == Direction::Egress && frames::server_settings_first(data) {
            return Detected::Side(Side::Server);
        }
        if data.starts_with(PREFACE) {
            return Detected::Side(match seg.direction {
                Direction::Egress => Side::Client,
                Direction::Ingress => Side::Server,
            });
        }
        if !data.is_empty() && PREFACE.starts_with(data) && !seg.is_truncated() {
            return Detected::Undecided;
        }
        // A connection older than the agent: frames, one of them a request or response head.
        match frames::mid_stream(data) {
            MidStream::Head(Head::Request) => Detected::MidStream(match seg.direction {
                Direction::Egress => Side::Client,
                Direction::Ingress => Side::Server,
            }),
            MidStream::Head(Head::Response) => Detected::MidStream(match seg.direction {
                Direction::Egress => Side::Server,
                Direction::Ingress => Side::Client,
            }),
            // Flow control or data first: a head may follow.
            MidStream::Frames => Detected::Undecided,
            MidStream::No => Detected::No,
        }
    }

    fn new(side: Side) -> Self {
        Self {
            readers: Box::new(Duplex {
                requests: FrameReader::new(true),
                responses: FrameReader::new(false),
            }),
            conn: Box::new(Conn {
                side,
                hpack: Duplex {
                    requests: Hpack::default(),
                    responses: Hpack::default(),
                },
                blocks: Duplex {
                    requests: None,
                    responses: None,
                },
                streams: Streams::default(),
                next_seq: 0,
                broken: false,
            }),
        }
    }

    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.gave_up() {
            return;
        }
        let half = Half::of(self.conn.side, seg.direction);
        let conn = &mut self.conn;
        self.readers
            .get_mut(half)
            .feed(seg, |event| conn.on_event(half, event, out, stats));
    }

    fn on_close(&mut self, _ts_ns: u64, _out: &mut ParserOut, stats: &mut ParseStats) {
        // HTTP/2 always says where a response ends: a stream still open never got its end.
        self.conn.drop_streams(stats);
    }

    /// Nothing to infer: every stream's end is explicit (END_STREAM, RST_STREAM, GOAWAY).
    fn on_idle(&mut self, _out: &mut ParserOut) {}

    fn on_gap(&mut self, stats: &mut ParseStats) {
        self.conn.drop_streams(stats);
        // The lost records may have held header blocks of either direction: both tables are
        // unknown from now on (later blocks are counted as lost), and framing resumes at the
        // next segment that starts with frames.
        for h in self.conn.hpack.both_mut() {
            h.poison();
        }
        for r in self.readers.both_mut() {
            r.lose_framing();
        }
    }

    fn gave_up(&self) -> bool {
        self.conn.broken || self.readers.requests.is_broken() || self.readers.responses.is_broken()
    }
}
