use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn frameworks() {
    let py = "/usr/bin/python3.11";
    assert_eq!(
        detect_framework(
            &s(&["/v/bin/python", "/v/bin/gunicorn", "-w", "2", "app:app"]),
            py,
            &[]
        ),
        Framework::Gunicorn
    );
    assert_eq!(
        detect_framework(&s(&["python3", "-m", "gunicorn", "app:app"]), py, &[]),
        Framework::Gunicorn
    );
    assert_eq!(
        detect_framework(
            &s(&[
                "/v/bin/python",
                "/v/bin/opentelemetry-instrument",
                "gunicorn",
                "app:app"
            ]),
            py,
            &[]
        ),
        Framework::Gunicorn
    );
    assert_eq!(
        detect_framework(&s(&["gunicorn: master [app:app]"]), py, &[]),
        Framework::Gunicorn
    );
    assert_eq!(
        detect_framework(&s(&["uwsgi", "--http", ":9090"]), "/v/bin/uwsgi", &[]),
        Framework::Uwsgi
    );
    assert_eq!(
        detect_framework(
            &s(&["/v/bin/python", "/v/bin/celery", "-A", "proj", "worker"]),
            py,
            &[]
        ),
        Framework::Celery
    );
    assert_eq!(
        detect_framework(
            &s(&["/v/bin/python", "/v/bin/celery", "-A", "proj", "beat"]),
            py,
            &[]
        ),
        Framework::Unknown
    );
    assert_eq!(
        detect_framework(
            &s(&["python3", "-c", "# not uWSGI nor celery worker"]),
            py,
            &[]
        ),
        Framework::Unknown
    );
    let cmd = s(&["python3", "pool.py"]);
    assert_eq!(
        detect_framework(&cmd, py, std::slice::from_ref(&cmd)),
        Framework::Multiprocessing
    );
    assert_eq!(
        detect_framework(
            &cmd,
            py,
            &[s(&[
                "python3",
                "-c",
                "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
                "--multiprocessing-fork"
            ])]
        ),
        Framework::Multiprocessing
    );
    assert_eq!(detect_framework(&cmd, py, &[]), Framework::Unknown);
    for (args, fw) in [
        (
            &[
                "/v/bin/python",
                "/v/bin/uvicorn",
                "app:app",
                "--workers",
                "2",
            ][..],
            Framework::Uvicorn,
        ),
        (
            &["python3", "-m", "uvicorn", "app:app"][..],
            Framework::Uvicorn,
        ),
        (
            &["/v/bin/python", "/v/bin/hypercorn", "app:app", "-w", "2"][..],
            Framework::Hypercorn,
        ),
        (
            &[
                "/v/bin/python",
                "/v/bin/granian",
                "--interface",
                "asgi",
                "app:app",
            ][..],
            Framework::Granian,
        ),
        (
            &["gunicorn", "-k", "uvicorn_worker.UvicornWorker", "app:app"][..],
            Framework::Gunicorn,
        ),
    ] {
        // Granian's workers are forks with the same command line: still Granian.
        let own = s(args);
        assert_eq!(detect_framework(&own, py, std::slice::from_ref(&own)), fw);
    }
}

#[test]
fn launcher_script_names_the_server() {
    let spawn_child = s(&[
        "python",
        "-c",
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=7, pipe_handle=9)",
        "--multiprocessing-fork",
    ]);
    let root = s(&["/v/bin/python", "serve.py", "--port", "8000"]);
    let mut read = |path: &str| -> Option<(String, String)> {
        (path == "serve.py").then(|| ("import uvicorn\n".into(), "/srv/serve.py".into()))
    };
    let (fw, note) = framework_of(
        &root,
        "/usr/bin/python3.11",
        std::slice::from_ref(&spawn_child),
        &mut read,
    );
    assert_eq!(fw, Framework::Uvicorn);
    assert_eq!(
        note.as_deref(),
        Some("framework uvicorn: the root runs /srv/serve.py, which imports it (line 1: import uvicorn)")
    );
    // No children: not read; an unreadable or silent script keeps multiprocessing.
    let mut never = |_: &str| -> Option<(String, String)> { panic!("read") };
    assert_eq!(
        framework_of(&root, "/usr/bin/python3.11", &[], &mut never),
        (Framework::Unknown, None)
    );
    let mut silent = |_: &str| -> Option<(String, String)> { None };
    assert_eq!(
        framework_of(&root, "/usr/bin/python3.11", &[spawn_child], &mut silent).0,
        Framework::Multiprocessing
    );
}

fn image(exe: &str, brk: u64, args: &[&str]) -> Image {
    Image {
        exe: exe.into(),
        layout: Some(crate::proc::tree::LayoutKey {
            exe: exe.into(),
            start_code: 1,
            start_brk: brk,
            arg_start: 3,
            pid: 0,
        }),
        cmdline: s(args),
    }
}

#[test]
fn spawned_and_forkserver_workers_and_their_helpers() {
    let py = "/usr/bin/python3.14";
    let spawn = [
        "python",
        "-c",
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=7, pipe_handle=9)",
        "--multiprocessing-fork",
    ];
    let tracker = [
        "python",
        "-c",
        "from multiprocessing.resource_tracker import main;main(6)",
    ];
    let fs = [
        "python",
        "-c",
        "from multiprocessing.forkserver import main; main(8, 9, ['__main__'], **{})",
    ];
    // uvicorn --workers 2: 10 -> tracker 11, spawned 12 and 13.
    let images: HashMap<i32, Image> = [
        (10, image(py, 1, &["python", "/v/bin/uvicorn", "app:app"])),
        (11, image(py, 2, &tracker)),
        (12, image(py, 3, &spawn)),
        (13, image(py, 4, &spawn)),
        // a forkserver pool: 20 -> forkserver 21 -> its forks 22, 23; tracker 24
        (20, image(py, 5, &["python", "pool.py"])),
        (21, image(py, 6, &fs)),
        (22, image(py, 6, &fs)),
        (23, image(py, 6, &fs)),
        (24, image(py, 7, &tracker)),
    ]
    .into_iter()
    .collect();
    let p = placements(&[(10, 0), (11, 10), (12, 10), (13, 10)], &images);
    assert_eq!(p[&10], (Role::Master, None));
    assert_eq!(p[&11], (Role::Other, None));
    assert_eq!(p[&12], (Role::Worker, Some(StartMethod::Spawn)));
    assert_eq!(p[&13], (Role::Worker, Some(StartMethod::Spawn)));
    let p = placements(&[(20, 0), (21, 20), (24, 20), (22, 21), (23, 21)], &images);
    assert_eq!(p[&20], (Role::Master, None));
    assert_eq!(p[&21], (Role::Other, None));
    assert_eq!(p[&24], (Role::Other, None));
    assert_eq!(p[&22], (Role::Worker, Some(StartMethod::Forkserver)));
    assert_eq!(p[&23], (Role::Worker, Some(StartMethod::Forkserver)));
    // A forkserver with no pool process yet: the owner is no master.
    let p = placements(&[(20, 0), (21, 20), (24, 20)], &images);
    assert_eq!(p[&20], (Role::Other, None));
}

#[test]
fn role_assignment() {
    let tree = vec![(10, 0), (11, 10), (12, 10), (13, 11), (14, 10)];
    let exes: HashMap<i32, Image> = [
        (10, "/py"),
        (11, "/py"),
        (12, "/py"),
        (13, "/py"),
        (14, "/bin/sh"),
    ]
    .into_iter()
    .map(|(p, e)| {
        let img = Image {
            exe: e.to_string(),
            ..Default::default()
        };
        (p, img)
    })
    .collect();
    let r = roles(&tree, &exes);
    assert_eq!(r[&10], Role::Master);
    assert_eq!(r[&11], Role::Worker);
    assert_eq!(r[&12], Role::Worker);
    assert_eq!(r[&13], Role::Other);
    assert_eq!(r[&14], Role::Other);
    let lone = roles(&[(10, 0)], &exes);
    assert_eq!(lone[&10], Role::Other);
    // a shell whose only child runs something else is not a master
    let shell = roles(&[(14, 0), (10, 14)], &exes);
    assert_eq!(shell[&14], Role::Other);
    assert_eq!(shell[&10], Role::Other);
}

#[test]
fn tree_snapshot_of_a_forked_child() {
    // A forked child runs the same executable: a worker, as gunicorn's are.
    let me = std::process::id() as i32;
    // SAFETY: the child only sleeps and _exits (async-signal-safe).
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        unsafe {
            libc::sleep(10);
            libc::_exit(0);
        }
    }
    let t = tree_snapshot(me);
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    let t = t.unwrap();
    assert_eq!(t.processes[0].pid, me);
    assert_eq!(t.processes[0].role, Role::Master);
    assert!(t.processes[0].nspid.contains(&me));
    let w = t.process(child).expect("child listed");
    assert_eq!(w.role, Role::Worker);
    assert_eq!(w.started_by, Some(StartMethod::Fork));
    assert_eq!(w.ppid, me);
    assert!(w.started_at_ms >= t.processes[0].started_at_ms);
    assert!(!w.cmdline.is_empty() && !w.exe.is_empty());
    assert!(matches!(
        tree_snapshot(i32::MAX - 1),
        Err(super::super::ObserveError::NoSuchPid(_))
    ));
}

#[test]
fn rq_workers_are_masters_between_jobs() {
    let py = "/usr/bin/python3.11";
    let rq = s(&[
        "/v/bin/python",
        "/v/bin/rq",
        "worker",
        "--url",
        "redis://h/0",
    ]);
    for args in [
        rq.clone(),
        s(&["python", "-m", "rq.cli", "worker", "high", "low"]),
        s(&["/v/bin/python", "/v/bin/rqworker"]),
        s(&["rq:worker:4f2a: Listening on default"]),
    ] {
        assert!(is_rq_worker(&args), "{args:?}");
        assert_eq!(detect_framework(&args, py, &[]), Framework::Rq, "{args:?}");
    }
    for args in [
        s(&["/v/bin/python", "/v/bin/rq", "info"]),
        s(&[
            "/v/bin/python",
            "/v/bin/rq",
            "worker",
            "-w",
            "rq.worker.SimpleWorker",
        ]),
        s(&["python", "jobs.py", "worker"]),
        s(&["/t/otel-forkcheck", "run", "--", "/v/bin/rq", "worker"]),
    ] {
        assert!(!is_rq_worker(&args), "{args:?}");
    }
    // rq worker-pool: an RQ master too, whose workers fork the horses.
    for args in [
        s(&["/v/bin/python", "/v/bin/rq", "worker-pool", "-n", "2"]),
        s(&["python", "-m", "rq.cli", "worker-pool"]),
    ] {
        assert!(is_rq_worker_pool(&args) && !is_rq_worker(&args), "{args:?}");
        assert_eq!(detect_framework(&args, py, &[]), Framework::Rq, "{args:?}");
    }
    assert!(!is_rq_worker_pool(&rq));
    // No work horse at the moment: still the master; a horse is its worker.
    let master = image(py, 2, &rq.iter().map(String::as_str).collect::<Vec<_>>());
    let images: HashMap<i32, Image> = [(10, master.clone())].into();
    assert_eq!(roles(&[(10, 1)], &images)[&10], Role::Master);
    let images: HashMap<i32, Image> = [(10, master.clone()), (11, master)].into();
    let r = roles(&[(10, 1), (11, 10)], &images);
    assert_eq!((r[&10], r[&11]), (Role::Master, Role::Worker));
    // A plain Python program without children is not.
    let lone: HashMap<i32, Image> = [(10, image(py, 2, &["python", "job.py"]))].into();
    assert_eq!(roles(&[(10, 1)], &lone)[&10], Role::Other);
}

#[test]
fn a_celery_worker_is_told_by_its_command_line() {
    let yes = [
        &[
            "/v/bin/python",
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-B",
        ][..],
        &["/v/bin/celery", "--app", "proj", "worker", "--pool=prefork"],
        &["[celeryd: celery@host:MainProcess] -active- (worker -A proj)"],
    ];
    for c in yes {
        assert!(is_celery_worker(&s(c)), "{c:?}");
    }
    let no = [
        &["/v/bin/celery", "-A", "proj", "beat"][..],
        &["/v/bin/python", "worker.py"],
        &["/v/bin/rq", "worker"],
    ];
    for c in no {
        assert!(!is_celery_worker(&s(c)), "{c:?}");
    }
}
