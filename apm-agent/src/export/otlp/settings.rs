//! OTLP settings from the configuration: endpoints per signal, protocol, headers, timeout,
//! following the `OTEL_EXPORTER_OTLP_*` rules (a base endpoint gets `/v1/traces` and
//! `/v1/metrics` appended for HTTP; signal endpoints are used as they are).
use std::time::Duration;

use super::transport::Protocol;
use crate::{
    config::{Config, ConfigError},
    discovery::resource::parse_resource_attributes,
    metrics::otel::{Aggregation, OtelConfig, Temporality},
};

/// A cumulative series idle for this many export intervals is no longer reported.
const STALE_INTERVALS: u32 = 10;

/// The OTLP metrics aggregation settings: temporality (`cumulative`, `delta`; the OTel names
/// of `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` too) and histogram kind
/// (`exponential`, `explicit`; or the `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`
/// names).
pub fn metrics_config(cfg: &Config) -> Result<OtelConfig, ConfigError> {
    let temporality = match cfg.metrics_temporality.trim().to_ascii_lowercase().as_str() {
        "cumulative" => Temporality::Cumulative,
        // `lowmemory` is delta for synchronous histograms, the only instruments here.
        "delta" | "lowmemory" => Temporality::Delta,
        other => {
            return Err(ConfigError::Invalid {
                key: "metrics_temporality",
                reason: format!("{other:?}: use cumulative or delta"),
            });
        }
    };
    let aggregation = match cfg.metrics_histogram.trim().to_ascii_lowercase().as_str() {
        "exponential" | "base2_exponential_bucket_histogram" => Aggregation::Exponential,
        "explicit" | "explicit_bucket_histogram" => Aggregation::Explicit,
        other => {
            return Err(ConfigError::Invalid {
                key: "metrics_histogram",
                reason: format!("{other:?}: use exponential or explicit"),
            });
        }
    };
    Ok(OtelConfig {
        temporality,
        aggregation,
        max_series: cfg.max_series,
        stale_collections: STALE_INTERVALS,
    })
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    pub traces_url: Option<String>,
    pub metrics_url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), read at start-up.
    pub ca_pem: Option<Vec<u8>>,
}

impl Settings {
    /// None when no endpoint is configured (no export at all).
    pub fn from_config(cfg: &Config) -> Result<Option<Self>, ConfigError> {
        let protocol = match cfg.otlp_protocol.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(ConfigError::Invalid {
                    key: "otlp_protocol",
                    reason: format!("{other:?}: use http/protobuf or grpc"),
                });
            }
        };
        let signal = |specific: &Option<String>, path: &str| -> Option<String> {
            let nonempty = |s: &String| !s.trim().is_empty();
            match (
                specific.as_ref().filter(|s| nonempty(s)),
                cfg.otlp_endpoint.as_ref().filter(|s| nonempty(s)),
            ) {
                (Some(url), _) => Some(url.trim().to_owned()),
                (None, Some(base)) => Some(match protocol {
                    Protocol::Grpc => base.trim().to_owned(),
                    Protocol::HttpProtobuf => {
                        format!("{}/{path}", base.trim().trim_end_matches('/'))
                    }
                }),
                (None, None) => None,
            }
        };
        let traces_url = signal(&cfg.otlp_traces_endpoint, "v1/traces");
        let metrics_url = signal(&cfg.otlp_metrics_endpoint, "v1/metrics");
        if traces_url.is_none() && metrics_url.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            protocol,
            traces_url,
            metrics_url,
            headers: cfg
                .otlp_headers
                .as_deref()
                .map(parse_resource_attributes)
                .unwrap_or_default(),
            timeout: Duration::from_millis(cfg.otlp_timeout_ms.max(1)),
            ca_pem: match &cfg.otlp_certificate {
                Some(path) => Some(std::fs::read(path).map_err(|e| ConfigError::Invalid {
                    key: "otlp_certificate",
                    reason: format!("{}: {e}", path.display()),
                })?),
                None => None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_otel_rules() {
        let mut cfg = Config::default();
        assert!(
            Settings::from_config(&cfg).expect("valid").is_none(),
            "no endpoint, no export"
        );
        cfg.otlp_endpoint = Some("http://collector:4318/".to_owned());
        cfg.otlp_headers = Some("x-api-key=abc%3D,tenant=t1".to_owned());
        let s = Settings::from_config(&cfg).expect("valid").expect("export");
        assert_eq!(
            s.traces_url.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            s.metrics_url.as_deref(),
            Some("http://collector:4318/v1/metrics")
        );
        assert_eq!(s.headers[0], ("x-api-key".to_owned(), "abc=".to_owned()));
        cfg.otlp_protocol = "grpc".to_owned();
        cfg.otlp_traces_endpoint = Some("http://other:4317".to_owned());
        let s = Settings::from_config(&cfg).expect("valid").expect("export");
        assert_eq!(s.traces_url.as_deref(), Some("http://other:4317"));
        assert_eq!(s.metrics_url.as_deref(), Some("http://collector:4318/"));
        cfg.otlp_protocol = "thrift".to_owned();
        assert!(Settings::from_config(&cfg).is_err());
    }

    #[test]
    fn metric_options_accept_otel_names() {
        let mut cfg = Config::default();
        let m = metrics_config(&cfg).expect("defaults");
        assert_eq!(
            (m.temporality, m.aggregation),
            (Temporality::Cumulative, Aggregation::Exponential)
        );
        cfg.metrics_temporality = "Delta".to_owned();
        cfg.metrics_histogram = "explicit_bucket_histogram".to_owned();
        let m = metrics_config(&cfg).expect("valid");
        assert_eq!(
            (m.temporality, m.aggregation),
            (Temporality::Delta, Aggregation::Explicit)
        );
        cfg.metrics_histogram = "summary".to_owned();
        assert!(metrics_config(&cfg).is_err());
    }
}
