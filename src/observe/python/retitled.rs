//! The environment a process has now, and what a process title rewrite hid, read back from
//! its memory. /proc/<pid>/environ is the environment the process started with: what its own
//! code set since (`os.environ[...] = ...` in a gunicorn config file, a distro's defaults) is
//! only in memory, where libc's `environ` points. setproctitle (which
//! gunicorn, Celery and RQ use when it is installed) writes the title over the area that
//! /proc/<pid>/cmdline and /proc/<pid>/environ read, and clears the rest: the kernel's view is
//! then the title and a run of NULs. Before, it copies what it clears:
//! the environment, to the copy that libc's `environ` points to. That variable is the program's
//! own when the program refers to it (a copy relocation: CPython's executable does), else
//! libc's. (The arguments' copies are in setproctitle's own memory, not findable: Python's
//! `sys.argv` gives them, see the Python reader.)

use std::fs::File;

use super::{elf, libpython_in_maps};
use crate::proc::file::read_text;
use crate::proc::mem::{MemError, Memory};
use crate::proc::rootfs;

/// Bounds: variables, bytes per variable, bytes in all.
const MAX_VARS: usize = 4096;
const MAX_VAR: usize = 32 << 10;
const MAX_TOTAL: usize = 1 << 20;
/// Bytes read per string per round (never across a page: the next may not be mapped).
const CHUNK: u64 = 512;

/// Whether /proc/<pid>/environ was cleared: bytes, all of them NUL (an empty environment
/// reads as no bytes at all).
pub fn cleared(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| b == 0)
}

/// Where `pid`'s `environ` variable is (`exe`: its executable, as /proc/<pid>/exe names it; the
/// same in its forks: one lookup per layout).
pub fn environ_at(pid: i32, exe: &str) -> Option<u64> {
    let maps = read_text(format!("/proc/{pid}/maps")).ok()?;
    let mut files = vec![exe.to_string()];
    files.extend(libpython_in_maps(&maps));
    files.extend(libc_in_maps(&maps));
    files.iter().find_map(|path| {
        let base = elf::load_base(&maps, path)?;
        let opened = match path == exe {
            true => File::open(format!("/proc/{pid}/exe")),
            false => rootfs::open(pid, path),
        };
        // glibc and musl both name it `environ` (glibc's `__environ` is the same object).
        opened
            .and_then(|f| elf::symbols(&f, base, &["environ"]))
            .ok()?[0]
    })
}

/// The environment the variable at `at` points to now, as /proc/<pid>/environ gives one
/// (`KEY=VALUE`, each ended by a NUL): what the process's own code set too
/// (`os.environ[...] = ...` in a gunicorn config file, a distro's defaults), which
/// /proc/<pid>/environ, the environment it started with, does not show.
pub fn read_environ(pid: i32, at: u64) -> Result<Vec<u8>, String> {
    vars(&mut Memory::new(pid), at).map_err(|e| e.to_string())
}

/// The C library mapped in `maps` (glibc's `libc.so.6`, musl's `ld-musl-*.so.1`).
fn libc_in_maps(maps: &str) -> Option<String> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
        })
        .map(str::to_string)
}

fn word(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
}

/// The strings of the NULL-ended array that the pointer at `at` points to.
fn vars(m: &mut Memory, at: u64) -> Result<Vec<u8>, MemError> {
    let unreadable = || MemError::Other("environ points to unreadable memory".into());
    let envp = m.read_one(at, 8)?.ok_or_else(unreadable)?;
    let mut next = word(&envp, 0);
    if next == 0 {
        return Err(unreadable());
    }
    // The pointers, 64 at a time, up to the NULL.
    let mut ptrs = Vec::new();
    'array: while ptrs.len() < MAX_VARS {
        let b = m.read_one(next, 64 * 8)?.ok_or_else(unreadable)?;
        for i in 0..64 {
            match word(&b, i) {
                0 => break 'array,
                p => ptrs.push(p),
            }
        }
        next += 64 * 8;
    }
    let mut out = Vec::new();
    for s in strings(m, &ptrs)?.iter().filter(|s| s.contains(&b'=')) {
        out.extend_from_slice(s);
        out.push(0);
    }
    Ok(out)
}

/// The NUL-ended strings at `ptrs`, a chunk per round for all that have not ended yet (one
/// `process_vm_readv` per round); one that cannot be read, or is too long, is empty.
fn strings(m: &mut Memory, ptrs: &[u64]) -> Result<Vec<Vec<u8>>, MemError> {
    let mut strs: Vec<Vec<u8>> = vec![Vec::new(); ptrs.len()];
    let mut open: Vec<usize> = (0..ptrs.len()).collect();
    let mut total = 0usize;
    while !open.is_empty() && total < MAX_TOTAL {
        let ranges: Vec<(u64, usize)> = open
            .iter()
            .map(|&i| {
                let addr = ptrs[i] + strs[i].len() as u64;
                let to_page = 4096 - addr % 4096;
                (addr, CHUNK.min(to_page) as usize)
            })
            .collect();
        let got = m.read(&ranges)?;
        let mut still = Vec::new();
        for (&i, b) in open.iter().zip(got) {
            let Some(b) = b else {
                strs[i].clear();
                continue;
            };
            match b.iter().position(|&c| c == 0) {
                Some(end) => strs[i].extend_from_slice(&b[..end]),
                None if strs[i].len() + b.len() < MAX_VAR => {
                    strs[i].extend_from_slice(&b);
                    still.push(i);
                }
                None => strs[i].clear(),
            }
            total += b.len();
        }
        open = still;
    }
    // Cut off by the total bound: not kept half read.
    for i in open {
        strs[i].clear();
    }
    Ok(strs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_area_is_all_nuls() {
        assert!(cleared(&[0; 1319]));
        assert!(!cleared(b""));
        assert!(!cleared(b"A=1\0"));
    }

    /// A child's environment read from its memory is the one it was given: a C program
    /// (`sleep`: libc's `environ`) and Python (its executable's copy of it). Read once the
    /// program runs (/proc/<pid>/exe is it, libc is mapped), as a server is.
    #[test]
    fn reads_a_childs_environment_from_memory() {
        for argv in [
            &["sleep", "30"][..],
            &["python3", "-c", "import time; time.sleep(30)"],
        ] {
            let mut child = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
                .env("GUNICORN_CMD_ARGS", "--preload --workers 2")
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            // The kernel's view, once the program runs (after exec).
            let mut want = Vec::new();
            for _ in 0..200 {
                want = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                // Past the dynamic linker: libc is mapped.
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"));
                let linked = maps.is_ok_and(|m| libc_in_maps(&m).is_some());
                if exe.to_string_lossy().contains(argv[0]) && !want.is_empty() && linked {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            // libc sets `environ` just after it is mapped: a read in between finds it NULL.
            let environ = || {
                let at = environ_at(pid, &exe.display().to_string()).ok_or("no environ")?;
                read_environ(pid, at)
            };
            let mut got = environ();
            for _ in 0..50 {
                if got.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                got = environ();
            }
            let _ = child.kill();
            let _ = child.wait();
            let got = got.unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            // Python may add to its own (LC_CTYPE, PEP 538): all it was given is there.
            let vars = |b: &[u8]| -> std::collections::BTreeSet<Vec<u8>> {
                b.split(|&c| c == 0)
                    .filter(|v| !v.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect()
            };
            assert_eq!(vars(&want).len(), 3, "{argv:?}");
            assert!(
                vars(&got).is_superset(&vars(&want)),
                "{argv:?}: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }

    #[test]
    fn libc_is_found_in_maps() {
        let maps = "7f00-7f10 r--p 00000000 fd:01 5 /usr/lib/x86_64-linux-gnu/libc.so.6\n";
        assert_eq!(
            libc_in_maps(maps).as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        let musl = "7f00-7f10 r--p 00000000 fd:01 5 /lib/ld-musl-x86_64.so.1\n";
        assert_eq!(
            libc_in_maps(musl).as_deref(),
            Some("/lib/ld-musl-x86_64.so.1")
        );
    }
}
