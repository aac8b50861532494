//! HTTP/2 framing of one direction (RFC 9113 §4): the connection preface, 9-byte frame
//! headers, and payloads. Only the payloads whose contents matter (header blocks, SETTINGS,
//! RST_STREAM, GOAWAY) are buffered, up to a bound; everything else (DATA above all) is
//! skipped by its length, including bytes past the captured prefix of a syscall, so a large
//! body costs nothing and never breaks the framing.
use crate::protocols::Segment;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// Largest payload buffered: the default (and most common) SETTINGS_MAX_FRAME_SIZE. A header
/// block frame larger than this is treated as lost (counted), never buffered whole.
pub const MAX_BUFFERED_PAYLOAD: u32 = 16 * 1024;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier, the reserved bit cleared.
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *b;
        Self {
            len: u32::from_be_bytes([0, l0, l1, l2]),
            kind,
            flags,
            stream: u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]),
        }
    }

    /// Whether the header breaks a rule that makes the connection unusable (RFC 9113 §6:
    /// each of these is a connection error the peer would close on): the frame is a
    /// protocol error, or the bytes are not HTTP/2 at all.
    pub fn is_connection_error(&self) -> bool {
        use kind::*;
        match self.kind {
            DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION => {
                self.stream == 0
            }
            SETTINGS => {
                self.stream != 0
                    || !self.len.is_multiple_of(6)
                    || (self.flags & flag::ACK != 0 && self.len != 0)
            }
            PING => self.stream != 0 || self.len != 8,
            GOAWAY => self.stream != 0 || self.len < 8,
            WINDOW_UPDATE => self.len != 4,
            _ => false,
        }
    }

    /// Is the payload worth buffering (its contents are read)?
    fn wanted(&self) -> bool {
        use kind::*;
        matches!(
            self.kind,
            HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS | RST_STREAM | GOAWAY
        )
    }
}

/// What is known of a frame's payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// All of it (a wanted frame within the buffer bound).
    Complete(&'a [u8]),
    /// Skipped by length: its contents are not needed.
    Skipped,
    /// Wanted, but some of its bytes were past the capture or it was longer than the bound.
    Lost,
}

/// One frame, handed over once its last byte went by.
#[derive(Debug)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: Payload<'a>,
    /// When the segment holding its first byte returned, and its thread.
    pub start_ns: u64,
    pub tid: u32,
    /// When the segment holding its last byte returned.
    pub end_ns: u64,
}

/// What the reader reports besides frames.
#[derive(Debug)]
pub enum Event<'a> {
    Frame(Frame<'a>),
    /// A frame header was not captured: the framing of this direction is lost until a
    /// segment starts with frames again; whatever went by in between is unknown.
    FramingLost,
    /// Not HTTP/2 (a wrong preface, a first frame other than SETTINGS, or a frame header that
    /// is a connection error): the direction stops.
    Garbage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of the client preface matched so far (the requests direction starts here).
    Preface(usize),
    /// Reading a frame header (`hdr_len` bytes of it in `hdr`).
    Header,
    /// Inside the payload of `header`, `left` bytes to go; `keep`: buffered into `buf`.
    Payload {
        header: FrameHeader,
        left: u32,
        keep: bool,
        lost: bool,
    },
    /// Framing lost: wait for a segment that starts with plausible frames.
    Resync,
    /// Garbage seen: nothing more is read.
    Broken,
}

/// The frame reader of one direction.
#[derive(Debug)]
pub struct FrameReader {
    state: State,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    buf: Vec<u8>,
    /// No frame read yet: the first must be SETTINGS (RFC 9113 §3.4).
    first: bool,
    start_ns: u64,
    tid: u32,
}

impl FrameReader {
    /// A reader whose direction starts with the client preface (`preface`) or with frames.
    pub fn new(preface: bool) -> Self {
        Self {
            state: if preface {
                State::Preface(0)
            } else {
                State::Header
            },
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            buf: Vec::new(),
            first: true,
            start_ns: 0,
            tid: 0,
        }
    }

    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Records were lost: what follows is at an unknown place in the stream.
    pub fn lose_framing(&mut self) {
        if self.state != State::Broken {
            // Mid-stream now: the rule that the first frame is SETTINGS no longer applies.
            self.first = false;
            self.state = State::Resync;
            self.hdr_len = 0;
            self.buf.clear();
        }
    }

    /// Walks one segment, handing every event to `sink`.
    pub fn feed(&mut self, seg: &Segment<'_>, mut sink: impl FnMut(Event<'_>)) {
        if self.state == State::Resync {
            if !plausible_frames(seg.data) {
                return;
            }
            self.state = State::Header;
            self.hdr_len = 0;
        }
        let total = seg.total_len.max(seg.data.len() as u64);
        let mut pos: u64 = 0;
        while pos < total {
            let rest: &[u8] = seg.data.get(pos as usize..).unwrap_or(&[]);
            match self.state {
                State::Broken | State::Resync => return,
                State::Preface(seen) => {
                    let want = PREFACE.get(seen..).unwrap_or(&[]);
                    let n = want.len().min(rest.len());
                    if rest.is_empty() || want.get(..n) != rest.get(..n) {
                        // Not captured, or not the preface: either way not followable.
                        self.state = State::Broken;
                        sink(Event::Garbage);
                        return;
                    }
                    pos += n as u64;
                    self.state = if seen + n == PREFACE.len() {
                        State::Header
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Header => {
                    if rest.is_empty() {
                        self.lose_framing();
                        sink(Event::FramingLost);
                        return;
                    }
                    if self.hdr_len == 0 {
                        self.start_ns = seg.ts_ns;
                        self.tid = seg.tid;
                    }
                    let n = (HEADER_LEN - self.hdr_len).min(rest.len());
                    if let (Some(dst), Some(src)) = (
                        self.hdr.get_mut(self.hdr_len..self.hdr_len + n),
                        rest.get(..n),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    self.hdr_len += n;
                    pos += n as u64;
                    if self.hdr_len < HEADER_LEN {
                        continue;
                    }
                    self.hdr_len = 0;
                    let header = FrameHeader::parse(&self.hdr);
                    let first = std::mem::replace(&mut self.first, false);
                    if header.is_connection_error() || (first && header.kind != kind::SETTINGS) {
                        self.state = State::Broken;
                        sink(Event::Garbage);
                        return;
                    }
                    let keep = header.wanted() && header.len <= MAX_BUFFERED_PAYLOAD;
                    let lost = header.wanted() && !keep;
                    self.buf.clear();
                    self.state = State::Payload {
                        header,
                        left: header.len,
                        keep,
                        lost,
                    };
                    if header.len == 0 {
                        self.finish(header, keep, lost, seg.ts_ns, &mut sink);
                    }
                }
                State::Payload {
                    header,
                    left,
                    keep,
                    mut lost,
                } => {
                    let n = u64::from(left).min(total - pos);
                    if keep && !lost {
                        match rest.get(..n as usize) {
                            Some(bytes) => self.buf.extend_from_slice(bytes),
                            None => {
                                lost = true;
                                self.buf.clear();
                            }
                        }
                    }
                    pos += n;
                    let left = left - n as u32;
                    self.state = State::Payload {
                        header,
                        left,
                        keep,
                        lost,
                    };
                    if left == 0 {
                        self.finish(header, keep, lost, seg.ts_ns, &mut sink);
                    }
                }
            }
        }
    }

    /// The payload of `header` is over: hand the frame on, read the next header.
    fn finish(
        &mut self,
        header: FrameHeader,
        keep: bool,
        lost: bool,
        end_ns: u64,
        sink: &mut impl FnMut(Event<'_>),
    ) {
        self.state = State::Header;
        let payload = if lost {
            Payload::Lost
        } else if keep {
            Payload::Complete(&self.buf)
        } else {
            Payload::Skipped
        };
        sink(Event::Frame(Frame {
            header,
            payload,
            start_ns: self.start_ns,
            tid: self.tid,
            end_ns,
        }));
    }
}

/// Does `data` start with a server's first frame: SETTINGS (not an ACK) on stream 0, of at
/// most a few settings, followed by frames as far as the bytes go?
pub fn server_settings_first(data: &[u8]) -> bool {
    /// RFC 9113 defines 6 settings (with extensions, a few more): more is not a real peer.
    const MAX_SETTINGS: u32 = 16;
    let Some(&[l0, l1, l2, kind, flags, s0, s1, s2, s3]) = data.get(..HEADER_LEN) else {
        return false;
    };
    let len = u32::from_be_bytes([0, l0, l1, l2]);
    kind == kind::SETTINGS
        && flags == 0
        && [s0, s1, s2, s3] == [0; 4]
        && len.is_multiple_of(6)
        && len <= 6 * MAX_SETTINGS
        && plausible_frames(data)
}

/// Does `data` start with frames, as far as it goes? Used to pick the framing up again after
/// it was lost: a segment usually starts at a frame boundary (one write, one or more whole
/// frames), and frame headers that chain within the captured bytes, each of a known type and
/// valid for it, are unlikely by chance. At least one whole header is required.
pub fn plausible_frames(data: &[u8]) -> bool {
    let mut pos = 0usize;
    let mut headers = 0;
    while let Some(h) = data.get(pos..pos + HEADER_LEN) {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(h);
        let header = FrameHeader::parse(&b);
        if header.kind > kind::CONTINUATION
            || header.is_connection_error()
            || b[5] & 0x80 != 0
            || header.len > 1 << 20
        {
            return false;
        }
        headers += 1;
        pos += HEADER_LEN + header.len as usize;
    }
    headers > 0
}

/// Which head a header block is, by its first field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Request,
    Response,
}

/// What the first bytes seen of a connection say about it being the middle of an HTTP/2
/// stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidStream {
    /// Whole frames, one of them this head.
    Head(Head),
    /// Whole frames, none a head that tells (WINDOW_UPDATE, PING, DATA...): the next
    /// segments may.
    Frames,
    /// Not frames.
    No,
}

/// Does `data`, the first bytes seen of a connection, look like the middle of an HTTP/2
/// stream: whole frames as far as it goes ([`plausible_frames`]), one of them a HEADERS
/// frame whose block starts with a pseudo-header named by the static table (`:method`,
/// `:path`, `:scheme` or `:authority` for a request; `:status` for a response)? Pseudo-
/// headers come first in a block (RFC 9113 §8.3), and encoders name them by the static
/// table.
pub fn mid_stream(data: &[u8]) -> MidStream {
    if !plausible_frames(data) {
        return MidStream::No;
    }
    mid_stream_head(data).map_or(MidStream::Frames, MidStream::Head)
}

/// The head of the first HEADERS frame of `data` (whole frames), if its first field tells.
fn mid_stream_head(data: &[u8]) -> Option<Head> {
    let mut pos = 0usize;
    while let Some(h) = data.get(pos..pos + HEADER_LEN) {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(h);
        let header = FrameHeader::parse(&b);
        let start = pos + HEADER_LEN;
        pos = start + header.len as usize;
        if header.kind != kind::HEADERS || header.stream == 0 {
            continue;
        }
        // The head's first bytes are enough: the frame may run past the capture.
        let payload = data.get(start..pos.min(data.len()))?;
        let (block, _) = fragment(&header, payload)?;
        return first_field_head(block);
    }
    None
}

/// The head a block is by its first field (after any table size updates).
fn first_field_head(block: &[u8]) -> Option<Head> {
    let mut rest = block;
    loop {
        let first = *rest.first()?;
        // A table size update (001xxxxx): skip it (its integer may go on in more bytes).
        if first & 0xe0 == 0x20 {
            let used = if first & 0x1f == 0x1f {
                1 + rest.get(1..)?.iter().position(|b| b & 0x80 == 0)? + 1
            } else {
                1
            };
            rest = rest.get(used..)?;
            continue;
        }
        // The static index of its name: an indexed field (1xxxxxxx), a literal with
        // incremental indexing (01xxxxxx), or without indexing / never indexed (000xxxxx).
        let index = match first {
            b if b & 0x80 != 0 => b & 0x7f,
            b if b & 0x40 != 0 => b & 0x3f,
            b => b & 0x0f,
        };
        return match index {
            1..=7 => Some(Head::Request),
            8..=14 => Some(Head::Response),
            _ => None,
        };
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: padding (PADDED), the
/// priority fields (HEADERS with PRIORITY) and the promised stream id (PUSH_PROMISE) taken
/// off. None when the padding is longer than the payload (a connection error).
pub fn fragment<'a>(header: &FrameHeader, payload: &'a [u8]) -> Option<(&'a [u8], Option<u32>)> {
    let mut p = payload;
    let mut pad = 0usize;
    if header.flags & flag::PADDED != 0 {
        let (&n, tail) = p.split_first()?;
        pad = usize::from(n);
        p = tail;
    }
    let mut promised = None;
    if header.kind == kind::HEADERS && header.flags & flag::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if header.kind == kind::PUSH_PROMISE {
        let id = p.get(..4)?;
        promised = Some(u32::from_be_bytes([id[0] & 0x7f, id[1], id[2], id[3]]));
        p = p.get(4..)?;
    }
    let end = p.len().checked_sub(pad)?;
    Some((p.get(..end)?, promised))
}
