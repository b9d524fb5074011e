//! Pure rules from facts to findings, one rule per finding code, like a linter's catalogue.
//!
//! A rule reads [`Facts`] and returns findings; it does no I/O, so each is unit-tested on
//! recorded snapshots. Its long form (what `explain CODE` prints) is the `doc` text kept next to
//! it in its own file under `rules/`.

pub mod evidence;
pub mod fix;
pub mod rules;
#[cfg(test)]
pub mod testkit;

use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, Signal};
use crate::snapshot::{Framework, Process, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One diagnosis with its evidence and the fix for the detected framework.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub slug: String,
    pub severity: Severity,
    /// Every pid the finding is about, sorted.
    pub pids: Vec<i32>,
    pub title: String,
    /// What was read and where (pid, tid, file, value), one fact a line.
    pub evidence: Vec<String>,
    pub fix: String,
    /// The signals of a pid this finding says are missing or lost: what makes a per-worker,
    /// per-signal cell of `run`'s table (and its JUnit case) fail. Empty for findings about
    /// a process as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<PidSignal>,
}

/// One signal of one pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PidSignal {
    pub pid: i32,
    pub signal: Signal,
}

impl Finding {
    /// The same finding, naming the (pid, signal) pairs it is about.
    pub fn with_signals(mut self, mut signals: Vec<PidSignal>) -> Finding {
        signals.sort_unstable();
        signals.dedup();
        self.signals = signals;
        self
    }

    /// Whether this finding says `signal` of `pid` is missing or lost.
    pub fn names_signal(&self, pid: i32, signal: Signal) -> bool {
        self.signals
            .iter()
            .any(|s| s.pid == pid && s.signal == signal)
    }
}

/// Everything a rule may look at: the inspected tree, and what the receiver saw when there is
/// a receiver.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub snapshot: Option<&'a Snapshot>,
    pub ledger: Option<&'a Ledger>,
    /// The (pid, signal) pairs that findings of the codes this rule is silenced by already name
    /// (see [`Rule::silenced_by`]): filled by [`diagnose`] for each rule, empty otherwise. A
    /// rule about missing signals leaves these pairs out, so its title and evidence speak only
    /// of what it still says; [`diagnose`] drops them anyway.
    pub explained: &'a [PidSignal],
}

impl<'a> Facts<'a> {
    pub fn from_snapshot(snapshot: &'a Snapshot) -> Self {
        Facts {
            snapshot: Some(snapshot),
            ledger: None,
            explained: &[],
        }
    }

    /// Tree and/or receiver facts (either may be missing: `receive` without `--pid` has no tree).
    pub fn new(snapshot: Option<&'a Snapshot>, ledger: Option<&'a Ledger>) -> Self {
        Facts {
            snapshot,
            ledger,
            explained: &[],
        }
    }

    /// Whether a finding this rule yields to already names `signal` of `pid`.
    pub fn explained(&self, pid: i32, signal: Signal) -> bool {
        self.explained
            .iter()
            .any(|e| e.pid == pid && e.signal == signal)
    }

    pub fn framework(&self) -> Framework {
        self.snapshot.map(|s| s.framework).unwrap_or_default()
    }

    /// The inspected tree and its master, for the rules that judge the master.
    pub fn tree_master(&self) -> Option<(&'a Snapshot, &'a Process)> {
        let snap = self.snapshot?;
        Some((snap, snap.master()?))
    }
}

/// A rule of the catalogue: its stable identity, its long documentation, and its check.
pub struct Rule {
    pub code: &'static str,
    pub slug: &'static str,
    pub severity: Severity,
    /// One line, as in the catalogue table.
    pub summary: &'static str,
    /// The long form in fixed sections: What it means / Why telemetry breaks / How it is
    /// detected / Fix / Known false alarms / References.
    pub doc: &'static str,
    /// Precedence: codes whose findings make this rule's finding redundant where they name the
    /// same pid (for a finding that names (pid, signal) pairs: the same pair), because they
    /// explain the same missing data with a closer cause. Applied once, by [`diagnose`]; each
    /// rule's doc says it under "Known false alarms". Every code listed here has at least this
    /// rule's severity, so precedence never turns a failing verdict into a pass.
    pub silenced_by: &'static [&'static str],
    pub check: fn(&Facts) -> Vec<Finding>,
}

impl Rule {
    /// A finding of this rule; pids are sorted and deduplicated here so rules need not.
    pub fn finding(
        &self,
        mut pids: Vec<i32>,
        title: String,
        evidence: Vec<String>,
        fix: String,
    ) -> Finding {
        pids.sort_unstable();
        pids.dedup();
        Finding {
            code: self.code.to_string(),
            slug: self.slug.to_string(),
            severity: self.severity,
            pids,
            title,
            evidence,
            fix,
            signals: Vec::new(),
        }
    }
}

/// Runs every rule and returns the findings, errors first, then by code, with precedence
/// applied (see [`Rule::silenced_by`]).
pub fn diagnose(facts: &Facts) -> Vec<Finding> {
    let mut findings = run_rules(rules::ALL, facts);
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.code.cmp(&b.code))
            .then_with(|| a.pids.cmp(&b.pids))
    });
    findings
}

/// The rules in an order where every rule comes after the rules it is silenced by (the
/// catalogue's order otherwise). A rule caught in a cycle (the catalogue test forbids them) runs
/// last, without the silencers it would wait for: never fewer findings than without precedence.
fn precedence_order<'r>(all: &[&'r Rule]) -> Vec<&'r Rule> {
    let mut order: Vec<&'r Rule> = Vec::with_capacity(all.len());
    let mut left: Vec<&'r Rule> = all.to_vec();
    while !left.is_empty() {
        let ready = left.iter().position(|r| {
            r.silenced_by
                .iter()
                .all(|c| order.iter().any(|o| o.code == *c) || !left.iter().any(|l| l.code == *c))
        });
        order.push(left.remove(ready.unwrap_or(0)));
    }
    order
}

/// Runs `all` over `facts`: each rule after its silencers, told what they already explain, and
/// its findings then pruned of it ([`silence`]). Findings come out in the order of `all`.
fn run_rules(all: &[&Rule], facts: &Facts) -> Vec<Finding> {
    let mut done: Vec<(&str, Vec<Finding>)> = Vec::with_capacity(all.len());
    for rule in precedence_order(all) {
        let silencers: Vec<&Finding> = done
            .iter()
            .filter(|(code, _)| rule.silenced_by.contains(code))
            .flat_map(|(_, found)| found)
            .filter(|g| g.severity >= rule.severity)
            .collect();
        let explained: Vec<PidSignal> = silencers
            .iter()
            .flat_map(|g| g.signals.iter().copied())
            .collect();
        let own = Facts {
            explained: &explained,
            ..*facts
        };
        let found = (rule.check)(&own)
            .into_iter()
            .filter_map(|f| silence(f, &silencers))
            .collect();
        done.push((rule.code, found));
    }
    all.iter()
        .flat_map(|r| {
            let at = done.iter().position(|(code, _)| *code == r.code);
            at.map(|i| std::mem::take(&mut done[i].1))
                .unwrap_or_default()
        })
        .collect()
}

/// `f` less what `silencers` (findings of codes `f`'s rule is silenced by, of at least its
/// severity) already say. A finding naming (pid, signal) pairs loses the pairs a silencer names
/// (and a pid whose pairs are all gone), and is dropped when none is left; a finding about
/// whole processes is dropped only when silencers name every one of its pids.
pub fn silence(mut f: Finding, silencers: &[&Finding]) -> Option<Finding> {
    let silencers: Vec<&&Finding> = silencers
        .iter()
        .filter(|g| g.severity >= f.severity && g.code != f.code)
        .collect();
    if silencers.is_empty() {
        return Some(f);
    }
    if f.signals.is_empty() {
        let covered = |pid: &i32| silencers.iter().any(|g| g.pids.contains(pid));
        if !f.pids.is_empty() && f.pids.iter().all(covered) {
            return None;
        }
        return Some(f);
    }
    let named: Vec<PidSignal> = std::mem::take(&mut f.signals);
    let mut kept = Vec::with_capacity(named.len());
    for ps in &named {
        match silencers.iter().find(|g| g.names_signal(ps.pid, ps.signal)) {
            Some(g) => f.evidence.push(format!(
                "{} of pid {}: {} {} already names it (precedence), so it is not repeated here",
                ps.signal.as_str(),
                ps.pid,
                g.code,
                g.slug
            )),
            None => kept.push(*ps),
        }
    }
    if kept.is_empty() {
        return None;
    }
    // A pid all of whose pairs went leaves the finding; pids it named without pairs stay.
    f.pids
        .retain(|pid| kept.iter().any(|k| k.pid == *pid) || !named.iter().any(|n| n.pid == *pid));
    f.signals = kept;
    Some(f)
}

/// The rule for a code (case-insensitive), or for a slug.
pub fn rule(code_or_slug: &str) -> Option<&'static Rule> {
    rules::ALL
        .iter()
        .copied()
        .find(|r| r.code.eq_ignore_ascii_case(code_or_slug) || r.slug == code_or_slug)
}

#[cfg(test)]
mod catalogue_tests {
    use super::*;

    const SECTIONS: [&str; 6] = [
        "## What it means",
        "## Why telemetry breaks",
        "## How it is detected",
        "## Fix",
        "## Known false alarms",
        "## References",
    ];

    #[test]
    fn every_rule_is_documented_in_the_fixed_sections_and_codes_are_unique() {
        let codes: Vec<&str> = rules::ALL.iter().map(|r| r.code).collect();
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "codes must be unique and in order: {codes:?}"
        );
        assert_eq!(codes.len(), 21);
        for r in rules::ALL {
            let mut at = 0;
            for s in SECTIONS {
                let i = r.doc[at..]
                    .find(s)
                    .unwrap_or_else(|| panic!("{}: missing or misplaced {s:?}", r.code));
                at += i + s.len();
            }
            assert!(rule(r.code).is_some() && rule(r.slug).is_some());
            assert!(rule(&r.code.to_lowercase()).is_some());
        }
    }

    /// What `explain` prints may only point at things the user has: a full https URL, or a file
    /// of this repository (`docs/X.md`, optionally `#anchor`) whose anchor is one of its headings.
    #[test]
    fn every_reference_resolves_to_a_url_or_a_heading_of_a_repository_doc() {
        use std::collections::HashMap;
        use std::path::Path;

        /// GitHub's anchor for a heading: lowercase, spaces to '-', every other character that is
        /// not a letter, a digit, '-' or '_' dropped.
        fn slug(heading: &str) -> String {
            heading
                .trim()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    '-' | '_' => Some(c),
                    c if c.is_alphanumeric() => Some(c),
                    _ => None,
                })
                .flat_map(char::to_lowercase)
                .collect()
        }

        /// Anchors of a Markdown file's ATX headings outside fenced code blocks; a repeated
        /// heading gets `-1`, `-2`, ... as on GitHub.
        fn anchors(text: &str) -> Vec<String> {
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut out = Vec::new();
            let mut fenced = false;
            for line in text.lines() {
                let t = line.trim_start();
                if t.starts_with("```") || t.starts_with("~~~") {
                    fenced = !fenced;
                    continue;
                }
                let level = t.chars().take_while(|&c| c == '#').count();
                if fenced || !(1..=6).contains(&level) || !t[level..].starts_with(' ') {
                    continue;
                }
                let mut heading = t[level..].trim();
                let closed = heading.trim_end_matches('#');
                if closed.len() < heading.len() && (closed.is_empty() || closed.ends_with(' ')) {
                    heading = closed.trim_end();
                }
                let base = slug(heading);
                let n = seen.entry(base.clone()).or_insert(0);
                out.push(if *n == 0 { base } else { format!("{base}-{n}") });
                *n += 1;
            }
            out
        }

        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: HashMap<String, Option<Vec<String>>> = HashMap::new();
        let check = |target: &str, files: &mut HashMap<String, Option<Vec<String>>>| {
            if let Some(rest) = target.strip_prefix("https://") {
                let host = rest.split('/').next().unwrap_or("");
                return if host.contains('.') && !target.contains(char::is_whitespace) {
                    Ok(())
                } else {
                    Err(format!("{target:?} is not a full https URL"))
                };
            }
            if !target.starts_with("docs/") {
                return Err(format!(
                    "{target:?} is neither an https URL nor a docs/ path of this repository"
                ));
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target, None),
            };
            if path.split('/').any(|part| part == ".." || part.is_empty()) {
                return Err(format!("{target:?}: not a plain path under docs/"));
            }
            let heads = files.entry(path.to_string()).or_insert_with(|| {
                std::fs::read_to_string(root.join(path))
                    .ok()
                    .map(|text| anchors(&text))
            });
            match (heads, anchor) {
                (None, _) => Err(format!(
                    "{target:?}: {path} does not exist in the repository"
                )),
                (Some(_), None) => Ok(()),
                (Some(_), Some(_)) if !path.ends_with(".md") => Err(format!(
                    "{target:?}: anchors are only checked in Markdown files"
                )),
                (Some(heads), Some(a)) if heads.iter().any(|h| h == a) => Ok(()),
                (Some(_), Some(a)) => Err(format!(
                    "{target:?}: no heading of {path} has the anchor #{a}"
                )),
            }
        };

        let mut errors: Vec<String> = Vec::new();
        for r in rules::ALL {
            for (what, text) in [("doc", r.doc), ("summary", r.summary)] {
                let lower = text.to_lowercase();
                for private in [
                    "field-notes",
                    "field notes",
                    "seed-article",
                    "seed article",
                    "design.md",
                ] {
                    if lower.contains(private) {
                        errors.push(format!(
                            "{}: its {what} mentions {private:?}, which users do not have",
                            r.code
                        ));
                    }
                }
            }

            // Every item of the References section names its target first.
            let refs = r
                .doc
                .split_once("## References\n")
                .map_or("", |(_, rest)| rest);
            let refs = refs.split("\n## ").next().unwrap_or("");
            let mut items = 0;
            for line in refs.lines().filter(|l| !l.trim().is_empty()) {
                let Some(item) = line.strip_prefix("- ") else {
                    errors.push(format!(
                        "{}: reference line {line:?} is not a '- ' item",
                        r.code
                    ));
                    continue;
                };
                items += 1;
                let target = item.split_whitespace().next().unwrap_or("");
                if let Err(e) = check(target, &mut files) {
                    errors.push(format!("{}: References: {e}", r.code));
                }
            }
            if items == 0 {
                errors.push(format!("{}: the References section lists nothing", r.code));
            }

            // A docs/ path anywhere else in the text must resolve too.
            let body = r.doc.split("## References\n").next().unwrap_or("");
            let bytes = body.as_bytes();
            for (at, _) in body.match_indices("docs/") {
                if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'/') {
                    continue;
                }
                let token: String = body[at..]
                    .chars()
                    .take_while(|c| {
                        !c.is_whitespace() && !matches!(c, ')' | '`' | ',' | ';' | '\'')
                    })
                    .collect();
                let token = token.trim_end_matches(['.', ':']);
                if let Err(e) = check(token, &mut files) {
                    errors.push(format!("{}: {e}", r.code));
                }
            }
        }

        // The links inside the reference document itself.
        let failure_modes = "docs/failure-modes.md";
        let text = std::fs::read_to_string(root.join(failure_modes))
            .unwrap_or_else(|e| panic!("{failure_modes}: {e}"));
        let heads = anchors(&text);
        for (at, _) in text.match_indices("](#") {
            let anchor: String = text[at + 3..].chars().take_while(|&c| c != ')').collect();
            if !heads.contains(&anchor) {
                errors.push(format!(
                    "{failure_modes}: link to #{anchor}, which no heading has"
                ));
            }
        }

        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
}

#[cfg(test)]
mod precedence_tests {
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
                ("FC201", vec!["FC104", "FC208", "FC209"]),
                ("FC208", vec!["FC104"]),
                ("FC209", vec!["FC104", "FC208"]),
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
        let of =
            |code: &str| -> Vec<&Finding> { found.iter().filter(|f| f.code == code).collect() };
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
}
