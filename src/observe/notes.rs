//! The snapshot's notes: what observe could not read or what the tree's shape means, each
//! said once with the pids it concerns.

use std::collections::BTreeMap;

use super::Observed;
use crate::snapshot::{Role, Snapshot};

/// Under gunicorn's gevent and eventlet workers, an SDK set up after the monkey-patching runs
/// its exporters as greenlets: workers without an OS exporter thread are then not evidence of
/// a missing SDK, and the note says so (measured: `-k gevent`, SDK at import without
/// `--preload`: the workers run the main thread only, and export).
pub(super) fn greenlet_note(snap: &Snapshot, procs: &[Observed]) -> Option<String> {
    let wc = snap
        .worker_class
        .as_ref()
        .filter(|w| w.kind.patches_threads())?;
    let bare: Vec<i32> = procs
        .iter()
        .filter(|o| o.p.role == Role::Worker && o.p.exporter_threads().next().is_none())
        .map(|o| o.p.pid)
        .collect();
    if bare.is_empty() {
        return None;
    }
    Some(format!(
        "gunicorn -k {}: {} run no OS exporter thread; an SDK set up after the worker's \
         monkey-patching (post_worker_init, or at import without --preload) runs its exporters \
         as greenlets, which neither /proc nor the interpreter's thread list shows: whether they \
         export is seen at a receiver (otel-forkcheck receive or run)",
        wc.name,
        pid_list(&bare)
    ))
}

/// Things observe could not read, each said once.
pub(super) fn notes(root: i32, procs: &[Observed], python_names: bool) -> Vec<String> {
    let mut out = Vec::new();
    if procs.len() == 1 {
        out.push(format!(
            "pid {root} has no child processes: it is not a pre-fork master; showing it alone"
        ));
    } else if !procs.iter().any(|o| o.p.role == Role::Worker) {
        out.push(format!(
            "pid {root} has children but none is a fork of it (same executable) or a worker it \
             spawned: it does not look like a pre-fork master; showing what was seen"
        ));
    }
    if !python_names {
        out.push(
            "Python thread names were not read (disabled); thread kinds come from comm".into(),
        );
    } else {
        // reason -> pids, so one note can say which pids and why.
        let mut failed: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for o in procs {
            if let Some(e) = &o.p.python.names_error {
                failed.entry(e.clone()).or_default().push(o.p.pid);
            }
        }
        if !failed.is_empty() {
            let n: usize = failed.values().map(Vec::len).sum();
            let parts: Vec<String> = failed
                .iter()
                .map(|(why, pids)| format!("{} ({why})", pid_list(pids)))
                .collect();
            let denied = failed.keys().any(|why| refused(why));
            out.push(format!(
                "Python thread names unavailable for {n} of {} processes: {}; their thread \
                 kinds come from /proc comm only{}",
                procs.len(),
                parts.join("; "),
                if denied {
                    " (reading interpreter memory needs the server's user, or CAP_SYS_PTRACE)"
                } else {
                    ""
                }
            ));
        }
    }
    // Cleared by a title rewrite and not found in memory either (permission denied is below).
    let cleared: Vec<i32> = procs
        .iter()
        .filter(|o| !o.p.env.readable && !o.p.unreadable.iter().any(|w| w == "environ"))
        .map(|o| o.p.pid)
        .collect();
    if !cleared.is_empty() {
        out.push(format!(
            "the environment of {} was cleared by a process title rewrite (setproctitle) and \
             could not be read from memory: OTEL_* settings, the collector endpoint, preload \
             and gRPC fork support were not read",
            pid_list(&cleared)
        ));
    }
    let mut denied: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for o in procs {
        // Memory: the note on Python names says it.
        for what in o.p.unreadable.iter().filter(|w| *w != "memory") {
            denied.entry(what).or_default().push(o.p.pid);
        }
    }
    for (what, pids) in denied {
        let lost = match what {
            "environ" => {
                "OTEL_* settings, the collector endpoint, preload and gRPC fork support \
                          were not read"
            }
            "fd" => {
                "open sockets were not read, so shared collector connections (FC103) cannot \
                     be seen"
            }
            "exe" => "the program was recognised from its command line only",
            "maps" => "libpython and the Python version were not read",
            _ => "",
        };
        out.push(format!(
            "could not read /proc/<pid>/{what} of {} (permission denied): {lost}. Run as the \
             server's user or as root with CAP_SYS_PTRACE: `docker run --cap-add SYS_PTRACE`, \
             or `securityContext.capabilities.add: [SYS_PTRACE]` in Kubernetes",
            pid_list(&pids)
        ));
    }
    out
}

fn pid_list(pids: &[i32]) -> String {
    const MAX: usize = 10;
    let mut s: Vec<String> = pids.iter().take(MAX).map(|p| p.to_string()).collect();
    if pids.len() > MAX {
        s.push(format!("and {} more", pids.len() - MAX));
    }
    format!(
        "pid{} {}",
        if pids.len() == 1 { "" } else { "s" },
        s.join(", ")
    )
}

/// Whether a reason for unreadable names says the kernel refused the read.
pub(super) fn refused(why: &str) -> bool {
    why.contains("ermission") || why.contains("not permitted")
}
