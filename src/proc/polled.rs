//! Which fds a blocked thread waits on, without stopping it: `accept`/`accept4` name the fd in
//! their first argument; `poll`/`ppoll` name an array of `struct pollfd` (8 bytes each: fd,
//! events, revents), read from the target's memory with `process_vm_readv` (the read py-spy
//! does; no ptrace stop). A thread of Python's `socketserver.serve_forever` (what
//! prometheus_client's `start_http_server` runs) sits in `poll(fds, 1, 500)` on its listener.

use super::file::{numeric_entries, read_text};
use super::task::{parse_syscall, Syscall};

/// At most this many pollfd entries are read (a server thread polls a handful).
const MAX_FDS: u64 = 64;

/// The fds `sc` (a thread's current system call in process `pid`) waits on; None when it is
/// not such a call, or the memory could not be read (no permission, the thread moved on).
pub fn waited_fds(pid: i32, sc: &Syscall) -> Option<Vec<i32>> {
    match sc.name.as_str() {
        "accept" | "accept4" => Some(vec![i32::try_from(*sc.args.first()?).ok()?]),
        "poll" | "ppoll" => {
            let (addr, n) = (*sc.args.first()?, *sc.args.get(1)?);
            if addr == 0 || n == 0 || n > MAX_FDS {
                return None;
            }
            let bytes = read_memory(pid, addr, (n * 8) as usize)?;
            Some(pollfds(&bytes))
        }
        _ => None,
    }
}

/// Every thread of `pid` blocked waiting on fds now, with those fds: (tid, fds).
pub fn waiting_threads(pid: i32) -> Vec<(i32, Vec<i32>)> {
    let Ok(tids) = numeric_entries(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tids.into_iter()
        .filter_map(|tid| {
            let text = read_text(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
            Some((tid, waited_fds(pid, &parse_syscall(&text)?)?))
        })
        .collect()
}

/// Fds of `pid` that a thread other than its main thread waits on: a server run from a
/// background thread (an exporter's, an admin endpoint's), not the process's own work.
pub fn fds_answered_by_side_threads(pid: i32) -> Vec<i32> {
    waiting_threads(pid)
        .into_iter()
        .filter(|(tid, _)| *tid != pid)
        .flat_map(|(_, fds)| fds)
        .collect()
}

/// The fd of each `struct pollfd` (negative fds are ignored by poll, and here).
fn pollfds(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(8)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .filter(|fd| *fd >= 0)
        .collect()
}

/// `len` bytes at `addr` in `pid`, read in one call; None unless all of them were read.
fn read_memory(pid: i32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` covers `buf`, owned and `len` bytes long; the remote range is only read
    // by the kernel, which checks it against the target's mappings.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    (n == len as isize).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn pollfd_array_layout() {
        let mut b = Vec::new();
        for (fd, ev) in [(3i32, 1i16), (-1, 1), (17, 5)] {
            b.extend_from_slice(&fd.to_ne_bytes());
            b.extend_from_slice(&ev.to_ne_bytes());
            b.extend_from_slice(&0i16.to_ne_bytes());
        }
        assert_eq!(pollfds(&b), vec![3, 17]);
    }

    #[test]
    fn accept_names_its_fd_and_other_calls_nothing() {
        let sc = |name: &str, args: Vec<u64>| Syscall {
            nr: 43,
            name: name.into(),
            args,
        };
        assert_eq!(waited_fds(1, &sc("accept", vec![5, 0, 0])), Some(vec![5]));
        assert_eq!(waited_fds(1, &sc("futex", vec![5, 0, 0])), None);
        assert_eq!(waited_fds(1, &sc("poll", vec![0, 1, 500])), None);
    }

    /// A thread of this process blocked in poll(2) on a listening socket: its fd read back
    /// from memory through /proc/self/task/<tid>/syscall, as observe does for a target.
    #[test]
    fn a_polling_thread_of_this_process_names_its_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no arguments and no side effects.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let mut p = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: poll on one valid pollfd we own, for at most 3 s.
            unsafe { libc::poll(p.as_mut_ptr(), 1, 3000) };
        });
        let tid = rx.recv().unwrap();
        let pid = std::process::id() as i32;
        let mut got = None;
        for _ in 0..100 {
            let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"));
            if let Some(sc) = text
                .ok()
                .and_then(|t| super::super::task::parse_syscall(&t))
            {
                if let Some(fds) = waited_fds(pid, &sc) {
                    got = Some(fds);
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, Some(vec![fd]));
        // Wake it: a connection makes the listener readable.
        let _c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        h.join().unwrap();
    }
}
