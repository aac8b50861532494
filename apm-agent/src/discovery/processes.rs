//! The processes the agent has seen traffic from: pid -> service name, resolved once per
//! process (at its first request, while /proc still has it), bounded, dropped on exit.
use std::{collections::hash_map::Entry, sync::Arc};

use rustc_hash::FxHashMap;

use super::{inventory::Inventory, resource, service_name};
use crate::{metrics::process_runtime::Target, traces::span::Resource};

/// One process.
#[derive(Debug)]
pub struct ProcessEntry {
    pub service: Box<str>,
    /// Service id in the RED aggregator, filled on first use.
    pub service_id: Option<u32>,
    /// OTLP resource, built when tracing first needs it.
    pub resource: Option<Arc<Resource>>,
}

/// Bounded process table.
#[derive(Debug)]
pub struct Processes {
    map: FxHashMap<u32, ProcessEntry>,
    budget: usize,
    overflowed: u64,
    /// Entry used for processes that arrive when the table is full.
    spill: ProcessEntry,
    host_name: String,
    /// Every live process (exec/exit events): names read at exec, selector verdicts.
    pub inventory: Inventory,
}

impl Processes {
    pub fn new(budget: usize, inventory: Inventory) -> Self {
        Self {
            inventory,
            map: FxHashMap::default(),
            budget,
            overflowed: 0,
            spill: ProcessEntry {
                service: "".into(),
                service_id: None,
                resource: None,
            },
            host_name: super::host::host_name(),
        }
    }

    /// A process adopted a socket it inherited from `parent` (0: unknown). A process forked
    /// without exec runs its parent's program with its parent's environment, so it is named
    /// after its parent: its own /proc may be gone (a child that served one connection and
    /// exited) or rewritten (PostgreSQL backends overwrite their argv and environ with a
    /// status line). A process that exec'd since (the inventory saw it: a server started by
    /// a shell or a supervisor, serving a socket it duplicated or inherited across exec) runs
    /// its own program and is named after itself, at its first request, as any other.
    pub fn adopted(&mut self, tgid: u32, comm: &str, parent: u32) {
        if parent == 0
            || parent == tgid
            || self.map.contains_key(&tgid)
            || self.inventory.get(tgid).is_some_and(|k| k.execd)
        {
            return;
        }
        let service = self.get_or_resolve(parent, comm).service.clone();
        if self.map.len() < self.budget {
            self.map.insert(
                tgid,
                ProcessEntry {
                    service,
                    service_id: None,
                    resource: None,
                },
            );
        }
    }

    /// The entry for `tgid`, resolving its name on first sight. When the table is full the
    /// name is resolved but not kept (counted as an overflow).
    pub fn get_or_resolve(&mut self, tgid: u32, comm: &str) -> &mut ProcessEntry {
        let full = self.map.len() >= self.budget;
        match self.map.entry(tgid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                // The name read at exec, when the naming budget allowed: the process may be
                // gone by now.
                let service = self
                    .inventory
                    .take_name(tgid)
                    .unwrap_or_else(|| service_name::resolve(tgid, comm).into_boxed_str());
                let entry = ProcessEntry {
                    service,
                    service_id: None,
                    resource: None,
                };
                if full {
                    self.overflowed += 1;
                    self.spill = entry;
                    &mut self.spill
                } else {
                    v.insert(entry)
                }
            }
        }
    }

    /// The OTLP resource of `tgid` (resolved with [`Self::get_or_resolve`] first).
    pub fn resource(&mut self, tgid: u32) -> Option<Arc<Resource>> {
        let host = &self.host_name;
        let entry = self.map.get_mut(&tgid).unwrap_or(&mut self.spill);
        let service = &entry.service;
        Some(
            entry
                .resource
                .get_or_insert_with(|| resource::resolve(tgid, service, host))
                .clone(),
        )
    }

    /// Forgets `tgid` (exit, or exec: the next request resolves the name again).
    pub fn remove(&mut self, tgid: u32) {
        self.map.remove(&tgid);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn tgids(&self) -> impl Iterator<Item = u32> + '_ {
        self.map.keys().copied()
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The processes to read runtime metrics of: every process in the table, with its
    /// resource when `with_resource` (metrics are exported over OTLP).
    pub fn runtime_targets(&mut self, with_resource: bool) -> Vec<Target> {
        let host = &self.host_name;
        self.map
            .iter_mut()
            .map(|(&tgid, entry)| {
                let resource = with_resource.then(|| {
                    let service = &entry.service;
                    entry
                        .resource
                        .get_or_insert_with(|| resource::resolve(tgid, service, host))
                        .clone()
                });
                (tgid, entry.service.clone(), resource)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_sockets_name_forked_children_after_their_parent_and_execd_ones_after_themselves() {
        let mut procs = Processes::new(16, Inventory::new(16, 100));
        // The parent exec'd and was named then.
        procs.inventory.exec(100, [0; 16], 0);
        procs.inventory.set_name(100, "parent-svc".into());
        // A child forked without exec adopts a socket: its parent's name.
        procs.adopted(101, "worker", 100);
        assert_eq!(&*procs.get_or_resolve(101, "worker").service, "parent-svc");
        // A child that exec'd (named at exec) adopts a socket: its own name.
        procs.inventory.exec(102, [0; 16], 0);
        procs.inventory.set_name(102, "child-svc".into());
        procs.adopted(102, "python3", 100);
        assert_eq!(&*procs.get_or_resolve(102, "python3").service, "child-svc");
    }
}
