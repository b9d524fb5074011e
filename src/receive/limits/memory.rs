//! Memory and file limits: the fd limit raised to its hard maximum, large bodies kept out of
//! long-lived heap arenas, and one budget for the bytes of every body in flight.

use super::*;

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

    /// Holds at least `n` bytes in all, for a buffer this reservation did not allocate (a body
    /// frame kept as it arrived); growth does not wait.
    pub fn cover(&mut self, n: usize) -> Result<(), Short> {
        self.try_grow(n.saturating_sub(self.bytes))
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
