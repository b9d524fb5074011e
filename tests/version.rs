//! `--version`: the crate's version and the commit the binary was built from (build.rs), the
//! same commit as the report's `tool.commit`.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// What build.rs should have found: HEAD's short hash here, "unknown" outside a git checkout.
fn head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[test]
fn version_names_the_commit() {
    let commit = env!("OTEL_FORKCHECK_COMMIT");
    let want = format!("otel-forkcheck {} ({commit})\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        let out = bin().arg(flag).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
    }
    assert_eq!(commit, head(), "build.rs found another commit than HEAD");
    let out = bin()
        .args([
            "check",
            "--snapshot",
            "fixtures/snapshots/postfork.json",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tool"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["tool"]["commit"], commit);
}
