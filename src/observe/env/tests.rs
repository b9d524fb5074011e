use super::*;
use crate::proc::file::{parse_cmdline, parse_environ};

/// Arguments as the process's command line (shared with the tests of env's submodules).
pub(super) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn environ_pairs() {
    let env = parse_environ(
        b"PATH=/bin\0OTEL_SERVICE_NAME=shop\0PYTHONPATH=/v/lib/python3.11/site-packages/opentelemetry/instrumentation/auto_instrumentation:/app\0EMPTY=\0A=b=c\0OTEL_EXPORTER_OTLP_HEADERS=api-key=s3cret\0GRPC_ENABLE_FORK_SUPPORT=0\0",
    );
    assert_eq!(env.len(), 7);
    assert_eq!(env[4], ("A".to_string(), "b=c".to_string()));
    let f = env_facts(&env);
    assert!(f.auto_instrumentation);
    assert_eq!(f.grpc_fork_support.as_deref(), Some("0"));
    assert_eq!(
        f.otel,
        vec![
            ("OTEL_SERVICE_NAME".to_string(), "shop".to_string()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS".to_string(),
                "<redacted>".to_string()
            )
        ]
    );
    assert!(!env_facts(&parse_environ(b"PYTHONPATH=/app\0")).auto_instrumentation);
}

#[test]
fn cmdline_args() {
    assert_eq!(
        parse_cmdline(b"python3\0-m\0gunicorn\0app:app\0"),
        s(&["python3", "-m", "gunicorn", "app:app"])
    );
    assert_eq!(parse_cmdline(b""), Vec::<String>::new());
    assert_eq!(parse_cmdline(b"\0\0"), Vec::<String>::new());
    // setproctitle (1.3) writes the title over the arguments' area and clears the rest.
    assert_eq!(
        parse_cmdline(b"gunicorn: worker [app]\0\0\0\0\0\0"),
        vec!["gunicorn: worker [app]"]
    );
    assert_eq!(
        parse_cmdline(b"gunicorn: master [app]"),
        s(&["gunicorn: master [app]"])
    );
}

#[test]
fn preload_in_config_file() {
    assert!(config_sets_preload("bind = '0:8000'\npreload_app = True\n"));
    assert!(config_sets_preload("  preload_app=True  # yes\n"));
    assert!(!config_sets_preload("preload_app = False\n"));
    assert!(!config_sets_preload("# preload_app = True\n"));
    assert!(!config_sets_preload("preload_app = Truely\n"));
}

#[test]
fn preload_sources() {
    let mut no_file = |_: &str| None;
    assert_eq!(
        gunicorn_preload(
            "/proc/1/environ",
            &s(&["gunicorn", "--preload", "a:b"]),
            &[],
            &mut no_file
        )
        .as_deref(),
        Some("--preload on the command line")
    );
    let env = vec![(
        "GUNICORN_CMD_ARGS".to_string(),
        "-w 3 --preload".to_string(),
    )];
    assert!(gunicorn_preload(
        "/proc/1/environ",
        &s(&["gunicorn", "a:b"]),
        &env,
        &mut no_file
    )
    .unwrap()
    .contains("GUNICORN_CMD_ARGS"));
    let mut seen = Vec::new();
    let mut cfg = |p: &str| {
        seen.push(p.to_string());
        Some(("preload_app = True\n".to_string(), format!("/srv/{p}")))
    };
    assert_eq!(
        gunicorn_preload(
            "/proc/1/environ",
            &s(&["gunicorn", "-c", "conf.py", "a:b"]),
            &[],
            &mut cfg
        )
        .as_deref(),
        Some("preload_app = True in /srv/conf.py")
    );
    assert!(gunicorn_preload("/proc/1/environ", &s(&["gunicorn", "a:b"]), &[], &mut cfg).is_some());
    assert_eq!(seen, vec!["conf.py", "gunicorn.conf.py"]);
    assert_eq!(
        gunicorn_config_arg(&s(&["gunicorn", "--config=/etc/g.py"])).as_deref(),
        Some("/etc/g.py")
    );
    assert_eq!(
        gunicorn_config_arg(&s(&["gunicorn", "-cg.py"])).as_deref(),
        Some("g.py")
    );
    assert_eq!(
        gunicorn_config_arg(&s(&["gunicorn", "-c", "python:cfg"])),
        None
    );
}

#[test]
fn uwsgi_options() {
    let mut ini = |f: &str| {
        assert_eq!(f, "app.ini");
        Some("[uwsgi]\nmaster = true\nlazy_apps = true\npy-call-osafterfork = false\n[other]\nlazy = true\n".to_string())
    };
    let opts = uwsgi_fork_options(
        &s(&[
            "uwsgi",
            "--py-call-uwsgi-fork-hooks",
            "--lazy",
            "0",
            "app.ini",
        ]),
        &[("UWSGI_PY_CALL_OSAFTERFORK".to_string(), "1".to_string())],
        &mut ini,
    );
    assert_eq!(
        opts,
        s(&[
            "py-call-uwsgi-fork-hooks",
            "py-call-osafterfork",
            "lazy-apps"
        ])
    );
    let mut none = |_: &str| None;
    assert_eq!(
        uwsgi_fork_options(
            &s(&["uwsgi", "--lazy-apps=true", "--http", ":9"]),
            &[],
            &mut none
        ),
        s(&["lazy-apps"])
    );
}

#[test]
fn uwsgi_relative_ini_after_chdir_is_read_from_pwd() {
    // `uwsgi --ini fixtures/uwsgi/lazy.ini --chdir /tmp` started in /srv: the master's cwd is
    // /tmp by the time anyone looks, the shell's PWD still says /srv.
    let mut read = Vec::new();
    let mut ini = |f: &str| {
        read.push(f.to_string());
        (f == "/srv/fixtures/uwsgi/lazy.ini").then(|| "[uwsgi]\nlazy-apps = true\n".to_string())
    };
    let args = s(&[
        "uwsgi",
        "--ini",
        "fixtures/uwsgi/lazy.ini",
        "--chdir",
        "/tmp",
    ]);
    let env = [("PWD".to_string(), "/srv/".to_string())];
    assert_eq!(uwsgi_fork_options(&args, &env, &mut ini), s(&["lazy-apps"]));
    assert_eq!(
        read,
        s(&["fixtures/uwsgi/lazy.ini", "/srv/fixtures/uwsgi/lazy.ini"])
    );
    // an absolute path, or no PWD: read once, as given
    let mut count = 0;
    let mut missing = |_: &str| {
        count += 1;
        None
    };
    let abs = s(&["uwsgi", "--ini", "/etc/uwsgi/app.ini"]);
    assert!(uwsgi_fork_options(&abs, &env, &mut missing).is_empty());
    assert!(uwsgi_fork_options(&args, &[], &mut missing).is_empty());
    assert_eq!(count, 2);
}

#[test]
fn endpoints() {
    assert_eq!(
        parse_endpoint("http://localhost:4318/v1/traces", ""),
        Some(("127.0.0.1".into(), 4318))
    );
    assert_eq!(
        parse_endpoint("collector:4317", ""),
        Some(("collector".into(), 4317))
    );
    assert_eq!(
        parse_endpoint("https://otel.example", "grpc"),
        Some(("otel.example".into(), 4317))
    );
    assert_eq!(
        parse_endpoint("http://[::1]:5555", "http/protobuf"),
        Some(("::1".into(), 5555))
    );
    let defaults = collector_endpoints(&[("/proc/1/environ".into(), &[][..])]);
    assert_eq!(defaults.len(), 2);
    assert!(defaults.iter().all(|e| e.source == "default"));
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            "http://col:4318".to_string(),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT".to_string(),
            "http://col:4318/v1/metrics".to_string(),
        ),
    ];
    let eps = collector_endpoints(&[
        ("/proc/7/environ".into(), &env[..]),
        ("/proc/8/environ".into(), &env[..]),
    ]);
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].source,
        "OTEL_EXPORTER_OTLP_ENDPOINT in /proc/7/environ"
    );
}
