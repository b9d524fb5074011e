//! Builders for rule unit tests: small snapshots (FC1xx, FC3xx) and [`Scenario`]s, a tree and
//! what the receiver saw built together (FC2xx). Recorded runs are tested in
//! tests/recorded_snapshots.rs and tests/recorded_ledgers.rs; these cover the edges a real run
//! rarely shows.

pub use crate::snapshot::*;

mod scenario;
pub use scenario::*;

pub const MASTER: i32 = 100;
pub const NOW_MS: u64 = 1_000_000;

pub fn th(tid: i32, name: &str, kind: ThreadKind) -> Thread {
    Thread {
        tid,
        nstid: None,
        name: name.to_string(),
        name_source: NameSource::Python,
        kind,
        comm: "gunicorn".to_string(),
        started_at_ms: NOW_MS - 60_000,
        state: "S".to_string(),
        syscall: None,
        syscall_end: None,
        wakeups: 10,
        wakeups_end: Some(13),
    }
}

/// The SDK's three threads as 1.45 names them.
pub fn sdk_threads(base_tid: i32) -> Vec<Thread> {
    vec![
        th(base_tid, "MainThread", ThreadKind::Other),
        th(
            base_tid + 1,
            "OtelPeriodicExportingMetricReader",
            ThreadKind::MetricReader,
        ),
        th(
            base_tid + 2,
            "OtelBatchSpanRecordProcessor",
            ThreadKind::SpanProcessor,
        ),
        th(
            base_tid + 3,
            "OtelBatchLogRecordProcessor",
            ThreadKind::LogProcessor,
        ),
    ]
}

pub fn main_only(tid: i32) -> Vec<Thread> {
    vec![th(tid, "MainThread", ThreadKind::Other)]
}

pub fn process(pid: i32, role: Role, threads: Vec<Thread>) -> Process {
    Process {
        pid,
        ppid: if role == Role::Master { 1 } else { MASTER },
        nspid: vec![pid],
        role,
        started_at_ms: NOW_MS - 120_000,
        cmdline: vec!["gunicorn".into(), "app:app".into()],
        threads,
        python: PythonFacts {
            names_read: true,
            sdk_version: Some("1.45.2".into()),
            ..Default::default()
        },
        env: EnvFacts {
            readable: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A gunicorn master with the given threads and workers 101.. each with the given threads.
pub fn gunicorn(master: Vec<Thread>, workers: Vec<Vec<Thread>>) -> Snapshot {
    let mut processes = vec![process(MASTER, Role::Master, master)];
    for (i, threads) in workers.into_iter().enumerate() {
        processes.push(process(MASTER + 1 + i as i32, Role::Worker, threads));
    }
    Snapshot {
        schema: SNAPSHOT_SCHEMA,
        taken_at_ms: NOW_MS - 3_000,
        window_ms: 3_000,
        root_pid: MASTER,
        framework: Framework::Gunicorn,
        processes,
        collector_endpoints: vec![Endpoint {
            host: "127.0.0.1".into(),
            port: 4318,
            source: "OTEL_EXPORTER_OTLP_ENDPOINT in /proc/100/environ".into(),
        }],
        ..Default::default()
    }
}

/// Bare processes (no threads, no facts): master started at `started_ms`, workers 100 ms later.
/// For the fc201 and fc208 tests; new tests use [`Scenario`].
pub fn tree(master: i32, workers: &[i32], started_ms: u64) -> Snapshot {
    let mut processes = vec![Process {
        pid: master,
        ppid: 1,
        nspid: vec![master],
        role: Role::Master,
        started_at_ms: started_ms,
        ..Default::default()
    }];
    for w in workers {
        processes.push(Process {
            pid: *w,
            ppid: master,
            nspid: vec![*w],
            role: Role::Worker,
            started_at_ms: started_ms + 100,
            ..Default::default()
        });
    }
    Snapshot {
        schema: 1,
        root_pid: master,
        framework: Framework::Gunicorn,
        processes,
        ..Default::default()
    }
}

pub fn codes(findings: &[crate::diagnose::Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.code.as_str()).collect()
}
