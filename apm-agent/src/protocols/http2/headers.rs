//! What the agent reads from a header block ([`Fields`]: an allow-list, bounded), and the
//! HPACK integer shared by the decoders (`hpack.rs`, `partial_table.rs`).
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
    /// The block named entries of an unknown table: the fields above are those that could be
    /// read, and any header may be missing (see `Conn::usable`).
    pub unknown: bool,
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
