//! `otel-forkcheck run <flags> -- <command>` from the repository root: the one launcher of the
//! `run` end-to-end tests, with the environment each test sets and the test's own variables it
//! strips (so the person running the tests cannot steer the server).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{live_members, root, strip_env};

/// What one `run` gave.
pub struct Run {
    pub out: Output,
    pub took: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }

    /// The JSON report, checked against the schema; panics unless stdout is one.
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.explain()));
        super::schema::assert_valid(&v);
        v
    }

    pub fn explain(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
            self.out.status.code(),
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// The launched pid (its process group id), from the progress line on stderr.
    pub fn launched(&self) -> Option<i32> {
        self.stderr.lines().find_map(|l| {
            let rest = l.split("` as pid ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Asserts that stderr names the launched pid and nothing of its group is left.
    pub fn assert_launched_group_gone(&self) {
        let Some(pgid) = self.launched() else {
            panic!("no launch line on stderr:\n{}", self.stderr)
        };
        assert_group_gone(pgid, &self.stderr);
    }
}

/// Asserts that nothing of process group `pgid` is left.
pub fn assert_group_gone(pgid: i32, context: &str) {
    let left = live_members(pgid);
    assert!(
        left.is_empty(),
        "processes of group {pgid} left: {left:?}\n{context}"
    );
}

/// Runs `otel-forkcheck run <flags> -- <command>` from the repository root with `NO_COLOR=1`
/// and `env`, after removing from the test's own environment every name in `strip` (see
/// [`strip_env`]).
pub fn run(flags: &[&str], command: &[String], env: &[(&str, &str)], strip: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"));
    cmd.arg("run")
        .args(flags)
        .arg("--")
        .args(command)
        .current_dir(root())
        .env("NO_COLOR", "1");
    strip_env(&mut cmd, strip);
    cmd.envs(env.iter().copied());
    let start = Instant::now();
    let out = cmd.output().expect("run otel-forkcheck");
    Run {
        took: start.elapsed(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        out,
    }
}
