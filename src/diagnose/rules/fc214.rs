//! FC214 exporter-aimed-elsewhere.

use std::collections::BTreeMap;

use crate::diagnose::evidence::batcher;
use crate::diagnose::{Facts, Finding, PidSignal, Rule, Severity};
use crate::ledger::{Ledger, Signal};
use crate::otlp::endpoint::{same_endpoint, signal_endpoint, SignalEndpoint};
use crate::snapshot::{Process, Role, Snapshot};

pub static RULE: Rule = Rule {
    code: "FC214",
    slug: "exporter-aimed-elsewhere",
    severity: Severity::Error,
    summary: "`run`: the server's code re-aimed its exporters away from the receiver `run` set",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
`run` started the server with the OTLP endpoint variables aimed at its own receiver, and the
server's code changed them: a process's environment, as its code left it, sends a signal
somewhere else (a collector chosen in a config file or in the app). What those processes export
never reaches `run`, so it cannot tell whether their telemetry works; whatever it would say
about their missing data (lost on exit, never exported) would be a guess.

## Why telemetry breaks
It does not, necessarily: the exports go where the code says. Settings kept next to the server
are common, e.g. `os.environ[\"OTEL_EXPORTER_OTLP_ENDPOINT\"] = \"http://collector:4318\"` in
gunicorn.conf.py, and an assignment wins over the environment the server was started with,
whoever started it. The same code in production ignores a deployment's own endpoint setting.

## How it is detected
Only by `otel-forkcheck run`, which records the endpoint variables it set. Each process's
environment is read from its memory, as its code left it (libc's `environ`, which
`os.environ[...] = ...` updates; not with `--no-python-names`, which reads no memory: then
/proc/<pid>/environ, as the process started). For each signal that is expected, arrived, or has
a batching thread in the tree, the endpoint the SDK takes from that environment (the signal's
own variable, else the generic one, else the default localhost:4318) is compared with the one
`run` set: another port, or another host than this machine's loopback, is elsewhere. Workers
are judged, and any other process that runs the signal's batching thread.

## Fix
Let the environment choose the collector, so that `run`, and any deployment, can aim the
exporters: `os.environ.setdefault(\"OTEL_EXPORTER_OTLP_ENDPOINT\", \"http://collector:4318\")`
instead of assigning it, and exporters built without `endpoint=` (they read
OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT).

## Known false alarms
None known: the finding states what the process's own environment says. An endpoint passed to
an exporter in code (`OTLPSpanExporter(endpoint=...)`) is not in the environment and not seen:
FC209 and FC201 then say that nothing arrived from any process.
Precedence: nothing silences it; FC201, FC208 and FC209 do not repeat the signals it names.

## References
- docs/failure-modes.md#exporters-aimed-elsewhere (how it shows, and the fix)
- https://opentelemetry.io/docs/specs/otel/protocol/exporter/ (the endpoint variables and their precedence)
";

/// Signals to compare: expected, arrived from anyone, or batched by a thread of the tree.
fn compared(snap: &Snapshot, ledger: &Ledger) -> Vec<Signal> {
    Signal::ALL
        .into_iter()
        .filter(|s| {
            ledger.expected_signals.contains(s)
                || ledger.totals.get(*s).any()
                || snap.processes.iter().any(|p| batches(p, *s))
        })
        .collect()
}

fn batches(p: &Process, s: Signal) -> bool {
    p.threads.iter().any(|t| t.kind == batcher(s))
}

/// Where one group of processes sends: the endpoint and what in their environment says so.
type Aim = (String, u16, String);

fn check(f: &Facts) -> Vec<Finding> {
    let (Some(snap), Some(ledger)) = (f.snapshot, f.ledger) else {
        return Vec::new();
    };
    if ledger.endpoints_set.is_empty() {
        return Vec::new();
    }
    let set: Vec<(String, String)> = ledger
        .endpoints_set
        .iter()
        .map(|e| (e.var.clone(), e.value.clone()))
        .collect();
    let mut aims: BTreeMap<Aim, Vec<PidSignal>> = BTreeMap::new();
    // run's endpoint -> the variables that set it, for the signals sent elsewhere.
    let mut run_set: BTreeMap<(String, u16), Vec<String>> = BTreeMap::new();
    for s in compared(snap, ledger) {
        let Some(SignalEndpoint {
            host: rh,
            port: rp,
            from: Some((rvar, rval)),
        }) = signal_endpoint(&set, s)
        else {
            continue;
        };
        let mut any = false;
        for p in &snap.processes {
            if !p.env.readable || !(p.role == Role::Worker || batches(p, s)) {
                continue;
            }
            let Some(SignalEndpoint {
                host: h,
                port,
                from,
            }) = signal_endpoint(&p.env.otel, s)
            else {
                continue;
            };
            if same_endpoint((&h, port), (&rh, rp)) {
                continue;
            }
            let said = match from {
                Some((var, value)) => format!("{var}={value}"),
                None => "no endpoint variable left (the SDK's default)".into(),
            };
            let read = match p.env.from_memory {
                true => "in their environment as their code left it (read from memory)",
                false => "in /proc/<pid>/environ",
            };
            aims.entry((h, port, format!("{said} {read}")))
                .or_default()
                .push(PidSignal {
                    pid: p.pid,
                    signal: s,
                });
            any = true;
        }
        if any {
            run_set
                .entry((rh, rp))
                .or_default()
                .push(format!("{rvar}={rval}"));
        }
    }
    if aims.is_empty() {
        return Vec::new();
    }
    let mut evidence: Vec<String> = run_set
        .into_iter()
        .map(|((h, p), vars)| {
            format!(
                "run started the server with {}: its receiver at {h}:{p}",
                vars.join(", ")
            )
        })
        .collect();
    let mut pairs = Vec::new();
    let mut targets = Vec::new();
    for ((host, port, said), ps) in aims {
        let mut pids: Vec<i32> = ps.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        evidence.push(format!(
            "{} of pid(s) {pids:?} go to {host}:{port}: {said}",
            names(&ps)
        ));
        targets.push(format!("{host}:{port}"));
        pairs.extend(ps);
    }
    targets.dedup();
    let mut pids: Vec<i32> = pairs.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let title = format!(
        "the {} of {} process(es) go to {}, not to run's receiver: their code set the endpoint, \
         so run cannot judge them",
        names(&pairs),
        pids.len(),
        targets.join(", ")
    );
    vec![RULE
        .finding(pids, title, evidence, FIX.to_string())
        .with_signals(pairs)]
}

/// "metrics, traces": the signals named, in the catalogue's order.
fn names(pairs: &[PidSignal]) -> String {
    let mut s: Vec<Signal> = pairs.iter().map(|p| p.signal).collect();
    s.sort_unstable();
    s.dedup();
    s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

const FIX: &str = "\
Let the environment choose the collector, so that `run` (and any deployment) can aim the
exporters. Where the code sets the endpoint, keep a value that is already there:

    # gunicorn.conf.py, or wherever the code sets it
    import os
    os.environ.setdefault(\"OTEL_EXPORTER_OTLP_ENDPOINT\", \"http://collector:4318\")

instead of `os.environ[...] = ...`, and build exporters without `endpoint=`: they read
OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::{gunicorn, main_only, sdk_threads, MASTER};
    use crate::ledger::EndpointSet;

    const W1: i32 = MASTER + 1;
    const W2: i32 = MASTER + 2;

    fn set() -> Vec<EndpointSet> {
        let mut v = vec![EndpointSet {
            var: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            value: "http://127.0.0.1:39081".into(),
        }];
        for s in Signal::ALL {
            v.push(EndpointSet {
                var: crate::otlp::endpoint::signal_endpoint_var(s).into(),
                value: format!("http://127.0.0.1:39081{}", s.path()),
            });
        }
        v
    }

    /// Every process's environment: run's variables, then `extra` over them.
    fn tree(extra: &[(&str, &str)], from_memory: bool) -> Snapshot {
        let mut s = gunicorn(main_only(1), vec![sdk_threads(10), sdk_threads(20)]);
        for p in &mut s.processes {
            p.env.otel = set().into_iter().map(|e| (e.var, e.value)).collect();
            for (k, v) in extra {
                p.env.otel.retain(|(n, _)| n != k);
                p.env.otel.push((k.to_string(), v.to_string()));
            }
            p.env.from_memory = from_memory;
        }
        s
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::default();
        l.endpoints_set = set();
        l
    }

    #[test]
    fn an_endpoint_set_in_code_names_each_worker_and_signal_sent_elsewhere() {
        let snap = tree(
            &[(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://localhost:39555/v1/metrics",
            )],
            true,
        );
        let l = ledger();
        let found = check(&Facts::new(Some(&snap), Some(&l)));
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(f.code, "FC214");
        // The master runs no metric reader: not judged.
        assert_eq!(f.pids, vec![W1, W2]);
        let want: Vec<PidSignal> = [W1, W2]
            .map(|pid| PidSignal {
                pid,
                signal: Signal::Metrics,
            })
            .to_vec();
        assert_eq!(f.signals, want);
        assert!(f
            .title
            .contains("metrics of 2 process(es) go to 127.0.0.1:39555"));
        assert!(f.evidence.iter().any(|e| e.contains(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://localhost:39555/v1/metrics in their \
             environment as their code left it (read from memory)"
        )));
        assert_eq!(
            f.evidence[0],
            "run started the server with \
             OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://127.0.0.1:39081/v1/metrics: its receiver \
             at 127.0.0.1:39081"
        );
    }

    #[test]
    fn the_receiver_under_another_loopback_name_is_not_elsewhere() {
        let snap = tree(
            &[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://localhost:39081/v1/traces",
            )],
            true,
        );
        assert!(check(&Facts::new(Some(&snap), Some(&ledger()))).is_empty());
        // run's own variables, as /proc shows them: nothing.
        let snap = tree(&[], false);
        assert!(check(&Facts::new(Some(&snap), Some(&ledger()))).is_empty());
    }

    #[test]
    fn a_removed_signal_variable_falls_back_to_the_generic_one_then_the_default() {
        let mut snap = tree(&[], true);
        for p in &mut snap.processes {
            p.env.otel.retain(|(k, _)| !k.ends_with("_ENDPOINT"));
            p.env
                .otel
                .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "http://c:4318".into()));
        }
        let found = check(&Facts::new(Some(&snap), Some(&ledger())));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].signals.len(), 6, "3 signals of 2 workers");
        assert!(found[0].title.contains("go to c:4318"));
        for p in &mut snap.processes {
            p.env.otel.clear();
        }
        let found = check(&Facts::new(Some(&snap), Some(&ledger())));
        assert!(found[0]
            .evidence
            .iter()
            .any(|e| e.contains("the SDK's default")));
        assert!(found[0].title.contains("go to 127.0.0.1:4318"));
    }

    #[test]
    fn nothing_without_runs_endpoints_or_an_environment() {
        let snap = tree(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:1")], true);
        assert!(check(&Facts::new(Some(&snap), Some(&Ledger::default()))).is_empty());
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        let mut unread = snap.clone();
        unread
            .processes
            .iter_mut()
            .for_each(|p| p.env.readable = false);
        assert!(check(&Facts::new(Some(&unread), Some(&ledger()))).is_empty());
    }
}
