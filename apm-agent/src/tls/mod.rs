//! TLS plaintext: finds the OpenSSL libraries processes map, and the Go executables that link
//! `crypto/tls`, and hooks each file once.
//!
//! At start the libssl files in the loader's search path are hooked (see [`loader`]: a process
//! started later is covered from its first call) and every process's maps are read once;
//! afterwards the kernel reports library loads and only those processes are looked at again.
//! On the `syscalls` capture path the report is each executable file mapping (`on_mmap` in
//! apm-ebpf/src/sockets.rs); on the `sockets` path it comes from a uprobe on each dynamic
//! loader's `_dl_debug_state` (apm-ebpf/src/libraries.rs), hooked here like a library: the
//! host's loaders at start, a container's own when one of its processes shows it. Go programs
//! are mostly static (no loader, no libssl): every exec asks for its process's executable to
//! be looked at too, once per file. The hooking runs on its own thread: parsing a library's symbols and attaching ten probes takes
//! milliseconds the event thread must not spend.
pub mod go_binary;
pub mod libraries;
pub mod loader;
pub mod stats;

use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{ebpf::Probes, privileges};
use libraries::{MappedLibrary, loaders, tls_libraries};
use stats::TlsStats;

/// The root directory the host's own processes see: the loader's search path is read there.
const HOST_ROOT: &str = "/proc/1/root";

/// Distinct executable files looked at for Go's `crypto/tls` (16 bytes each): a host runs
/// hundreds of distinct programs over time, most of them not Go. Beyond, counted.
const MAX_EXECUTABLES: usize = 16_384;

/// Processes waiting to be looked at; beyond this, requests are dropped (counted).
const QUEUE: usize = 4096;

/// Where the event thread sends the processes that loaded a library.
#[derive(Debug, Clone)]
pub struct TlsRequests {
    tx: SyncSender<u32>,
    stats: Arc<TlsStats>,
}

impl TlsRequests {
    /// Asks for `tgid`'s maps to be checked; never blocks.
    pub fn scan(&self, tgid: u32) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(tgid) {
            self.stats.scans_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The hooking thread's state.
struct Attacher {
    probes: Probes,
    /// Library files already handled (hooked or failed), by identity.
    seen: HashSet<(String, u64)>,
    /// Executable files already looked at for Go's `crypto/tls`, by (device, inode).
    executables: HashSet<(u64, u64)>,
    budget: usize,
    stats: Arc<TlsStats>,
}

/// Starts the thread that hooks libraries; `probes` must have its TLS programs loaded
/// ([`Probes::load_tls`]). The thread owns the loaded object (attaching needs it) and hands it
/// back when `stop` is set, so the caller decides when everything is detached.
pub fn start(
    probes: Probes,
    budget: usize,
    stats: Arc<TlsStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(TlsRequests, JoinHandle<Probes>)> {
    let (tx, rx) = sync_channel(QUEUE);
    let attacher = Attacher {
        probes,
        seen: HashSet::new(),
        executables: HashSet::new(),
        budget,
        stats: stats.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("apm-tls".to_owned())
        .spawn(move || attacher.run(&rx, &stop))?;
    Ok((TlsRequests { tx, stats }, handle))
}

impl Attacher {
    fn run(mut self, rx: &Receiver<u32>, stop: &AtomicBool) -> Probes {
        self.scan_all();
        let mut pending: HashSet<u32> = HashSet::new();
        while !stop.load(Relaxed) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(tgid) => {
                    pending.insert(tgid);
                    // A process start loads several libraries: one look per process.
                    while let Ok(more) = rx.try_recv() {
                        pending.insert(more);
                    }
                    for tgid in pending.drain() {
                        self.scan(tgid);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.probes
    }

    fn scan_all(&mut self) {
        self.hook_loader_libraries();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for pid in pids {
            self.scan(pid);
        }
    }

    fn scan(&mut self, tgid: u32) {
        if tgid == std::process::id() {
            return;
        }
        self.check_executable(tgid);
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
            return;
        };
        if self.probes.loader_hook() {
            for ld in loaders(&maps) {
                if !self.seen.contains(&ld.identity) && self.hook_loader(tgid, &ld) {
                    self.seen.insert(ld.identity);
                }
            }
        }
        for lib in tls_libraries(&maps) {
            if self.seen.contains(&lib.identity) {
                continue;
            }
            if self.seen.len() >= self.budget {
                self.stats.libraries_overflow.fetch_add(1, Relaxed);
                continue;
            }
            if self.hook(tgid, &lib) {
                self.seen.insert(lib.identity);
            }
        }
    }

    /// Hooks the executable of `tgid` if it is a Go program using `crypto/tls`. Each file is
    /// looked at once (one `stat` per exec after that); reading its sections is mapped, not
    /// read, so the non-Go majority costs a few pages.
    fn check_executable(&mut self, tgid: u32) {
        let exe = format!("/proc/{tgid}/exe");
        let Ok(meta) = std::fs::metadata(&exe) else {
            return;
        };
        let identity = (meta.dev(), meta.ino());
        if self.executables.contains(&identity) {
            return;
        }
        if self.executables.len() >= MAX_EXECUTABLES {
            self.stats.executables_overflow.fetch_add(1, Relaxed);
            return;
        }
        // Opened once: a process that exits meanwhile cannot swap the file under the look.
        let Ok(file) = File::open(&exe) else { return };
        self.executables.insert(identity);
        let path = std::fs::read_link(&exe)
            .map(|p| p.display().to_string())
            .unwrap_or(exe);
        // SAFETY: a read-only private mapping of a file being executed (the kernel refuses
        // writes to it while it runs); its bytes are only parsed.
        let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else {
            return;
        };
        let hooks = match go_binary::inspect(&map) {
            Ok(Some(hooks)) => hooks,
            Ok(None) => return,
            Err(e) => {
                log::info!("TLS: Go program {path} (pid {tgid}) not hooked: {e}");
                self.stats.hook_failures.fetch_add(1, Relaxed);
                return;
            }
        };
        drop(map);
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match self.probes.attach_go_tls(&target, &hooks.sites) {
            Ok(probes) => {
                self.stats.go_binaries_hooked.fetch_add(1, Relaxed);
                log::info!(
                    "TLS: hooked Go crypto/tls in {path} ({}, {probes} probes; first seen in \
                     pid {tgid})",
                    hooks.version
                );
            }
            Err(e) => {
                self.stats.hook_failures.fetch_add(1, Relaxed);
                log::warn!("TLS: {e}");
            }
        }
    }

    /// The libssl files of the loader's search path, as the host's first process (the host's
    /// own root, also from a DaemonSet pod with `hostPID`) sees them, or as the agent does
    /// when that root is out of its reach (a sandbox that hides its init).
    fn hook_loader_libraries(&mut self) {
        let root = [Path::new(HOST_ROOT), Path::new("/")]
            .into_iter()
            .find(|r| std::fs::read_dir(r.join("etc")).is_ok())
            .unwrap_or(Path::new("/"));
        for path in loader::libssl_files(root) {
            let Ok(file) = File::open(root.join(path.trim_start_matches('/'))) else {
                continue;
            };
            let identity = match loader::mapped_identity(&file) {
                Ok(identity) => identity,
                Err(e) => {
                    log::debug!("TLS: {path}: no identity ({e}); left to its first process");
                    continue;
                }
            };
            if self.seen.contains(&identity) {
                continue;
            }
            if self.seen.len() >= self.budget {
                self.stats.libraries_overflow.fetch_add(1, Relaxed);
                continue;
            }
            if self.attach(&file, &path, "in the loader's search path") {
                self.seen.insert(identity);
            }
        }
    }

    /// Hooks the dynamic loader `ld` as process `tgid` maps it (see [`Attacher::hook`] for
    /// the return value).
    fn hook_loader(&mut self, tgid: u32, ld: &MappedLibrary) -> bool {
        let Ok(file) = File::open(format!("/proc/{tgid}/root{}", ld.path)) else {
            return false;
        };
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match self.probes.attach_loader(&target) {
            Ok(()) => {
                log::info!(
                    "library loads: hooked the loader {} (first seen in pid {tgid})",
                    ld.path
                );
                self.stats.loaders_hooked.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.stats.hook_failures.fetch_add(1, Relaxed);
                log::warn!(
                    "library loads: {} (pid {tgid}) not hooked: {e}; TLS libraries its \
                     processes load later are found only at their next exec",
                    ld.path
                );
            }
        }
        true
    }

    /// Hooks `lib` as process `tgid` maps it. False when it should be tried again at its next
    /// sighting: the file could not be opened because the process exited meanwhile (its
    /// `/proc/<pid>/root` went with it), which says nothing about the library, and
    /// short-lived processes (curl, openssl) are often the first to show a library.
    fn hook(&mut self, tgid: u32, lib: &MappedLibrary) -> bool {
        // The path as this process sees it, in its own mount namespace (containers), opened
        // once: every attach below goes through this descriptor, so a process that exits
        // meanwhile cannot leave the library half hooked.
        let Ok(file) = File::open(format!("/proc/{tgid}/root{}", lib.path)) else {
            log::debug!("TLS: {} (pid {tgid}) could not be opened", lib.path);
            return false;
        };
        self.attach(&file, &lib.path, &format!("first seen in pid {tgid}"))
    }

    /// Attaches the OpenSSL probes to the open library `file` (`path` and `origin` are for the
    /// log). True once the library is settled: hooked, or refused for a reason that a retry
    /// would not change.
    fn attach(&mut self, file: &File, path: &str, origin: &str) -> bool {
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match self.probes.attach_tls(&target) {
            Ok(functions) => {
                self.stats.libraries_hooked.fetch_add(1, Relaxed);
                log::info!("TLS: hooked {functions} OpenSSL functions in {path} ({origin})");
                true
            }
            Err(e) => {
                self.stats.hook_failures.fetch_add(1, Relaxed);
                let hint = if privileges::holds(privileges::UPROBES) {
                    String::new()
                } else {
                    format!(
                        " (grant {} to {})",
                        privileges::UPROBES.name,
                        privileges::UPROBES.why
                    )
                };
                log::warn!("TLS: {path} ({origin}) not hooked: {e}{hint}");
                true
            }
        }
    }
}
