//! Head sampling, decided when a request starts (so a trace's spans agree), with "always
//! keep" for errors and slow requests decided when it completes (the agent has the whole
//! exchange before it exports anything, so this costs nothing).
//!
//! Samplers follow `OTEL_TRACES_SAMPLER`: `always_on`, `always_off`, `traceidratio`,
//! `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`.

/// Which sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    /// Keep a trace when its id falls under the ratio (the same decision on every host).
    TraceIdRatio(f64),
    /// Follow the parent's decision when there is a parent, else the root sampler.
    ParentBased(Root),
}

/// The root sampler of a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// Parsing an `OTEL_TRACES_SAMPLER` value failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown trace sampler {0:?}")]
pub struct UnknownSampler(pub String);

impl TraceSampler {
    /// From `OTEL_TRACES_SAMPLER` and the ratio of `OTEL_TRACES_SAMPLER_ARG` (default 1.0;
    /// clamped to 0..=1).
    pub fn parse(name: &str, ratio: Option<f64>) -> Result<Self, UnknownSampler> {
        let ratio = ratio.map_or(1.0, |r| r.clamp(0.0, 1.0));
        Ok(match name.trim() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio),
            "parentbased_always_on" => Self::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Self::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Self::ParentBased(Root::TraceIdRatio(ratio)),
            other => return Err(UnknownSampler(other.to_owned())),
        })
    }

    /// The head decision for a trace id, given the parent's decision when there is a parent.
    pub fn decide(self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match self {
            Self::AlwaysOn => true,
            Self::AlwaysOff => false,
            Self::TraceIdRatio(r) => under_ratio(trace_id, r),
            Self::ParentBased(root) => match parent {
                Some(sampled) => sampled,
                None => match root {
                    Root::AlwaysOn => true,
                    Root::AlwaysOff => false,
                    Root::TraceIdRatio(r) => under_ratio(trace_id, r),
                },
            },
        }
    }
}

/// The OTel trace-id ratio rule: the last 8 bytes of the id, as a number, under the ratio.
fn under_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_decisions() {
        let s = TraceSampler::parse("parentbased_traceidratio", Some(0.0)).unwrap();
        let id = [7u8; 16];
        assert!(!s.decide(&id, None), "root, ratio 0");
        assert!(s.decide(&id, Some(true)), "follows a sampled parent");
        assert!(!s.decide(&id, Some(false)));
        assert!(
            TraceSampler::parse("always_on", None)
                .unwrap()
                .decide(&id, Some(false))
        );
        assert!(TraceSampler::parse("nope", None).is_err());
        // A ratio keeps about that share of random trace ids.
        let half = TraceSampler::TraceIdRatio(0.5);
        let mut ids = crate::traces::span::Ids::new();
        let kept = (0..10_000)
            .filter(|_| half.decide(&ids.trace_id(), None))
            .count();
        assert!((4_500..5_500).contains(&kept), "{kept}");
    }
}
