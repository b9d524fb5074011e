//! Standard output that a reader going away cannot crash: `check --format json | true`,
//! `receive --format ndjson | head -1` and `run --format json | true` end quietly, with the
//! exit status their findings give, after stopping whatever they started.
//!
//! Two pieces:
//! - [`print`]: writes to stdout and says whether that worked, never panicking. What printing
//!   code should call (`println!` panics on EPIPE, since Rust ignores SIGPIPE).
//! - [`Relay`], installed by `main` when stdout is a pipe or a socket: fd 1 becomes a pipe of
//!   our own, and a thread copies it to the real stdout. When the reader has gone, the thread
//!   keeps draining and drops what it reads, so every write to fd 1 (`println!` included)
//!   succeeds and nothing panics, whatever code prints; the exit status stays the one the
//!   command computed. When the reader goes away while a receiver is serving
//!   ([`StopOnClose`], held by the receiver), the process gets SIGTERM, which
//!   `receive` answers by finishing as on a timeout (so `receive --format ndjson | head -1`
//!   ends when `head` does). `main` calls [`Relay::finish`] before it exits, so everything
//!   written reaches a reader that is still there.
//!
//! Not relayed: a terminal (no EPIPE there, and `is_terminal` must stay true for colors and
//! the live table) and regular files.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A write to stdout found its reader gone (here or in the relay).
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Live [`StopOnClose`] guards.
static STOP_ON_CLOSE: AtomicUsize = AtomicUsize::new(0);

/// Writes `text` to stdout (locked, flushed). False when it could not be written (the reader
/// has gone, or any other error); never panics.
pub fn print(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    let ok = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    match ok {
        Ok(()) => true,
        Err(_) => {
            reader_gone();
            false
        }
    }
}

/// [`print`] with a newline.
pub fn println(text: &str) -> bool {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    print(&s)
}

/// True once a write to stdout found the reader gone.
pub fn closed() -> bool {
    CLOSED.load(Ordering::SeqCst)
}

fn reader_gone() {
    if !CLOSED.swap(true, Ordering::SeqCst) && STOP_ON_CLOSE.load(Ordering::SeqCst) > 0 {
        // SAFETY: raise(3) only sends a signal to this process.
        unsafe {
            libc::raise(libc::SIGTERM);
        }
    }
}

/// While held, stdout's reader going away sends this process SIGTERM (a receiver that prints
/// as it goes then finishes as on a timeout). Held by the receiver.
pub struct StopOnClose(());

impl StopOnClose {
    pub fn new() -> StopOnClose {
        STOP_ON_CLOSE.fetch_add(1, Ordering::SeqCst);
        StopOnClose(())
    }
}

impl Default for StopOnClose {
    fn default() -> Self {
        StopOnClose::new()
    }
}

impl Drop for StopOnClose {
    fn drop(&mut self) {
        STOP_ON_CLOSE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The thread between fd 1 (a pipe of ours) and the real stdout.
pub struct Relay {
    thread: std::thread::JoinHandle<()>,
    progress: Arc<Progress>,
}

/// What the relay thread has done, for [`Relay::finish`].
#[derive(Default)]
struct Progress {
    /// Bytes passed on (or dropped once the reader had gone).
    bytes: AtomicU64,
    /// True while it writes (a slow reader keeps it there: not idle).
    writing: AtomicBool,
}

/// How long [`Relay::finish`] waits without the relay moving a byte once our copy of fd 1 is
/// closed, when no end of file comes (a child inherited fd 1 and outlives us): everything we
/// wrote has been passed on by then. The usual end is the end of file, at once.
const FINISH_IDLE: Duration = Duration::from_secs(2);

impl Relay {
    /// Puts the relay between fd 1 and the real stdout when stdout is a pipe or a socket.
    /// None otherwise, or when it cannot (then stdout is left as it is).
    pub fn install() -> Option<Relay> {
        // SAFETY: fstat on fd 1 into a struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(1, &mut st) } != 0 {
            return None;
        }
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return None;
        }
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two fds; F_DUPFD_CLOEXEC duplicates fd 1; dup2 replaces fd 1
        // by the pipe's write end. Every fd is owned below.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return None;
            }
            let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
            let real = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
            if real < 0 {
                return None;
            }
            let real = OwnedFd::from_raw_fd(real);
            let _ = std::io::stdout().lock().flush();
            if libc::dup2(w.as_raw_fd(), 1) < 0 {
                return None;
            }
            drop(w);
            let progress = Arc::new(Progress::default());
            let p = progress.clone();
            let thread = std::thread::Builder::new()
                .name("stdout-relay".into())
                .spawn(move || relay(std::fs::File::from(r), std::fs::File::from(real), &p))
                .ok()?;
            Some(Relay { thread, progress })
        }
    }

    /// Flushes stdout, closes fd 1 and waits until what was written has been passed on (or
    /// dropped, when the reader has gone).
    pub fn finish(self) {
        let _ = std::io::stdout().lock().flush();
        // SAFETY: /dev/null replaces fd 1, closing our copy of the pipe's write end; later
        // writes to stdout go nowhere.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::close(null);
            } else {
                libc::close(1);
            }
        }
        let mut last = self.progress.bytes.load(Ordering::SeqCst);
        let mut moved = Instant::now();
        loop {
            if self.thread.is_finished() {
                let _ = self.thread.join();
                return;
            }
            let now = self.progress.bytes.load(Ordering::SeqCst);
            if now != last || self.progress.writing.load(Ordering::SeqCst) {
                last = now;
                moved = Instant::now();
            } else if moved.elapsed() >= FINISH_IDLE {
                // Another process holds fd 1 open; what we wrote is through.
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn relay(mut from: std::fs::File, mut to: std::fs::File, progress: &Progress) {
    let mut buf = vec![0u8; 64 << 10];
    let mut gone = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        progress.writing.store(true, Ordering::SeqCst);
        if !gone && to.write_all(&buf[..n]).is_err() {
            gone = true;
            reader_gone();
        }
        progress.bytes.fetch_add(n as u64, Ordering::SeqCst);
        progress.writing.store(false, Ordering::SeqCst);
    }
}

/// Installs a panic hook that stays quiet about a closed stdout or stderr (the reader went
/// away; nothing to report to anyone), and otherwise says what it says.
pub fn quiet_broken_pipe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_broken_pipe(info.payload()) {
            return;
        }
        default(info);
    }));
}

/// Whether a panic payload is a failed print to a closed stdout or stderr.
pub fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    msg.contains("Broken pipe") || msg.contains("os error 32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_payloads_are_told_apart() {
        let p: Box<dyn std::any::Any + Send> =
            Box::new("failed printing to stdout: Broken pipe (os error 32)".to_string());
        assert!(is_broken_pipe(p.as_ref()));
        let p: Box<dyn std::any::Any + Send> = Box::new("index out of bounds");
        assert!(!is_broken_pipe(p.as_ref()));
    }
}
