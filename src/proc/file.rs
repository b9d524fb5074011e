//! Reading /proc files with the one distinction observe cares about: did the process go away
//! (drop it quietly), were we refused (say so, maybe exit 2), or something else.
//!
//! Everything here is a plain read; nothing opens a process for writing or ptrace-attaches.

use std::io;
use std::path::Path;

/// Why a /proc read failed, in the terms observe acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// ENOENT / ESRCH: the process or thread exited while we were looking. Drop it quietly.
    Gone,
    /// EACCES / EPERM: another user's process without CAP_SYS_PTRACE.
    Denied,
    /// Anything else (kept as text for a note).
    Other(String),
}

impl ReadError {
    pub fn from_io(e: &io::Error) -> ReadError {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => ReadError::Gone,
            Some(libc::EACCES) | Some(libc::EPERM) => ReadError::Denied,
            _ => match e.kind() {
                io::ErrorKind::NotFound => ReadError::Gone,
                io::ErrorKind::PermissionDenied => ReadError::Denied,
                _ => ReadError::Other(e.to_string()),
            },
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Gone => f.write_str("process exited"),
            ReadError::Denied => f.write_str("permission denied"),
            ReadError::Other(s) => f.write_str(s),
        }
    }
}

pub type ReadResult<T> = Result<T, ReadError>;

/// The whole file as bytes.
///
/// Proc files report size 0, and `std::fs::read` then reads with small, growing buffers. Each
/// read(2) of a seq_file restarts the kernel's iteration (for net/tcp that walks the whole
/// established hash each time), so this reads into one large buffer instead: usually one call
/// with data and one that returns 0.
pub fn read_bytes(path: impl AsRef<Path>) -> ReadResult<Vec<u8>> {
    read_bytes_sized(path, 8 * 1024)
}

/// [`read_bytes`] with an initial buffer size for files known to be large (socket tables).
pub fn read_bytes_sized(path: impl AsRef<Path>, initial: usize) -> ReadResult<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ReadError::from_io(&e))?;
    let mut buf = vec![0u8; initial.max(64)];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::from_io(&e)),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Like [`read_text`] with an initial buffer size.
pub fn read_text_sized(path: impl AsRef<Path>, initial: usize) -> ReadResult<String> {
    read_bytes_sized(path, initial).map(lossy)
}

fn lossy(b: Vec<u8>) -> String {
    match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The whole file as text, lossily decoded (comm and cmdline may hold any bytes).
pub fn read_text(path: impl AsRef<Path>) -> ReadResult<String> {
    read_bytes(path).map(lossy)
}

/// Target of a symlink such as /proc/<pid>/exe or /proc/<pid>/fd/3, as text.
pub fn read_link(path: impl AsRef<Path>) -> ReadResult<String> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| ReadError::from_io(&e))
}

/// Numeric entries of a directory (pids in /proc, tids in task/, fds in fd/), unsorted.
pub fn numeric_entries(dir: impl AsRef<Path>) -> ReadResult<Vec<i32>> {
    let rd = std::fs::read_dir(dir).map_err(|e| ReadError::from_io(&e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| ReadError::from_io(&e))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        {
            out.push(n);
        }
    }
    Ok(out)
}

/// Converts kernel start times (clock ticks since boot) to Unix milliseconds.
///
/// Boot time is taken as `CLOCK_REALTIME - CLOCK_BOOTTIME` rather than `btime` from /proc/stat,
/// because btime is whole seconds and the rules compare thread starts with process starts at
/// sub-second precision ("exporter thread started +0.0x s after the worker").
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_ms: f64,
    ticks_per_sec: f64,
}

impl Clock {
    pub fn new() -> Clock {
        let real = clock_ms(libc::CLOCK_REALTIME);
        let boot = clock_ms(libc::CLOCK_BOOTTIME);
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Clock {
            boot_ms: real - boot,
            ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// A duration in clock ticks (CPU time), milliseconds.
    pub fn ticks_as_ms(&self, ticks: u64) -> u64 {
        (ticks as f64 * 1000.0 / self.ticks_per_sec).round() as u64
    }

    pub fn ticks_to_unix_ms(&self, ticks: u64) -> u64 {
        let ms = self.boot_ms + ticks as f64 * 1000.0 / self.ticks_per_sec;
        if ms > 0.0 {
            ms.round() as u64
        } else {
            0
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

fn clock_ms(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// Wall clock now, Unix milliseconds.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// NUL-separated `KEY=VALUE` pairs of /proc/<pid>/environ, in order.
pub fn parse_environ(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// NUL-separated arguments of /proc/<pid>/cmdline. A process that rewrote its title into one
/// string with spaces (setproctitle) comes back as one argument; callers look at words too.
/// setproctitle clears the rest of the old arguments' area with NULs, which would read as
/// empty arguments after the title: trailing NULs are dropped (and with them any empty last
/// arguments a command really had, which say nothing here).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_initial_buffer() {
        // A file that does not change under us (maps does, as other test threads allocate).
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let big = read_bytes_sized(path, 64).unwrap();
        assert!(big.len() > 64);
        assert_eq!(big, std::fs::read(path).unwrap());
    }

    #[test]
    fn missing_file_is_gone() {
        assert_eq!(
            read_bytes("/proc/999999999/stat").unwrap_err(),
            ReadError::Gone
        );
    }

    #[test]
    fn own_start_time_is_recent() {
        let clock = Clock::new();
        let stat = read_text("/proc/self/stat").unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let start: u64 = after.split_whitespace().nth(19).unwrap().parse().unwrap();
        let ms = clock.ticks_to_unix_ms(start);
        let now = now_unix_ms();
        assert!(ms <= now + 20 && now - ms < 3_600_000, "{ms} vs {now}");
    }
}
