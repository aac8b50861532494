//! The libssl files the dynamic loader would give a process started later: hooked at start-up,
//! before any process maps them.
//!
//! Otherwise a library is hooked only once some process has mapped it, and the hooking races
//! that process: a short-lived client (curl, a cron job, a health check) on a libssl no other
//! process had mapped does its handshake and its one request before the probes are attached,
//! so its traffic is missed and its encrypted bytes are counted as an unclassified connection.
//! Measured on this machine kind: a fresh agent, one `curl https://...` on the system libssl,
//! 5 runs out of 5 with no client request seen.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use super::libraries::is_libssl;

/// Directories the loader searches whatever `ld.so.conf` says (glibc's trusted directories).
const TRUSTED_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

/// `include` nesting followed in `ld.so.conf` (it may include itself).
const MAX_INCLUDE_DEPTH: usize = 4;

/// The loader's search directories under `root` (a path such as `/proc/1/root`): those
/// `ld.so.conf` lists (following its `include` lines) and the trusted ones, as absolute
/// paths inside `root`, each once, in the loader's order.
pub fn search_dirs(root: &Path) -> Vec<String> {
    let mut dirs = Vec::new();
    read_conf(root, "/etc/ld.so.conf", 0, &mut dirs);
    for dir in TRUSTED_DIRS {
        push_once(&mut dirs, (*dir).to_owned());
    }
    dirs
}

fn push_once(dirs: &mut Vec<String>, dir: String) {
    if !dirs.contains(&dir) {
        dirs.push(dir);
    }
}

/// Adds the directories of the configuration file `conf` (a path inside `root`) to `dirs`.
fn read_conf(root: &Path, conf: &str, depth: usize, dirs: &mut Vec<String>) {
    let Ok(text) = std::fs::read_to_string(inside(root, conf)) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            if depth < MAX_INCLUDE_DEPTH {
                for file in expand(root, pattern.trim()) {
                    read_conf(root, &file, depth + 1, dirs);
                }
            }
            continue;
        }
        // A line may hold several directories (`ld.so.conf(5)`: separated by spaces, tabs,
        // commas or colons); `hwcap` lines and relative paths are not directories.
        for dir in line.split([' ', '\t', ',', ':']) {
            if dir.starts_with('/') {
                push_once(dirs, dir.trim_end_matches('/').to_owned());
            }
        }
    }
}

/// The files an `include` pattern names, sorted: a `*` is allowed in the file name only
/// (`/etc/ld.so.conf.d/*.conf`), which is how every distribution writes it.
fn expand(root: &Path, pattern: &str) -> Vec<String> {
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let dir = if dir.is_empty() { "/" } else { dir };
    if !name.contains('*') {
        return vec![format!("{}/{name}", dir.trim_end_matches('/'))];
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let Ok(entries) = std::fs::read_dir(inside(root, dir)) else {
        return Vec::new();
    };
    let mut files: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= name.len() - 1)
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .collect();
    files.sort();
    files
}

/// `path` (absolute, as the processes under `root` see it) as the agent reaches it.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The libssl files in the loader's search directories under `root`, as paths inside `root`
/// (symbolic links included: the same file under two names is one identity, see
/// [`mapped_identity`]).
pub fn libssl_files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in search_dirs(root) {
        let Ok(entries) = std::fs::read_dir(inside(root, &dir)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_libssl(n))
            .collect();
        names.sort();
        found.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
    }
    found
}

/// The identity `/proc/<pid>/maps` shows for `file` (device `major:minor` and inode), read
/// the only exact way: by mapping the file's first page and reading the agent's own maps
/// line. `stat` can disagree with maps (btrfs subvolumes report their own device), and a
/// library hooked once under each of two identities would have every call reported twice.
pub fn mapped_identity(file: &File) -> io::Result<(String, u64)> {
    // SAFETY: a new private read-only mapping of one page of an open file: no existing
    // memory is touched, and it is unmapped below before anything could read through it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let maps = std::fs::read_to_string("/proc/self/maps");
    // SAFETY: the mapping made above, one page long, not used after this.
    unsafe { libc::munmap(addr, 1) };
    let start = format!("{:x}-", addr as usize);
    maps?
        .lines()
        .find(|l| l.starts_with(&start))
        .and_then(identity_of_line)
        .ok_or_else(|| io::Error::other("the mapping is not in /proc/self/maps"))
}

/// Device and inode of a `/proc/<pid>/maps` line (`address perms offset dev inode path`).
pub(super) fn identity_of_line(line: &str) -> Option<(String, u64)> {
    let mut fields = line.split_ascii_whitespace().skip(3);
    let dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    Some((dev.to_owned(), inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = inside(root, path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn search_dirs_follow_ld_so_conf_and_its_includes() {
        let root = tempdir("search-dirs");
        write(
            &root,
            "/etc/ld.so.conf",
            "include /etc/ld.so.conf.d/*.conf\n/opt/first # a comment\ninclude /etc/ld.so.conf\n",
        );
        write(
            &root,
            "/etc/ld.so.conf.d/x86_64-linux-gnu.conf",
            "# Multiarch support\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu/\n",
        );
        write(
            &root,
            "/etc/ld.so.conf.d/libc.conf",
            "/usr/local/lib, /opt/two:/opt/three\nrelative/dir\n",
        );
        write(&root, "/etc/ld.so.conf.d/ignored.txt", "/not/included\n");
        assert_eq!(
            search_dirs(&root),
            [
                "/usr/local/lib",
                "/opt/two",
                "/opt/three",
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/opt/first",
                "/lib",
                "/lib64",
                "/usr/lib",
                "/usr/lib64",
            ]
        );
    }

    #[test]
    fn without_ld_so_conf_the_trusted_dirs_remain() {
        let root = tempdir("no-conf");
        assert_eq!(search_dirs(&root), TRUSTED_DIRS);
    }

    #[test]
    fn finds_libssl_files_in_the_search_dirs_only() {
        let root = tempdir("libssl-files");
        write(&root, "/etc/ld.so.conf", "/usr/lib/x86_64-linux-gnu\n");
        write(&root, "/usr/lib/x86_64-linux-gnu/libssl.so.3", "elf");
        write(&root, "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "elf");
        write(&root, "/usr/lib/libssl.so.1.1", "elf");
        write(&root, "/opt/app/libssl.so.3", "elf");
        assert_eq!(
            libssl_files(&root),
            [
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/usr/lib/libssl.so.1.1"
            ]
        );
    }

    /// The identity read by mapping a file is the one a process mapping it shows: checked on a
    /// library this test process has mapped itself (its libc).
    #[test]
    fn mapped_identity_equals_what_maps_shows_for_a_loaded_library() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let (line, path) = maps
            .lines()
            .filter(|l| l.contains(" r-xp "))
            .find_map(|l| {
                let path = l.split_ascii_whitespace().nth(5)?;
                path.contains("libc.so").then_some((l, path))
            })
            .expect("the test binary maps libc");
        let file = File::open(path).expect("open libc");
        assert_eq!(
            mapped_identity(&file).expect("identity"),
            identity_of_line(line).expect("parsed")
        );
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "apm-loader-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
