//! Which finding silences which: the table, its invariants over the catalogue, and scenarios.

use super::*;
use crate::ledger::build::*;
use crate::ledger::{Served, StopRecord};
use crate::snapshot::{Syscall, ThreadKind};

/// The precedence table, as data: which codes silence which. Changing it changes verdicts'
/// wording (never their failing), so it is spelled out here.
#[test]
fn the_precedence_table() {
    let table: Vec<(&str, Vec<&str>)> = rules::ALL
        .iter()
        .map(|r| (r.code, r.silenced_by.to_vec()))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    assert_eq!(
        table,
        vec![
            ("FC201", vec!["FC104", "FC108", "FC208", "FC209", "FC214"]),
            ("FC208", vec!["FC104", "FC214"]),
            ("FC209", vec!["FC104", "FC108", "FC208", "FC214"]),
            ("FC306", vec!["FC107", "FC305"]),
        ]
    );
}

/// Over the whole catalogue: a silencer exists, is not the rule itself, is at least as
/// severe (so a failing verdict can never become a pass), is named in the silenced rule's
/// "Known false alarms", and what it is silenced by silences the rule too (so the order in
/// which silencers are themselves silenced cannot matter); and there is no cycle.
#[test]
fn every_silencer_is_as_severe_documented_transitive_and_acyclic() {
    for r in rules::ALL {
        let known = r
            .doc
            .split_once("## Known false alarms")
            .and_then(|(_, rest)| rest.split_once("## References"))
            .map_or("", |(k, _)| k);
        assert!(
            known.contains("Precedence:"),
            "{}: its Known false alarms say nothing about precedence",
            r.code
        );
        assert_eq!(
            r.silenced_by.is_empty(),
            known.contains("Precedence: nothing silences it"),
            "{}: its doc and its silenced_by disagree",
            r.code
        );
        for c in r.silenced_by {
            let g = rule(c).unwrap_or_else(|| panic!("{}: silenced by unknown {c}", r.code));
            assert_ne!(g.code, r.code, "{} silences itself", r.code);
            assert!(
                g.severity >= r.severity,
                "{} ({:?}) is silenced by {c} ({:?}): a pass could hide a failure",
                r.code,
                r.severity,
                g.severity
            );
            assert!(
                known.contains(c),
                "{}: its Known false alarms do not say that {c} silences it",
                r.code
            );
            for d in g.silenced_by {
                assert!(
                    r.silenced_by.contains(d),
                    "{} is silenced by {c}, which {d} silences: {} must list {d} too",
                    r.code,
                    r.code
                );
            }
        }
    }
    let order = precedence_order(rules::ALL);
    assert_eq!(order.len(), rules::ALL.len());
    for (i, r) in order.iter().enumerate() {
        for c in r.silenced_by {
            let at = order.iter().position(|o| o.code == *c).unwrap();
            assert!(at < i, "{} runs before its silencer {c}: a cycle", r.code);
        }
    }
}

// Synthetic rules for the mechanics of silencing.
fn one(rule: &Rule, pids: Vec<i32>, signals: &[(i32, Signal)]) -> Finding {
    rule.finding(pids, rule.code.into(), vec![], String::new())
        .with_signals(
            signals
                .iter()
                .map(|(pid, signal)| PidSignal {
                    pid: *pid,
                    signal: *signal,
                })
                .collect(),
        )
}
static LOUD: Rule = Rule {
    code: "FC901",
    slug: "loud",
    severity: Severity::Error,
    summary: "",
    doc: "",
    silenced_by: &[],
    check: |_| vec![one(&LOUD, vec![7], &[(7, Signal::Metrics)])],
};
static QUIET: Rule = Rule {
    code: "FC902",
    slug: "quiet",
    severity: Severity::Warning,
    summary: "",
    doc: "",
    silenced_by: &[],
    check: |_| {
        vec![
            one(&QUIET, vec![7, 8], &[]),
            one(&QUIET, vec![7], &[(7, Signal::Traces)]),
        ]
    },
};
/// Signal-level, silenced by LOUD and QUIET; also reports what it was told is explained.
static PAIRS: Rule = Rule {
    code: "FC903",
    slug: "pairs",
    severity: Severity::Error,
    summary: "",
    doc: "",
    silenced_by: &["FC901", "FC902"],
    check: |facts| {
        let mut f = one(
            &PAIRS,
            vec![7, 8],
            &[
                (7, Signal::Metrics),
                (7, Signal::Traces),
                (8, Signal::Metrics),
            ],
        );
        f.evidence = facts
            .explained
            .iter()
            .map(|e| format!("told {} {}", e.pid, e.signal.as_str()))
            .collect();
        vec![f]
    },
};
/// Process-level, silenced by LOUD (error) and QUIET (a warning: must not count).
static WHOLE: Rule = Rule {
    code: "FC904",
    slug: "whole",
    severity: Severity::Error,
    summary: "",
    doc: "",
    silenced_by: &["FC901", "FC902"],
    check: |_| {
        vec![
            one(&WHOLE, vec![7], &[]),
            one(&WHOLE, vec![7, 8], &[]),
            one(&WHOLE, vec![], &[]),
        ]
    },
};
/// A warning silenced by a warning.
static SOFT: Rule = Rule {
    code: "FC905",
    slug: "soft",
    severity: Severity::Warning,
    summary: "",
    doc: "",
    silenced_by: &["FC902"],
    check: |_| vec![one(&SOFT, vec![8], &[])],
};

#[test]
fn silencing_drops_only_what_an_as_severe_silencer_names() {
    // Silenced rules listed first: the order of the catalogue does not matter.
    let all: &[&Rule] = &[&PAIRS, &WHOLE, &SOFT, &LOUD, &QUIET];
    let found = run_rules(all, &Facts::new(None, None));
    let of = |code: &str| -> Vec<&Finding> { found.iter().filter(|f| f.code == code).collect() };
    // PAIRS: (7, metrics) named by LOUD goes; (7, traces) is named only by a warning: stays.
    let pairs = of("FC903");
    assert_eq!(pairs.len(), 1);
    assert_eq!(
        pairs[0].signals,
        vec![
            PidSignal {
                pid: 7,
                signal: Signal::Traces
            },
            PidSignal {
                pid: 8,
                signal: Signal::Metrics
            },
        ]
    );
    assert_eq!(pairs[0].pids, vec![7, 8]);
    // The rule was told only what the error silencer explains.
    assert_eq!(pairs[0].evidence[0], "told 7 metrics");
    assert!(pairs[0].evidence.iter().any(|e| e.contains("FC901 loud")));
    // WHOLE: the pid-7 finding goes (LOUD names 7); 7+8 stays (nobody as severe names 8);
    // a finding with no pid is never silenced.
    let whole: Vec<Vec<i32>> = of("FC904").iter().map(|f| f.pids.clone()).collect();
    assert_eq!(whole, vec![vec![7, 8], vec![]]);
    // SOFT: a warning silenced by a warning naming its pid.
    assert!(of("FC905").is_empty());
    assert_eq!(of("FC901").len(), 1);
    assert_eq!(of("FC902").len(), 2);
    // Findings come out in the order of the rules given.
    let codes: Vec<&str> = found.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(
        codes,
        vec!["FC903", "FC904", "FC904", "FC901", "FC902", "FC902"]
    );
}

#[test]
fn a_signal_level_finding_loses_a_pid_whose_pairs_all_went() {
    let f = one(
        &PAIRS,
        vec![7, 8],
        &[(7, Signal::Metrics), (8, Signal::Logs)],
    );
    let g = one(&LOUD, vec![7], &[(7, Signal::Metrics)]);
    let out = silence(f.clone(), &[&g]).unwrap();
    assert_eq!(out.pids, vec![8]);
    assert_eq!(out.signals.len(), 1);
    let h = one(&LOUD, vec![8], &[(8, Signal::Logs)]);
    assert!(silence(f.clone(), &[&g, &h]).is_none());
    // A process-level silencer does not silence signal-level pairs.
    let p = one(&LOUD, vec![7, 8], &[]);
    assert_eq!(silence(f, &[&p]).unwrap().signals.len(), 2);
}

/// A snapshot of a gunicorn master and workers 101, 102 (SDK threads named), 102's metric
/// reader stuck on a futex with no timeout; a ledger where 101 exported everything after
/// the stop and nothing ever came from 102, though both served requests.
fn stuck_reader_then_stop() -> (crate::snapshot::Snapshot, Ledger) {
    use crate::diagnose::testkit::{gunicorn, main_only, sdk_threads};
    let mut snap = gunicorn(main_only(100), vec![sdk_threads(200), sdk_threads(300)]);
    let reader = &mut snap.processes[2].threads[1];
    assert_eq!(reader.kind, ThreadKind::MetricReader);
    let futex = Some(Syscall {
        nr: 202,
        name: "futex".into(),
        args: vec![0x7f00, 0x189, 0, 0, 0, 0xffffffff],
    });
    reader.syscall = futex.clone();
    reader.syscall_end = futex;
    reader.wakeups_end = Some(reader.wakeups);
    let w1 = proc(101, &[], 0);
    let mut b = B::new();
    let c1 = b.conn(std::slice::from_ref(&w1));
    for s in Signal::ALL {
        b.sends(
            c1,
            std::slice::from_ref(&w1),
            s,
            id("a", Some(101), None),
            3,
            10_400,
        );
    }
    let mut l = b.at(12_000);
    l.expected_signals = Signal::ALL.to_vec();
    for (pid, n) in [(101, 14), (102, 16)] {
        l.served.insert(
            pid,
            Served {
                requests: n,
                first_ms: 1_000,
                last_ms: 5_000,
            },
        );
        l.activity
            .insert(pid, vec![format!("served {n} request(s)")]);
    }
    l.stop = Some(StopRecord {
        master: 100,
        requested_ms: 10_000,
        graceful: true,
        waited_ms: 900,
        notes: vec![],
        ended: None,
        exits: Vec::new(),
    });
    (snap, l)
}

#[test]
fn a_stuck_reader_silences_lost_metrics_but_not_lost_traces() {
    let (snap, l) = stuck_reader_then_stop();
    let facts = Facts::new(Some(&snap), Some(&l));
    // Each rule on its own: FC104 names 102's metrics, FC209 all three of its signals,
    // FC201 its traces and logs (other workers sent them, 10 s passed).
    let raw = |code: &str| (rule(code).unwrap().check)(&facts);
    assert!(raw("FC104")[0].names_signal(102, Signal::Metrics));
    let fc209 = raw("FC209");
    assert_eq!(fc209.len(), 1);
    assert_eq!(fc209[0].signals.len(), 3);
    assert!(raw("FC201")[0].names_signal(102, Signal::Traces));

    let found = diagnose(&facts);
    let codes: Vec<&str> = found.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, vec!["FC104", "FC209"], "{found:#?}");
    let fc209 = &found[1];
    assert_eq!(fc209.pids, vec![102]);
    assert!(!fc209.names_signal(102, Signal::Metrics));
    assert!(fc209.names_signal(102, Signal::Traces));
    assert!(fc209.names_signal(102, Signal::Logs));
    assert!(
        fc209.title.contains("their traces, logs never arrived"),
        "{}",
        fc209.title
    );
    // Every (pid, signal) that did not arrive is still named by some finding.
    for s in Signal::ALL {
        assert!(found.iter().any(|f| f.names_signal(102, s)), "{s:?}");
        assert!(!found.iter().any(|f| f.names_signal(101, s)));
    }
}

/// Over the catalogue, on a scenario where several rules speak about the same data:
/// precedence changes the wording, never the verdict, and every pair a raw finding named
/// stays named by a finding at least as severe.
#[test]
fn precedence_never_loses_a_pair_or_weakens_the_verdict() {
    let (snap, l) = stuck_reader_then_stop();
    let facts = Facts::new(Some(&snap), Some(&l));
    let raw: Vec<Finding> = rules::ALL.iter().flat_map(|r| (r.check)(&facts)).collect();
    let kept = diagnose(&facts);
    let worst = |fs: &[Finding]| fs.iter().map(|f| f.severity).max();
    assert_eq!(worst(&raw), worst(&kept));
    for f in &raw {
        for ps in &f.signals {
            assert!(
                kept.iter()
                    .any(|g| g.severity >= f.severity && g.names_signal(ps.pid, ps.signal)),
                "{} {:?} named by nothing after precedence",
                f.code,
                ps
            );
        }
    }
}
