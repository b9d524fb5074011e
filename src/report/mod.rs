//! The one report ([`model::Report`]) that `check`, `receive` and `run` fill, and everything
//! that renders it: human tables, JSON, NDJSON, JUnit, GitHub workflow commands. Everything the
//! human output shows is also in the JSON report, and every judgement in either comes from a
//! finding.

pub mod github;
pub mod human;
pub mod human_run;
pub mod junit;
pub mod model;
pub mod receiver;
pub mod run;
#[cfg(test)]
mod schema_tests;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::diagnose::{Finding, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn of(findings: &[Finding]) -> Verdict {
        match findings.iter().map(|f| f.severity).max() {
            None => Verdict::Pass,
            Some(Severity::Warning) => Verdict::Warn,
            Some(Severity::Error) => Verdict::Fail,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// `--fail-on`: the lowest severity that makes the exit status 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
    Never,
}

impl FailOn {
    /// The lowest severity that fails, None for `never`.
    pub fn threshold(self) -> Option<Severity> {
        match self {
            FailOn::Error => Some(Severity::Error),
            FailOn::Warning => Some(Severity::Warning),
            FailOn::Never => None,
        }
    }

    /// Exit status for these findings: 1 when one is at or above the threshold, else 0.
    pub fn exit_status(self, findings: &[Finding]) -> i32 {
        let Some(threshold) = self.threshold() else {
            return 0;
        };
        i32::from(findings.iter().any(|f| f.severity >= threshold))
    }
}

/// Writes `text` to stdout. A closed stdout (`| head -1`, `| true`) is not an error worth a
/// panic: the command still ends with the status its findings give ([`crate::out::print`]).
pub fn print_stdout(text: &str) {
    let _ = crate::out::print(text);
}

/// Prints `report` in `format` and returns the exit status its findings give.
pub fn emit_report(report: &model::Report, format: Format, fail_on: FailOn) -> i32 {
    match format {
        Format::Human => {
            let text = human_run::render(report)
                .unwrap_or_else(|| human::render(&report.snapshot, &report.findings));
            print_stdout(&text);
        }
        Format::Json => print_stdout(&(report.to_json() + "\n")),
        Format::Ndjson => print_stdout(&(report.to_json_line() + "\n")),
        Format::Github => print_stdout(&github::render(report)),
    }
    fail_on.exit_status(&report.findings)
}

/// Codes of the findings that name `pid`, in the findings' order.
pub fn codes_for(findings: &[Finding], pid: i32) -> Vec<&str> {
    findings
        .iter()
        .filter(|f| f.pids.contains(&pid))
        .map(|f| f.code.as_str())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    /// One JSON value a line: for `receive`, an event per export then the report; for `check`
    /// and `run`, the report on one line.
    Ndjson,
    /// GitHub Actions workflow commands: a `::error`/`::warning` annotation per finding, then a
    /// `::notice` with the verdict.
    Github,
}

/// Lays `rows` out in columns (the header is just the first row): each cell but a row's last is
/// padded to its column's width, columns two spaces apart; each line starts with `indent` and
/// has no trailing white space.
pub fn columns<R: AsRef<[S]>, S: AsRef<str>>(rows: &[R], indent: &str) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (c, cell) in row.as_ref().iter().enumerate() {
            let n = cell.as_ref().chars().count();
            match widths.get_mut(c) {
                Some(w) => *w = (*w).max(n),
                None => widths.push(n),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let row = row.as_ref();
            let mut line = String::from(indent);
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell.as_ref());
                } else {
                    let _ = write!(line, "{:<w$}  ", cell.as_ref(), w = widths[c]);
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_all_but_the_last_cell() {
        let rows = [
            vec!["PID", "ROLE", "STATUS"],
            vec!["1234", "master", "FC101 FC103"],
            vec!["7", "worker", ""],
        ];
        assert_eq!(
            columns(&rows, "  "),
            vec![
                "  PID   ROLE    STATUS",
                "  1234  master  FC101 FC103",
                "  7     worker",
            ]
        );
        assert_eq!(
            columns(&[["é", "x"], ["ab", "y"]], ""),
            vec!["é   x", "ab  y"]
        );
    }
}
