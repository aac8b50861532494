//! The OTLP strings of the configuration parsed into typed values: the export settings
//! (`OTEL_EXPORTER_OTLP_*` rules: a base endpoint gets `/v1/traces` and `/v1/metrics` appended
//! for HTTP; signal endpoints are used as they are), the metrics aggregation and the trace
//! sampler.
use std::time::Duration;

use super::{Config, ConfigError};
use crate::{
    discovery::resource::parse_resource_attributes,
    export::otlp::settings::{Protocol, STALE_INTERVALS, Settings},
    metrics::otel::{Aggregation, OtelConfig, Temporality},
    traces::sampling::TraceSampler,
};

fn invalid(key: &'static str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        allowed: allowed.to_owned(),
    }
}

/// The OTLP metrics aggregation settings: temporality (`cumulative`, `delta`; the OTel names
/// of `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` too) and histogram kind
/// (`exponential`, `explicit`; or the `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`
/// names).
pub(super) fn metrics(cfg: &Config) -> Result<OtelConfig, ConfigError> {
    let temporality = match cfg.metrics_temporality.trim().to_ascii_lowercase().as_str() {
        "cumulative" => Temporality::Cumulative,
        // `lowmemory` is delta for synchronous histograms, the only instruments here.
        "delta" | "lowmemory" => Temporality::Delta,
        _ => {
            return Err(invalid(
                "metrics_temporality",
                &cfg.metrics_temporality,
                "use cumulative or delta",
            ));
        }
    };
    let aggregation = match cfg.metrics_histogram.trim().to_ascii_lowercase().as_str() {
        "exponential" | "base2_exponential_bucket_histogram" => Aggregation::Exponential,
        "explicit" | "explicit_bucket_histogram" => Aggregation::Explicit,
        _ => {
            return Err(invalid(
                "metrics_histogram",
                &cfg.metrics_histogram,
                "use exponential or explicit",
            ));
        }
    };
    Ok(OtelConfig {
        temporality,
        aggregation,
        max_series: cfg.max_series,
        stale_collections: STALE_INTERVALS,
    })
}

/// The head sampler from `OTEL_TRACES_SAMPLER` and its argument (the ratio, default 1.0,
/// clamped to 0..=1).
pub(super) fn trace_sampler(cfg: &Config) -> Result<TraceSampler, ConfigError> {
    let ratio = match cfg.traces_sampler_arg.as_deref() {
        None => None,
        Some(arg) => Some(
            arg.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| !r.is_nan())
                .ok_or_else(|| {
                    invalid(
                        "traces_sampler_arg",
                        arg,
                        "use a ratio between 0 and 1, like 0.25",
                    )
                })?,
        ),
    };
    TraceSampler::parse(&cfg.traces_sampler, ratio).map_err(|_| {
        invalid(
            "traces_sampler",
            &cfg.traces_sampler,
            "use always_on, always_off, traceidratio, parentbased_always_on, \
             parentbased_always_off or parentbased_traceidratio",
        )
    })
}

/// The export settings; None when no endpoint is configured (no export at all).
pub(super) fn settings(cfg: &Config) -> Result<Option<Settings>, ConfigError> {
    let protocol = match cfg.otlp_protocol.trim() {
        "grpc" => Protocol::Grpc,
        "http/protobuf" => Protocol::HttpProtobuf,
        _ => {
            return Err(invalid(
                "otlp_protocol",
                &cfg.otlp_protocol,
                "use http/protobuf or grpc",
            ));
        }
    };
    let nonempty = |s: &&String| !s.trim().is_empty();
    let base = cfg.otlp_endpoint.as_ref().filter(nonempty);
    let signal = |key: &'static str, specific: &Option<String>, path: &str| {
        let url = match (specific.as_ref().filter(nonempty), base) {
            (Some(url), _) => (key, url.trim().to_owned()),
            (None, Some(base)) => (
                "otlp_endpoint",
                match protocol {
                    Protocol::Grpc => base.trim().to_owned(),
                    Protocol::HttpProtobuf => {
                        format!("{}/{path}", base.trim().trim_end_matches('/'))
                    }
                },
            ),
            (None, None) => return Ok(None),
        };
        check_url(url.0, &url.1).map(|()| Some(url.1))
    };
    let traces_url = signal(
        "otlp_traces_endpoint",
        &cfg.otlp_traces_endpoint,
        "v1/traces",
    )?;
    let metrics_url = signal(
        "otlp_metrics_endpoint",
        &cfg.otlp_metrics_endpoint,
        "v1/metrics",
    )?;
    if traces_url.is_none() && metrics_url.is_none() {
        return Ok(None);
    }
    Ok(Some(Settings {
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
                value: path.display().to_string(),
                allowed: format!("a readable PEM file ({e})"),
            })?),
            None => None,
        },
    }))
}

/// An endpoint must be an absolute `http://` or `https://` URL.
fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let allowed = "use an http:// or https:// URL, like http://collector:4318";
    match url.parse::<hyper::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(())
        }
        _ => Err(invalid(key, url, allowed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_otel_rules() {
        let mut cfg = Config::default();
        assert!(
            settings(&cfg).expect("valid").is_none(),
            "no endpoint, no export"
        );
        cfg.otlp_endpoint = Some("http://collector:4318/".to_owned());
        cfg.otlp_headers = Some("x-api-key=abc%3D,tenant=t1".to_owned());
        let s = settings(&cfg).expect("valid").expect("export");
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
        let s = settings(&cfg).expect("valid").expect("export");
        assert_eq!(s.traces_url.as_deref(), Some("http://other:4317"));
        assert_eq!(s.metrics_url.as_deref(), Some("http://collector:4318/"));
        cfg.otlp_protocol = "thrift".to_owned();
        assert!(settings(&cfg).is_err());
    }

    #[test]
    fn a_bad_endpoint_is_named() {
        let cfg = Config {
            otlp_traces_endpoint: Some("collector:4318".to_owned()),
            ..Config::default()
        };
        let e = settings(&cfg).expect_err("no scheme");
        assert!(
            matches!(&e, ConfigError::Invalid { key: "otlp_traces_endpoint", value, .. } if value == "collector:4318"),
            "{e}"
        );
    }

    #[test]
    fn metric_options_accept_otel_names() {
        let mut cfg = Config::default();
        let m = metrics(&cfg).expect("defaults");
        assert_eq!(
            (m.temporality, m.aggregation),
            (Temporality::Cumulative, Aggregation::Exponential)
        );
        cfg.metrics_temporality = "Delta".to_owned();
        cfg.metrics_histogram = "explicit_bucket_histogram".to_owned();
        let m = metrics(&cfg).expect("valid");
        assert_eq!(
            (m.temporality, m.aggregation),
            (Temporality::Delta, Aggregation::Explicit)
        );
        cfg.metrics_histogram = "summary".to_owned();
        assert!(metrics(&cfg).is_err());
    }

    #[test]
    fn sampler_and_its_ratio_are_checked() {
        let mut cfg = Config {
            traces_sampler: "parentbased_traceidratio".to_owned(),
            traces_sampler_arg: Some("0.25".to_owned()),
            ..Config::default()
        };
        assert_eq!(
            trace_sampler(&cfg).expect("valid"),
            TraceSampler::ParentBased(crate::traces::sampling::Root::TraceIdRatio(0.25))
        );
        cfg.traces_sampler_arg = Some("a quarter".to_owned());
        assert!(matches!(
            trace_sampler(&cfg),
            Err(ConfigError::Invalid {
                key: "traces_sampler_arg",
                ..
            })
        ));
    }
}
