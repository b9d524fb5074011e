//! FC303 uwsgi-fork-hooks-off.

use crate::diagnose::evidence::{thread, who};
use crate::diagnose::{fix, Facts, Finding, Rule, Severity};
use crate::snapshot::Framework;

pub static RULE: Rule = Rule {
    code: "FC303",
    slug: "uwsgi-fork-hooks-off",
    severity: Severity::Error,
    summary: "uWSGI without `lazy-apps`, `--py-call-osafterfork` or `@postfork` init",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
uWSGI loads the app in the master and forks workers in C without running Python's at-fork hooks,
and the SDK was set up in the master.

## Why telemetry breaks
No os.register_at_fork hook runs: the metric reader is never re-created (worker metrics never
arrive), span and log processors come back only lazily, the identity stays the master's, and each
worker's stop blocks about 30 s joining a thread that does not exist. --enable-threads is a no-op
stub in 2.0.31 and does not help.

## How it is detected
uWSGI options on the master's command line and in the .ini it names: none of lazy-apps, lazy,
py-call-osafterfork, py-call-uwsgi-fork-hooks; and OpenTelemetry exporter threads in the master.

## Fix
lazy-apps = true, or set the SDK up in a uwsgidecorators.postfork function.

## Known false alarms
Options from a file included by the ini (`ini = ...`, `include`), from a config that is not an
.ini, or in an ini named by a relative path after uWSGI's `chdir` when the launcher set no `PWD`,
are not read (UWSGI_LAZY_APPS-style variables are).
Precedence: nothing silences it.

## References
- docs/failure-modes.md#uwsgi-without-fork-hooks (what was measured)
- docs/failure-modes.md#ghost-threads (the master's threads listed in workers)
- https://uwsgi-docs.readthedocs.io/en/latest/articles/TheArtOfGracefulReloading.html#preforking-vs-lazy-apps-vs-lazy (uWSGI: preforking vs lazy-apps)
- https://uwsgi-docs.readthedocs.io/en/latest/PythonDecorators.html#uwsgidecorators.postfork (uWSGI postfork decorator)
- https://github.com/open-telemetry/opentelemetry-python/issues/2266 (batch span processor under uWSGI, which forks without the at-fork hooks)
- https://github.com/open-telemetry/opentelemetry-python-contrib/issues/1652 (metrics not exported under uWSGI)
";

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    if snap.framework != Framework::Uwsgi {
        return Vec::new();
    }
    let Some(master) = snap.master() else {
        return Vec::new();
    };
    if !master.env.uwsgi_fork_options.is_empty() {
        return Vec::new();
    }
    let Some(t) = master.exporter_threads().next() else {
        return Vec::new();
    };
    vec![RULE.finding(
        vec![master.pid],
        "uWSGI forks without Python's fork hooks and the SDK runs in the master".to_string(),
        vec![
            format!(
                "{}: no lazy-apps, py-call-osafterfork or py-call-uwsgi-fork-hooks in its options ({})",
                who(master),
                master.cmdline.join(" ")
            ),
            format!("{} runs {}", who(master), thread(t)),
        ],
        fix::init_after_fork(snap.framework),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn uwsgi(options: &[&str]) -> Snapshot {
        let mut snap = gunicorn(sdk_threads(100), vec![main_only(200)]);
        snap.framework = Framework::Uwsgi;
        snap.processes[0].env.uwsgi_fork_options = options.iter().map(|s| s.to_string()).collect();
        snap
    }

    #[test]
    fn uwsgi_without_hooks_is_flagged() {
        let found = check(&Facts::from_snapshot(&uwsgi(&[])));
        assert_eq!(codes(&found), vec!["FC303"]);
        assert_eq!(found[0].pids, vec![MASTER]);
    }

    #[test]
    fn lazy_apps_passes() {
        assert!(check(&Facts::from_snapshot(&uwsgi(&["lazy-apps"]))).is_empty());
    }
}
