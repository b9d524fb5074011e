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

use crate::ledger::Ledger;
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
        assert_eq!(codes.len(), 19);
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
}
