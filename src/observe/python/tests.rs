use super::reader::guarded;
use super::*;

#[test]
fn a_panic_in_a_py_spy_call_is_an_error_for_that_process() {
    let r: Result<(), String> = guarded("py-spy attach", || {
        let base: u64 = u64::MAX;
        let offset = std::hint::black_box(1u64);
        // what py-spy 0.4.3 does in `frame_address` on a uWSGI+gRPC worker (debug build)
        let _ = base
            .checked_add(offset)
            .expect("attempt to add with overflow");
        Ok(())
    });
    assert_eq!(
        r,
        Err("py-spy attach panicked: attempt to add with overflow".to_string())
    );
    let formatted: Result<u8, String> = guarded("py-spy sample", || panic!("bad {}", 7));
    assert_eq!(formatted, Err("py-spy sample panicked: bad 7".to_string()));
    assert_eq!(guarded("x", || Ok::<_, String>(3)), Ok(3));
    assert_eq!(
        guarded("x", || Err::<u8, _>("e".to_string())),
        Err("e".into())
    );
}

const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234 /usr/bin/python3.11
7f00aa000000-7f00aa100000 r--p 00000000 fd:01 99 /usr/lib/libpython3.11.so.1.0
7f00aa100000-7f00aa300000 r-xp 00100000 fd:01 99 /usr/lib/libpython3.11.so.1.0
7f00ab000000-7f00ab001000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

#[test]
fn layout_and_libpython() {
    let lib = libpython_in_maps(MAPS);
    assert_eq!(lib.as_deref(), Some("/usr/lib/libpython3.11.so.1.0"));
    assert!(looks_like_python("/usr/bin/python3.11", None));
    assert!(looks_like_python("/opt/app/bin/server", lib.as_deref()));
    assert!(!looks_like_python(
        "/bin/bash",
        libpython_in_maps("").as_deref()
    ));
    assert_eq!(
        version_hint("/usr/bin/python3.11", lib.as_deref()).as_deref(),
        Some("3.11")
    );
}

#[test]
fn may_run_python_reads_maps_only_when_the_name_does_not_settle_it() {
    let me = std::process::id() as i32;
    // This test binary: readable maps without libpython.
    assert!(!may_run_python(
        me,
        "/work/target/debug/deps/otel_forkcheck-x"
    ));
    // The name settles it, whatever the maps say.
    assert!(may_run_python(me, "/usr/bin/python3.12"));
    assert!(may_run_python(me, "/usr/bin/uwsgi"));
    // An executable that could not be read: unknown, so it may.
    assert!(may_run_python(me, ""));
    // Gone before its maps were read: no.
    assert!(!may_run_python(i32::MAX, "/bin/sh"));
}

fn pt(id: u64, os: Option<i64>, name: &str) -> PyThread {
    PyThread {
        python_thread_id: id,
        os_tid: os,
        name: Some(name.into()),
    }
}

/// Tasks seen from inside their own pid namespace: both ids agree.
fn host(tids: &[i32]) -> Vec<OsThread> {
    tids.iter()
        .map(|&tid| OsThread { tid, ns_tid: tid })
        .collect()
}

/// Tasks of a process in a nested pid namespace: (host tid, tid inside).
fn nested(ids: &[(i32, i32)]) -> Vec<OsThread> {
    ids.iter()
        .map(|&(tid, ns_tid)| OsThread { tid, ns_tid })
        .collect()
}

#[test]
fn threads_of_a_container_match_through_nspid() {
    // A container's gunicorn master, pid 1 inside (host 5000), seen from the host: the
    // interpreter recorded 1, 7, 8, 9; /proc/5000/task lists 5000, 5012, 5013, 5014.
    let py = vec![
        pt(1, Some(1), "MainThread"),
        pt(2, Some(7), "OtelBatchSpanRecordProcessor"),
        pt(3, Some(8), "OtelBatchLogRecordProcessor"),
        pt(4, Some(9), "OtelPeriodicExportingMetricReader"),
    ];
    let tasks = nested(&[(5000, 1), (5012, 7), (5013, 8), (5014, 9)]);
    let m = match_threads(5000, None, &tasks, &py);
    assert!(m.ghosts.is_empty(), "{:?}", m.ghosts);
    assert_eq!(m.names[&5000], "MainThread");
    assert_eq!(m.names[&5014], "OtelPeriodicExportingMetricReader");
    assert_eq!(m.names.len(), 4);
    // The same from inside the container (or a sidecar sharing its pid namespace).
    let m_in = match_threads(1, None, &nested(&[(1, 1), (7, 7), (8, 8), (9, 9)]), &py);
    assert!(m_in.ghosts.is_empty());
    assert_eq!(m_in.names[&9], "OtelPeriodicExportingMetricReader");
    // Matching on host ids would have made every thread a ghost (the bug this fixes): a host
    // tid that happens to equal an in-namespace id is not a match either.
    let m = match_threads(5000, None, &nested(&[(5000, 1), (7, 70)]), &py[..2]);
    assert_eq!(m.names.keys().copied().collect::<Vec<_>>(), vec![5000]);
    assert_eq!(m.ghosts.len(), 1);
    assert_eq!(m.ghosts[0].os_tid, 7);
}

#[test]
fn c_forked_worker_in_a_container_keeps_its_main_thread() {
    // uWSGI-style worker (host 5001, 2 inside) of the container's pid 1 (host 5000): its main
    // thread state still says 1 (the master's main thread, in the namespace's ids), and the
    // master's reader (9 inside) is a ghost.
    let py = vec![
        pt(1, Some(1), "MainThread"),
        pt(2, Some(9), "OtelPeriodicExportingMetricReader"),
    ];
    let tasks = nested(&[(5001, 2)]);
    let m = match_threads(5001, Some(1), &tasks, &py);
    assert_eq!(m.names[&5001], "MainThread");
    assert_eq!(
        m.ghosts,
        vec![GhostThread {
            name: "OtelPeriodicExportingMetricReader".into(),
            os_tid: 9
        }]
    );
    // Without the parent's id in the namespace there is nothing to correct with.
    let m = match_threads(5001, None, &tasks, &py);
    assert!(m.names.is_empty());
    assert_eq!(m.ghosts.len(), 2);
}

#[test]
fn ghosts_and_fork_carry_over() {
    // Worker 200 of master 100, forked in C: main thread state still says 100, the
    // master's reader thread 101 is listed, and the worker's own thread 201 is real.
    let py = vec![
        pt(1, Some(100), "MainThread"),
        pt(2, Some(101), "OtelPeriodicExportingMetricReader"),
        pt(3, Some(201), "OtelBatchSpanRecordProcessor"),
    ];
    let m = match_threads(200, Some(100), &host(&[200, 201]), &py);
    assert_eq!(m.names[&200], "MainThread");
    assert_eq!(m.names[&201], "OtelBatchSpanRecordProcessor");
    assert_eq!(
        m.ghosts,
        vec![GhostThread {
            name: "OtelPeriodicExportingMetricReader".into(),
            os_tid: 101
        }]
    );
    // A new thread in the child reused a ghost's pthread id: the ghost's name is unknown.
    let py = vec![
        pt(1, Some(100), "MainThread"),
        pt(7, Some(102), "Worker"),
        pt(7, Some(202), "Worker"),
    ];
    let m = match_threads(200, Some(100), &host(&[200, 202]), &py);
    assert_eq!(m.names[&202], "Worker");
    assert_eq!(
        m.ghosts,
        vec![GhostThread {
            name: String::new(),
            os_tid: 102
        }]
    );
    // After os.fork the main thread's id is refreshed: nothing to correct.
    let py = vec![pt(1, Some(200), "MainThread"), pt(2, Some(101), "Reader")];
    let m = match_threads(200, Some(100), &host(&[200]), &py);
    assert_eq!(m.names.len(), 1);
    assert_eq!(m.ghosts.len(), 1);
    // Python < 3.11: no OS ids.
    let m = match_threads(200, Some(100), &host(&[200]), &[pt(1, None, "MainThread")]);
    assert_eq!(m.unplaced, 1);
}

#[test]
fn site_packages() {
    assert_eq!(
        site_dir_of("/v/lib/python3.11/site-packages/gunicorn/arbiter.py"),
        Some("/v/lib/python3.11/site-packages")
    );
    assert_eq!(site_dir_of("/usr/lib/python3.11/threading.py"), None);
    let names: Vec<String> = [
        "opentelemetry_sdk-1.45.2.dist-info",
        "opentelemetry_exporter_otlp_proto_http-1.45.2.dist-info",
        "opentelemetry_exporter_otlp_proto_grpc-1.45.2.dist-info",
        "opentelemetry_api-1.45.2.dist-info",
        "gunicorn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = facts_from_listing(&names);
    assert_eq!(f.sdk_version.as_deref(), Some("1.45.2"));
    assert_eq!(f.exporters, vec!["grpc", "http"]);
    let env = vec![("VIRTUAL_ENV".to_string(), "/venv".to_string())];
    let c = site_candidates(
        &[],
        &env,
        &["/other/bin/python".to_string(), "app.py".to_string()],
        "/usr/bin/python3.11",
        Some("/usr/lib/libpython3.11.so.1.0"),
        Some("3.11.7"),
    );
    assert_eq!(
        c,
        vec![
            "/venv/lib/python3.11/site-packages",
            "/other/lib/python3.11/site-packages",
            "/usr/lib/python3.11/site-packages",
        ]
    );
}

/// The reader interprets memory that can change under it or be anything: on garbage it errs or
/// gives no names, never panics (an overflow would end the check with exit 101) or loops.
#[test]
fn reading_garbage_memory_never_panics() {
    use super::known::Known;
    use crate::proc::mem::Memory;
    let me = std::process::id() as i32;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let minor = 8 + (round % 6) as u64;
        let o = objects::offsets(3, minor).unwrap();
        let mut buf = vec![0u64; 4096];
        let base = buf.as_ptr() as u64;
        let interp = base + 8 * (next() % 4096);
        for w in buf.iter_mut() {
            *w = match next() % 10 {
                0..=6 => base + 8 * (next() % 4096) + next() % 3,
                7 => interp,
                8 => next() % 64,
                _ => next(),
            };
        }
        let mut known = Known::new(o, interp, base + 8 * (next() % 4096));
        let mut mem = Memory::new(me);
        let _ = walk::walk(&mut known, &mut mem);
        let _ = known.learn(&mut mem);
        assert!(mem.calls < 20_000, "round {round}: {} calls", mem.calls);
        std::hint::black_box(&buf);
    }
}
