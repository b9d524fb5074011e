//! Planned recycling: a server told to replace each worker after so many requests or tasks
//! (gunicorn's `max_requests`, Celery's `--max-tasks-per-child`, uvicorn's
//! `--limit-max-requests`, Hypercorn's `--max-requests`, uWSGI's `max-requests` and kin). Its workers leave and are
//! replaced by design; `check --pid` sees the pids come and go, not why (the master reaps them
//! before their exit status can be read), so FC107 does not call that a crash loop.

use super::get;
use super::server::{gunicorn_config, gunicorn_setting, option_value};
use super::timeout::uwsgi_setting;
use crate::snapshot::Recycling;

/// gunicorn's `--max-requests` ([`gunicorn_setting`]) above 0: 0 turns it off, the default.
pub fn gunicorn_recycling(
    env_at: &str,
    args: &[String],
    env: &[(String, String)],
    read_config: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> Option<Recycling> {
    const FLAG: &str = "--max-requests";
    let config = gunicorn_config(args, read_config);
    let (v, source) = gunicorn_setting(
        env_at,
        args,
        env,
        config.as_ref(),
        FLAG,
        FLAG,
        "max_requests",
    )?;
    let n = v.trim().parse::<u64>().ok().filter(|n| *n > 0)?;
    Some(Recycling {
        setting: format!("max_requests {n}"),
        source,
    })
}

/// uvicorn's `--limit-max-requests N` (command line, else `UVICORN_LIMIT_MAX_REQUESTS`: the
/// CLI reads its options from `UVICORN_*`). Its supervisor starts a new worker for each that
/// leaves.
pub fn uvicorn_recycling(args: &[String], env: &[(String, String)]) -> Option<Recycling> {
    const FLAG: &str = "--limit-max-requests";
    let made = |v: &str, source: String| {
        let n = v.trim().parse::<u64>().ok().filter(|n| *n > 0)?;
        Some(Recycling {
            setting: format!("limit_max_requests {n}"),
            source,
        })
    };
    match option_value(args, FLAG, FLAG) {
        Some((v, _)) => made(&v, format!("{FLAG} on the command line")),
        None => made(
            get(env, "UVICORN_LIMIT_MAX_REQUESTS")?,
            "UVICORN_LIMIT_MAX_REQUESTS in the environment".into(),
        ),
    }
}

/// Hypercorn's `--max-requests N` on the command line (its supervisor replaces the worker).
pub fn hypercorn_recycling(args: &[String]) -> Option<Recycling> {
    const FLAG: &str = "--max-requests";
    let (v, _) = option_value(args, FLAG, FLAG)?;
    let n = v.trim().parse::<u64>().ok().filter(|n| *n > 0)?;
    Some(Recycling {
        setting: format!("max_requests {n}"),
        source: format!("{FLAG} on the command line"),
    })
}

/// uWSGI options that replace a worker by design: after so many requests, so long, past a
/// memory size, or when the cheaper subsystem stops idle workers.
const UWSGI_RECYCLING: [&str; 7] = [
    "max-requests",
    "max-worker-lifetime",
    "reload-on-rss",
    "reload-on-as",
    "evil-reload-on-rss",
    "evil-reload-on-as",
    "cheaper",
];

/// The first of [`UWSGI_RECYCLING`] set above 0 (command line, `UWSGI_*`, ini files).
pub fn uwsgi_recycling(
    args: &[String],
    env: &[(String, String)],
    read_ini: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<Recycling> {
    UWSGI_RECYCLING.into_iter().find_map(|key| {
        let (v, source) = uwsgi_setting(args, env, read_ini, key)?;
        let n = v.trim().parse::<u64>().ok().filter(|n| *n > 0)?;
        Some(Recycling {
            setting: format!("{key} {n}"),
            source,
        })
    })
}

/// Celery's pool options that replace or stop pool processes by design, on the command line:
/// `--max-tasks-per-child N` (or the old `--maxtasksperchild`), `--max-memory-per-child KB`,
/// and `--autoscale MAX,MIN` (the pool shrinks when idle).
pub fn celery_recycling(args: &[String]) -> Option<Recycling> {
    [
        ("--max-tasks-per-child", "max_tasks_per_child"),
        ("--maxtasksperchild", "max_tasks_per_child"),
        ("--max-memory-per-child", "max_memory_per_child"),
    ]
    .into_iter()
    .find_map(|(flag, name)| {
        let (v, _) = option_value(args, flag, flag)?;
        let n = v.trim().parse::<u64>().ok().filter(|n| *n > 0)?;
        Some(Recycling {
            setting: format!("{name} {n}"),
            source: format!("{flag} on the command line"),
        })
    })
    .or_else(|| {
        let (v, _) = option_value(args, "--autoscale", "--autoscale")?;
        Some(Recycling {
            setting: format!("autoscale {}", v.trim()),
            source: "--autoscale on the command line".into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::env::tests::s;

    #[test]
    fn gunicorn_max_requests_from_each_place() {
        let none = &mut |_: &str| None;
        let args = s(&["gunicorn", "--max-requests", "1000", "app:app"]);
        let r = gunicorn_recycling("/proc/7/environ", &args, &[], none).unwrap();
        assert_eq!(r.setting, "max_requests 1000");
        assert_eq!(r.source, "--max-requests on the command line");
        let args = s(&["gunicorn", "--max-requests=0", "app:app"]);
        assert_eq!(
            gunicorn_recycling("/proc/7/environ", &args, &[], none),
            None
        );
        let env = vec![(
            "GUNICORN_CMD_ARGS".to_string(),
            "--max-requests 50 -w 4".to_string(),
        )];
        let r = gunicorn_recycling("/proc/7/environ", &s(&["gunicorn"]), &env, none).unwrap();
        assert_eq!(
            r.source,
            "--max-requests in GUNICORN_CMD_ARGS (/proc/7/environ)"
        );
        let conf = &mut |p: &str| Some(("max_requests = 200\n".to_string(), format!("/app/{p}")));
        let r = gunicorn_recycling(
            "/proc/7/environ",
            &s(&["gunicorn", "-c", "g.py"]),
            &[],
            conf,
        )
        .unwrap();
        assert_eq!(
            (r.setting.as_str(), r.source.as_str()),
            ("max_requests 200", "max_requests in /app/g.py")
        );
        assert_eq!(
            gunicorn_recycling("/proc/7/environ", &s(&["gunicorn"]), &[], none),
            None
        );
    }

    #[test]
    fn uvicorn_and_hypercorn_limits() {
        let args = s(&[
            "uvicorn",
            "app:app",
            "--workers",
            "2",
            "--limit-max-requests",
            "5",
        ]);
        let r = uvicorn_recycling(&args, &[]).unwrap();
        assert_eq!(r.setting, "limit_max_requests 5");
        let env = vec![("UVICORN_LIMIT_MAX_REQUESTS".to_string(), "100".to_string())];
        let r = uvicorn_recycling(&s(&["uvicorn", "app:app"]), &env).unwrap();
        assert_eq!(r.source, "UVICORN_LIMIT_MAX_REQUESTS in the environment");
        assert_eq!(uvicorn_recycling(&s(&["uvicorn", "app:app"]), &[]), None);
        let args = s(&[
            "hypercorn",
            "app:app",
            "--workers",
            "2",
            "--max-requests",
            "5",
        ]);
        assert_eq!(
            hypercorn_recycling(&args).unwrap().setting,
            "max_requests 5"
        );
        assert_eq!(hypercorn_recycling(&s(&["hypercorn", "app:app"])), None);
    }

    #[test]
    fn uwsgi_recycling_options() {
        let none = &mut |_: &str| None;
        let args = s(&["uwsgi", "--ini", "app.ini", "--max-requests=5"]);
        let r = uwsgi_recycling(&args, &[], none).unwrap();
        assert_eq!(
            (r.setting.as_str(), r.source.as_str()),
            ("max-requests 5", "--max-requests on the command line")
        );
        let ini = &mut |_: &str| Some("[uwsgi]\nprocesses = 4\nreload-on-rss = 512\n".to_string());
        let r = uwsgi_recycling(&s(&["uwsgi", "--ini", "app.ini"]), &[], ini).unwrap();
        assert_eq!(
            (r.setting.as_str(), r.source.as_str()),
            ("reload-on-rss 512", "reload-on-rss in app.ini")
        );
        let env = vec![("UWSGI_MAX_WORKER_LIFETIME".to_string(), "3600".to_string())];
        let r = uwsgi_recycling(&s(&["uwsgi"]), &env, none).unwrap();
        assert_eq!(r.source, "UWSGI_MAX_WORKER_LIFETIME in the environment");
        assert_eq!(
            uwsgi_recycling(&s(&["uwsgi", "--ini", "app.ini"]), &[], none),
            None
        );
    }

    #[test]
    fn celery_max_tasks_per_child() {
        let args = s(&["celery", "-A", "t", "worker", "--max-tasks-per-child=1"]);
        assert_eq!(
            celery_recycling(&args).unwrap().setting,
            "max_tasks_per_child 1"
        );
        let args = s(&["celery", "-A", "t", "worker", "--maxtasksperchild", "10"]);
        assert!(celery_recycling(&args).is_some());
        assert_eq!(celery_recycling(&s(&["celery", "-A", "t", "worker"])), None);
        let args = s(&["celery", "-A", "t", "worker", "--autoscale=4,2"]);
        assert_eq!(celery_recycling(&args).unwrap().setting, "autoscale 4,2");
        let args = s(&["celery", "worker", "--max-memory-per-child", "200000"]);
        assert_eq!(
            celery_recycling(&args).unwrap().setting,
            "max_memory_per_child 200000"
        );
    }
}
