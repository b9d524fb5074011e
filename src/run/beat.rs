//! Celery's embedded beat (`celery worker -B`): a child of the worker's main process that is no
//! pool process. It has the same command line as the pool's processes (without setproctitle),
//! but right after its fork it closes every descriptor it inherited but stdio and the loggers',
//! so it holds none of the pipes the main process shares with its pool (billiard's in- and out-
//! queues). It sends the scheduled tasks and runs none: its CPU (about 10 ms a tick with a 1 s
//! schedule) is not work, and nothing it does is lost at the stop.

use std::collections::BTreeSet;

use crate::observe::tree::is_celery_worker;
use crate::proc::file::{parse_cmdline, read_bytes};
use crate::proc::sockets::pipe_fds;

/// Checks are this many polls apart (a few hundred ms): each reads every fd of every child.
pub const EVERY_POLLS: u64 = 4;
/// Checks in a row that must find a child without the pool's pipes (a child caught exiting,
/// its fds closed, is a zombie by the next one).
pub const IN_A_ROW: u32 = 2;

/// Whether `master` is a Celery worker's main process.
pub fn is_celery(master: i32) -> bool {
    read_bytes(format!("/proc/{master}/cmdline"))
        .is_ok_and(|b| is_celery_worker(&parse_cmdline(&b)))
}

/// The pipes `master` holds (any fd).
pub fn master_pipes(master: i32) -> Option<BTreeSet<u64>> {
    let p: BTreeSet<u64> = pipe_fds(master).ok()?.into_iter().map(|(_, i)| i).collect();
    (!p.is_empty()).then_some(p)
}

/// Whether `pid` holds one of `master`'s pipes beyond stdio (None: unreadable, or gone).
pub fn shares_pipe(pid: i32, master: &BTreeSet<u64>) -> Option<bool> {
    let fds = pipe_fds(pid).ok()?;
    Some(fds.iter().any(|(fd, i)| *fd > 2 && master.contains(i)))
}

/// One check of the live children (`alive`: each pid and its count of checks in a row without
/// the pool's pipes): counts go up for the children without them, when a sibling has them (the
/// pool is there to tell them apart), and back to 0 for the others.
pub fn check(master: &BTreeSet<u64>, alive: &mut [(i32, &mut u32)]) {
    let seen: Vec<Option<bool>> = alive
        .iter()
        .map(|(pid, _)| shares_pipe(*pid, master))
        .collect();
    if !seen.contains(&Some(true)) {
        return;
    }
    for ((_, n), s) in alive.iter_mut().zip(seen) {
        match s {
            Some(false) => **n += 1,
            Some(true) => **n = 0,
            None => {}
        }
    }
}
