//! Configuration checked into typed values, before anything is loaded into the kernel: a
//! range the kernel or an aggregator depends on, a selector, an OTLP setting or the trace
//! sampler that does not parse stops the agent with the key, the value and what is allowed,
//! instead of surfacing after the agent has hooked the host.
use super::{Config, ConfigError, otlp};
use crate::{
    discovery::selectors::{Selector, Selectors},
    ebpf::capture_path::CapturePath,
    export::otlp::settings::Settings,
    metrics::otel::OtelConfig,
    traces::sampling::TraceSampler,
};

/// The configuration with every string parsed: what `run/` starts the agent from.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The numbers and switches, in range.
    pub cfg: Config,
    /// Which kernel programs see socket traffic.
    pub capture_path: CapturePath,
    /// Which processes and connections are observed.
    pub selectors: Selectors,
    /// Where and how to export over OTLP; None: no endpoint, no export.
    pub otlp: Option<Settings>,
    /// How OTLP duration histograms aggregate (used when metrics are exported).
    pub otel_metrics: OtelConfig,
    /// The head sampler of spans (used when traces are exported).
    pub trace_sampler: TraceSampler,
}

impl Config {
    /// Checks every setting and parses every string; the first bad one is the error.
    pub fn check(self) -> Result<Checked, ConfigError> {
        self.check_ranges()?;
        for (key, list) in [("include", &self.include), ("exclude", &self.exclude)] {
            for s in list {
                Selector::parse(s).map_err(|e| ConfigError::Invalid {
                    key,
                    value: s.clone(),
                    allowed: format!(
                        "{e}; use key=value with key exe, pid, port, pidns, netns, service \
                         or a resource attribute"
                    ),
                })?;
            }
        }
        let selectors =
            Selectors::parse(&self.include, &self.exclude).map_err(|e| ConfigError::Invalid {
                key: "include/exclude",
                value: e.to_string(),
                allowed: "key=value selectors".to_owned(),
            })?;
        let capture_path = self.capture_path.parse().map_err(
            |e: crate::ebpf::capture_path::UnknownCapturePath| ConfigError::Invalid {
                key: "capture_path",
                value: self.capture_path.clone(),
                allowed: e.to_string(),
            },
        )?;
        Ok(Checked {
            capture_path,
            selectors,
            otlp: otlp::settings(&self)?,
            otel_metrics: otlp::metrics(&self)?,
            trace_sampler: otlp::trace_sampler(&self)?,
            cfg: self,
        })
    }

    /// Ranges the kernel or the aggregators depend on.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: &dyn std::fmt::Display, allowed: &str| {
            Err(ConfigError::Invalid {
                key,
                value: value.to_string(),
                allowed: allowed.to_owned(),
            })
        };
        if self.capture_bytes == 0 || self.capture_bytes as usize > apm_common::MAX_CAPTURE {
            return invalid(
                "capture_bytes",
                &self.capture_bytes,
                "must be between 1 and 4096",
            );
        }
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < 4096 {
            return invalid(
                "ring_buffer_bytes",
                &self.ring_buffer_bytes,
                "must be a power of two of at least 4096",
            );
        }
        for (key, value) in [
            ("max_kernel_sockets", self.max_kernel_sockets as usize),
            ("max_connections", self.max_connections),
            ("max_processes", self.max_processes),
            ("max_inventory_processes", self.max_inventory_processes),
            ("kubernetes_max_pods", self.kubernetes_max_pods),
            ("window_secs", self.window_secs as usize),
            ("detect_attempts", usize::from(self.detect_attempts)),
            ("profile_bucket_secs", self.profile_bucket_secs as usize),
            ("profile_drain_secs", self.profile_drain_secs as usize),
            ("profile_stack_entries", self.profile_stack_entries as usize),
        ] {
            if value == 0 {
                return invalid(key, &value, "must be at least 1");
            }
        }
        if let Some((key, value, allowed)) = self.alerts.invalid() {
            return invalid(key, &value, allowed);
        }
        if self.profile_frequency_hz == 0 || self.profile_frequency_hz > 10_000 {
            return invalid(
                "profile_frequency_hz",
                &self.profile_frequency_hz,
                "must be between 1 and 10000",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key and the value a check names, or None when the configuration passes.
    fn rejected(cfg: Config) -> Option<(&'static str, String)> {
        match cfg.check() {
            Ok(_) => None,
            Err(ConfigError::Invalid {
                key,
                value,
                allowed,
            }) => {
                assert!(!allowed.is_empty(), "{key}: says what is allowed");
                Some((key, value))
            }
            Err(e) => panic!("not a setting error: {e}"),
        }
    }

    #[test]
    fn defaults_pass_and_ranges_are_checked() {
        assert_eq!(rejected(Config::default()), None);
        let bad = Config {
            capture_bytes: 5000,
            ..Config::default()
        };
        assert_eq!(rejected(bad), Some(("capture_bytes", "5000".to_owned())));
        let bad = Config {
            ring_buffer_bytes: 5000,
            ..Config::default()
        };
        assert_eq!(
            rejected(bad),
            Some(("ring_buffer_bytes", "5000".to_owned()))
        );
        let bad = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert_eq!(rejected(bad), Some(("max_connections", "0".to_owned())));
        let bad = Config {
            capture_path: "fentry".to_owned(),
            ..Config::default()
        };
        assert_eq!(rejected(bad), Some(("capture_path", "fentry".to_owned())));
        let forced = Config {
            capture_path: "syscalls".to_owned(),
            ..Config::default()
        };
        assert_eq!(
            forced.check().map(|c| c.capture_path).ok(),
            Some(CapturePath::Syscalls)
        );
    }

    #[test]
    fn selectors_are_parsed_and_a_bad_one_is_named() {
        let bad = Config {
            exclude: vec!["nginx".to_owned()],
            ..Config::default()
        };
        assert_eq!(rejected(bad), Some(("exclude", "nginx".to_owned())));
        let bad = Config {
            include: vec!["pid=many".to_owned()],
            ..Config::default()
        };
        assert_eq!(rejected(bad), Some(("include", "pid=many".to_owned())));
        let good: Config = toml::from_str(
            "include = [\"exe=nginx\", \"port=8080\"]\nexclude = [\"k8s.namespace.name=kube-*\"]\n",
        )
        .unwrap_or_default();
        assert_eq!(good.include.len(), 2);
        let checked = good.check().expect("valid selectors");
        assert!(!checked.selectors.is_empty());
    }

    /// The strings that used to be parsed only after the kernel programs were attached.
    #[test]
    fn otlp_settings_and_the_sampler_are_checked_without_an_endpoint() {
        for (cfg, key, value) in [
            (
                Config {
                    otlp_protocol: "thrift".to_owned(),
                    ..Config::default()
                },
                "otlp_protocol",
                "thrift",
            ),
            (
                Config {
                    traces_sampler: "sometimes".to_owned(),
                    ..Config::default()
                },
                "traces_sampler",
                "sometimes",
            ),
            (
                Config {
                    metrics_temporality: "weekly".to_owned(),
                    ..Config::default()
                },
                "metrics_temporality",
                "weekly",
            ),
            (
                Config {
                    otlp_endpoint: Some("ftp://collector".to_owned()),
                    ..Config::default()
                },
                "otlp_endpoint",
                "ftp://collector/v1/traces",
            ),
        ] {
            assert_eq!(rejected(cfg), Some((key, value.to_owned())), "{key}");
        }
        let checked = Config {
            otlp_endpoint: Some("http://collector:4318".to_owned()),
            traces_sampler: "always_off".to_owned(),
            ..Config::default()
        }
        .check()
        .expect("valid");
        assert_eq!(checked.trace_sampler, TraceSampler::AlwaysOff);
        assert!(checked.otlp.is_some_and(|s| s.metrics_url.is_some()));
    }
}
