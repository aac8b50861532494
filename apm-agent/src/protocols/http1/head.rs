//! Parsing of one HTTP/1.x message head (start line + headers) with `httparse`.

/// Headers parsed per message; a head with more is treated as truncated (its start line and
/// the headers that fit are still used).
const MAX_HEADERS: usize = 64;

/// Request or response: which start line to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Response,
}

/// What the agent needs from a head. Borrowed from the bytes it was parsed from.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Head<'a> {
    pub method: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: u16,
    pub version_minor: u8,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    pub host: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub traceparent: Option<&'a [u8]>,
    pub tracestate: Option<&'a [u8]>,
    /// `Upgrade` names `h2c`: a request asking for cleartext HTTP/2, or the 101 that grants it.
    pub upgrade_h2c: bool,
}

/// Outcome of parsing the bytes available so far.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A full head of `len` bytes.
    Complete { head: Head<'a>, len: usize },
    /// The head goes on in bytes not seen yet.
    Partial,
    /// Only part of the head could be read (it runs past the capture or has too many
    /// headers): its start line is usable, its framing is not.
    Truncated(Head<'a>),
    /// Not an HTTP/1.x head.
    Invalid,
}

/// Parses `buf` as a head of `kind`. `more_invisible` says the bytes after `buf` exist but
/// were not captured, so a partial head can never be completed.
pub(crate) fn parse(kind: Kind, buf: &[u8], more_invisible: bool) -> Parsed<'_> {
    if let Some(complete) = parse_complete(kind, buf) {
        return complete;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = Head::default();
    let result = match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(&mut headers);
            let r = req.parse(buf);
            head.method = req.method;
            head.target = req.path;
            head.version_minor = req.version.unwrap_or(1);
            fill_headers(&mut head, req.headers);
            r
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(&mut headers);
            let r = resp.parse(buf);
            head.status = resp.code.unwrap_or(0);
            head.version_minor = resp.version.unwrap_or(1);
            fill_headers(&mut head, resp.headers);
            r
        }
    };
    let start_line_known = match kind {
        Kind::Request => head.method.is_some() && head.target.is_some(),
        Kind::Response => head.status != 0,
    };
    match result {
        Ok(httparse::Status::Complete(len)) => Parsed::Complete { head, len },
        Ok(httparse::Status::Partial) if !more_invisible => Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders)
            if start_line_known =>
        {
            Parsed::Truncated(head)
        }
        Ok(httparse::Status::Partial) => Parsed::Invalid,
        Err(_) => Parsed::Invalid,
    }
}

/// The common case, a head complete in the bytes at hand, parsed into headers left
/// uninitialised: filling [`MAX_HEADERS`] empty ones first is a 2 KiB write per message
/// (6.6% of the agent's CPU with nginx under wrk). Any other outcome returns `None`, and
/// [`parse`] parses again into initialised headers, whose entries stay readable when the
/// head is cut short (a truncated head still gives its `Host` and `traceparent`).
fn parse_complete(kind: Kind, buf: &[u8]) -> Option<Parsed<'_>> {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let config = httparse::ParserConfig::default();
    let mut head = Head::default();
    let len = match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(&mut []);
            let status = req.parse_with_uninit_headers(buf, &mut headers);
            let httparse::Status::Complete(len) = status.ok()? else {
                return None;
            };
            head.method = req.method;
            head.target = req.path;
            head.version_minor = req.version.unwrap_or(1);
            fill_headers(&mut head, req.headers);
            len
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(&mut []);
            let status = config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers);
            let httparse::Status::Complete(len) = status.ok()? else {
                return None;
            };
            head.status = resp.code.unwrap_or(0);
            head.version_minor = resp.version.unwrap_or(1);
            fill_headers(&mut head, resp.headers);
            len
        }
    };
    Some(Parsed::Complete { head, len })
}

/// Picks the headers the agent reads. Names are told apart by their length first: most
/// headers of a message are none of these, and a length compare rejects them without the
/// case-insensitive compares.
fn fill_headers<'a>(head: &mut Head<'a>, headers: &[httparse::Header<'a>]) {
    for h in headers {
        let name = h.name.as_bytes();
        match name.len() {
            0 => break,
            4 if name.eq_ignore_ascii_case(b"host") => head.host = Some(h.value),
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                head.upgrade_h2c = h
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                head.connection_close = h
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            10 if name.eq_ignore_ascii_case(b"user-agent") => head.user_agent = Some(h.value),
            10 if name.eq_ignore_ascii_case(b"tracestate") => head.tracestate = Some(h.value),
            11 if name.eq_ignore_ascii_case(b"traceparent") => head.traceparent = Some(h.value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                head.content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                // chunked must be the final coding to delimit the body.
                head.chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
}

/// Request methods accepted at the start of a connection or after lost framing: the
/// registered ones only, so that random text is not taken for HTTP.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const RESPONSE_START: &[u8] = b"HTTP/1.";

/// Is `data` too short to tell, yet a prefix of some start line (`GE`, `HTTP/`)?
pub(crate) fn could_start(data: &[u8]) -> bool {
    !data.is_empty()
        && METHODS
            .iter()
            .chain(std::iter::once(&RESPONSE_START))
            .any(|s| data.len() < s.len() && s.starts_with(data))
}

/// Does `data` start with a registered method and stop inside the request line, before its
/// target ended (`GET `, `GET /users/`)? A client writing its head in pieces sends that
/// first; the next bytes tell.
pub(crate) fn partial_request_line(data: &[u8]) -> bool {
    METHODS.iter().any(|m| data.starts_with(m))
        && matches!(parse(Kind::Request, data, false), Parsed::Partial)
}

/// Does `data` start like a message of `kind`? Used to find the next message after the
/// framing was lost, and for protocol detection.
pub(crate) fn looks_like_start(kind: Kind, data: &[u8]) -> bool {
    match kind {
        Kind::Response => data.starts_with(b"HTTP/1.1 ") || data.starts_with(b"HTTP/1.0 "),
        Kind::Request => {
            METHODS.iter().any(|m| data.starts_with(m))
                && !matches!(parse(Kind::Request, data, true), Parsed::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_request_head() {
        let buf = b"POST /a?q=1 HTTP/1.1\r\nHost: x:8080\r\nContent-Length: 12\r\n\r\nbody";
        let Parsed::Complete { head, len } = parse(Kind::Request, buf, false) else {
            panic!("not complete");
        };
        assert_eq!(len, buf.len() - 4);
        assert_eq!(head.method, Some("POST"));
        assert_eq!(head.target, Some("/a?q=1"));
        assert_eq!(head.content_length, Some(12));
        assert_eq!(head.host, Some(&b"x:8080"[..]));
        assert!(!head.chunked);
    }

    #[test]
    fn response_head_flags() {
        let buf =
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n";
        let Parsed::Complete { head, .. } = parse(Kind::Response, buf, false) else {
            panic!("not complete");
        };
        assert_eq!(head.status, 200);
        assert_eq!(head.version_minor, 0);
        assert!(head.chunked);
        assert!(head.connection_close);
    }

    #[test]
    fn partial_vs_truncated() {
        let buf = b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: abc";
        assert!(matches!(parse(Kind::Request, buf, false), Parsed::Partial));
        let Parsed::Truncated(head) = parse(Kind::Request, buf, true) else {
            panic!("not truncated");
        };
        assert_eq!(head.target, Some("/x"));
        assert!(matches!(
            parse(Kind::Request, b"GET /x", true),
            Parsed::Invalid
        ));
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            parse(Kind::Request, b"\x16\x03\x01\x02\x00", false),
            Parsed::Invalid
        ));
        assert!(matches!(
            parse(Kind::Response, b"SSH-2.0-OpenSSH\r\n", false),
            Parsed::Invalid
        ));
        assert!(!looks_like_start(Kind::Request, b"GETTING STARTED"));
        assert!(!looks_like_start(Kind::Request, b"GET \x00\x01"));
        assert!(looks_like_start(Kind::Request, b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_start(
            Kind::Response,
            b"HTTP/1.1 404 Not Found\r\n"
        ));
    }
}
