//! Which TLS libraries a process has mapped, from `/proc/<pid>/maps`.

/// One executable mapping of a TLS library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedLibrary {
    /// File identity: device (`major:minor` as the kernel prints it) and inode. Two processes
    /// mapping the same file, whatever path each uses (a container sees its own), share it; a
    /// uprobe attached to the file fires in both.
    pub identity: (String, u64),
    /// Path as the process sees it (in its own mount namespace).
    pub path: String,
}

/// Libraries whose OpenSSL API the agent hooks: `libssl.so`, `libssl.so.3`, `libssl.so.1.1`.
pub(super) fn is_libssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libssl.so")
}

/// Dynamic loaders, whose `_dl_debug_state` the `sockets` capture path hooks for library
/// loads: glibc's `ld-linux-x86-64.so.2` (and other `ld-linux*`), musl's `ld-musl-*`.
pub(super) fn is_loader(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-linux") || name.starts_with("ld-musl")
}

/// The executable mappings of TLS libraries in a `/proc/<pid>/maps` text, one per file.
pub fn tls_libraries(maps: &str) -> Vec<MappedLibrary> {
    mapped_files(maps, is_libssl)
}

/// The executable mappings of dynamic loaders, one per file.
pub fn loaders(maps: &str) -> Vec<MappedLibrary> {
    mapped_files(maps, is_loader)
}

/// The executable file mappings whose path `wanted` accepts, one per file.
fn mapped_files(maps: &str, wanted: fn(&str) -> bool) -> Vec<MappedLibrary> {
    let mut found: Vec<MappedLibrary> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may hold spaces)
        let mut fields = line.splitn(6, ' ');
        let (Some(_), Some(perms), Some(_), Some(dev), Some(inode), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = path.trim_start();
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        if !wanted(path) {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let identity = (dev.to_owned(), inode);
        if !found.iter().any(|l| l.identity == identity) {
            found.push(MappedLibrary {
                identity,
                path: path.to_owned(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines from `/proc/<nginx worker>/maps` on Debian (OpenSSL 3), plus a container's copy.
    const MAPS: &str = "\
55d0c8a00000-55d0c8a2c000 r--p 00000000 fe:01 1315443                    /usr/sbin/nginx
7f3b1c600000-7f3b1c65f000 r--p 00000000 fe:01 1311060                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3b1c65f000-7f3b1c759000 r-xp 0005f000 fe:01 1311060                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3b1c759000-7f3b1c798000 r--p 00159000 fe:01 1311060                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3b1c800000-7f3b1ca00000 r-xp 00200000 fe:01 1311061                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f3b1d000000-7f3b1d001000 r-xp 00001000 00:2a 77                         /opt/app dir/lib/libssl.so.1.1
7f3b1d100000-7f3b1d101000 r-xp 00001000 00:2a 78                         /tmp/libssl.so.3 (deleted)
7f3b1d200000-7f3b1d221000 rw-p 00000000 00:00 0                          [heap]
7ffd5a1e0000-7ffd5a201000 rw-p 00000000 00:00 0                          [stack]
garbage line
";

    #[test]
    fn finds_the_dynamic_loader() {
        let maps = "7f3b1e000000-7f3b1e025000 r-xp 00001000 fe:01 1311001                    \
                    /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n\
                    7f3b1e100000-7f3b1e101000 r-xp 00001000 00:2a 91                         \
                    /lib/ld-musl-x86_64.so.1\n";
        let found: Vec<String> = loaders(maps).into_iter().map(|l| l.path).collect();
        assert_eq!(
            found,
            [
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "/lib/ld-musl-x86_64.so.1"
            ]
        );
        assert!(loaders(MAPS).is_empty());
    }

    #[test]
    fn finds_each_executable_libssl_once() {
        let libs = tls_libraries(MAPS);
        assert_eq!(
            libs,
            vec![
                MappedLibrary {
                    identity: ("fe:01".to_owned(), 1_311_060),
                    path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".to_owned(),
                },
                MappedLibrary {
                    identity: ("00:2a".to_owned(), 77),
                    path: "/opt/app dir/lib/libssl.so.1.1".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn nothing_in_processes_without_tls() {
        assert!(tls_libraries("").is_empty());
        assert!(
            tls_libraries(
                "55d0c8a00000-55d0c8a2c000 r-xp 00000000 fe:01 1 /usr/lib/libc.so.6\n\
                 7f3b1c600000-7f3b1c65f000 r--p 00000000 fe:01 2 /usr/lib/libssl.so.3\n"
            )
            .is_empty()
        );
    }
}
