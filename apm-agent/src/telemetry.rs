//! The agent's own telemetry, the way Vector's internal events work: each stage (the kernel
//! adapter's counters, the pipeline, the parsers, discovery, traces, metrics, export, TLS,
//! profiles, Kubernetes) declares its counters with [`counters!`], names and documents its
//! metric families next to them, and renders them itself ([`Stats`]). There is no central
//! struct that every module writes into: a stage gets its own `Arc` of its own counters, and
//! the listener renders the list of stages it was given ([`Registry`]).
//!
//! Names follow `apm_<what>_<unit>_total`, with bounded label values. A family may take rows
//! from several stages ([`MAP_OVERFLOWS`]: each stage reports the budgets it owns); the
//! [`Exposition`] groups them under one HELP and TYPE.
use std::{
    fmt::Write as _,
    sync::{Arc, atomic::AtomicU64},
};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// A metric family: name, type, help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            help,
        }
    }
}

/// Entries refused by a budget, one row per table (label `map`), from every stage that owns
/// a bounded table.
pub const MAP_OVERFLOWS: Family = Family::counter(
    "apm_map_overflows_total",
    "Entries refused because a table's budget was spent.",
);

/// A sample's value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// Samples gathered from the stages, family by family, in the order families first appear.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<(Family, Vec<(String, Value)>)>,
}

impl Exposition {
    fn rows(&mut self, family: &Family) -> &mut Vec<(String, Value)> {
        let i = match self
            .families
            .iter()
            .position(|(f, _)| f.name == family.name)
        {
            Some(i) => i,
            None => {
                self.families.push((*family, Vec::new()));
                self.families.len() - 1
            }
        };
        &mut self.families[i].1
    }

    /// One sample; `labels` without braces (`reason="x"`), empty for none.
    pub fn add(&mut self, family: &Family, labels: impl Into<String>, value: u64) {
        self.rows(family).push((labels.into(), Value::Int(value)));
    }

    /// One unlabelled sample with a fractional value (seconds).
    pub fn add_f64(&mut self, family: &Family, value: f64) {
        self.rows(family).push((String::new(), Value::Float(value)));
    }

    /// Writes every family in the Prometheus text format: HELP, TYPE, then its samples.
    pub fn write(&self, out: &mut String) {
        for (f, rows) in &self.families {
            let name = f.name;
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} {}",
                f.help,
                f.kind.as_str()
            );
            for (labels, value) in rows {
                let _ = match (labels.is_empty(), value) {
                    (true, Value::Int(v)) => writeln!(out, "{name} {v}"),
                    (true, Value::Float(v)) => writeln!(out, "{name} {v}"),
                    (false, Value::Int(v)) => writeln!(out, "{name}{{{labels}}} {v}"),
                    (false, Value::Float(v)) => writeln!(out, "{name}{{{labels}}} {v}"),
                };
            }
        }
    }
}

/// Lists the atomic counters a value holds, with their field names, so that a test can move
/// each one and see it reach `/metrics`.
pub trait Atomics {
    fn atomics<'a>(&'a self, name: &str, out: &mut Vec<(String, &'a AtomicU64)>);
}

impl Atomics for AtomicU64 {
    fn atomics<'a>(&'a self, name: &str, out: &mut Vec<(String, &'a AtomicU64)>) {
        out.push((name.to_owned(), self));
    }
}

impl<T: Atomics, const N: usize> Atomics for [T; N] {
    fn atomics<'a>(&'a self, name: &str, out: &mut Vec<(String, &'a AtomicU64)>) {
        for (i, item) in self.iter().enumerate() {
            item.atomics(&format!("{name}[{i}]"), out);
        }
    }
}

/// A stage's statistics: its counters, and how they read on `/metrics`.
pub trait Stats: Atomics + Send + Sync {
    /// Adds this stage's samples to `out`.
    fn render(&self, out: &mut Exposition);
}

/// Declares a stage's counters: a struct of atomics (and arrays or structs of them) that
/// lists them all for the every-counter-is-exported test ([`Atomics`]).
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $crate::telemetry::Atomics for $name {
            fn atomics<'a>(
                &'a self,
                name: &str,
                out: &mut Vec<(String, &'a std::sync::atomic::AtomicU64)>,
            ) {
                $(
                    $crate::telemetry::Atomics::atomics(
                        &self.$field,
                        &format!("{name}.{}", stringify!($field)),
                        out,
                    );
                )*
            }
        }
    };
}
pub(crate) use counters;

/// The stages the listener renders, in order.
#[derive(Clone, Default)]
pub struct Registry {
    stages: Vec<(&'static str, Arc<dyn Stats>)>,
}

impl Registry {
    /// Adds a stage under a name (for the tests' messages).
    pub fn with(mut self, name: &'static str, stage: Arc<dyn Stats>) -> Self {
        self.stages.push((name, stage));
        self
    }

    /// Adds every stage's samples.
    pub fn render(&self, out: &mut Exposition) {
        for (_, stage) in &self.stages {
            stage.render(out);
        }
    }

    /// Every counter of every stage, named `stage.field`.
    pub fn atomics(&self) -> Vec<(String, &AtomicU64)> {
        let mut out = Vec::new();
        for (name, stage) in &self.stages {
            stage.atomics(name, &mut out);
        }
        out
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.stages.iter().map(|(n, _)| n))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    counters! {
        /// A stage for the test.
        pub struct Demo {
            pub one: AtomicU64,
            pub two: [AtomicU64; 2],
        }
    }

    impl Stats for Demo {
        fn render(&self, out: &mut Exposition) {
            const F: Family = Family::counter("apm_demo_total", "Demo.");
            out.add(&F, "", self.one.load(Relaxed));
            out.add(&MAP_OVERFLOWS, "map=\"demo\"", self.two[1].load(Relaxed));
        }
    }

    #[test]
    fn families_group_rows_from_several_stages() {
        let demo = Arc::new(Demo::default());
        demo.one.store(3, Relaxed);
        let registry = Registry::default()
            .with("a", demo.clone())
            .with("b", Arc::new(Demo::default()));
        let mut e = Exposition::default();
        registry.render(&mut e);
        e.add_f64(&Family::counter("apm_seconds_total", "S."), 0.5);
        let mut out = String::new();
        e.write(&mut out);
        assert_eq!(
            out,
            "# HELP apm_demo_total Demo.\n# TYPE apm_demo_total counter\napm_demo_total 3\n\
             apm_demo_total 0\n# HELP apm_map_overflows_total Entries refused because a \
             table's budget was spent.\n# TYPE apm_map_overflows_total counter\n\
             apm_map_overflows_total{map=\"demo\"} 0\napm_map_overflows_total{map=\"demo\"} 0\n\
             # HELP apm_seconds_total S.\n# TYPE apm_seconds_total counter\napm_seconds_total 0.5\n"
        );
        let names: Vec<String> = registry.atomics().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "a.one", "a.two[0]", "a.two[1]", "b.one", "b.two[0]", "b.two[1]"
            ]
        );
    }
}
