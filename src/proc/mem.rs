//! Reads another process's memory with `process_vm_readv`: many ranges in one call, never a
//! stop (no ptrace), never a write. Each call is counted ([`calls`]) so benchmarks can print
//! how many a check needed.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kernel's limit on iovecs per call (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// Refused: a read this large is a misparse, not an object.
pub const MAX_RANGE: usize = 1 << 20;

static CALLS: AtomicU64 = AtomicU64::new(0);

/// `process_vm_readv` calls made by this process so far (all [`Memory`] readers).
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// Why nothing could be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemError {
    /// EPERM: another user's process without CAP_SYS_PTRACE, or Yama ptrace_scope.
    Denied,
    /// ESRCH: the process is gone.
    Gone,
    Other(String),
}

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemError::Denied => write!(
                f,
                "reading its memory was not permitted (process_vm_readv: EPERM)"
            ),
            MemError::Gone => write!(f, "the process exited while its memory was read"),
            MemError::Other(e) => write!(f, "process_vm_readv: {e}"),
        }
    }
}

/// One process's memory.
pub struct Memory {
    pid: i32,
    /// Calls made through this reader.
    pub calls: u32,
}

impl Memory {
    pub fn new(pid: i32) -> Memory {
        Memory { pid, calls: 0 }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Reads every `(address, length)` range, as few calls as the kernel allows: one per 1024
    /// ranges, plus one more after each range that could not be read (the kernel stops at the
    /// first range it cannot read; that one is `None`, the rest are tried again).
    pub fn read(&mut self, ranges: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, MemError> {
        let mut out: Vec<Option<Vec<u8>>> = ranges
            .iter()
            .map(|&(_, len)| (len <= MAX_RANGE).then(|| vec![0u8; len]))
            .collect();
        let mut done = vec![false; ranges.len()];
        let mut start = 0;
        while start < ranges.len() {
            let idx: Vec<usize> = (start..ranges.len())
                .filter(|&i| out[i].is_some() && ranges[i].1 > 0)
                .take(MAX_IOVECS)
                .collect();
            let Some(&last) = idx.last() else {
                break;
            };
            let mut local = Vec::with_capacity(idx.len());
            let mut remote = Vec::with_capacity(idx.len());
            for &i in &idx {
                let buf = out[i].as_mut().expect("filtered on is_some");
                local.push(libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                });
                remote.push(libc::iovec {
                    iov_base: ranges[i].0 as usize as *mut libc::c_void,
                    iov_len: ranges[i].1,
                });
            }
            self.calls += 1;
            CALLS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: every local iovec points into a live Vec of exactly iov_len bytes, owned
            // by `out` and not touched until the call returns; remote iovecs are only read by
            // the kernel in the target's address space.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            let mut got = if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EPERM) => return Err(MemError::Denied),
                    Some(libc::ESRCH) => return Err(MemError::Gone),
                    Some(libc::EFAULT) | Some(libc::EIO) => 0,
                    _ => return Err(MemError::Other(err.to_string())),
                }
            } else {
                n as usize
            };
            // Ranges wholly read; the kernel never splits one on success, and stops at the
            // first it cannot read.
            let mut next = last + 1;
            for &i in &idx {
                if got >= ranges[i].1 {
                    got -= ranges[i].1;
                    done[i] = true;
                } else {
                    next = i + 1;
                    break;
                }
            }
            start = next;
        }
        for (i, slot) in out.iter_mut().enumerate() {
            if !done[i] && ranges[i].1 > 0 {
                *slot = None;
            }
        }
        Ok(out)
    }

    /// One range; `None` when it cannot be read.
    pub fn read_one(&mut self, addr: u64, len: usize) -> Result<Option<Vec<u8>>, MemError> {
        Ok(self.read(&[(addr, len)])?.pop().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_in_one_call_and_skips_what_is_unmapped() {
        let a: [u8; 5] = [1, 2, 3, 4, 5];
        let b = vec![9u8; 3000];
        let mut m = Memory::new(std::process::id() as i32);
        let got = m
            .read(&[
                (a.as_ptr() as u64, 5),
                (8, 16), // page zero: never mapped
                (b.as_ptr() as u64 + 10, 100),
                (a.as_ptr() as u64 + 1, 0),
                (a.as_ptr() as u64, MAX_RANGE + 1),
            ])
            .unwrap();
        assert_eq!(got[0].as_deref(), Some(&a[..]));
        assert_eq!(got[1], None);
        assert_eq!(got[2].as_deref(), Some(&b[10..110]));
        assert_eq!(got[3].as_deref(), Some(&[][..]));
        assert_eq!(got[4], None);
        // One call up to the bad range, one for the rest.
        assert_eq!(m.calls, 2);
        let many: Vec<(u64, usize)> = (0..2500).map(|i| (b.as_ptr() as u64 + i, 1)).collect();
        let mut m = Memory::new(std::process::id() as i32);
        let got = m.read(&many).unwrap();
        assert!(got.iter().all(|g| g.as_deref() == Some(&[9u8][..])));
        assert_eq!(m.calls, 3, "1024 ranges per call");
    }

    #[test]
    fn gone_process() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(Memory::new(pid).read_one(4096, 8), Err(MemError::Gone));
    }
}
