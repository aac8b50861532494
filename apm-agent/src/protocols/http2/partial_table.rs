//! HPACK decoding after the dynamic table became unknown (a header block lost in a gap or past
//! the capture, or a connection that began before the agent): what the table gained since.
//!
//! A field names a dynamic entry by its age: index 62 is the newest entry, 63 the one before,
//! and so on. Entries inserted after the loss are learnt here, newest first, at the same
//! positions the encoder gives them; an entry inserted with a name the agent cannot know (an
//! older entry's name) is kept as a placeholder, so the positions stay right. Entries from
//! before the loss lie beyond the learnt ones and stay unknown. Evictions need no tracking:
//! an encoder only names entries its table still holds, and those are the newest, which keep
//! their positions here whatever was evicted behind them. A block that names an unknown entry
//! gives the fields it could read, flagged, and is still walked to its end, so that its
//! insertions keep the positions of later ones (what such a block may be used for is the
//! parser's call: a pseudo-header is never guessed). As the peers go on
//! inserting (gRPC clients index `:path`, `content-type` and `te` at their first use), the
//! learnt entries cover what they name and blocks decode again.
use std::{borrow::Cow, collections::VecDeque};

use loona_hpack::huffman::HuffmanDecoder;

use super::headers::{Fields, MAX_TABLE_SIZE, integer, keep};

/// RFC 7541 Appendix A: the static table, index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead the table size counts (RFC 7541 §4.1); a placeholder counts as this.
const ENTRY_OVERHEAD: usize = 32;

/// One learnt entry: name and value, or unknown (inserted under an unknown name).
type Entry = Option<(Box<[u8]>, Box<[u8]>)>;

/// The entries learnt since the table became unknown.
pub(super) struct PartialTable {
    /// Newest first.
    entries: VecDeque<Entry>,
    /// Their size as HPACK counts it; kept under [`MAX_TABLE_SIZE`] by dropping the oldest
    /// (which only makes them unknown again).
    bytes: usize,
    huffman: HuffmanDecoder,
}

impl std::fmt::Debug for PartialTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialTable")
            .field("entries", &self.entries.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl PartialTable {
    pub(super) fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            huffman: HuffmanDecoder::new(),
        }
    }

    /// Entries learnt so far (placeholders included).
    #[cfg(test)]
    pub(super) fn learnt(&self) -> usize {
        self.entries.len()
    }

    /// Decodes `block`, learning its insertions; [`Fields::unknown`] when a field it names is
    /// not known. A malformed block makes every position unknown again (its insertions cannot
    /// be followed): the learnt entries are dropped, and the result is None.
    pub(super) fn decode(&mut self, block: &[u8]) -> Option<Fields> {
        let mut fields = Fields::default();
        match self.walk(block, &mut fields) {
            Some(complete) => {
                fields.unknown = !complete;
                Some(fields)
            }
            None => {
                self.entries.clear();
                self.bytes = 0;
                None
            }
        }
    }

    /// Walks the representations of `block` (RFC 7541 §6): Some(all fields known), None when
    /// malformed.
    fn walk(&mut self, block: &[u8], fields: &mut Fields) -> Option<bool> {
        let mut complete = true;
        let mut pos = 0;
        while let Some(&first) = block.get(pos) {
            let rest = block.get(pos..)?;
            if first & 0x80 != 0 {
                // Indexed field.
                let (index, used) = integer(rest, 7)?;
                pos += used;
                match self.lookup(index)? {
                    Some((name, value)) => keep(fields, name, value),
                    None => complete = false,
                }
                continue;
            }
            if first & 0xe0 == 0x20 {
                // Dynamic table size update: evictions need no tracking (see the module).
                let (_, used) = integer(rest, 5)?;
                pos += used;
                continue;
            }
            let insert = first & 0x40 != 0;
            let (index, used) = integer(rest, if insert { 6 } else { 4 })?;
            pos += used;
            let name: Option<Cow<'_, [u8]>> = if index == 0 {
                let (name, used) = self.string(block.get(pos..)?)?;
                pos += used;
                Some(name)
            } else {
                self.lookup(index)?
                    .map(|(name, _)| Cow::Owned(name.to_vec()))
            };
            let (value, used) = self.string(block.get(pos..)?)?;
            pos += used;
            match &name {
                Some(name) => keep(fields, name, &value),
                None => complete = false,
            }
            if insert {
                self.insert(name.map(|n| (n.into_owned().into(), value.into_owned().into())));
            }
        }
        Some(complete)
    }

    /// The entry at HPACK `index`: Some(None) for a dynamic entry not known; None for 0
    /// (not a valid index).
    fn lookup(&self, index: usize) -> Option<Option<(&[u8], &[u8])>> {
        match index {
            0 => None,
            1..=61 => STATIC
                .get(index - 1)
                .map(|&(n, v)| Some((n.as_bytes(), v.as_bytes()))),
            _ => Some(
                self.entries
                    .get(index - 62)
                    .and_then(|e| e.as_ref())
                    .map(|(n, v)| (&n[..], &v[..])),
            ),
        }
    }

    /// A string literal at the start of `buf`: its octets (Huffman-decoded when flagged) and
    /// the bytes it took.
    fn string<'b>(&mut self, buf: &'b [u8]) -> Option<(Cow<'b, [u8]>, usize)> {
        let huffman = buf.first()? & 0x80 != 0;
        let (len, used) = integer(buf, 7)?;
        let end = used.checked_add(len)?;
        let raw = buf.get(used..end)?;
        let octets = if huffman {
            Cow::Owned(self.huffman.decode(raw).ok()?)
        } else {
            Cow::Borrowed(raw)
        };
        Some((octets, end))
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.as_ref().map_or(0, |(n, v)| n.len() + v.len()) + ENTRY_OVERHEAD;
        self.bytes += size;
        self.entries.push_front(entry);
        while self.bytes > MAX_TABLE_SIZE {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.bytes -= old.as_ref().map_or(0, |(n, v)| n.len() + v.len()) + ENTRY_OVERHEAD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::STATIC;

    /// The static table as loona-hpack's decoder has it, index by index.
    #[test]
    fn static_table_matches_the_decoders() {
        for (i, (name, value)) in STATIC.iter().enumerate() {
            let mut decoder = loona_hpack::Decoder::new();
            let index = u8::try_from(i + 1).expect("61 entries") | 0x80;
            let fields = decoder.decode(&[index]).expect("an indexed static field");
            assert_eq!(
                fields,
                vec![(name.as_bytes().to_vec(), value.as_bytes().to_vec())],
                "index {}",
                i + 1
            );
        }
    }
}
