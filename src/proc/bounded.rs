//! Reading a file a user named (a saved snapshot, a ledger) without trusting what it is:
//! only a regular file, only up to a size. `/dev/zero` would otherwise grow memory without
//! limit, a fifo with no writer would block forever in open(2), a directory or a socket would
//! fail in confusing ways.
//!
//! The file is opened with O_NONBLOCK (so opening a fifo does not wait for a writer), then what
//! was opened is checked with fstat (not the path, which could change in between), and at most
//! `cap + 1` bytes are read.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest snapshot `check --snapshot` reads. A snapshot of 200 workers with 2,000 threads is a
/// few MiB; this leaves a wide margin and still bounds memory.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 20;

/// The text of the regular file at `path`, at most `cap` bytes. Err (a sentence naming the
/// path) for anything else: not found, not a regular file (fifo, device, directory, socket),
/// larger than `cap`, not UTF-8.
pub fn read_regular_file_capped(path: &Path, cap: u64) -> Result<String, String> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a fifo"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("{shown} is {what}, not a regular file"));
    }
    if meta.len() > cap {
        return Err(too_large(path, cap));
    }
    clear_nonblock(&file);
    // The size may change while it is read: read at most one byte more than allowed.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&file)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(too_large(path, cap));
    }
    String::from_utf8(bytes).map_err(|e| format!("{shown} is not UTF-8 text: {e}"))
}

fn too_large(path: &Path, cap: u64) -> String {
    format!(
        "{} is larger than the {} limit",
        path.display(),
        human_bytes(cap)
    )
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n}-byte")
    }
}

/// Regular files ignore O_NONBLOCK; cleared anyway so reads behave as usual.
fn clear_nonblock(file: &File) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_regular_file_within_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, "{\"schema\":1}").unwrap();
        assert_eq!(read_regular_file_capped(&p, 100).unwrap(), "{\"schema\":1}");
        assert_eq!(read_regular_file_capped(&p, 12).unwrap().len(), 12);
        let e = read_regular_file_capped(&p, 11).unwrap_err();
        assert!(e.contains("larger than the 11-byte limit"), "{e}");
        // Through a symlink: what it points to counts.
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(read_regular_file_capped(&l, 100).is_ok());
    }

    #[test]
    fn devices_directories_and_missing_files_are_refused() {
        let e = read_regular_file_capped(Path::new("/dev/zero"), MAX_SNAPSHOT_BYTES).unwrap_err();
        assert!(e.contains("character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular_file_capped(dir.path(), 100).unwrap_err();
        assert!(e.contains("a directory"), "{e}");
        let e = read_regular_file_capped(&dir.path().join("nope"), 100).unwrap_err();
        assert!(e.starts_with("cannot read"), "{e}");
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        let e = read_regular_file_capped(&bin, 100).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn a_fifo_without_a_writer_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        let e = read_regular_file_capped(&p, 100).unwrap_err();
        assert!(e.contains("a fifo"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1000), "1000-byte");
    }
}
