//! FC106 sdk-too-old-for-fork.

use crate::diagnose::evidence::{thread, version_lt, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::ThreadKind;

pub static RULE: Rule = Rule {
    code: "FC106",
    slug: "sdk-too-old-for-fork",
    severity: Severity::Error,
    summary: "SDK version without at-fork re-creation for a signal in use",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
The master set up an OpenTelemetry SDK whose version cannot re-create, after fork, the exporter
thread of a signal it uses: spans and logs before 1.7.0, metrics before 1.9.0.

## Why telemetry breaks
Only the forking thread survives fork(). From 1.7.0 (BatchSpanProcessor, BatchLogRecordProcessor)
and 1.9.0 (PeriodicExportingMetricReader) the SDK registers os.register_at_fork hooks that start a
new thread in the child; older versions do not, so every worker records into a queue nobody
drains: measured with 1.6.2, 0 of 40 worker spans arrived.

## How it is detected
The opentelemetry_sdk-<version>.dist-info in the site-packages the master's interpreter uses
(found from its environment, executable and mapped files), and the master's exporter threads by
kind. Only when at least one worker is a fork of the master (spawned workers inherit nothing).

## Fix
Upgrade the SDK, and set it up after fork, which works on every version.

## Known false alarms
None known: with an SDK this old set up in the master, the workers' signal is lost.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#exporter-thread-missing-in-workers (what was measured with SDK 1.6.2)
- docs/failure-modes.md#thread-names-by-sdk-version (which version re-creates which thread)
- https://github.com/open-telemetry/opentelemetry-python/issues/1567 (batch export in forked children, before the SDK re-created its threads)
- https://github.com/open-telemetry/opentelemetry-python/issues/2266 (batch span processor under uWSGI, which forks without the at-fork hooks)
";

/// The first SDK version that re-creates each kind's thread after fork.
const MIN_VERSION: [(ThreadKind, &str); 3] = [
    (ThreadKind::SpanProcessor, "1.7.0"),
    (ThreadKind::LogProcessor, "1.7.0"),
    (ThreadKind::MetricReader, "1.9.0"),
];

fn check(facts: &Facts) -> Vec<Finding> {
    let Some((snap, master)) = facts.tree_master() else {
        return Vec::new();
    };
    let Some(version) = master.python.sdk_version.as_deref() else {
        return Vec::new();
    };
    if !snap.master_forked() {
        return Vec::new();
    }
    let mut evidence = Vec::new();
    let mut needed = "1.7.0";
    for (kind, min) in MIN_VERSION {
        let Some(t) = master.threads_of(kind).next() else {
            continue;
        };
        if version_lt(version, min) == Some(true) {
            evidence.push(format!(
                "{} runs {}; opentelemetry-sdk {} re-creates it after fork only from {}",
                who(master),
                thread(t),
                version,
                min
            ));
            if version_lt(needed, min) == Some(true) {
                needed = min;
            }
        }
    }
    if evidence.is_empty() {
        return Vec::new();
    }
    let site = master
        .python
        .site_packages
        .as_deref()
        .unwrap_or("site-packages");
    evidence.insert(
        0,
        format!("opentelemetry-sdk {version} (opentelemetry_sdk-{version}.dist-info in {site})"),
    );
    let workers: Vec<i32> = snap.forked_workers().map(|w| w.pid).collect();
    vec![RULE.finding(
        std::iter::once(master.pid).chain(workers).collect(),
        format!("opentelemetry-sdk {version} set up before fork: workers cannot export"),
        evidence,
        fix::upgrade_sdk(needed, snap.framework),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn tree(version: &str, master: Vec<crate::snapshot::Thread>) -> Snapshot {
        let mut snap = gunicorn(master, vec![main_only(200), main_only(300)]);
        snap.processes[0].python.sdk_version = Some(version.into());
        snap
    }

    #[test]
    fn sdk_1_6_with_span_processor_in_master_is_flagged() {
        let master = vec![
            th(100, "MainThread", ThreadKind::Other),
            th(101, "OtelBatchSpanProcessor", ThreadKind::SpanProcessor),
        ];
        let found = check(&Facts::from_snapshot(&tree("1.6.2", master)));
        assert_eq!(codes(&found), vec!["FC106"]);
        assert_eq!(found[0].pids, vec![100, 101, 102]);
        assert!(found[0].fix.contains(">=1.7.0"));
    }

    #[test]
    fn metric_reader_needs_1_9() {
        let found = check(&Facts::from_snapshot(&tree("1.8.0", sdk_threads(100))));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].evidence.len(), 2);
        assert!(found[0].fix.contains(">=1.9.0"));
    }

    #[test]
    fn current_sdk_or_init_after_fork_passes() {
        assert!(check(&Facts::from_snapshot(&tree("1.45.2", sdk_threads(100)))).is_empty());
        assert!(check(&Facts::from_snapshot(&tree("1.6.2", main_only(100)))).is_empty());
    }
}
