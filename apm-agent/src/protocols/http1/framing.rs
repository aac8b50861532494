//! HTTP/1.x body framing over captured prefixes.
//!
//! A segment carries `total` bytes of which only the first `visible.len()` were captured.
//! Length-delimited bodies are skipped by count, so a 1 MB body behind a 1 KB capture still
//! ends exactly where it should. Chunked bodies need their size lines: when one falls past the
//! capture, the framing is lost and the message's end must be inferred.

/// How the body of the message being read is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// `Content-Length`: bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the chunk grammar.
    Chunked(Chunk),
    /// A response delimited by the connection closing.
    UntilClose,
    /// Framing unknown (head truncated or chunk sync lost): ends are inferred.
    Unknown,
}

/// Position inside the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Reading a chunk-size line.
    Size { size: u64, digits: u8, in_ext: bool },
    /// Inside chunk data: bytes left.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer section; `line_empty` while no byte of the current line was seen.
    Trailer { line_empty: bool },
}

impl Chunk {
    pub(crate) const START: Self = Self::Size {
        size: 0,
        digits: 0,
        in_ext: false,
    };
}

/// Result of advancing through body bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// All bytes consumed, the body goes on.
    More,
    /// The body ended after `consumed` bytes.
    Done,
    /// Framing lost: the body continues with unknown length.
    Lost,
    /// The bytes break the chunked grammar.
    Invalid,
}

/// Longest chunk-size hex we accept (16 digits = u64).
const MAX_SIZE_DIGITS: u8 = 16;

/// Advances `body` over a segment tail: `visible` captured bytes out of `total` bytes.
/// Returns how many bytes (visible or not) were consumed and what happened.
pub(crate) fn advance(body: &mut Body, visible: &[u8], total: u64) -> (u64, Progress) {
    match body {
        Body::Length(left) => {
            let n = (*left).min(total);
            *left -= n;
            (
                n,
                if *left == 0 {
                    Progress::Done
                } else {
                    Progress::More
                },
            )
        }
        Body::UntilClose | Body::Unknown => (total, Progress::More),
        Body::Chunked(chunk) => {
            let (consumed, progress) = advance_chunked(chunk, visible, total);
            if progress == Progress::Lost {
                *body = Body::Unknown;
            }
            (consumed, progress)
        }
    }
}

fn advance_chunked(chunk: &mut Chunk, visible: &[u8], total: u64) -> (u64, Progress) {
    let mut pos: u64 = 0;
    loop {
        if let Chunk::Data(left) = chunk {
            let n = (*left).min(total - pos);
            *left -= n;
            pos += n;
            if *left > 0 {
                return (pos, Progress::More);
            }
            *chunk = Chunk::DataEnd;
            continue;
        }
        if pos >= total {
            return (pos, Progress::More);
        }
        let Some(&b) = visible.get(pos as usize) else {
            // A size line or CRLF lies past the capture: we cannot follow the chunks any more.
            return (total, Progress::Lost);
        };
        pos += 1;
        match chunk {
            Chunk::Size {
                size,
                digits,
                in_ext,
            } => match b {
                b'\n' => {
                    if *digits == 0 {
                        return (pos, Progress::Invalid);
                    }
                    *chunk = if *size == 0 {
                        Chunk::Trailer { line_empty: true }
                    } else {
                        Chunk::Data(*size)
                    };
                }
                b'\r' => {}
                _ if *in_ext => {}
                b';' | b' ' | b'\t' => *in_ext = true,
                _ => {
                    let Some(v) = (b as char).to_digit(16) else {
                        return (pos, Progress::Invalid);
                    };
                    if *digits >= MAX_SIZE_DIGITS {
                        return (pos, Progress::Invalid);
                    }
                    *size = (*size << 4) | u64::from(v);
                    *digits += 1;
                }
            },
            Chunk::DataEnd => match b {
                b'\r' => {}
                b'\n' => *chunk = Chunk::START,
                _ => return (pos, Progress::Invalid),
            },
            Chunk::Trailer { line_empty } => match b {
                b'\r' => {}
                b'\n' if *line_empty => return (pos, Progress::Done),
                b'\n' => *line_empty = true,
                _ => *line_empty = false,
            },
            Chunk::Data(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &mut Body, bytes: &[u8]) -> (u64, Progress) {
        advance(body, bytes, bytes.len() as u64)
    }

    #[test]
    fn length_counts_invisible_bytes() {
        let mut b = Body::Length(1_000_000);
        assert_eq!(
            advance(&mut b, &[0; 100], 600_000),
            (600_000, Progress::More)
        );
        assert_eq!(
            advance(&mut b, &[0; 100], 500_000),
            (400_000, Progress::Done)
        );
    }

    #[test]
    fn chunked_complete_in_one_piece() {
        let mut b = Body::Chunked(Chunk::START);
        let s = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(run(&mut b, s), (s.len() as u64 - 4, Progress::Done));
    }

    #[test]
    fn chunked_with_trailers() {
        let mut b = Body::Chunked(Chunk::START);
        let s = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n";
        assert_eq!(run(&mut b, s), (s.len() as u64, Progress::Done));
    }

    #[test]
    fn chunked_split_byte_by_byte() {
        let mut b = Body::Chunked(Chunk::START);
        let s = b"A\r\n0123456789\r\n0\r\n\r\n";
        for (i, byte) in s.iter().enumerate() {
            let (n, p) = run(&mut b, std::slice::from_ref(byte));
            assert_eq!(n, 1);
            if i + 1 == s.len() {
                assert_eq!(p, Progress::Done);
            } else {
                assert_eq!(p, Progress::More, "at byte {i}");
            }
        }
    }

    #[test]
    fn chunk_data_beyond_capture_is_skipped_by_count() {
        let mut b = Body::Chunked(Chunk::START);
        // 0x1000 bytes of chunk data, only the size line and 10 data bytes captured.
        let mut visible = b"1000\r\n".to_vec();
        visible.extend_from_slice(&[b'x'; 10]);
        let total = 6 + 0x1000;
        assert_eq!(advance(&mut b, &visible, total), (total, Progress::More));
        assert_eq!(run(&mut b, b"\r\n0\r\n\r\n"), (7, Progress::Done));
    }

    #[test]
    fn size_line_past_capture_loses_sync() {
        let mut b = Body::Chunked(Chunk::START);
        // 4 bytes of data then the next size line, but only 6 bytes captured.
        let (n, p) = advance(&mut b, b"4\r\nabc", 20);
        assert_eq!((n, p), (20, Progress::Lost));
        assert_eq!(b, Body::Unknown);
    }

    #[test]
    fn garbage_in_chunked_is_invalid() {
        let mut b = Body::Chunked(Chunk::START);
        assert_eq!(run(&mut b, b"zz\r\n").1, Progress::Invalid);
        let mut b = Body::Chunked(Chunk::START);
        assert_eq!(run(&mut b, b"3\r\nabcXY").1, Progress::Invalid);
        let mut b = Body::Chunked(Chunk::START);
        assert_eq!(run(&mut b, b"11111111111111111\r\n").1, Progress::Invalid);
    }
}
