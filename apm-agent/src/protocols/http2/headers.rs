//! HPACK (RFC 7541) of one direction, with `loona-hpack`: each direction has its own dynamic
//! table, which only stays right if every header block of that direction is decoded in
//! order. A block that cannot be decoded (bytes of it not captured, lost in a gap, or not
//! valid HPACK) leaves the table in an unknown state: from then on the direction is decoded
//! with what its table gained since ([`PartialTable`]): static-table indices and literals
//! decode the same whatever the table holds (many servers, nginx among them, encode their
//! responses that way), entries inserted after the loss are learnt, and a block that names
//! an entry from before it is counted as lost: a wrong table would name the wrong route.
use loona_hpack::Decoder;

use super::partial_table::PartialTable;
use crate::request::{GrpcCode, Method, TraceParent};

/// The dynamic table size every HPACK context starts with (SETTINGS_HEADER_TABLE_SIZE's
/// initial value).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table a peer may make the agent keep, whatever its SETTINGS say: the
/// table is memory held per connection direction, and its size is chosen by outside input.
/// A size update above it makes the block undecodable (counted).
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Longest path kept (bytes), as for HTTP/1.
const MAX_PATH_BYTES: usize = 512;
/// Longest `:authority` kept (bytes), as the HTTP/1 Host header.
const MAX_AUTHORITY_BYTES: usize = 255;
/// Longest User-Agent kept (bytes).
const MAX_USER_AGENT_BYTES: usize = 256;
/// Longest tracestate kept (bytes; the W3C limit is 512).
const MAX_TRACESTATE_BYTES: usize = 512;

/// What the agent reads from a header block: the same allow-list as HTTP/1 (method, path
/// without its query, status, authority as the Host header, user agent, trace context),
/// and gRPC's content type and status (never `grpc-message`: free text a server fills).
/// Every other header is decoded (the table needs it) and dropped at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub method: Option<Method>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub status: Option<u16>,
    pub user_agent: Option<String>,
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    /// `content-type: application/grpc` (or `application/grpc+proto`, ...).
    pub grpc: bool,
    /// `grpc-status` (response headers of a trailers-only response, or trailers).
    pub grpc_status: Option<GrpcCode>,
}

/// The HPACK decoding context of one direction.
pub struct Hpack {
    decoder: Decoder<'static>,
    /// Set when a block was lost or undecodable: the dynamic table is unknown, and only what
    /// it gained since is known.
    partial: Option<Box<PartialTable>>,
}

impl std::fmt::Debug for Hpack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hpack")
            .field("partial", &self.partial)
            .finish_non_exhaustive()
    }
}

impl Default for Hpack {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_TABLE_SIZE);
        Self {
            decoder,
            partial: None,
        }
    }
}

impl Hpack {
    #[cfg(test)]
    pub fn is_poisoned(&self) -> bool {
        self.partial.is_some()
    }

    /// The dynamic entries learnt since the table became unknown.
    #[cfg(test)]
    pub fn learnt(&self) -> Option<usize> {
        self.partial.as_ref().map(|p| p.learnt())
    }

    /// The table's state is no longer known (a block was lost): what was learnt since an
    /// earlier loss is unknown again too (the lost block may have inserted entries).
    pub fn poison(&mut self) {
        self.partial = Some(Box::new(PartialTable::new()));
    }

    /// The decoding endpoint announced SETTINGS_HEADER_TABLE_SIZE = `size`: the encoder of
    /// this direction may now resize the table up to it (with a size update inside a block;
    /// the decoder never resizes on its own). Lowering takes effect through the encoder's
    /// mandatory size update, so the bound kept is never below the initial size: a block the
    /// encoder sent before it saw the SETTINGS still decodes.
    pub fn allow_table_size(&mut self, size: u32) {
        let size = (size as usize).clamp(DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE);
        self.decoder.set_max_allowed_table_size(size);
    }

    /// Decodes one complete header block. None when the block does not decode (which makes
    /// the table unknown), or it names a dynamic-table entry the agent does not know.
    pub fn decode(&mut self, block: &[u8]) -> Option<Fields> {
        if let Some(partial) = self.partial.as_mut() {
            return partial.decode(block);
        }
        let mut fields = Fields::default();
        let result = self
            .decoder
            .decode_with_cb(block, |name, value| keep(&mut fields, &name, &value));
        match result {
            Ok(()) => Some(fields),
            Err(_) => {
                self.poison();
                None
            }
        }
    }
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1): its value and the bytes it took.
/// At most 4 continuation bytes, as decoders limit it.
pub(super) fn integer(buf: &[u8], prefix: u32) -> Option<(usize, usize)> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*buf.first()?) & max;
    if value < max {
        return Some((value, 1));
    }
    for (i, &b) in buf.iter().skip(1).take(4).enumerate() {
        value += usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 2));
        }
    }
    None
}

/// Keeps a header the agent reads, bounded; drops every other at once.
pub(super) fn keep(fields: &mut Fields, name: &[u8], value: &[u8]) {
    match name {
        b":method" => {
            fields.method = std::str::from_utf8(value).ok().map(Method::parse);
        }
        b":path" => fields.path = Some(clean_path(value)),
        b":authority" => fields.authority = bounded_text(value, MAX_AUTHORITY_BYTES),
        b":status" => {
            fields.status = std::str::from_utf8(value)
                .ok()
                .filter(|s| s.len() == 3)
                .and_then(|s| s.parse().ok());
        }
        b"user-agent" => fields.user_agent = bounded_text(value, MAX_USER_AGENT_BYTES),
        b"traceparent" => fields.traceparent = TraceParent::parse(value),
        b"tracestate" => fields.tracestate = bounded_text(value, MAX_TRACESTATE_BYTES),
        b"content-type" => fields.grpc = is_grpc_content_type(value),
        b"grpc-status" => fields.grpc_status = GrpcCode::parse(value),
        _ => {}
    }
}

/// `application/grpc` alone or with a `+format` or `;parameters` suffix (gRPC's
/// PROTOCOL-HTTP2.md); not `application/grpc-web`, a different framing.
fn is_grpc_content_type(value: &[u8]) -> bool {
    let Some(rest) = value
        .get(..16)
        .filter(|p| p.eq_ignore_ascii_case(b"application/grpc"))
        .and_then(|_| value.get(16..))
    else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+' | b';'))
}

/// A header value as text, when it is printable UTF-8 of at most `max` bytes.
fn bounded_text(value: &[u8], max: usize) -> Option<String> {
    let v = Some(value).filter(|v| v.len() <= max)?;
    let s = std::str::from_utf8(v).ok()?;
    (!s.chars().any(char::is_control)).then(|| s.to_owned())
}

/// The `:path` without query string or fragment (their values never leave the parser),
/// bounded in length; `*` (OPTIONS) stays `*`.
fn clean_path(value: &[u8]) -> String {
    let end = value
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(value.len());
    let path = value.get(..end.min(MAX_PATH_BYTES)).unwrap_or(&[]);
    let mut s = String::from_utf8_lossy(path).into_owned();
    // HTTP/1 paths are visible characters only (httparse); hold HTTP/2 paths to the same.
    s.retain(|c| !c.is_control());
    // A cut inside a multi-byte character leaves a replacement character: drop it.
    if end > MAX_PATH_BYTES {
        while s.ends_with('\u{fffd}') {
            s.pop();
        }
    }
    s
}
