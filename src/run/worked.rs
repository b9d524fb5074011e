//! Whether each child of a `run` worked, judged on the whole set once tracking ended
//! ([`super::children`] has the rules in words): what one child's CPU cannot tell alone.

use std::collections::BTreeSet;

use crate::ledger::ChildRecord;

/// CPU time a child must use after it was first seen to count as having worked.
pub const WORK_CPU_MS: u64 = 50;
/// How long the parent must outlive a child for the child's exit to count as recycling.
pub const RECYCLED_AFTER: u64 = 1_000;
/// A replacement born this shortly before the stop may still be starting up.
pub const YOUNG_MS: u64 = 1_000;

/// What only the whole set of children tells: which were recycled, and whether a child that
/// never stood still worked. `finished`: each record and whether it stood still; `stop`: when
/// the stop was requested (Unix ms), if it was.
pub(super) fn judge(
    finished: &mut [(ChildRecord, bool)],
    master_gone: Option<u64>,
    stop: Option<u64>,
) {
    let starts: Vec<(i32, u64)> = finished
        .iter()
        .map(|(c, _)| (c.pid, c.started_ms))
        .collect();
    // The CPU a child of this master uses to start up, as far as its siblings show it: the
    // median idle baseline of those that stood still (Celery's worker_process_init, a Pool
    // initializer).
    let mut baselines: Vec<u64> = finished
        .iter()
        .filter(|(c, still)| *still && !c.per_job)
        .map(|(c, _)| c.cpu_first_ms)
        .collect();
    baselines.sort_unstable();
    let startup = baselines.get(baselines.len() / 2).copied();
    // The costliest start-up, for a replacement caught young: bounded, so that a young
    // replacement's own task still shows beyond it (a missed worker is a wrong pass).
    let costliest = startup
        .zip(baselines.last())
        .map(|(m, &x)| x.min(m + m / 2));
    let first_seen = finished.iter().map(|(c, _)| c.first_seen_ms).min();
    for (c, still) in finished.iter_mut() {
        // Replaced: another child was born after this one was first seen (a pool spawns the
        // replacement when the old child says it is done, sometimes before it has left; the
        // children of a batch pool are all born before any is first seen).
        let replaced = c.exited_ms.is_some()
            && starts
                .iter()
                .any(|&(p, s)| p != c.pid && s > c.first_seen_ms);
        let outlived = c
            .exited_ms
            .is_some_and(|e| master_gone.is_none_or(|g| g >= e + RECYCLED_AFTER));
        c.recycled = c.left_before_stop && replaced && outlived;
        if !*still && !c.per_job && !c.recycled {
            // Busy from its first moment to the stop: working, or still starting up (a
            // replacement born shortly before the stop). Work is CPU beyond its siblings'.
            let young = first_seen.is_some_and(|f| c.started_ms > f)
                && stop.is_some_and(|s| s < c.started_ms + YOUNG_MS);
            if let Some(s) = if young { costliest } else { startup } {
                c.worked = c.cpu_first_ms + c.cpu_grown_ms >= s + WORK_CPU_MS;
            }
        }
        c.worked = c.worked || (c.recycled && c.cpu_since_seen_ms >= WORK_CPU_MS);
    }
    clearly_beyond_start_up(finished);
    took_work_at_once(finished);
}

/// A child whose CPU time in all passed the cheapest of the first children's by half and the
/// threshold did clearly more than start up, whether or not it stood still in between: a
/// pool that starts its tasks at once (`Pool(initializer=...).map(...)`), or set-up slowed by
/// a busy machine until the tasks came, never shows an idle baseline between the two, and
/// its siblings' baselines may hold their own first task. The first children (there before any
/// was first seen) set the cost: a replacement still starting up at the stop would make it too
/// low. Only ever adds work: a missed worker is a wrong pass, the worst outcome.
fn clearly_beyond_start_up(finished: &mut [(ChildRecord, bool)]) {
    let total = |c: &ChildRecord| c.cpu_first_ms + c.cpu_grown_ms;
    let pooled = || finished.iter().map(|(c, _)| c).filter(|c| !c.per_job);
    let Some(first_seen) = pooled().map(|c| c.first_seen_ms).min() else {
        return;
    };
    let first: Vec<u64> = pooled()
        .filter(|c| c.started_ms <= first_seen)
        .map(total)
        .collect();
    let Some(cheapest) = first.iter().min().copied().filter(|_| first.len() >= 2) else {
        return;
    };
    for (c, _) in finished.iter_mut().filter(|(c, _)| !c.per_job) {
        if total(c) >= cheapest + cheapest / 2 + WORK_CPU_MS {
            c.worked = true;
        }
    }
}

/// A child whose idle baseline (its CPU time when it first stood still) passed the median of
/// its siblings' by half and the threshold did more than start up before it first stood
/// still: it took work at once, then waited (a process an autoscaling pool adds because tasks
/// wait, `--autoscale`; a replacement with tasks queued). Its baseline holds that work, so its
/// growth beyond it does not show it. Needs two siblings that stood still, whose median is
/// what starting up costs when some took work at once too. Only ever adds work.
fn took_work_at_once(finished: &mut [(ChildRecord, bool)]) {
    let baselines: Vec<(i32, u64)> = finished
        .iter()
        .filter(|(c, still)| *still && !c.per_job)
        .map(|(c, _)| (c.pid, c.cpu_first_ms))
        .collect();
    if baselines.len() < 3 {
        return;
    }
    for (c, _) in finished
        .iter_mut()
        .filter(|(c, still)| *still && !c.per_job)
    {
        let mut others: Vec<u64> = baselines
            .iter()
            .filter(|(p, _)| *p != c.pid)
            .map(|(_, b)| *b)
            .collect();
        others.sort_unstable();
        let m = others[others.len() / 2];
        if c.cpu_first_ms >= m + m / 2 + WORK_CPU_MS {
            c.worked = true;
        }
    }
}

/// A worker that forks a work horse per job (`rq worker-pool`) runs no job itself: its CPU is
/// the forks and the bookkeeping (under load, 50 ms for three horses), and each horse's own
/// record carries the job. It did not work.
pub(super) fn forking_is_not_work(
    finished: &mut [(ChildRecord, bool)],
    horse_parents: &BTreeSet<i32>,
) {
    for (c, _) in finished.iter_mut() {
        if !c.per_job && horse_parents.contains(&c.pid) {
            c.worked = false;
        }
    }
}
