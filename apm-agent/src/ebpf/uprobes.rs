//! The TLS uprobes: OpenSSL's (see apm-ebpf/src/tls.rs), loaded once, attached to each
//! distinct `libssl.so` file the agent finds mapped, and Go's (apm-ebpf/src/go_tls.rs),
//! attached to each Go executable that links `crypto/tls`. A uprobe lives on the file (its
//! inode), not on a process: every process that maps the file, now or later, is covered.
use std::path::Path;

use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeScope},
};

use super::{LoadError, Probes};

/// (OpenSSL function, entry program). The return program is shared.
pub const TLS_FUNCTIONS: [(&str, &str); 5] = [
    ("SSL_read", "apm_ssl_read"),
    ("SSL_write", "apm_ssl_write"),
    ("SSL_read_ex", "apm_ssl_read_ex"),
    ("SSL_write_ex", "apm_ssl_write_ex"),
    ("SSL_do_handshake", "apm_ssl_handshake"),
];
/// The uretprobe attached to every function of [`TLS_FUNCTIONS`].
pub const TLS_RETURN: &str = "apm_ssl_return";
/// Its variant for kernels without the atomic fetch-add (see apm-ebpf/src/maps.rs).
pub const TLS_RETURN_NOFETCH: &str = "apm_ssl_return_nofetch";

/// The Go `crypto/tls` programs (apm-ebpf/src/go_tls.rs), with their variants for kernels
/// without the atomic fetch-add.
pub const GO_TLS_WRITE: (&str, &str) = ("apm_go_tls_write", "apm_go_tls_write_nofetch");
pub const GO_TLS_READ: &str = "apm_go_tls_read";
pub const GO_TLS_READ_RETURN: (&str, &str) =
    ("apm_go_tls_read_return", "apm_go_tls_read_return_nofetch");
pub const GO_TLS_HANDSHAKE: &str = "apm_go_tls_handshake";

/// Where the Go programs go in one executable: file offsets, what a uprobe is attached at
/// (found by `tls::go_binary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsSites {
    pub write: u64,
    pub read: u64,
    /// Each `RET` instruction of `(*Conn).Read`.
    pub read_returns: Vec<u64>,
    /// The server's and the client's handshake functions.
    pub handshakes: Vec<u64>,
}

/// The loader hook of the `sockets` capture path (see apm-ebpf/src/libraries.rs):
/// (program, function of the dynamic loader).
pub const LOADER_HOOK: (&str, &str) = ("apm_dl_debug_state", "_dl_debug_state");

/// Why a library could not be hooked.
#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: neither SSL_read nor SSL_write could be hooked: {source}")]
    NoFunctions {
        path: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{path}: Go crypto/tls not hooked at {what}: {source}")]
    Go {
        path: String,
        what: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{path}: the loader's _dl_debug_state could not be hooked: {source}")]
    Loader {
        path: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

impl Probes {
    /// Loads (verifies) the TLS programs, and on the `sockets` capture path the loader hook
    /// that reports library loads; nothing is attached yet.
    pub fn load_tls(&mut self) -> Result<(), LoadError> {
        if self.features.capture.socket_layer() {
            let (name, _) = LOADER_HOOK;
            self.uprobe(name)?
                .load()
                .map_err(|source| super::load::program_error(name, "uprobe", source))?;
            self.loader_hook = true;
        }
        let names = TLS_FUNCTIONS
            .iter()
            .map(|(_, program)| *program)
            .chain([self.tls_return()])
            .chain(self.go_programs());
        for name in names {
            self.uprobe(name)?
                .load()
                .map_err(|source| super::load::program_error(name, "uprobe", source))?;
        }
        Ok(())
    }

    /// Library loads come from the loader hook ([`Probes::attach_loader`]), not from `mmap`
    /// at syscall exit.
    pub fn loader_hook(&self) -> bool {
        self.loader_hook
    }

    /// Hooks `_dl_debug_state` of the dynamic loader at `target`, so each process it loads
    /// libraries for reports them.
    pub fn attach_loader(&mut self, target: &Path) -> Result<(), UprobeError> {
        let (name, function) = LOADER_HOOK;
        self.uprobe(name)?
            .attach(function, target, UProbeScope::AllProcesses)
            .map(drop)
            .map_err(|source| UprobeError::Loader {
                path: target.display().to_string(),
                source: Box::new(source),
            })
    }

    /// The Go programs this kernel accepts: (write, read, read return, handshake).
    fn go_programs(&self) -> [&'static str; 4] {
        let pick = |(fetch, nofetch): (&'static str, &'static str)| {
            if self.features.fetch_add {
                fetch
            } else {
                nofetch
            }
        };
        [
            pick(GO_TLS_WRITE),
            GO_TLS_READ,
            pick(GO_TLS_READ_RETURN),
            GO_TLS_HANDSHAKE,
        ]
    }

    /// Hooks the Go executable at `target` where `hooks` says (file offsets). All or
    /// nothing: a failure detaches what this call attached. Returns the probes attached.
    pub fn attach_go_tls(
        &mut self,
        target: &Path,
        hooks: &GoTlsSites,
    ) -> Result<usize, UprobeError> {
        let [write, read, read_return, handshake] = self.go_programs();
        // The returns before the entry: an entry without its returns would leave its call
        // noted until the goroutine's next read.
        let mut plan: Vec<(&'static str, u64, &'static str)> = hooks
            .read_returns
            .iter()
            .map(|off| (read_return, *off, "a RET of (*Conn).Read"))
            .collect();
        plan.push((read, hooks.read, "(*Conn).Read"));
        plan.push((write, hooks.write, "(*Conn).Write"));
        for off in &hooks.handshakes {
            plan.push((handshake, *off, "a handshake"));
        }
        let mut attached = Vec::with_capacity(plan.len());
        for (program, offset, what) in plan {
            let result = self.uprobe(program)?.attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                target,
                UProbeScope::AllProcesses,
            );
            match result {
                Ok(link) => attached.push((program, link)),
                Err(source) => {
                    for (program, link) in attached {
                        let _ = self.uprobe(program)?.detach(link);
                    }
                    return Err(UprobeError::Go {
                        path: target.display().to_string(),
                        what,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(attached.len())
    }

    /// The return program this kernel accepts (see [`TLS_RETURN_NOFETCH`]).
    fn tls_return(&self) -> &'static str {
        if self.features.fetch_add {
            TLS_RETURN
        } else {
            TLS_RETURN_NOFETCH
        }
    }

    fn uprobe(&mut self, name: &'static str) -> Result<&mut UProbe, LoadError> {
        self.bpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(|source| LoadError::Program {
                name,
                tracepoint: "uprobe",
                source: Box::new(source),
            })
    }

    /// Hooks the OpenSSL functions of the library at `target` (a path this process can open,
    /// e.g. through `/proc/<pid>/root`). Functions the library lacks (`_ex` before OpenSSL
    /// 1.1.1) are skipped; returns how many were hooked. Fails when neither `SSL_read` nor
    /// `SSL_write` could be: the file is not an OpenSSL `libssl`.
    pub fn attach_tls(&mut self, target: &Path) -> Result<usize, UprobeError> {
        let mut hooked = 0;
        let mut core_hooked = false;
        let mut first_error = None;
        let ret = self.tls_return();
        for (function, program) in TLS_FUNCTIONS {
            // The return probe first: an entry without its return would leave a call noted
            // for the thread until the next one replaces it.
            let attached = self
                .uprobe(ret)?
                .attach(function, target, UProbeScope::AllProcesses);
            let attached = match attached {
                Ok(ret_link) => {
                    match self
                        .uprobe(program)?
                        .attach(function, target, UProbeScope::AllProcesses)
                    {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            let _ = self.uprobe(ret)?.detach(ret_link);
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match attached {
                Ok(()) => {
                    hooked += 1;
                    core_hooked |= matches!(function, "SSL_read" | "SSL_write");
                }
                Err(e) => {
                    log::debug!("{}: {function} not hooked: {e}", target.display());
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(source) if !core_hooked => Err(UprobeError::NoFunctions {
                path: target.display().to_string(),
                source: Box::new(source),
            }),
            _ => Ok(hooked),
        }
    }
}
