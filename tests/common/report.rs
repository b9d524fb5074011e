//! Running the built `otel-forkcheck` and reading its JSON report (schema 1), for the
//! end-to-end tests of `check`: one reader, so every test asserts findings the same way.

use std::process::Command;

use serde_json::Value;

/// What one run of the binary gave: exit status, the parsed stdout, stderr.
pub struct Outcome {
    pub status: i32,
    /// The JSON report, or Null when stdout was not JSON.
    pub report: Value,
    pub stderr: String,
}

/// Runs the built binary with `args`.
pub fn forkcheck(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args(args)
        .output()
        .expect("run otel-forkcheck");
    let report = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap_or(Value::Null);
    if report.is_object() {
        super::schema::assert_valid(&report);
    }
    Outcome {
        status: out.status.code().unwrap_or(-1),
        report,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `--pid PID --window WINDOW --format json`; panics unless a JSON report came out.
pub fn check_json(pid: i32, window: &str) -> Outcome {
    let pid = pid.to_string();
    let o = forkcheck(&["--pid", &pid, "--window", window, "--format", "json"]);
    assert!(o.report.is_object(), "no JSON report: {}", o.stderr);
    o
}

impl Outcome {
    pub fn findings(&self) -> impl Iterator<Item = &Value> {
        self.report["findings"].as_array().into_iter().flatten()
    }

    /// Every finding's code, in report order (errors first, then by code and pids).
    pub fn codes(&self) -> Vec<String> {
        self.findings()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect()
    }

    /// The distinct codes, sorted.
    pub fn code_set(&self) -> Vec<String> {
        let mut c = self.codes();
        c.sort();
        c.dedup();
        c
    }

    /// Asserts that nothing was found.
    pub fn assert_no_findings(&self) {
        assert_eq!(
            self.codes(),
            Vec::<String>::new(),
            "{:#}",
            self.report["findings"]
        );
    }

    /// Asserts exit status 0 and that nothing was found.
    pub fn assert_clean(&self) {
        assert_eq!(self.status, 0, "{}", self.stderr);
        self.assert_no_findings();
    }

    /// The one finding with this code (panics when there are none or several).
    pub fn finding(&self, code: &str) -> &Value {
        let all: Vec<&Value> = self.findings().filter(|f| f["code"] == code).collect();
        assert_eq!(all.len(), 1, "{code}: {:#}", self.report["findings"]);
        all[0]
    }

    /// The pids of every finding with this code, one Vec per finding, in report order (the
    /// tool sorts each finding's pids, and findings of one code by their pids).
    pub fn pids_of(&self, code: &str) -> Vec<Vec<i64>> {
        self.findings()
            .filter(|f| f["code"] == code)
            .map(|f| {
                f["pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
                    .collect()
            })
            .collect()
    }

    /// The report's entry for `pid`.
    pub fn process(&self, pid: i32) -> &Value {
        self.report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in the report: {:#}", self.report))
    }
}

/// (tid, name) of the threads of a report process that it classifies as `kind`.
pub fn threads_of_kind(p: &Value, kind: &str) -> Vec<(i64, String)> {
    p["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == kind)
        .map(|t| {
            (
                t["tid"].as_i64().unwrap(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The findings of a JSON report with this code, in report order.
pub fn findings_with<'a>(report: &'a Value, code: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == code)
        .collect()
}

/// The integers of a JSON array (pids), sorted.
pub fn sorted_ints(v: &Value) -> Vec<i64> {
    let mut out: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    out.sort();
    out
}
