//! HTTP/1.x exchanges on one connection, seen from either end.
//!
//! Two readers follow the two directions (requests one way, responses the other). Requests
//! wait in a bounded queue (pipelining) and are matched with responses in order. Bodies are
//! skipped by framing, counting bytes past the captured prefix; where framing is lost the end
//! of a response is inferred from the next request, the close, or an idle timeout, and the
//! record says so ([`Trust::END_INFERRED`]).
mod framing;
mod head;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use framing::{Body, Chunk, Progress};
use head::{Head, Kind, Parsed};

use super::{
    Detected, Direction, ParseStats, ParserOut, ProtocolParser, Segment,
    duplex::{Duplex, ErrorStreak, Half, walk},
};
use crate::request::{
    Detail, HttpInfo, HttpVersion, Method, Protocol, Request, Side, Started, TraceParent, Trust,
};

/// Requests that may await their response at once (pipelining depth).
const MAX_PENDING: usize = 64;
/// Longest head buffered across segments; longer heads are treated as truncated.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest path kept (bytes).
const MAX_PATH_BYTES: usize = 512;
/// Longest Host header kept (bytes).
const MAX_HOST_BYTES: usize = 255;
/// Longest User-Agent kept (bytes).
const MAX_USER_AGENT_BYTES: usize = 256;
/// Longest tracestate kept (bytes; the W3C limit is 512).
const MAX_TRACESTATE_BYTES: usize = 512;

/// Reading state of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// A head started in an earlier segment; its bytes so far are in `head_buf`.
    Head,
    /// Inside a body.
    Body(Body),
    /// Bytes were lost (`after_error` false) or garbled (true): skip until a segment starts
    /// with a message. Skipped segments after an error count towards giving up; after lost
    /// bytes they are most likely the rest of a body and do not.
    Resync { after_error: bool },
}

#[derive(Debug)]
struct Reader {
    kind: Kind,
    state: State,
    head_buf: Vec<u8>,
    /// Timestamp and thread of the segment where the current head began.
    head_ts: u64,
    head_tid: u32,
    /// Exit time of the last segment in this direction.
    last_ts: u64,
}

impl Reader {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            state: State::Idle,
            head_buf: Vec::new(),
            head_ts: 0,
            head_tid: 0,
            last_ts: 0,
        }
    }

    /// Is the current message's end unknowable from its framing?
    fn end_unknown(&self) -> bool {
        matches!(
            self.state,
            State::Body(Body::Unknown | Body::UntilClose) | State::Resync { .. }
        )
    }
}

/// A request waiting for its response.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) host: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) traceparent: Option<TraceParent>,
    pub(crate) tracestate: Option<String>,
    version_minor: u8,
    pub(crate) start_ns: u64,
    pub(crate) tid: u32,
    pub(crate) seq: u64,
    trust: Trust,
    /// The request asked to continue in cleartext HTTP/2 (`Upgrade: h2c`).
    upgrade_h2c: bool,
}

/// The response being read.
#[derive(Debug, Clone, Copy)]
struct Open {
    status: u16,
    trust: Trust,
    /// No request was waiting for it.
    orphan: bool,
    /// A 101 whose `Upgrade` names `h2c`.
    h2c: bool,
}

/// What a parsed head means for the rest of its message.
enum Next {
    Body(Body),
    /// No body: the message ends with its head.
    Done,
    /// A 1xx interim response: the exchange goes on.
    Interim,
}

/// The owned facts of a parsed head (the borrowed [`Head`] cannot outlive its buffer).
struct HeadInfo {
    method: Method,
    path: String,
    host: Option<String>,
    user_agent: Option<String>,
    traceparent: Option<TraceParent>,
    tracestate: Option<String>,
    status: u16,
    version_minor: u8,
    content_length: Option<u64>,
    chunked: bool,
    truncated: bool,
    upgrade_h2c: bool,
}

/// A request upgraded to cleartext HTTP/2 (`Upgrade: h2c` answered by a 101): it goes on as
/// stream 1 of the HTTP/2 connection that follows (RFC 7540 §3.2), whose response it waits
/// for. The connection's parser becomes the HTTP/2 one (see `Parser::on_segment`).
#[derive(Debug)]
pub struct H2cUpgrade {
    /// The upgraded request, as it waited for its response.
    pub(crate) request: Pending,
    /// Where the HTTP/2 bytes start in the segment that carried the 101 (the server's
    /// SETTINGS often follow it in the same write).
    pub at: usize,
}

/// HTTP/1.x parser for one connection.
#[derive(Debug)]
pub struct Http1Parser {
    side: Side,
    readers: Duplex<Reader>,
    pending: VecDeque<Pending>,
    open: Option<Open>,
    errors: ErrorStreak,
    upgraded: bool,
    /// Set by a 101 that switched the connection to HTTP/2, until the caller takes it.
    h2c: Option<Box<H2cUpgrade>>,
    /// Sequence number of the next request head.
    next_seq: u64,
}

impl From<Half> for Kind {
    fn from(half: Half) -> Self {
        match half {
            Half::Requests => Self::Request,
            Half::Responses => Self::Response,
        }
    }
}

impl Http1Parser {
    fn error(&mut self, r: &mut Reader, stats: &mut ParseStats) {
        stats.parse_errors += 1;
        self.errors.hit();
        r.state = State::Resync { after_error: true };
        r.head_buf.clear();
    }

    /// Walks one segment through reader `r` (taken out of `self` by the caller).
    fn feed(
        &mut self,
        r: &mut Reader,
        seg: &Segment<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        let total = seg.total_len.max(seg.data.len() as u64);
        let mut pos: u64 = 0;
        while pos < total {
            let rest: &[u8] = seg.data.get(pos as usize..).unwrap_or(&[]);
            match r.state {
                State::Resync { after_error } => {
                    if pos == 0 && head::looks_like_start(r.kind, rest) {
                        r.state = State::Idle;
                        continue;
                    }
                    if after_error {
                        self.errors.hit();
                    }
                    return;
                }
                State::Body(Body::Unknown) if pos == 0 && head::looks_like_start(r.kind, rest) => {
                    // A new message begins: the one with unknown framing ended before it.
                    let end = r.last_ts;
                    r.state = State::Idle;
                    self.message_end(r.kind, end, Trust::END_INFERRED, out);
                }
                State::Body(mut body) => {
                    let (n, progress) = framing::advance(&mut body, rest, total - pos);
                    pos += n;
                    r.state = State::Body(body);
                    match progress {
                        Progress::More | Progress::Lost => {}
                        Progress::Done => {
                            r.state = State::Idle;
                            self.message_end(r.kind, seg.ts_ns, Trust::default(), out);
                        }
                        Progress::Invalid => {
                            if let Some(open) =
                                self.open.as_mut().filter(|_| r.kind == Kind::Response)
                            {
                                open.trust.insert(Trust::END_INFERRED);
                            }
                            self.error(r, stats);
                            return;
                        }
                    }
                }
                State::Idle | State::Head => {
                    if rest.is_empty() {
                        // What follows the last message was not captured.
                        r.state = State::Resync { after_error: false };
                        r.head_buf.clear();
                        return;
                    }
                    let more_invisible = seg.is_truncated();
                    let (parsed, used) = self.parse_head(r, rest, seg, more_invisible);
                    match parsed {
                        None => return,
                        Some(Err(())) => {
                            self.error(r, stats);
                            return;
                        }
                        Some(Ok(info)) => {
                            self.errors.clear();
                            pos += used as u64;
                            let kind = r.kind;
                            let head_ts = r.head_ts;
                            let tid = r.head_tid;
                            match self.on_head(kind, info, head_ts, tid, out, stats) {
                                Next::Body(body) => r.state = State::Body(body),
                                Next::Interim => r.state = State::Idle,
                                Next::Done => {
                                    r.state = State::Idle;
                                    self.message_end(kind, seg.ts_ns, Trust::default(), out);
                                    if let Some(h2c) = self.h2c.as_mut() {
                                        // The rest of the segment is HTTP/2's.
                                        h2c.at = usize::try_from(pos).unwrap_or(usize::MAX);
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Parses a head from `rest` (or from the bytes buffered so far plus `rest`). Returns
    /// `None` when more bytes are needed, `Some(Err)` for garbage, and with a head the number
    /// of bytes of `rest` it used.
    fn parse_head(
        &self,
        r: &mut Reader,
        rest: &[u8],
        seg: &Segment<'_>,
        more_invisible: bool,
    ) -> (Option<Result<HeadInfo, ()>>, usize) {
        if r.state == State::Idle {
            r.head_ts = seg.ts_ns;
            r.head_tid = seg.tid;
            return match head::parse(r.kind, rest, more_invisible) {
                Parsed::Complete { head, len } => (Some(Ok(self.info(r.kind, &head, false))), len),
                Parsed::Truncated(head) => (Some(Ok(self.info(r.kind, &head, true))), rest.len()),
                Parsed::Invalid => (Some(Err(())), 0),
                Parsed::Partial => {
                    r.head_buf.clear();
                    r.head_buf
                        .extend_from_slice(&rest[..rest.len().min(MAX_HEAD_BYTES)]);
                    r.state = State::Head;
                    (None, rest.len())
                }
            };
        }
        let before = r.head_buf.len();
        let take = rest.len().min(MAX_HEAD_BYTES.saturating_sub(before));
        r.head_buf.extend_from_slice(&rest[..take]);
        let full = r.head_buf.len() >= MAX_HEAD_BYTES;
        let result = match head::parse(r.kind, &r.head_buf, more_invisible || full) {
            Parsed::Complete { head, len } => (
                Some(Ok(self.info(r.kind, &head, false))),
                len.saturating_sub(before),
            ),
            Parsed::Truncated(head) => (Some(Ok(self.info(r.kind, &head, true))), rest.len()),
            Parsed::Invalid => (Some(Err(())), 0),
            Parsed::Partial => return (None, rest.len()),
        };
        r.head_buf.clear();
        result
    }

    fn info(&self, kind: Kind, head: &Head<'_>, truncated: bool) -> HeadInfo {
        let is_request = kind == Kind::Request;
        HeadInfo {
            method: head.method.map_or(Method::Other, Method::parse),
            path: if is_request {
                clean_path(head.target.unwrap_or(""), head.method == Some("CONNECT"))
            } else {
                String::new()
            },
            host: if is_request && self.side == Side::Client {
                bounded_text(head.host, MAX_HOST_BYTES)
            } else {
                None
            },
            user_agent: if is_request {
                bounded_text(head.user_agent, MAX_USER_AGENT_BYTES)
            } else {
                None
            },
            traceparent: head
                .traceparent
                .filter(|_| is_request)
                .and_then(TraceParent::parse),
            tracestate: if is_request {
                bounded_text(head.tracestate, MAX_TRACESTATE_BYTES)
            } else {
                None
            },
            status: head.status,
            version_minor: head.version_minor,
            content_length: head.content_length,
            chunked: head.chunked,
            truncated,
            upgrade_h2c: head.upgrade_h2c,
        }
    }

    fn on_head(
        &mut self,
        kind: Kind,
        info: HeadInfo,
        head_ts: u64,
        tid: u32,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) -> Next {
        match kind {
            Kind::Request => {
                // A new request while the response side has lost track (end unknown, bytes not
                // captured, or garbage): the open response ended with the last bytes seen, and
                // the responses to the requests still waiting went by unseen. Writing those
                // off keeps every later response matched with its own request.
                if self.readers.responses.end_unknown() {
                    if self.open.is_some() {
                        let end = self.readers.responses.last_ts;
                        self.message_end(Kind::Response, end, Trust::END_INFERRED, out);
                    }
                    self.readers.responses.state = State::Idle;
                    stats.incomplete += self.pending.len() as u64;
                    self.pending.clear();
                }
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    stats.pipeline_overflow += 1;
                }
                let mut trust = Trust::default();
                if info.truncated {
                    trust.insert(Trust::HEAD_TRUNCATED);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                out.started.push(Started {
                    side: self.side,
                    seq,
                    tid,
                    start_ns: head_ts,
                    traceparent: info.traceparent,
                });
                self.pending.push_back(Pending {
                    method: info.method,
                    path: info.path,
                    host: info.host,
                    user_agent: info.user_agent,
                    traceparent: info.traceparent,
                    tracestate: info.tracestate,
                    version_minor: info.version_minor,
                    // Server: when the read that brought its first bytes returned. Client: when
                    // the write that sent its first bytes returned.
                    start_ns: head_ts,
                    tid,
                    seq,
                    trust,
                    upgrade_h2c: info.upgrade_h2c,
                });
                if info.truncated {
                    Next::Body(Body::Unknown)
                } else if info.chunked {
                    Next::Body(Body::Chunked(Chunk::START))
                } else {
                    match info.content_length {
                        Some(n) if n > 0 => Next::Body(Body::Length(n)),
                        _ => Next::Done,
                    }
                }
            }
            Kind::Response => {
                if (100..200).contains(&info.status) && info.status != 101 {
                    return Next::Interim;
                }
                let request = self.pending.front();
                if request.is_none() {
                    stats.unmatched_responses += 1;
                }
                let no_body = request.is_some_and(|p| p.method == Method::Head)
                    || matches!(info.status, 101 | 204 | 304);
                let mut trust = Trust::default();
                if info.truncated {
                    trust.insert(Trust::HEAD_TRUNCATED);
                }
                self.open = Some(Open {
                    status: info.status,
                    trust,
                    orphan: request.is_none(),
                    h2c: info.status == 101 && info.upgrade_h2c,
                });
                if no_body {
                    Next::Done
                } else if info.truncated {
                    Next::Body(Body::Unknown)
                } else if info.chunked {
                    Next::Body(Body::Chunked(Chunk::START))
                } else {
                    match info.content_length {
                        Some(0) => Next::Done,
                        Some(n) => Next::Body(Body::Length(n)),
                        None => Next::Body(Body::UntilClose),
                    }
                }
            }
        }
    }

    /// A message of `kind` ended at `end_ns`. A response completes the oldest pending request.
    /// The upgrade to HTTP/2 the last segment completed, if any: the caller continues the
    /// connection with `Http2Parser::upgraded`.
    pub fn take_h2c(&mut self) -> Option<Box<H2cUpgrade>> {
        self.h2c.take()
    }

    /// Which end of the connection the observed process is.
    pub fn side(&self) -> Side {
        self.side
    }

    fn message_end(&mut self, kind: Kind, end_ns: u64, extra: Trust, out: &mut ParserOut) {
        if kind == Kind::Request {
            return;
        }
        let Some(open) = self.open.take() else { return };
        if open.orphan {
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        let mut trust = p.trust;
        trust.insert(open.trust);
        trust.insert(extra);
        if open.status == 101 {
            self.upgraded = true;
            if open.h2c && p.upgrade_h2c {
                // Not over: its response comes as HTTP/2 on stream 1.
                self.h2c = Some(Box::new(H2cUpgrade { request: p, at: 0 }));
                return;
            }
        }
        out.done.push(Request {
            protocol: Protocol::Http1,
            side: self.side,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            tid: p.tid,
            seq: p.seq,
            trust,
            detail: Detail::Http(HttpInfo {
                method: p.method,
                path: p.path,
                status: open.status,
                version: HttpVersion::http1(p.version_minor),
                host: p.host,
                user_agent: p.user_agent,
                traceparent: p.traceparent,
                tracestate: p.tracestate,
                grpc: None,
            }),
        });
    }
}

impl ProtocolParser for Http1Parser {
    const PROTOCOL: Protocol = Protocol::Http1;

    /// Which side a connection's first segment reveals, if it is HTTP/1.x at all.
    fn detect(seg: &Segment<'_>) -> Detected {
        let response = head::looks_like_start(Kind::Response, seg.data);
        let request = !response && head::looks_like_start(Kind::Request, seg.data);
        match (seg.direction, request, response) {
            (Direction::Ingress, true, _) | (Direction::Egress, _, true) => {
                Detected::Side(Side::Server)
            }
            (Direction::Egress, true, _) | (Direction::Ingress, _, true) => {
                Detected::Side(Side::Client)
            }
            _ if head::could_start(seg.data) => Detected::Undecided,
            // A request line cut before its target ended, all of it captured: wait for the rest
            // (the pipeline joins the next bytes to these, a few segments at most).
            _ if !seg.is_truncated() && head::partial_request_line(seg.data) => Detected::Undecided,
            _ => Detected::No,
        }
    }

    fn new(side: Side) -> Self {
        Self {
            side,
            readers: Duplex {
                requests: Reader::new(Kind::Request),
                responses: Reader::new(Kind::Response),
            },
            pending: VecDeque::new(),
            open: None,
            errors: ErrorStreak::default(),
            upgraded: false,
            h2c: None,
            next_seq: 0,
        }
    }

    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.gave_up() {
            return;
        }
        let half = Half::of(self.side, seg.direction);
        let placeholder = Reader::new(Kind::from(half));
        walk(
            self,
            |p| &mut p.readers,
            half,
            placeholder,
            |p, reader| {
                p.feed(reader, seg, out, stats);
                reader.last_ts = seg.ts_ns;
            },
        );
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.open.is_some() && self.readers.responses.end_unknown() {
            // Delimited by the close (or framing lost): it ended with its last bytes.
            let inferred = !matches!(self.readers.responses.state, State::Body(Body::UntilClose));
            let end = if self.readers.responses.last_ts != 0 {
                self.readers.responses.last_ts
            } else {
                ts_ns
            };
            let trust = if inferred {
                Trust::END_INFERRED
            } else {
                Trust::default()
            };
            self.message_end(Kind::Response, end, trust, out);
        }
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.open = None;
        self.readers.requests.state = State::Idle;
        self.readers.responses.state = State::Idle;
    }

    fn on_idle(&mut self, out: &mut ParserOut) {
        if self.open.is_some() && self.readers.responses.end_unknown() {
            let end = self.readers.responses.last_ts;
            self.readers.responses.state = State::Resync { after_error: false };
            self.message_end(Kind::Response, end, Trust::END_INFERRED, out);
        }
    }

    fn on_gap(&mut self, stats: &mut ParseStats) {
        // The open response (if it answers a request) is the front of `pending`.
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.open = None;
        for r in self.readers.both_mut() {
            r.state = State::Resync { after_error: false };
            r.head_buf.clear();
        }
    }

    fn gave_up(&self) -> bool {
        self.upgraded || self.errors.too_long()
    }
}

/// A header value as text, when it is printable UTF-8 of at most `max` bytes.
fn bounded_text(value: Option<&[u8]>, max: usize) -> Option<String> {
    let v = value.filter(|v| v.len() <= max)?;
    let s = std::str::from_utf8(v).ok()?;
    (!s.chars().any(char::is_control)).then(|| s.to_owned())
}

/// The path of a request target without query string or fragment, bounded in length.
/// Absolute-form targets (`http://host/path`) keep only their path; authority-form (CONNECT)
/// and asterisk-form targets become `*`.
fn clean_path(target: &str, connect: bool) -> String {
    if connect || target == "*" {
        return "*".to_owned();
    }
    let path = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let mut cut = end.min(MAX_PATH_BYTES);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    path[..cut].to_owned()
}
