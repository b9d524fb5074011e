//! `receive`: exit statuses and the expectation, driven as the CLI drives it.

use clap::Parser;
use otel_forkcheck::cli::args::ReceiveArgs;
use otel_forkcheck::receive::cmd::receive;

/// What the command line does with parsed arguments.
fn receive_main(a: ReceiveArgs) -> i32 {
    match a.options(false) {
        Ok(o) => receive(o),
        Err(e) => e.print(),
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    a: ReceiveArgs,
}

fn args(v: &[&str]) -> ReceiveArgs {
    let mut all = vec!["receive"];
    all.extend_from_slice(v);
    Cli::try_parse_from(all).unwrap().a
}

#[test]
fn port_in_use_is_exit_2() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(
        receive_main(args(&["--http", &addr, "--grpc", "off", "--timeout", "1s"])),
        2
    );
}

#[test]
fn bad_arguments_are_exit_2() {
    assert_eq!(receive_main(args(&["--inject", "status=abc"])), 2);
    assert_eq!(receive_main(args(&["--http", "0.0.0.0:0"])), 2);
    assert_eq!(receive_main(args(&["--pid", "2147483000"])), 2);
}

#[test]
fn timeout_without_exports_passes_but_unmet_expectation_fails() {
    let base = [
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
        "--timeout",
        "300ms",
    ];
    assert_eq!(receive_main(args(&base)), 0);
    let mut v = base.to_vec();
    v.extend(["--expect-workers", "1", "--format", "json"]);
    assert_eq!(receive_main(args(&v)), 1);
}

mod common;

/// The real binary's `receive --format json`: the published schema, and the connections as a
/// list (the same shape as in `run`).
#[test]
fn receive_json_report_matches_the_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args([
            "receive",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--timeout",
            "300ms",
            "--expect-workers",
            "1",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::schema::assert_valid(&v);
    assert!(v["receiver"]["connections"].is_array());
    assert_eq!(v["receiver"]["connection_count"], 0);
    assert_eq!(v["expectation"]["met"], false);
    // The unmet expectation is a finding, and the exit status follows it.
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["FC213"]);
    assert_eq!(out.status.code(), Some(1));
}

/// Every limit flag out of its range, or overflowing its type, is a usage error (exit 2) that
/// names the flag: never a panic, never a receiver started with a limit it cannot honour.
#[test]
fn limit_flags_out_of_range_are_exit_2_naming_the_flag() {
    for (flag, v) in [
        ("--first-request-timeout", "1e20"),
        ("--first-request-timeout", "0"),
        ("--idle-timeout", "18446744073709551615s"),
        ("--read-timeout", "2h"),
        ("--max-connections", "0"),
        ("--max-connections", "18446744073709551616"),
        ("--max-connections-per-peer", "=-1"),
        ("--memory-budget", "1e30"),
        ("--memory-budget", "18446744073709551616"),
        ("--memory-budget", "32MiB"),
        ("--max-body", "2GiB"),
        ("--max-decompressed", "5GiB"),
        ("--keep-exited", "65537"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
            .args(["receive", "--http", "127.0.0.1:0", "--grpc", "off"])
            .args(["--timeout", "200ms"])
            .args(match v.strip_prefix('=') {
                Some(v) => vec![format!("{flag}={v}")],
                None => vec![flag.to_string(), v.to_string()],
            })
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {v}: {err}");
        assert!(
            err.contains(flag) && !err.contains("panicked"),
            "{flag} {v}: {err}"
        );
        assert!(!err.contains("listening"), "{flag} {v} started: {err}");
    }
}
