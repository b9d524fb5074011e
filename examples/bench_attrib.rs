//! The receiver's attribution cost per new connection, before (every namespace's socket tables
//! read: `Lookup::tables_only`) and after (one exact sock_diag lookup per connection:
//! `Lookup::default`), in the same run on the same connections: `bench_attrib [RUNS] [N...]`
//! (default 15 runs; 64 and 256 connections).
//!
//! For each N, N forked processes each hold one loopback connection to a listener of ours.
//! Two shapes, each timed both ways, rounds interleaved:
//! - `burst`: all N looked up in one round (one `Lookup`, as the resolver answers a burst),
//!   then their holders found with one pass over /proc/*/fd (`scan_holders`, the same both ways);
//! - `lone`: each connection in a round of its own (a new `Lookup` and a scan per connection,
//!   as connections arriving one at a time are answered), for the first 16 connections.
//!
//! Prints medians per connection in microseconds, the ratio, and the table reads and exact
//! lookups each way made; asserts nothing about time (it depends on the machine) but checks
//! every connection resolved to the one process holding it, both ways (exit 1 if not).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Instant;

use otel_forkcheck::proc::conn::{lookup_counts, scan_holders, Lookup, LookupCounts};

/// Forks `n` children, each connected to `listener` (accepted here at once, so the accept
/// queue never fills) and then waiting to be killed. Returns the accepted streams and each
/// child's pid by the local port it says it connected from.
fn senders(n: usize, listener: &TcpListener) -> (Vec<(TcpStream, SocketAddr)>, HashMap<u16, i32>) {
    let to = listener.local_addr().expect("listener address");
    let mut pids = HashMap::with_capacity(n);
    let mut accepted = Vec::with_capacity(n);
    for _ in 0..n {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a local array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: this example is single-threaded; the child only connects, writes and waits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: asks the kernel to kill this child when the benchmark ends, however it
            // ends (a panic, a timeout's signal): no child outlives it.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            // Only the pipe's write end kept: a child holding its elder siblings' accepted
            // sockets would make every fd scan quadratic in `n`.
            for fd in 3..4096 {
                if fd != fds[1] {
                    // SAFETY: closes descriptors of this forked child only.
                    unsafe { libc::close(fd) };
                }
            }
            let code = match TcpStream::connect(to) {
                Ok(s) => {
                    let port = s.local_addr().map_or(0, |a| a.port());
                    // SAFETY: the write end of our pipe, owned by this child from here on.
                    let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
                    let _ = w.write_all(&port.to_be_bytes());
                    drop(w);
                    let _held = s;
                    loop {
                        // SAFETY: waits for the SIGKILL that ends us.
                        unsafe { libc::pause() };
                    }
                }
                Err(_) => 1,
            };
            // SAFETY: leaves the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: the read end of our pipe; the write end is the child's.
        unsafe { libc::close(fds[1]) };
        // SAFETY: the read end, owned here.
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut b = [0u8; 2];
        r.read_exact(&mut b)
            .unwrap_or_else(|_| panic!("child {pid} did not connect"));
        pids.insert(u16::from_be_bytes(b), pid);
        accepted.push(listener.accept().expect("accept"));
    }
    (accepted, pids)
}

/// Connections timed one at a time per round (each costs a whole fd scan).
const LONE: usize = 16;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn delta(a: LookupCounts, b: LookupCounts) -> LookupCounts {
    LookupCounts {
        table_reads: b.table_reads - a.table_reads,
        exact_lookups: b.exact_lookups - a.exact_lookups,
    }
}

/// One round: the holders of every connection, in one `Lookup` (`lone`: one per connection).
/// Returns (lookup µs, scan µs) for the whole round; checks each holder.
fn round(conns: &[(SocketAddr, SocketAddr, i32)], exact: bool, lone: bool) -> (f64, f64) {
    let new = || {
        if exact {
            Lookup::default()
        } else {
            Lookup::tables_only()
        }
    };
    let (mut look_us, mut scan_us) = (0.0, 0.0);
    let batches: Vec<&[(SocketAddr, SocketAddr, i32)]> = if lone {
        conns.chunks(1).collect()
    } else {
        vec![conns]
    };
    for batch in batches {
        let t = Instant::now();
        let mut lookup = new();
        let inodes: Vec<Option<u64>> = batch
            .iter()
            .map(|(peer, ours, _)| lookup.client_inode(*peer, *ours))
            .collect();
        look_us += t.elapsed().as_secs_f64() * 1e6;
        let t = Instant::now();
        let wanted: HashSet<u64> = inodes.iter().flatten().copied().collect();
        let holders = scan_holders(&wanted);
        scan_us += t.elapsed().as_secs_f64() * 1e6;
        for ((_, _, pid), inode) in batch.iter().zip(inodes) {
            let got = inode.and_then(|i| holders.get(&i));
            if got != Some(&vec![*pid]) {
                eprintln!("connection of pid {pid}: inode {inode:?}, holders {got:?}");
                std::process::exit(1);
            }
        }
    }
    (look_us, scan_us)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15)
        .max(1);
    let mut sizes: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![64, 256];
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# {runs} runs; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for n in sizes {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = listener.local_addr().unwrap();
        let (accepted, pids) = senders(n, &listener);
        // Which child holds which connection, as each child said (its local port).
        let conns: Vec<(SocketAddr, SocketAddr, i32)> = accepted
            .iter()
            .map(|(_, peer)| (*peer, ours, pids[&peer.port()]))
            .collect();
        for lone in [false, true] {
            let shape = if lone { "lone" } else { "burst" };
            let mut per = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
            let mut counts = [LookupCounts::default(); 2];
            for _ in 0..runs {
                for (k, exact) in [false, true].into_iter().enumerate() {
                    let before = lookup_counts();
                    let take = if lone {
                        conns.len().min(LONE)
                    } else {
                        conns.len()
                    };
                    let (l, s) = round(&conns[..take], exact, lone);
                    let d = delta(before, lookup_counts());
                    counts[k].table_reads += d.table_reads;
                    counts[k].exact_lookups += d.exact_lookups;
                    per[k].0.push(l / take as f64);
                    per[k].1.push(s / take as f64);
                }
            }
            let [(mut tl, mut ts), (mut el, mut es)] = per;
            let (tl, ts, el, es) = (
                median(&mut tl),
                median(&mut ts),
                median(&mut el),
                median(&mut es),
            );
            let r = runs as u64;
            println!(
                "n={n} {shape}: per connection, lookup tables={tl:.1}us exact={el:.1}us ({:.1}x); \
                 fd scan tables={ts:.1}us exact={es:.1}us; total tables={:.1}us exact={:.1}us ({:.1}x); \
                 per round: table reads {} vs {}, exact lookups {} vs {}",
                tl / el.max(0.001),
                tl + ts,
                el + es,
                (tl + ts) / (el + es).max(0.001),
                counts[0].table_reads / r,
                counts[1].table_reads / r,
                counts[0].exact_lookups / r,
                counts[1].exact_lookups / r,
            );
        }
        for p in pids.values() {
            // SAFETY: our own children, by pid.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
                libc::waitpid(*p, std::ptr::null_mut(), 0);
            }
        }
    }
}
