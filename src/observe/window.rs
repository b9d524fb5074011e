//! The observation window: poll the master's children while time passes (a worker that dies
//! and is respawned within the window is churn, docs/failure-modes.md#grpc-fork-crash-loop), then re-sample the
//! threads of the processes seen at the start so the rules can tell a thread that never wakes
//! from one that does. A worker is judged on its own SDK once it has been up 2 s: the window is
//! waited for ([`settle_wait`]) and watched past ([`watch_children`]) so that one has.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::snapshot::{Churn, Process, Thread};

use super::threads::classify_thread;
use crate::proc::file::read_text;
use crate::proc::file::Clock;
use crate::proc::task::{parse_cpu_exit, TaskSample};
use crate::proc::tree::{kin, ChildIndex, Image};

/// How often the child list is read during the window, at most.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often it is read from the children files (cheap: a read per thread of the root and a
/// stat per child), for up to [`FAST_CHILDREN`] children; less often for more, in proportion.
/// A child that left is a zombie only until its parent reaps it, within milliseconds for a
/// multiprocessing pool (which waits on its children's sentinels): read every 100 ms, about
/// one recycled pool process in 15 was caught; every 10 ms, most.
const FAST_POLL: Duration = Duration::from_millis(10);
const FAST_CHILDREN: usize = 64;

/// Polls `root`'s children for `window`, starting from `initial`: a pid that appears is
/// `spawned`, one that disappears or is caught a zombie is `exited` (both, if it came and
/// went), and a zombie gives its wait status. Past the window it watches on, at most
/// [`MAX_SETTLE`], while workers are there but none has been up [`SETTLED`]: every one the
/// window started with was replaced in it, and the end sample would judge none (FC306). The
/// time watched past the window for that is returned beside the churn.
pub fn watch_children(
    index: &ChildIndex,
    root: i32,
    initial: &[i32],
    window: Duration,
    clock: &Clock,
) -> (Churn, Option<Duration>) {
    let start = Instant::now();
    let mut current: HashSet<i32> = initial.iter().copied().collect();
    let mut churn = Churn::default();
    let mut workers = Workers::new(root);
    let mut settling = false;
    // When the watch went on past the window for young workers.
    let mut past: Option<Duration> = None;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= window && (!settling || elapsed >= window + MAX_SETTLE) {
            break;
        }
        if settling {
            past.get_or_insert(elapsed);
        }
        let every = match index {
            ChildIndex::ChildrenFiles => {
                (FAST_POLL * (current.len() / FAST_CHILDREN + 1) as u32).min(POLL_INTERVAL)
            }
            ChildIndex::Scan(_) => POLL_INTERVAL,
        };
        let left = window.saturating_sub(elapsed);
        std::thread::sleep(if left.is_zero() {
            every
        } else {
            every.min(left)
        });
        let Ok(now) = index.refreshed().children(root) else {
            // The root went away; the end-of-window sample reports that.
            break;
        };
        churn.polls += 1;
        // A child that left is a zombie until its parent reaps it, and its stat then holds its
        // wait status: a recycled worker's 0 or a crash's signal. It has exited then, though
        // still listed: a supervisor may reap seconds later (uvicorn's pings its other workers
        // first, up to 5 s each).
        let mut zombies = HashSet::new();
        let mut started = Vec::new();
        for pid in &now {
            if churn.wait_statuses.iter().any(|(p, _)| p == pid) {
                zombies.insert(*pid);
                continue;
            }
            let stat = read_text(format!("/proc/{pid}/stat")).ok();
            if let Some(s) = stat.as_deref().and_then(parse_cpu_exit) {
                if s.state == 'Z' {
                    zombies.insert(*pid);
                    if let Some(code) = s.exit_code {
                        churn.wait_statuses.push((*pid, code));
                    }
                } else {
                    started.push((*pid, clock.ticks_to_unix_ms(s.starttime)));
                }
            }
        }
        // One that came and went between two polls, first seen as a zombie: both.
        for z in &zombies {
            if !current.contains(z) && !churn.exited.contains(z) {
                churn.spawned.push(*z);
                churn.exited.push(*z);
            }
        }
        let now: HashSet<i32> = now.into_iter().filter(|p| !zombies.contains(p)).collect();
        for gone in current.difference(&now) {
            if !churn.exited.contains(gone) {
                churn.exited.push(*gone);
            }
        }
        for new in now.difference(&current) {
            if !churn.spawned.contains(new) {
                churn.spawned.push(*new);
            }
        }
        current = now;
        if start.elapsed() >= window {
            settling = workers.all_young(&started);
        }
    }
    churn.exited.sort_unstable();
    churn.spawned.sort_unstable();
    let extra = past.map(|_| start.elapsed().saturating_sub(window));
    (churn, extra)
}

/// Which children of the root are workers ([`kin`]), read once per pid (the root too, when
/// first needed), and how old they are.
struct Workers {
    root_pid: i32,
    root: Option<Option<Image>>,
    known: HashMap<i32, bool>,
}

impl Workers {
    fn new(root_pid: i32) -> Workers {
        Workers {
            root_pid,
            root: None,
            known: HashMap::new(),
        }
    }

    /// Whether there are workers among `started` (pid, start in Unix ms), none up [`SETTLED`].
    fn all_young(&mut self, started: &[(i32, u64)]) -> bool {
        let root_pid = self.root_pid;
        let Some(root) = self.root.get_or_insert_with(|| Image::read(root_pid)) else {
            return false;
        };
        let now = crate::proc::file::now_unix_ms();
        let mut young = false;
        for &(pid, at) in started {
            let worker = *self
                .known
                .entry(pid)
                .or_insert_with(|| Image::read(pid).is_some_and(|c| kin(root, &c).is_worker()));
            if !worker {
                continue;
            }
            if Duration::from_millis(now.saturating_sub(at)) >= SETTLED {
                return false;
            }
            young = true;
        }
        young
    }
}

/// Whether the process of these thread samples has exited and waits to be reaped: its main
/// thread is a zombie.
pub(super) fn zombie(pid: i32, samples: &[TaskSample]) -> bool {
    samples.iter().any(|t| t.tid == pid && t.stat.state == "Z")
}

/// Whether `pid` has exited: gone, or a zombie.
pub(super) fn exited(pid: i32) -> bool {
    read_text(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_cpu_exit(&s))
        .is_none_or(|s| s.state == 'Z')
}

/// How long a worker must have been up, by the end of the window, to be judged on its own SDK
/// (the rules' 2 s: a spawned worker may still be importing the app before), with a margin
/// for the start time's clock-tick resolution.
pub const SETTLED: Duration = Duration::from_millis(2_050);

/// The most `check` waits for young workers, before its first sample and past its window.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// How long to wait before the first sample so that the youngest child of `root` in `tree`
/// will have been up [`SETTLED`] by the end of a `window` (at most [`MAX_SETTLE`]); None when
/// no wait is needed. A tree checked right after it started (`--window 0`, or a short window)
/// is then judged, where its workers would all be too young (FC306).
pub fn settle_wait(
    tree: &[(i32, i32)],
    root: i32,
    window: Duration,
    clock: &crate::proc::file::Clock,
) -> Option<Duration> {
    let now = crate::proc::file::now_unix_ms();
    let youngest = tree
        .iter()
        .filter(|(_, parent)| *parent == root)
        .filter_map(|(pid, _)| read_text(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| parse_cpu_exit(&stat))
        .filter(|s| s.state != 'Z')
        .map(|s| clock.ticks_to_unix_ms(s.starttime))
        .max()?;
    let age = Duration::from_millis(now.saturating_sub(youngest));
    let wait = SETTLED.checked_sub(age + window)?;
    (!wait.is_zero()).then_some(wait.min(MAX_SETTLE))
}

/// Folds the end-of-window sample of one process into its first-sample threads: wakeups_end
/// and syscall_end for threads still there (state stays the first sample's); threads that exited are dropped (the report is the
/// state at the end); threads that appeared are added with their first (and only) sample.
pub fn merge_end_sample(
    process: &mut Process,
    end: &[TaskSample],
    clock: &crate::proc::file::Clock,
) {
    process
        .threads
        .retain(|t| end.iter().any(|s| s.tid == t.tid));
    for s in end {
        match process.threads.iter_mut().find(|t| t.tid == s.tid) {
            Some(t) => {
                t.wakeups_end = Some(s.status.voluntary_ctxt_switches);
                t.syscall_end = s.syscall.clone();
            }
            None => process.threads.push(Thread {
                tid: s.tid,
                nstid: s.nested_ns_tid(),
                name: s.stat.comm.clone(),
                name_source: crate::snapshot::NameSource::Comm,
                kind: classify_thread(None, &s.stat.comm),
                comm: s.stat.comm.clone(),
                started_at_ms: clock.ticks_to_unix_ms(s.stat.starttime),
                state: s.stat.state.clone(),
                syscall: s.syscall.clone(),
                syscall_end: None,
                wakeups: s.status.voluntary_ctxt_switches,
                wakeups_end: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_seen_only_as_a_zombie_came_and_went_and_one_that_dies_has_exited() {
        let me = std::process::id() as i32;
        // Exited before the window and never reaped: first seen as a zombie.
        let mut quick = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh");
        // Alive at the start of the window, then a zombie (not reaped during it).
        let mut slow = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3; exit 0"])
            .spawn()
            .expect("sh");
        let (q, s) = (quick.id() as i32, slow.id() as i32);
        std::thread::sleep(Duration::from_millis(150));
        let index = ChildIndex::for_root(me);
        let clock = Clock::new();
        let (churn, _) = watch_children(&index, me, &[s], Duration::from_millis(900), &clock);
        let _ = (quick.wait(), slow.wait());
        assert!(
            churn.spawned.contains(&q) && churn.exited.contains(&q),
            "{churn:?}"
        );
        assert!(
            churn.exited.contains(&s) && !churn.spawned.contains(&s),
            "{churn:?}"
        );
        assert!(churn.wait_statuses.contains(&(q, 3 << 8)), "{churn:?}");
        assert!(churn.wait_statuses.contains(&(s, 0)), "{churn:?}");
    }

    #[test]
    fn the_watch_goes_on_past_the_window_while_every_worker_is_young() {
        let me = std::process::id() as i32;
        let clock = Clock::new();
        let index = ChildIndex::for_root(me);
        let spawn = |argv0: &str| {
            // `$0` in the command line: a spawned multiprocessing worker's marker, or not.
            std::process::Command::new("sh")
                .args(["-c", "sleep 4", argv0])
                .spawn()
                .expect("sh")
        };
        // Not a worker: the window alone.
        let mut other = spawn("helper");
        let t = Instant::now();
        let (churn, extra) = watch_children(&index, me, &[], Duration::from_millis(300), &clock);
        let plain = t.elapsed();
        assert_eq!(extra, None);
        let _ = (other.kill(), other.wait());
        assert!(churn.polls > 0);
        assert!(plain < Duration::from_millis(1_200), "{plain:?}");
        // A young worker: on until it has been up SETTLED.
        let mut worker = spawn("--multiprocessing-fork");
        let born = Instant::now();
        let (_, extra) = watch_children(&index, me, &[], Duration::from_millis(300), &clock);
        let waited = born.elapsed();
        assert!(
            extra.is_some_and(|e| e >= Duration::from_millis(1_000)),
            "{extra:?}"
        );
        let _ = (worker.kill(), worker.wait());
        assert!(waited >= Duration::from_millis(1_900), "{waited:?}");
        assert!(waited <= Duration::from_millis(300) + MAX_SETTLE + Duration::from_millis(500));
    }

    #[test]
    fn settle_wait_lasts_until_the_youngest_child_is_two_seconds_old() {
        let me = std::process::id() as i32;
        let clock = crate::proc::file::Clock::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let tree = [(me, 0), (child.id() as i32, me)];
        let zero = settle_wait(&tree, me, Duration::ZERO, &clock);
        let short = settle_wait(&tree, me, Duration::from_millis(1_000), &clock);
        let long = settle_wait(&tree, me, Duration::from_secs(3), &clock);
        let alone = settle_wait(&tree[..1], me, Duration::ZERO, &clock);
        let _ = child.kill();
        let _ = child.wait();
        // Just started: about 2 s with no window, 1 s less with a 1 s window, none with 3 s.
        let zero = zero.expect("a wait");
        assert!(zero > Duration::from_millis(1_500), "{zero:?}");
        assert!(zero <= MAX_SETTLE);
        let short = short.expect("a wait");
        assert!(
            short <= zero.saturating_sub(Duration::from_millis(900)),
            "{short:?}"
        );
        assert_eq!(long, None);
        assert_eq!(alone, None);
    }
}
