//! The span model handed to exporters, and the clock and id helpers behind it.
use std::sync::Arc;

use crate::request::Side;

/// Attribute values (the kinds the HTTP semantic conventions use).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// Attributes of a resource or span: OTel semantic-convention keys.
pub type Attributes = Vec<(&'static str, Value)>;

/// An observed service instance (one process): the OTLP resource of its spans and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Keys owned by the agent (`service.name`, `process.pid`, ...).
    pub attributes: Attributes,
    /// The process's own `OTEL_RESOURCE_ATTRIBUTES` (and the agent's), key=value.
    pub extra: Vec<(String, String)>,
}

/// Span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

impl From<Side> for Kind {
    fn from(side: Side) -> Self {
        match side {
            Side::Server => Self::Server,
            Side::Client => Self::Client,
        }
    }
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub resource: Arc<Resource>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    pub error: bool,
    /// Spans this one is linked to (an instrumented caller's own span).
    pub links: Vec<([u8; 16], [u8; 8])>,
}

/// Kernel monotonic nanoseconds -> Unix nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid pointer to a timespec.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        Self {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    pub fn to_unix(self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).max(0) as u64
    }
}

/// Random trace and span ids (never all-zero).
#[derive(Debug)]
pub struct Ids {
    rng: fastrand::Rng,
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

impl Ids {
    pub fn new() -> Self {
        Self {
            rng: fastrand::Rng::new(),
        }
    }

    pub fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let id = self.rng.u128(..).to_be_bytes();
            if id != [0; 16] {
                return id;
            }
        }
    }

    pub fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id = self.rng.u64(..).to_be_bytes();
            if id != [0; 8] {
                return id;
            }
        }
    }
}
