//! FC301 auto-instrumentation-in-master.

use crate::diagnose::evidence::{version_lt, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};

pub static RULE: Rule = Rule {
    code: "FC301",
    slug: "auto-instrumentation-in-master",
    severity: Severity::Warning,
    summary: "`opentelemetry-instrument` initialises the SDK in the master",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The server was started under `opentelemetry-instrument`, which sets the SDK up in the master at
interpreter start, before any worker is forked, even without --preload.

## Why telemetry breaks
Everything FC101 says applies. With SDK 1.44+ the threads are re-created and the resource identity
refreshed in each worker, so it mostly works; with older SDKs all workers share one identity
(process.pid / service.instance.id of the master) and backends merge their series.

## How it is detected
PYTHONPATH in /proc/<pid>/environ of the master contains
opentelemetry/instrumentation/auto_instrumentation (where the sitecustomize.py lives), and at
least one worker is a fork of the master. Spawned workers (uvicorn, Hypercorn) inherit PYTHONPATH
and run the distro's set-up themselves, which works.

## Fix
Run the server without opentelemetry-instrument and set the SDK up after fork; for gunicorn
call `opentelemetry.instrumentation.auto_instrumentation.initialize()` (or your own set-up) in
post_fork. Or upgrade to SDK 1.44+ and check identities with `otel-forkcheck receive`.

## Known false alarms
With SDK 1.44 or newer and the HTTP exporter this set-up works
(docs/failure-modes.md#auto-instrumentation-in-the-master); the warning stays because the master
still runs exporter threads.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#auto-instrumentation-in-the-master (what was measured)
- docs/failure-modes.md#master-identity-in-every-worker (older SDKs)
- https://github.com/open-telemetry/opentelemetry-python-contrib/issues/2086 (auto-instrumenting a gunicorn application)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    if !master.env.auto_instrumentation || !snap.master_forked() {
        return Vec::new();
    }
    let mut evidence = vec![format!(
        "{}: PYTHONPATH={} ({})",
        who(master),
        master.env.pythonpath.as_deref().unwrap_or(""),
        master.env.place(master.pid)
    )];
    if let Some(v) = master.python.sdk_version.as_deref() {
        evidence.push(match version_lt(v, "1.44.0") {
            Some(true) => format!(
                "opentelemetry-sdk {v} does not refresh the resource identity after fork (1.44+ does): workers share the master's"
            ),
            _ => format!("opentelemetry-sdk {v} re-creates threads and identity after fork"),
        });
    }
    vec![RULE.finding(
        vec![master.pid],
        format!(
            "the master (pid {}) runs under opentelemetry-instrument: the SDK is set up before fork",
            master.pid
        ),
        evidence,
        fix::init_after_fork(snap.framework),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn auto_instrumentation_in_master_names_old_sdk_identity_risk() {
        let mut snap = gunicorn(sdk_threads(100), vec![sdk_threads(200)]);
        let m = &mut snap.processes[0];
        m.env.auto_instrumentation = true;
        m.env.pythonpath = Some(
            "/v/lib/python3.11/site-packages/opentelemetry/instrumentation/auto_instrumentation"
                .into(),
        );
        m.python.sdk_version = Some("1.42.1".into());
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC301"]);
        assert_eq!(found[0].pids, vec![MASTER]);
        assert!(found[0].evidence[1].contains("does not refresh"));
    }

    #[test]
    fn plain_start_passes() {
        let snap = gunicorn(sdk_threads(100), vec![sdk_threads(200)]);
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
