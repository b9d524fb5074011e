//! FC307 thread-names-unread.

use crate::diagnose::evidence::{names_known, server_processes, version_lt, who};
use crate::diagnose::{Facts, Finding, Rule, Severity};
use crate::snapshot::{Process, NAMES_NOT_REQUESTED};

pub static RULE: Rule = Rule {
    code: "FC307",
    slug: "thread-names-unread",
    severity: Severity::Error,
    summary: "the thread names of the server's Python processes could not be read from their interpreter: the check did not see the SDK's threads it judges",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
`check` could read the server's processes, but not the names of their Python threads: the
interpreter keeps them in its own memory (before Python 3.14, `/proc` shows every thread as
`python`), and this interpreter's could not be read or its threads not matched to the
operating system's. Python 2 (py-spy finds no thread names in it) is the case measured; PyPy,
and a CPython whose memory does not have the layout the check reads (a build it does not know,
glibc's `struct pthread` not found before 3.11), are the others.

## Why telemetry breaks
Nothing breaks in the server; the check is blind to the SDK. The exporter threads' names are
what tells a master that exports for its workers (FC101), a worker whose SDK threads died in the
fork (FC102, FC108) or a reader that stopped (FC104). Without them none of these can arise, and
a report without findings would read as a pass.

## How it is detected
A master or worker (every process of the tree when none could be told apart) that is Python,
whose thread names were not read (`python.names_read` false, `python.names_error` says why),
that shows no SDK thread name in `/proc` either, and that was still there at the end of the
window. Not for Python 3.14 and later, whose threads carry their names in `/proc`; not for a
process whose memory was refused (FC305 says that); not with `--no-python-names`, which asks for
the check without them; not for `run` and `receive --pid`, which judge what each worker
exports.

## Fix
Judge the server by what it exports, which needs no thread names:
- `otel-forkcheck run -- <server command>` starts the server, drives it and judges what every
  worker sends;
- `otel-forkcheck receive --pid <master>` does the same for a server you start, with its
  exporters pointed at the receiver;
- or check the same application on CPython 3.6 or later, whose thread names the check reads.

## Known false alarms
A server with no OpenTelemetry SDK at all fails too: without the names the check cannot tell.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#thread-names-that-could-not-be-read (what was measured)
- https://docs.python.org/3/library/threading.html#threading.Thread.name (names live in the interpreter)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    // A receiver judges what each worker exports.
    if facts.ledger.is_some() {
        return Vec::new();
    }
    let blind: Vec<&Process> = server_processes(snap).filter(|p| unread(p)).collect();
    if blind.is_empty() {
        return Vec::new();
    }
    let evidence = blind
        .iter()
        .map(|p| {
            format!(
                "{}: Python {}: {}",
                who(p),
                p.python.version.as_deref().unwrap_or("(version unknown)"),
                p.python.names_error.as_deref().unwrap_or_default()
            )
        })
        .collect();
    vec![RULE.finding(
        blind.iter().map(|p| p.pid).collect(),
        format!(
            "the thread names of {} of the server's Python processes could not be read: the \
             check did not see the SDK's threads",
            blind.len()
        ),
        evidence,
        "Judge the server by what it exports, which needs no thread names: \
         `otel-forkcheck run -- <server command>`, or `otel-forkcheck receive --pid <master>` \
         with the server's exporters pointed at it."
            .to_string(),
    )]
}

/// A Python process still there whose thread names were sought and not read, for a reason
/// other than a refusal, on an interpreter that does not name threads in /proc.
fn unread(p: &Process) -> bool {
    let py = &p.python;
    let refused = p
        .unreadable
        .iter()
        .any(|u| matches!(u.as_str(), "memory" | "exe" | "maps"));
    let named_in_comm = py.version.as_deref().and_then(|v| version_lt(v, "3.14")) == Some(false);
    !p.gone
        && !py.not_python
        && !names_known(p)
        && !refused
        && !named_in_comm
        && py
            .names_error
            .as_deref()
            .is_some_and(|e| e != NAMES_NOT_REQUESTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    /// A master whose SDK threads were not placed on OS threads (glibc's `struct pthread` not
    /// found: another C library) and two workers.
    fn unnamed(why: &str) -> Snapshot {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200), main_only(201)]);
        for p in snap.processes.iter_mut() {
            p.python.names_read = false;
            p.python.names_error = Some(why.into());
            p.python.version = Some("3.9.18".into());
            for t in p.threads.iter_mut() {
                t.name = String::new();
                t.kind = ThreadKind::Other;
                t.comm = "python".into();
            }
        }
        snap
    }

    const WHY: &str = "Python 3.9.18 records no OS thread ids before 3.11 and no offset in the C \
                       library's struct pthread (at each Python thread's ident) holds this \
                       process's thread ids: 4 Python thread name(s) could not be matched to OS \
                       threads";

    #[test]
    fn an_interpreter_whose_names_were_not_read_fails_the_check_by_pid() {
        let snap = unnamed(WHY);
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC307"]);
        assert_eq!(found[0].pids, vec![100, 101, 102]);
        assert_eq!(found[0].evidence.len(), 3);
        assert!(
            found[0].evidence[0]
                .starts_with("pid 100 (master): Python 3.9.18: Python 3.9.18 records"),
            "{:?}",
            found[0].evidence
        );
    }

    #[test]
    fn names_read_or_shown_in_proc_leave_it_silent() {
        let mut snap = unnamed(WHY);
        for p in snap.processes.iter_mut() {
            p.python.names_read = true;
        }
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // Python 3.14 names threads in /proc.
        let mut snap = unnamed(WHY);
        for p in snap.processes.iter_mut() {
            p.python.version = Some("3.14.0".into());
        }
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // An SDK thread name in comm (the SDK named its threads natively).
        let mut snap = unnamed(WHY);
        snap.processes[1].threads[0].comm = "OtelBatchSpanRe".into();
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(found[0].pids, vec![100, 102]);
    }

    #[test]
    fn refusals_no_python_names_gone_and_not_python_are_not_this() {
        let mut snap = unnamed("permission denied");
        snap.processes[0].unreadable = vec!["memory".into()];
        snap.processes[1].gone = true;
        snap.processes[2].python.not_python = true;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        let snap = unnamed(NAMES_NOT_REQUESTED);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    #[test]
    fn helpers_count_only_when_no_role_is_known_and_a_ledger_judges_instead() {
        let mut snap = unnamed(WHY);
        snap.processes[2].role = Role::Other;
        assert_eq!(check(&Facts::from_snapshot(&snap))[0].pids, vec![100, 101]);
        for p in snap.processes.iter_mut() {
            p.role = Role::Other;
        }
        assert_eq!(
            check(&Facts::from_snapshot(&snap))[0].pids,
            vec![100, 101, 102]
        );
        let ledger = crate::ledger::Ledger::default();
        assert!(check(&Facts::new(Some(&snap), Some(&ledger))).is_empty());
    }
}
