//! Connection tracking: (pid, fd) -> connection, with fd reuse and process exit handled.
//!
//! Connections are grouped by process so that an exit drops all of them at once. The table has
//! a budget; connections beyond it are not followed (and the kernel is told to stop capturing
//! them), counted as an overflow.
use std::{
    collections::hash_map::Entry,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use apm_common::DataEventHeader;
use rustc_hash::FxHashMap;

use crate::{
    ebpf::{decode::DataEvent, records},
    protocols::{Direction, ParseStats, Parser},
    request::Protocol,
};

/// The kernel's direction of a record is the parsers' direction of its segment.
impl From<records::Direction> for Direction {
    fn from(d: records::Direction) -> Self {
        match d {
            records::Direction::Ingress => Self::Ingress,
            records::Direction::Egress => Self::Egress,
        }
    }
}

/// Protocol state of a connection.
#[derive(Debug)]
pub enum ConnState {
    /// No protocol recognised yet; `attempts` data segments tried; `prefix` holds the bytes
    /// of an undecided segment, joined to the next one moving the same way.
    Detecting {
        attempts: u8,
        prefix: Option<Box<Prefix>>,
    },
    Parsing(Parser),
    /// Not a protocol we follow (or given up): its traffic is ignored and muted in the kernel.
    Ignored,
}

/// First bytes of a connection that no parser could decide on alone.
#[derive(Debug)]
pub struct Prefix {
    pub direction: Direction,
    pub bytes: Vec<u8>,
    /// When and by which thread the first of them moved.
    pub ts_ns: u64,
    pub tid: u32,
}

/// One tracked connection.
#[derive(Debug)]
pub struct Connection {
    /// Kernel identity ([`apm_common::SockInfo::id`]); 0 when the connection was first seen
    /// through data (seeded at start-up).
    pub id: u64,
    pub peer: Option<SocketAddr>,
    /// `comm` of the process when the connection opened.
    pub comm: [u8; 16],
    /// Both endpoints (IPv4 TCP), once the kernel sent them with the first data.
    pub endpoints: Option<Endpoints>,
    pub last_activity_ns: u64,
    pub state: ConnState,
    /// Its traffic is seen from its first byte (accepted or connected while the agent ran, or
    /// adopted at its first data), so its exchanges are numbered from the first. Cleared when
    /// some of its records were lost: its exchange numbers may then differ from the other
    /// end's.
    pub whole: bool,
    /// The kernel's numbering of its data records, to notice lost ones.
    pub records: RecordSeq,
    /// A record kept back from the parser because the one numbered before it had not come
    /// (see [`Connection::admit`]).
    pub held: Option<Box<HeldRecord>>,
}

impl Connection {
    pub fn new(id: u64, peer: Option<SocketAddr>, comm: [u8; 16], now: u64) -> Self {
        Self {
            id,
            peer,
            comm,
            endpoints: None,
            last_activity_ns: now,
            state: ConnState::Detecting {
                attempts: 0,
                prefix: None,
            },
            whole: id != 0,
            records: RecordSeq::default(),
            held: None,
        }
    }

    /// Decides from a data record's number (`seq`) what the pipeline does with it.
    ///
    /// A record one number ahead of the newest seen (exactly one missing before it) is held
    /// back when `may_hold`: two threads using one socket on two CPUs can reach the ring
    /// buffer in the other order than they took their numbers, and then the missing record
    /// comes next; both are fed in their order and nothing is reset. If anything else comes
    /// next (or the batch ends, or the connection goes), the missing record was lost: reset,
    /// then the held record. A wider jump is a loss at once: reset, then the record. A record
    /// behind the newest seen is fed as it is, without a reset (see [`SeqCheck::Behind`]).
    ///
    /// A record from before the last reset (a late one, when a swap was taken for a loss:
    /// the hold budget was spent, or more than two records were swapped) is skipped: fed after
    /// the reset, a late request would wait for a response that already went by, and every
    /// later response would pair with the request before its own.
    pub fn admit(&mut self, seq: u32, may_hold: bool) -> Admission {
        let check = self.records.observe(seq);
        let mut admission = Admission::default();
        if let Some(held) = self.held.take() {
            if check == SeqCheck::Behind && RecordSeq::precedes(seq, held.header.seq) {
                admission.then = Some(held);
                return admission;
            }
            self.records.reset_at = held.header.seq;
            admission.release = Some(held);
        }
        match check {
            SeqCheck::Gap { missing: 1 } if may_hold => admission.hold = true,
            SeqCheck::Gap { .. } => {
                self.records.reset_at = seq;
                admission.reset = true;
            }
            SeqCheck::Behind => admission.skip = self.records.before_reset(seq),
            SeqCheck::Unknown | SeqCheck::Next => {}
        }
        admission
    }

    /// Records of this connection were lost just before the one at hand (a gap in the
    /// kernel's numbers): its parser drops what was in flight and waits for a message start,
    /// so that no later response pairs with a request whose own response was lost (see
    /// [`crate::protocols::ProtocolParser::on_gap`]); counted per protocol in `stats`. Its
    /// exchanges may now be numbered apart from the other end's, so they are no longer paired
    /// with it by number.
    pub fn records_lost(&mut self, stats: &mut [ParseStats; Protocol::ALL.len()]) {
        self.whole = false;
        match &mut self.state {
            ConnState::Parsing(parser) => {
                let stats = &mut stats[parser.protocol().index()];
                stats.resyncs += 1;
                parser.on_gap(stats);
            }
            // Undecided first bytes cannot be joined across lost ones.
            ConnState::Detecting { prefix, .. } => *prefix = None,
            ConnState::Ignored => {}
        }
    }
}

/// What to do with a data record ([`Connection::admit`]), in this order.
#[derive(Debug, Default)]
pub struct Admission {
    /// Reset the parser and feed this held record first: the record before it never came.
    pub release: Option<Box<HeldRecord>>,
    /// Records just before this one were lost: reset the parser before feeding it.
    pub reset: bool,
    /// Keep this record back in [`Connection::held`] instead of feeding it.
    pub hold: bool,
    /// Drop this record: it comes from before the last reset.
    pub skip: bool,
    /// Feed this held record after this one: the two had been swapped.
    pub then: Option<Box<HeldRecord>>,
}

/// A data record kept back, with its own copy of the payload (the ring buffer's is gone
/// once the batch is consumed).
#[derive(Debug)]
pub struct HeldRecord {
    pub header: DataEventHeader,
    pub direction: records::Direction,
    pub payload: Vec<u8>,
}

impl HeldRecord {
    pub fn new(d: &DataEvent<'_>) -> Box<Self> {
        Box::new(Self {
            header: d.header,
            direction: d.direction,
            payload: d.payload.to_vec(),
        })
    }

    pub fn event(&self) -> DataEvent<'_> {
        DataEvent {
            header: self.header,
            direction: self.direction,
            payload: &self.payload,
        }
    }
}

/// Records that can arrive behind the newest one seen: two threads using one socket on two
/// CPUs may reach the ring buffer in the other order than they took their numbers. Further
/// back is no reordering: the numbers started again (a new connection under the same fd whose
/// open and close were lost).
const REORDER_WINDOW: u64 = 1024;

/// Follows [`apm_common::DataEventHeader::seq`] on one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordSeq {
    /// The newest number seen; 0 before the first.
    last: u32,
    /// The first record fed after the last reset; 0 when there was none.
    reset_at: u32,
}

/// What a record's number says about the records before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not numbered (0: the kernel numbers records from 1).
    Unknown,
    /// The one after the newest seen, or number 1 as the first seen.
    Next,
    /// Records before this one were lost, `missing` of them: between the newest seen and
    /// this one, or before the first seen (the kernel numbers every socket from 1, also those
    /// seeded at start-up). Or the numbering started again.
    Gap { missing: u64 },
    /// Older than the newest seen: reordered between CPUs (or repeated). Not a loss.
    Behind,
}

impl RecordSeq {
    /// Does `seq` come before the record the connection was last reset at?
    fn before_reset(&self, seq: u32) -> bool {
        if self.reset_at == 0 || seq == 0 {
            return false;
        }
        let period = apm_common::SEQ_PERIOD;
        let behind = (u64::from(self.reset_at) + period - u64::from(seq)) % period;
        (1..=REORDER_WINDOW).contains(&behind)
    }

    /// Is `a` the number just before `b`?
    pub fn precedes(a: u32, b: u32) -> bool {
        a != 0 && b != 0 && (u64::from(a) % apm_common::SEQ_PERIOD) + 1 == u64::from(b)
    }

    /// Takes in the number of the next record of the connection.
    pub fn observe(&mut self, seq: u32) -> SeqCheck {
        if seq == 0 {
            return SeqCheck::Unknown;
        }
        let last = self.last;
        if last == 0 {
            self.last = seq;
            return if seq == 1 {
                SeqCheck::Next
            } else {
                SeqCheck::Gap {
                    missing: u64::from(seq) - 1,
                }
            };
        }
        // Numbers run through 1..=u32::MAX: distances are taken modulo SEQ_PERIOD.
        let period = apm_common::SEQ_PERIOD;
        let ahead = (u64::from(seq) + period - u64::from(last)) % period;
        let behind = (period - ahead) % period;
        if ahead == 1 {
            self.last = seq;
            SeqCheck::Next
        } else if behind <= REORDER_WINDOW {
            SeqCheck::Behind
        } else {
            self.last = seq;
            SeqCheck::Gap {
                missing: ahead.saturating_sub(1),
            }
        }
    }
}

/// Both ends of a TCP connection, as this side's socket sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Endpoints {
    /// From the kernel's record: its family, addresses (network byte order) and ports (host
    /// order). None for a family other than IPv4 and IPv6.
    pub fn from_kernel(t: &apm_common::TupleEvent) -> Option<Self> {
        const AF_INET: u32 = 2;
        const AF_INET6: u32 = 10;
        let ip = |a: &[u8; 16]| match t.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        };
        Some(Self {
            local: SocketAddr::new(ip(&t.local_addr)?, t.local_port as u16),
            remote: SocketAddr::new(ip(&t.remote_addr)?, t.remote_port as u16),
        })
    }

    /// The same connection seen from the other end.
    pub fn mirrored(self) -> Self {
        Self {
            local: self.remote,
            remote: self.local,
        }
    }
}

/// Peer address from the kernel's (family, port, address bytes).
pub fn peer_addr(family: u32, port: u32, addr: &[u8; 16]) -> Option<SocketAddr> {
    const AF_INET: u32 = 2;
    const AF_INET6: u32 = 10;
    // Port 0 is no peer: the kernel did not read one (e.g. an adopted socket).
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The bounded connection table. Keys are small integers chosen by the kernel, so the fast
/// non-keyed Fx hash is safe here.
#[derive(Debug)]
pub struct ConnTable {
    by_process: FxHashMap<u32, FxHashMap<u32, Connection>>,
    len: usize,
    budget: usize,
}

/// The table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl ConnTable {
    pub fn new(budget: usize) -> Self {
        Self {
            by_process: FxHashMap::default(),
            len: 0,
            budget,
        }
    }

    /// Inserts a connection that just opened. A connection already under the same (pid, fd)
    /// missed its close (fd reuse): it is returned so the caller can finish it.
    pub fn open(
        &mut self,
        tgid: u32,
        fd: u32,
        conn: Connection,
    ) -> Result<Option<Connection>, Full> {
        let full = self.len >= self.budget;
        let fds = self.by_process.entry(tgid).or_default();
        match fds.entry(fd) {
            Entry::Occupied(mut e) => Ok(Some(std::mem::replace(e.get_mut(), conn))),
            Entry::Vacant(_) if full => {
                if fds.is_empty() {
                    self.by_process.remove(&tgid);
                }
                Err(Full)
            }
            Entry::Vacant(v) => {
                v.insert(conn);
                self.len += 1;
                Ok(None)
            }
        }
    }

    /// The connection under (pid, fd), created with `make` when unknown.
    pub fn get_or_insert_with(
        &mut self,
        tgid: u32,
        fd: u32,
        make: impl FnOnce() -> Connection,
    ) -> Result<&mut Connection, Full> {
        // Two hash lookups, not four: this runs for every data record, twice (admission, then
        // parsing).
        if self.len >= self.budget
            && !self
                .by_process
                .get(&tgid)
                .is_some_and(|fds| fds.contains_key(&fd))
        {
            return Err(Full);
        }
        Ok(match self.by_process.entry(tgid).or_default().entry(fd) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.len += 1;
                v.insert(make())
            }
        })
    }

    pub fn get_mut(&mut self, tgid: u32, fd: u32) -> Option<&mut Connection> {
        self.by_process.get_mut(&tgid)?.get_mut(&fd)
    }

    pub fn remove(&mut self, tgid: u32, fd: u32) -> Option<Connection> {
        let fds = self.by_process.get_mut(&tgid)?;
        let conn = fds.remove(&fd)?;
        self.len -= 1;
        if fds.is_empty() {
            self.by_process.remove(&tgid);
        }
        Some(conn)
    }

    /// Removes every connection of a process.
    pub fn remove_process(&mut self, tgid: u32) -> Vec<(u32, Connection)> {
        let Some(fds) = self.by_process.remove(&tgid) else {
            return Vec::new();
        };
        self.len -= fds.len();
        fds.into_iter().collect()
    }

    /// Every connection, with its (pid, fd).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, u32, &mut Connection)> {
        self.by_process
            .iter_mut()
            .flat_map(|(tgid, fds)| fds.iter_mut().map(move |(fd, c)| (*tgid, *fd, c)))
    }

    pub fn processes(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_process.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64) -> Connection {
        Connection::new(id, None, [0; 16], 0)
    }

    #[test]
    fn fd_reuse_returns_the_old_connection() {
        let mut t = ConnTable::new(10);
        assert!(matches!(t.open(1, 5, conn(1)), Ok(None)));
        let old = t.open(1, 5, conn(2));
        assert!(matches!(old, Ok(Some(c)) if c.id == 1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(1, 5).map(|c| c.id), Some(2));
        assert_eq!(t.len(), 0);
        assert!(t.remove(1, 5).is_none());
    }

    #[test]
    fn budget_and_process_removal() {
        let mut t = ConnTable::new(2);
        assert!(t.open(1, 3, conn(1)).is_ok());
        assert!(t.get_or_insert_with(2, 3, || conn(2)).is_ok());
        assert_eq!(t.open(3, 3, conn(3)).err(), Some(Full));
        assert!(t.get_or_insert_with(3, 4, || conn(4)).is_err());
        // Existing entries are still reachable when full.
        assert!(
            t.get_or_insert_with(2, 3, || conn(9))
                .is_ok_and(|c| c.id == 2)
        );
        assert_eq!(t.processes().count(), 2);
        assert_eq!(t.remove_process(1).len(), 1);
        assert_eq!(t.len(), 1);
        assert!(t.open(3, 3, conn(3)).is_ok());
    }

    #[test]
    fn record_numbers_in_order_lost_and_reordered() {
        let mut r = RecordSeq::default();
        assert_eq!(r.observe(1), SeqCheck::Next);
        assert_eq!(r.observe(2), SeqCheck::Next);
        assert_eq!(r.observe(5), SeqCheck::Gap { missing: 2 });
        // Late and repeated numbers are no loss.
        assert_eq!(r.observe(3), SeqCheck::Behind);
        assert_eq!(r.observe(5), SeqCheck::Behind);
        assert_eq!(r.observe(0), SeqCheck::Unknown);
        assert_eq!(r.observe(6), SeqCheck::Next);
        // Far behind is no reordering: the numbers started again.
        assert!(matches!(r.observe(5_000), SeqCheck::Gap { .. }));
        assert!(matches!(r.observe(1), SeqCheck::Gap { .. }));
        assert_eq!(r.observe(2), SeqCheck::Next);
        // The first record seen is not the first sent: those before it were lost.
        assert_eq!(
            RecordSeq::default().observe(4),
            SeqCheck::Gap { missing: 3 }
        );
    }

    #[test]
    fn record_numbers_wrap_past_zero() {
        // The kernel's numbering of its counter: 1..=u32::MAX, then 1 again.
        let period = apm_common::SEQ_PERIOD;
        assert_eq!(apm_common::record_seq(0), 1);
        assert_eq!(apm_common::record_seq(period - 1), u32::MAX);
        assert_eq!(apm_common::record_seq(period), 1);
        let mut r = RecordSeq::default();
        let _ = r.observe(apm_common::record_seq(period - 3));
        for count in period - 2..period + 3 {
            assert_eq!(r.observe(apm_common::record_seq(count)), SeqCheck::Next);
        }
        assert!(RecordSeq::precedes(u32::MAX, 1));
        assert!(!RecordSeq::precedes(0, 1));
        let mut r = RecordSeq::default();
        let _ = r.observe(u32::MAX - 1);
        assert_eq!(r.observe(1), SeqCheck::Gap { missing: 1 });
        assert_eq!(r.observe(u32::MAX), SeqCheck::Behind);
    }

    /// Feeds numbers through `admit` as the pipeline does (holding what it says to hold);
    /// returns what each admission said, compactly.
    fn admissions(seqs: &[u32], may_hold: bool) -> Vec<String> {
        let mut c = conn(1);
        let mut out = Vec::new();
        for &seq in seqs {
            let a = c.admit(seq, may_hold);
            if a.hold {
                let header = DataEventHeader {
                    seq,
                    ..Default::default()
                };
                c.held = Some(HeldRecord::new(&DataEvent {
                    header,
                    direction: records::Direction::Ingress,
                    payload: b"x",
                }));
            }
            let mut s = format!("{seq}:");
            if let Some(h) = &a.release {
                s += &format!(" reset+{}", h.header.seq);
            }
            if a.reset {
                s += " reset";
            }
            s += if a.hold {
                " hold"
            } else if a.skip {
                " skip"
            } else {
                " feed"
            };
            if let Some(h) = &a.then {
                s += &format!(" +{}", h.header.seq);
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn admission_puts_swapped_records_back_in_order() {
        assert_eq!(
            admissions(&[1, 2, 4, 3, 5], true),
            ["1: feed", "2: feed", "4: hold", "3: feed +4", "5: feed"]
        );
    }

    #[test]
    fn admission_resets_on_losses() {
        // One missing: held, then released with a reset by whatever comes next.
        assert_eq!(
            admissions(&[1, 3, 4, 6, 8], true),
            [
                "1: feed",
                "3: hold",
                "4: reset+3 feed",
                "6: hold",
                "8: reset+6 hold"
            ]
        );
        // Two or more missing: a reset at once.
        assert_eq!(
            admissions(&[1, 4, 5], true),
            ["1: feed", "4: reset feed", "5: feed"]
        );
        // Without holding, a swap is taken for a loss; the late record is skipped.
        assert_eq!(
            admissions(&[1, 2, 4, 3, 5], false),
            ["1: feed", "2: feed", "4: reset feed", "3: skip", "5: feed"]
        );
    }

    #[test]
    fn peer_addresses() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            peer_addr(2, 8080, &a),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        let mut b = [0u8; 16];
        b[15] = 1;
        assert_eq!(peer_addr(10, 443, &b), Some("[::1]:443".parse().unwrap()));
        assert_eq!(peer_addr(1, 0, &a), None);
    }
}
