//! Which OS processes hold the client end of an accepted connection (the lookups themselves
//! are the `/proc` floor's: [`crate::proc::conn`]).
//!
//! All of this runs on one dedicated thread that takes whatever lookups are pending at once:
//! each connection's client socket is one exact sock_diag lookup (socket tables only where
//! that cannot answer), and their holders are found with a single pass over /proc/*/fd, so
//! bursts of connections cost one scan, and the async request path never touches /proc.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::proc::conn::{scan_holders, Holder, Lookup};
use crate::proc::file::Clock;
use crate::proc::sockets::normalize_addr;

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
        /// A background re-check, which may wait for others.
        routine: bool,
    },
}

/// A burst of connects (or urgent re-checks) is gathered this long before the pass over /proc
/// that answers it ...
const GATHER: Duration = Duration::from_millis(1);
/// ... and routine re-checks, which every busy connection asks for in the same moment (see
/// `conn::tick`), this long: one pass answers all of them.
const GATHER_ROUTINE: Duration = Duration::from_millis(20);

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
        self.recheck_as(inode, false).await
    }

    /// Who holds `inode` now, for a routine re-check in the background: answered with the
    /// other connections' routine re-checks, up to [`GATHER_ROUTINE`] later.
    pub async fn routine_recheck(&self, inode: u64) -> Vec<Holder> {
        self.recheck_as(inode, true).await
    }

    async fn recheck_as(&self, inode: u64, routine: bool) -> Vec<Holder> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Recheck {
            inode,
            reply,
            routine,
        };
        if self.tx.send(job).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn run(rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        // Take everything that is already waiting: one pass over /proc answers all of it.
        let routine = matches!(first, Job::Recheck { routine: true, .. });
        let mut jobs = vec![first];
        // A short pause lets a burst land in the same pass.
        std::thread::sleep(if routine { GATHER_ROUTINE } else { GATHER });
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
                                .or_insert_with(|| Holder::read(*p, &clock))
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
                                "no TCP socket with local address {} in any network namespace \
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
