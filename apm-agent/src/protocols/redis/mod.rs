//! Redis (RESP2/RESP3) exchanges on one connection, seen from either end.
//!
//! Commands (arrays of bulk strings) wait in a bounded queue and are matched in order with
//! the replies of the other direction. Framing is exact: bulk payloads are skipped by
//! counting, also past the captured prefix of a syscall, and nothing but a short line prefix
//! is buffered across segments. Out-of-band data is not a reply: RESP3 attributes (`|`) and
//! pushes (`>`), and pub/sub messages in RESP2 subscriber mode. Where bytes were lost or
//! garbled, the command side picks up again at a segment that starts with a command, and the
//! commands still waiting are written off.
//!
//! Limits: `CLIENT REPLY OFF|SKIP` (no replies) desynchronizes the matching; an `UNSUBSCRIBE`
//! without arguments completes at its first confirmation (the others are absorbed); a
//! `SELECT` inside `MULTI` does not change the namespace; `MONITOR` makes the parser give up.
mod resp;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use resp::{Reader, Role, Small, State, Step};

use super::{
    Detected, Direction, ParseStats, ParserOut, ProtocolParser, Segment,
    duplex::{Duplex, ErrorStreak, Half, walk},
};
use crate::request::{DbInfo, DbSystem, Detail, Protocol, Request, Side, Started, Trust};

/// Commands that may await their reply at once (pipelining depth).
const MAX_PENDING: usize = 4096;
/// Longest command name or error prefix kept.
const MAX_WORD: usize = 32;
/// Arguments written as `?` in the query text; more are written as `? ? ...`.
const MAX_QUERY_ARGS: u64 = 8;

/// The pub/sub command families; their confirmations carry the family name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Subscribe,
    Psubscribe,
    Ssubscribe,
    Unsubscribe,
    Punsubscribe,
    Sunsubscribe,
}

const FAMILIES: [(&str, Family); 6] = [
    ("SUBSCRIBE", Family::Subscribe),
    ("PSUBSCRIBE", Family::Psubscribe),
    ("SSUBSCRIBE", Family::Ssubscribe),
    ("UNSUBSCRIBE", Family::Unsubscribe),
    ("PUNSUBSCRIBE", Family::Punsubscribe),
    ("SUNSUBSCRIBE", Family::Sunsubscribe),
];

fn family(word: &[u8]) -> Option<Family> {
    FAMILIES
        .iter()
        .find(|(name, _)| word.eq_ignore_ascii_case(name.as_bytes()))
        .map(|&(_, f)| f)
}

/// What a command does to the connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// Answered by one confirmation per channel.
    PubSub(Family),
    Select(Option<u32>),
    Reset,
    Monitor,
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Pending {
    operation: String,
    query: String,
    kind: Kind,
    /// Replies still expected (pub/sub confirmations).
    replies_left: u64,
    start_ns: u64,
    tid: u32,
    seq: u64,
}

/// Redis parser for one connection.
#[derive(Debug)]
pub struct RedisParser {
    side: Side,
    /// The two directions' readers (commands, replies), boxed to keep the parser small.
    readers: Duplex<Option<Box<Reader>>>,
    pending: VecDeque<Pending>,
    /// Replies to swallow: their commands were dropped from a full queue.
    skip_replies: u64,
    errors: ErrorStreak,
    next_seq: u64,
    /// Database index after a successful `SELECT`.
    db: Option<u32>,
    /// Subscriptions reported by the last RESP2 confirmation: above 0, the connection is in
    /// subscriber mode and arrays starting with `message` are pushes.
    subscriptions: i64,
    monitor: bool,
}

impl From<Half> for Role {
    fn from(half: Half) -> Self {
        match half {
            Half::Requests => Self::Command,
            Half::Responses => Self::Reply,
        }
    }
}

impl RedisParser {
    /// Walks one segment through reader `r` (taken out of `self` by the caller).
    fn feed(
        &mut self,
        r: &mut Reader,
        role: Role,
        seg: &Segment<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        let total = seg.total_len.max(seg.data.len() as u64);
        let mut pos: u64 = 0;
        while pos < total {
            let rest: &[u8] = seg.data.get(pos as usize..).unwrap_or(&[]);
            let hidden = (total - pos).saturating_sub(rest.len() as u64);
            if let State::Resync { after_error } = r.state {
                if role == Role::Command && pos == 0 && resp::command_start(rest) != Some(false) {
                    r.reset(State::Line);
                    continue;
                }
                if role == Role::Command && after_error {
                    self.errors.hit();
                }
                return;
            }
            let (used, step) = r.step(rest, hidden, seg.ts_ns, seg.tid);
            pos = pos.saturating_add(used);
            match step {
                Step::More if used == 0 => return,
                Step::More => {}
                Step::Done => {
                    self.errors.clear();
                    match role {
                        Role::Command => self.on_command(r, out, stats),
                        Role::Reply => self.on_reply(r, seg.ts_ns, out, stats),
                    }
                }
                Step::Lost => {
                    r.reset(State::Resync { after_error: false });
                    return;
                }
                Step::Invalid => {
                    stats.parse_errors += 1;
                    self.errors.hit();
                    r.reset(State::Resync { after_error: true });
                    return;
                }
            }
        }
    }

    fn on_command(&mut self, r: &Reader, out: &mut ParserOut, stats: &mut ParseStats) {
        let msg = &r.msg;
        if msg.elems == 0 {
            return;
        }
        // The replies lost track: the replies to the commands still waiting went by unseen.
        if let Some(replies) = self
            .readers
            .responses
            .as_mut()
            .filter(|r| matches!(r.state, State::Resync { .. }))
        {
            replies.reset(State::Line);
            stats.incomplete += self.pending.len() as u64;
            self.pending.clear();
            self.skip_replies = 0;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.skip_replies += 1;
            stats.pipeline_overflow += 1;
        }
        let args = msg.elems - 1;
        let operation = operation(&msg.word0);
        let kind = match operation.as_str() {
            "SELECT" => Kind::Select(db_index(&msg.arg1)),
            "RESET" => Kind::Reset,
            "MONITOR" => Kind::Monitor,
            op => family(op.as_bytes()).map_or(Kind::Plain, Kind::PubSub),
        };
        let query = query(&operation, args);
        let seq = self.next_seq;
        self.next_seq += 1;
        out.started.push(Started {
            side: self.side,
            seq,
            tid: msg.tid,
            start_ns: msg.ts,
            traceparent: None,
        });
        self.pending.push_back(Pending {
            operation,
            query,
            kind,
            replies_left: if matches!(kind, Kind::PubSub(_)) {
                args.max(1)
            } else {
                1
            },
            start_ns: msg.ts,
            tid: msg.tid,
            seq,
        });
    }

    fn on_reply(&mut self, r: &Reader, end_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        let msg = &r.msg;
        let subscribed = self.subscriptions > 0;
        let resp2_array = msg.top == b'*' && (subscribed || self.front_is_pubsub());
        if msg.top == b'>' || resp2_array {
            let word = msg.word0.whole().unwrap_or(&[]);
            let fam = family(word);
            let front = self.pending.front().map(|p| p.kind);
            if let (true, Some(_), Some(n)) = (resp2_array, fam, msg.int2) {
                self.subscriptions = n;
            }
            match fam {
                Some(f) if front == Some(Kind::PubSub(f)) => {
                    if let Some(p) = self.pending.front_mut() {
                        p.replies_left = p.replies_left.saturating_sub(1);
                        if p.replies_left == 0 {
                            self.complete(msg, end_ns, out);
                        }
                    }
                    return;
                }
                // Another confirmation (e.g. of an UNSUBSCRIBE of all), or a message.
                Some(_) if msg.top == b'>' || subscribed || front.is_none() => return,
                None if msg.top == b'>' => return,
                None if subscribed
                    && [&b"message"[..], b"pmessage", b"smessage"]
                        .iter()
                        .any(|m| word.eq_ignore_ascii_case(m)) =>
                {
                    return;
                }
                _ => {}
            }
        }
        if self.skip_replies > 0 {
            self.skip_replies -= 1;
            return;
        }
        if self.pending.is_empty() {
            stats.unmatched_responses += 1;
            return;
        }
        self.complete(msg, end_ns, out);
    }

    fn front_is_pubsub(&self) -> bool {
        self.pending
            .front()
            .is_some_and(|p| matches!(p.kind, Kind::PubSub(_)))
    }

    /// The oldest pending command got its (last) reply, `msg`.
    fn complete(&mut self, msg: &resp::Msg, end_ns: u64, out: &mut ParserOut) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        let error = matches!(msg.top, b'-' | b'!');
        let ok = msg.top == b'+' && msg.word0.whole() == Some(b"OK");
        match p.kind {
            Kind::Select(Some(db)) if ok => self.db = Some(db),
            Kind::Reset if !error => {
                self.db = None;
                self.subscriptions = 0;
            }
            Kind::Monitor if ok => self.monitor = true,
            _ => {}
        }
        out.done.push(Request {
            protocol: Protocol::Redis,
            side: self.side,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            tid: p.tid,
            seq: p.seq,
            trust: Trust::default(),
            detail: Detail::Db(DbInfo {
                system: DbSystem::Redis,
                operation: p.operation,
                query: p.query,
                collection: None,
                namespace: self.db.map(|d| d.to_string()),
                status_code: error.then(|| error_prefix(msg.word0.bytes())),
                error,
            }),
        });
    }
}

impl ProtocolParser for RedisParser {
    const PROTOCOL: Protocol = Protocol::Redis;

    /// Which side a connection's first segment reveals, if it starts with a RESP command
    /// (inline commands are not recognized).
    fn detect(seg: &Segment<'_>) -> Detected {
        match resp::command_start(seg.data) {
            Some(true) => Detected::Side(match seg.direction {
                Direction::Egress => Side::Client,
                Direction::Ingress => Side::Server,
            }),
            None => Detected::Undecided,
            Some(false) => Detected::No,
        }
    }

    fn new(side: Side) -> Self {
        Self {
            side,
            readers: Duplex {
                requests: Some(Box::new(Reader::new(Role::Command))),
                responses: Some(Box::new(Reader::new(Role::Reply))),
            },
            pending: VecDeque::new(),
            skip_replies: 0,
            errors: ErrorStreak::default(),
            next_seq: 0,
            db: None,
            subscriptions: 0,
            monitor: false,
        }
    }

    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.gave_up() {
            return;
        }
        let half = Half::of(self.side, seg.direction);
        walk(
            self,
            |p| &mut p.readers,
            half,
            None,
            |p, reader| {
                if let Some(reader) = reader {
                    p.feed(reader, Role::from(half), seg, out, stats);
                }
            },
        );
    }

    fn on_close(&mut self, _ts_ns: u64, _out: &mut ParserOut, stats: &mut ParseStats) {
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.skip_replies = 0;
        for r in self.readers.both_mut().into_iter().flatten() {
            r.reset(State::Line);
        }
    }

    /// Redis framing always knows where a reply ends: nothing to infer.
    fn on_idle(&mut self, _out: &mut ParserOut) {}

    fn on_gap(&mut self, stats: &mut ParseStats) {
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.skip_replies = 0;
        // The replies side stays in resync until the next command (see `on_command`).
        for r in self.readers.both_mut().into_iter().flatten() {
            r.reset(State::Resync { after_error: false });
        }
    }

    fn gave_up(&self) -> bool {
        self.monitor || self.errors.too_long()
    }
}

/// The command name upper-cased, or `_OTHER` when it is not a short word.
fn operation(name: &Small) -> String {
    match name.whole() {
        Some(w)
            if !w.is_empty()
                && w.len() <= MAX_WORD
                && w.iter()
                    .enumerate()
                    .all(|(i, &b)| resp::name_byte(b, i == 0)) =>
        {
            w.iter().map(|&b| b.to_ascii_uppercase() as char).collect()
        }
        _ => "_OTHER".to_owned(),
    }
}

/// `OP ? ?`: one `?` per argument, `OP ? ? ...` past [`MAX_QUERY_ARGS`].
fn query(operation: &str, args: u64) -> String {
    let shown = if args > MAX_QUERY_ARGS { 2 } else { args };
    let mut q = String::with_capacity(operation.len() + 2 * shown as usize + 4);
    q.push_str(operation);
    for _ in 0..shown {
        q.push_str(" ?");
    }
    if args > MAX_QUERY_ARGS {
        q.push_str(" ...");
    }
    q
}

/// The database index of `SELECT n`.
fn db_index(arg: &Small) -> Option<u32> {
    let w = arg.whole()?;
    if w.is_empty() || w.len() > 9 || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(w).ok()?.parse().ok()
}

/// The first word of an error (`ERR`, `WRONGTYPE`), or `_OTHER` when it is not upper-case
/// letters.
fn error_prefix(text: &[u8]) -> String {
    let word = text.split(|&b| b == b' ').next().unwrap_or(&[]);
    if !word.is_empty() && word.len() <= MAX_WORD && word.iter().all(u8::is_ascii_uppercase) {
        word.iter().map(|&b| b as char).collect()
    } else {
        "_OTHER".to_owned()
    }
}
