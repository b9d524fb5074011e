//! Children that come and go, tracked one by one while `run` watches: activity without requests.
//!
//! A background thread polls the master's children about every 50 ms (the /proc floor's child
//! index; a child counts only when [`kin`] calls it a worker), and the children of a
//! multiprocessing forkserver the master started (a forkserver pool's processes), and keeps,
//! per child, its start, its CPU time (utime + stime) when first seen and at each later poll,
//! and when it left. A
//! zombie still shows its CPU time and its wait status until its parent reaps it, so a child
//! caught in that state has a known exit status; one reaped between two polls has none.
//!
//! A child counts as having worked when its CPU time grew by [`WORK_CPU_MS`] or more beyond its
//! idle baseline: its CPU time the first time it stood still, asleep, over [`IDLE_POLLS`]
//! polls (a child that sets the SDK up after fork, in Celery's `worker_process_init` or a Pool
//! initializer, burns CPU first and must not look busy for it), or when it was first seen if it
//! never stood still (busy from its first moment: it worked). Growth is counted only until the
//! stop is requested ([`Tracker::freeze`]): a flush at exit is not work. A child that left
//! before the stop while its parent lived on (for [`super::worked::RECYCLED_AFTER`] at least)
//! and that another child replaced (born after it was first seen: not the end of a batch pool)
//! was recycled after work (`--max-tasks-per-child`, `maxtasksperchild`): it worked when its
//! CPU grew by the threshold since it was first seen, even if it never stood still (took its
//! task at once). An RQ
//! worker's children are work horses forked for one job each (`per_job`): the job is their
//! whole life, so their baseline is their CPU time when first seen (a horse that sets the SDK
//! up, works, and stands still only while it flushes is busy, not idle until then). Under
//! `rq worker-pool` the workers that fork the horses run no job themselves: they never worked.
//! A horse leads its own process group (RQ calls `setpgrp`, `setsid` before 1.x, right after
//! the fork); a child of the same parent seen alive at two polls or more and never leading its
//! group is not a horse but RQ's scheduler (`--with-scheduler`, a multiprocessing fork that
//! polls Redis): it runs no job, and its CPU (about 1.5 ms a second) is not work.
//!
//! A child busy from its first moment to the stop (it never stood still) may be working, or
//! still starting up (a replacement born shortly before the stop, setting the SDK up): when
//! siblings stood still, it worked only if its CPU time passed their median idle baseline (what
//! starting up costs here) by the threshold. A replacement born less than
//! [`super::worked::YOUNG_MS`] before the stop is measured against the costliest start-up seen
//! instead (at most half again the median): start-up costs vary under load, and one caught mid
//! set-up is not work.
//!
//! A child that took work at once and only then stood still (a process an autoscaling pool adds
//! for a waiting task) has that work in its idle baseline: it worked when that baseline passed
//! its siblings' median by half and the threshold ([`super::worked`]).
//!
//! The embedded beat of a Celery worker (`celery worker -B`) is a child of the master too, and
//! no pool process: [`super::beat`] tells it apart; it never worked.
//!
//! A child that execs another program (a `subprocess` run by the master: croniter, imported by
//! RQ, runs `file -b` on the interpreter) may be caught between its fork and its exec, looking
//! like a worker: it is dropped when its executable, or for a zombie its command name, changes,
//! or when it was seen once only and gone (reaped) at the next poll without using CPU.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ledger::ChildRecord;
use crate::proc::file::{read_text, Clock};
use crate::proc::task::{parse_cpu_exit, split_wait_status, CpuExit};
use crate::proc::tree::{is_forkserver, kin, ChildIndex, Image};
use crate::receive::now_ms;

use super::beat;
pub use super::worked::WORK_CPU_MS;
use super::worked::{forking_is_not_work, judge};

/// Between two polls.
const POLL: Duration = Duration::from_millis(50);
/// Polls without CPU growth that make a child's idle baseline.
const IDLE_POLLS: u32 = 2;

/// One child while it is tracked.
struct Live {
    rec: ChildRecord,
    /// The master, or the forkserver it started (whose forks are the master's workers).
    parent: i32,
    starttime: u64,
    cpu_first: u64,
    cpu_last: u64,
    /// The idle baseline, once the child stood still.
    baseline: Option<u64>,
    still: u32,
    /// Command name when last seen alive as a fork of the master (an exec changes it).
    comm: String,
    /// Polls that saw it alive, and whether one saw it lead its own process group.
    alive_polls: u32,
    own_group: bool,
    /// Checks in a row that found it without the pipes the master shares with its pool
    /// (a Celery master's children: [`super::beat`]).
    no_pool_pipe: u32,
}

pub struct Tracker {
    done: Arc<AtomicBool>,
    /// Unix ms when the stop was requested (0: not yet).
    frozen: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<ChildRecord>>>,
    handle: Option<JoinHandle<()>>,
}

fn stat(pid: i32) -> Option<CpuExit> {
    parse_cpu_exit(&read_text(format!("/proc/{pid}/stat")).ok()?)
}

fn alive_not_zombie(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

impl Tracker {
    /// Starts tracking the children of `master`; `horses`: which of them are forked for one job
    /// (an RQ worker's work horses).
    pub fn start(master: i32, horses: Horses) -> Tracker {
        let done = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicU64::new(0));
        let records = Arc::new(Mutex::new(Vec::new()));
        let (d, f, r) = (done.clone(), frozen.clone(), records.clone());
        let handle = std::thread::spawn(move || poll_loop(master, horses, &d, &f, &r));
        Tracker {
            done,
            frozen,
            records,
            handle: Some(handle),
        }
    }

    /// The stop was requested now: CPU used from here on is not counted as work.
    pub fn freeze(&self) {
        let _ = self
            .frozen
            .compare_exchange(0, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Stops polling; every child seen, by pid.
    pub fn finish(mut self) -> Vec<ChildRecord> {
        self.done.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let mut out = self.records.lock().map(|r| r.clone()).unwrap_or_default();
        out.sort_by_key(|c| (c.started_ms, c.pid));
        out
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Which tracked children are work horses, forked for one job each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horses {
    /// None (a server's workers, a pool's processes).
    None,
    /// The master's children (`rq worker`).
    Children,
    /// The children of the master's workers (`rq worker-pool`: workers that fork horses).
    Grandchildren,
}

/// A process whose worker children are tracked: its image (read again each round: the
/// launched pid may still exec, a shim or a wrapper), and whether its children are horses.
struct Parent {
    image: Option<Image>,
    horses: bool,
}

/// The processes whose worker children are tracked: the master; any multiprocessing
/// forkserver it started, under which the kernel shows a forkserver pool's processes (the
/// default start method from Python 3.14); with [`Horses::Grandchildren`], each of its workers.
fn parents(
    master: i32,
    index: &ChildIndex,
    horses: Horses,
    round: &mut Round,
) -> BTreeMap<i32, Parent> {
    let mut out = BTreeMap::new();
    let me = round.image(master);
    for kid in index.children(master).unwrap_or_default() {
        let Some(img) = round.image(kid) else {
            continue;
        };
        let worker = horses == Horses::Grandchildren
            && me.as_ref().is_some_and(|m| kin(m, &img).is_worker());
        if worker || is_forkserver(&img.cmdline) {
            let parent = Parent {
                image: Some(img),
                horses: worker,
            };
            out.insert(kid, parent);
        }
    }
    let parent = Parent {
        image: me,
        horses: horses == Horses::Children,
    };
    out.insert(master, parent);
    out
}

/// The images read in one poll round, each pid's once (the parents' search and the children's
/// checks ask for the same ones).
#[derive(Default)]
struct Round(HashMap<i32, Option<Image>>);

impl Round {
    fn image(&mut self, pid: i32) -> Option<Image> {
        self.0
            .entry(pid)
            .or_insert_with(|| Image::read(pid))
            .clone()
    }
}

fn poll_loop(
    master: i32,
    horses: Horses,
    done: &AtomicBool,
    frozen: &AtomicU64,
    out: &Mutex<Vec<ChildRecord>>,
) {
    let clock = Clock::new();
    let index = ChildIndex::for_root(master);
    let mut live: BTreeMap<i32, Live> = BTreeMap::new();
    let mut ignored: BTreeSet<(i32, u64)> = BTreeSet::new();
    let mut finished: Vec<(ChildRecord, bool)> = Vec::new();
    let mut master_gone: Option<u64> = None;
    // Workers seen forking a work horse (`rq worker-pool`).
    let mut horse_parents: BTreeSet<i32> = BTreeSet::new();
    // Children that run no task, told apart while tracked ([`runs_no_task`]).
    let mut apart: BTreeSet<i32> = BTreeSet::new();
    let celery = beat::is_celery(master);
    let mut polls: u64 = 0;
    loop {
        let last_round = done.load(Ordering::SeqCst);
        let now = now_ms();
        let freeze = frozen.load(Ordering::SeqCst);
        if master_gone.is_none() && !alive_not_zombie(master) {
            master_gone = Some(now);
        }
        let index = index.refreshed();
        let mut round = Round::default();
        let parents = parents(master, &index, horses, &mut round);
        let kids = parents.keys().flat_map(|p| {
            index
                .children(*p)
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c, *p))
        });
        for (pid, parent) in kids.collect::<Vec<_>>() {
            if live.contains_key(&pid) {
                continue;
            }
            let Some(st) = stat(pid) else { continue };
            if st.state == 'Z' || ignored.contains(&(pid, st.starttime)) {
                continue;
            }
            let worker = match (&parents[&parent].image, round.image(pid)) {
                (Some(m), Some(img)) => kin(m, &img).is_worker(),
                _ => false,
            };
            if !worker {
                ignored.insert((pid, st.starttime));
                continue;
            }
            if parents[&parent].horses && parent != master {
                horse_parents.insert(parent);
            }
            live.insert(
                pid,
                Live {
                    rec: ChildRecord {
                        pid,
                        started_ms: clock.ticks_to_unix_ms(st.starttime),
                        first_seen_ms: now,
                        last_seen_ms: now,
                        per_job: parents[&parent].horses,
                        ..Default::default()
                    },
                    parent,
                    starttime: st.starttime,
                    cpu_first: st.cpu_ticks,
                    cpu_last: st.cpu_ticks,
                    baseline: None,
                    still: 0,
                    comm: st.comm,
                    alive_polls: 0,
                    own_group: false,
                    no_pool_pipe: 0,
                },
            );
        }
        let mut gone = Vec::new();
        let mut execed = Vec::new();
        for (pid, l) in live.iter_mut() {
            let s = stat(*pid).filter(|s| s.starttime == l.starttime);
            if let Some(s) = &s {
                let alive = s.state != 'Z' && s.state != 'X';
                let other = if alive {
                    let img = round.image(*pid);
                    let parent = parents.get(&l.parent).and_then(|p| p.image.as_ref());
                    matches!((parent, img), (Some(m), Some(i)) if !kin(m, &i).is_worker())
                } else {
                    s.comm != l.comm
                };
                if other {
                    execed.push((*pid, l.starttime));
                    continue;
                }
                if alive {
                    l.comm.clone_from(&s.comm);
                }
            }
            if freeze == 0 {
                if let Some(s) = &s {
                    // Runnable but waiting for a CPU is not idle: only a sleeping child is.
                    if s.cpu_ticks > l.cpu_last || s.state != 'S' {
                        l.still = 0;
                    } else if l.baseline.is_none() {
                        l.still += 1;
                        if l.still >= IDLE_POLLS {
                            l.baseline = Some(l.cpu_last);
                        }
                    }
                    l.cpu_last = l.cpu_last.max(s.cpu_ticks);
                }
            }
            match &s {
                Some(s) if s.state != 'Z' && s.state != 'X' => {
                    l.rec.last_seen_ms = now;
                    l.alive_polls += 1;
                    l.own_group |= s.pgrp == *pid;
                }
                _ => {
                    l.rec.exited_ms = Some(now);
                    if let Some(code) = s.as_ref().and_then(|s| s.exit_code) {
                        (l.rec.exit_status, l.rec.exit_signal) = split_wait_status(code);
                    }
                    l.rec.left_before_stop = freeze == 0 && alive_not_zombie(master);
                    gone.push(*pid);
                }
            }
        }
        for pid in gone {
            let Some(l) = live.remove(&pid) else { continue };
            // Seen once, then reaped before the next poll without a readable zombie: maybe a
            // subprocess that exec'd and ended in between; it cannot have worked meanwhile.
            let unconfirmed = l.rec.last_seen_ms == l.rec.first_seen_ms
                && l.rec.exit_status.is_none()
                && l.rec.exit_signal.is_none()
                && l.cpu_last.saturating_sub(l.cpu_first) == 0;
            if !unconfirmed {
                finished.push(close(l, &clock, &mut apart));
            }
        }
        polls += 1;
        // Before the stop only: beat closes its descriptors at its start, and a pool process
        // keeps the pool's pipes until its last moment, but nothing is risked on leaving ones.
        if celery && freeze == 0 && polls % beat::EVERY_POLLS == 0 {
            if let Some(pipes) = beat::master_pipes(master) {
                // The children this round saw alive (and left in `live`).
                let mut alive: Vec<(i32, &mut u32)> = live
                    .iter_mut()
                    .filter(|(_, l)| l.parent == master && l.rec.last_seen_ms == now)
                    .map(|(pid, l)| (*pid, &mut l.no_pool_pipe))
                    .collect();
                beat::check(&pipes, &mut alive);
            }
        }
        for (pid, starttime) in execed {
            live.remove(&pid);
            ignored.insert((pid, starttime));
        }
        if last_round {
            break;
        }
        std::thread::sleep(POLL);
    }
    for l in live.into_values() {
        finished.push(close(l, &clock, &mut apart));
    }
    // Judged apart: they never worked, and neither set the pool's costs nor replaced a child.
    let (mut no_task, mut finished): (Vec<_>, Vec<_>) = finished
        .into_iter()
        .partition(|(c, _)| apart.contains(&c.pid));
    let stop = Some(frozen.load(Ordering::SeqCst)).filter(|&f| f > 0);
    judge(&mut finished, master_gone, stop);
    forking_is_not_work(&mut finished, &horse_parents);
    for (c, _) in no_task.iter_mut() {
        (c.worked, c.per_job) = (false, false);
    }
    finished.append(&mut no_task);
    if let Ok(mut o) = out.lock() {
        *o = finished.into_iter().map(|(c, _)| c).collect();
    }
}

/// A child that runs no task: forked beside the work horses but never leading its own process
/// group, as each horse does at once (RQ's scheduler; seen alive twice at least, so that a
/// horse caught between its fork and its `setpgrp` is not taken for one), or a Celery master's
/// child without the pool's pipes ([`beat`]).
fn runs_no_task(l: &Live) -> bool {
    (l.rec.per_job && l.alive_polls >= 2 && !l.own_group) || l.no_pool_pipe >= beat::IN_A_ROW
}

/// The record of a child no longer tracked, and whether it ever stood still; its pid goes to
/// `apart` when it [`runs_no_task`].
fn close(l: Live, clock: &Clock, apart: &mut BTreeSet<i32>) -> (ChildRecord, bool) {
    if runs_no_task(&l) {
        apart.insert(l.rec.pid);
    }
    let mut rec = l.rec;
    let base = match l.baseline {
        Some(b) if !rec.per_job => b,
        _ => l.cpu_first,
    };
    rec.cpu_first_ms = clock.ticks_as_ms(base);
    rec.cpu_grown_ms = clock.ticks_as_ms(l.cpu_last.saturating_sub(base));
    rec.cpu_since_seen_ms = clock.ticks_as_ms(l.cpu_last.saturating_sub(l.cpu_first));
    rec.worked = rec.cpu_grown_ms >= WORK_CPU_MS;
    (rec, l.baseline.is_some())
}

/// How a child left, in words.
pub fn exit_words(c: &ChildRecord) -> String {
    let how = match (c.exit_status, c.exit_signal) {
        (Some(s), _) => format!("exit status {s}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exit status not seen (reaped between two polls)".to_string(),
    };
    match (c.exited_ms, c.left_before_stop) {
        (None, _) => "still running when the tracking ended".to_string(),
        (Some(_), true) if c.recycled => {
            format!("left before the stop while its parent lived on: recycled ({how})")
        }
        (Some(_), true) => format!("left before the stop ({how})"),
        (Some(_), false) => format!("left at the stop ({how})"),
    }
}

/// The activity line of a child that worked (what FC209's evidence shows).
pub fn activity_line(c: &ChildRecord) -> String {
    if c.per_job {
        return format!(
            "work horse of the master (one per job) started {}, used {} ms of CPU after it was \
             first seen (threshold {WORK_CPU_MS} ms) and {}",
            crate::report::rfc3339_ms(c.started_ms),
            c.cpu_grown_ms,
            exit_words(c)
        );
    }
    format!(
        "child of the master started {}, used {} ms of CPU beyond its idle baseline of {} ms \
         ({} ms since first seen; threshold {WORK_CPU_MS} ms) and {}",
        crate::report::rfc3339_ms(c.started_ms),
        c.cpu_grown_ms,
        c.cpu_first_ms,
        c.cpu_since_seen_ms,
        exit_words(c)
    )
}

#[cfg(test)]
#[path = "children_tests.rs"]
mod tests;
