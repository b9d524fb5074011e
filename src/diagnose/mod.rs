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
}

impl<'a> Facts<'a> {
    pub fn from_snapshot(snapshot: &'a Snapshot) -> Self {
        Facts {
            snapshot: Some(snapshot),
            ledger: None,
        }
    }

    /// Tree and/or receiver facts (either may be missing: `receive` without `--pid` has no tree).
    pub fn new(snapshot: Option<&'a Snapshot>, ledger: Option<&'a Ledger>) -> Self {
        Facts { snapshot, ledger }
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

/// Runs every rule and returns the findings, errors first, then by code.
pub fn diagnose(facts: &Facts) -> Vec<Finding> {
    let mut findings: Vec<Finding> = rules::ALL.iter().flat_map(|r| (r.check)(facts)).collect();
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.code.cmp(&b.code))
            .then_with(|| a.pids.cmp(&b.pids))
    });
    findings
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
