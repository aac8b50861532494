//! MySQL/MariaDB client/server protocol on one connection, seen from either end.
//!
//! Two packet readers follow the two directions (commands one way, responses the other).
//! The handshake (greeting, handshake response, auth exchange) sets the database system,
//! the capabilities and the database; after it, every command that gets a response is one
//! operation, from the segment carrying its first bytes to the segment completing its
//! response. Result set rows are skipped by count, never buffered.
//!
//! Choices:
//! - `COM_STMT_PREPARE` is an operation named `PREPARE`, with the normalized text and table
//!   of the statement it prepares; `COM_STMT_EXECUTE` is named like that statement (`SELECT`,
//!   same text and table), so executions count under the statement's keyword, as with
//!   PostgreSQL's extended protocol (unknown ids: operation `EXECUTE`, empty query).
//! - Commands without SQL are named after the command without `COM_` (`PING`, `INIT_DB`,
//!   `STMT_RESET`, `STMT_FETCH`, `RESET_CONNECTION`, `CHANGE_USER`, `STATISTICS`,
//!   `SET_OPTION`, `FIELD_LIST`), the others `_OTHER`; their query text is empty.
//! - Commands without a response (`COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`, `COM_QUIT`)
//!   are not operations: they take no sequence number and produce nothing.
//! - `db.namespace` of a `USE x` / `COM_INIT_DB` operation is the database after it.
//! - TLS (SSLRequest), the compressed protocol and binlog streaming end the parser quietly.
mod packets;
mod responses;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use packets::{Meta, Reader, Step};

use super::sql::{self, Dialect, Statement};
use super::{
    Detected, Direction, ParseStats, ParserOut, ProtocolParser, Segment,
    duplex::{Duplex, ErrorStreak, Half, walk},
};
use crate::request::{DbInfo, DbSystem, Detail, Protocol, Request, Side, Started, Trust};

/// Commands that may await their response at once (MySQL clients do not pipeline).
const MAX_PENDING: usize = 16;
/// Prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 1024;
/// Command payload bytes kept (SQL text beyond this is normalized as truncated).
const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Response payload bytes kept (enough for greetings, OK/EOF/ERR heads).
const MAX_RESPONSE_BYTES: usize = 256;
/// Longest database name kept.
const MAX_NAMESPACE_BYTES: usize = 64;
/// Most columns a result set may announce (MySQL allows 4096).
const MAX_COLUMNS: u64 = 0xffff;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet: a greeting or a command may come.
    Start,
    /// The greeting was seen; the client's handshake response comes next.
    HandshakeResponse,
    /// Authentication exchange until the server's OK or ERR.
    Auth,
    Command,
}

/// What kind of response a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// OK, ERR, EOF, LOCAL INFILE request or a (text or binary) result set.
    Results,
    /// COM_STMT_PREPARE_OK and its definitions, or ERR.
    Prepare,
    /// Rows until EOF/OK (COM_STMT_FETCH, COM_FIELD_LIST).
    Rows,
    /// Any one packet (COM_STATISTICS answers with a bare string).
    Single,
    /// An authentication exchange (COM_CHANGE_USER) until OK or ERR.
    Auth,
}

/// Where the response of the oldest pending command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    First,
    Columns {
        left: u64,
    },
    AfterColumns,
    Rows,
    /// Prepared statement definitions: `left` in the current group, then an EOF if
    /// `eof_next`, then a group of `then` more.
    Defs {
        left: u64,
        eof_next: bool,
        then: u64,
    },
    Auth,
    Infile,
}

/// Which sequence id the next response packet must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqCheck {
    /// One past the command's last packet.
    FromCommand,
    Expect(u8),
    /// Not checked (the exchange alternates directions).
    Any,
}

/// A command waiting for its response.
#[derive(Debug)]
struct Pending {
    expect: Expect,
    statement: Statement,
    /// COM_STMT_PREPARE: the statement to remember under the id the server gives.
    prepare: bool,
    /// Database to switch to when the command succeeds.
    set_namespace: Option<String>,
    start_ns: u64,
    tid: u32,
    seq: u64,
    cmd_seq: u8,
    trust: Trust,
    /// Response bytes were seen but their framing was lost.
    lost: bool,
}

/// What handling a packet came to.
enum Outcome {
    Ok,
    /// Cannot follow (no command awaits it): skip until the next command, not an error.
    Lost,
    Error,
}

/// MySQL/MariaDB parser for one connection (its state boxed: the `Parser` enum stays small).
#[derive(Debug)]
pub struct MysqlParser(Box<Inner>);

impl ProtocolParser for MysqlParser {
    const PROTOCOL: Protocol = Protocol::Mysql;

    /// Which side a connection's first segment reveals, if it is MySQL at all: a server
    /// greeting (the server speaks first), or for connections seen mid-stream a command
    /// packet filling the segment exactly.
    fn detect(seg: &Segment<'_>) -> Detected {
        let d = seg.data;
        if packets::is_greeting(d, seg.total_len) {
            return Detected::Side(match seg.direction {
                Direction::Egress => Side::Server,
                Direction::Ingress => Side::Client,
            });
        }
        if packets::is_command(d, seg.total_len) {
            return Detected::Side(match seg.direction {
                Direction::Egress => Side::Client,
                Direction::Ingress => Side::Server,
            });
        }
        // A header (length < 64 KiB, sequence 0) cut short.
        let could_start = !d.is_empty()
            && d.len() < 6
            && d.get(2).is_none_or(|&b| b == 0)
            && d.get(3).is_none_or(|&b| b == 0);
        if could_start {
            Detected::Undecided
        } else {
            Detected::No
        }
    }

    fn new(side: Side) -> Self {
        Self(Box::new(Inner::new(side)))
    }

    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        self.0.on_segment(seg, out, stats);
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        self.0.on_close(ts_ns, out, stats);
    }

    fn on_idle(&mut self, out: &mut ParserOut) {
        self.0.on_idle(out);
    }

    fn on_gap(&mut self, stats: &mut ParseStats) {
        self.0.on_gap(stats);
    }

    fn gave_up(&self) -> bool {
        self.0.gave_up()
    }
}

#[derive(Debug)]
struct Inner {
    side: Side,
    /// The commands (the requests) and the responses.
    readers: Duplex<Reader>,
    phase: Phase,
    system: DbSystem,
    server_caps: Option<u32>,
    client_caps: Option<u32>,
    /// CLIENT_DEPRECATE_EOF in effect, when known (handshake, or learned from result sets).
    deprecate_eof: Option<bool>,
    namespace: Option<String>,
    statements: HashMap<u32, Statement>,
    statement_order: VecDeque<u32>,
    pending: VecDeque<Pending>,
    resp: Resp,
    resp_seq: SeqCheck,
    /// A prepare completed without knowing whether an EOF follows its definitions: an EOF
    /// with this sequence id is swallowed.
    maybe_eof: Option<u8>,
    command_error: bool,
    response_error: bool,
    errors: ErrorStreak,
    /// TLS, compression or replication: nothing more to follow.
    quit: bool,
    next_seq: u64,
}

impl Inner {
    fn new(side: Side) -> Self {
        Self {
            side,
            readers: Duplex {
                requests: Reader::new(MAX_COMMAND_BYTES, true),
                responses: Reader::new(MAX_RESPONSE_BYTES, false),
            },
            phase: Phase::Start,
            system: DbSystem::Mysql,
            server_caps: None,
            client_caps: None,
            deprecate_eof: None,
            namespace: None,
            statements: HashMap::new(),
            statement_order: VecDeque::new(),
            pending: VecDeque::new(),
            resp: Resp::First,
            resp_seq: SeqCheck::FromCommand,
            maybe_eof: None,
            command_error: false,
            response_error: false,
            errors: ErrorStreak::default(),
            quit: false,
            next_seq: 0,
        }
    }

    fn caps(&self) -> Option<u32> {
        match (self.client_caps, self.server_caps) {
            (Some(c), Some(s)) => Some(c & s),
            (c, _) => c,
        }
    }

    fn feed_commands(
        &mut self,
        r: &mut Reader,
        seg: &Segment<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        if r.is_lost() {
            if packets::is_command(seg.data, seg.total_len) {
                r.reset();
                self.command_error = false;
            } else {
                if self.command_error {
                    self.errors.hit();
                }
                return;
            }
        }
        let mut pos = 0u64;
        loop {
            match r.next(seg, &mut pos) {
                Step::More | Step::Lost => return,
                Step::Packet(m) => {
                    let outcome = self.on_command(m, &r.buf, out, stats);
                    r.buf.clear();
                    match outcome {
                        Outcome::Ok => {}
                        Outcome::Lost => {
                            r.set_lost();
                            return;
                        }
                        Outcome::Error => {
                            stats.parse_errors += 1;
                            self.errors.hit();
                            self.command_error = true;
                            r.set_lost();
                            return;
                        }
                    }
                }
            }
        }
    }

    fn feed_responses(
        &mut self,
        r: &mut Reader,
        seg: &Segment<'_>,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) {
        if r.is_lost() {
            if self.response_error {
                self.errors.hit();
            }
            return;
        }
        let mut pos = 0u64;
        loop {
            match r.next(seg, &mut pos) {
                Step::More => return,
                Step::Lost => {
                    self.response_lost();
                    return;
                }
                Step::Packet(m) => {
                    let outcome = self.on_response(m, &r.buf, seg.ts_ns, out, stats);
                    r.buf.clear();
                    match outcome {
                        Outcome::Ok => {}
                        Outcome::Lost => {
                            self.response_lost();
                            r.set_lost();
                            return;
                        }
                        Outcome::Error => {
                            stats.parse_errors += 1;
                            self.errors.hit();
                            self.response_error = true;
                            self.response_lost();
                            r.set_lost();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The response of the oldest command can no longer be followed: its end will be
    /// inferred from the last response bytes seen.
    fn response_lost(&mut self) {
        if let Some(p) = self.pending.front_mut() {
            p.lost = true;
            p.trust.insert(Trust::END_INFERRED);
        }
    }

    /// Finishes what lost response framing left open: the oldest command ends with the last
    /// response bytes seen, the others never got theirs.
    fn settle_lost(&mut self, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.pending.front().is_some_and(|p| p.lost) {
            let end = self.readers.responses.last_ts;
            self.complete(end, None, out);
        }
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.reset_response();
    }

    fn reset_response(&mut self) {
        self.resp = Resp::First;
        self.resp_seq = SeqCheck::FromCommand;
    }

    fn on_command(
        &mut self,
        m: Meta,
        p: &[u8],
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) -> Outcome {
        if m.first_seq != 0 {
            if self.phase == Phase::HandshakeResponse && m.first_seq == 1 {
                return self.on_handshake_response(p, m.len);
            }
            // Auth data, LOCAL INFILE contents, COM_CHANGE_USER continuations: not commands.
            return Outcome::Ok;
        }
        let Some((&cmd, args)) = p.split_first() else {
            return Outcome::Error;
        };
        let mut trust = Trust::default();
        if (p.len() as u64) < m.len {
            trust.insert(Trust::HEAD_TRUNCATED);
        }
        let named = |op: &str| Statement {
            text: String::new(),
            operation: op.to_owned(),
            collection: None,
        };
        let mut set_namespace = None;
        let mut prepare = false;
        let (expect, statement) = match cmd {
            0x01 | 0x18 => return Outcome::Ok,
            0x19 => {
                if let Some(id) = packets::u32_at(args, 0) {
                    self.statements.remove(&id);
                    self.statement_order.retain(|&x| x != id);
                }
                return Outcome::Ok;
            }
            0x12 | 0x1e => {
                // Binlog streaming: not request/response any more.
                self.quit = true;
                return Outcome::Ok;
            }
            0x02 => {
                set_namespace = clean_name(args);
                (Expect::Results, named("INIT_DB"))
            }
            0x03 => {
                let st = sql::normalize(self.query_text(args).unwrap_or(&[]), Dialect::Mysql);
                if st.operation == "USE" {
                    set_namespace = st
                        .text
                        .get(3..)
                        .and_then(|rest| clean_name(rest.trim().as_bytes()));
                }
                (Expect::Results, st)
            }
            0x16 => {
                prepare = true;
                (Expect::Prepare, sql::normalize(args, Dialect::Mysql))
            }
            0x17 | 0xfa => {
                let known = packets::u32_at(args, 0).and_then(|id| self.statements.get(&id));
                let st = known.cloned().unwrap_or_else(|| named("EXECUTE"));
                (Expect::Results, st)
            }
            0x04 => (Expect::Rows, named("FIELD_LIST")),
            0x09 => (Expect::Single, named("STATISTICS")),
            0x0e => (Expect::Results, named("PING")),
            0x11 => (Expect::Auth, named("CHANGE_USER")),
            0x1a => (Expect::Results, named("STMT_RESET")),
            0x1b => (Expect::Results, named("SET_OPTION")),
            0x1c => (Expect::Rows, named("STMT_FETCH")),
            0x1f => (Expect::Results, named("RESET_CONNECTION")),
            0x00..=0x1f => (Expect::Results, named("_OTHER")),
            _ => return Outcome::Error,
        };
        self.phase = Phase::Command;
        self.errors.clear();
        self.maybe_eof = None;
        if self.readers.responses.is_lost() || self.pending.front().is_some_and(|p| p.lost) {
            self.settle_lost(out, stats);
            self.readers.responses.reset();
            self.response_error = false;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            stats.pipeline_overflow += 1;
            self.reset_response();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        out.started.push(Started {
            side: self.side,
            seq,
            tid: m.start_tid,
            start_ns: m.start_ts,
            traceparent: None,
        });
        self.pending.push_back(Pending {
            expect,
            statement,
            prepare,
            set_namespace,
            start_ns: m.start_ts,
            tid: m.start_tid,
            seq,
            cmd_seq: m.last_seq,
            trust,
            lost: false,
        });
        Outcome::Ok
    }

    /// The SQL text of a COM_QUERY (after the command byte), past query attributes.
    fn query_text<'a>(&self, args: &'a [u8]) -> Option<&'a [u8]> {
        let attrs = match self.caps() {
            Some(c) => c & packets::CLIENT_QUERY_ATTRIBUTES != 0,
            None => args.starts_with(&[0, 1]),
        };
        if !attrs {
            return Some(args);
        }
        let (count, a) = packets::lenenc(args)?;
        let (_sets, b) = packets::lenenc(args.get(a..)?)?;
        // With attributes, the text follows their binary values: not located here.
        (count == 0).then(|| args.get(a.checked_add(b)?..))?
    }

    fn on_handshake_response(&mut self, p: &[u8], len: u64) -> Outcome {
        let Some(hs) = packets::parse_handshake_response(p, len) else {
            return Outcome::Error;
        };
        if hs.ssl {
            self.quit = true;
            return Outcome::Ok;
        }
        self.client_caps = Some(hs.caps);
        let caps = self.caps().unwrap_or(hs.caps);
        if caps & packets::CLIENT_COMPRESS != 0 {
            self.quit = true;
        }
        self.deprecate_eof = Some(caps & packets::CLIENT_DEPRECATE_EOF != 0);
        if let Some(db) = hs.database.as_deref().and_then(clean_name) {
            self.namespace = Some(db);
        }
        self.phase = Phase::Auth;
        Outcome::Ok
    }

    fn remember(&mut self, id: u32, st: Statement, stats: &mut ParseStats) {
        if self.statements.insert(id, st).is_some() {
            return;
        }
        self.statement_order.push_back(id);
        while self.statement_order.len() > MAX_STATEMENTS {
            if let Some(old) = self.statement_order.pop_front() {
                self.statements.remove(&old);
                stats.pipeline_overflow += 1;
            }
        }
    }

    /// The oldest pending command got its whole response (an ERR with `error`).
    fn complete(&mut self, end_ns: u64, error: Option<u16>, out: &mut ParserOut) {
        self.reset_response();
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        if !p.lost {
            self.errors.clear();
        }
        if let Some(ns) = p.set_namespace.filter(|_| error.is_none()) {
            self.namespace = Some(ns);
        }
        out.done.push(Request {
            protocol: Protocol::Mysql,
            side: self.side,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            tid: p.tid,
            seq: p.seq,
            trust: p.trust,
            detail: Detail::Db(DbInfo {
                system: self.system,
                // A prepare is its own round trip, but not an execution of the statement:
                // `PREPARE` keeps the statement's executions counted under its keyword.
                operation: if p.prepare {
                    "PREPARE".to_owned()
                } else {
                    p.statement.operation
                },
                query: p.statement.text,
                collection: p.statement.collection,
                namespace: self.namespace.clone(),
                status_code: error.map(|e| e.to_string()),
                error: error.is_some(),
            }),
        });
    }
}

/// The connection's calls, forwarded by [`MysqlParser`].
impl Inner {
    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.gave_up() {
            return;
        }
        let half = Half::of(self.side, seg.direction);
        walk(
            self,
            |p| &mut p.readers,
            half,
            Reader::new(0, false),
            |p, r| {
                match half {
                    Half::Requests => p.feed_commands(r, seg, out, stats),
                    Half::Responses => p.feed_responses(r, seg, out, stats),
                }
                r.last_ts = seg.ts_ns;
            },
        );
    }

    fn on_close(&mut self, _ts_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
        self.settle_lost(out, stats);
    }

    fn on_idle(&mut self, out: &mut ParserOut) {
        if self.pending.front().is_some_and(|p| p.lost) {
            let end = self.readers.responses.last_ts;
            self.complete(end, None, out);
        }
    }

    fn on_gap(&mut self, stats: &mut ParseStats) {
        stats.incomplete += self.pending.len() as u64;
        self.pending.clear();
        self.reset_response();
        self.maybe_eof = None;
        // The commands side picks up at a segment that starts with a command; the responses
        // side at the next command (see `on_command`).
        self.readers.requests.set_lost();
        self.readers.responses.set_lost();
        self.command_error = false;
        self.response_error = false;
    }

    fn gave_up(&self) -> bool {
        self.quit || self.errors.too_long()
    }
}

/// A database name as exported: printable UTF-8, backquotes removed, bounded.
fn clean_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim().trim_matches('`');
    if s.is_empty() || s.len() > MAX_NAMESPACE_BYTES || s.chars().any(char::is_control) {
        return None;
    }
    Some(s.to_owned())
}
