//! The OpenSSL uprobes (see apm-ebpf/src/tls.rs): loaded once, attached to each distinct
//! `libssl.so` file the agent finds mapped. A uprobe lives on the file (its inode), not on a
//! process: every process that maps the file, now or later, is covered.
use std::path::Path;

use aya::programs::{UProbe, uprobe::UProbeScope};

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
            .chain([self.tls_return()]);
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
