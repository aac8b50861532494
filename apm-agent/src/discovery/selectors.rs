//! Which processes and connections the agent observes: `include` / `exclude` selectors.
//!
//! A selector is `key=value`. Reserved keys select a process by what the kernel and /proc
//! say about it (`exe`, `pid`, `pidns`, `netns`, `service`) or a connection by a port
//! (`port`, its local or remote end); any other key is a resource attribute of the process
//! (`k8s.namespace.name=shop`, `container.id=...`, `deployment.environment=prod`), matched
//! against the OTLP resource the agent builds for it, so whatever fills the resource
//! (container and Kubernetes metadata) can be selected on without a new selector kind.
//! Values of `exe`, `service` and attributes are globs (`*`, `?`).
//!
//! Semantics: a connection is observed when no exclude selector matches it or its process,
//! and, if any include selector is given, one of them matches it or its process. Excluded
//! connections are muted in the kernel (the same mechanism as unclassified traffic), so
//! they cost one map lookup per syscall and produce no metrics, spans or runtime metrics.
use std::{os::unix::fs::MetadataExt as _, path::Path};

use crate::traces::span::Value;

/// A selector that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("selector {0:?} is not key=value")]
    Syntax(String),
    #[error("selector {0:?}: the value is not a number")]
    Number(String),
}

/// One selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Executable: the full path when the glob holds a `/`, else the file name.
    Exe(String),
    Pid(u32),
    /// A connection's local or remote port.
    Port(u16),
    /// PID namespace inode (`readlink /proc/<pid>/ns/pid` -> `pid:[INODE]`).
    PidNs(u64),
    /// Network namespace inode.
    NetNs(u64),
    /// Service name (glob).
    Service(String),
    /// Resource attribute `key` with a value matching the glob.
    Attribute(String, String),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let (k, v) = s
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| SelectorError::Syntax(s.to_owned()))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| SelectorError::Number(s.to_owned()))
        };
        let small = |v: &str| -> Result<u32, SelectorError> {
            u32::try_from(num(v)?).map_err(|_| SelectorError::Number(s.to_owned()))
        };
        Ok(match k {
            "exe" => Self::Exe(v.to_owned()),
            "pid" => Self::Pid(small(v)?),
            "port" => {
                Self::Port(u16::try_from(num(v)?).map_err(|_| SelectorError::Number(s.to_owned()))?)
            }
            "pidns" => Self::PidNs(num(v)?),
            "netns" => Self::NetNs(num(v)?),
            "service" => Self::Service(v.to_owned()),
            _ => Self::Attribute(k.to_owned(), v.to_owned()),
        })
    }

    fn is_port(&self) -> bool {
        matches!(self, Self::Port(_))
    }
}

/// What a process is, as far as selectors ask: filled lazily by [`ProcessFacts`].
pub trait Facts {
    fn pid(&self) -> u32;
    fn exe(&mut self) -> Option<&str>;
    fn namespace(&mut self, kind: &str) -> Option<u64>;
    fn service(&mut self) -> Option<&str>;
    fn attribute(&mut self, key: &str) -> Option<String>;
}

/// The verdict on a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Observed whatever the connection.
    Observed,
    /// Excluded whatever the connection.
    Excluded,
    /// Up to each connection's ports (port selectors are configured).
    ByPort,
}

/// The configured selectors.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    include: Vec<Selector>,
    exclude: Vec<Selector>,
}

impl Selectors {
    pub fn parse(include: &[String], exclude: &[String]) -> Result<Self, SelectorError> {
        let parse = |v: &[String]| {
            v.iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            include: parse(include)?,
            exclude: parse(exclude)?,
        })
    }

    /// No selector: everything is observed (and nothing needs to be looked up).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The verdict on a process from its process-level selectors.
    pub fn process(&self, facts: &mut dyn Facts) -> Verdict {
        if self
            .exclude
            .iter()
            .any(|s| !s.is_port() && matches(s, facts))
        {
            return Verdict::Excluded;
        }
        let port_selectors = self
            .include
            .iter()
            .chain(&self.exclude)
            .any(Selector::is_port);
        let included = self.include.is_empty()
            || self
                .include
                .iter()
                .any(|s| !s.is_port() && matches(s, facts));
        match (included, port_selectors) {
            (true, false) => Verdict::Observed,
            (false, false) => Verdict::Excluded,
            // Port excludes can still drop an included process's connection; port includes
            // can still admit a connection of a process no other include matched.
            _ if included && !self.exclude.iter().any(Selector::is_port) => Verdict::Observed,
            _ => Verdict::ByPort,
        }
    }

    /// The verdict on one connection of a [`Verdict::ByPort`] process, whose process-level
    /// includes matched (`process_included`) or not. Ports of 0 are unknown.
    pub fn connection(&self, process_included: bool, ports: [u16; 2]) -> bool {
        let hit = |s: &Selector| matches!(s, Selector::Port(p) if ports.contains(p) && *p != 0);
        if self.exclude.iter().any(hit) {
            return false;
        }
        process_included || self.include.iter().any(hit)
    }

    /// Whether the process-level includes admit the process (no include: yes).
    pub fn process_included(&self, facts: &mut dyn Facts) -> bool {
        let process_level: Vec<&Selector> = self.include.iter().filter(|s| !s.is_port()).collect();
        let only_ports = !self.include.is_empty() && process_level.is_empty();
        !only_ports && (process_level.is_empty() || process_level.iter().any(|s| matches(s, facts)))
    }
}

fn matches(s: &Selector, facts: &mut dyn Facts) -> bool {
    match s {
        Selector::Exe(glob) => facts.exe().is_some_and(|exe| {
            if glob.contains('/') {
                glob_match(glob, exe)
            } else {
                glob_match(glob, exe.rsplit('/').next().unwrap_or(exe))
            }
        }),
        Selector::Pid(p) => facts.pid() == *p,
        Selector::Port(_) => false,
        Selector::PidNs(ino) => facts.namespace("pid") == Some(*ino),
        Selector::NetNs(ino) => facts.namespace("net") == Some(*ino),
        Selector::Service(glob) => facts.service().is_some_and(|n| glob_match(glob, n)),
        Selector::Attribute(k, glob) => facts.attribute(k).is_some_and(|v| glob_match(glob, &v)),
    }
}

/// `*` (any run, also empty) and `?` (one character) globbing; no character classes.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ti));
                gi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                gi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    gi = sg + 1;
                    ti = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// A live process's facts, read from /proc on first use.
pub struct ProcessFacts<'a> {
    pid: u32,
    comm: &'a str,
    host: &'a str,
    exe: Option<Option<String>>,
    service: Option<String>,
    attributes: Option<Vec<(String, String)>>,
}

impl<'a> ProcessFacts<'a> {
    /// `service`: the name when already read (at exec).
    pub fn new(pid: u32, comm: &'a str, host: &'a str, service: Option<String>) -> Self {
        Self {
            pid,
            comm,
            host,
            exe: None,
            service,
            attributes: None,
        }
    }

    /// The service name, if a selector made it resolve.
    pub fn take_service(self) -> Option<String> {
        self.service
    }

    fn service_name(&mut self) -> &str {
        let (pid, comm) = (self.pid, self.comm);
        self.service
            .get_or_insert_with(|| super::service_name::resolve(pid, comm))
    }
}

impl Facts for ProcessFacts<'_> {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn exe(&mut self) -> Option<&str> {
        let pid = self.pid;
        self.exe
            .get_or_insert_with(|| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| {
                        p.to_string_lossy()
                            .trim_end_matches(" (deleted)")
                            .to_owned()
                    })
            })
            .as_deref()
    }

    fn namespace(&mut self, kind: &str) -> Option<u64> {
        // The inode of the namespace file is the namespace's id (`pid:[4026531836]`).
        std::fs::metadata(Path::new(&format!("/proc/{}/ns/{kind}", self.pid)))
            .ok()
            .map(|m| m.ino())
    }

    fn service(&mut self) -> Option<&str> {
        Some(self.service_name())
    }

    fn attribute(&mut self, key: &str) -> Option<String> {
        if self.attributes.is_none() {
            // The resource the process's spans and metrics will carry: whatever enriches it
            // (containers, Kubernetes) is selectable.
            let (pid, host) = (self.pid, self.host);
            let service = self.service_name().to_owned();
            let r = super::resource::resolve(pid, &service, host);
            let mut all: Vec<(String, String)> = r
                .attributes
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                    };
                    ((*k).to_owned(), v)
                })
                .collect();
            all.extend(r.extra.iter().cloned());
            self.attributes = Some(all);
        }
        self.attributes
            .as_ref()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        pid: u32,
        exe: Option<&'static str>,
        service: &'static str,
        attrs: Vec<(&'static str, &'static str)>,
    }

    impl Facts for Fake {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn exe(&mut self) -> Option<&str> {
            self.exe
        }
        fn namespace(&mut self, kind: &str) -> Option<u64> {
            (kind == "net").then_some(4026531840)
        }
        fn service(&mut self) -> Option<&str> {
            Some(self.service)
        }
        fn attribute(&mut self, key: &str) -> Option<String> {
            self.attrs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn nginx() -> Fake {
        Fake {
            pid: 42,
            exe: Some("/usr/sbin/nginx"),
            service: "web",
            attrs: vec![("k8s.namespace.name", "shop")],
        }
    }

    fn sel(include: &[&str], exclude: &[&str]) -> Selectors {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        Selectors::parse(&v(include), &v(exclude)).expect("valid selectors")
    }

    #[test]
    fn globs() {
        for (g, t, want) in [
            ("nginx", "nginx", true),
            ("ngin?", "nginx", true),
            ("py*", "python3.11", true),
            ("*", "", true),
            ("*.py", "app.py", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("/usr/*/nginx", "/usr/sbin/nginx", true),
            ("nginx", "nginx2", false),
        ] {
            assert_eq!(glob_match(g, t), want, "{g} {t}");
        }
    }

    #[test]
    fn parsing() {
        assert_eq!(Selector::parse("pid=7"), Ok(Selector::Pid(7)));
        assert_eq!(Selector::parse(" port = 443 "), Ok(Selector::Port(443)));
        assert_eq!(
            Selector::parse("k8s.namespace.name=kube-*"),
            Ok(Selector::Attribute(
                "k8s.namespace.name".to_owned(),
                "kube-*".to_owned()
            ))
        );
        assert!(matches!(
            Selector::parse("port=70000"),
            Err(SelectorError::Number(_))
        ));
        assert!(matches!(
            Selector::parse("nginx"),
            Err(SelectorError::Syntax(_))
        ));
        assert!(matches!(
            Selector::parse("exe="),
            Err(SelectorError::Syntax(_))
        ));
    }

    #[test]
    fn process_verdicts() {
        assert!(sel(&[], &[]).is_empty());
        assert_eq!(
            sel(&[], &["exe=nginx"]).process(&mut nginx()),
            Verdict::Excluded
        );
        assert_eq!(
            sel(&[], &["exe=sshd"]).process(&mut nginx()),
            Verdict::Observed
        );
        assert_eq!(
            sel(&["exe=/usr/sbin/*"], &[]).process(&mut nginx()),
            Verdict::Observed
        );
        assert_eq!(
            sel(&["exe=/bin/*"], &[]).process(&mut nginx()),
            Verdict::Excluded
        );
        assert_eq!(
            sel(&["pid=42"], &[]).process(&mut nginx()),
            Verdict::Observed
        );
        assert_eq!(
            sel(&["service=w*"], &["pid=42"]).process(&mut nginx()),
            Verdict::Excluded
        );
        assert_eq!(
            sel(&[], &["k8s.namespace.name=shop"]).process(&mut nginx()),
            Verdict::Excluded
        );
        assert_eq!(
            sel(&["netns=4026531840"], &[]).process(&mut nginx()),
            Verdict::Observed
        );
        assert_eq!(
            sel(&["pidns=1"], &[]).process(&mut nginx()),
            Verdict::Excluded
        );
    }

    #[test]
    fn port_selectors_decide_per_connection() {
        // Include by port only: every process waits for its connections' ports.
        let s = sel(&["port=8080"], &[]);
        assert_eq!(s.process(&mut nginx()), Verdict::ByPort);
        let inc = s.process_included(&mut nginx());
        assert!(!inc);
        assert!(s.connection(inc, [8080, 51000]));
        assert!(!s.connection(inc, [5432, 51000]));
        // Exclude a port of an observed process.
        let s = sel(&[], &["port=22"]);
        assert_eq!(s.process(&mut nginx()), Verdict::ByPort);
        let inc = s.process_included(&mut nginx());
        assert!(inc);
        assert!(!s.connection(inc, [22, 40000]));
        assert!(s.connection(inc, [80, 40000]));
        // Unknown ports (0) never match.
        assert!(s.connection(inc, [0, 0]));
        // A process include without port excludes needs no port.
        assert_eq!(
            sel(&["exe=nginx", "port=9"], &[]).process(&mut nginx()),
            Verdict::Observed
        );
    }
}
