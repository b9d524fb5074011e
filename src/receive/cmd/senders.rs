//! `receive` without `--pid`: the process trees the senders belong to, found from their own
//! /proc entries, so that the rules that need roles (FC201, FC202, FC208) work without being
//! told the master.
//!
//! A sender that is a worker of its parent (a fork or a spawned interpreter: the one definition
//! of [`kin`]) makes the parent a root; a sender with workers of its own is a root itself. Each
//! root's tree is then read as `--pid ROOT` would read it (and re-read, keeping processes that
//! exited), and the rules judge all the trees at once, as one snapshot. Senders in no tree keep
//! the role `other`. A sender is looked at once (again only if its pid is reused); one that is
//! gone by then is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::diagnose::{self, Facts, Finding};
use crate::ledger::Ledger;
use crate::observe::env::env_facts;
use crate::observe::tree::tree_snapshot;
use crate::proc::file::{parse_environ, read_bytes, Clock};
use crate::proc::tree::{kin, proc_basics, ChildIndex, Image};
use crate::snapshot::{Framework, Snapshot};

use super::merge_tree;

/// Where a sender belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the tree under this root (its parent's, or its own).
    Tree(i32),
    /// A process on its own (or gone before it was looked at).
    Alone,
}

#[derive(Debug)]
pub struct SenderTrees {
    /// pid -> the start (ns) the ledger has for it, and where it belongs.
    seen: HashMap<i32, (u64, Place)>,
    /// root -> its tree as last read.
    trees: BTreeMap<i32, Snapshot>,
    /// Exited processes kept per tree ([`merge_tree`]).
    keep: usize,
}

/// Where `pid` (started at `started_ns`, 0: unknown) belongs; None when it is gone (or its
/// pid was reused).
fn place(pid: i32, started_ns: u64, clock: &Clock) -> Option<Place> {
    let b = proc_basics(pid, clock).ok()?;
    if b.state == "Z" || (started_ns != 0 && b.started_at_ms * 1_000_000 != started_ns) {
        return None;
    }
    let me = Image::read(pid)?;
    if b.ppid > 1 {
        if let Some(parent) = Image::read(b.ppid) {
            if kin(&parent, &me).is_worker() {
                return Some(Place::Tree(b.ppid));
            }
        }
    }
    let kids = ChildIndex::for_root(pid).children(pid).unwrap_or_default();
    let has_workers = kids
        .iter()
        .filter_map(|k| Image::read(*k))
        .any(|k| kin(&me, &k).is_worker());
    Some(if has_workers {
        Place::Tree(pid)
    } else {
        Place::Alone
    })
}

/// The OTEL_* settings of each process (its export intervals: what the rules wait for), kept
/// from `old` where they were read already.
fn read_env(snap: &mut Snapshot, old: Option<&Snapshot>) {
    for p in &mut snap.processes {
        let known = old
            .and_then(|o| o.process(p.pid))
            .filter(|q| q.env.readable && q.started_at_ms == p.started_at_ms);
        p.env = match known {
            Some(q) => q.env.clone(),
            None => match read_bytes(format!("/proc/{}/environ", p.pid)) {
                Ok(b) => env_facts(&parse_environ(&b)),
                Err(_) => continue,
            },
        };
    }
}

impl SenderTrees {
    pub fn new(keep_exited: usize) -> SenderTrees {
        SenderTrees {
            seen: HashMap::new(),
            trees: BTreeMap::new(),
            keep: keep_exited,
        }
    }

    /// Looks at the senders not looked at yet, then re-reads every tree.
    pub fn update(&mut self, ledger: &Ledger) {
        let clock = Clock::new();
        for p in ledger.processes.values() {
            let (pid, start) = (p.sender.pid, p.sender.started_at_ns);
            if self.seen.get(&pid).is_some_and(|(s, _)| *s == start) {
                continue;
            }
            let at = place(pid, start, &clock).unwrap_or(Place::Alone);
            self.seen.insert(pid, (start, at));
        }
        let roots: BTreeSet<i32> = self
            .seen
            .values()
            .filter_map(|(_, at)| match at {
                Place::Tree(r) => Some(*r),
                Place::Alone => None,
            })
            .collect();
        for root in roots {
            if let Ok(mut s) = tree_snapshot(root) {
                let old = self.trees.remove(&root);
                read_env(&mut s, old.as_ref());
                self.trees.insert(root, merge_tree(old, s, self.keep));
            }
        }
    }

    /// Every tree found, the one with the most senders first.
    pub fn trees(&self, ledger: &Ledger) -> Vec<&Snapshot> {
        let mut t: Vec<&Snapshot> = self.trees.values().collect();
        let senders = |s: &Snapshot| {
            s.processes
                .iter()
                .filter(|p| ledger.processes.contains_key(&p.pid))
                .count()
        };
        t.sort_by_key(|s| std::cmp::Reverse(senders(s)));
        t
    }

    /// One snapshot of every tree for the report and the table: root pid 0 (no `--pid` was
    /// given), the framework when the trees agree on one. None when no tree was found.
    pub fn merged(&self, ledger: &Ledger) -> Option<Snapshot> {
        let trees = self.trees(ledger);
        let first = trees.first()?;
        let mut out = Snapshot {
            root_pid: 0,
            framework: if trees.iter().all(|t| t.framework == first.framework) {
                first.framework
            } else {
                Framework::Unknown
            },
            ..(*first).clone()
        };
        out.processes.clear();
        out.churn.aged_out = trees.iter().map(|t| t.churn.aged_out).sum();
        for t in &trees {
            for p in &t.processes {
                if out.process(p.pid).is_none() {
                    out.processes.push(p.clone());
                }
            }
        }
        out.notes = vec![format!(
            "no --pid: roles from the senders' own /proc entries ({} tree(s), roots {})",
            trees.len(),
            trees
                .iter()
                .map(|t| t.root_pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )];
        Some(out)
    }

    /// The findings, judged on every tree found at once ([`SenderTrees::merged`]), or on the
    /// ledger alone when no tree was found. `--expect-workers` without `--pid` counts every
    /// sender, as the receiver's own early stop does: that expectation (FC213) is judged
    /// without the trees.
    pub fn diagnose(&self, ledger: &Ledger) -> Vec<Finding> {
        let Some(view) = self.merged(ledger) else {
            return diagnose::diagnose(&Facts::new(None, Some(ledger)));
        };
        if ledger.expected_workers.is_none() {
            return diagnose::diagnose(&Facts::new(Some(&view), Some(ledger)));
        }
        let mut rest = ledger.clone();
        rest.expected_workers = None;
        let mut out = diagnose::diagnose(&Facts::new(Some(&view), Some(&rest)));
        let whole = diagnose::diagnose(&Facts::new(None, Some(ledger)));
        out.extend(whole.into_iter().filter(|f| f.code == EXPECTED_WORKERS));
        out.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.code.cmp(&b.code))
                .then_with(|| a.pids.cmp(&b.pids))
        });
        out
    }
}

/// The code of `--expect-workers` unmet.
const EXPECTED_WORKERS: &str = "FC213";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::build::B;
    use crate::ledger::{Holder, Signal};
    use crate::snapshot::Role;

    /// A fork of this test process that sleeps, killed when dropped.
    struct Fork(i32);

    impl Fork {
        fn new() -> Fork {
            // SAFETY: the child only sleeps and exits (async-signal-safe calls only).
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                unsafe {
                    libc::sleep(30);
                    libc::_exit(0);
                }
            }
            Fork(pid)
        }
    }

    impl Drop for Fork {
        fn drop(&mut self) {
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }

    #[test]
    fn a_forked_sender_puts_its_parent_at_the_root_of_a_tree() {
        let child = Fork::new();
        let me = std::process::id() as i32;
        let clock = Clock::new();
        let mut b = B::new();
        for pid in [child.0, me] {
            let h = Holder::read(pid, &clock).unwrap();
            let c = b.conn(std::slice::from_ref(&h));
            b.sends(
                c,
                &[h],
                Signal::Traces,
                crate::ledger::build::id("t", None, None),
                1,
                5,
            );
        }
        // a sender that is gone (pid 0 is nobody's) stays alone
        b.l.processes
            .insert(999_999_999, crate::ledger::PidExports::new(999_999_999));
        let mut t = SenderTrees::new(super::super::DEFAULT_KEEP_EXITED);
        t.update(&b.l);
        assert_eq!(t.seen[&child.0].1, Place::Tree(me));
        assert_eq!(t.seen[&me].1, Place::Tree(me), "it has a worker: a root");
        assert_eq!(t.seen[&999_999_999].1, Place::Alone);
        let m = t.merged(&b.l).unwrap();
        assert_eq!(m.root_pid, 0);
        assert_eq!(m.process(me).unwrap().role, Role::Master);
        assert_eq!(m.process(child.0).unwrap().role, Role::Worker);
        assert!(
            m.process(child.0).unwrap().env.readable,
            "its environment is read"
        );
        // the tree is judged: the master exports (FC202)
        let f = t.diagnose(&b.l);
        assert!(
            f.iter().any(|f| f.code == "FC202" && f.pids == vec![me]),
            "{f:?}"
        );
        // looked at once: a later update keeps the place even when the sender is gone
        drop(child);
        t.update(&b.l);
        assert!(t.merged(&b.l).unwrap().processes.len() >= 2);
    }
}
