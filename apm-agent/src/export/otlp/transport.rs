//! Sending encoded OTLP requests: gRPC (tonic) or HTTP/protobuf (hyper), with the configured
//! headers and timeout. Failures say whether a retry may help.
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
    trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
};
use prost::Message;

/// Which wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

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
    Grpc(tonic::transport::Channel),
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        url: hyper::Uri,
    },
}

impl Transport {
    /// A transport to `url` (for HTTP, the full signal URL: `.../v1/traces`). Connects lazily:
    /// an endpoint that is down at start-up is retried like any other failure.
    pub fn new(
        protocol: Protocol,
        url: &str,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Self, SendError> {
        let bad = |e: &dyn std::fmt::Display| SendError::Endpoint(url.to_owned(), e.to_string());
        let kind = match protocol {
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
                    .map_err(|e| bad(&e))?
                    .timeout(timeout)
                    .connect_timeout(timeout);
                Kind::Grpc(endpoint.connect_lazy())
            }
            Protocol::HttpProtobuf => {
                let url: hyper::Uri = url.parse().map_err(|e| bad(&e))?;
                if url.scheme_str() != Some("http") {
                    return Err(bad(&"only http:// endpoints are supported (no TLS yet)"));
                }
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(timeout));
                let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
                Kind::Http {
                    client: Box::new(client),
                    url,
                }
            }
        };
        Ok(Self {
            kind,
            headers,
            timeout,
        })
    }

    pub async fn send_traces(&self, req: ExportTraceServiceRequest) -> Result<(), SendError> {
        match &self.kind {
            Kind::Grpc(channel) => {
                let mut client = TraceServiceClient::new(channel.clone());
                client
                    .export(self.grpc_request(req))
                    .await
                    .map(drop)
                    .map_err(grpc_error)
            }
            Kind::Http { client, url } => self.post(client, url, req.encode_to_vec()).await,
        }
    }

    pub async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), SendError> {
        match &self.kind {
            Kind::Grpc(channel) => {
                let mut client = MetricsServiceClient::new(channel.clone());
                client
                    .export(self.grpc_request(req))
                    .await
                    .map(drop)
                    .map_err(grpc_error)
            }
            Kind::Http { client, url } => self.post(client, url, req.encode_to_vec()).await,
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
        client: &Client<HttpConnector, Full<Bytes>>,
        url: &hyper::Uri,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let mut builder =
            hyper::Request::post(url.clone()).header("content-type", "application/x-protobuf");
        for (k, v) in &self.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Endpoint(url.to_string(), e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, client.request(req))
            .await
            .map_err(|_| SendError::Unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
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
