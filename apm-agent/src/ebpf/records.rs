//! The plain types the kernel adapter hands out, defined here so that `ebpf/` imports
//! nothing above it: the consumers (the pipeline, the profiles) convert or read them.

/// Direction of a captured syscall from the observed process's point of view, as the kernel
/// records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read these bytes.
    Ingress,
    /// The process wrote these bytes.
    Egress,
}

/// One drained group of identical samples, as the kernel counted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    pub tgid: u32,
    pub pid: u32,
    /// User-space instruction pointers, innermost first (empty: none or lost).
    pub user: Vec<u64>,
    /// Kernel instruction pointers, innermost first (empty: none, off, or lost).
    pub kernel: Vec<u64>,
    pub count: u64,
}
