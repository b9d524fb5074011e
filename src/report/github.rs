//! `--format github`: each finding as a GitHub Actions workflow command, the way ruff's
//! `--output-format github` prints its diagnostics, so findings show as annotations in the job
//! summary:
//!
//! ```text
//! ::error title=FC103 exporter-socket-shared::<title>%0Apids: ...%0Aevidence:%0A- ...%0Afix:%0A...
//! ::warning title=FC101 sdk-initialized-in-master::...
//! ::notice title=otel-forkcheck::verdict fail (1 error(s), 2 warning(s))
//! ```
//!
//! One line per finding: the message (title, pids, evidence, fix, the `explain` pointer) has its
//! newlines escaped, which the runner turns back into line breaks in the annotation. Escaping
//! follows the runner's rules (`@actions/core`'s `escapeData` and `escapeProperty`), so nothing
//! a finding quotes from the inspected processes (a cmdline, a path) can end the command early
//! or start another one.

use std::fmt::Write as _;

use super::model::Report;
use crate::diagnose::{Finding, Severity};

/// The whole output: one workflow command per finding, in the report's order, then the verdict
/// (with the notes of what could not be read) as a notice.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&finding(f));
        out.push('\n');
    }
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = report.findings.len() - errors;
    let mut verdict = format!(
        "verdict {} ({errors} error(s), {warnings} warning(s))",
        report.verdict.as_str()
    );
    for note in &report.notes {
        let _ = write!(verdict, "\nnote: {note}");
    }
    out.push_str(&command("notice", "otel-forkcheck", &verdict));
    out.push('\n');
    out
}

/// One finding as one workflow command line (no trailing newline).
pub fn finding(f: &Finding) -> String {
    let level = match f.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    command(level, &format!("{} {}", f.code, f.slug), &message(f))
}

/// The annotation's text: what a person reads in the job summary, in the human output's order.
fn message(f: &Finding) -> String {
    let mut m = f.title.clone();
    let pids: Vec<String> = f.pids.iter().map(|p| p.to_string()).collect();
    let _ = write!(m, "\npids: {}", pids.join(", "));
    if !f.evidence.is_empty() {
        m.push_str("\nevidence:");
        for e in &f.evidence {
            let _ = write!(m, "\n- {e}");
        }
    }
    if !f.fix.is_empty() {
        let _ = write!(m, "\nfix:\n{}", f.fix.trim_end());
    }
    let _ = write!(m, "\nmore: otel-forkcheck explain {}", f.code);
    m
}

/// `::<level> title=<title>::<message>`, both escaped.
fn command(level: &str, title: &str, message: &str) -> String {
    format!(
        "::{level} title={}::{}",
        escape_property(title),
        escape_data(message)
    )
}

/// The runner's escaping of a command's data (the message).
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The runner's escaping of a property value (`title=`): data's, plus `:` and `,`, which would
/// otherwise end the property list or the value.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{diagnose, Facts};
    use crate::snapshot::Snapshot;

    fn finding(code: &str, slug: &str, severity: Severity) -> Finding {
        Finding {
            code: code.into(),
            slug: slug.into(),
            severity,
            pids: vec![10, 11],
            title: "a title".into(),
            evidence: vec!["first fact".into(), "second fact".into()],
            fix: "do this\n\n    def post_fork(server, worker):\n        setup()\n".into(),
            signals: vec![],
        }
    }

    fn recorded(name: &str) -> Snapshot {
        let path = format!(
            "{}/fixtures/snapshots/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn escaping_follows_the_runner() {
        assert_eq!(escape_data("a%b\r\nc:d,e"), "a%25b%0D%0Ac:d,e");
        assert_eq!(escape_property("a%b\r\nc:d,e"), "a%25b%0D%0Ac%3Ad%2Ce");
        // `%` first: an already escaped-looking text is not taken for an escape.
        assert_eq!(escape_data("%0A"), "%250A");
        assert_eq!(escape_property("%3A"), "%253A");
    }

    #[test]
    fn an_error_and_a_warning() {
        let e = finding("FC103", "exporter-socket-shared", Severity::Error);
        assert_eq!(
            super::finding(&e),
            "::error title=FC103 exporter-socket-shared::a title%0Apids: 10, 11%0A\
             evidence:%0A- first fact%0A- second fact%0A\
             fix:%0Ado this%0A%0A    def post_fork(server, worker):%0A        setup()%0A\
             more: otel-forkcheck explain FC103"
        );
        let w = finding("FC101", "sdk-initialized-in-master", Severity::Warning);
        assert!(super::finding(&w).starts_with(
            "::warning title=FC101 sdk-initialized-in-master::a title%0Apids: 10, 11%0A"
        ));
    }

    #[test]
    fn quoted_text_cannot_start_another_command() {
        // Text a finding quotes from a process (cmdline, environ, paths) stays in one line.
        let mut f = finding("FC302", "preload-with-sdk", Severity::Warning);
        f.title = "100% of workers: gunicorn -c a,b.py\r\n::error title=x::forged".into();
        f.evidence = vec!["path /srv/a:b,c%d".into()];
        f.fix = String::new();
        f.slug = "odd:slug,x".into();
        let line = super::finding(&f);
        assert_eq!(
            line,
            "::warning title=FC302 odd%3Aslug%2Cx::100%25 of workers: gunicorn -c a,b.py%0D%0A\
             ::error title=x::forged%0Apids: 10, 11%0Aevidence:%0A- path /srv/a:b,c%25d%0A\
             more: otel-forkcheck explain FC302"
        );
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn a_report_ends_with_the_verdict() {
        let snap = recorded("postfork");
        let findings = vec![
            finding("FC103", "exporter-socket-shared", Severity::Error),
            finding("FC101", "sdk-initialized-in-master", Severity::Warning),
        ];
        let mut report = Report::new(&snap, &findings);
        report.notes =
            vec!["Python thread names unavailable for 1 of 3 processes: 12 (EPERM)".into()];
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("::error title=FC103 exporter-socket-shared::a title%0A"));
        assert!(lines[1].starts_with("::warning title=FC101 sdk-initialized-in-master::"));
        assert_eq!(
            lines[2],
            "::notice title=otel-forkcheck::verdict fail (1 error(s), 1 warning(s))%0A\
             note: Python thread names unavailable for 1 of 3 processes: 12 (EPERM)"
        );
        assert!(text.ends_with('\n'));
        // A clean tree: the verdict alone.
        let clean = Report::new(&snap, &diagnose(&Facts::from_snapshot(&snap)));
        assert_eq!(
            render(&clean),
            "::notice title=otel-forkcheck::verdict pass (0 error(s), 0 warning(s))\n"
        );
    }

    #[test]
    fn a_recorded_snapshot() {
        // preload-http: FC103 (error), FC101 and FC302 (warnings), the fix written out under
        // each (an annotation stands alone, unlike the human output's "as for FC103 above").
        let snap = recorded("preload-http");
        let report = Report::new(&snap, &diagnose(&Facts::from_snapshot(&snap)));
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        let heads: Vec<&str> = lines
            .iter()
            .map(|l| &l[..2 + l[2..].find("::").unwrap()])
            .collect();
        assert_eq!(
            heads,
            [
                "::error title=FC103 exporter-socket-shared",
                "::warning title=FC101 sdk-initialized-in-master",
                "::warning title=FC302 preload-with-sdk",
                "::notice title=otel-forkcheck",
            ]
        );
        for (line, f) in lines.iter().zip(&report.findings) {
            assert!(line.contains(&escape_data(&f.fix)), "{line}");
        }
        assert_eq!(
            lines[3],
            "::notice title=otel-forkcheck::verdict fail (1 error(s), 2 warning(s))"
        );
    }
}
