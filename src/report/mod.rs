//! Turns a snapshot and its findings into what people (human) and machines (json) read.
//! Everything the human output shows is also in the JSON report.

pub mod human;
pub mod json;
pub mod junit;

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
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
