//! Files of another process read as that process sees them: its root directory, its mount
//! namespace, its working directory. Never the reader's own filesystem.
//!
//! A containerised target names files that the host does not have (a venv bind-mounted at
//! `/app/.venv`, a config `gunicorn.conf.py` in its own working directory), or that the host has
//! with other contents. /proc/<pid>/root opens the target's root whatever the reader's mount
//! namespace, but a plain path walk below it resolves absolute symlinks (`/app -> /srv/app`)
//! against the reader's root, so files are opened with `openat2(RESOLVE_IN_ROOT)` relative to
//! that root: `..` and absolute symlinks stay inside the target's view. On kernels before 5.6
//! (or where a seccomp profile refuses openat2) the plain `/proc/<pid>/root/<path>` walk is the
//! fallback.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};

use super::file::{read_link, ReadError, ReadResult};

/// Config files and listings are small; a larger file is read up to this much.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Identity of the filesystem view of `pid`: its mount namespace and root directory, as
/// `mnt:[inode] dev:ino`. Two containers can both call a directory `/app`, and a chroot shares
/// the mount namespace, so a key made of paths (or of `readlink /proc/<pid>/root`, which is `/`
/// for most containers) cannot tell them apart. Empty when unreadable.
pub fn root_id(pid: i32) -> String {
    let mnt = read_link(format!("/proc/{pid}/ns/mnt")).unwrap_or_default();
    match std::fs::metadata(format!("/proc/{pid}/root")) {
        Ok(m) => format!("{mnt} {}:{}", m.dev(), m.ino()),
        Err(_) => mnt,
    }
}

/// The working directory of `pid` as an absolute path in its own view.
///
/// `readlink /proc/<pid>/cwd` gives the path from the reader's root when the target's root is
/// below it (a chroot: `/srv/rootfs/app`), and from the target's own root otherwise (a container
/// in its own mount namespace: `/app`); taking away `readlink /proc/<pid>/root` covers both.
pub fn target_cwd(pid: i32) -> ReadResult<String> {
    let cwd = read_link(format!("/proc/{pid}/cwd"))?;
    let root = read_link(format!("/proc/{pid}/root"))?;
    in_root(&cwd, &root).ok_or_else(|| {
        ReadError::Other(format!(
            "working directory {cwd} of pid {pid} is outside its root {root}"
        ))
    })
}

fn in_root(cwd: &str, root: &str) -> Option<String> {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return Some(cwd.to_string());
    }
    match cwd.strip_prefix(root) {
        Some("") => Some("/".to_string()),
        Some(rest) if rest.starts_with('/') => Some(rest.to_string()),
        _ => None,
    }
}

/// `path` as `pid` would open it: absolute paths as they are, relative ones against its working
/// directory ([`target_cwd`]).
pub fn target_path(pid: i32, path: &str) -> ReadResult<String> {
    if path.starts_with('/') {
        return Ok(path.to_string());
    }
    let cwd = target_cwd(pid)?;
    let rel = path.strip_prefix("./").unwrap_or(path);
    Ok(format!("{}/{rel}", cwd.trim_end_matches('/')))
}

/// Opens the file `path` (absolute, in the target's view) as `pid` sees it.
pub fn open(pid: i32, path: &str) -> io::Result<File> {
    open_in_root(pid, path, false)
}

/// Opens `path` (absolute, in the target's view) below the root of `pid`.
fn open_in_root(pid: i32, path: &str, directory: bool) -> io::Result<File> {
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/root"))?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c_rel = std::ffi::CString::new(rel)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: open_how is plain data (zero is its documented default); the syscall reads
    // `how` and the NUL-terminated path for the duration of the call only.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    let dir_flag = if directory { libc::O_DIRECTORY } else { 0 };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | dir_flag) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a new descriptor that nothing else owns.
        return Ok(unsafe { File::from_raw_fd(fd as i32) });
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // No openat2 (kernel < 5.6), or a seccomp filter refuses it: the plain walk.
        Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::E2BIG) => {
            let plain = format!("/proc/{pid}/root/{rel}");
            if directory {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(plain)
            } else {
                File::open(plain)
            }
        }
        _ => Err(e),
    }
}

/// The text of `path` (absolute, in the target's view) as `pid` sees it.
pub fn read_text(pid: i32, path: &str) -> ReadResult<String> {
    let f = open_in_root(pid, path, false).map_err(|e| ReadError::from_io(&e))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::from_io(&e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The entry names of directory `path` (absolute, in the target's view) as `pid` sees it.
pub fn list_dir(pid: i32, path: &str) -> ReadResult<Vec<String>> {
    let dir = open_in_root(pid, path, true).map_err(|e| ReadError::from_io(&e))?;
    // Listing through our descriptor reads the directory that was opened in the target's view.
    let rd = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| ReadError::from_io(&e))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_in_the_targets_view() {
        assert_eq!(in_root("/app", "/").as_deref(), Some("/app"));
        assert_eq!(
            in_root("/srv/rootfs/app", "/srv/rootfs").as_deref(),
            Some("/app")
        );
        assert_eq!(in_root("/srv/rootfs", "/srv/rootfs/").as_deref(), Some("/"));
        assert_eq!(in_root("/srv/rootfsx/app", "/srv/rootfs"), None);
        assert_eq!(in_root("/elsewhere", "/srv/rootfs"), None);
    }

    #[test]
    fn own_files_through_own_root() {
        let me = std::process::id() as i32;
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let text = read_text(me, manifest).unwrap();
        assert!(text.contains("[package]"));
        let names = list_dir(me, env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(names.iter().any(|n| n == "Cargo.toml"), "{names:?}");
        assert_eq!(read_text(me, "/no/such/file"), Err(ReadError::Gone));
        // Relative paths are the target's cwd's (the test harness runs in the crate root).
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            target_path(me, "./x.conf.py").unwrap(),
            format!("{}/x.conf.py", cwd.display())
        );
        assert!(!root_id(me).is_empty());
    }

    /// A child chrooted into a directory standing in for a container's filesystem.
    struct Chrooted(i32);

    impl Drop for Chrooted {
        fn drop(&mut self) {
            // SAFETY: our own child; killed and reaped here.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }

    fn chrooted(root: &std::path::Path, cwd: &str) -> Chrooted {
        let root = std::ffi::CString::new(root.to_str().unwrap()).unwrap();
        let cwd = std::ffi::CString::new(cwd).unwrap();
        // SAFETY: the child makes only async-signal-safe system calls, then waits to be killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            unsafe {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        let me = std::process::id() as i32;
        let root_link = format!("/proc/{pid}/root");
        let cwd_link = format!("/proc/{pid}/cwd");
        let want_cwd = cwd.to_str().unwrap().to_string();
        // Wait until the chroot and the chdir after it happened (its root differs from ours,
        // and its cwd, seen from here, ends in the directory asked for).
        for _ in 0..1000 {
            let rooted =
                read_link(&root_link).is_ok_and(|r| r != "/") || root_id(pid) != root_id(me);
            if rooted && read_link(&cwd_link).is_ok_and(|c| c.ends_with(&want_cwd)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Chrooted(pid)
    }

    #[test]
    fn files_resolve_in_the_targets_root_and_cwd() {
        if unsafe { libc::geteuid() } != 0 {
            // Uncaptured, so that the skip shows in `cargo test` output.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED files_resolve_in_the_targets_root_and_cwd: chroot needs root"
            );
            return;
        }
        // The target's filesystem: /etc/app.conf (an absolute symlink to /srv/app.conf), and a
        // working directory /work holding a relative config.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["etc", "srv", "work"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        std::fs::write(root.join("srv/app.conf"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/srv/app.conf", root.join("etc/app.conf")).unwrap();
        std::fs::write(root.join("work/gunicorn.conf.py"), "preload_app = True\n").unwrap();
        let child = chrooted(root, "/work");
        let pid = child.0;

        assert_eq!(target_cwd(pid).unwrap(), "/work");
        assert_eq!(
            target_path(pid, "gunicorn.conf.py").unwrap(),
            "/work/gunicorn.conf.py"
        );
        assert_eq!(
            read_text(pid, "/work/gunicorn.conf.py").unwrap(),
            "preload_app = True\n"
        );
        // The absolute link leads to the target's /srv/app.conf, not to the reader's /srv.
        assert_eq!(read_text(pid, "/etc/app.conf").unwrap(), "inside\n");
        // `..` stays in the target's root.
        assert_eq!(
            read_text(pid, "/work/../../../srv/app.conf").unwrap(),
            "inside\n"
        );
        let mut names = list_dir(pid, "/").unwrap();
        names.sort();
        assert_eq!(names, vec!["etc", "srv", "work"]);
        assert_ne!(root_id(pid), root_id(std::process::id() as i32));
    }
}
