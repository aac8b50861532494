//! The capture path: which kernel programs see the bytes sockets move.
//!
//! - `sockets` (6.4+): programs at the socket layer only (`sock_send_length`,
//!   `sock_recv_length`, `inet_sock_set_state`, a uprobe on the dynamic loader for library
//!   loads); nothing runs on syscalls that move no socket bytes (apm-ebpf/src/socket_layer.rs).
//! - `syscalls`: the raw `sys_enter`/`sys_exit` tracepoints, a program on every syscall of
//!   every process that filters by number (apm-ebpf/src/sockets.rs): the path for kernels
//!   without the socket tracepoints.
//! - `auto` (default): `sockets` where the kernel has its tracepoints and accepts its
//!   programs, else `syscalls`.
use std::{fmt, str::FromStr};

/// The `capture_path` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapturePath {
    #[default]
    Auto,
    Sockets,
    Syscalls,
}

impl CapturePath {
    /// Every value, as the setting spells it.
    pub const ALLOWED: &'static str = "auto, sockets or syscalls";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Sockets => "sockets",
            Self::Syscalls => "syscalls",
        }
    }
}

impl fmt::Display for CapturePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not a capture path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a capture path: use {}", CapturePath::ALLOWED)]
pub struct UnknownCapturePath;

impl FromStr for CapturePath {
    type Err = UnknownCapturePath;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "sockets" => Ok(Self::Sockets),
            "syscalls" => Ok(Self::Syscalls),
            _ => Err(UnknownCapturePath),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_others_are_refused() {
        for p in [
            CapturePath::Auto,
            CapturePath::Sockets,
            CapturePath::Syscalls,
        ] {
            assert_eq!(p.as_str().parse::<CapturePath>(), Ok(p));
        }
        assert_eq!(" sockets ".parse::<CapturePath>(), Ok(CapturePath::Sockets));
        assert_eq!("fentry".parse::<CapturePath>(), Err(UnknownCapturePath));
    }
}
