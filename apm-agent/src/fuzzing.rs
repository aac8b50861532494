//! The fuzz harnesses: what each `cargo fuzz` target (`fuzz/fuzz_targets/`) runs on one input.
//!
//! They live in the library, compiled only for tests and fuzz builds (`--cfg fuzzing`, which
//! cargo-fuzz passes), so that `cargo test` replays the committed corpus (`fuzz/corpus/`,
//! including any crash input added there once fixed) through exactly the same code on the
//! stable toolchain, and so that the unit tests' golden byte streams can be written out as
//! corpus seeds in the input format below (the `seeds` module, in tests).
//!
//! # Input format of the protocol targets
//!
//! A sequence of records, each one segment a process read or wrote:
//!
//! ```text
//! record := ctl:u8 len:u16le [extra:u32le if ctl & 4] data[len]
//! ctl bit 0   1: the observed process read the bytes (ingress), 0: it wrote them (egress)
//! ctl bit 1   the connection was idle before this segment (the parser's idle timeout)
//! ctl bit 2   `extra` follows: bytes the syscall moved past the captured `data`
//! ctl bit 3   records of the connection were lost before this segment (the parser's
//!             `on_gap`, as the pipeline calls it on a jump in the kernel's record numbers)
//! ctl 4..7    k != 0: the data is fed as k-byte segments (split points), the last one
//!             carrying `extra`
//! ```
//!
//! `len` is clamped to the bytes left, so every input means something. A hand-written format
//! rather than `#[derive(Arbitrary)]`: the golden streams can be encoded into it ([`encode`]),
//! and libFuzzer's byte mutations map onto meaningful changes (a flipped bit moves a segment to
//! the other direction, a changed length moves a split point).
//!
//! Each input is run as the agent runs a connection (detection on the first segments, joined
//! while undecided, then the detected parser until it gives up) and straight into the
//! target's parser on both sides, each with the directions as given and swapped.
use crate::{
    ebpf::{
        decode::{self, Event, KIND_NAMES},
        records,
    },
    protocols::{
        Detection, Direction, ParseStats, Parser, ParserOut, Segment,
        sql::{self, Dialect},
    },
    request::{DbSystem, Detail, Protocol, Side},
};

/// As the pipeline: undecided first bytes are kept for joining up to this size...
const MAX_DETECT_PREFIX: usize = 512;
/// ... and a connection gets this many segments to be recognised (the default of
/// `detect_attempts`, for connections seen mid-stream; those seen from their start get one).
const DETECT_ATTEMPTS: u8 = 4;

/// One segment decoded from a fuzz input.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub direction: Direction,
    pub idle_before: bool,
    pub gap_before: bool,
    pub data: &'a [u8],
    pub total_len: u64,
}

/// Decodes a protocol target's input (format in the module documentation).
pub fn steps(mut input: &[u8]) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    while let [ctl, rest @ ..] = input {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            // A record header cut short ends the input.
            _ => break,
        };
        let (extra, rest) = match rest {
            [a, b, c, d, rest @ ..] if ctl & 4 != 0 => (u32::from_le_bytes([*a, *b, *c, *d]), rest),
            _ => (0, rest),
        };
        let (data, rest) = rest.split_at(len.min(rest.len()));
        input = rest;
        let direction = if ctl & 1 == 1 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let k = (ctl >> 4) as usize;
        let pieces: Vec<&[u8]> = if k == 0 || data.is_empty() {
            vec![data]
        } else {
            data.chunks(k).collect()
        };
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let total_len = piece.len() as u64 + if i == last { u64::from(extra) } else { 0 };
            out.push(Step {
                direction,
                idle_before: ctl & 2 != 0 && i == 0,
                gap_before: ctl & 8 != 0 && i == 0,
                data: piece,
                total_len,
            });
        }
    }
    out
}

/// Encodes segments (direction, captured bytes, bytes moved) as one input, the inverse of
/// [`steps`] for unsplit records.
pub fn encode(segments: &[(Direction, &[u8], u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (direction, data, total) in segments {
        // A longer capture than a record holds: the rest counts as moved, not captured.
        let data = &data[..data.len().min(usize::from(u16::MAX))];
        let extra = total
            .saturating_sub(data.len() as u64)
            .min(u64::from(u32::MAX)) as u32;
        let mut ctl = u8::from(*direction == Direction::Ingress);
        if extra > 0 {
            ctl |= 4;
        }
        out.push(ctl);
        out.extend_from_slice(&(data.len() as u16).to_le_bytes());
        if extra > 0 {
            out.extend_from_slice(&extra.to_le_bytes());
        }
        out.extend_from_slice(data);
    }
    out
}

/// Requests a protocol input produced (and that passed the checks), for tests that make sure
/// the harness reaches them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exercised {
    /// Through detection, as the agent runs.
    pub detected: usize,
    /// Straight into the target's parser.
    pub straight: usize,
}

/// The protocol targets: `input` run through detection and through `protocol`'s parser.
pub fn protocol(protocol: Protocol, input: &[u8]) -> Exercised {
    let mut exercised = Exercised::default();
    let steps = steps(input);
    for swap in [false, true] {
        let steps: Vec<Step<'_>> = steps
            .iter()
            .map(|s| Step {
                direction: match (swap, s.direction) {
                    (false, d) => d,
                    (true, Direction::Ingress) => Direction::Egress,
                    (true, Direction::Egress) => Direction::Ingress,
                },
                ..s.clone()
            })
            .collect();
        exercised.detected += as_the_agent_does(&steps);
        for side in [Side::Client, Side::Server] {
            // Every protocol is registered (a test in `protocols` says so).
            if let Some(parser) = Parser::new(protocol, side) {
                exercised.straight += straight(parser, side, &steps);
            }
        }
    }
    exercised
}

/// Timestamps: each segment returns 100 ns after the previous one.
fn ts(i: usize) -> u64 {
    1_000 + 100 * i as u64
}

fn segment<'a>(step: &Step<'a>, i: usize) -> Segment<'a> {
    Segment {
        direction: step.direction,
        data: step.data,
        total_len: step.total_len,
        ts_ns: ts(i),
        tid: 7,
    }
}

/// Detection as `pipeline/feed.rs` does it, then the detected parser until it gives up.
fn as_the_agent_does(steps: &[Step<'_>]) -> usize {
    let mut n = 0;
    let mut parser: Option<Parser> = None;
    // Undecided bytes: direction, bytes, and the time of their segment.
    let mut prefix: Option<(Direction, Vec<u8>, u64)> = None;
    let mut attempts = 0u8;
    let mut out = ParserOut::default();
    let mut stats = ParseStats::default();
    for (i, step) in steps.iter().enumerate() {
        let seg = segment(step, i);
        if let Some(p) = parser.as_mut() {
            if step.idle_before {
                p.on_idle(&mut out);
                n += check(p.protocol(), None, &mut out, &stats, &stats);
            }
            if step.gap_before {
                let before = stats;
                p.on_gap(&mut stats);
                n += check(p.protocol(), None, &mut out, &before, &stats);
            }
            let before = stats;
            p.on_segment(&seg, &mut out, &mut stats);
            n += check(p.protocol(), None, &mut out, &before, &stats);
            if p.gave_up() {
                let before = stats;
                p.on_close(ts(i) + 50, &mut out, &mut stats);
                n += check(p.protocol(), None, &mut out, &before, &stats);
                return n;
            }
            continue;
        }
        if step.gap_before {
            // As the pipeline: undecided bytes are not joined across lost ones.
            prefix = None;
        }
        let joined = match prefix.take() {
            Some((d, mut bytes, ts_ns)) if d == seg.direction => {
                bytes.extend_from_slice(seg.data);
                Some((bytes, ts_ns))
            }
            _ => None,
        };
        let seg = match &joined {
            Some((bytes, ts_ns)) => Segment {
                data: bytes,
                total_len: (bytes.len() - seg.data.len()) as u64 + seg.total_len,
                ts_ns: *ts_ns,
                ..seg
            },
            None => seg,
        };
        match Parser::detect(&seg) {
            Detection::Match(mut p) => {
                p.on_segment(&seg, &mut out, &mut stats);
                n += check(p.protocol(), None, &mut out, &ParseStats::default(), &stats);
                parser = Some(p);
            }
            detection => {
                attempts += 1;
                if matches!(detection, Detection::Undecided)
                    && !seg.is_truncated()
                    && seg.data.len() <= MAX_DETECT_PREFIX
                {
                    prefix = Some((seg.direction, seg.data.to_vec(), seg.ts_ns));
                }
                if attempts >= DETECT_ATTEMPTS {
                    return n;
                }
            }
        }
    }
    if let Some(mut p) = parser {
        let before = stats;
        p.on_idle(&mut out);
        p.on_close(ts(steps.len()), &mut out, &mut stats);
        n += check(p.protocol(), None, &mut out, &before, &stats);
    }
    n
}

/// Every segment straight into `parser` (as the parser unit tests do), detection tried on
/// each on the side.
fn straight(mut parser: Parser, side: Side, steps: &[Step<'_>]) -> usize {
    let mut n = 0;
    let protocol = parser.protocol();
    let mut out = ParserOut::default();
    let mut stats = ParseStats::default();
    for (i, step) in steps.iter().enumerate() {
        let seg = segment(step, i);
        let _ = Parser::detect(&seg);
        let before = stats;
        if step.idle_before {
            parser.on_idle(&mut out);
        }
        if step.gap_before {
            parser.on_gap(&mut stats);
        }
        parser.on_segment(&seg, &mut out, &mut stats);
        n += check(protocol, Some(side), &mut out, &before, &stats);
        if parser.gave_up() {
            break;
        }
    }
    let before = stats;
    parser.on_idle(&mut out);
    parser.on_close(ts(steps.len()), &mut out, &mut stats);
    n += check(protocol, Some(side), &mut out, &before, &stats);
    n
}

/// What must hold of a parser's output whatever its input; empties `out` as the pipeline does
/// and returns how many requests it checked.
fn check(
    protocol: Protocol,
    side: Option<Side>,
    out: &mut ParserOut,
    before: &ParseStats,
    after: &ParseStats,
) -> usize {
    // Counters only count up.
    assert!(after.parse_errors >= before.parse_errors);
    assert!(after.incomplete >= before.incomplete);
    assert!(after.unmatched_responses >= before.unmatched_responses);
    assert!(after.pipeline_overflow >= before.pipeline_overflow);
    for s in &out.started {
        assert!(side.is_none_or(|side| s.side == side), "{s:?}");
    }
    for r in &out.done {
        assert_eq!(r.protocol, protocol, "{r:?}");
        assert!(side.is_none_or(|side| r.side == side), "{r:?}");
        assert!(r.start_ns <= r.end_ns, "{r:?}");
        match (&r.detail, protocol) {
            (Detail::Http(h), Protocol::Http1 | Protocol::Http2) => {
                // Query strings and fragments (their values) never leave the parser.
                assert!(!h.path.contains(['?', '#']), "{r:?}");
                // Only HTTP/2 carries gRPC.
                assert!(h.grpc.is_none() || protocol == Protocol::Http2, "{r:?}");
            }
            (Detail::Db(d), _) => {
                let system_ok = matches!(
                    (d.system, protocol),
                    (DbSystem::Postgresql, Protocol::Postgres)
                        | (DbSystem::Mysql | DbSystem::Mariadb, Protocol::Mysql)
                        | (DbSystem::Redis, Protocol::Redis)
                        | (DbSystem::Memcached, Protocol::Memcached)
                );
                assert!(system_ok, "{r:?}");
                assert!(!d.operation.is_empty(), "{r:?}");
                if matches!(protocol, Protocol::Postgres | Protocol::Mysql) {
                    assert!(d.query.chars().count() <= sql::MAX_QUERY_BYTES + 3, "{r:?}");
                }
            }
            _ => panic!("detail does not match the protocol: {r:?}"),
        }
    }
    let n = out.done.len();
    out.started.clear();
    out.done.clear();
    n
}

/// A string literal no statement can keep: it is put first, where it is surely a literal.
const CANARY: &[u8] = b"zqCanaryXw";

/// The SQL normalizer's target: the first byte picks the dialect, the rest is the statement.
pub fn sql(input: &[u8]) {
    let Some((first, text)) = input.split_first() else {
        return;
    };
    let dialect = if first & 1 == 0 {
        Dialect::Postgres
    } else {
        Dialect::Mysql
    };
    let st = sql::normalize(text, dialect);
    // Bounded: MAX_QUERY_BYTES bytes and `...` (an invalid byte is one U+FFFD character).
    assert!(st.text.chars().count() <= sql::MAX_QUERY_BYTES + 3);
    assert!(
        st.operation == "_OTHER"
            || (st.operation.len() <= 24 && st.operation.bytes().all(|b| b.is_ascii_uppercase())),
        "{st:?}"
    );
    assert!(
        st.collection
            .as_ref()
            .is_none_or(|c| !c.is_empty() && c.len() <= 128)
    );
    // A quoted literal never survives: the canary, quoted at the start, may appear in the
    // output only as often as the statement itself spells it.
    let mut quoted = Vec::with_capacity(text.len() + CANARY.len() + 2);
    quoted.push(b'\'');
    quoted.extend_from_slice(CANARY);
    quoted.push(b'\'');
    quoted.extend_from_slice(text);
    let masked = sql::obfuscate(&quoted, dialect);
    let count = |hay: &[u8]| hay.windows(CANARY.len()).filter(|w| *w == CANARY).count();
    assert!(
        count(masked.as_bytes()) <= count(text),
        "literal kept: {masked:?}"
    );
}

/// The kernel-record decoder's target: one ring-buffer record.
pub fn decode(input: &[u8]) {
    let Ok(event) = decode::decode(input) else {
        return;
    };
    assert!(decode::kind_index(&event) < KIND_NAMES.len());
    match event {
        Event::Data(d) => {
            let header = size_of::<apm_common::DataEventHeader>();
            assert_eq!(d.payload.len(), d.header.captured_len as usize);
            assert_eq!(d.payload, &input[header..]);
            // The pipeline's next step with the payload.
            let _ = Parser::detect(&Segment {
                direction: match d.direction {
                    records::Direction::Ingress => Direction::Ingress,
                    records::Direction::Egress => Direction::Egress,
                },
                data: d.payload,
                total_len: d.header.total_len.max(d.payload.len() as u64),
                ts_ns: d.header.ts_ns,
                tid: d.header.tid,
            });
        }
        Event::ConnOpen(c) | Event::ConnClose(c) => {
            let _ = decode::comm_str(&c.comm);
        }
        Event::ProcExec(p) | Event::ProcExit(p) | Event::ProcExecMap(p) => {
            let _ = decode::comm_str(&p.comm);
        }
        Event::ConnTuple(_) => {}
    }
}

/// Writing the unit tests' byte streams out as corpus seeds. The protocol tests call
/// [`seeds::record`] from their segment helper; with `APM_FUZZ_SEEDS=DIR` in the environment,
/// each test's stream lands in `DIR/<target>/<test name>`
/// (`APM_FUZZ_SEEDS=/tmp/seeds cargo test -p apm-agent --lib protocols`), from which the
/// committed corpus was picked.
#[cfg(test)]
pub mod seeds {
    use std::{cell::RefCell, io::Write as _, path::PathBuf};

    use super::{Direction, encode};

    thread_local! {
        /// This test's seed file, once its first segment was written.
        static FILE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
        /// Whole inputs this test wrote so far.
        static INPUTS: RefCell<usize> = const { RefCell::new(0) };
    }

    fn test_name() -> String {
        let thread = std::thread::current();
        thread.name().unwrap_or("unnamed").replace("::", "-")
    }

    /// Writes one whole input for `target` (SQL statements, kernel records), when asked to.
    pub fn input(target: &str, input: &[u8]) {
        let Some(root) = std::env::var_os("APM_FUZZ_SEEDS") else {
            return;
        };
        let n = INPUTS.with_borrow_mut(|n| {
            *n += 1;
            *n
        });
        let dir = PathBuf::from(&root).join(target);
        std::fs::create_dir_all(&dir).expect("seed dir");
        std::fs::write(dir.join(format!("{}-{n}", test_name())), input).expect("seed file");
    }

    /// Appends one segment to the running test's seed for `target`, when asked to.
    pub fn record(target: &str, direction: Direction, data: &[u8], total: u64) {
        let Some(root) = std::env::var_os("APM_FUZZ_SEEDS") else {
            return;
        };
        let name = test_name();
        FILE.with_borrow_mut(|file| {
            let path = file.get_or_insert_with(|| {
                let dir = PathBuf::from(&root).join(target);
                std::fs::create_dir_all(&dir).expect("seed dir");
                let path = dir.join(name);
                std::fs::write(&path, b"").expect("seed file");
                path
            });
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .expect("seed file");
            f.write_all(&encode(&[(direction, data, total)]))
                .expect("seed write");
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn encoding_round_trips() {
        let segs: [(Direction, &[u8], u64); 3] = [
            (Direction::Egress, b"GET / HTTP/1.1\r\n\r\n", 18),
            (Direction::Ingress, b"HTTP/1.1 200 OK\r\n", 5000),
            (Direction::Egress, b"", 0),
        ];
        let input = encode(&segs);
        let back: Vec<_> = steps(&input)
            .into_iter()
            .map(|s| (s.direction, s.data, s.total_len))
            .collect();
        assert_eq!(back, segs);
    }

    #[test]
    fn splits_keep_the_extra_on_the_last_piece() {
        let mut input = encode(&[(Direction::Ingress, b"abcde", 10)]);
        input[0] |= 2 << 4;
        let back: Vec<_> = steps(&input)
            .into_iter()
            .map(|s| (s.data, s.total_len))
            .collect();
        assert_eq!(back, [(&b"ab"[..], 2), (b"cd", 2), (b"e", 6)]);
    }

    #[test]
    fn canary_is_masked() {
        sql(b"\x00SELECT 1");
        sql(b"\x01' OR 'a'='a");
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over the plain #[repr(C)] integer records of apm-common.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    /// One record of each kind, as seeds of the decoder's target.
    #[test]
    fn decode_seeds() {
        use apm_common::{ConnEvent, DataEventHeader, ProcEvent, TupleEvent, direction, kind};
        let payload = b"GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let header = DataEventHeader {
            kind: kind::DATA,
            direction: direction::INGRESS,
            tgid: 7,
            tid: 8,
            fd: 3,
            ts_ns: 1_000,
            total_len: 5_000,
            captured_len: payload.len() as u32,
            ..Default::default()
        };
        let mut data = bytes_of(&header);
        data.extend_from_slice(payload);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let records = [
            data,
            bytes_of(&ConnEvent {
                kind: kind::CONN_OPEN,
                comm,
                ..Default::default()
            }),
            bytes_of(&ConnEvent {
                kind: kind::CONN_CLOSE,
                ..Default::default()
            }),
            bytes_of(&ProcEvent {
                kind: kind::PROC_EXEC,
                comm,
                ..Default::default()
            }),
            bytes_of(&ProcEvent {
                kind: kind::PROC_EXIT,
                ..Default::default()
            }),
            bytes_of(&TupleEvent {
                kind: kind::CONN_TUPLE,
                ..Default::default()
            }),
            bytes_of(&ProcEvent {
                kind: kind::PROC_EXEC_MAP,
                comm,
                ..Default::default()
            }),
        ];
        for r in &records {
            decode(r);
            seeds::input("decode", r);
        }
    }

    type Harness = fn(&[u8]);

    fn corpus(root: &Path, target: &str) -> Vec<Vec<u8>> {
        let dir = root.join(target);
        let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("corpus dir")
            .map(|e| std::fs::read(e.expect("corpus entry").path()).expect("corpus file"))
            .collect();
        assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
        inputs
    }

    /// Every committed corpus input, through the same harness as the fuzz targets: a crash
    /// input added to the corpus stays a regression test on the stable toolchain.
    #[test]
    fn corpus_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let protocols = [
            ("http1", Protocol::Http1),
            ("http2", Protocol::Http2),
            ("postgres", Protocol::Postgres),
            ("mysql", Protocol::Mysql),
            ("redis", Protocol::Redis),
            ("memcached", Protocol::Memcached),
        ];
        for (target, p) in protocols {
            let mut total = Exercised::default();
            for input in corpus(&root, target) {
                let e = protocol(p, &input);
                total.detected += e.detected;
                total.straight += e.straight;
            }
            // The seeds are real exchanges: the checks saw requests on both paths.
            assert!(
                total.detected > 0 && total.straight > 0,
                "{target}: {total:?}"
            );
        }
        let others: [(&str, Harness); 2] = [("sql", sql), ("decode", decode)];
        for (target, run) in others {
            corpus(&root, target).iter().for_each(|input| run(input));
        }
    }
}
