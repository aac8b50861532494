//! `Request`: one completed exchange, the one currency downstream of the protocol parsers.
//!
//! Parsers fill the protocol part; the pipeline adds the process and connection context.
//! Nothing here knows about eBPF.

/// Which protocol produced a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Postgres,
    Mysql,
    Redis,
    Memcached,
}

impl Protocol {
    /// Every protocol, in [`Protocol::index`] order.
    pub const ALL: [Self; 6] = [
        Self::Http1,
        Self::Http2,
        Self::Postgres,
        Self::Mysql,
        Self::Redis,
        Self::Memcached,
    ];

    /// Position in [`Protocol::ALL`] (per-protocol counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label value of the agent's own per-protocol metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Postgres => "postgresql",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
            Self::Memcached => "memcached",
        }
    }
}

/// Which end of the exchange the observed process was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// HTTP request methods, per the OpenTelemetry convention: the well-known ones by name, every
/// other token as `_OTHER` (so a client cannot invent label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn parse(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "CONNECT" => Self::Connect,
            "OPTIONS" => Self::Options,
            "TRACE" => Self::Trace,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "_OTHER",
        }
    }
}

/// HTTP version of an exchange (`network.protocol.version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

impl HttpVersion {
    /// HTTP/1.x by its minor version: `0` is 1.0, anything else is read as 1.1.
    pub fn http1(minor: u8) -> Self {
        if minor == 0 {
            Self::Http10
        } else {
            Self::Http11
        }
    }

    /// The value of `network.protocol.version`, as the OpenTelemetry conventions spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "1.0",
            Self::Http11 => "1.1",
            Self::Http2 => "2",
        }
    }
}

/// How far a request record can be trusted: bits that say what had to be inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trust(u8);

impl Trust {
    /// A message head was longer than the captured bytes: only its first part was parsed.
    pub const HEAD_TRUNCATED: Self = Self(1);
    /// The response's end could not be found from its framing and was taken from the last
    /// bytes seen before the next request, the close, or an idle timeout.
    pub const END_INFERRED: Self = Self(2);

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

/// A W3C `traceparent` header: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses `version-traceid-parentid-flags` (version 00, or a later one read as 00, per
    /// the W3C rules). All-zero ids and malformed values are rejected.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = std::str::from_utf8(value).ok()?.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex_into(trace, &mut trace_id)?;
        hex_into(span, &mut span_id)?;
        let mut f = [0u8; 1];
        hex_into(flags, &mut f)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: f[0],
        })
    }
}

/// Lower-case hex of exactly `out.len()` bytes.
fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(())
}

/// A gRPC status code (`grpc-status`), as the OpenTelemetry RPC conventions name it in
/// `rpc.response.status_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcCode(pub u8);

impl GrpcCode {
    pub const OK: Self = Self(0);
    pub const UNKNOWN: Self = Self(2);
    /// Names of the codes 0..=16 (gRPC's `statuscodes.md`).
    const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// A `grpc-status` value: a decimal code; codes past 16 are kept as `_OTHER`.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(value).ok()?;
        if s.is_empty() || s.len() > 3 {
            return None;
        }
        s.parse::<u16>()
            .ok()
            .map(|c| Self(u8::try_from(c).unwrap_or(u8::MAX)))
    }

    /// What a client makes of a response without `grpc-status` (gRPC's
    /// `http-grpc-status-mapping.md`): the code its HTTP status maps to.
    pub fn from_http_status(status: u16) -> Self {
        Self(match status {
            400 => 13,             // INTERNAL
            401 => 16,             // UNAUTHENTICATED
            403 => 7,              // PERMISSION_DENIED
            404 => 12,             // UNIMPLEMENTED
            429 | 502..=504 => 14, // UNAVAILABLE
            _ => 2,                // UNKNOWN
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("_OTHER")
    }

    /// The codes the conventions count as a server's own failure (UNKNOWN,
    /// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); every other
    /// non-OK code is the caller's (a client span is an error for every non-OK code).
    pub fn is_server_error(self) -> bool {
        matches!(self.0, 2 | 4 | 12 | 13 | 14 | 15)
    }

    /// The HTTP status class the call counts in for RED (errors split 4xx / 5xx, Apdex):
    /// 200 for OK, 500 for a server's failure, 400 for every other code.
    pub fn http_class(self) -> u16 {
        match self {
            Self::OK => 200,
            c if c.is_server_error() => 500,
            _ => 400,
        }
    }
}

/// `rpc.method` of a gRPC call from its `:path` (`/package.Service/Method`): the path
/// without its leading slash.
pub fn rpc_method(path: &str) -> &str {
    path.strip_prefix('/').unwrap_or(path)
}

/// The HTTP part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpInfo {
    pub method: Method,
    /// Request target path, without query string or fragment (their values never leave the
    /// parser), truncated to a bounded length.
    pub path: String,
    pub status: u16,
    /// HTTP/1.0, HTTP/1.1 or HTTP/2.
    pub version: HttpVersion,
    /// `Host` header (client side: it names the server, `server.address`/`server.port`).
    pub host: Option<String>,
    /// `User-Agent` header (allow-listed: `user_agent.original`), bounded.
    pub user_agent: Option<String>,
    /// W3C trace context the request carried.
    pub traceparent: Option<TraceParent>,
    /// `tracestate` kept with it, bounded.
    pub tracestate: Option<String>,
    /// A gRPC call (HTTP/2 with `content-type: application/grpc...`): its status, from the
    /// `grpc-status` of the trailers (or of a trailers-only response), else what the HTTP
    /// status maps to. `path` is then `/package.Service/Method`.
    pub grpc: Option<GrpcCode>,
}

/// Database systems, named as `db.system.name` values of the OpenTelemetry conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DbSystem {
    Postgresql,
    Mysql,
    Mariadb,
    Redis,
    Memcached,
}

impl DbSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
            Self::Redis => "redis",
            Self::Memcached => "memcached",
        }
    }
}

/// The database part of a request: one operation (a statement, a command) and its outcome.
///
/// Parsers fill it with values that are safe to export: `query` is already normalized
/// (literals replaced by `?`), never raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbInfo {
    pub system: DbSystem,
    /// `db.operation.name`: the SQL keyword or the Redis command upper-case, the memcached
    /// command as the protocol spells it (lower-case), bounded (`_OTHER` when it is not a
    /// word).
    pub operation: String,
    /// `db.query.text`: the normalized statement (SQL literals -> `?`, IN-lists collapsed;
    /// cache commands with their arguments replaced by `?`), bounded.
    pub query: String,
    /// `db.collection.name`: the one table the statement names, if exactly one.
    pub collection: Option<String>,
    /// `db.namespace`: the database (PostgreSQL/MySQL database name, Redis database index)
    /// when the connection's start or a `USE`/`SELECT` was seen.
    pub namespace: Option<String>,
    /// `db.response.status_code`: SQLSTATE, MySQL error number or Redis error prefix, when
    /// the operation failed.
    pub status_code: Option<String>,
    /// The operation failed (an error response).
    pub error: bool,
}

/// One completed exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub protocol: Protocol,
    pub side: Side,
    /// Kernel monotonic clock, taken when syscalls returned. Server side: from the read that
    /// brought the request's first bytes to the write that sent the response's last bytes.
    /// Client side: from the write that sent the request's first bytes to the read that
    /// brought the response's last bytes.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Thread that read the request (server) or wrote it (client).
    pub tid: u32,
    /// Index of this request on its connection (0 for the first one observed): pairs the two
    /// ends of a same-host connection, the n-th request of one with the n-th of the other.
    pub seq: u64,
    pub trust: Trust,
    /// What the protocol says about the exchange.
    pub detail: Detail,
}

/// The protocol-specific part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    Http(HttpInfo),
    Db(DbInfo),
}

/// A request whose head was just parsed: reported before it completes, so that its span
/// exists when the calls it makes (and the servers they reach) are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub side: Side,
    pub seq: u64,
    pub tid: u32,
    pub start_ns: u64,
    pub traceparent: Option<TraceParent>,
}

impl Request {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// The HTTP part, for HTTP exchanges.
    #[cfg(test)]
    pub fn http(&self) -> Option<&HttpInfo> {
        match &self.detail {
            Detail::Http(h) => Some(h),
            Detail::Db(_) => None,
        }
    }

    /// The database part, for database and cache exchanges.
    #[cfg(test)]
    pub fn db(&self) -> Option<&DbInfo> {
        match &self.detail {
            Detail::Db(d) => Some(d),
            Detail::Http(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes() {
        assert_eq!(GrpcCode::parse(b"0"), Some(GrpcCode::OK));
        assert_eq!(
            GrpcCode::parse(b"5").map(GrpcCode::as_str),
            Some("NOT_FOUND")
        );
        assert_eq!(
            GrpcCode::parse(b"16").map(GrpcCode::as_str),
            Some("UNAUTHENTICATED")
        );
        assert_eq!(GrpcCode::parse(b"99").map(GrpcCode::as_str), Some("_OTHER"));
        assert_eq!(
            GrpcCode::parse(b"999").map(GrpcCode::as_str),
            Some("_OTHER")
        );
        for bad in [&b""[..], b"-1", b"1234", b"x", b"\xff"] {
            assert_eq!(GrpcCode::parse(bad), None);
        }
        assert_eq!(GrpcCode(5).http_class(), 400);
        assert_eq!(GrpcCode(13).http_class(), 500);
        assert_eq!(GrpcCode::OK.http_class(), 200);
        assert_eq!(GrpcCode::from_http_status(404).as_str(), "UNIMPLEMENTED");
        assert_eq!(GrpcCode::from_http_status(200), GrpcCode::UNKNOWN);
    }

    #[test]
    fn traceparent_parsing() {
        let tp = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let tp = tp.expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert_eq!(tp.flags & 1, 1);
        // A later version with extra fields is read as version 00.
        assert!(
            TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"garbage",
            b"\xff\xfe",
        ] {
            assert!(
                TraceParent::parse(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
