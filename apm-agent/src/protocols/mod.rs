//! Protocol parsers: one stateful parser per connection behind one trait, dispatched through
//! an enum (no boxing, no vtables on the hot path). Parsers do no I/O and know nothing about
//! eBPF or tokio: they see [`Segment`]s (what one syscall moved) and emit [`Request`]s.
//!
//! Adding a protocol: its module here (the parser, implementing [`ProtocolParser`] with its
//! `detect`), one line in the registration list (`parsers!` below), its golden byte streams,
//! its fuzz target. What every parser shares about the two directions (readers, the error
//! streak) is in `duplex.rs`.
pub mod duplex;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod stats;

use crate::request::{Protocol, Request, Side, Started};

/// What parsers produce while they work: requests as their heads are parsed (so their spans
/// exist before the calls they make are seen), and completed exchanges. The pipeline empties
/// both after each segment; the vectors keep their capacity.
#[derive(Debug, Default)]
pub struct ParserOut {
    pub started: Vec<Started>,
    pub done: Vec<Request>,
}

/// Direction of a segment from the observed process's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read these bytes.
    Ingress,
    /// The process wrote these bytes.
    Egress,
}

/// What one socket syscall moved.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub direction: Direction,
    /// The captured prefix of the bytes.
    pub data: &'a [u8],
    /// How many bytes the syscall moved in all (`>= data.len()`); bytes past the captured
    /// prefix can still be skipped over by length-delimited framing.
    pub total_len: u64,
    /// Kernel monotonic clock when the syscall returned.
    pub ts_ns: u64,
    pub tid: u32,
}

impl Segment<'_> {
    /// Did the syscall move more bytes than were captured?
    pub fn is_truncated(&self) -> bool {
        self.total_len > self.data.len() as u64
    }
}

/// Counters a parser bumps while it works; the pipeline folds them into the agent's own
/// metrics per protocol.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseStats {
    /// Bytes that do not parse as the protocol where a message was expected.
    pub parse_errors: u64,
    /// Requests that never got a complete response (connection closed or parser gave up).
    pub incomplete: u64,
    /// Responses with no request to match (e.g. the request was sent before the agent ran).
    pub unmatched_responses: u64,
    /// Pipelined requests dropped because too many awaited a response.
    pub pipeline_overflow: u64,
    /// Connections reset because some of their records were lost (counted by the pipeline,
    /// see [`ProtocolParser::on_gap`]).
    pub resyncs: u64,
    /// Completed exchanges handed on (counted by the pipeline).
    pub requests: u64,
    /// ... of which the response end was inferred.
    pub end_inferred: u64,
    /// ... of which a head ran past the captured bytes.
    pub head_truncated: u64,
    /// HTTP/2 header blocks whose headers could not be read: bytes of them past the capture
    /// or lost in a gap, undecodable, or decoded against an HPACK table whose state is no
    /// longer known. Their streams are followed to their end but not reported (a route is
    /// never guessed).
    pub header_blocks_lost: u64,
    /// HTTP/2 header blocks read in part (some entries of an unknown HPACK table), and used.
    pub header_blocks_partial: u64,
    /// HTTP/2 streams not followed because their connection already had the most open
    /// streams a connection may have.
    pub streams_overflow: u64,
    /// HTTP/2 server pushes announced (PUSH_PROMISE): their exchanges are not requests the
    /// client made, so they are counted, not reported.
    pub push_promises: u64,
}

/// What a connection's first segment says about one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// This protocol, and the observed process is this side.
    Side(Side),
    /// This protocol, seen from the middle of its stream (a connection older than the
    /// agent): the parser starts as after lost records ([`ProtocolParser::on_gap`]).
    MidStream(Side),
    /// A prefix too short to tell.
    Undecided,
    No,
}

/// The interface every protocol parser implements.
pub trait ProtocolParser: Sized {
    /// The protocol it follows.
    const PROTOCOL: Protocol;
    /// Whether a connection's first segment is this protocol, and which side the observed
    /// process is.
    fn detect(seg: &Segment<'_>) -> Detected;
    /// A parser for a connection whose observed process is `side`.
    fn new(side: Side) -> Self;
    /// Feeds one segment; completed exchanges are appended to `out`.
    fn on_segment(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats);
    /// The connection closed at `ts_ns`: finish what can be finished, count the rest.
    fn on_close(&mut self, ts_ns: u64, out: &mut ParserOut, stats: &mut ParseStats);
    /// Nothing moved since `idle_since_ns`: finish exchanges whose end can only be inferred.
    fn on_idle(&mut self, out: &mut ParserOut);
    /// Records of this connection were lost before the next segment (the kernel's record
    /// numbers jumped): bytes of unknown length went by unseen, in either direction. Left
    /// alone, a parser would pair the next response with a request whose own response was
    /// lost, or count lost body bytes as the next message's, for as long as the connection
    /// lives. So every exchange in flight is dropped (counted in
    /// [`ParseStats::incomplete`]: its request or its end may be among the lost bytes) and
    /// each direction skips segments until one starts with a message, as after bytes past
    /// the capture. State that outlives exchanges (prepared statements, the selected
    /// database, the handshake's capabilities) is kept: it is the most recent known.
    fn on_gap(&mut self, stats: &mut ParseStats);
    /// The parser cannot follow this connection any more (garbage, or a protocol switch);
    /// the caller stops capturing it.
    fn gave_up(&self) -> bool;
}

/// What the first bytes of a connection say about its protocol.
#[derive(Debug)]
pub enum Detection {
    /// A supported protocol, with its parser.
    Match(Parser),
    /// Too few bytes to tell (e.g. `GE`): look at the next segment.
    Undecided,
    /// Not a supported protocol.
    NoMatch,
}

/// Generates [`Parser`] from the registration list: the enum, detection in list order, and
/// the forwarding of every call to the parser a connection holds.
macro_rules! parsers {
    ($($variant:ident => $parser:ty,)*) => {
        /// All parsers, statically dispatched.
        #[derive(Debug)]
        pub enum Parser {
            $($variant($parser),)*
        }

        /// The registered protocols, in detection order.
        pub const REGISTERED: [Protocol; [$(stringify!($variant)),*].len()] =
            [$(<$parser as ProtocolParser>::PROTOCOL,)*];

        impl Parser {
            /// Tries every protocol on the first segment of a connection, in the order of the
            /// registration list: the first that recognises it wins; if none does but one may
            /// with more bytes, the answer is undecided.
            pub fn detect(seg: &Segment<'_>) -> Detection {
                let mut undecided = false;
                $(
                    match <$parser as ProtocolParser>::detect(seg) {
                        Detected::Side(side) => {
                            return Detection::Match(Self::$variant(<$parser>::new(side)));
                        }
                        Detected::MidStream(side) => {
                            let mut parser = <$parser>::new(side);
                            parser.on_gap(&mut ParseStats::default());
                            return Detection::Match(Self::$variant(parser));
                        }
                        Detected::Undecided => undecided = true,
                        Detected::No => {}
                    }
                )*
                if undecided {
                    Detection::Undecided
                } else {
                    Detection::NoMatch
                }
            }

            /// The parser of `protocol` for a connection whose observed process is `side`
            /// (None for a protocol not registered).
            pub fn new(protocol: Protocol, side: Side) -> Option<Self> {
                $(
                    if protocol == <$parser as ProtocolParser>::PROTOCOL {
                        return Some(Self::$variant(<$parser>::new(side)));
                    }
                )*
                None
            }

            pub fn on_segment(
                &mut self,
                seg: &Segment<'_>,
                out: &mut ParserOut,
                stats: &mut ParseStats,
            ) {
                match self {
                    $(Self::$variant(p) => p.on_segment(seg, out, stats),)*
                }
                self.switch_protocol(seg, out, stats);
            }

            pub fn on_close(&mut self, ts_ns: u64, out: &mut ParserOut, stats: &mut ParseStats) {
                match self {
                    $(Self::$variant(p) => p.on_close(ts_ns, out, stats),)*
                }
            }

            pub fn on_idle(&mut self, out: &mut ParserOut) {
                match self {
                    $(Self::$variant(p) => p.on_idle(out),)*
                }
            }

            pub fn on_gap(&mut self, stats: &mut ParseStats) {
                match self {
                    $(Self::$variant(p) => p.on_gap(stats),)*
                }
            }

            pub fn gave_up(&self) -> bool {
                match self {
                    $(Self::$variant(p) => p.gave_up(),)*
                }
            }

            /// The protocol this parser follows.
            pub fn protocol(&self) -> Protocol {
                match self {
                    $(Self::$variant(_) => <$parser as ProtocolParser>::PROTOCOL,)*
                }
            }
        }
    };
}

impl Parser {
    /// A connection that changed protocol in `seg`: an HTTP/1 request upgraded to cleartext
    /// HTTP/2 by a 101 (`Upgrade: h2c`) goes on with the HTTP/2 parser, which reads the rest
    /// of the segment.
    fn switch_protocol(&mut self, seg: &Segment<'_>, out: &mut ParserOut, stats: &mut ParseStats) {
        let Self::Http1(http1) = self else { return };
        let Some(up) = http1.take_h2c() else { return };
        let at = up.at.min(seg.data.len());
        let rest = Segment {
            data: &seg.data[at..],
            total_len: seg.total_len.saturating_sub(up.at as u64),
            ..*seg
        };
        let mut http2 = http2::Http2Parser::upgraded(http1.side(), *up);
        if rest.total_len > 0 {
            http2.on_segment(&rest, out, stats);
        }
        *self = Self::Http2(http2);
    }
}

// The registration list, in detection order. HTTP/2 first: its preface is a definite match
// (`PRI` is no method HTTP/1 accepts, so the order does not change what HTTP/1 detects), and
// checking it costs one prefix comparison.
parsers! {
    Http2 => http2::Http2Parser,
    Http1 => http1::Http1Parser,
    Redis => redis::RedisParser,
    Memcached => memcached::MemcachedParser,
    Mysql => mysql::MysqlParser,
    Postgres => postgres::PostgresParser,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_is_registered_once() {
        let mut registered = REGISTERED.to_vec();
        registered.sort_by_key(|p| p.index());
        registered.dedup();
        assert_eq!(registered, Protocol::ALL);
        for p in Protocol::ALL {
            let parser = Parser::new(p, Side::Server).map(|parser| parser.protocol());
            assert_eq!(parser, Some(p));
        }
    }
}
