//! Sending encoded OTLP requests: gRPC (tonic) or HTTP/protobuf (hyper), plain or TLS
//! (rustls; the system's roots plus an optional CA file), with the configured headers and
//! timeout. Failures say whether a retry may help.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
    trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
};
use prost::Message;

use super::settings::{Protocol, Settings};

/// The HTTP client: `http://` and `https://` alike.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// OTLP over HTTP: protobuf bodies.
const PROTOBUF: &str = "application/x-protobuf";

/// An export attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("endpoint unreachable or slow: {0}")]
    Unreachable(String),
    #[error("endpoint answered {status}: {message}")]
    Rejected {
        status: String,
        message: String,
        retryable: bool,
    },
}

impl SendError {
    /// Worth trying again later (network trouble, overload), as the OTLP spec lists.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Endpoint(..) => false,
            Self::Unreachable(_) => true,
            Self::Rejected { retryable, .. } => *retryable,
        }
    }
}

/// One signal's destination.
#[derive(Debug, Clone)]
pub struct Transport {
    kind: Kind,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Kind {
    Grpc {
        endpoint: Box<tonic::transport::Endpoint>,
        /// Replaced by a fresh one when an attempt times out (see [`grpc_done`]).
        channel: Arc<Mutex<tonic::transport::Channel>>,
    },
    Http {
        client: Box<HttpClient>,
        url: hyper::Uri,
    },
}

impl Transport {
    /// A transport to `url` (for HTTP, the full signal URL: `.../v1/traces`). Connects lazily:
    /// an endpoint that is down at start-up is retried like any other failure.
    pub fn new(settings: &Settings, url: &str) -> Result<Self, SendError> {
        let bad = |e: &dyn std::fmt::Display| SendError::Endpoint(url.to_owned(), e.to_string());
        let timeout = settings.timeout;
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&e))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad(&"use an http:// or https:// URL")),
        };
        let kind = match settings.protocol {
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
                    .map_err(|e| bad(&e))?
                    .timeout(timeout)
                    .connect_timeout(timeout);
                if tls {
                    let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = &settings.ca_pem {
                        config = config
                            .ca_certificate(tonic::transport::Certificate::from_pem(pem.clone()));
                    }
                    endpoint = endpoint.tls_config(config).map_err(|e| bad(&e))?;
                }
                Kind::Grpc {
                    channel: Arc::new(Mutex::new(endpoint.connect_lazy())),
                    endpoint: Box::new(endpoint),
                }
            }
            Protocol::HttpProtobuf => {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(timeout));
                http.enforce_http(false);
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config(settings.ca_pem.as_deref()).map_err(|e| bad(&e))?)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
                Kind::Http {
                    client: Box::new(client),
                    url: uri,
                }
            }
        };
        Ok(Self {
            kind,
            headers: settings.headers.clone(),
            timeout,
        })
    }

    pub async fn send_traces(&self, req: ExportTraceServiceRequest) -> Result<(), SendError> {
        match &self.kind {
            Kind::Grpc { endpoint, channel } => {
                let mut client = TraceServiceClient::new(current(channel));
                let result = client.export(self.grpc_request(req)).await.map(drop);
                grpc_done(endpoint, channel, result)
            }
            Kind::Http { client, url } => {
                self.post(client, url, PROTOBUF, req.encode_to_vec()).await
            }
        }
    }

    pub async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), SendError> {
        match &self.kind {
            Kind::Grpc { endpoint, channel } => {
                let mut client = MetricsServiceClient::new(current(channel));
                let result = client.export(self.grpc_request(req)).await.map(drop);
                grpc_done(endpoint, channel, result)
            }
            Kind::Http { client, url } => {
                self.post(client, url, PROTOBUF, req.encode_to_vec()).await
            }
        }
    }

    /// Posts a JSON document (the alert webhook); only over HTTP.
    pub async fn send_json(&self, body: Vec<u8>) -> Result<(), SendError> {
        match &self.kind {
            Kind::Http { client, url } => self.post(client, url, "application/json", body).await,
            Kind::Grpc { endpoint, .. } => Err(SendError::Endpoint(
                endpoint.uri().to_string(),
                "JSON is posted over HTTP only".to_owned(),
            )),
        }
    }

    fn grpc_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                v.parse(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        req.set_timeout(self.timeout);
        req
    }

    async fn post(
        &self,
        client: &HttpClient,
        url: &hyper::Uri,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let mut builder = hyper::Request::post(url.clone()).header("content-type", content_type);
        for (k, v) in &self.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Endpoint(url.to_string(), e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, client.request(req))
            .await
            .map_err(|_| SendError::Unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| SendError::Unreachable(chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            // Drain the body so the connection can be reused.
            let _ = tokio::time::timeout(self.timeout, resp.into_body().collect()).await;
            return Ok(());
        }
        Err(SendError::Rejected {
            status: status.as_u16().to_string(),
            message: status.canonical_reason().unwrap_or("").to_owned(),
            retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
        })
    }
}

fn current(channel: &Mutex<tonic::transport::Channel>) -> tonic::transport::Channel {
    channel.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The outcome of a gRPC attempt. One that timed out gives its connection up, as the HTTP
/// client does: a channel reuses its connection for as long as the peer keeps it open, so
/// an endpoint that accepts but stopped answering (hung, or a dead peer behind a proxy) would
/// time every later attempt out, even once a fresh connection would be answered.
fn grpc_done(
    endpoint: &tonic::transport::Endpoint,
    channel: &Mutex<tonic::transport::Channel>,
    result: Result<(), tonic::Status>,
) -> Result<(), SendError> {
    if let Err(status) = &result
        && matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        )
    {
        *channel.lock().unwrap_or_else(|e| e.into_inner()) = endpoint.connect_lazy();
    }
    result.map_err(grpc_error)
}

/// An error with its causes (hyper's own message hides them: "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// rustls client settings: the system's trusted roots, plus the certificates of `ca_pem`.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CA certificate file: {e}"))?;
        if certs.is_empty() {
            return Err("CA certificate file holds no PEM certificate".to_owned());
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA certificate file: {e}"))?;
        }
    } else if added == 0 {
        log::warn!("no system CA certificates found: https:// endpoints will not verify");
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn grpc_error(status: tonic::Status) -> SendError {
    use tonic::Code;
    let retryable = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    );
    if status.code() == Code::Unavailable {
        return SendError::Unreachable(status.message().to_owned());
    }
    SendError::Rejected {
        status: format!("{:?}", status.code()),
        message: status.message().to_owned(),
        retryable,
    }
}
