//! Names for JIT-compiled code from the process's perf map, `/tmp/perf-<pid>.map`: the file
//! that JITs write for `perf` (Node and V8 with `--perf-basic-prof`, Java through
//! `jcmd <pid> Compiler.perfmap`, .NET with `DOTNET_PerfMapEnabled=1`), one line per
//! function: `START SIZE name`, hexadecimal, later lines replacing earlier ones where code
//! was moved or replaced.
//!
//! The file is the process's own: it is read through `/proc/<pid>/root` under the process's
//! own pid (a container's process has another pid inside), only if it is a regular file (not
//! a link: a process could point it at a file it cannot read, such as `/etc/shadow`, and have
//! the agent copy its lines into profiles) owned by the process's user. Bounded in bytes read
//! and entries kept; what is cut is counted.
use std::{
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    sync::Arc,
    time::SystemTime,
};

use super::model::{Frame, FrameKind};

/// Bytes read from one perf map at most (a busy Node process writes a few MB).
pub const MAX_BYTES: u64 = 32 << 20;
/// Functions kept from one perf map at most.
pub const MAX_ENTRIES: usize = 400_000;
/// How far back from the last function starting at or below an address the lookup looks for
/// one that covers it (overlapping entries of replaced code).
const OVERLAP_SCAN: usize = 16;

/// Module name of JIT frames.
pub const JIT_MODULE: &str = "[jit]";

/// The size and modification time of a perf map file: a changed file is read again.
pub type Stamp = (u64, Option<SystemTime>);

/// Why a perf map was not used.
#[derive(Debug, thiserror::Error)]
pub enum PerfMapError {
    #[error("no perf map: {0}")]
    Missing(#[source] std::io::Error),
    #[error("perf map refused: {0}")]
    Refused(&'static str),
}

/// A process's perf map as read at one moment.
#[derive(Debug)]
pub struct PerfMap {
    /// (start, end, line number, frame), sorted by start then line.
    entries: Vec<(u64, u64, u32, Arc<Frame>)>,
    /// The file's when read.
    pub stamp: Stamp,
    /// Lines or bytes beyond the bounds.
    pub truncated: bool,
}

impl PerfMap {
    /// Reads the perf map of `pid`, if it has one the agent may read.
    pub fn read(pid: u32) -> Result<Self, PerfMapError> {
        let ns_pid = own_pid(pid).unwrap_or(pid);
        let path = format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => PerfMapError::Refused("a symbolic link"),
                _ => PerfMapError::Missing(e),
            })?;
        let meta = file.metadata().map_err(PerfMapError::Missing)?;
        if !meta.file_type().is_file() {
            return Err(PerfMapError::Refused("not a regular file"));
        }
        let owner = std::fs::metadata(format!("/proc/{pid}"))
            .map_err(PerfMapError::Missing)?
            .uid();
        if meta.uid() != owner {
            return Err(PerfMapError::Refused(
                "owned by another user than the process",
            ));
        }
        let mut text = Vec::new();
        file.take(MAX_BYTES)
            .read_to_end(&mut text)
            .map_err(PerfMapError::Missing)?;
        let mut map = Self::parse(&String::from_utf8_lossy(&text));
        map.truncated |= meta.len() > MAX_BYTES;
        map.stamp = (meta.len(), meta.modified().ok());
        Ok(map)
    }

    /// Parses perf map text (malformed lines are skipped).
    pub fn parse(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut truncated = false;
        for (line_no, line) in text.lines().enumerate() {
            let Some((start, size, name)) = parse_line(line) else {
                continue;
            };
            if entries.len() >= MAX_ENTRIES {
                truncated = true;
                break;
            }
            let frame = Frame {
                kind: FrameKind::User,
                name: name.into(),
                module: Some(JIT_MODULE.into()),
                build_id: None,
                offset: start,
            };
            let line_no = u32::try_from(line_no).unwrap_or(u32::MAX);
            entries.push((start, start.saturating_add(size), line_no, Arc::new(frame)));
        }
        entries.sort_unstable_by_key(|e| (e.0, e.2));
        Self {
            entries,
            stamp: (0, None),
            truncated,
        }
    }

    /// The function covering `addr`: of overlapping ones, the one written last.
    pub fn find(&self, addr: u64) -> Option<&Arc<Frame>> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        self.entries[i.saturating_sub(OVERLAP_SCAN)..i]
            .iter()
            .filter(|e| addr < e.1)
            .max_by_key(|e| e.2)
            .map(|e| &e.3)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The size and modification time of `pid`'s perf map now, to tell whether it changed.
pub fn stamp(pid: u32) -> Option<Stamp> {
    let ns_pid = own_pid(pid).unwrap_or(pid);
    let meta = std::fs::symlink_metadata(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map")).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// `START SIZE name` (hexadecimal numbers, with or without `0x`).
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let line = line.trim_end();
    let (start, rest) = line.split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let name = name.trim();
    (!name.is_empty()).then_some((hex(start)?, hex(size)?, name))
}

/// The pid of `pid` in its own pid namespace (the last `NSpid` of its status).
fn own_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_ascii_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
3c6b2a00 8c Builtin:ArgumentsAdaptorTrampoline
0x3c6b2b00 100 JS:*hotAlpha /srv/split.js:3
3c6b2c00 40 JS:~hotBeta /srv/split.js:9
not a line
3c6b2b00 20 JS:*hotAlpha /srv/split.js:3 (replaced)
3c6b2d00 0
";

    #[test]
    fn functions_are_found_and_later_lines_win() {
        let m = PerfMap::parse(MAP);
        assert_eq!(m.len(), 4, "malformed and nameless lines skipped");
        let name = |a: u64| m.find(a).map(|f| f.name.to_string());
        assert_eq!(
            name(0x3c6b2a10).as_deref(),
            Some("Builtin:ArgumentsAdaptorTrampoline")
        );
        assert_eq!(
            name(0x3c6b2b10).as_deref(),
            Some("JS:*hotAlpha /srv/split.js:3 (replaced)"),
            "the later line covers the address"
        );
        assert_eq!(
            name(0x3c6b2b80).as_deref(),
            Some("JS:*hotAlpha /srv/split.js:3"),
            "past the replacement, the earlier one still covers it"
        );
        assert_eq!(
            name(0x3c6b2c3f).as_deref(),
            Some("JS:~hotBeta /srv/split.js:9")
        );
        assert_eq!(name(0x3c6b2c40), None, "end is exclusive");
        assert_eq!(name(0x10), None);
        let f = m.find(0x3c6b2c10).expect("hotBeta");
        assert_eq!(f.module.as_deref(), Some(JIT_MODULE));
        assert_eq!(f.offset, 0x3c6b2c00, "frames aggregate per function");
    }

    #[test]
    fn entries_beyond_the_bound_are_cut_and_said() {
        let mut text = String::new();
        for i in 0..(MAX_ENTRIES + 5) {
            text.push_str(&format!("{:x} 10 f{i}\n", 0x1000 + i * 0x10));
        }
        let m = PerfMap::parse(&text);
        assert_eq!(m.len(), MAX_ENTRIES);
        assert!(m.truncated);
    }

    #[test]
    fn a_link_is_refused_and_a_missing_file_is_missing() {
        // This test process has no perf map.
        assert!(matches!(
            PerfMap::read(std::process::id()),
            Err(PerfMapError::Missing(_))
        ));
        let me = std::process::id();
        let path = format!("/tmp/perf-{me}.map");
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink("/etc/hostname", &path).expect("symlink");
        let refused = PerfMap::read(me);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(refused, Err(PerfMapError::Refused(_))),
            "O_NOFOLLOW refuses the link: {refused:?}"
        );
        std::fs::write(&path, "1000 10 own_function\n").expect("write");
        let own = PerfMap::read(me);
        let _ = std::fs::remove_file(&path);
        let own = own.expect("its own regular file");
        assert_eq!(
            own.find(0x1008).map(|f| f.name.to_string()).as_deref(),
            Some("own_function")
        );
        assert!(own.stamp.0 > 0);
    }
}
