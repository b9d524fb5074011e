//! What one client, or many, can hold in the receiver, and for how long.
//!
//! Connections: every accepted connection is supervised from accept ([`supervise`]). One that
//! has not received a request in full within the first-request bound is closed, whatever it
//! sent (nothing, an HTTP/2 preface alone, HEADERS without END_HEADERS, half a request line:
//! the timer starts at accept, not at the first byte, and is the same for HTTP/1, HTTP/2 and
//! gRPC on either listener). A keep-alive connection idle for the idle bound is closed
//! gracefully (HTTP/2 GOAWAY). Each listener has its own connection cap, so a flood on one
//! port cannot lock exporters out of the other, and each peer address has a cap per listener.
//! A new connection over a cap closes an idle connection in its scope to make room: first one
//! that never completed a request (the oldest), then the one idle the longest. Only when every
//! connection in scope is busy with a request is the new one closed instead. Every closure is
//! counted in the ledger's [`LimitStats`](crate::ledger::LimitStats).
//!
//! Memory: request bodies in flight, as received and decompressed, HTTP and gRPC together,
//! draw on one [`Budget`]. Memory is reserved before it is allocated, for bytes that exist: a
//! first slice before the body is read (what it declares, at most [`FIRST_SLICE`]), more as
//! bytes arrive, an estimate before inflating and more as the output grows. What is declared
//! but not sent holds nothing, so a client that announces 64 MiB and stalls cannot take the
//! budget from others. The first reservation of each step waits up to [`BUDGET_WAIT`] (in
//! FIFO order); growth is taken only if free at once, so memory freed goes to waiters first.
//! Every wait is bounded, so requests that hold memory and wait for more cannot deadlock. A
//! request that cannot get its memory is answered 503 with Retry-After (HTTP) or
//! RESOURCE_EXHAUSTED with a RetryInfo detail (gRPC), which OTLP exporters retry.
//!
//! The heap: glibc serves allocations below its mmap threshold from arenas that keep freed
//! memory, and raises the threshold (up to 32 MiB) each time a large block is freed, so a burst
//! of large bodies could leave the resident size far above what is in use, or copy on growth.
//! [`serve`](super::serve) pins the threshold at 1 MiB ([`pin_mmap_threshold`]): body buffers
//! are mmapped, grow by mremap without a copy and go back to the kernel when freed.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::{Conn, Options};

mod memory;
pub use memory::*;

/// A connection must have received one request in full this long after accept.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections idle this long are closed. Above the SDK's default 60 s metric export
/// interval, so an exporter's connection is not cut between two exports.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections served at once per listener (lowered to fit the open-file limit).
pub const DEFAULT_MAX_CONNS_PER_LISTENER: usize = 2048;
/// Connections served at once per listener from one peer address. Loopback exporters all share
/// 127.0.0.1, so this is half the listener's cap: enough for every local worker, and a remote
/// peer cannot take a whole port.
pub const DEFAULT_MAX_CONNS_PER_PEER: usize = 1024;
/// Request bodies in flight (compressed and decompressed, HTTP and gRPC together), bytes.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;
/// At most this much is reserved for a body before its bytes arrive (a body that announces more
/// and stalls holds no more than this).
pub const FIRST_SLICE: usize = 256 << 10;
/// How long a request waits for its first reservation before it is refused.
pub const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// The retry hint sent with a refusal, seconds.
pub const RETRY_AFTER_SECS: u64 = 1;
/// After GOAWAY (idle close), how long requests already started may take.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// File descriptors kept out of the connection caps (listeners, /proc reads, the resolver,
/// forwarding, stdio).
const FD_RESERVE: usize = 128;
/// glibc's mmap threshold, pinned (see the module doc).
const MMAP_THRESHOLD: i32 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Connections

/// A connection's life as its supervisor sees it.
pub(crate) struct Life {
    accepted: Instant,
    /// Index of the listener it came on.
    listener: usize,
    ip: IpAddr,
    /// Requests being served now.
    busy: AtomicU32,
    /// Requests served to the end.
    completed: AtomicU64,
    /// Milliseconds after `accepted` when the last request ended.
    last_active_ms: AtomicU64,
    /// Set to close the connection at once (eviction).
    kill: Notify,
}

impl Life {
    pub(crate) fn new(listener: usize, ip: IpAddr) -> Life {
        Life {
            accepted: Instant::now(),
            listener,
            ip,
            busy: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            kill: Notify::new(),
        }
    }

    /// Marks a request as being served until the guard drops.
    pub(crate) fn begin(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    fn last_active(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn served_any(&self) -> bool {
        self.completed.load(Ordering::Relaxed) > 0
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// When a body being read on this connection must be complete: `read_timeout` from now,
    /// and no later than the first-request bound while no request has been served.
    pub(crate) fn body_deadline(&self, opts: &Options) -> tokio::time::Instant {
        let mut d = Instant::now() + opts.read_timeout;
        if !self.served_any() {
            d = d.min(self.accepted + opts.first_request_timeout);
        }
        d.into()
    }

    /// When to look again, and whether it is over now.
    fn check(&self, opts: &Options, now: Instant) -> Result<Instant, Closed> {
        if !self.is_idle() {
            // Requests being served have their own bounds. Once they end, the connection
            // cannot be idle for `idle_timeout` before `now + idle_timeout`: looking again then
            // is never late, and no request has to wake the supervisor (which cost a timer and
            // a wake-up per request).
            return Ok(now + opts.idle_timeout);
        }
        if self.served_any() {
            let due = self.last_active() + opts.idle_timeout;
            return if now >= due {
                Err(Closed::Idle)
            } else {
                Ok(due)
            };
        }
        let due = self.accepted + opts.first_request_timeout;
        if now >= due {
            Err(Closed::FirstRequest)
        } else {
            // A first request may come and go before `due`: idle from then on.
            Ok(due.min(now + opts.idle_timeout))
        }
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy<'a>(&'a Life);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let l = self.0;
        let ms = l.accepted.elapsed().as_millis() as u64;
        l.last_active_ms.fetch_max(ms, Ordering::Relaxed);
        l.completed.fetch_add(1, Ordering::Relaxed);
        l.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection was closed by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or the protocol ended it.
    Done,
    FirstRequest,
    Idle,
    Evicted,
}

/// Serves `fut` (one connection) until it ends, a bound runs out or the connection is evicted.
/// `graceful` starts a graceful close (HTTP/2 GOAWAY, HTTP/1 close after the response).
pub(crate) async fn supervise<F: Future>(
    life: &Life,
    opts: &Options,
    fut: F,
    graceful: impl FnOnce(Pin<&mut F>),
) -> Closed {
    tokio::pin!(fut);
    let mut graceful = Some(graceful);
    loop {
        let wake = match life.check(opts, Instant::now()) {
            Ok(at) => at,
            Err(Closed::Idle) => {
                if let Some(g) = graceful.take() {
                    g(fut.as_mut());
                }
                let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, fut.as_mut()).await;
                return Closed::Idle;
            }
            // Dropping the connection future closes the socket.
            Err(why) => return why,
        };
        tokio::select! {
            _ = fut.as_mut() => return Closed::Done,
            _ = life.kill.notified() => return Closed::Evicted,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Caps actually applied (the configured ones, lowered to fit the open-file limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub per_listener: usize,
    pub per_peer: usize,
}

impl Caps {
    /// The caps for `listeners` listeners with `nofile` file descriptors available.
    pub fn fit(opts: &Options, listeners: usize, nofile: usize) -> Caps {
        let fit = nofile.saturating_sub(FD_RESERVE) / listeners.max(1);
        let per_listener = opts.max_conns_per_listener.min(fit).max(1);
        Caps {
            per_listener,
            per_peer: opts.max_conns_per_peer.clamp(1, per_listener),
        }
    }
}

/// What admitting a new connection did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Room was there (or was made: counts of idle connections closed, by cap).
    In {
        evicted_listener: u64,
        evicted_peer: u64,
    },
    /// Every connection in scope is busy: the new one must go.
    Refused,
}

#[derive(Default)]
struct ListenerConns {
    conns: HashMap<u64, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Every open connection, per listener.
pub(crate) struct Table {
    caps: Caps,
    listeners: Mutex<Vec<ListenerConns>>,
}

impl Table {
    pub(crate) fn new(caps: Caps, listeners: usize) -> Table {
        Table {
            caps,
            listeners: Mutex::new((0..listeners).map(|_| ListenerConns::default()).collect()),
        }
    }

    pub(crate) fn caps(&self) -> Caps {
        self.caps
    }

    /// Admits `conn`, evicting idle connections of its scope when a cap is reached.
    pub(crate) fn admit(&self, conn: &Arc<Conn>) -> Admit {
        let life = &conn.life;
        let mut all = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = all.get_mut(life.listener) else {
            return Admit::Refused;
        };
        let mut evicted_peer = 0;
        let mut evicted_listener = 0;
        if l.conns.len() >= self.caps.per_listener {
            match victim(l, None) {
                Some(v) => {
                    evict(l, v);
                    evicted_listener += 1;
                }
                None => return Admit::Refused,
            }
        }
        if l.per_ip.get(&life.ip).copied().unwrap_or(0) >= self.caps.per_peer {
            match victim(l, Some(life.ip)) {
                Some(v) => {
                    evict(l, v);
                    evicted_peer += 1;
                }
                None => return Admit::Refused,
            }
        }
        l.conns.insert(conn.id, conn.clone());
        *l.per_ip.entry(life.ip).or_insert(0) += 1;
        Admit::In {
            evicted_listener,
            evicted_peer,
        }
    }

    /// Forgets a connection that ended (no-op when it was evicted).
    pub(crate) fn remove(&self, conn: &Conn) {
        let mut all = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = all.get_mut(conn.life.listener) {
            if l.conns.remove(&conn.id).is_some() {
                forget_ip(l, conn.life.ip);
            }
        }
    }

    /// Open connections on listener `i`.
    pub(crate) fn open(&self, i: usize) -> usize {
        let all = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        all.get(i).map_or(0, |l| l.conns.len())
    }
}

fn forget_ip(l: &mut ListenerConns, ip: IpAddr) {
    if let Some(n) = l.per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            l.per_ip.remove(&ip);
        }
    }
}

/// The idle connection to close first (of `ip` only, when given): one that never completed a
/// request, the oldest; else the one idle the longest.
fn victim(l: &ListenerConns, ip: Option<IpAddr>) -> Option<u64> {
    l.conns
        .values()
        .filter(|c| ip.is_none_or(|ip| c.life.ip == ip) && c.life.is_idle())
        .min_by_key(|c| {
            let served = c.life.served_any();
            let since = if served {
                c.life.last_active()
            } else {
                c.life.accepted
            };
            (served, since)
        })
        .map(|c| c.id)
}

fn evict(l: &mut ListenerConns, id: u64) {
    if let Some(c) = l.conns.remove(&id) {
        forget_ip(l, c.life.ip);
        c.life.kill.notify_one();
    }
}

#[cfg(test)]
mod tests;
