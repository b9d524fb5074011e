//! What FC211 and FC212 share: which `--expect-count` tallies are judged, and how a pid's part
//! reads in the evidence.

use std::cmp::Ordering;

use crate::ledger::{CountTally, Ledger, Num, PidCount};

/// The tallies whose total compares with the expected count as `want`, once nothing more will
/// arrive: the receiver stopped (`receive`) or the server was stopped (`run`).
pub fn judged(ledger: &Ledger, want: Ordering) -> Vec<CountTally> {
    if !ledger.closed && ledger.stop.is_none() {
        return Vec::new();
    }
    ledger
        .count_tallies()
        .into_iter()
        .filter(|t| t.compare() == Some(want))
        .collect()
}

pub fn number(v: f64) -> String {
    Num(v).to_string()
}

/// "pid 101: 21 (served 20; process.pid=101: 21); <why>".
pub fn per_pid_line(p: &PidCount, why: &[String]) -> String {
    let mut facts = Vec::new();
    if let Some(s) = p.served {
        facts.push(format!("served {s}"));
    }
    if p.by_identity.len() > 1 {
        for (i, v) in &p.by_identity {
            facts.push(format!("{}: {}", i, number(*v)));
        }
    }
    if p.untracked > 0 {
        facts.push(format!(
            "{} point(s) of series beyond the caps left out",
            p.untracked
        ));
    }
    let mut line = format!("pid {}: {}", p.pid, number(p.total));
    if !facts.is_empty() {
        line.push_str(&format!(" ({})", facts.join("; ")));
    }
    for w in why {
        line.push_str("; ");
        line.push_str(w);
    }
    line
}
