//! PostgreSQL wire protocol (v3) on one connection, seen from either end.
//!
//! Two framers follow the two directions (frontend messages one way, backend messages the
//! other). Operations are simple queries (`Q` up to its ReadyForQuery) and extended-protocol
//! Executes (up to their CommandComplete/EmptyQuery/PortalSuspended/Error). They wait in one
//! bounded queue, in order, with the Sync markers that delimit extended-protocol groups, so
//! replies pair with what the server is processing even when the client pipelines. SQL text
//! is normalized ([`sql::normalize`]) as soon as it is read; raw text never leaves the parser.
mod framing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use framing::{Dir, Msg, Reader, State, Step};

use super::sql::{self, Dialect};
use super::{
    Detected, Direction, ParseStats, ParserOut, ProtocolParser, Segment,
    duplex::{Duplex, ErrorStreak, Half, walk},
};
use crate::request::{DbInfo, DbSystem, Detail, Protocol, Request, Side, Started, Trust};

/// Operations and Sync markers that may await replies at once.
const MAX_PENDING: usize = 4096;
/// Named prepared statements (and portals) remembered per connection.
const MAX_STATEMENTS: usize = 1024;
/// Longest namespace (database name) kept.
const MAX_NAMESPACE_BYTES: usize = 128;

/// A normalized statement.
#[derive(Debug)]
struct Stmt {
    text: String,
    operation: String,
    collection: Option<String>,
    truncated: bool,
}

impl Stmt {
    fn new(sql_text: &[u8], truncated: bool) -> Self {
        let s = sql::normalize(sql_text, Dialect::Postgres);
        Self {
            text: s.text,
            operation: s.operation,
            collection: s.collection,
            truncated,
        }
    }
}

/// The statement of an operation: its own (simple query) or a prepared one.
#[derive(Debug)]
enum StmtRef {
    Owned(Stmt),
    Shared(Arc<Stmt>),
    /// An Execute of a portal whose Parse/Bind was not seen.
    Unknown,
}

/// An operation waiting for its end.
#[derive(Debug)]
struct Op {
    /// A simple query (ends at ReadyForQuery) rather than an Execute.
    simple: bool,
    stmt: StmtRef,
    start_ns: u64,
    tid: u32,
    seq: u64,
    /// SQLSTATE of the first error.
    status_code: Option<String>,
    error: bool,
}

#[derive(Debug)]
enum Item {
    Op(Op),
    /// A Sync: its ReadyForQuery closes an extended-protocol group.
    Sync,
}

#[derive(Debug, Default)]
struct Named {
    /// The database (`db.namespace`), from the startup message.
    namespace: Option<String>,
    statements: HashMap<Vec<u8>, Arc<Stmt>>,
    portals: HashMap<Vec<u8>, Arc<Stmt>>,
}

/// PostgreSQL parser for one connection.
#[derive(Debug)]
pub struct PostgresParser {
    side: Side,
    /// The frontend's messages (the requests) and the backend's.
    readers: Duplex<Reader>,
    pending: VecDeque<Item>,
    /// Prepared statements and portals by name (boxed: most connections never use them,
    /// and the parser stays small).
    named: Box<Named>,
    /// An SSLRequest/GSSENCRequest awaits its one-byte answer.
    expect_encryption_reply: bool,
    /// The server agreed to encrypt: nothing more can be read.
    encrypted: bool,
    /// A ReadyForQuery was seen (the startup phase is over) since the start or the last lost
    /// records.
    ready: bool,
    errors: ErrorStreak,
    next_seq: u64,
}

impl From<Half> for Dir {
    fn from(half: Half) -> Self {
        match half {
            Half::Requests => Self::Front,
            Half::Responses => Self::Back,
        }
    }
}

impl PostgresParser {
    fn feed(
        &mut self,
        r: &mut Reader,
        seg: &Segment<'_>,
        out: &mut ParserOut,
        st: &mut ParseStats,
    ) {
        let total = seg.total_len.max(seg.data.len() as u64);
        let mut pos: u64 = 0;
        loop {
            if r.dir == Dir::Back && self.expect_encryption_reply && r.at_boundary() {
                let p = usize::try_from(pos).unwrap_or(usize::MAX);
                if let Some(&b) = seg.data.get(p) {
                    self.expect_encryption_reply = false;
                    match b {
                        b'N' => {
                            pos += 1;
                            continue;
                        }
                        b'S' | b'G' => {
                            // TLS or GSS encryption follows: nothing more to read.
                            self.encrypted = true;
                            return;
                        }
                        _ => {}
                    }
                }
            }
            match r.next(seg, &mut pos, total) {
                Step::End => return,
                Step::SkippedAfterError => {
                    self.errors.hit();
                    return;
                }
                Step::Invalid => {
                    st.parse_errors += 1;
                    self.errors.hit();
                    r.lose(true);
                    return;
                }
                Step::Message(m) => {
                    self.errors.clear();
                    let body = std::mem::take(&mut r.buf);
                    match r.dir {
                        Dir::Front => self.on_frontend(r, m, &body, out, st),
                        Dir::Back => self.on_backend(m, &body, seg.ts_ns, out, st),
                    }
                    r.buf = body;
                    if self.encrypted {
                        return;
                    }
                }
            }
        }
    }

    fn on_frontend(
        &mut self,
        r: &mut Reader,
        m: Msg,
        body: &[u8],
        out: &mut ParserOut,
        st: &mut ParseStats,
    ) {
        match m.ty {
            0 => self.on_startup(r, body, st),
            b'Q' => {
                let (text, _) = framing::cstr(body);
                let op = self.new_op(true, StmtRef::Owned(Stmt::new(text, m.truncated)), m, out);
                self.push(Item::Op(op), out, st);
            }
            b'P' => {
                let (name, rest) = framing::cstr(body);
                let (text, end) = framing::cstr(rest.unwrap_or(&[]));
                let stmt = Arc::new(Stmt::new(text, m.truncated && end.is_none()));
                bounded_insert(&mut self.named.statements, name, stmt, st);
            }
            b'B' => {
                let (portal, rest) = framing::cstr(body);
                let (name, _) = framing::cstr(rest.unwrap_or(&[]));
                match self.named.statements.get(name).cloned() {
                    Some(stmt) => bounded_insert(&mut self.named.portals, portal, stmt, st),
                    None => {
                        self.named.portals.remove(portal);
                    }
                }
            }
            b'E' => {
                let (portal, _) = framing::cstr(body);
                let stmt = self
                    .named
                    .portals
                    .get(portal)
                    .cloned()
                    .map_or(StmtRef::Unknown, StmtRef::Shared);
                let op = self.new_op(false, stmt, m, out);
                self.push(Item::Op(op), out, st);
            }
            b'C' => {
                let (name, _) = framing::cstr(body.get(1..).unwrap_or(&[]));
                match body.first() {
                    Some(b'S') => self.named.statements.remove(name),
                    Some(b'P') => self.named.portals.remove(name),
                    _ => None,
                };
            }
            b'S' => self.push(Item::Sync, out, st),
            // Flush, Describe, CopyData/Done/Fail, Terminate, passwords, function calls.
            _ => {}
        }
    }

    /// StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
    fn on_startup(&mut self, r: &mut Reader, body: &[u8], st: &mut ParseStats) {
        let code = framing::be32(body).unwrap_or(0);
        match code {
            framing::SSL_REQUEST | framing::GSSENC_REQUEST => {
                self.expect_encryption_reply = true;
                self.at_boundary_back();
            }
            framing::CANCEL_REQUEST => r.untyped = false,
            c if framing::is_v3(c) => {
                r.untyped = false;
                let mut user = None;
                let mut database = None;
                let mut rest = body.get(4..).unwrap_or(&[]);
                loop {
                    let (key, after) = framing::cstr(rest);
                    let Some(after) = after.filter(|_| !key.is_empty()) else {
                        break;
                    };
                    let (value, next) = framing::cstr(after);
                    match key {
                        b"user" => user = Some(value),
                        b"database" => database = Some(value),
                        _ => {}
                    }
                    let Some(next) = next else { break };
                    rest = next;
                }
                self.named.namespace = database
                    .filter(|d| !d.is_empty())
                    .or(user)
                    .filter(|n| n.len() <= MAX_NAMESPACE_BYTES)
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
                    .map(str::to_owned);
                self.at_boundary_back();
            }
            _ => {
                st.parse_errors += 1;
                self.errors.hit();
                r.untyped = false;
                r.lose(true);
            }
        }
    }

    /// The server's next bytes start a message (it answers the startup-phase message just read).
    fn at_boundary_back(&mut self) {
        if matches!(self.readers.responses.state, State::Resync { .. }) {
            self.readers.responses.state = State::Header;
        }
    }

    fn new_op(&mut self, simple: bool, stmt: StmtRef, m: Msg, out: &mut ParserOut) -> Op {
        let seq = self.next_seq;
        self.next_seq += 1;
        out.started.push(Started {
            side: self.side,
            seq,
            tid: m.tid,
            start_ns: m.start_ns,
            traceparent: None,
        });
        Op {
            simple,
            stmt,
            start_ns: m.start_ns,
            tid: m.tid,
            seq,
            status_code: None,
            error: false,
        }
    }

    fn push(&mut self, item: Item, out: &mut ParserOut, st: &mut ParseStats) {
        if self.readers.responses.state == (State::Resync { after_error: false }) && self.ready {
            // The server's replies went past the capture: what awaited them was answered
            // unseen (a client waits for ReadyForQuery before its next query).
            let end = self.readers.responses.last_ts;
            while let Some(item) = self.pending.pop_front() {
                if let Item::Op(op) = item {
                    self.complete(op, end, Trust::END_INFERRED, out);
                }
            }
        }
        if self.pending.len() >= MAX_PENDING
            && matches!(self.pending.pop_front(), Some(Item::Op(_)))
        {
            st.pipeline_overflow += 1;
        }
        self.pending.push_back(item);
    }

    fn on_backend(
        &mut self,
        m: Msg,
        body: &[u8],
        now: u64,
        out: &mut ParserOut,
        st: &mut ParseStats,
    ) {
        match m.ty {
            // CommandComplete, EmptyQueryResponse, PortalSuspended.
            b'C' | b'I' | b's' => match self.pending.front() {
                Some(Item::Op(op)) if !op.simple => {
                    if let Some(Item::Op(op)) = self.pending.pop_front() {
                        self.complete(op, now, Trust::default(), out);
                    }
                }
                Some(Item::Op(_)) => {}
                Some(Item::Sync) | None => st.unmatched_responses += 1,
            },
            b'E' => {
                let code = sqlstate(body);
                match self.pending.front_mut() {
                    Some(Item::Op(op)) if op.simple && !op.error => {
                        op.error = true;
                        op.status_code = code;
                    }
                    Some(Item::Op(op)) if op.simple => {}
                    Some(Item::Op(_)) => {
                        if let Some(Item::Op(mut op)) = self.pending.pop_front() {
                            op.error = true;
                            op.status_code = code;
                            self.complete(op, now, Trust::default(), out);
                        }
                        // The server skips the rest of the group until Sync.
                        while let Some(Item::Op(op)) = self.pending.front() {
                            if op.simple {
                                break;
                            }
                            self.pending.pop_front();
                            st.incomplete += 1;
                        }
                    }
                    // An error of a Parse/Bind/Describe with no Execute after it.
                    Some(Item::Sync) => {}
                    None if self.ready => st.unmatched_responses += 1,
                    // A startup failure (authentication, unknown database).
                    None => {}
                }
            }
            b'Z' => {
                self.ready = true;
                while let Some(item) = self.pending.pop_front() {
                    match item {
                        Item::Sync => break,
                        Item::Op(op) if op.simple => {
                            self.complete(op, now, Trust::default(), out);
                            break;
                        }
                        // An Execute that got no reply before the Sync.
                        Item::Op(_) => st.incomplete += 1,
                    }
                }
            }
            // Authentication, ParameterStatus, BackendKeyData, Notice, Notification, row
            // data, COPY, ParseComplete & co.: no operation starts or ends.
            _ => {}
        }
    }

    fn complete(&mut self, op: Op, end_ns: u64, extra: Trust, out: &mut ParserOut) {
        let mut trust = extra;
        let (operation, query, collection) = match op.stmt {
            StmtRef::Owned(s) => {
                if s.truncated {
                    trust.insert(Trust::HEAD_TRUNCATED);
                }
                (s.operation, s.text, s.collection)
            }
            StmtRef::Shared(s) => {
                if s.truncated {
                    trust.insert(Trust::HEAD_TRUNCATED);
                }
                (s.operation.clone(), s.text.clone(), s.collection.clone())
            }
            StmtRef::Unknown => ("_OTHER".to_owned(), String::new(), None),
        };
        out.done.push(Request {
            protocol: Protocol::Postgres,
            side: self.side,
            start_ns: op.start_ns,
            end_ns: end_ns.max(op.start_ns),
            tid: op.tid,
            seq: op.seq,
            trust,
            detail: Detail::Db(DbInfo {
                system: DbSystem::Postgresql,
                operation,
                query,
                collection,
                namespace: self.named.namespace.clone(),
                status_code: op.status_code,
                error: op.error,
            }),
        });
    }
}

impl ProtocolParser for PostgresParser {
    const PROTOCOL: Protocol = Protocol::Postgres;

    /// Which side a connection's first segment reveals, if it is PostgreSQL client traffic:
    /// a startup-phase message, or (connection seen mid-stream) frontend messages whose
    /// lengths chain exactly through the segment.
    fn detect(seg: &Segment<'_>) -> Detected {
        let side = match seg.direction {
            Direction::Egress => Side::Client,
            Direction::Ingress => Side::Server,
        };
        let d = seg.data;
        match framing::untyped_start(d) {
            Some(true) => return Detected::Side(side),
            None => return Detected::Undecided,
            Some(false) => {}
        }
        let first = d.first().copied().unwrap_or(0);
        if !matches!(first, b'Q' | b'P' | b'B' | b'E' | b'S' | b'D' | b'H' | b'C') {
            return Detected::No;
        }
        match framing::chain(Dir::Front, d) {
            (framing::Chain::Exact, n) if n > 0 => Detected::Side(side),
            // The last message runs past the captured prefix but ends within the syscall.
            (framing::Chain::Open(end), n) if end <= seg.total_len && (n > 0 || first == b'Q') => {
                if d.len() >= 5 {
                    Detected::Side(side)
                } else {
                    Detected::Undecided
                }
            }
            (framing::Chain::Open(_), _) if d.len() < 5 => Detected::Undecided,
            _ => Detected::No,
        }
    }

    fn new(side: Side) -> Self {
        Self {
            side,
            readers: Duplex {
                requests: Reader::new(Dir::Front),
                responses: Reader::new(Dir::Back),
            },
            pending: VecDeque::new(),
            named: Box::default(),
            expect_encryption_reply: false,
            encrypted: false,
            ready: false,
            errors: ErrorStreak::default(),
            next_seq: 0,
        }
    }

    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        if self.gave_up() {
            return;
        }
        let half = Half::of(self.side, seg.direction);
        let placeholder = Reader::new(Dir::from(half));
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

    fn on_close(&mut self, _ts_ns: u64, _out: &mut ParserOut, stats: &mut ParseStats) {
        let ops = self
            .pending
            .iter()
            .filter(|i| matches!(i, Item::Op(_)))
            .count();
        stats.incomplete += ops as u64;
        self.pending.clear();
    }

    fn on_idle(&mut self, _out: &mut ParserOut) {}

    fn on_gap(&mut self, stats: &mut ParseStats) {
        let ops = self
            .pending
            .iter()
            .filter(|i| matches!(i, Item::Op(_)))
            .count();
        stats.incomplete += ops as u64;
        self.pending.clear();
        self.readers.requests.lose(false);
        self.readers.responses.lose(false);
        // Until the server's next ReadyForQuery, a new query does not mean that the server
        // answered what came before it unseen (see `push`): with nothing pending that would
        // only end the Execute of a Parse/Bind/Execute/Sync group at its own Sync.
        self.ready = false;
    }

    fn gave_up(&self) -> bool {
        self.encrypted || self.errors.too_long()
    }
}

/// Remembers `name -> stmt`, at most [`MAX_STATEMENTS`] names.
fn bounded_insert(
    map: &mut HashMap<Vec<u8>, Arc<Stmt>>,
    name: &[u8],
    stmt: Arc<Stmt>,
    st: &mut ParseStats,
) {
    if let Some(slot) = map.get_mut(name) {
        *slot = stmt;
    } else if map.len() >= MAX_STATEMENTS {
        st.pipeline_overflow += 1;
    } else {
        map.insert(name.to_vec(), stmt);
    }
}

/// The SQLSTATE (field `C`) of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, next) = framing::cstr(after);
        if field == b'C' {
            return (value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric))
                .then(|| String::from_utf8_lossy(value).into_owned());
        }
        rest = next?;
    }
    None
}
