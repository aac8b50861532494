//! The capture path: which kernel programs see the bytes sockets move.
//!
//! - `sockets` (6.4+): programs at the socket layer only (`sock_send_length`,
//!   `sock_recv_length`, `inet_sock_set_state`, a uprobe on the dynamic loader for library
//!   loads); nothing runs on syscalls that move no socket bytes (apm-ebpf/src/socket_layer.rs).
//! - `sockets-fexit` (5.15+ with fentry/fexit, BTF): the same programs, fed by fexit
//!   programs on the per-family send and receive functions (`inet_sendmsg`,
//!   `inet_recvmsg`, ...) instead of the tracepoints: the socket layer on kernels before 6.4
//!   (6.1, 5.15). For a short window after the start a program on `sys_exit` also sees the
//!   calls that were already blocked at attach (`catch_up`).
//! - `syscalls`: the raw `sys_enter`/`sys_exit` tracepoints, a program on every syscall of
//!   every process that filters by number (apm-ebpf/src/sockets.rs): the path for kernels
//!   without the socket tracepoints.
//! - `auto` (default): the first of `sockets`, `sockets-fexit` and `syscalls` that the
//!   kernel has and accepts.
use std::{fmt, str::FromStr};

/// The `capture_path` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapturePath {
    #[default]
    Auto,
    Sockets,
    SocketsFexit,
    Syscalls,
}

impl CapturePath {
    /// Every value, as the setting spells it.
    pub const ALLOWED: &'static str = "auto, sockets, sockets-fexit or syscalls";

    /// Every value, in the order of [`Self::index`].
    pub const ALL: [Self; 4] = [
        Self::Auto,
        Self::Sockets,
        Self::SocketsFexit,
        Self::Syscalls,
    ];

    /// Position in [`Self::ALL`] (for a counter that stores the path in use).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    /// Programs at the socket layer only (either kind of hook), nothing on every syscall.
    pub fn socket_layer(self) -> bool {
        matches!(self, Self::Sockets | Self::SocketsFexit)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Sockets => "sockets",
            Self::SocketsFexit => "sockets-fexit",
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
            "sockets-fexit" => Ok(Self::SocketsFexit),
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
        for (i, p) in CapturePath::ALL.into_iter().enumerate() {
            assert_eq!(p.as_str().parse::<CapturePath>(), Ok(p));
            assert_eq!(p.index(), i);
        }
        assert!(CapturePath::SocketsFexit.socket_layer());
        assert!(!CapturePath::Syscalls.socket_layer());
        assert_eq!(" sockets ".parse::<CapturePath>(), Ok(CapturePath::Sockets));
        assert_eq!("fentry".parse::<CapturePath>(), Err(UnknownCapturePath));
    }
}
