//! Which OS processes hold the client end of an accepted connection.
//!
//! The receiver knows both addresses of the connection. The client's socket is the TCP table
//! entry whose local address is the peer address and whose remote address is ours
//! (`/proc/<pid>/net/tcp{,6}`, IPv4-mapped IPv6 normalised to IPv4); its inode is then looked
//! for among every process's `/proc/<pid>/fd/*` links (`socket:[inode]`). After a fork several
//! pids hold it. Tables are per network namespace: the receiver's own namespace is read first,
//! then, when the entry is not there, one process of every other namespace.
//!
//! All of this runs on one dedicated thread that takes whatever lookups are pending at once and
//! answers them with a single pass over /proc, so bursts of connections cost one scan, and the
//! async request path never touches /proc.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::ledger::Holder;
use crate::observe::procfile::{numeric_entries, Clock};
use crate::observe::sockets::{self, normalize_addr, SocketTable};
use crate::observe::tree::proc_basics;

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

fn index_of(pid: i32, file: &'static str) -> ConnIndex {
    let mut idx = ConnIndex::default();
    if let Ok(t) = sockets::read_table(pid, file) {
        idx.add(&t);
    }
    idx
}

/// Where client sockets are looked for, read only as far as needed: each tcp file costs a walk
/// of the kernel's whole connection hash, so our namespace's tcp table comes first, its tcp6
/// (grpcio clients' IPv4-mapped sockets) only for a peer not found there, and every other
/// namespace's tables last.
#[derive(Default)]
struct Lookup {
    tcp: Option<ConnIndex>,
    tcp6: Option<ConnIndex>,
    other_ns: Option<ConnIndex>,
}

impl Lookup {
    fn client_inode(&mut self, peer: SocketAddr, ours: SocketAddr) -> Option<u64> {
        let me = std::process::id() as i32;
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
        self.other_ns
            .get_or_insert_with(other_namespace_tables)
            .client_inode(peer, ours)
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

/// Start time, NSpid chain and comm of a pid; None when it is gone.
pub fn holder_info(pid: i32, clock: &Clock) -> Option<Holder> {
    let b = proc_basics(pid, clock).ok()?;
    Some(Holder {
        pid,
        nspid: b.nspid,
        started_at_ns: b.started_at_ms * 1_000_000,
        comm: b.comm,
    })
}

/// The answer for one connection.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    pub inode: Option<u64>,
    pub holders: Vec<Holder>,
    /// Why nobody was found, when nobody was.
    pub error: Option<String>,
}

enum Job {
    Resolve {
        peer: SocketAddr,
        ours: SocketAddr,
        reply: oneshot::Sender<Resolution>,
    },
    Recheck {
        inode: u64,
        reply: oneshot::Sender<Vec<Holder>>,
    },
}

/// Handle to the resolver thread. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    tx: mpsc::Sender<Job>,
}

impl Resolver {
    /// Starts the resolver thread; it ends when the last handle is dropped.
    pub fn start() -> std::io::Result<Resolver> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("forkcheck-attrib".into())
            .spawn(move || run(rx))?;
        Ok(Resolver { tx })
    }

    /// Who holds the client end of the connection `peer` -> `ours`.
    pub async fn resolve(&self, peer: SocketAddr, ours: SocketAddr) -> Resolution {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Resolve { peer, ours, reply }).is_err() {
            return Resolution {
                error: Some("attribution thread gone".into()),
                ..Default::default()
            };
        }
        rx.await.unwrap_or_default()
    }

    /// Who holds `inode` now.
    pub async fn recheck(&self, inode: u64) -> Vec<Holder> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Recheck { inode, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn run(rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        // Take everything that is already waiting: one pass over /proc answers all of it.
        let mut jobs = vec![first];
        // A short pause lets a burst of connects land in the same pass.
        std::thread::sleep(Duration::from_millis(1));
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
            if jobs.len() >= 4096 {
                break;
            }
        }
        let mut inodes: Vec<Option<u64>> = Vec::with_capacity(jobs.len());
        let mut lookup = Lookup::default();
        for j in &jobs {
            match j {
                Job::Resolve { peer, ours, .. } => inodes.push(lookup.client_inode(*peer, *ours)),
                Job::Recheck { inode, .. } => inodes.push(Some(*inode)),
            }
        }
        let wanted: HashSet<u64> = inodes.iter().flatten().copied().collect();
        let holders = scan_holders(&wanted);
        let clock = Clock::new();
        let mut info: HashMap<i32, Option<Holder>> = HashMap::new();
        let mut holders_of = |inode: u64| -> Vec<Holder> {
            holders
                .get(&inode)
                .map(|pids| {
                    pids.iter()
                        .filter_map(|p| {
                            info.entry(*p)
                                .or_insert_with(|| holder_info(*p, &clock))
                                .clone()
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for (j, inode) in jobs.into_iter().zip(inodes) {
            match j {
                Job::Resolve { peer, reply, .. } => {
                    let res = match inode {
                        None => Resolution {
                            inode: None,
                            holders: vec![],
                            error: Some(format!(
                                "no TCP socket with local address {} in any network namespace's table \
                                 (client on another host, or it closed the connection already)",
                                normalize_addr(peer)
                            )),
                        },
                        Some(i) => {
                            let hs = holders_of(i);
                            let error = hs.is_empty().then(|| {
                                format!("socket inode {i} is held by no process (the sender exited already)")
                            });
                            Resolution {
                                inode: Some(i),
                                holders: hs,
                                error,
                            }
                        }
                    };
                    let _ = reply.send(res);
                }
                Job::Recheck { reply, .. } => {
                    let inode = inode.unwrap_or(0);
                    let _ = reply.send(holders_of(inode));
                }
            }
        }
    }
}

/// TCP tables of every network namespace other than ours (one process read per namespace).
fn other_namespace_tables() -> ConnIndex {
    let me = std::process::id() as i32;
    let mut seen: HashSet<u64> = HashSet::new();
    if let Ok(m) = sockets::netns_inode(me) {
        seen.insert(m);
    }
    let mut out = ConnIndex::default();
    for pid in pids() {
        let Ok(ns) = sockets::netns_inode(pid) else {
            continue;
        };
        if seen.insert(ns) {
            for file in ["tcp", "tcp6"] {
                if let Ok(t) = sockets::read_table(pid, file) {
                    out.add(&t);
                }
            }
        }
    }
    out
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
        let holders = scan_holders(&HashSet::from([inode]));
        assert_eq!(holders[&inode], vec![std::process::id() as i32]);
        let me = holder_info(std::process::id() as i32, &Clock::new()).unwrap();
        assert!(me.started_at_ns > 1_600_000_000_000_000_000);
        assert!(!me.nspid.is_empty());
    }
}
