//! JUnit XML, the format CI systems render as test results.

use std::fmt::Write;

use super::model::Report;
use super::run::CellStatus;
use super::FailOn;
use crate::diagnose::Finding;

/// One testcase: passes when `failure` is None (and `skipped` is None).
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub classname: String,
    pub name: String,
    /// (one-line message, details).
    pub failure: Option<(String, String)>,
    /// Why the case could not be judged (e.g. a worker that served no request).
    pub skipped: Option<String>,
    /// Text shown with the case (evidence of a finding below the failure threshold).
    pub system_out: Option<String>,
}

/// The cases of a report: one per worker per expected signal (`run`), then one per finding.
/// A case fails exactly when a finding at or above `fail_on` is behind it: a worker's signal
/// case fails when such a finding names that pid and signal, with that finding as its message.
pub fn cases(report: &Report, fail_on: FailOn) -> Vec<Case> {
    let threshold = fail_on.threshold();
    let failing = |f: &Finding| threshold.is_some_and(|t| f.severity >= t);
    let mut cases = Vec::new();
    for row in report.run.iter().flat_map(|r| &r.workers) {
        for (s, c) in &row.signals {
            let mut case = Case {
                classname: format!("{} {}", row.role.as_str(), row.pid),
                name: format!("exports {}", s.as_str()),
                ..Default::default()
            };
            let named: Vec<&Finding> = report
                .findings
                .iter()
                .filter(|f| f.names_signal(row.pid, *s))
                .collect();
            if let Some(f) = named.iter().find(|f| failing(f)) {
                case.failure = Some((
                    format!("{} {}: {}", f.severity.as_str(), f.code, f.title),
                    finding_text(f),
                ));
            } else {
                let text = match c.status {
                    CellStatus::Received => format!(
                        "{} export(s), {} {} after serving {} request(s)",
                        c.exports,
                        c.items,
                        s.item(),
                        row.requests_served
                    ),
                    CellStatus::Idle => {
                        case.skipped =
                            Some("served no request and sent nothing (not a failure)".into());
                        String::new()
                    }
                    CellStatus::UnknownSharedConnection => {
                        case.skipped = Some(
                            "shares its collector connection: its exports may be counted under \
                             another holder (see the findings)"
                                .into(),
                        );
                        String::new()
                    }
                    _ => format!(
                        "{}: {}",
                        c.text(),
                        named
                            .iter()
                            .map(|f| format!("{} (below --fail-on)", f.code))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                if !text.is_empty() {
                    case.system_out = Some(text);
                }
            }
            cases.push(case);
        }
    }
    for f in &report.findings {
        let pids: Vec<String> = f.pids.iter().map(|p| p.to_string()).collect();
        let mut case = Case {
            classname: "findings".into(),
            name: format!("{} {} (pids {})", f.code, f.slug, pids.join(", ")),
            ..Default::default()
        };
        if failing(f) {
            case.failure = Some((
                format!("{} {}: {}", f.severity.as_str(), f.code, f.title),
                finding_text(f),
            ));
        } else {
            case.system_out = Some(finding_text(f));
        }
        cases.push(case);
    }
    cases
}

fn finding_text(f: &Finding) -> String {
    format!(
        "{}\n\nevidence:\n{}\n\nfix:\n{}\n\nmore: otel-forkcheck explain {}",
        f.title,
        f.evidence
            .iter()
            .map(|e| format!("- {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
        f.fix,
        f.code
    )
}

/// A whole document with one testsuite.
pub fn render(suite: &str, cases: &[Case], seconds: f64) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let skipped = cases
        .iter()
        .filter(|c| c.failure.is_none() && c.skipped.is_some())
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{seconds:.3}\">",
        escape(suite),
        cases.len()
    );
    for c in cases {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"",
            escape(&c.classname),
            escape(&c.name)
        );
        let mut inner = String::new();
        if let Some((message, text)) = &c.failure {
            let _ = writeln!(
                inner,
                "      <failure message=\"{}\">{}</failure>",
                escape(message),
                escape(text)
            );
        } else if let Some(why) = &c.skipped {
            let _ = writeln!(inner, "      <skipped message=\"{}\"/>", escape(why));
        }
        if let Some(text) = &c.system_out {
            let _ = writeln!(inner, "      <system-out>{}</system-out>", escape(text));
        }
        if inner.is_empty() {
            out.push_str("/>\n");
        } else {
            let _ = write!(out, ">\n{inner}    </testcase>\n");
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Escapes the five XML specials and drops characters XML 1.0 cannot carry.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_text_escaped() {
        let cases = vec![
            Case {
                classname: "worker 101".into(),
                name: "exports metrics".into(),
                ..Default::default()
            },
            Case {
                classname: "findings".into(),
                name: "FC103 <shared> & \"x\"".into(),
                failure: Some(("one connection".into(), "a\u{1}b".into())),
                ..Default::default()
            },
            Case {
                classname: "worker 102".into(),
                name: "exports logs".into(),
                skipped: Some("served no request".into()),
                ..Default::default()
            },
        ];
        let xml = render("otel-forkcheck", &cases, 1.5);
        assert!(xml.contains(
            "<testsuite name=\"otel-forkcheck\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""
        ));
        assert!(xml.contains("<skipped message=\"served no request\"/>"));
        assert!(xml.contains("name=\"FC103 &lt;shared&gt; &amp; &quot;x&quot;\""));
        assert!(xml.contains("<failure message=\"one connection\">ab</failure>"));
        assert!(xml.contains("</testcase>\n"));
        assert!(xml.contains("<testcase classname=\"worker 101\" name=\"exports metrics\"/>"));
    }
}
