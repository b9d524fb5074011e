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
    /// Set when a request ends (the supervisor's next deadline moves).
    ended: Notify,
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
            ended: Notify::new(),
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
            // Requests being served have their own bounds; the supervisor looks again when
            // they end (and, to be safe, now and then).
            return Ok(now + opts.first_request_timeout.max(opts.idle_timeout));
        }
        let (due, why) = if self.served_any() {
            (self.last_active() + opts.idle_timeout, Closed::Idle)
        } else {
            (
                self.accepted + opts.first_request_timeout,
                Closed::FirstRequest,
            )
        };
        if now >= due {
            Err(why)
        } else {
            Ok(due)
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
        l.ended.notify_one();
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
            _ = life.ended.notified() => {}
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

/// Raises the soft open-file limit to the hard one (once) and returns the soft limit now in
/// force. The limit found at first call is kept for programs we launch
/// ([`original_nofile`]).
pub fn raise_nofile() -> usize {
    static RAISED: OnceLock<usize> = OnceLock::new();
    *RAISED.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return 1024;
        }
        let _ = ORIGINAL_NOFILE.set((lim.rlim_cur, lim.rlim_max));
        if lim.rlim_cur < lim.rlim_max {
            // Not beyond what select(2)-free programs like us need.
            let want = lim.rlim_max.min(1 << 20);
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: plain syscall on a struct we own.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return want as usize;
            }
        }
        lim.rlim_cur as usize
    })
}

static ORIGINAL_NOFILE: OnceLock<(libc::rlim_t, libc::rlim_t)> = OnceLock::new();

/// The open-file limit (soft, hard) before [`raise_nofile`] raised it, if it did: `run`
/// restores it in the server it launches, so the server under test runs with the limits the
/// user gave it.
pub fn original_nofile() -> Option<(libc::rlim_t, libc::rlim_t)> {
    ORIGINAL_NOFILE.get().copied()
}

/// Pins glibc's mmap threshold (see the module doc). Once per process; no-op elsewhere.
pub fn pin_mmap_threshold() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it takes the allocator's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Bytes of request bodies in flight, shared by every request of a receiver.
pub struct Budget {
    sem: Semaphore,
    total: usize,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

/// Why memory could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// Not within the wait (or not free at once, for growth): retry later.
    Busy,
    /// More than the whole budget: it never will be.
    OverBudget,
}

impl Budget {
    pub fn new(total: usize) -> Arc<Budget> {
        // tokio's semaphore counts in usize but takes u32 at a time.
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Budget {
            sem: Semaphore::new(total),
            total,
            in_use: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// The most bytes reserved at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn took(&self, n: usize) {
        let now = self.in_use.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn permits(&self, n: usize) -> Result<u32, Short> {
        if n > self.total {
            return Err(Short::OverBudget);
        }
        u32::try_from(n).map_err(|_| Short::OverBudget)
    }

    /// Reserves `n` bytes, waiting up to `wait`. Ok(true) when it had to wait.
    pub async fn reserve(
        self: &Arc<Self>,
        n: usize,
        wait: Duration,
    ) -> Result<(Reservation, bool), Short> {
        let k = self.permits(n)?;
        if let Ok(p) = self.sem.try_acquire_many(k) {
            p.forget();
            self.took(n);
            return Ok((self.reservation(n), false));
        }
        match tokio::time::timeout(wait, self.sem.acquire_many(k)).await {
            Ok(Ok(p)) => {
                p.forget();
                self.took(n);
                Ok((self.reservation(n), true))
            }
            _ => Err(Short::Busy),
        }
    }

    /// Reserves `n` bytes if they are free now.
    pub fn try_reserve(self: &Arc<Self>, n: usize) -> Result<Reservation, Short> {
        let mut r = self.reservation(0);
        r.try_grow(n)?;
        Ok(r)
    }

    fn reservation(self: &Arc<Self>, bytes: usize) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Bytes held from a [`Budget`] until dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes room in `buf` for `need` bytes in all (doubling, at most `ceiling`), holding its
    /// whole capacity; growth does not wait.
    pub fn fit(&mut self, buf: &mut Vec<u8>, need: usize, ceiling: usize) -> Result<(), Short> {
        if need <= buf.capacity() {
            return Ok(());
        }
        let cap = need
            .max(buf.capacity().saturating_mul(2))
            .max(64 << 10)
            .min(ceiling.max(need));
        if cap > self.bytes {
            self.try_grow(cap - self.bytes)?;
        }
        buf.reserve_exact(cap - buf.len());
        Ok(())
    }

    /// Takes `n` more bytes if they are free now (never waits: see the module doc).
    pub fn try_grow(&mut self, n: usize) -> Result<(), Short> {
        if n == 0 {
            return Ok(());
        }
        let k = self
            .budget
            .permits(self.bytes.saturating_add(n))
            .and(self.budget.permits(n))?;
        match self.budget.sem.try_acquire_many(k) {
            Ok(p) => {
                p.forget();
                self.budget.took(n);
                self.bytes += n;
                Ok(())
            }
            Err(_) => Err(Short::Busy),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.in_use.fetch_sub(self.bytes, Ordering::Relaxed);
            self.budget.sem.add_permits(self.bytes);
        }
    }
}

/// Why a body could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    Bad(String),
    /// Over `cap` bytes inflated.
    TooLarge(usize),
    /// The budget had no room for it now.
    Budget(Short),
}

/// Inflates gzip `body` (several members allowed) into a buffer that starts with `prefix` zero
/// bytes, at most `cap` bytes after the prefix. Every byte of the buffer's capacity is held in
/// `res`, which grows (without waiting) as the output does. Blocking: run it off the runtime.
pub fn gunzip_budgeted(
    body: &[u8],
    prefix: usize,
    cap: usize,
    res: &mut Reservation,
) -> Result<Vec<u8>, InflateError> {
    const STEP: usize = 1 << 20;
    // Capacity may reach prefix + cap + 1: one byte over the cap tells "too large".
    let limit = prefix + cap + 1;
    let mut out: Vec<u8> = Vec::new();
    let first = res.bytes().clamp(prefix + 1, limit);
    if first > res.bytes() {
        res.try_grow(first - res.bytes())
            .map_err(InflateError::Budget)?;
    }
    out.reserve_exact(first);
    out.resize(out.capacity().min(res.bytes()), 0);
    let mut len = prefix;
    let mut dec = flate2::read::MultiGzDecoder::new(body);
    loop {
        if len == out.len() {
            if out.len() >= limit {
                return Err(InflateError::TooLarge(cap));
            }
            let grow = (out.len() / 2).max(STEP).min(limit - out.len());
            res.try_grow(grow).map_err(InflateError::Budget)?;
            out.reserve_exact(grow);
            let to = (out.len() + grow).min(out.capacity());
            out.resize(to, 0);
        }
        match dec.read(&mut out[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(InflateError::Bad(e.to_string())),
        }
    }
    if len - prefix > cap {
        return Err(InflateError::TooLarge(cap));
    }
    out.truncate(len);
    Ok(out)
}

/// A first reservation for inflating `compressed` bytes: 8 times as much (OTLP protobuf
/// compresses 5 to 10 times), at least 64 KiB, at most the cap.
pub fn inflate_estimate(compressed: usize, cap: usize) -> usize {
    compressed
        .saturating_mul(8)
        .clamp(64 << 10, cap.max(64 << 10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn reservations_wait_grow_and_release() {
        rt().block_on(async {
            let b = Budget::new(1000);
            let (mut r1, waited) = b.reserve(600, Duration::ZERO).await.unwrap();
            assert!(!waited);
            assert_eq!(b.in_use(), 600);
            assert_eq!(r1.try_grow(300), Ok(()));
            // More than the whole budget for one request: it never will be.
            assert_eq!(r1.try_grow(200), Err(Short::OverBudget));
            assert_eq!(b.try_reserve(200).err(), Some(Short::Busy));
            assert_eq!(
                b.reserve(200, Duration::from_millis(20)).await.err(),
                Some(Short::Busy)
            );
            assert_eq!(
                b.reserve(2000, Duration::from_secs(5)).await.err(),
                Some(Short::OverBudget)
            );
            // A waiter gets what is freed.
            let b2 = b.clone();
            let waiter = tokio::spawn(async move { b2.reserve(500, Duration::from_secs(5)).await });
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(r1);
            let (r2, waited) = waiter.await.unwrap().unwrap();
            assert!(waited);
            assert_eq!(r2.bytes(), 500);
            assert_eq!(b.peak(), 900);
            drop(r2);
            assert_eq!(b.in_use(), 0);
        });
    }

    #[test]
    fn inflating_holds_its_capacity_and_stops_at_the_cap_or_the_budget() {
        let data = vec![7u8; 3 << 20];
        let body = gz(&data);
        let b = Budget::new(64 << 20);
        let mut r = b.try_reserve(1024).unwrap();
        let out = gunzip_budgeted(&body, 5, 8 << 20, &mut r).unwrap();
        assert_eq!(out.len(), 5 + data.len());
        assert!(out[5..].iter().all(|&x| x == 7));
        assert!(
            r.bytes() >= out.capacity(),
            "{} < {}",
            r.bytes(),
            out.capacity()
        );
        drop(r);
        assert_eq!(b.in_use(), 0);

        let mut r = b.try_reserve(1024).unwrap();
        assert_eq!(
            gunzip_budgeted(&body, 0, 1 << 20, &mut r),
            Err(InflateError::TooLarge(1 << 20))
        );
        assert!(r.bytes() <= (1 << 20) + 1);

        let small = Budget::new(2 << 20);
        let mut r = small.try_reserve(1024).unwrap();
        assert_eq!(
            gunzip_budgeted(&body, 0, 8 << 20, &mut r),
            Err(InflateError::Budget(Short::OverBudget))
        );
        let shared = Budget::new(16 << 20);
        let _other = shared.try_reserve(14 << 20).unwrap();
        let mut r = shared.try_reserve(1024).unwrap();
        assert_eq!(
            gunzip_budgeted(&body, 0, 8 << 20, &mut r),
            Err(InflateError::Budget(Short::Busy))
        );
        let mut r = b.try_reserve(10).unwrap();
        assert!(matches!(
            gunzip_budgeted(b"not gzip", 0, 100, &mut r),
            Err(InflateError::Bad(_))
        ));
    }

    #[test]
    fn caps_fit_the_open_file_limit() {
        let o = Options::default();
        assert_eq!(
            Caps::fit(&o, 2, 1 << 20),
            Caps {
                per_listener: DEFAULT_MAX_CONNS_PER_LISTENER,
                per_peer: DEFAULT_MAX_CONNS_PER_PEER
            }
        );
        let c = Caps::fit(&o, 2, 1024);
        assert_eq!(c.per_listener, (1024 - FD_RESERVE) / 2);
        assert_eq!(c.per_peer, c.per_listener);
    }

    #[test]
    fn estimates() {
        assert_eq!(inflate_estimate(10, 1 << 30), 64 << 10);
        assert_eq!(inflate_estimate(1 << 20, 1 << 30), 8 << 20);
        assert_eq!(inflate_estimate(1 << 30, 64 << 20), 64 << 20);
    }
}
