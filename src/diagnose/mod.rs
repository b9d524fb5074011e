//! Pure rules from facts to findings, one rule per finding code, like a linter's catalogue.
//!
//! A rule reads [`Facts`] and returns findings; it does no I/O, so each is unit-tested on
//! recorded snapshots. Its long form (what `explain CODE` prints) is the `doc` text kept next to
//! it in its own file under `rules/`.

pub mod evidence;
pub mod fix;
mod precedence;
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

#[cfg(test)]
use precedence::precedence_order;
use precedence::run_rules;
pub use precedence::silence;

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

/// The rule for a code (case-insensitive), or for a slug.
pub fn rule(code_or_slug: &str) -> Option<&'static Rule> {
    rules::ALL
        .iter()
        .copied()
        .find(|r| r.code.eq_ignore_ascii_case(code_or_slug) || r.slug == code_or_slug)
}

#[cfg(test)]
mod catalogue_tests;
#[cfg(test)]
mod precedence_tests;
