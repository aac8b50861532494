//! Symbolization with blazesym, cached so that a busy host is symbolized once per distinct
//! address, not per sample: kernel addresses through kallsyms, user addresses as (file, file
//! offset) through the ELF symbols and DWARF of the file (demangled). Files are keyed by
//! (path, inode); their build ids are read once. An address that cannot be named becomes an
//! `[unknown] module+0xoffset` frame that keeps the build id.
use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer as Blaze,
        source::{Elf, Kernel, Source},
    },
};

use super::{
    maps::{MapsSnapshot, Region},
    model::{Frame, FrameKind},
    perf_map::PerfMap,
};

/// Cache budgets: distinct addresses and files remembered.
const MAX_KERNEL_ADDRS: usize = 200_000;
const MAX_FILE_OFFSETS: usize = 500_000;
const MAX_FILES: usize = 4096;

/// Identity of a mapped file.
type FileKey = (Arc<str>, u64);

/// What the caches hold and how often they were full.
#[derive(Debug, Default, Clone, Copy)]
pub struct SymbolizerStats {
    pub cached_addresses: usize,
    pub cache_resets: u64,
    pub unresolved: u64,
    /// Perf maps (JIT symbols) read, refused (a link, another owner), and cut at their bound.
    pub perf_maps_read: u64,
    pub perf_maps_refused: u64,
    pub perf_maps_truncated: u64,
}

/// Symbolizer with caches.
pub struct Symbolizer {
    blaze: Blaze,
    /// Use DWARF and separate debug files too (richer names for stripped system libraries,
    /// at a memory cost: about 14 MB more for glibc's debug file, measured).
    debug_info: bool,
    kernel: HashMap<u64, Arc<Frame>>,
    offsets: HashMap<(FileKey, u64), Arc<Frame>>,
    build_ids: HashMap<FileKey, Option<Arc<str>>>,
    stats: SymbolizerStats,
}

impl Symbolizer {
    pub fn new(debug_info: bool) -> Self {
        Self {
            blaze: Blaze::builder()
                .enable_code_info(false)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .build(),
            debug_info,
            kernel: HashMap::new(),
            offsets: HashMap::new(),
            build_ids: HashMap::new(),
            stats: SymbolizerStats::default(),
        }
    }

    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            cached_addresses: self.kernel.len() + self.offsets.len(),
            ..self.stats
        }
    }

    /// Kernel frames for `addrs` (any order), through kallsyms.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Arc<Frame>> {
        let missing: Vec<u64> = {
            let mut m: Vec<u64> = addrs
                .iter()
                .copied()
                .filter(|a| !self.kernel.contains_key(a))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            if self.kernel.len() + missing.len() > MAX_KERNEL_ADDRS {
                self.kernel.clear();
                self.stats.cache_resets += 1;
            }
            let src = Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Kernel::default()
            });
            let results = self
                .blaze
                .symbolize(&src, Input::AbsAddr(&missing))
                .unwrap_or_default();
            for (i, addr) in missing.iter().enumerate() {
                let frame = match results.get(i) {
                    // Function-level frame (the function's start): every sample in one
                    // function aggregates into one frame.
                    Some(Symbolized::Sym(sym)) => Frame {
                        kind: FrameKind::Kernel,
                        name: sym.name.as_ref().into(),
                        module: None,
                        build_id: None,
                        offset: addr.saturating_sub(sym.offset as u64),
                    },
                    _ => {
                        self.stats.unresolved += 1;
                        Frame {
                            kind: FrameKind::Unresolved,
                            name: format!("[unknown] [kernel]+{addr:#x}").into(),
                            module: Some("[kernel]".into()),
                            build_id: None,
                            offset: *addr,
                        }
                    }
                };
                self.kernel.insert(*addr, Arc::new(frame));
            }
        }
        addrs
            .iter()
            .map(|a| {
                self.kernel
                    .get(a)
                    .cloned()
                    .unwrap_or_else(|| unknown_addr(*a))
            })
            .collect()
    }

    /// Counts a perf map read (`Ok(truncated)`) or refused (`Err(())`).
    pub fn count_perf_map(&mut self, outcome: Result<bool, ()>) {
        match outcome {
            Ok(truncated) => {
                self.stats.perf_maps_read += 1;
                self.stats.perf_maps_truncated += u64::from(truncated);
            }
            Err(()) => self.stats.perf_maps_refused += 1,
        }
    }

    /// User frames for `addrs` of a process whose mappings are `maps`; addresses in no file
    /// (anonymous executable memory: JIT code) are named from the process's perf map `jit`
    /// when it has one.
    pub fn user(
        &mut self,
        maps: &MapsSnapshot,
        jit: Option<&PerfMap>,
        addrs: &[u64],
    ) -> Vec<Arc<Frame>> {
        let jitted = |addr: u64| {
            jit.filter(|_| maps.find(addr).is_none_or(|r| r.file.is_none()))
                .and_then(|j| j.find(addr))
                .cloned()
        };
        // Group the uncached offsets by file, symbolize each file's batch once.
        let mut per_file: HashMap<FileKey, (Option<Arc<Path>>, Vec<u64>)> = HashMap::new();
        for &addr in addrs {
            let Some(region) = maps.find(addr) else {
                continue;
            };
            if jitted(addr).is_some() {
                continue;
            }
            let key = (region.name.clone(), region.inode);
            let off = file_offset(region, addr);
            if !self.offsets.contains_key(&(key.clone(), off)) {
                per_file
                    .entry(key)
                    .or_insert_with(|| (region.file.clone(), Vec::new()))
                    .1
                    .push(off);
            }
        }
        if self.offsets.len() + per_file.values().map(|v| v.1.len()).sum::<usize>()
            > MAX_FILE_OFFSETS
        {
            self.offsets.clear();
            self.stats.cache_resets += 1;
        }
        if self.build_ids.len() > MAX_FILES {
            self.build_ids.clear();
            self.stats.cache_resets += 1;
        }
        for (key, (file, mut offsets)) in per_file {
            offsets.sort_unstable();
            offsets.dedup();
            self.symbolize_file(&key, file.as_deref(), &offsets);
        }
        addrs
            .iter()
            .map(|&addr| {
                if let Some(frame) = jitted(addr) {
                    return frame;
                }
                match maps.find(addr) {
                    Some(region) => {
                        let key = (region.name.clone(), region.inode);
                        self.offsets
                            .get(&(key, file_offset(region, addr)))
                            .cloned()
                            .unwrap_or_else(|| unknown_addr(addr))
                    }
                    None => unknown_addr(addr),
                }
            })
            .collect()
    }

    fn symbolize_file(&mut self, key: &FileKey, file: Option<&Path>, offsets: &[u64]) {
        let build_id = match file {
            Some(path) => self
                .build_ids
                .entry(key.clone())
                .or_insert_with(|| {
                    blazesym::helper::read_elf_build_id(path)
                        .ok()
                        .flatten()
                        .map(|id| hex(&id).into())
                })
                .clone(),
            None => None,
        };
        let results = match file {
            Some(path) => self
                .blaze
                .symbolize(
                    &Source::Elf(Elf {
                        debug_syms: self.debug_info,
                        ..Elf::new(path)
                    }),
                    Input::FileOffset(offsets),
                )
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for (i, &off) in offsets.iter().enumerate() {
            let frame = match results.get(i) {
                // Function-level frame, as for the kernel.
                Some(Symbolized::Sym(sym)) => Frame {
                    kind: FrameKind::User,
                    name: sym.name.as_ref().into(),
                    module: Some(key.0.clone()),
                    build_id: build_id.clone(),
                    offset: off.saturating_sub(sym.offset as u64),
                },
                _ => {
                    self.stats.unresolved += 1;
                    let base = key.0.rsplit('/').next().unwrap_or(&key.0);
                    Frame {
                        kind: FrameKind::Unresolved,
                        name: format!("[unknown] {base}+{off:#x}").into(),
                        module: Some(key.0.clone()),
                        build_id: build_id.clone(),
                        offset: off,
                    }
                }
            };
            self.offsets.insert((key.clone(), off), Arc::new(frame));
        }
    }
}

fn file_offset(region: &Region, addr: u64) -> u64 {
    addr - region.start + region.offset
}

/// An address outside every known mapping.
fn unknown_addr(addr: u64) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Unresolved,
        name: format!("[unknown] {addr:#x}").into(),
        module: None,
        build_id: None,
        offset: addr,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
