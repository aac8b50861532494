//! A completed request and its trace context -> a span with OpenTelemetry HTTP or database
//! semantic convention attributes. Only allow-listed values leave: method, path without query,
//! route template, status, user agent, addresses and ports; for databases the normalized
//! statement (literals replaced by `?`). No other header, no body, no literal.
use std::{net::SocketAddr, sync::Arc};

use super::{
    assembler::Ctx,
    span::{Attributes, Clock, Kind, Resource, Span, Value},
};
use crate::{
    metrics::red::split_host,
    request::{DbInfo, Detail, GrpcCode, HttpInfo, Request, Side, rpc_method},
};

/// Everything about the connection a span needs.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The other end of the connection.
    pub remote: Option<SocketAddr>,
    /// This end (server side: the port it serves on).
    pub local: Option<SocketAddr>,
    /// Server side: the route template of the path.
    pub route: &'a str,
}

/// Builds the span of `req`.
pub fn span(
    req: &Request,
    ctx: &Ctx,
    peer: &Peer<'_>,
    resource: Arc<Resource>,
    clock: Clock,
) -> Span {
    match &req.detail {
        Detail::Http(http) => match http.grpc {
            Some(code) => rpc_span(req, http, code, ctx, peer, resource, clock),
            None => http_span(req, http, ctx, peer, resource, clock),
        },
        Detail::Db(db) => db_span(req, db, ctx, peer, resource, clock),
    }
}

/// A database or cache operation -> a span with the database semantic-convention attributes.
/// `db.query.text` is the parser's normalized text: literals are already `?`.
fn db_span(
    req: &Request,
    db: &DbInfo,
    ctx: &Ctx,
    peer: &Peer<'_>,
    resource: Arc<Resource>,
    clock: Clock,
) -> Span {
    let mut attributes: Attributes = Vec::with_capacity(12);
    let mut put = |k: &'static str, v: Value| attributes.push((k, v));
    put("db.system.name", Value::Str(db.system.as_str().to_owned()));
    put("db.operation.name", Value::Str(db.operation.clone()));
    if let Some(c) = &db.collection {
        put("db.collection.name", Value::Str(c.clone()));
    }
    if let Some(n) = &db.namespace {
        put("db.namespace", Value::Str(n.clone()));
    }
    if !db.query.is_empty() {
        put("db.query.text", Value::Str(db.query.clone()));
    }
    if let Some(code) = &db.status_code {
        put("db.response.status_code", Value::Str(code.clone()));
    }
    if db.error {
        put(
            "error.type",
            Value::Str(
                db.status_code
                    .clone()
                    .unwrap_or_else(|| "_OTHER".to_owned()),
            ),
        );
    }
    if let Some(remote) = peer.remote {
        put("network.peer.address", Value::Str(remote.ip().to_string()));
        put("network.peer.port", Value::Int(i64::from(remote.port())));
    }
    let server = match req.side {
        Side::Client => peer.remote,
        Side::Server => peer.local,
    };
    if let Some(server) = server {
        put("server.address", Value::Str(server.ip().to_string()));
        put("server.port", Value::Int(i64::from(server.port())));
    }
    // `{operation} {target}` per the conventions, the target being the table or namespace.
    let name = match (&db.collection, &db.namespace) {
        (Some(c), _) => format!("{} {c}", db.operation),
        (None, Some(n)) => format!("{} {n}", db.operation),
        (None, None) => db.operation.clone(),
    };
    Span {
        resource,
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent,
        trace_state: None,
        name,
        kind: Kind::from(req.side),
        start_unix_ns: clock.to_unix(req.start_ns),
        end_unix_ns: clock.to_unix(req.end_ns),
        attributes,
        error: db.error,
        links: ctx.link.into_iter().collect(),
    }
}

/// A gRPC call -> a span with the RPC semantic-convention attributes, named by its method.
/// Its HTTP/2 particulars (`:path`, status 200) say nothing the RPC attributes do not.
fn rpc_span(
    req: &Request,
    http: &HttpInfo,
    code: GrpcCode,
    ctx: &Ctx,
    peer: &Peer<'_>,
    resource: Arc<Resource>,
    clock: Clock,
) -> Span {
    let method = rpc_method(&http.path);
    let mut attributes: Attributes = Vec::with_capacity(9);
    let mut put = |k: &'static str, v: Value| attributes.push((k, v));
    put("rpc.system.name", Value::Str("grpc".to_owned()));
    put("rpc.method", Value::Str(method.to_owned()));
    put(
        "rpc.response.status_code",
        Value::Str(code.as_str().to_owned()),
    );
    let error = grpc_error_type(req.side, code);
    if let Some(kind) = error {
        put("error.type", Value::Str(kind.to_owned()));
    }
    addresses(&mut put, req.side, http, peer, false);
    Span {
        resource,
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent,
        trace_state: match req.side {
            Side::Server if http.traceparent.is_some() => http.tracestate.clone(),
            _ => None,
        },
        name: method.to_owned(),
        kind: Kind::from(req.side),
        start_unix_ns: clock.to_unix(req.start_ns),
        end_unix_ns: clock.to_unix(req.end_ns),
        attributes,
        error: error.is_some(),
        links: ctx.link.into_iter().collect(),
    }
}

/// `error.type` of a gRPC call that failed on this side, per the gRPC conventions: on a
/// client every code but OK; on a server only the codes that are its own failure (see
/// [`GrpcCode::is_server_error`]). None when it did not fail.
pub fn grpc_error_type(side: Side, code: GrpcCode) -> Option<&'static str> {
    let failed = match side {
        Side::Client => code != GrpcCode::OK,
        Side::Server => code.is_server_error(),
    };
    failed.then(|| code.as_str())
}

/// The addresses of an HTTP or gRPC span: the peer's, and the server's (client side: from
/// the Host header or `:authority`, port 80 when it names none, else the peer address; server
/// side: the port served on, and the client's address when `client_address`).
fn addresses(
    put: &mut impl FnMut(&'static str, Value),
    side: Side,
    http: &HttpInfo,
    peer: &Peer<'_>,
    client_address: bool,
) {
    if let Some(remote) = peer.remote {
        put("network.peer.address", Value::Str(remote.ip().to_string()));
        put("network.peer.port", Value::Int(i64::from(remote.port())));
    }
    match side {
        Side::Server => {
            if let Some(remote) = peer.remote.filter(|_| client_address) {
                put("client.address", Value::Str(remote.ip().to_string()));
            }
            if let Some(local) = peer.local {
                put("server.port", Value::Int(i64::from(local.port())));
            }
        }
        Side::Client => match http.host.as_deref().map(split_host) {
            Some((host, port)) => {
                put("server.address", Value::Str(host.to_owned()));
                put("server.port", Value::Int(i64::from(port.unwrap_or(80))));
            }
            None => {
                if let Some(remote) = peer.remote {
                    put("server.address", Value::Str(remote.ip().to_string()));
                    put("server.port", Value::Int(i64::from(remote.port())));
                }
            }
        },
    }
}

/// An HTTP exchange -> a span with the HTTP semantic-convention attributes.
fn http_span(
    req: &Request,
    http: &HttpInfo,
    ctx: &Ctx,
    peer: &Peer<'_>,
    resource: Arc<Resource>,
    clock: Clock,
) -> Span {
    let method = http.method.as_str();
    let mut attributes: Attributes = Vec::with_capacity(12);
    let mut put = |k: &'static str, v: Value| attributes.push((k, v));
    put("http.request.method", Value::Str(method.to_owned()));
    put("http.route", Value::Str(peer.route.to_owned()));
    put("url.path", Value::Str(http.path.clone()));
    put("url.scheme", Value::Str("http".to_owned()));
    if http.status != 0 {
        put(
            "http.response.status_code",
            Value::Int(i64::from(http.status)),
        );
    }
    put(
        "network.protocol.version",
        Value::Str(http.version.as_str().to_owned()),
    );
    if let Some(ua) = &http.user_agent {
        put("user_agent.original", Value::Str(ua.clone()));
    }
    addresses(&mut put, req.side, http, peer, true);
    let error = is_error(req.side, http.status);
    if let Some(kind) = error_type(req.side, http.status) {
        put("error.type", Value::Str(kind));
    }
    Span {
        resource,
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent,
        // A server joining its caller's trace keeps the caller's vendor state.
        trace_state: match req.side {
            Side::Server if http.traceparent.is_some() => http.tracestate.clone(),
            _ => None,
        },
        name: format!("{method} {}", peer.route),
        kind: Kind::from(req.side),
        start_unix_ns: clock.to_unix(req.start_ns),
        end_unix_ns: clock.to_unix(req.end_ns),
        attributes,
        error,
        links: ctx.link.into_iter().collect(),
    }
}

/// `error.type` of a failed exchange: its status code, or `_OTHER` when no response came
/// (the semantic conventions' fallback). None when it did not fail.
pub fn error_type(side: Side, status: u16) -> Option<String> {
    match status {
        0 => Some("_OTHER".to_owned()),
        s if is_error(side, s) => Some(s.to_string()),
        _ => None,
    }
}

/// Status ERROR: 5xx on a server (its own failure), any 4xx/5xx on a client (the call
/// failed), per the HTTP semantic conventions; no response at all is an error too.
pub fn is_error(side: Side, status: u16) -> bool {
    match side {
        Side::Server => status >= 500 || status == 0,
        Side::Client => status >= 400 || status == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_follow_the_side() {
        assert_eq!(error_type(Side::Server, 503).as_deref(), Some("503"));
        assert_eq!(error_type(Side::Server, 404), None);
        assert_eq!(error_type(Side::Client, 404).as_deref(), Some("404"));
        assert_eq!(error_type(Side::Client, 200), None);
        // No response at all: the semantic conventions' fallback, not "0".
        assert_eq!(error_type(Side::Server, 0).as_deref(), Some("_OTHER"));
    }

    #[test]
    fn grpc_errors_follow_the_side() {
        let not_found = GrpcCode(5);
        assert_eq!(grpc_error_type(Side::Client, not_found), Some("NOT_FOUND"));
        assert_eq!(grpc_error_type(Side::Server, not_found), None);
        assert_eq!(
            grpc_error_type(Side::Server, GrpcCode(13)),
            Some("INTERNAL")
        );
        assert_eq!(grpc_error_type(Side::Client, GrpcCode::OK), None);
        assert_eq!(grpc_error_type(Side::Server, GrpcCode::OK), None);
    }
}
