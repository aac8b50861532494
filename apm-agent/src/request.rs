//! `Request`: one completed exchange, the one currency downstream of the protocol parsers.
//!
//! Parsers fill the protocol part; the pipeline adds the process and connection context.
//! Nothing here knows about eBPF.

/// Which protocol produced a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
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

/// The HTTP part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpInfo {
    pub method: Method,
    /// Request target path, without query string or fragment (their values never leave the
    /// parser), truncated to a bounded length.
    pub path: String,
    pub status: u16,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    /// `Host` header (client side: it names the server, `server.address`/`server.port`).
    pub host: Option<String>,
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
    /// Thread that handled the request (server) or sent it (client).
    pub tid: u32,
    pub trust: Trust,
    pub http: HttpInfo,
}

impl Request {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}
