//! N+1 detection: within one server request, the same normalized statement executed at least
//! `threshold` times (the loop that should have been one query).
//!
//! A server request is in flight on the thread that read it, from its start (the parser's
//! `Started`) to its completion; database calls the same thread makes in between belong to
//! it. That holds for thread-per-request servers and for single-threaded event loops that
//! finish one request before reading the next; interleaving event loops may attribute calls
//! to the wrong request, which can only under-flag (counts are split, not merged).
use rustc_hash::FxHashMap;

/// Distinct statements counted per request; more are ignored (a request running hundreds of
/// distinct statements is not an N+1).
const MAX_STATEMENTS_PER_REQUEST: usize = 64;

/// A statement that crossed the threshold in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flagged {
    /// Statement id in the service's statement table.
    pub statement: u32,
    /// Service that ran it (the statement table it belongs to).
    pub service: u32,
    pub count: u32,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    fd: u32,
    /// (service, statement) -> executions.
    counts: Vec<(u32, u32, u32)>,
}

/// The detector.
#[derive(Debug)]
pub struct NPlusOne {
    threshold: u32,
    max_open: usize,
    /// (tgid, tid) -> the server request that thread is serving.
    open: FxHashMap<(u32, u32), InFlight>,
    overflows: u64,
}

impl NPlusOne {
    pub fn new(threshold: u32, max_open: usize) -> Self {
        Self {
            threshold: threshold.max(2),
            max_open,
            open: FxHashMap::default(),
            overflows: 0,
        }
    }

    /// A server request was read by thread `tid` of `tgid` on socket `fd`.
    pub fn on_server_start(&mut self, tgid: u32, tid: u32, fd: u32, seq: u64) {
        let key = (tgid, tid);
        if !self.open.contains_key(&key) && self.open.len() >= self.max_open {
            self.overflows += 1;
            return;
        }
        let entry = self.open.entry(key).or_insert_with(|| InFlight {
            seq,
            fd,
            counts: Vec::new(),
        });
        // A new request on the thread replaces one that never completed.
        entry.seq = seq;
        entry.fd = fd;
        entry.counts.clear();
    }

    /// Thread `tid` of `tgid` ran statement `statement` of `service`.
    pub fn on_statement(&mut self, tgid: u32, tid: u32, service: u32, statement: u32) {
        let Some(req) = self.open.get_mut(&(tgid, tid)) else {
            return;
        };
        let full = req.counts.len() >= MAX_STATEMENTS_PER_REQUEST;
        match req
            .counts
            .iter_mut()
            .find(|(s, st, _)| *s == service && *st == statement)
        {
            Some((_, _, n)) => *n = n.saturating_add(1),
            None if !full => req.counts.push((service, statement, 1)),
            None => {}
        }
    }

    /// The server request `seq` on `fd` read by `tid` completed: the statements it ran at
    /// least `threshold` times are appended to `out`.
    pub fn on_server_done(
        &mut self,
        tgid: u32,
        tid: u32,
        fd: u32,
        seq: u64,
        out: &mut Vec<Flagged>,
    ) {
        let key = (tgid, tid);
        if !self
            .open
            .get(&key)
            .is_some_and(|r| r.seq == seq && r.fd == fd)
        {
            return;
        }
        let Some(req) = self.open.remove(&key) else {
            return;
        };
        out.extend(
            req.counts
                .iter()
                .filter(|(_, _, n)| *n >= self.threshold)
                .map(|&(service, statement, count)| Flagged {
                    statement,
                    service,
                    count,
                }),
        );
    }

    /// The process is gone: forget its threads.
    pub fn forget_process(&mut self, tgid: u32) {
        self.open.retain(|(t, _), _| *t != tgid);
    }

    /// Requests in flight tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Server requests not tracked because the table was full.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_statements_in_one_request_are_flagged() {
        let mut d = NPlusOne::new(5, 10);
        let mut out = Vec::new();
        d.on_server_start(1, 10, 3, 0);
        for _ in 0..6 {
            d.on_statement(1, 10, 2, 7);
        }
        d.on_statement(1, 10, 2, 8);
        // Another thread's statements do not count.
        for _ in 0..9 {
            d.on_statement(1, 11, 2, 9);
        }
        d.on_server_done(1, 10, 3, 0, &mut out);
        assert_eq!(
            out,
            vec![Flagged {
                statement: 7,
                service: 2,
                count: 6
            }]
        );
        // The next request starts from zero.
        out.clear();
        d.on_server_start(1, 10, 3, 1);
        for _ in 0..4 {
            d.on_statement(1, 10, 2, 7);
        }
        d.on_server_done(1, 10, 3, 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn completion_must_match_and_table_is_bounded() {
        let mut d = NPlusOne::new(2, 2);
        let mut out = Vec::new();
        d.on_server_start(1, 10, 3, 5);
        d.on_statement(1, 10, 0, 1);
        d.on_statement(1, 10, 0, 1);
        // Another connection's completion on the same thread does not close it.
        d.on_server_done(1, 10, 4, 5, &mut out);
        assert!(out.is_empty());
        d.on_server_done(1, 10, 3, 5, &mut out);
        assert_eq!(out.len(), 1);
        d.on_server_start(1, 1, 3, 0);
        d.on_server_start(1, 2, 3, 0);
        d.on_server_start(1, 3, 3, 0);
        assert_eq!((d.len(), d.overflows()), (2, 1));
        d.forget_process(1);
        assert_eq!(d.len(), 0);
    }
}
