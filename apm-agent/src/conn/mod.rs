//! Connection tracking: (pid, fd) -> connection, with fd reuse and process exit handled.
//!
//! Connections are grouped by process so that an exit drops all of them at once. The table has
//! a budget; connections beyond it are not followed (and the kernel is told to stop capturing
//! them), counted as an overflow.
use std::{
    collections::hash_map::Entry,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
};

use rustc_hash::FxHashMap;

use crate::protocols::{Direction, Parser};

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
    /// adopted at its first data), so its exchanges are numbered from the first.
    pub whole: bool,
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
        }
    }
}

/// Both ends of a TCP connection, as this side's socket sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
}

impl Endpoints {
    /// From the kernel's addresses (network byte order) and ports (host order).
    pub fn from_kernel(
        local_addr: u32,
        local_port: u32,
        remote_addr: u32,
        remote_port: u32,
    ) -> Self {
        let addr = |a: u32| Ipv4Addr::from(a.to_ne_bytes());
        Self {
            local: SocketAddrV4::new(addr(local_addr), local_port as u16),
            remote: SocketAddrV4::new(addr(remote_addr), remote_port as u16),
        }
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
        let known = self
            .by_process
            .get(&tgid)
            .is_some_and(|fds| fds.contains_key(&fd));
        if !known {
            if self.len >= self.budget {
                return Err(Full);
            }
            self.len += 1;
        }
        Ok(self
            .by_process
            .entry(tgid)
            .or_default()
            .entry(fd)
            .or_insert_with(make))
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
