//! The continuous profile store: per time bucket, per service, stack -> samples. Identical
//! stacks are stored once (shared between buckets). The store has a memory budget: when a new
//! bucket would exceed it, the oldest buckets are evicted first (counted); when the current
//! bucket alone fills it, further new stacks are dropped (counted) until the next bucket.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use super::model::{ProcessSamples, Profile, Stack};

/// Estimated bytes of one (stack -> count) entry of a bucket.
const ENTRY_BYTES: usize = 64;
/// Estimated fixed bytes of an interned stack.
const STACK_BYTES: usize = 64;

fn stack_bytes(stack: &Stack) -> usize {
    STACK_BYTES + stack.len() * 16 + stack.iter().map(|f| f.name.len() / 4).sum::<usize>()
}

#[derive(Debug, Default)]
struct Bucket {
    start_unix: u64,
    services: HashMap<Arc<str>, HashMap<Stack, u64>>,
    entries: usize,
}

/// What the store holds and dropped.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct StoreStats {
    pub bytes: usize,
    pub budget_bytes: usize,
    pub buckets: usize,
    pub evicted_buckets: u64,
    pub dropped_samples: u64,
}

/// One service's share of a time range.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceShare {
    pub service: String,
    pub samples: u64,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    buckets: VecDeque<Bucket>,
    stacks: HashSet<Stack>,
    bucket_secs: u64,
    budget: usize,
    bytes: usize,
    evicted: u64,
    dropped: u64,
    frequency_hz: u64,
}

impl Store {
    pub fn new(bucket_secs: u64, budget_bytes: usize, frequency_hz: u64) -> Self {
        Self {
            buckets: VecDeque::new(),
            stacks: HashSet::new(),
            bucket_secs: bucket_secs.max(1),
            budget: budget_bytes,
            bytes: 0,
            evicted: 0,
            dropped: 0,
            frequency_hz,
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            bytes: self.bytes,
            budget_bytes: self.budget,
            buckets: self.buckets.len(),
            evicted_buckets: self.evicted,
            dropped_samples: self.dropped,
        }
    }

    pub fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }

    /// Adds samples taken at `now_unix` (seconds).
    pub fn add(&mut self, now_unix: u64, samples: &[ProcessSamples]) {
        let start = now_unix - now_unix % self.bucket_secs;
        if self.buckets.back().is_none_or(|b| b.start_unix != start) {
            self.buckets.push_back(Bucket {
                start_unix: start,
                ..Bucket::default()
            });
        }
        for s in samples {
            self.add_one(s);
        }
    }

    fn add_one(&mut self, s: &ProcessSamples) {
        let Some(bucket) = self.buckets.back() else {
            return;
        };
        let known_here = bucket
            .services
            .get(&s.service)
            .is_some_and(|m| m.contains_key(&s.stack));
        if !known_here {
            let new_stack = !self.stacks.contains(&s.stack);
            let cost = ENTRY_BYTES + if new_stack { stack_bytes(&s.stack) } else { 0 };
            while self.bytes + cost > self.budget && self.buckets.len() > 1 {
                self.evict_oldest();
            }
            if self.bytes + cost > self.budget {
                self.dropped += s.count;
                return;
            }
            self.bytes += cost;
        }
        let stack = match self.stacks.get(&s.stack) {
            Some(shared) => shared.clone(),
            None => {
                self.stacks.insert(s.stack.clone());
                s.stack.clone()
            }
        };
        let Some(bucket) = self.buckets.back_mut() else {
            return;
        };
        let per_stack = bucket.services.entry(s.service.clone()).or_default();
        let n = per_stack.entry(stack).or_insert(0);
        if *n == 0 {
            bucket.entries += 1;
        }
        *n += s.count;
    }

    fn evict_oldest(&mut self) {
        if self.buckets.pop_front().is_some() {
            self.evicted += 1;
        }
        // Stacks only the interner still holds are gone with the bucket.
        self.stacks.retain(|s| Arc::strong_count(s) > 1);
        self.bytes = self.stacks.iter().map(stack_bytes).sum::<usize>()
            + self
                .buckets
                .iter()
                .map(|b| b.entries * ENTRY_BYTES)
                .sum::<usize>();
    }

    fn in_range(&self, from_unix: u64, to_unix: u64) -> impl Iterator<Item = &Bucket> {
        let secs = self.bucket_secs;
        self.buckets
            .iter()
            .filter(move |b| b.start_unix + secs > from_unix && b.start_unix <= to_unix)
    }

    /// Seconds of data the buckets in `[from, to]` cover.
    pub fn covered_secs(&self, from_unix: u64, to_unix: u64) -> u64 {
        self.in_range(from_unix, to_unix).count() as u64 * self.bucket_secs
    }

    /// Services seen in `[from, to]` with their sample counts, busiest first.
    pub fn services(&self, from_unix: u64, to_unix: u64) -> Vec<ServiceShare> {
        let mut totals: HashMap<Arc<str>, u64> = HashMap::new();
        for b in self.in_range(from_unix, to_unix) {
            for (svc, stacks) in &b.services {
                *totals.entry(svc.clone()).or_default() += stacks.values().sum::<u64>();
            }
        }
        let mut v: Vec<ServiceShare> = totals
            .into_iter()
            .map(|(s, n)| ServiceShare {
                service: s.to_string(),
                samples: n,
            })
            .collect();
        v.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.service.cmp(&b.service))
        });
        v
    }

    /// The profile of `service` (all services when `None`) over `[from, to]`.
    pub fn query(&self, service: Option<&str>, from_unix: u64, to_unix: u64) -> Profile {
        let mut profile = Profile::new(self.frequency_hz, from_unix.saturating_mul(1_000_000_000));
        let mut first = None;
        let mut last = 0;
        for b in self.in_range(from_unix, to_unix) {
            first.get_or_insert(b.start_unix);
            last = b.start_unix + self.bucket_secs;
            for (svc, stacks) in &b.services {
                if service.is_some_and(|want| want != svc.as_ref()) {
                    continue;
                }
                for (stack, n) in stacks {
                    profile.add(stack.clone(), *n);
                }
            }
        }
        if let Some(first) = first {
            profile.start_unix_ns = first * 1_000_000_000;
            profile.duration_ns = (last - first) * 1_000_000_000;
        }
        profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::model::{Frame, FrameKind};

    fn samples(service: &str, i: u64, depth: usize) -> ProcessSamples {
        let mut frames = vec![Arc::new(Frame::root(service))];
        for d in 0..depth {
            frames.push(Arc::new(Frame {
                kind: FrameKind::User,
                name: format!("fn_{i}_{d}").into(),
                module: None,
                build_id: None,
                offset: 0,
            }));
        }
        ProcessSamples {
            tgid: 1,
            service: service.into(),
            exe: "exe".into(),
            stack: frames.into(),
            count: 1,
        }
    }

    #[test]
    fn queries_by_service_and_time() {
        let mut s = Store::new(10, 1 << 20, 99);
        s.add(100, &[samples("a", 1, 3), samples("b", 2, 3)]);
        s.add(105, &[samples("a", 1, 3)]);
        s.add(112, &[samples("a", 3, 2)]);
        assert_eq!(s.query(Some("a"), 100, 109).total(), 2);
        assert_eq!(s.query(Some("a"), 100, 120).total(), 3);
        assert_eq!(s.query(None, 100, 109).total(), 3);
        assert_eq!(s.query(Some("a"), 100, 120).stacks.len(), 2);
        let shares = s.services(0, 200);
        assert_eq!((shares[0].service.as_str(), shares[0].samples), ("a", 3));
        // Identical stacks in two buckets are stored once.
        assert_eq!(s.stacks.len(), 3);
    }

    #[test]
    fn never_exceeds_the_budget_with_many_distinct_stacks() {
        let budget = 256 * 1024;
        let mut s = Store::new(10, budget, 99);
        for second in 0..600u64 {
            let batch: Vec<ProcessSamples> = (0..50)
                .map(|i| samples("svc", second * 100 + i, 20))
                .collect();
            s.add(second, &batch);
            assert!(
                s.stats().bytes <= budget,
                "{} > {budget} at {second}",
                s.stats().bytes
            );
        }
        assert!(s.stats().evicted_buckets > 0, "old buckets were evicted");
        // What remains is the most recent data.
        assert!(s.query(Some("svc"), 590, 600).total() > 0);
        assert_eq!(s.query(Some("svc"), 0, 100).total(), 0);
    }

    #[test]
    fn a_bucket_larger_than_the_budget_drops_and_counts() {
        let budget = 64 * 1024;
        let mut s = Store::new(60, budget, 99);
        let batch: Vec<ProcessSamples> = (0..5000).map(|i| samples("svc", i, 10)).collect();
        s.add(0, &batch);
        let st = s.stats();
        assert!(st.bytes <= budget);
        assert!(st.dropped_samples > 0);
        assert_eq!(
            s.query(None, 0, 60).total() + st.dropped_samples,
            5000,
            "each sample kept or counted"
        );
    }
}
