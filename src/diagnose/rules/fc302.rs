//! FC302 preload-with-sdk.

use crate::diagnose::evidence::{thread, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::Framework;

pub static RULE: Rule = Rule {
    code: "FC302",
    slug: "preload-with-sdk",
    severity: Severity::Warning,
    summary: "gunicorn `--preload`/`preload_app` with the SDK set up at import",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
gunicorn loads the application in the master (--preload or preload_app = True) and the
application sets the OpenTelemetry SDK up when it is imported, so the SDK runs in the master.

## Why telemetry breaks
See FC101: workers inherit the master's connections, locks, identity and pre-fork data.

## How it is detected
--preload on the master's command line, preload_app = True in the config file named by -c, or
--preload in GUNICORN_CMD_ARGS; together with OpenTelemetry exporter threads in the master.

## Fix
Keep --preload if you need it, but move the SDK set-up out of the import path into post_fork:

    # gunicorn.conf.py
    preload_app = True

    def post_fork(server, worker):
        from otel_setup import setup_telemetry
        setup_telemetry()

## Known false alarms
None: with preload and exporter threads in the master, the SDK was set up before fork.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#sdk-set-up-after-fork (the fix)
- docs/failure-modes.md#exporter-thread-missing-in-workers (old SDKs)
- docs/failure-modes.md#metric-reader-stuck-on-an-inherited-lock (inherited locks)
- docs/failure-modes.md#inherited-exporter-connection (inherited connections)
- https://opentelemetry-python.readthedocs.io/en/latest/examples/fork-process-model/README.html (the SDK's guide to forking servers)
- https://docs.gunicorn.org/en/stable/settings.html#post-fork (gunicorn post_fork)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    if snap.framework != Framework::Gunicorn {
        return Vec::new();
    }
    let Some(master) = snap.master() else {
        return Vec::new();
    };
    let (Some(preload), Some(t)) = (
        master.env.preload.as_deref(),
        master.exporter_threads().next(),
    ) else {
        return Vec::new();
    };
    vec![RULE.finding(
        vec![master.pid],
        "gunicorn preloads the app and the app sets the SDK up at import".to_string(),
        vec![
            format!("{}: preload from {preload}", who(master)),
            format!("{} runs {}", who(master), thread(t)),
        ],
        fix::init_after_fork(snap.framework),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    #[test]
    fn preload_with_sdk_in_master_is_flagged() {
        let mut snap = gunicorn(sdk_threads(100), vec![sdk_threads(200)]);
        snap.processes[0].env.preload = Some("--preload on the command line".into());
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC302"]);
        assert!(found[0].evidence[0].contains("--preload"));
    }

    #[test]
    fn preload_with_post_fork_init_passes() {
        let mut snap = gunicorn(main_only(100), vec![sdk_threads(200)]);
        snap.processes[0].env.preload = Some("preload_app = True in gunicorn.conf.py".into());
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
