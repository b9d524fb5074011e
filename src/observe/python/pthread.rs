//! OS thread ids of Python threads before 3.11, whose thread states record none.
//!
//! A Python thread's ident (`threading.get_ident()`, the thread state's `thread_id`) is
//! `pthread_self()`: the address of the C library's `struct pthread`, which holds the kernel
//! tid as the thread sees it (its own pid namespace, like `native_thread_id` on 3.11+). The
//! field's offset is fixed per C library build; it is found once per layout on a live process:
//! the offset at which one Python thread reads the process's own pid (the main thread's tid)
//! and every other reads one of its tids, or 0 (glibc zeroes the tid of every thread a fork
//! did not copy: the parent's threads whose states a C-level fork left behind).

use std::collections::HashSet;

/// Bytes of `struct pthread` searched when calibrating.
pub const WINDOW: usize = 2048;
/// glibc's `tid` offsets (x86_64 0x2d0, aarch64 0xd0), preferred when several fit.
const GLIBC: [usize; 2] = [0x2d0, 0xd0];

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The offset of the tid in the `struct pthread` bytes of each distinct Python thread
/// (`windows`), in a process whose own pid is `ns_pid` and whose threads are `live` (ids in
/// its namespace). None when no offset fits, or several do and none is glibc's.
pub fn calibrate(windows: &[Vec<u8>], ns_pid: i32, live: &[i32]) -> Option<usize> {
    let len = windows.iter().map(Vec::len).min()?;
    let fits = |at: usize| -> bool {
        let mut seen = HashSet::new();
        let mut main = false;
        for w in windows {
            match i32_at(w, at) {
                Some(0) => {}
                Some(tid) if live.contains(&tid) && seen.insert(tid) => main |= tid == ns_pid,
                _ => return false,
            }
        }
        main
    };
    let found: Vec<usize> = (0..len.saturating_sub(3))
        .step_by(4)
        .filter(|&at| fits(at))
        .collect();
    match found.as_slice() {
        [one] => Some(*one),
        many => GLIBC.into_iter().find(|g| many.contains(g)),
    }
}

/// The tid at `at` in one `struct pthread`'s bytes.
pub fn tid(b: &[u8], at: usize) -> Option<i64> {
    i32_at(b, at).map(i64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(fields: &[(usize, i32)]) -> Vec<u8> {
        let mut w = vec![0u8; WINDOW];
        for &(at, v) in fields {
            w[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        w
    }

    #[test]
    fn finds_the_tid_by_the_main_thread() {
        // Main thread (pid 500) and two others; a stray 500 elsewhere in the main struct.
        let ws = vec![
            window(&[(0x2d0, 500), (0x40, 500)]),
            window(&[(0x2d0, 501), (0x40, 7)]),
            window(&[(0x2d0, 502)]),
        ];
        assert_eq!(calibrate(&ws, 500, &[500, 501, 502]), Some(0x2d0));
        // Another C library: the one offset that fits.
        let ws = vec![window(&[(0x88, 500)]), window(&[(0x88, 503)])];
        assert_eq!(calibrate(&ws, 500, &[500, 503]), Some(0x88));
        // A thread glibc marked dead after a fork reads 0.
        let ws = vec![window(&[(0x2d0, 500)]), window(&[])];
        assert_eq!(calibrate(&ws, 500, &[500]), Some(0x2d0));
        assert_eq!(tid(&ws[0], 0x2d0), Some(500));
    }

    #[test]
    fn no_guess_when_nothing_or_too_much_fits() {
        // No thread reads the pid.
        let ws = vec![window(&[(0x2d0, 501)])];
        assert_eq!(calibrate(&ws, 500, &[500, 501]), None);
        // A lone main thread with the pid at two offsets, neither glibc's.
        let ws = vec![window(&[(0x10, 500), (0x20, 500)])];
        assert_eq!(calibrate(&ws, 500, &[500]), None);
        // An unknown tid rules an offset out.
        let ws = vec![window(&[(0x10, 500)]), window(&[(0x10, 999)])];
        assert_eq!(calibrate(&ws, 500, &[500]), None);
        assert_eq!(calibrate(&[], 500, &[500]), None);
    }
}
