//! Applies the include/exclude selectors to the connections the pipeline sees: decides each
//! process once (cached in the inventory), each connection by its ports when port selectors
//! ask for it, and counts what it excluded. The pipeline mutes excluded connections in the
//! kernel, so an excluded process costs one map lookup per socket syscall afterwards.
use super::{
    processes::Processes,
    selectors::{ProcessFacts, Selectors, Verdict},
};

/// The selectors and their counters.
#[derive(Debug, Default)]
pub struct Selection {
    selectors: Selectors,
    /// Processes decided as excluded (each decision once per process while the inventory
    /// has room for its verdict).
    pub excluded_processes: u64,
    /// Connections muted because of a selector.
    pub excluded_connections: u64,
}

impl Selection {
    pub fn new(selectors: Selectors) -> Self {
        Self {
            selectors,
            ..Self::default()
        }
    }

    /// Whether `tgid` is excluded whatever its connections (decided and cached on first
    /// use). Free when no selector is configured.
    pub fn process_excluded(&mut self, procs: &mut Processes, tgid: u32, comm: &[u8; 16]) -> bool {
        !self.selectors.is_empty() && self.verdict(procs, tgid, comm).0 == Verdict::Excluded
    }

    /// Whether a connection of `tgid` with these ports (local, remote; 0 = unknown) is
    /// observed. Counts an excluded connection.
    pub fn connection_observed(
        &mut self,
        procs: &mut Processes,
        tgid: u32,
        comm: &[u8; 16],
        ports: [u16; 2],
    ) -> bool {
        if self.selectors.is_empty() {
            return true;
        }
        let observed = match self.verdict(procs, tgid, comm) {
            (Verdict::Observed, _) => true,
            (Verdict::Excluded, _) => false,
            (Verdict::ByPort, included) => self.selectors.connection(included, ports),
        };
        if !observed {
            self.excluded_connections += 1;
        }
        observed
    }

    /// A process exec'd and is surely alive: decide it now (a short-lived client may be gone
    /// by its first socket event, and its executable with it). Only with selectors, within
    /// the caller's exec budget.
    pub fn decide_at_exec(&mut self, procs: &mut Processes, tgid: u32, comm: &[u8; 16]) {
        if !self.selectors.is_empty() {
            self.verdict(procs, tgid, comm);
        }
    }

    fn verdict(&mut self, procs: &mut Processes, tgid: u32, comm: &[u8; 16]) -> (Verdict, bool) {
        if let Some(k) = procs.inventory.get(tgid)
            && let Some(v) = k.verdict
        {
            return (v, k.included);
        }
        // A connection first seen through data (seeded at start) carries no comm: the
        // inventory's, from exec or the start scan, stands in.
        let comm = match procs.inventory.get(tgid) {
            Some(k) if comm[0] == 0 => k.comm,
            _ => *comm,
        };
        let comm_s = crate::ebpf::decode::comm_str(&comm).to_owned();
        let host = procs.host_name().to_owned();
        let known_name = procs
            .inventory
            .get(tgid)
            .and_then(|k| k.name.as_deref())
            .map(str::to_owned);
        let mut facts = ProcessFacts::new(tgid, &comm_s, &host, known_name);
        let verdict = self.selectors.process(&mut facts);
        let included = self.selectors.process_included(&mut facts);
        if verdict == Verdict::Excluded {
            self.excluded_processes += 1;
        }
        procs.inventory.set_verdict(tgid, verdict, included, comm);
        // A name read for a selector is the name the process's traffic will carry.
        if let Some(name) = facts.take_service() {
            procs.inventory.set_name(tgid, name.into_boxed_str());
        }
        (verdict, included)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::inventory::Inventory;

    fn selection(include: &[&str], exclude: &[&str]) -> Selection {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        Selection::new(Selectors::parse(&v(include), &v(exclude)).unwrap_or_default())
    }

    #[test]
    fn decided_once_per_process_and_counted() {
        let me = std::process::id();
        let mut procs = Processes::new(10, Inventory::new(10, 0));
        let comm = [0u8; 16];
        let mut s = selection(&[], &[&format!("pid={me}")]);
        assert!(s.process_excluded(&mut procs, me, &comm));
        assert!(!s.connection_observed(&mut procs, me, &comm, [80, 40000]));
        // One process decision (cached in the inventory), one connection counted.
        assert_eq!((s.excluded_processes, s.excluded_connections), (1, 1));
        assert!(procs.inventory.get(me).is_some_and(|k| k.verdict.is_some()));
        // Another process is observed.
        assert!(s.connection_observed(&mut procs, 1, &comm, [80, 40000]));
        // A re-exec forgets the verdict.
        procs.inventory.exec(me, comm, 0);
        assert_eq!(procs.inventory.get(me).and_then(|k| k.verdict), None);
    }

    #[test]
    fn ports_decide_connections_and_nothing_configured_costs_nothing() {
        let me = std::process::id();
        let mut procs = Processes::new(10, Inventory::new(10, 0));
        let comm = [0u8; 16];
        let mut s = selection(&[], &[]);
        assert!(!s.process_excluded(&mut procs, me, &comm));
        assert!(s.connection_observed(&mut procs, me, &comm, [1, 2]));
        assert_eq!(procs.inventory.len(), 0, "no lookup without selectors");
        let mut s = selection(&["port=8080"], &[]);
        assert!(!s.process_excluded(&mut procs, me, &comm));
        assert!(s.connection_observed(&mut procs, me, &comm, [8080, 51000]));
        assert!(!s.connection_observed(&mut procs, me, &comm, [9090, 51000]));
        assert_eq!((s.excluded_processes, s.excluded_connections), (0, 1));
    }
}
