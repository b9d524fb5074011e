//! `--format github` from the real binary on a recorded snapshot: the exact workflow commands
//! (one line per finding, newlines escaped as %0A), then the verdict as a notice; exit 1.

use std::process::Command;

/// The fix the three findings of preload-http share (gunicorn, preload), escaped as the runner
/// wants it. Each annotation carries it whole: an annotation is read on its own.
const FIX: &str = concat!(
    "Set the SDK up in each worker, in gunicorn.conf.py, and not at import time in the app%0A",
    "(or drop --preload / preload_app):%0A",
    "%0A",
    "    def post_fork(server, worker):%0A",
    "        from otel_setup import setup_telemetry   # your function that builds the providers%0A",
    "        setup_telemetry()%0A",
    "%0A",
    "    def worker_exit(server, worker):%0A",
    "        from opentelemetry import metrics, trace%0A",
    "        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):%0A",
    "            if hasattr(provider, \"shutdown\"):%0A",
    "                provider.shutdown()%0A",
    "%0A",
    "With opentelemetry-instrument, run gunicorn without it and call the same set-up in post_fork.",
);

#[test]
fn check_snapshot_format_github() {
    let out = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "check",
            "--snapshot",
            "fixtures/snapshots/preload-http.json",
            "--format",
            "github",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run otel-forkcheck");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [
        format!(
            "{}{}{}{}{}{}{}{}fix:%0A{FIX}%0Amore: otel-forkcheck explain FC103",
            "::error title=FC103 exporter-socket-shared::",
            "3 connection(s) to the collector 127.0.0.1:43967 are open in 3 processes%0A",
            "pids: 21356, 21380, 21393%0A",
            "evidence:%0A",
            "- socket inode 136295 (tcp 127.0.0.1:46296 -> 127.0.0.1:43967 ESTABLISHED) is open in pids 21356 (master), 21380, 21393%0A",
            "- socket inode 137532 (tcp 127.0.0.1:46274 -> 127.0.0.1:43967 ESTABLISHED) is open in pids 21356 (master), 21380, 21393%0A",
            "- socket inode 137534 (tcp 127.0.0.1:46284 -> 127.0.0.1:43967 ESTABLISHED) is open in pids 21356 (master), 21380, 21393%0A",
            "- 127.0.0.1:43967 is the OTLP endpoint from OTEL_EXPORTER_OTLP_ENDPOINT in /proc/21356/environ%0A",
        ),
        format!(
            "{}{}{}{}{}{}{}fix:%0A{FIX}%0Amore: otel-forkcheck explain FC101",
            "::warning title=FC101 sdk-initialized-in-master::",
            "the master (pid 21356) runs 3 OpenTelemetry exporter thread(s): the SDK was set up before fork%0A",
            "pids: 21356%0A",
            "evidence:%0A",
            "- pid 21356 (master) thread 21370 'OtelBatchSpanRecordProcessor' (python name, span processor), started +0.3 s after the process%0A",
            "- pid 21356 (master) thread 21371 'OtelBatchLogRecordProcessor' (python name, log processor), started +0.3 s after the process%0A",
            "- pid 21356 (master) thread 21372 'OtelPeriodicExportingMetricReader' (python name, metric reader), started +0.3 s after the process%0A",
        ),
        format!(
            "{}{}{}{}{}{}fix:%0A{FIX}%0Amore: otel-forkcheck explain FC302",
            "::warning title=FC302 preload-with-sdk::",
            "gunicorn preloads the app and the app sets the SDK up at import%0A",
            "pids: 21356%0A",
            "evidence:%0A",
            "- pid 21356 (master): preload from preload_app = True in /work/main/fixtures/gunicorn/preload.conf.py%0A",
            "- pid 21356 (master) runs thread 21370 'OtelBatchSpanRecordProcessor' (python name, span processor)%0A",
        ),
        "::notice title=otel-forkcheck::verdict fail (1 error(s), 2 warning(s))".to_string(),
    ];
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), want.len(), "{stdout}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert!(stdout.ends_with('\n'));
}

#[test]
fn a_pass_is_one_notice_and_exit_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "check",
            "--snapshot",
            "fixtures/snapshots/postfork.json",
            "--format",
            "github",
        ])
        .output()
        .expect("run otel-forkcheck");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "::notice title=otel-forkcheck::verdict pass (0 error(s), 0 warning(s))\n"
    );
}

#[test]
fn receive_ends_with_the_verdict_notice() {
    // Nothing sent: no finding, the verdict alone, after --timeout.
    let out = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"))
        .args([
            "receive",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "off",
            "--timeout",
            "300ms",
            "--format",
            "github",
        ])
        .output()
        .expect("run otel-forkcheck receive");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "::notice title=otel-forkcheck::verdict pass (0 error(s), 0 warning(s))\n"
    );
}
