//! Snapshots of a process's executable memory mappings (`/proc/<pid>/maps`), taken while the
//! process is alive, so that its addresses can be turned into (file, file offset) even after
//! it exited.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// One executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The path as the process sees it, or a pseudo name such as `[vdso]` / `[anon]`.
    pub name: Arc<str>,
    /// Where the agent can open the file (through `/proc/<pid>/root` for processes in another
    /// mount namespace); `None` for pseudo mappings.
    pub file: Option<Arc<Path>>,
    pub inode: u64,
}

/// A process's executable mappings, sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapsSnapshot {
    regions: Vec<Region>,
}

impl MapsSnapshot {
    /// Reads `/proc/<pid>/maps` now.
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let root = own_mount_namespace(pid)
            .then(PathBuf::new)
            .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/root")));
        Ok(Self::parse(&text, &root))
    }

    /// Parses maps text; file paths are prefixed with `root` (empty: as they are).
    pub fn parse(text: &str, root: &Path) -> Self {
        let mut regions: Vec<Region> = text.lines().filter_map(|l| parse_line(l, root)).collect();
        regions.sort_by_key(|r| r.start);
        Self { regions }
    }

    /// The mapping holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.start <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (addr < r.end).then_some(r)
    }
}

/// `start-end perms offset dev inode [path]`, executable mappings only.
fn parse_line(line: &str, root: &Path) -> Option<Region> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    // The path may contain spaces: it is the rest of the line.
    let path = line
        .splitn(6, |c: char| c.is_ascii_whitespace())
        .nth(5)
        .map(str::trim)
        .unwrap_or("");
    let (name, file) = if path.starts_with('/') {
        let file: PathBuf = if root.as_os_str().is_empty() {
            PathBuf::from(path)
        } else {
            root.join(path.trim_start_matches('/'))
        };
        (path, Some(Arc::from(file.as_path())))
    } else if path.is_empty() {
        ("[anon]", None)
    } else {
        (path, None)
    };
    Some(Region {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        name: name.into(),
        file,
        inode,
    })
}

/// Does `pid` see the same file system as the agent?
fn own_mount_namespace(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    ns("/proc/self/ns/mnt") == ns(&format!("/proc/{pid}/ns/mnt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234   /usr/bin/work er
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234   /usr/bin/work er
7f0000000000-7f0000100000 r-xp 00028000 fe:01 99     /usr/lib/libc.so.6
7f0000200000-7f0000201000 rwxp 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0      [vdso]
";

    #[test]
    fn executable_regions_are_found() {
        let m = MapsSnapshot::parse(MAPS, Path::new(""));
        assert_eq!(m.regions.len(), 4, "read-only mapping skipped");
        let r = m.find(0x55d0c0a01234).expect("in the executable");
        assert_eq!(r.name.as_ref(), "/usr/bin/work er");
        assert_eq!(r.offset + (0x55d0c0a01234 - r.start), 0x1234);
        assert_eq!(m.find(0x7f0000000010).map(|r| r.inode), Some(99));
        assert_eq!(
            m.find(0x7f0000200010).map(|r| r.name.as_ref()),
            Some("[anon]")
        );
        assert_eq!(
            m.find(0x7ffd00000100).map(|r| r.name.as_ref()),
            Some("[vdso]")
        );
        assert!(m.find(0x55d0c0a00010).is_none(), "not executable");
        assert!(m.find(0x1).is_none());
        assert!(m.find(u64::MAX).is_none());
    }

    #[test]
    fn other_namespaces_go_through_proc_root() {
        let m = MapsSnapshot::parse(MAPS, Path::new("/proc/42/root"));
        let r = m.find(0x7f0000000010).expect("libc");
        assert_eq!(
            r.file.as_deref(),
            Some(Path::new("/proc/42/root/usr/lib/libc.so.6"))
        );
        assert_eq!(r.name.as_ref(), "/usr/lib/libc.so.6");
    }
}
