//! Incremental RESP2/RESP3 framing of one direction. Bytes are walked as they come: only a
//! short prefix of the current type line and a few small captures (command name, first
//! arguments, error prefix) are kept; bulk payloads are skipped by counting, including bytes
//! past the captured prefix of a syscall. Nothing here allocates after the first message.

/// Deepest nesting of aggregates followed.
const MAX_DEPTH: usize = 32;
/// Bytes of a type line kept (type byte, then content).
const LINE_CAP: usize = 64;
/// Longest type line accepted (simple strings and errors can be long, but not this long).
const MAX_LINE: u64 = 64 * 1024;
/// Largest bulk length and aggregate count accepted (Redis strings are at most 512 MiB by
/// default; anything this large is garbage).
const MAX_LEN: i64 = 1 << 32;
/// Bytes kept of a captured value.
pub(super) const CAPTURE: usize = 32;

/// Which messages a reader expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Arrays of bulk strings.
    Command,
    /// Any RESP2/RESP3 value.
    Reply,
}

/// The first bytes of a short value.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Small {
    buf: [u8; CAPTURE],
    len: u8,
    /// Bytes of the value seen in all.
    total: u64,
    /// Bytes of the value were not captured.
    broken: bool,
}

impl Small {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len as usize) {
                *slot = b;
                self.len += 1;
            }
        }
        self.total = self.total.saturating_add(bytes.len() as u64);
    }

    /// The captured bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len as usize).unwrap_or(&[])
    }

    /// The whole value, when it was captured whole.
    pub(super) fn whole(&self) -> Option<&[u8]> {
        (!self.broken && self.total == u64::from(self.len)).then(|| self.bytes())
    }
}

/// What one top-level message said, as far as the parser cares.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Msg {
    /// Type byte of the top-level value (attributes before it excluded).
    pub top: u8,
    /// Element count of a top-level aggregate (maps: keys and values).
    pub elems: u64,
    /// A top-level simple/bulk value, or the first element of a top-level aggregate.
    pub word0: Small,
    /// The second element of a top-level aggregate.
    pub arg1: Small,
    /// The third element of a top-level aggregate, when an integer.
    pub int2: Option<i64>,
    /// Segment where the message's first byte was.
    pub ts: u64,
    pub tid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Reading a type line (or between messages).
    Line,
    /// Skipping a bulk payload and its CRLF: bytes left.
    Bulk(u64),
    /// Framing lost (`after_error` false) or garbage seen (true): the parser decides where
    /// to pick up again.
    Resync { after_error: bool },
}

/// Outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Need more bytes.
    More,
    /// A top-level message is complete: see [`Reader::msg`].
    Done,
    /// Bytes were not captured where a type line was: framing is lost.
    Lost,
    /// Not RESP.
    Invalid,
}

#[derive(Debug, Clone, Copy)]
struct Agg {
    kind: u8,
    total: u64,
    left: u64,
}

/// Where the value being read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    Top,
    Elem(u8),
}

#[derive(Debug)]
pub(super) struct Reader {
    role: Role,
    pub state: State,
    line: [u8; LINE_CAP],
    line_len: usize,
    line_total: u64,
    last: u8,
    stack: Vec<Agg>,
    slot: Slot,
    pub msg: Msg,
    in_msg: bool,
}

impl Reader {
    pub(super) fn new(role: Role) -> Self {
        Self {
            role,
            state: State::Line,
            line: [0; LINE_CAP],
            line_len: 0,
            line_total: 0,
            last: 0,
            stack: Vec::new(),
            slot: Slot::None,
            msg: Msg::default(),
            in_msg: false,
        }
    }

    /// Drops the message in progress and moves to `state`.
    pub(super) fn reset(&mut self, state: State) {
        self.state = state;
        self.stack.clear();
        self.line_len = 0;
        self.line_total = 0;
        self.in_msg = false;
        self.slot = Slot::None;
    }

    /// Walks at most one token. `rest` is the captured part of what is left of the segment,
    /// `hidden` how many bytes follow it uncaptured. Returns the bytes consumed.
    pub(super) fn step(&mut self, rest: &[u8], hidden: u64, ts: u64, tid: u32) -> (u64, Step) {
        match self.state {
            State::Resync { .. } => (0, Step::More),
            State::Bulk(left) => self.bulk(left, rest, hidden),
            State::Line => self.line(rest, hidden, ts, tid),
        }
    }

    fn capture_target(&mut self) -> Option<&mut Small> {
        match self.slot {
            Slot::Top | Slot::Elem(0) => Some(&mut self.msg.word0),
            Slot::Elem(1) => Some(&mut self.msg.arg1),
            _ => None,
        }
    }

    fn bulk(&mut self, left: u64, rest: &[u8], hidden: u64) -> (u64, Step) {
        let visible = rest.len() as u64;
        let take = left.min(visible.saturating_add(hidden));
        let payload = left.saturating_sub(2).min(take);
        let seen = payload.min(visible) as usize;
        if let Some(dst) = self.capture_target() {
            dst.push(rest.get(..seen).unwrap_or(&[]));
            if payload > seen as u64 {
                dst.broken = true;
            }
        }
        let left = left - take;
        if left > 0 {
            self.state = State::Bulk(left);
            return (take, Step::More);
        }
        self.state = State::Line;
        (take, self.value_done())
    }

    fn type_ok(&self, t: u8) -> bool {
        match self.role {
            Role::Command => match self.stack.len() {
                0 => t == b'*',
                _ => t == b'$',
            },
            Role::Reply => b"+-:$*_#,(!=%~>|".contains(&t),
        }
    }

    fn line(&mut self, rest: &[u8], hidden: u64, ts: u64, tid: u32) -> (u64, Step) {
        let Some(&first) = rest.first() else {
            return (0, if hidden > 0 { Step::Lost } else { Step::More });
        };
        if self.line_total == 0 {
            if !self.type_ok(first) {
                return (0, Step::Invalid);
            }
            if self.stack.is_empty() && !self.in_msg {
                self.in_msg = true;
                self.msg = Msg {
                    ts,
                    tid,
                    ..Msg::default()
                };
            }
        }
        let (chunk, used, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(j) => (rest.get(..j).unwrap_or(&[]), j + 1, true),
            None => (rest, rest.len(), false),
        };
        for &b in chunk {
            if let Some(slot) = self.line.get_mut(self.line_len) {
                *slot = b;
                self.line_len += 1;
            }
            self.last = b;
        }
        self.line_total = self.line_total.saturating_add(chunk.len() as u64);
        if self.line_total > MAX_LINE {
            return (used as u64, Step::Invalid);
        }
        if !complete {
            return (
                used as u64,
                if hidden > 0 { Step::Lost } else { Step::More },
            );
        }
        if self.line_total < 2 || self.last != b'\r' {
            return (used as u64, Step::Invalid);
        }
        let step = self.end_line();
        self.line_len = 0;
        self.line_total = 0;
        (used as u64, step)
    }

    fn new_slot(&self) -> Slot {
        match self.stack.as_slice() {
            [] => Slot::Top,
            [root] if root.kind != b'|' => {
                Slot::Elem(root.total.saturating_sub(root.left).min(255) as u8)
            }
            _ => Slot::None,
        }
    }

    /// Interprets a complete type line.
    fn end_line(&mut self) -> Step {
        let line = self.line;
        let t = line[0];
        // Content: after the type byte, without the CR (which is buffered only if it fit).
        let end = (self.line_total.saturating_sub(1) as usize).min(self.line_len);
        let content = line.get(1..end).unwrap_or(&[]);
        let slot = self.new_slot();
        self.slot = slot;
        let command = self.role == Role::Command;
        if slot == Slot::Top && t != b'|' {
            self.msg.top = t;
        }
        match t {
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let Some(n) = parse_int(content) else {
                    return Step::Invalid;
                };
                if n == -1 && t == b'*' && !command {
                    return self.value_done();
                }
                if !(0..=MAX_LEN).contains(&n) {
                    return Step::Invalid;
                }
                let n = n as u64;
                let count = if matches!(t, b'%' | b'|') { n * 2 } else { n };
                if slot == Slot::Top {
                    self.msg.elems = count;
                }
                if count == 0 {
                    return if t == b'|' {
                        Step::More
                    } else {
                        self.value_done()
                    };
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Step::Invalid;
                }
                self.stack.push(Agg {
                    kind: t,
                    total: count,
                    left: count,
                });
                Step::More
            }
            b'$' | b'!' | b'=' => {
                let Some(n) = parse_int(content) else {
                    return Step::Invalid;
                };
                if n == -1 && t == b'$' && !command {
                    return self.value_done();
                }
                if !(0..=MAX_LEN).contains(&n) {
                    return Step::Invalid;
                }
                self.state = State::Bulk(n as u64 + 2);
                Step::More
            }
            b'+' | b'-' => {
                let cut = end < self.line_total.saturating_sub(1) as usize;
                if let Some(dst) = self.capture_target() {
                    dst.push(content);
                    dst.broken |= cut;
                }
                self.value_done()
            }
            b':' | b'(' => match parse_int(content) {
                Some(v) => {
                    if slot == Slot::Elem(2) {
                        self.msg.int2 = Some(v);
                    }
                    self.value_done()
                }
                // Big numbers may exceed i64: digits are enough.
                None if t == b'(' && is_bignum(content) => self.value_done(),
                None => Step::Invalid,
            },
            b',' if !content.is_empty() => self.value_done(),
            b'#' if content == b"t" || content == b"f" => self.value_done(),
            b'_' if content.is_empty() => self.value_done(),
            _ => Step::Invalid,
        }
    }

    /// A value ended: counts it in its aggregate, and reports when the message is complete.
    fn value_done(&mut self) -> Step {
        self.slot = Slot::None;
        loop {
            let Some(agg) = self.stack.last_mut() else {
                self.in_msg = false;
                return Step::Done;
            };
            agg.left = agg.left.saturating_sub(1);
            if agg.left > 0 {
                return Step::More;
            }
            let kind = agg.kind;
            self.stack.pop();
            if kind == b'|' {
                // An attribute is not an element of what contains it, nor a reply.
                return Step::More;
            }
        }
    }
}

/// A RESP integer: optional `-`, 1 to 18 digits.
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

fn is_bignum(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// Does `d` start with a RESP command (`*<n>\r\n$<len>\r\n<name>\r\n`)? `None`: a prefix
/// too short to tell.
pub(super) fn command_start(d: &[u8]) -> Option<bool> {
    let mut i = 0;
    for (prefix, min, max) in [(b'*', 1, MAX_LEN), (b'$', 1, 32)] {
        match d.get(i) {
            None => return None,
            Some(&b) if b == prefix => {}
            Some(_) => return Some(false),
        }
        let start = i + 1;
        i = start;
        while d.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i - start > 10 {
            return Some(false);
        }
        if i == start {
            return if d.get(i).is_none() {
                None
            } else {
                Some(false)
            };
        }
        match (d.get(i), d.get(i + 1)) {
            (None, _) | (Some(b'\r'), None) => return None,
            (Some(b'\r'), Some(b'\n')) => {}
            _ => return Some(false),
        }
        let n = parse_int(d.get(start..i).unwrap_or(&[]))?;
        if n < min || n > max {
            return Some(false);
        }
        i += 2;
        if prefix == b'$' {
            let len = n as usize;
            for k in 0..len {
                match d.get(i + k) {
                    None => return None,
                    Some(&b) if name_byte(b, k == 0) => {}
                    Some(_) => return Some(false),
                }
            }
            return match (d.get(i + len), d.get(i + len + 1)) {
                (Some(b'\r'), Some(b'\n')) => Some(true),
                (Some(b'\r'), None) | (None, _) => None,
                _ => Some(false),
            };
        }
    }
    Some(false)
}

/// Can `b` be part of a command name (letters; `_ - .` after the first)?
pub(super) fn name_byte(b: u8, first: bool) -> bool {
    b.is_ascii_alphabetic() || (!first && matches!(b, b'_' | b'-' | b'.'))
}
