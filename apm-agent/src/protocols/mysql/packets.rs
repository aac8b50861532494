//! MySQL packet framing (3-byte little-endian payload length + 1-byte sequence id), payloads
//! of exactly 0xFFFFFF bytes continued by the next packet, and the small decoders the parser
//! needs (length-encoded integers, OK/EOF status flags, greeting, handshake response).

use super::super::Segment;

/// Largest payload of one physical packet: a payload this long continues in the next one.
pub const MAX_PACKET: u32 = 0xFF_FFFF;

/// Capability flags used here.
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
pub const CLIENT_COMPRESS: u32 = 0x0000_0020;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_SSL: u32 = 0x0000_0800;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
pub const CLIENT_PLUGIN_AUTH_LENENC_DATA: u32 = 0x0020_0000;
pub const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
pub const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;

/// Status flags used here.
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// One logical packet (physical packets of a continued payload joined), as far as its
/// payload was kept: the payload's first bytes are in the reader's `buf`.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Sequence id of its first and last physical packet.
    pub first_seq: u8,
    pub last_seq: u8,
    /// Whole payload length.
    pub len: u64,
    /// Timestamp and thread of the segment that carried its first byte.
    pub start_ts: u64,
    pub start_tid: u32,
}

/// What the reader found next in a segment.
#[derive(Debug)]
pub enum Step {
    /// A complete logical packet; its kept payload prefix is in `Reader::buf`.
    Packet(Meta),
    /// The segment is used up in the middle of a packet (or between packets).
    More,
    /// A packet header fell into bytes that were not captured (or a continuation packet was
    /// out of sequence): framing is lost.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload { remaining: u32 },
    Lost,
}

/// Reassembles packets of one direction across segments, keeping at most `cap` payload
/// bytes of each logical packet and skipping the rest by count.
#[derive(Debug)]
pub struct Reader {
    state: State,
    hdr: [u8; 4],
    hdr_len: usize,
    hdr_ts: u64,
    hdr_tid: u32,
    /// The current physical packet is 0xFFFFFF long: the payload goes on in the next one.
    continues: bool,
    meta: Meta,
    pub buf: Vec<u8>,
    cap: usize,
    /// A continuation packet whose header was not captured is taken to fill the rest of
    /// its segment (commands are written with one syscall).
    assume_tail: bool,
    /// Exit time of the last segment in this direction.
    pub last_ts: u64,
}

impl Reader {
    pub fn new(cap: usize, assume_tail: bool) -> Self {
        Self {
            state: State::Header,
            hdr: [0; 4],
            hdr_len: 0,
            hdr_ts: 0,
            hdr_tid: 0,
            continues: false,
            meta: Meta {
                first_seq: 0,
                last_seq: 0,
                len: 0,
                start_ts: 0,
                start_tid: 0,
            },
            buf: Vec::new(),
            cap,
            assume_tail,
            last_ts: 0,
        }
    }

    /// Start afresh at the next segment (after a resync).
    pub fn reset(&mut self) {
        self.state = State::Header;
        self.hdr_len = 0;
        self.continues = false;
        self.buf.clear();
    }

    pub fn set_lost(&mut self) {
        self.state = State::Lost;
        self.buf.clear();
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Reads on from `*pos` in `seg`.
    pub fn next(&mut self, seg: &Segment<'_>, pos: &mut u64) -> Step {
        let total = seg.total_len.max(seg.data.len() as u64);
        loop {
            match self.state {
                State::Lost => return Step::Lost,
                State::Header => {
                    if *pos >= total {
                        return Step::More;
                    }
                    let rest = usize::try_from(*pos)
                        .ok()
                        .and_then(|p| seg.data.get(p..))
                        .unwrap_or(&[]);
                    if rest.is_empty() {
                        let left = total.saturating_sub(*pos);
                        let tail = self.continues && self.hdr_len == 0 && self.assume_tail;
                        if tail && (4..4 + u64::from(MAX_PACKET)).contains(&left) {
                            *pos = total;
                            self.continues = false;
                            self.meta.last_seq = self.meta.last_seq.wrapping_add(1);
                            self.meta.len = self.meta.len.saturating_add(left - 4);
                            return Step::Packet(self.meta);
                        }
                        self.set_lost();
                        return Step::Lost;
                    }
                    if self.hdr_len == 0 {
                        self.hdr_ts = seg.ts_ns;
                        self.hdr_tid = seg.tid;
                    }
                    let want = 4usize.saturating_sub(self.hdr_len);
                    let take = want.min(rest.len());
                    for (i, b) in rest.iter().take(take).enumerate() {
                        if let Some(slot) = self.hdr.get_mut(self.hdr_len + i) {
                            *slot = *b;
                        }
                    }
                    self.hdr_len += take;
                    *pos += take as u64;
                    if self.hdr_len < 4 {
                        continue;
                    }
                    self.hdr_len = 0;
                    let [a, b, c, seq] = self.hdr;
                    let len = u32::from_le_bytes([a, b, c, 0]);
                    if self.continues {
                        if seq != self.meta.last_seq.wrapping_add(1) {
                            self.set_lost();
                            return Step::Lost;
                        }
                    } else {
                        self.meta = Meta {
                            first_seq: seq,
                            last_seq: seq,
                            len: 0,
                            start_ts: self.hdr_ts,
                            start_tid: self.hdr_tid,
                        };
                        self.buf.clear();
                    }
                    self.meta.last_seq = seq;
                    self.meta.len = self.meta.len.saturating_add(u64::from(len));
                    self.continues = len == MAX_PACKET;
                    self.state = State::Payload { remaining: len };
                }
                State::Payload { remaining } => {
                    let avail = total.saturating_sub(*pos);
                    let n = u64::from(remaining).min(avail);
                    let start = usize::try_from(*pos).unwrap_or(usize::MAX);
                    let end = usize::try_from(pos.saturating_add(n)).unwrap_or(usize::MAX);
                    if let Some(visible) = seg.data.get(start.min(seg.data.len())..) {
                        let visible_n = end.saturating_sub(start).min(visible.len());
                        let room = self.cap.saturating_sub(self.buf.len());
                        if let Some(keep) = visible.get(..visible_n.min(room)) {
                            self.buf.extend_from_slice(keep);
                        }
                    }
                    *pos += n;
                    // n <= remaining, which is a u32.
                    let left = remaining.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                    if left > 0 {
                        self.state = State::Payload { remaining: left };
                        return Step::More;
                    }
                    self.state = State::Header;
                    if !self.continues {
                        return Step::Packet(self.meta);
                    }
                }
            }
        }
    }
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

/// A length-encoded integer at the start of `b`: its value and its size in bytes.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let size = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = b.get(1..1 + size)?;
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(bytes) {
        *d = *s;
    }
    Some((u64::from_le_bytes(v), 1 + size))
}

/// Status flags of an OK packet (`0x00`/`0xFE` header, affected rows, last insert id,
/// status) or an EOF packet (`0xFE`, warnings, status).
pub fn ok_or_eof_status(payload: &[u8], len: u64) -> u16 {
    if payload.first() == Some(&0xfe) && len < 7 {
        return u16_at(payload, 3).unwrap_or(0);
    }
    let rest = payload.get(1..).unwrap_or(&[]);
    let Some((_, a)) = lenenc(rest) else { return 0 };
    let Some((_, b)) = rest.get(a..).and_then(lenenc) else {
        return 0;
    };
    u16_at(rest, a + b).unwrap_or(0)
}

/// ERR packet: the error number.
pub fn err_code(payload: &[u8]) -> Option<u16> {
    u16_at(payload, 1)
}

/// What a server greeting (protocol 10) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    pub mariadb: bool,
    pub caps: u32,
}

pub fn parse_greeting(p: &[u8]) -> Option<Greeting> {
    if p.first() != Some(&10) {
        return None;
    }
    let rest = p.get(1..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let version = rest.get(..nul)?;
    let mariadb = version.windows(7).any(|w| w == b"MariaDB");
    // version NUL, connection id (4), auth data part 1 (8), filler (1), caps lower (2),
    // charset (1), status (2), caps upper (2).
    let at = 1 + nul + 1 + 4 + 8 + 1;
    let lower = u16_at(p, at)?;
    let upper = u16_at(p, at + 5).unwrap_or(0);
    Some(Greeting {
        mariadb,
        caps: u32::from(lower) | (u32::from(upper) << 16),
    })
}

/// What a client's HandshakeResponse41 (or SSLRequest) says. Auth data is skipped, never
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub caps: u32,
    /// An SSLRequest: TLS follows.
    pub ssl: bool,
    pub database: Option<Vec<u8>>,
}

pub fn parse_handshake_response(p: &[u8], len: u64) -> Option<HandshakeResponse> {
    let caps = u32_at(p, 0)?;
    if caps & CLIENT_PROTOCOL_41 == 0 {
        // HandshakeResponse320 (pre-4.1): only the flags are of use.
        let lower = caps & 0xffff;
        return Some(HandshakeResponse {
            caps: lower,
            ssl: lower & CLIENT_SSL != 0 && len <= 5,
            database: None,
        });
    }
    if len == 32 {
        return Some(HandshakeResponse {
            caps,
            ssl: caps & CLIENT_SSL != 0,
            database: None,
        });
    }
    // caps (4), max packet (4), charset (1), filler (23), username NUL-terminated.
    let mut at = 32usize;
    let user_len = p.get(at..)?.iter().position(|&b| b == 0)?;
    at = at.checked_add(user_len)?.checked_add(1)?;
    let auth_len = if caps & CLIENT_PLUGIN_AUTH_LENENC_DATA != 0 {
        let (n, size) = lenenc(p.get(at..)?)?;
        at = at.checked_add(size)?;
        usize::try_from(n).ok()?
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = *p.get(at)?;
        at = at.checked_add(1)?;
        usize::from(n)
    } else {
        p.get(at..)?.iter().position(|&b| b == 0)?.checked_add(1)?
    };
    at = at.checked_add(auth_len)?;
    let database = if caps & CLIENT_CONNECT_WITH_DB != 0 {
        let rest = p.get(at..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        rest.get(..end).map(<[u8]>::to_vec)
    } else {
        None
    };
    Some(HandshakeResponse {
        caps,
        ssl: false,
        database,
    })
}

/// Bytes that look like SQL text (printable ASCII, whitespace, UTF-8 bytes).
pub fn looks_like_text(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| (0x20..0x7f).contains(&c) || matches!(c, b'\t' | b'\n' | b'\r') || c >= 0x80)
}

/// A server greeting at the start of `data`?
pub fn is_greeting(data: &[u8], total_len: u64) -> bool {
    let Some(&[a, b, c, seq]) = data.get(..4) else {
        return false;
    };
    let len = u32::from_le_bytes([a, b, c, 0]);
    if seq != 0 || !(20..=1024).contains(&len) || u64::from(len) + 4 > total_len {
        return false;
    }
    if data.get(4) != Some(&10) {
        return false;
    }
    let Some(rest) = data.get(5..) else {
        return false;
    };
    let Some(nul) = rest.iter().position(|&b| b == 0) else {
        return false;
    };
    let Some(version) = rest.get(..nul) else {
        return false;
    };
    version.first().is_some_and(u8::is_ascii_digit)
        && version.iter().all(|&c| (0x20..0x7f).contains(&c))
}

/// A command packet (seq 0) that fills the segment exactly: COM_QUERY/COM_STMT_PREPARE with
/// text, COM_STMT_EXECUTE with iteration count 1, or COM_PING.
pub fn is_command(data: &[u8], total_len: u64) -> bool {
    let Some(&[a, b, c, seq]) = data.get(..4) else {
        return false;
    };
    let len = u32::from_le_bytes([a, b, c, 0]);
    if seq != 0 || len == 0 || u64::from(len) + 4 != total_len {
        return false;
    }
    let payload = data.get(4..).unwrap_or(&[]);
    match payload.first() {
        Some(0x03 | 0x16) => {
            let mut text = payload.get(1..).unwrap_or(&[]);
            if payload.first() == Some(&0x03) && text.starts_with(&[0, 1]) {
                // Query attributes: no parameters, one parameter set.
                text = text.get(2..).unwrap_or(&[]);
            }
            let text = text.get(..text.len().min(64)).unwrap_or(&[]);
            looks_like_text(text)
        }
        Some(0x17) => len >= 10 && payload.get(6..10) == Some(&[1, 0, 0, 0][..]),
        Some(0x0e) => len == 1,
        _ => false,
    }
}
