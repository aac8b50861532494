//! The profiler's data model, shared by every output (folded, SVG, pprof, the store, OTLP):
//! symbolized frames and stacks with counts (the raw samples are `ebpf::records::RawSample`).
use std::sync::Arc;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// The service (or process) the stack belongs to: the root of every stack.
    Root,
    /// A symbolized user-space function.
    User,
    /// A kernel function.
    Kernel,
    /// An address that could not be symbolized: `module+offset` (with the module's build id,
    /// so that a backend holding the unstripped file can symbolize it later).
    Unresolved,
}

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    pub kind: FrameKind,
    /// Function name (demangled), or `[unknown] module+0xoffset`.
    pub name: Arc<str>,
    /// The file the address belongs to (as mapped by the process), if any.
    pub module: Option<Arc<str>>,
    /// Hex build id of `module`, when it has one.
    pub build_id: Option<Arc<str>>,
    /// File offset of the address in `module` (0 when there is no module).
    pub offset: u64,
}

impl Frame {
    pub fn root(name: &str) -> Self {
        Self {
            kind: FrameKind::Root,
            name: name.into(),
            module: None,
            build_id: None,
            offset: 0,
        }
    }

    /// The name as it appears in folded stacks and flame graphs: kernel frames carry the
    /// `_[k]` suffix of the flame-graph convention, so they are told apart at a glance.
    pub fn display(&self) -> String {
        let name = self.name.replace(';', ":");
        match self.kind {
            FrameKind::Kernel => format!("{name}_[k]"),
            _ => name,
        }
    }
}

/// A stack from the root to the innermost frame, shared between profiles.
pub type Stack = Arc<[Arc<Frame>]>;

/// Samples of one process, symbolized.
#[derive(Debug, Clone)]
pub struct ProcessSamples {
    pub tgid: u32,
    pub service: Arc<str>,
    /// Executable file name (for filtering by executable).
    pub exe: Arc<str>,
    pub stack: Stack,
    pub count: u64,
}

/// An aggregated profile: stacks and how often each was sampled.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub stacks: std::collections::HashMap<Stack, u64>,
    /// Sampling frequency, for the time each sample stands for.
    pub frequency_hz: u64,
    /// Wall-clock start (Unix nanoseconds) and length of the sampled period.
    pub start_unix_ns: u64,
    pub duration_ns: u64,
}

impl Profile {
    pub fn new(frequency_hz: u64, start_unix_ns: u64) -> Self {
        Self {
            frequency_hz,
            start_unix_ns,
            ..Self::default()
        }
    }

    pub fn add(&mut self, stack: Stack, count: u64) {
        *self.stacks.entry(stack).or_default() += count;
    }

    pub fn total(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// Stacks sorted by their folded text: deterministic output.
    pub fn sorted(&self) -> Vec<(&Stack, u64)> {
        let mut v: Vec<(&Stack, u64)> = self.stacks.iter().map(|(s, n)| (s, *n)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Nanoseconds of CPU time one sample stands for.
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / self.frequency_hz.max(1)
    }
}
