use super::*;

#[derive(clap::Parser)]
struct R {
    #[command(flatten)]
    a: RunArgs,
}

#[derive(clap::Parser)]
struct Rc {
    #[command(flatten)]
    a: ReceiveArgs,
}

#[test]
fn durations_are_bounded() {
    assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    for bad in [
        "1e20",
        "1e30",
        "-1",
        "NaN",
        "inf",
        "18446744073709551615s",
        "x",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert!(parse_duration("366d").is_ok() && parse_duration("367d").is_err());
}

#[test]
fn run_flags_and_trailing_command() {
    let t = R::try_parse_from([
        "x",
        "--workers",
        "2",
        "--hit",
        "http://127.0.0.1:1/a",
        "--hit",
        "http://127.0.0.1:1/b",
        "--window",
        "3s",
        "--",
        "gunicorn",
        "-w",
        "2",
        "--preload",
        "app:app",
    ])
    .unwrap();
    let o = t.a.options().unwrap();
    assert_eq!(o.workers, Some(2));
    assert_eq!(o.targets.len(), 2);
    assert_eq!(o.window, Duration::from_secs(3));
    assert_eq!(o.grace, Duration::from_secs(35));
    assert_eq!(o.requests, 30);
    assert!(o.drive.is_empty());
    assert_eq!(o.drain, Duration::from_secs(2));
    assert_eq!(o.command, ["gunicorn", "-w", "2", "--preload", "app:app"]);
    assert_eq!(
        o.signals,
        vec![Signal::Metrics, Signal::Traces, Signal::Logs]
    );
    assert!(R::try_parse_from(["x"]).is_err(), "a command is required");
    let bad = R::try_parse_from(["x", "--signals", "spans,nope", "--", "true"]).unwrap();
    assert!(bad.a.options().is_err());
    let zero = R::try_parse_from(["x", "--requests", "0", "--", "true"]).unwrap();
    assert!(zero.a.options().is_err());
    assert!(R::try_parse_from(["x", "--grace", "1e30", "--", "true"]).is_err());
    let q = R::try_parse_from([
        "x",
        "--drive",
        "python enqueue.py 5",
        "--drive",
        "true",
        "--drain",
        "500ms",
        "--",
        "celery",
        "-A",
        "tasks",
        "worker",
    ])
    .unwrap();
    let o = q.a.options().unwrap();
    assert_eq!(o.drive, ["python enqueue.py 5", "true"]);
    assert_eq!(o.drain, Duration::from_millis(500));
    assert_eq!(o.command, ["celery", "-A", "tasks", "worker"]);
    let counts = R::try_parse_from([
        "x",
        "--expect-count",
        "app.requests",
        "--expect-count",
        "http.server.duration=served",
        "--expect-count",
        "orders=12",
        "--",
        "true",
    ])
    .unwrap();
    let e = counts.a.options().unwrap().expect_counts;
    let got: Vec<(&str, &ExpectedCount)> =
        e.iter().map(|c| (c.metric.as_str(), &c.expected)).collect();
    assert_eq!(
        got,
        [
            ("app.requests", &ExpectedCount::Served(None)),
            ("http.server.duration", &ExpectedCount::Served(None)),
            ("orders", &ExpectedCount::Exactly(Num(12.0))),
        ]
    );
    for bad in ["=3", "orders=-1", "orders=many", "orders=NaN"] {
        let t = R::try_parse_from(["x", "--expect-count", bad, "--", "true"]).unwrap();
        assert!(t.a.options().is_err(), "{bad}");
    }
}

#[test]
fn receive_flags() {
    let t = Rc::try_parse_from([
        "x",
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "off",
        "--signals",
        "metrics,traces",
        "--inject",
        "delay=900ms",
        "--timeout",
        "5s",
        "--format",
        "ndjson",
    ])
    .unwrap();
    let p = t.a.options(false).unwrap();
    assert_eq!(p.server.http, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(p.server.grpc, None);
    assert_eq!(p.signals, vec![Signal::Metrics, Signal::Traces]);
    assert_eq!(p.timeout, Some(Duration::from_secs(5)));
    assert_eq!(p.format, Format::Ndjson);
    assert!(!p.server.one_port);
    let opts = |args: &[&str]| {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        Rc::try_parse_from(v).unwrap().a.options(false)
    };
    let p = opts(&["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]).unwrap();
    assert!(p.server.one_port && p.server.serves_one_port());
    let p = opts(&["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:4317"]).unwrap();
    assert!(!p.server.serves_one_port());
    let e = opts(&["--http", "0.0.0.0:4318"]).unwrap_err();
    assert!(e.hint.contains("--allow-remote"));
    assert!(opts(&["--signals", "spans,nope"]).is_err());
    let p = opts(&["--expect-count", "orders=30", "--expect-count", "b = 2.5"]).unwrap();
    assert_eq!(p.expect_counts.len(), 2);
    assert_eq!(
        p.expect_counts[1].expected,
        ExpectedCount::Exactly(Num(2.5))
    );
    for bad in ["orders", "orders=served", "orders="] {
        let e = opts(&["--expect-count", bad]).unwrap_err();
        assert!(e.hint.contains("--expect-count app.orders=30"), "{bad}");
    }
    assert!(Rc::try_parse_from(["x", "--timeout", "18446744073709551615s"]).is_err());
}
