//! memcached text protocol (classic and meta commands), seen from either end.
//!
//! Commands wait in a bounded queue and are matched with responses in order. Data blocks
//! (storage commands, `VALUE`/`VA` responses) are skipped by counting, past the captured
//! prefix too: values are never buffered. Keys and values never leave the parser: the query
//! text is the command with `?` in place of its arguments.
mod lines;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use lines::{
    COMMANDS, Cmd, Resp, line_byte, lookup, parse_command, parse_response, parse_truncated,
};

use super::{
    Detected, Direction, ParseStats, ParserOut, ProtocolParser, Segment,
    duplex::{Duplex, ErrorStreak, Half, walk},
};
use crate::request::{DbInfo, DbSystem, Detail, Protocol, Request, Side, Started, Trust};

/// Commands that may await their response at once.
const MAX_PENDING: usize = 4096;
/// Longest line buffered across segments.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// `END\r\n`.
const END_LINE_LEN: u64 = 5;

/// Does a segment start with a line of `kind` (resynchronization after lost bytes)?
fn looks_like_start(kind: Kind, data: &[u8]) -> bool {
    let end = data
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(data.len());
    let Some(word) = data.get(..end).filter(|_| end < data.len()) else {
        return false;
    };
    match kind {
        Kind::Command => lookup(word).is_some(),
        Kind::Response => parse_response(word).is_some() || matches!(word, b"VALUE" | b"VA"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Response,
}

/// Reading state of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between lines, or inside one (its bytes so far are in `buf`).
    Line,
    /// Inside a data block: bytes left, its `\r\n` included.
    Data(u64),
    /// Inside an over-long line: skip to its end.
    Skip,
    /// Bytes were not captured: wait for a segment that starts with a line.
    Lost,
}

#[derive(Debug)]
struct Reader {
    kind: Kind,
    state: State,
    buf: Vec<u8>,
    /// Only known commands are taken (at the start, and after garbage).
    strict: bool,
    /// Timestamp and thread of the segment where the current line began.
    line_ts: u64,
    line_tid: u32,
    /// Exit time of the last segment in this direction.
    last_ts: u64,
}

impl Reader {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            state: State::Line,
            buf: Vec::new(),
            strict: true,
            line_ts: 0,
            line_tid: 0,
            last_ts: 0,
        }
    }
}

/// A command waiting for its response.
#[derive(Debug, Clone, Copy)]
struct Pending {
    op: &'static str,
    has_args: bool,
    quiet: bool,
    start_ns: u64,
    tid: u32,
    seq: u64,
    trust: Trust,
}

/// The response being read (multi-line, or with data).
#[derive(Debug, Clone, Copy)]
struct Open {
    /// No command was waiting for it.
    orphan: bool,
    /// It ends with its data block (`VA`).
    ends_with_data: bool,
}

enum Parsed {
    Cmd(Cmd),
    Resp(Resp),
    Bad,
}

/// memcached text-protocol parser for one connection.
#[derive(Debug)]
pub struct MemcachedParser {
    side: Side,
    readers: Duplex<Reader>,
    pending: VecDeque<Pending>,
    open: Option<Open>,
    errors: ErrorStreak,
    next_seq: u64,
}

impl From<Half> for Kind {
    fn from(half: Half) -> Self {
        match half {
            Half::Requests => Self::Command,
            Half::Responses => Self::Response,
        }
    }
}

impl MemcachedParser {
    /// Walks one segment through reader `r` (taken out of `self` by the caller).
    fn feed(
        &mut self,
        r: &mut Reader,
        seg: &Segment<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        let visible = seg.data.len() as u64;
        let total = seg.total_len.max(visible);
        if r.state == State::Lost {
            if !looks_like_start(r.kind, seg.data) {
                return;
            }
            r.state = State::Line;
            r.buf.clear();
            r.strict = true;
        }
        let mut pos: u64 = 0;
        let mut bad_seen = false;
        while pos < total && !self.gave_up() {
            let rest = usize::try_from(pos)
                .ok()
                .and_then(|p| seg.data.get(p..))
                .unwrap_or(&[]);
            match r.state {
                State::Lost => return,
                State::Data(left) => {
                    let n = left.min(total - pos);
                    pos += n;
                    r.state = State::Data(left - n);
                    if left == n {
                        r.state = State::Line;
                        if r.kind == Kind::Response {
                            self.data_end(seg.ts_ns, out, stats);
                        }
                    }
                }
                State::Skip => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        pos += i as u64 + 1;
                        r.state = State::Line;
                    }
                    None if total > visible => r.state = State::Lost,
                    None => return,
                },
                State::Line if rest.is_empty() => {
                    // Lines went by past the captured bytes.
                    r.buf.clear();
                    r.state = State::Lost;
                    if r.kind == Kind::Response
                        && total - pos == END_LINE_LEN
                        && self.open.is_some_and(|o| !o.ends_with_data)
                    {
                        // Only `END\r\n` fits in what is left after a retrieval's item.
                        r.state = State::Line;
                        self.complete(seg.ts_ns, None, out, stats);
                        pos = total;
                    }
                }
                State::Line => {
                    if r.buf.is_empty() {
                        r.line_ts = seg.ts_ns;
                        r.line_tid = seg.tid;
                    }
                    let Some(i) = rest.iter().position(|&b| b == b'\n') else {
                        self.partial_line(r, rest, seg, out, stats, &mut bad_seen);
                        return;
                    };
                    pos += i as u64 + 1;
                    let head = rest.get(..i).unwrap_or(&[]);
                    let parsed = if r.buf.is_empty() {
                        parse_line(r.kind, r.strict, head)
                    } else if r.buf.len() + head.len() > MAX_LINE_BYTES {
                        Parsed::Bad
                    } else {
                        r.buf.extend_from_slice(head);
                        parse_line(r.kind, r.strict, &r.buf)
                    };
                    r.buf.clear();
                    match parsed {
                        Parsed::Cmd(cmd) => {
                            r.strict = false;
                            self.errors.clear();
                            self.on_command(cmd, r, out, stats);
                        }
                        Parsed::Resp(resp) => {
                            r.strict = false;
                            self.errors.clear();
                            self.on_response(resp, r, seg.ts_ns, out, stats);
                        }
                        Parsed::Bad => {
                            r.strict = true;
                            self.bad(stats, &mut bad_seen);
                        }
                    }
                }
            }
        }
    }

    /// The rest of a segment is a line without its end.
    fn partial_line(
        &mut self,
        r: &mut Reader,
        rest: &[u8],
        seg: &Segment<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
        bad_seen: &mut bool,
    ) {
        let too_long = r.buf.len() + rest.len() > MAX_LINE_BYTES;
        if seg.is_truncated() {
            // The line runs past the captured bytes: take what can be taken.
            let cmd = if r.kind == Kind::Command && !too_long {
                r.buf.extend_from_slice(rest);
                parse_truncated(&r.buf)
            } else {
                None
            };
            r.buf.clear();
            r.state = State::Lost;
            if let Some(cmd) = cmd {
                self.errors.clear();
                self.on_command(cmd, r, out, stats);
            }
        } else if too_long {
            r.buf.clear();
            r.strict = true;
            r.state = State::Skip;
            self.bad(stats, bad_seen);
        } else {
            r.buf.extend_from_slice(rest);
        }
    }

    /// Garbage: counted once per segment.
    fn bad(&mut self, stats: &mut ParseStats, bad_seen: &mut bool) {
        if !*bad_seen {
            *bad_seen = true;
            stats.parse_errors += 1;
            self.errors.hit();
        }
    }

    fn on_command(
        &mut self,
        cmd: Cmd,
        r: &mut Reader,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        if self.readers.responses.state == State::Lost {
            // The response side lost track: the open response ended with its last bytes, and
            // the responses to the commands still waiting went by unseen.
            if self.open.is_some() {
                let end = self.readers.responses.last_ts;
                self.complete_with(end, None, Trust::END_INFERRED, out, stats);
            }
            stats.incomplete += self.pending.len() as u64;
            self.pending.clear();
            self.open = None;
            self.readers.responses.state = State::Line;
            self.readers.responses.buf.clear();
        }
        if let Some(n) = cmd.data {
            r.state = match n.checked_add(2) {
                Some(n) => State::Data(n),
                None => State::Lost,
            };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        out.started.push(Started {
            side: self.side,
            seq,
            tid: r.line_tid,
            start_ns: r.line_ts,
            traceparent: None,
        });
        let mut trust = Trust::default();
        if cmd.truncated {
            trust.insert(Trust::HEAD_TRUNCATED);
        }
        let p = Pending {
            op: cmd.op,
            has_args: cmd.has_args,
            quiet: cmd.quiet,
            start_ns: r.line_ts,
            tid: r.line_tid,
            seq,
            trust,
        };
        if cmd.no_response {
            self.emit(p, r.line_ts, None, Trust::default(), out);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            stats.pipeline_overflow += 1;
        }
        self.pending.push_back(p);
    }

    fn on_response(
        &mut self,
        resp: Resp,
        r: &mut Reader,
        ts: u64,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        match resp {
            Resp::Value(n) | Resp::Va(n) => {
                let open = self.open_response(stats);
                open.ends_with_data = matches!(resp, Resp::Va(_));
                r.state = match n.checked_add(2) {
                    Some(n) => State::Data(n),
                    None => State::Lost,
                };
            }
            Resp::Item => {
                self.open_response(stats);
            }
            Resp::End => self.complete(ts, None, out, stats),
            Resp::Mn => {
                // Quiet commands before the no-op that got no response succeeded.
                while self.open.is_none() && self.pending.front().is_some_and(|p| p.quiet) {
                    if let Some(p) = self.pending.pop_front() {
                        self.emit(p, ts, None, Trust::default(), out);
                    }
                }
                self.complete(ts, None, out, stats);
            }
            Resp::Done(error) => self.complete(ts, error, out, stats),
        }
    }

    fn open_response(&mut self, stats: &mut ParseStats) -> &mut Open {
        let orphan = self.pending.is_empty();
        self.open.get_or_insert_with(|| {
            if orphan {
                stats.unmatched_responses += 1;
            }
            Open {
                orphan,
                ends_with_data: false,
            }
        })
    }

    /// A response's data block ended.
    fn data_end(&mut self, ts: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.open.is_some_and(|o| o.ends_with_data) {
            self.complete(ts, None, out, stats);
        }
    }

    fn complete(
        &mut self,
        end_ns: u64,
        error: Option<&'static str>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        self.complete_with(end_ns, error, Trust::default(), out, stats);
    }

    /// A response ended: it completes the oldest waiting command.
    fn complete_with(
        &mut self,
        end_ns: u64,
        error: Option<&'static str>,
        extra: Trust,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        match self.open.take() {
            Some(o) if o.orphan => return,
            Some(_) => {}
            None if self.pending.is_empty() => {
                stats.unmatched_responses += 1;
                return;
            }
            None => {}
        }
        if let Some(p) = self.pending.pop_front() {
            self.emit(p, end_ns, error, extra, out);
        }
    }

    fn emit(
        &self,
        p: Pending,
        end_ns: u64,
        error: Option<&'static str>,
        extra: Trust,
        out: &mut ParserOut,
    ) {
        let mut trust = p.trust;
        trust.insert(extra);
        let query = if p.has_args {
            format!("{} ?", p.op)
        } else {
            p.op.to_owned()
        };
        out.done.push(Request {
            protocol: Protocol::Memcached,
            side: self.side,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            tid: p.tid,
            seq: p.seq,
            trust,
            detail: Detail::Db(DbInfo {
                system: DbSystem::Memcached,
                operation: p.op.to_owned(),
                query,
                collection: None,
                namespace: None,
                status_code: error.map(str::to_owned),
                error: error.is_some(),
            }),
        });
    }
}

fn parse_line(kind: Kind, strict: bool, line: &[u8]) -> Parsed {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match kind {
        Kind::Command => parse_command(line, strict).map_or(Parsed::Bad, Parsed::Cmd),
        Kind::Response => parse_response(line).map_or(Parsed::Bad, Parsed::Resp),
    }
}

impl ProtocolParser for MemcachedParser {
    const PROTOCOL: Protocol = Protocol::Memcached;

    /// Which side a connection's first segment reveals, if it starts with a memcached
    /// command.
    fn detect(seg: &Segment<'_>) -> Detected {
        let d = seg.data;
        let side = match seg.direction {
            Direction::Egress => Side::Client,
            Direction::Ingress => Side::Server,
        };
        if d.first() == Some(&0x80) {
            return Detected::No; // binary protocol
        }
        if let Some(i) = d.iter().position(|&b| b == b'\n') {
            let line = d.get(..i).unwrap_or(&[]);
            return match line.strip_suffix(b"\r") {
                Some(line) if parse_command(line, true).is_some() => Detected::Side(side),
                _ => Detected::No,
            };
        }
        // No line end yet: a prefix of a command line?
        let body = d.strip_suffix(b"\r").unwrap_or(d);
        if d.len() > MAX_LINE_BYTES || !body.iter().all(|&b| line_byte(b)) {
            return Detected::No;
        }
        match body.iter().position(|&b| b == b' ') {
            None if COMMANDS
                .iter()
                .any(|(name, _)| name.as_bytes().starts_with(body)) =>
            {
                Detected::Undecided
            }
            None => Detected::No,
            Some(sp) => match lookup(body.get(..sp).unwrap_or(&[])) {
                Some(_) if seg.is_truncated() && parse_truncated(body).is_some() => {
                    Detected::Side(side)
                }
                Some(_) => Detected::Undecided,
                None => Detected::No,
            },
        }
    }

    fn new(side: Side) -> Self {
        Self {
            side,
            readers: Duplex {
                requests: Reader::new(Kind::Command),
                responses: Reader::new(Kind::Response),
            },
            pending: VecDeque::new(),
            open: None,
            errors: ErrorStreak::default(),
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

    fn on_close(&mut self, _ts_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        self.on_idle(out);
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.open = None;
        self.readers = Duplex {
            requests: Reader::new(Kind::Command),
            responses: Reader::new(Kind::Response),
        };
    }

    fn on_idle(&mut self, out: &mut ParserOut) {
        // A response whose end went by uncaptured ended with its last bytes seen.
        if self.readers.responses.state == State::Lost && self.open.is_some_and(|o| !o.orphan) {
            self.open = None;
            if let Some(p) = self.pending.pop_front() {
                let end = self.readers.responses.last_ts;
                self.emit(p, end, None, Trust::END_INFERRED, out);
            }
        }
    }

    fn on_gap(&mut self, stats: &mut ParseStats) {
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.open = None;
        for r in self.readers.both_mut() {
            r.state = State::Lost;
            r.buf.clear();
            r.strict = true;
        }
    }

    fn gave_up(&self) -> bool {
        self.errors.too_long()
    }
}
