//! Message framing of one direction of a PostgreSQL v3 connection: type byte + int32 length
//! (the length counts itself), or the untyped startup-phase messages (int32 length + int32
//! code). Bodies are skipped by counting; only the bodies the parser reads (SQL text, names,
//! error fields) are kept, bounded.
use super::super::Segment;

/// Most bytes of one message body kept (SQL text of a Query or Parse).
pub(super) const MAX_KEEP: usize = 16 * 1024;
/// Bytes of a Bind/Execute/Close/Describe kept: enough for the portal and statement names.
const NAMES_KEEP: usize = 512;
/// Bytes of an ErrorResponse kept: the SQLSTATE field comes early.
const ERROR_KEEP: usize = 2048;
/// PostgreSQL refuses startup packets longer than this.
const MAX_STARTUP_LEN: u32 = 10_000;
/// PostgreSQL's own limit for one message (1 GiB).
const MAX_MSG_LEN: u32 = 0x4000_0000;

pub(super) const SSL_REQUEST: u32 = 80_877_103;
pub(super) const GSSENC_REQUEST: u32 = 80_877_104;
pub(super) const CANCEL_REQUEST: u32 = 80_877_102;

/// Which way the messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Client to server.
    Front,
    /// Server to client.
    Back,
}

pub(super) fn be32(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

pub(super) fn be16(b: &[u8]) -> Option<u16> {
    let a: [u8; 2] = b.get(..2)?.try_into().ok()?;
    Some(u16::from_be_bytes(a))
}

/// Is `code` a protocol version 3.x startup?
pub(super) fn is_v3(code: u32) -> bool {
    code >> 16 == 3 && code & 0xffff <= 2
}

/// Can `ty` start a message in `dir` at all?
pub(super) fn known_type(dir: Dir, ty: u8) -> bool {
    valid_typed(dir, ty, 4) || valid_typed(dir, ty, 64)
}

/// Is `len` (the int32 length, counting itself) possible for a message of type `ty`?
pub(super) fn valid_typed(dir: Dir, ty: u8, len: u32) -> bool {
    if !(4..=MAX_MSG_LEN).contains(&len) {
        return false;
    }
    match dir {
        Dir::Front => match ty {
            b'S' | b'H' | b'c' | b'X' => len == 4,
            b'Q' | b'f' => len >= 5,
            b'P' => len >= 8,
            b'B' => len >= 12,
            b'E' => len >= 9,
            b'D' | b'C' => len >= 6,
            b'd' | b'p' | b'F' => true,
            _ => false,
        },
        Dir::Back => match ty {
            b'1' | b'2' | b'3' | b'n' | b'c' | b's' | b'I' => len == 4,
            b'Z' => len == 5,
            b'K' => (12..=264).contains(&len),
            b'R' | b'V' => len >= 8,
            b'S' | b'T' | b'D' | b't' => len >= 6,
            b'C' | b'E' | b'N' => len >= 5,
            b'A' => len >= 10,
            b'G' | b'H' | b'W' => len >= 7,
            b'v' => len >= 12,
            b'd' => true,
            _ => false,
        },
    }
}

/// How many body bytes of a message are worth keeping.
fn keep_limit(dir: Dir, ty: u8) -> usize {
    match (dir, ty) {
        (Dir::Front, 0 | b'Q' | b'P') => MAX_KEEP,
        (Dir::Front, b'B' | b'E' | b'C') => NAMES_KEEP,
        (Dir::Back, b'E') => ERROR_KEEP,
        _ => 0,
    }
}

/// Is `text` (a captured SQL prefix) free of control bytes other than whitespace?
fn printable(text: &[u8]) -> bool {
    !text.is_empty()
        && text
            .iter()
            .all(|&b| b >= 0x20 || matches!(b, b'\t' | b'\r' | b'\n'))
}

/// What the untyped start of a client stream says: `Some(true)` a startup, SSL, GSSENC or
/// cancel request; `Some(false)` not one; `None` too short to tell but possible.
pub(super) fn untyped_start(d: &[u8]) -> Option<bool> {
    let (Some(len), Some(code)) = (be32(d), d.get(4..).and_then(be32)) else {
        // A short prefix: the length's high bytes are zero, and what there is must fit.
        let zeros = d.iter().take(2).all(|&b| b == 0);
        return if d.is_empty()
            || (zeros && be32(d).is_none_or(|l| (8..=MAX_STARTUP_LEN).contains(&l)))
        {
            None
        } else {
            Some(false)
        };
    };
    Some(match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => (16..=264).contains(&len),
        c if is_v3(c) => {
            (9..=MAX_STARTUP_LEN).contains(&len)
                && d.get(8).is_none_or(|b| b.is_ascii_alphabetic() || *b == 0)
                && d.get(len as usize - 1).is_none_or(|&b| b == 0)
        }
        _ => false,
    })
}

/// How a chain of typed messages at the start of `data` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chain {
    /// Valid lengths and types, ending exactly with the captured bytes.
    Exact,
    /// Valid up to the captured end, which falls inside a message (how far past it the last
    /// message runs: its end, relative to the start of `data`).
    Open(u64),
    /// Not messages of this direction.
    Invalid,
}

/// Walks the typed messages at the start of `data`; `(chain, messages complete)`.
pub(super) fn chain(dir: Dir, data: &[u8]) -> (Chain, usize) {
    let mut pos = 0usize;
    let mut complete = 0usize;
    loop {
        let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) else {
            return (Chain::Exact, complete);
        };
        let ty = rest.first().copied().unwrap_or(0);
        let Some(len) = rest.get(1..).and_then(be32) else {
            let ok = known_type(dir, ty)
                && (rest.len() < 2 || rest.get(1) == Some(&0))
                && (rest.len() < 3 || rest.get(2).is_some_and(|&b| b < 0x40));
            return if ok {
                (Chain::Open(pos as u64 + 5), complete)
            } else {
                (Chain::Invalid, complete)
            };
        };
        if !valid_typed(dir, ty, len) {
            return (Chain::Invalid, complete);
        }
        let end = pos as u64 + 1 + u64::from(len);
        let body = rest
            .get(5..(len as usize + 1).min(rest.len()))
            .unwrap_or(&[]);
        if ty == b'Q' && dir == Dir::Front {
            let text = body.strip_suffix(b"\0").unwrap_or(body);
            let terminated = body.len() as u64 + 4 == u64::from(len);
            if !printable(text) || (terminated && !body.ends_with(b"\0")) {
                return (Chain::Invalid, complete);
            }
        }
        if end > data.len() as u64 {
            return (Chain::Open(end), complete);
        }
        complete += 1;
        pos = end as usize;
    }
}

/// Could a segment that starts with `data` begin at a message boundary? Used to resync and on
/// the first segment seen: a chain of at least one complete message, or one message whose
/// captured start is convincing on its own.
pub(super) fn plausible(dir: Dir, data: &[u8]) -> bool {
    match chain(dir, data) {
        (Chain::Exact, n) => n > 0,
        (Chain::Open(_), n) if n > 0 => true,
        (Chain::Open(_), _) => lone_start(dir, data),
        (Chain::Invalid, _) => false,
    }
}

/// A single message that runs past the captured bytes: SQL text, or a data row whose column
/// count and first column length make sense.
fn lone_start(dir: Dir, data: &[u8]) -> bool {
    let ty = data.first().copied();
    let body = data.get(5..).unwrap_or(&[]);
    match (dir, ty) {
        (Dir::Front, Some(b'Q')) => body.len() >= 8,
        (Dir::Back, Some(b'D')) => {
            let cols = be16(body).unwrap_or(0);
            let first = body.get(2..).and_then(be32);
            (1..=1664).contains(&cols) && first.is_some_and(|l| l == u32::MAX || l < MAX_MSG_LEN)
        }
        _ => false,
    }
}

/// Reading state of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// At a message boundary (possibly with part of a header in `hdr`).
    Header,
    /// Inside a message body.
    Body,
    /// Bytes were lost (`after_error` false) or garbled (true): skip until a segment starts
    /// with a plausible message.
    Resync { after_error: bool },
}

/// A complete message; its kept body is in [`Reader::buf`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Msg {
    /// Type byte; 0 for an untyped startup-phase message.
    pub ty: u8,
    /// Segment where the message began.
    pub start_ns: u64,
    pub tid: u32,
    /// Part of the body was not kept (past the capture or past the bound).
    pub truncated: bool,
}

/// What [`Reader::next`] found.
#[derive(Debug)]
pub(super) enum Step {
    Message(Msg),
    /// The segment is used up (or skipped).
    End,
    /// A segment was skipped while resyncing after garbage.
    SkippedAfterError,
    /// Not a message header: garbage or lost framing.
    Invalid,
}

#[derive(Debug)]
pub(super) struct Reader {
    pub dir: Dir,
    pub state: State,
    /// The next message is an untyped startup-phase message.
    pub untyped: bool,
    hdr: [u8; 5],
    hdr_len: u8,
    ty: u8,
    remaining: u64,
    limit: u32,
    truncated: bool,
    start_ns: u64,
    tid: u32,
    pub buf: Vec<u8>,
    /// Exit time of the last segment in this direction.
    pub last_ts: u64,
}

impl Reader {
    pub fn new(dir: Dir) -> Self {
        Self {
            dir,
            // Nothing seen yet: the first segment must show where messages start.
            state: State::Resync { after_error: false },
            untyped: false,
            hdr: [0; 5],
            hdr_len: 0,
            ty: 0,
            remaining: 0,
            limit: 0,
            truncated: false,
            start_ns: 0,
            tid: 0,
            buf: Vec::new(),
            last_ts: 0,
        }
    }

    /// At a message boundary, with nothing of the next header read?
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.hdr_len == 0
    }

    /// Framing is lost: skip until a plausible segment start.
    pub fn lose(&mut self, after_error: bool) {
        self.state = State::Resync { after_error };
        self.hdr_len = 0;
        self.buf.clear();
    }

    /// Advances through `seg` from `*pos` (up to `total`, the bytes the syscall moved) to the
    /// next complete message.
    pub fn next(&mut self, seg: &Segment<'_>, pos: &mut u64, total: u64) -> Step {
        let data = seg.data;
        loop {
            match self.state {
                State::Resync { after_error } => {
                    if *pos == 0 && *pos < total {
                        if self.dir == Dir::Front && untyped_start(data) == Some(true) {
                            self.untyped = true;
                            self.state = State::Header;
                            continue;
                        }
                        if plausible(self.dir, data) {
                            self.untyped = false;
                            self.state = State::Header;
                            continue;
                        }
                    }
                    return if after_error && *pos == 0 {
                        Step::SkippedAfterError
                    } else {
                        Step::End
                    };
                }
                State::Header => {
                    if *pos >= total {
                        return Step::End;
                    }
                    let p = usize::try_from(*pos).unwrap_or(usize::MAX);
                    let Some(avail) = data.get(p..).filter(|a| !a.is_empty()) else {
                        // The next header was not captured.
                        self.lose(false);
                        return Step::End;
                    };
                    if self.hdr_len == 0 {
                        self.start_ns = seg.ts_ns;
                        self.tid = seg.tid;
                    }
                    let need: usize = if self.untyped { 4 } else { 5 };
                    let have = usize::from(self.hdr_len);
                    let take = need.saturating_sub(have).min(avail.len());
                    if let (Some(dst), Some(src)) =
                        (self.hdr.get_mut(have..have + take), avail.get(..take))
                    {
                        dst.copy_from_slice(src);
                    }
                    self.hdr_len = (have + take) as u8;
                    *pos += take as u64;
                    if have + take < need {
                        if *pos < total {
                            self.lose(false);
                        }
                        return Step::End;
                    }
                    self.hdr_len = 0;
                    let (ty, len) = if self.untyped {
                        (0, be32(&self.hdr).unwrap_or(0))
                    } else {
                        (self.hdr[0], self.hdr.get(1..).and_then(be32).unwrap_or(0))
                    };
                    let ok = if self.untyped {
                        (8..=MAX_STARTUP_LEN).contains(&len)
                    } else {
                        valid_typed(self.dir, ty, len)
                    };
                    if !ok {
                        return Step::Invalid;
                    }
                    self.ty = ty;
                    self.remaining = u64::from(len) - 4;
                    self.limit = keep_limit(self.dir, ty) as u32;
                    self.truncated = false;
                    self.buf.clear();
                    self.state = State::Body;
                }
                State::Body => {
                    if self.remaining == 0 {
                        self.state = State::Header;
                        return Step::Message(Msg {
                            ty: self.ty,
                            start_ns: self.start_ns,
                            tid: self.tid,
                            truncated: self.truncated,
                        });
                    }
                    if *pos >= total {
                        return Step::End;
                    }
                    let take = self.remaining.min(total - *pos);
                    let p = usize::try_from(*pos).unwrap_or(usize::MAX);
                    let captured = data.get(p..).unwrap_or(&[]);
                    let captured = captured
                        .get(
                            ..usize::try_from(take)
                                .unwrap_or(usize::MAX)
                                .min(captured.len()),
                        )
                        .unwrap_or(&[]);
                    if (captured.len() as u64) < take {
                        self.truncated = true;
                    }
                    if self.limit > 0 {
                        let room = (self.limit as usize).saturating_sub(self.buf.len());
                        if captured.len() > room {
                            self.truncated = true;
                        }
                        self.buf.extend_from_slice(
                            captured.get(..room.min(captured.len())).unwrap_or(&[]),
                        );
                    }
                    *pos += take;
                    self.remaining -= take;
                }
            }
        }
    }
}

/// The NUL-terminated string at the start of `b`, and what follows it (`None` when the NUL
/// was not kept).
pub(super) fn cstr(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (b.get(..i).unwrap_or(&[]), b.get(i + 1..)),
        None => (b, None),
    }
}
