//! Precedence: which finding silences which, as data on each rule ([`Rule::silenced_by`]),
//! applied once for every rule here rather than inside the rules.

use super::{Facts, Finding, PidSignal, Rule};

/// The rules in an order where every rule comes after the rules it is silenced by (the
/// catalogue's order otherwise). A rule caught in a cycle (the catalogue test forbids them) runs
/// last, without the silencers it would wait for: never fewer findings than without precedence.
pub(super) fn precedence_order<'r>(all: &[&'r Rule]) -> Vec<&'r Rule> {
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
pub(super) fn run_rules(all: &[&Rule], facts: &Facts) -> Vec<Finding> {
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
