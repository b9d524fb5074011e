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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::ledger::Holder;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes plain IPv4; everything else is kept.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// One row of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel TCP state number (1 = ESTABLISHED, 10 = LISTEN).
    pub state: u8,
    pub inode: u64,
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => {
            let n = u32::from_str_radix(ip, 16).ok()?;
            // The kernel prints the address as a native-endian 32-bit word.
            IpAddr::V4(Ipv4Addr::from(n.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for w in 0..4 {
                let n = u32::from_str_radix(&ip[w * 8..w * 8 + 8], 16).ok()?;
                bytes[w * 4..w * 4 + 4].copy_from_slice(&n.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(normalize(SocketAddr::new(ip, port)))
}

/// Parses the text of /proc/<pid>/net/tcp or tcp6; malformed lines are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            Some(TcpEntry {
                local: parse_addr(f[1])?,
                remote: parse_addr(f[2])?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

fn read_tables(proc_dir: &str) -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for t in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("{proc_dir}/net/{t}")) {
            out.extend(parse_tcp_table(&text));
        }
    }
    out
}

/// The client's socket inode for a connection whose client is `peer` and server end is `ours`.
pub fn find_client_inode(table: &[TcpEntry], peer: SocketAddr, ours: SocketAddr) -> Option<u64> {
    let (peer, ours) = (normalize(peer), normalize(ours));
    table
        .iter()
        .find(|e| e.local == peer && e.remote == ours && e.inode != 0)
        .map(|e| e.inode)
}

fn pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// For every wanted inode, the pids holding it (one pass over /proc/*/fd).
pub fn scan_holders(wanted: &HashSet<u64>) -> HashMap<u64, Vec<i32>> {
    let mut found: HashMap<u64, Vec<i32>> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    for pid in pids() {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let Some(s) = link.to_str() else { continue };
            if let Some(rest) = s.strip_prefix("socket:[") {
                if let Some(inode) = rest.strip_suffix(']').and_then(|n| n.parse::<u64>().ok()) {
                    if wanted.contains(&inode) {
                        let v = found.entry(inode).or_default();
                        if !v.contains(&pid) {
                            v.push(pid);
                        }
                    }
                }
            }
        }
    }
    for v in found.values_mut() {
        v.sort_unstable();
    }
    found
}

/// Offset that turns CLOCK_BOOTTIME into CLOCK_REALTIME, nanoseconds.
fn boot_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we pass.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let real = read(libc::CLOCK_REALTIME);
    let boot = read(libc::CLOCK_BOOTTIME);
    real - boot
}

fn clk_tck() -> i128 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as i128
    } else {
        100
    }
}

/// Start time (Unix ns), NSpid chain and comm of a pid; None when it is gone.
pub fn holder_info(pid: i32) -> Option<Holder> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
    // Fields after the comm: state is field 3, starttime field 22 -> index 19 here.
    let start_ticks: i128 = tail.split_whitespace().nth(19)?.parse().ok()?;
    let started_at_ns = boot_offset_ns() + start_ticks * 1_000_000_000 / clk_tck();
    let nspid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| {
                v.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_else(|| vec![pid]);
    Some(Holder {
        pid,
        nspid,
        started_at_ns: started_at_ns.max(0) as u64,
        comm,
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
    pub fn start() -> Resolver {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("forkcheck-attrib".into())
            .spawn(move || run(rx))
            .expect("spawn attribution thread");
        Resolver { tx }
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

fn netns_of(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
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
        let needs_tables = jobs.iter().any(|j| matches!(j, Job::Resolve { .. }));
        let own = if needs_tables {
            read_tables("/proc/self")
        } else {
            Vec::new()
        };
        let mut other_ns: Option<Vec<TcpEntry>> = None;
        for j in &jobs {
            match j {
                Job::Resolve { peer, ours, .. } => {
                    let mut found = find_client_inode(&own, *peer, *ours);
                    if found.is_none() {
                        let tables = other_ns.get_or_insert_with(other_namespace_tables);
                        found = find_client_inode(tables, *peer, *ours);
                    }
                    inodes.push(found);
                }
                Job::Recheck { inode, .. } => inodes.push(Some(*inode)),
            }
        }
        let wanted: HashSet<u64> = inodes.iter().flatten().copied().collect();
        let holders = scan_holders(&wanted);
        let mut info: HashMap<i32, Option<Holder>> = HashMap::new();
        let mut holders_of = |inode: u64| -> Vec<Holder> {
            holders
                .get(&inode)
                .map(|pids| {
                    pids.iter()
                        .filter_map(|p| info.entry(*p).or_insert_with(|| holder_info(*p)).clone())
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
                                normalize(peer)
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
fn other_namespace_tables() -> Vec<TcpEntry> {
    let mine = netns_of("self");
    let mut seen: HashSet<std::path::PathBuf> = HashSet::new();
    if let Some(m) = &mine {
        seen.insert(m.clone());
    }
    let mut out = Vec::new();
    for pid in pids() {
        let Some(ns) = netns_of(&pid.to_string()) else {
            continue;
        };
        if seen.insert(ns) {
            out.extend(read_tables(&format!("/proc/{pid}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_tcp6_rows() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1\n\
   1: garbage\n";
        let e = parse_tcp_table(v4);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e[0].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(e[0].state, 1);
        assert_eq!(e[0].inode, 12345);
        // ::ffff:127.0.0.1 as the kernel prints it on little-endian machines.
        let v6 = "header\n   0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000100007F:10E1 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let e = parse_tcp_table(v6);
        if cfg!(target_endian = "little") {
            assert_eq!(e[0].local, "127.0.0.1:54321".parse().unwrap());
            assert_eq!(e[0].remote, "127.0.0.1:4321".parse().unwrap());
        }
        assert_eq!(
            find_client_inode(
                &e,
                "[::ffff:127.0.0.1]:54321".parse().unwrap(),
                "127.0.0.1:4321".parse().unwrap()
            ),
            Some(777)
        );
    }

    #[test]
    fn finds_own_socket_holders() {
        // A real loopback connection made by this test process.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(ours).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let table = read_tables("/proc/self");
        let inode = find_client_inode(&table, peer, ours).expect("client entry");
        assert_eq!(inode, {
            use std::os::unix::fs::MetadataExt;
            use std::os::unix::io::AsRawFd;
            std::fs::metadata(format!("/proc/self/fd/{}", c.as_raw_fd()))
                .unwrap()
                .ino()
        });
        let holders = scan_holders(&HashSet::from([inode]));
        assert_eq!(holders[&inode], vec![std::process::id() as i32]);
        let me = holder_info(std::process::id() as i32).unwrap();
        assert!(me.started_at_ns > 1_600_000_000_000_000_000);
        assert!(!me.nspid.is_empty());
    }
}
