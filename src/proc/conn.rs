//! Which processes hold the client end of a TCP connection.
//!
//! The client's socket is the TCP table entry whose local address is the peer address and
//! whose remote address is ours (`/proc/<pid>/net/tcp{,6}`, IPv4-mapped IPv6 normalised to
//! IPv4); its inode is then looked for among every process's `/proc/<pid>/fd/*` links
//! (`socket:[inode]`). After a fork several pids hold it. Sockets are per network namespace:
//! our own namespace is asked first, then the namespaces that own the peer address (a
//! container's), then, only if needed, every other namespace ([`Lookup`]). Each namespace is
//! asked for the one socket by its four-tuple through sock_diag ([`super::diag`]) when it can
//! be, and its whole tables are read only when not.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::diag::Diag;
use super::file::{numeric_entries, read_text, Clock};
use super::sockets::{self, normalize_addr, SocketTable};
use super::task::parse_stat;
use super::tree::proc_basics;

/// A process that holds a socket, as resolved from /proc: who could have sent on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    #[serde(default)]
    pub nspid: Vec<i32>,
    /// Process start, Unix nanoseconds (0 when unknown).
    #[serde(default)]
    pub started_at_ns: u64,
    #[serde(default)]
    pub comm: String,
    /// Its parent, the parent's parent, ... up to (not including) pid 1, when read: who it may
    /// have inherited memory from (an identity built before a fork). Not kept in the ledger.
    #[serde(skip)]
    pub ancestors: Vec<i32>,
}

/// Ancestors followed at most.
const MAX_ANCESTORS: usize = 64;

impl Holder {
    /// Start time, NSpid chain, comm and ancestors of a pid; None when it is gone.
    pub fn read(pid: i32, clock: &Clock) -> Option<Holder> {
        let b = proc_basics(pid, clock).ok()?;
        let mut ancestors = Vec::new();
        let mut p = b.ppid;
        while p > 1 && ancestors.len() < MAX_ANCESTORS && !ancestors.contains(&p) {
            ancestors.push(p);
            p = read_text(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
                .map_or(0, |s| s.ppid);
        }
        Some(Holder {
            pid,
            nspid: b.nspid,
            started_at_ns: b.started_at_ms * 1_000_000,
            comm: b.comm,
            ancestors,
        })
    }

    /// True when this process descends from `pid` (known only when its ancestors were read).
    pub fn descends_from(&self, pid: i32) -> bool {
        self.ancestors.contains(&pid)
    }

    /// True when `resource_pid` is this process's pid in any pid namespace it lives in (the
    /// SDK records the innermost one, often 1 in a container).
    pub fn is_own_pid(&self, resource_pid: i64) -> bool {
        resource_pid == self.pid as i64 || self.nspid.iter().any(|p| *p as i64 == resource_pid)
    }

    /// The pid and its NSpid chain, for code that must not depend on this type.
    pub fn ids(&self) -> (i32, &[i32]) {
        (self.pid, &self.nspid)
    }
}

/// TCP connections of one or more tables by `(local, remote)`, normalised.
#[derive(Default)]
pub struct ConnIndex(HashMap<(SocketAddr, SocketAddr), u64>);

impl ConnIndex {
    pub fn add(&mut self, table: &SocketTable) {
        for (inode, e) in table {
            if let (Some(l), Some(r)) = (e.local_addr(), e.remote_addr()) {
                self.0.entry((l, r)).or_insert(*inode);
            }
        }
    }

    /// The client's socket inode for a connection whose client is `peer` and server end is
    /// `ours`: the row whose local address is the peer and whose remote address is ours.
    pub fn client_inode(&self, peer: SocketAddr, ours: SocketAddr) -> Option<u64> {
        self.0
            .get(&(normalize_addr(peer), normalize_addr(ours)))
            .copied()
    }
}

/// TCP table files read and exact sock_diag lookups made by every [`Lookup`] of this process
/// so far (what a test or a benchmark compares).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCounts {
    pub table_reads: u64,
    pub exact_lookups: u64,
}

static TABLE_READS: AtomicU64 = AtomicU64::new(0);
static EXACT_LOOKUPS: AtomicU64 = AtomicU64::new(0);

pub fn lookup_counts() -> LookupCounts {
    LookupCounts {
        table_reads: TABLE_READS.load(Ordering::Relaxed),
        exact_lookups: EXACT_LOOKUPS.load(Ordering::Relaxed),
    }
}

fn add_table(idx: &mut ConnIndex, pid: i32, file: &'static str) {
    TABLE_READS.fetch_add(1, Ordering::Relaxed);
    if let Ok(t) = sockets::read_table(pid, file) {
        idx.add(&t);
    }
}

fn index_of(pid: i32, file: &'static str) -> ConnIndex {
    let mut idx = ConnIndex::default();
    add_table(&mut idx, pid, file);
    idx
}

/// Whether sock_diag answers exact TCP lookups here (checked once, on a connection of our
/// own): without the tcp_diag module the kernel says "no such socket" to every question,
/// which must not be taken for an answer.
fn sock_diag_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let probe = || -> std::io::Result<bool> {
            use std::os::unix::fs::MetadataExt;
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let c = std::net::TcpStream::connect(l.local_addr()?)?;
            let ino = std::fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&c)
            ))?
            .ino();
            Ok(Diag::open()?.tcp_inode(c.local_addr()?, c.peer_addr()?)? == Some(ino))
        };
        probe().unwrap_or(false)
    })
}

/// How one namespace is asked.
#[derive(Default)]
enum Way {
    #[default]
    Untried,
    Exact(Diag),
    Tables,
}

impl Way {
    /// The client socket by its four-tuple, when sock_diag can answer: Some(Some(inode)),
    /// Some(None) when the namespace has no such socket held by a process (none, or one in
    /// TIME-WAIT), None when only the tables can tell.
    fn exact(
        &mut self,
        open: impl FnOnce() -> std::io::Result<Diag>,
        peer: SocketAddr,
        ours: SocketAddr,
    ) -> Option<Option<u64>> {
        if let Way::Untried = self {
            *self = match sock_diag_works().then(open) {
                Some(Ok(d)) => Way::Exact(d),
                _ => Way::Tables,
            };
        }
        let Way::Exact(d) = self else {
            return None;
        };
        EXACT_LOOKUPS.fetch_add(1, Ordering::Relaxed);
        match d.tcp_inode(normalize_addr(peer), normalize_addr(ours)) {
            Ok(found) => Some(found.filter(|i| *i != 0)),
            Err(_) => {
                *self = Way::Tables;
                None
            }
        }
    }
}

/// Where client sockets are looked for, only as far as needed. Each namespace is asked for the
/// one socket through sock_diag (one hash lookup); where that cannot be (no tcp_diag module,
/// or another namespace we have no right to enter) its tables are read instead, and each tcp
/// file costs a walk of the kernel's whole connection hash: then our namespace's tcp table
/// comes first, its tcp6 (grpcio clients' IPv4-mapped sockets) only for a peer not found
/// there. Other namespaces are asked only for a peer not in ours: first those that own the
/// peer's address (a container behind a veth pair or a bridge: the peer address is its
/// interface's), every other one only when no owner has the connection (a peer address
/// rewritten on the way, by NAT). Each namespace's addresses and tables are read at most once
/// per `Lookup` (one lookup round).
#[derive(Default)]
pub struct Lookup {
    /// The baseline: tables only, sock_diag never asked.
    tables_only: bool,
    own: Way,
    tcp: Option<ConnIndex>,
    tcp6: Option<ConnIndex>,
    others: Option<Vec<OtherNs>>,
}

/// Another network namespace, through one process that lives in it.
struct OtherNs {
    pid: i32,
    asked: bool,
    way: Way,
    addresses: Option<Vec<(IpAddr, u8)>>,
    index: Option<ConnIndex>,
}

impl OtherNs {
    fn owns(&mut self, ip: IpAddr) -> bool {
        let pid = self.pid;
        let owned = self
            .addresses
            .get_or_insert_with(|| sockets::local_addresses(pid).unwrap_or_default());
        sockets::owns_address(owned, ip)
    }

    fn client_inode(&mut self, peer: SocketAddr, ours: SocketAddr) -> Option<u64> {
        let pid = self.pid;
        self.asked = true;
        if let Some(found) = self.way.exact(|| Diag::open_in(pid), peer, ours) {
            return found;
        }
        self.index
            .get_or_insert_with(|| {
                let mut idx = ConnIndex::default();
                for file in ["tcp", "tcp6"] {
                    add_table(&mut idx, pid, file);
                }
                idx
            })
            .client_inode(peer, ours)
    }
}

impl Lookup {
    /// One that never asks sock_diag: every namespace's tables are read (what every lookup
    /// did before; the benchmark's baseline).
    pub fn tables_only() -> Lookup {
        Lookup {
            tables_only: true,
            own: Way::Tables,
            ..Lookup::default()
        }
    }

    pub fn client_inode(&mut self, peer: SocketAddr, ours: SocketAddr) -> Option<u64> {
        let me = std::process::id() as i32;
        let tables_only = self.tables_only;
        match self.own.exact(Diag::open, peer, ours) {
            Some(Some(i)) => return Some(i),
            Some(None) => {}
            None => {
                if let Some(i) = self
                    .tcp
                    .get_or_insert_with(|| index_of(me, "tcp"))
                    .client_inode(peer, ours)
                {
                    return Some(i);
                }
                if let Some(i) = self
                    .tcp6
                    .get_or_insert_with(|| index_of(me, "tcp6"))
                    .client_inode(peer, ours)
                {
                    return Some(i);
                }
            }
        }
        let ip = normalize_addr(peer).ip();
        if ip.is_loopback() {
            // Loopback traffic never leaves its namespace: the client is in ours, or gone.
            return None;
        }
        let others = self.others.get_or_insert_with(|| {
            let mut v = other_namespaces();
            if tables_only {
                v.iter_mut().for_each(|ns| ns.way = Way::Tables);
            }
            v
        });
        for owner_only in [true, false] {
            for ns in others.iter_mut() {
                if owner_only && !ns.owns(ip) {
                    continue;
                }
                if let Some(i) = ns.client_inode(peer, ours) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// How many other namespaces were asked so far, exactly or through their tables (the cost
    /// the owner check saves).
    pub fn namespaces_asked(&self) -> usize {
        self.others.iter().flatten().filter(|ns| ns.asked).count()
    }

    /// How many other namespaces' socket tables were read so far (those sock_diag could not
    /// answer for).
    pub fn tables_read(&self) -> usize {
        self.others
            .iter()
            .flatten()
            .filter(|ns| ns.index.is_some())
            .count()
    }
}

fn pids() -> Vec<i32> {
    numeric_entries("/proc").unwrap_or_default()
}

/// For every wanted inode, the pids holding it (one pass over /proc/*/fd).
pub fn scan_holders(wanted: &HashSet<u64>) -> HashMap<u64, Vec<i32>> {
    let mut found: HashMap<u64, Vec<i32>> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    for pid in pids() {
        // Gone or refused: it cannot be shown to hold anything.
        let Ok(fds) = sockets::socket_fds(pid) else {
            continue;
        };
        for (_, inode) in fds {
            if wanted.contains(&inode) {
                let v = found.entry(inode).or_default();
                if !v.contains(&pid) {
                    v.push(pid);
                }
            }
        }
    }
    for v in found.values_mut() {
        v.sort_unstable();
    }
    found
}

/// Every network namespace other than ours, each through the first process found in it.
fn other_namespaces() -> Vec<OtherNs> {
    let me = std::process::id() as i32;
    let mut seen: HashSet<u64> = HashSet::new();
    if let Ok(m) = sockets::netns_inode(me) {
        seen.insert(m);
    }
    pids()
        .into_iter()
        .filter(|&pid| sockets::netns_inode(pid).is_ok_and(|ns| seen.insert(ns)))
        .map(|pid| OtherNs {
            pid,
            asked: false,
            way: Way::default(),
            addresses: None,
            index: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_endian = "little")]
    #[test]
    fn finds_client_row_v4_and_v4_mapped() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1\n\
   1: garbage\n";
        // ::ffff:127.0.0.1 as the kernel prints it on little-endian machines.
        let v6 = "header\n   0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000100007F:10E1 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let mut t = SocketTable::new();
        sockets::parse_tcp_table(v4, "tcp", &mut t);
        sockets::parse_tcp_table(v6, "tcp6", &mut t);
        let mut idx = ConnIndex::default();
        idx.add(&t);
        assert_eq!(
            idx.client_inode(
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:54321".parse().unwrap()
            ),
            Some(12345)
        );
        assert_eq!(
            idx.client_inode(
                "[::ffff:127.0.0.1]:54321".parse().unwrap(),
                "127.0.0.1:4321".parse().unwrap()
            ),
            Some(777)
        );
        assert_eq!(
            idx.client_inode(
                "127.0.0.1:4321".parse().unwrap(),
                "127.0.0.1:54321".parse().unwrap()
            ),
            None
        );
    }

    #[test]
    fn finds_own_socket_holders() {
        // A real loopback connection made by this test process.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(ours).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let inode = Lookup::default()
            .client_inode(peer, ours)
            .expect("client entry");
        assert_eq!(inode, {
            use std::os::unix::fs::MetadataExt;
            use std::os::unix::io::AsRawFd;
            std::fs::metadata(format!("/proc/self/fd/{}", c.as_raw_fd()))
                .unwrap()
                .ino()
        });
        // The tables say the same; a gone client is not found either way, and not taken for
        // the listener on `ours` either.
        let mut by_tables = Lookup::tables_only();
        assert_eq!(by_tables.client_inode(peer, ours), Some(inode));
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(Lookup::default().client_inode(gone, ours), None);
        assert_eq!(by_tables.client_inode(gone, ours), None);
        assert_eq!(Lookup::default().client_inode(ours, gone), None);
        let holders = scan_holders(&HashSet::from([inode]));
        assert_eq!(holders[&inode], vec![std::process::id() as i32]);
        let me = Holder::read(std::process::id() as i32, &Clock::new()).unwrap();
        assert!(me.started_at_ns > 1_600_000_000_000_000_000);
        assert!(!me.nspid.is_empty());
    }
}
