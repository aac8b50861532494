//! Debian kernel packages, fetched through apt with a private source list: the system's own
//! sources, lists and package state are never touched.
//!
//! The archive's addresses come from the system's apt sources (whatever mirror or proxy the
//! machine is set up with), not from this file. The suites are Debian's: the system's own
//! release and its security suite (6.1 and 6.12 on bookworm), `bullseye-security` (the newest
//! 5.10, the kernel line of Debian 11 and Amazon Linux 2) and `trixie-backports` (the newest
//! 6.x/7.x kernels).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run};

/// The key Debian signs its archives with, when the system's source names none.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Suites beyond the system's own release, and why.
const EXTRA_SUITES: &[(Archive, &str)] = &[
    // 5.10 lives on only in Debian 11's security suite.
    (Archive::Security, "bullseye-security"),
    // The newest kernels Debian builds for a stable release.
    (Archive::Main, "trixie-backports"),
];
/// Lists older than this are refreshed (a failed refresh keeps the old ones).
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Main,
    Security,
}

/// One `deb` entry of the system's apt sources.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceEntry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// A private apt configuration under `dir`: its own source list, lists and package cache.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Writes the private source list (from the system's sources) under `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let entries = system_sources()?;
        let codename = os_codename()?;
        let list = private_list(&entries, &codename)?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("sources.list"), list)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The options that point apt at the private files only.
    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".to_owned(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            // No installed-package state: only downloads happen here.
            "-oDir::State::status=/dev/null".to_owned(),
            // Downloads land in a root-owned cache the `_apt` user cannot write.
            "-oAPT::Sandbox::User=root".to_owned(),
        ]
    }

    fn apt(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options());
        c
    }

    /// Refreshes the package lists when they are missing or old. A failed refresh with lists
    /// present only warns: the cached kernels still run offline.
    pub fn refresh(&self) -> Result<()> {
        let stamp = self.dir.join("lists/.refreshed");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        match run(self.apt("apt-get").args(["-qq", "update"])) {
            Ok(()) => {
                std::fs::write(&stamp, b"")?;
                Ok(())
            }
            Err(e) if self.has_lists() => {
                eprintln!(
                    "warning: refreshing the kernel package lists failed ({e:#}); using the cached lists"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn has_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists")).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().contains("_Packages")))
        })
    }

    /// Every package name starting with `linux-image-`.
    pub fn image_packages(&self) -> Result<Vec<String>> {
        let names = output(self.apt("apt-cache").args(["pkgnames", "linux-image-"]))
            .context("apt-cache pkgnames linux-image- failed")?;
        Ok(names.lines().map(str::to_owned).collect())
    }

    /// The package's version, and its files to unpack: itself, and on newer releases (where
    /// the image package only depends on them) its `linux-binary-*`, `linux-modules-*` and
    /// `linux-base-*` parts.
    pub fn parts_of(&self, package: &str) -> Result<(String, Vec<String>)> {
        let show = output(
            self.apt("apt-cache")
                .args(["show", "--no-all-versions", package]),
        )
        .with_context(|| format!("apt-cache show {package} failed"))?;
        let version = show
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("apt-cache show {package} gave no version"))?;
        let mut parts = vec![package.to_owned()];
        let release = package.trim_start_matches("linux-image-");
        for line in show.lines() {
            let Some(deps) = line.strip_prefix("Depends:") else {
                continue;
            };
            for dep in deps.split([',', '|']) {
                let name = dep.split_whitespace().next().unwrap_or_default();
                let split_part = ["linux-binary-", "linux-modules-", "linux-base-"]
                    .iter()
                    .any(|p| name.strip_prefix(p) == Some(release));
                if split_part && !parts.iter().any(|p| p == name) {
                    parts.push(name.to_owned());
                }
            }
        }
        Ok((version, parts))
    }

    /// Downloads `packages` (all of one source `version`) into `dest`, skipping those already
    /// there. Returns their files.
    pub fn download(
        &self,
        packages: &[String],
        version: &str,
        dest: &Path,
    ) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dest)?;
        let file = |p: &str| dest.join(format!("{p}_{}_amd64.deb", version.replace(':', "%3a")));
        let missing: Vec<&String> = packages.iter().filter(|p| !file(p).is_file()).collect();
        if !missing.is_empty() {
            let mut cmd = self.apt("apt-get");
            cmd.current_dir(dest)
                .args(["-qq", "download"])
                .args(&missing);
            run(&mut cmd)?;
        }
        packages
            .iter()
            .map(|p| {
                let f = file(p);
                if f.is_file() {
                    Ok(f)
                } else {
                    bail!("apt-get download {p} left no {}", f.display())
                }
            })
            .collect()
    }
}

/// `VERSION_CODENAME` of /etc/os-release (e.g. `bookworm`).
fn os_codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}

/// The `deb` entries of /etc/apt/sources.list and /etc/apt/sources.list.d/ (one-line
/// `.list` files and deb822 `.sources` files).
fn system_sources() -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        entries.extend(parse_one_line(&text));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            match f.extension().and_then(|e| e.to_str()) {
                Some("list") => entries.extend(parse_one_line(&text)),
                Some("sources") => entries.extend(parse_deb822(&text)),
                _ => {}
            }
        }
    }
    if entries.is_empty() {
        bail!("no apt sources found in /etc/apt/sources.list or /etc/apt/sources.list.d");
    }
    Ok(entries)
}

/// `deb [options] URI suite component...` lines.
fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            signed_by = opts
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(SourceEntry {
            uri: uri.trim_end_matches('/').to_owned(),
            suites: vec![suite.to_owned()],
            signed_by,
        });
    }
    out
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Signed-By:`), blank-line separated.
fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut signed_by = None;
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || value.split_whitespace().map(str::to_owned);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = words().collect(),
                "uris" => uris = words().collect(),
                "suites" => suites = words().collect(),
                "signed-by" => signed_by = Some(value.trim().to_owned()),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for uri in uris {
            out.push(SourceEntry {
                uri: uri.trim_end_matches('/').to_owned(),
                suites: suites.clone(),
                signed_by: signed_by.clone().filter(|s| !s.is_empty()),
            });
        }
    }
    out
}

/// The private source list: the system's release and security suites, plus
/// [`EXTRA_SUITES`], at the addresses the system uses for its own release.
fn private_list(entries: &[SourceEntry], codename: &str) -> Result<String> {
    let find = |suite: &str| entries.iter().find(|e| e.suites.iter().any(|s| s == suite));
    let main = find(codename).with_context(|| {
        format!("the system's apt sources have no entry for its own release {codename}")
    })?;
    let security_suite = format!("{codename}-security");
    let security = find(&security_suite)
        .with_context(|| format!("the system's apt sources have no entry for {security_suite}"))?;
    let line = |e: &SourceEntry, suite: &str| {
        let key = e.signed_by.as_deref().unwrap_or(DEFAULT_KEYRING);
        format!("deb [signed-by={key}] {} {suite} main\n", e.uri)
    };
    let mut list = line(main, codename) + &line(security, &security_suite);
    for (archive, suite) in EXTRA_SUITES {
        let e = match archive {
            Archive::Main => main,
            Archive::Security => security,
        };
        list.push_str(&line(e, suite));
    }
    Ok(list)
}

/// Picks, for a kernel line such as `6.1` (or `7`: any 7.x), the newest generic amd64 image
/// package among `names` (no `cloud` flavour: it lacks the 9p modules the guests need; no
/// `rt`, no debug or unsigned builds; no metapackage such as `linux-image-6.1-amd64`, whose
/// release has no patch level or ABI number).
pub fn newest_for_line(names: &[String], line: &str) -> Option<String> {
    let wanted: Vec<u64> = numbers(line);
    names
        .iter()
        .filter(|n| {
            let Some(release) = n.strip_prefix("linux-image-") else {
                return false;
            };
            release.ends_with("-amd64")
                && !["-cloud-", "-rt-", "-dbg", "-unsigned"]
                    .iter()
                    .any(|x| release.contains(x))
                && release.starts_with(|c: char| c.is_ascii_digit())
                && numbers(release.trim_end_matches("-amd64")).len() >= 3
                && numbers(release).starts_with(&wanted)
        })
        .max_by(|a, b| numbers(a).cmp(&numbers(b)))
        .cloned()
}

/// The digit groups of a name, in order (`6.1.0-57-amd64` -> 6, 1, 0, 57, 64).
fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_one_line_sources_are_read() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\
                      Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                      Types: deb-src\nURIs: http://x/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://sec.example/debian-security\n\
                      Suites: bookworm-security\nEnabled: yes\n";
        let e = parse_deb822(deb822);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].uri, "http://mirror.example/debian");
        assert_eq!(e[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(e[1].signed_by, None);
        let one = "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian/ bookworm main\n\
                   deb-src http://m/debian bookworm main\n";
        let e = parse_one_line(one);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(e[0].suites, ["bookworm"]);
    }

    #[test]
    fn the_private_list_uses_the_systems_addresses() {
        let entries = vec![
            SourceEntry {
                uri: "http://mirror.example/debian".into(),
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
                signed_by: None,
            },
            SourceEntry {
                uri: "http://sec.example/debian-security".into(),
                suites: vec!["bookworm-security".into()],
                signed_by: Some("/k.gpg".into()),
            },
        ];
        let list = private_list(&entries, "bookworm").expect("list");
        assert!(list.contains(&format!(
            "[signed-by={DEFAULT_KEYRING}] http://mirror.example/debian bookworm main"
        )));
        assert!(list.contains(
            "[signed-by=/k.gpg] http://sec.example/debian-security bullseye-security main"
        ));
        assert!(list.contains("http://mirror.example/debian trixie-backports main"));
        assert!(private_list(&entries, "trixie").is_err());
    }

    #[test]
    fn the_newest_package_of_a_line_is_picked() {
        let names: Vec<String> = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-6.1.0-57-amd64-dbg",
            "linux-image-6.12.118+deb12-amd64",
            "linux-image-6.12.9+deb12-amd64",
            "linux-image-5.10.0-46-amd64",
            "linux-image-7.2.12+deb13-amd64",
            "linux-image-7.3.4+deb13-amd64",
            "linux-image-7.3.4+deb13-amd64-unsigned",
            "linux-image-amd64",
            "linux-image-6.1-amd64",
            "linux-image-6.1.0-0.deb11.40-amd64",
        ]
        .map(String::from)
        .to_vec();
        let pick = |l| newest_for_line(&names, l);
        assert_eq!(pick("6.1").as_deref(), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(
            pick("6.12").as_deref(),
            Some("linux-image-6.12.118+deb12-amd64")
        );
        assert_eq!(pick("5.10").as_deref(), Some("linux-image-5.10.0-46-amd64"));
        assert_eq!(pick("7").as_deref(), Some("linux-image-7.3.4+deb13-amd64"));
        assert_eq!(pick("5.15"), None);
    }
}
